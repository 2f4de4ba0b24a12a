"""Who owns racebench's objects on servers and disks, so leftovers of dead runs can be found.

Every namespace a run creates (tables, Redis keys, znodes, lock files) and every temporary
file or directory names its owner: the PID of the racebench process and a tag of its host,
e.g. `racebench_p4242h1f3a_9c0ffee1`. `racebench doctor` and `racebench clean` use it to tell
objects of a run that is still going (owner alive on this host: never touched) from those of
a run that died without cleaning up (owner gone: removed by `clean`). Objects named by an
older racebench or owned by another host cannot be checked, and `clean` leaves them unless
told otherwise (`--any-owner`).
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Redis keys expire this long (at least) after they were written: no run lasts that long, and
# a SIGKILLed run's keys do not stay forever even if nobody runs `racebench clean`.
MIN_LEFTOVER_TTL_S = 86_400


def leftover_ttl_s(duration_s: float | None) -> int:
    """How long a run's Redis keys live: max(1 day, 10 x the run's duration)."""
    return max(MIN_LEFTOVER_TTL_S, round(10 * (duration_s or 0)))


_OWNED = re.compile(r"racebench_p(?P<pid>\d+)h(?P<host>[0-9a-f]{4})_[0-9a-f]{8}")
# Any namespace, racebench's own or one made by an older version or a test: it starts with
# `racebench_` and, in a SQL table name, is followed by the table's role.
_ANY = re.compile(r"racebench_[A-Za-z0-9_]+")
_TABLE_ROLES = re.compile(r"_(counter|slots|account|operations|lock|probe)$")
# Temporary files and directories: `.NAME.racebench-p{pid}-XXXX` beside a result or history
# file, and `racebench-{what}-p{pid}-XXXX` directories in the system's temporary directory.
_TEMP_FILE = re.compile(r"^\..+\.racebench-p(?P<pid>\d+)-[^/]+$")
_TEMP_DIR = re.compile(r"^racebench-[a-z]+-p(?P<pid>\d+)-[^/]+$")
_LEGACY_TEMP_DIR = re.compile(r"^racebench-(run|sqlite)-[a-z0-9_]{8}$")


def host_tag() -> str:
    """Four hex digits naming this host (the same for every process on it)."""
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=2).hexdigest()


def new_namespace() -> str:
    """A fresh namespace owned by this process: `racebench_p{pid}h{host}_{random}`."""
    return f"racebench_p{os.getpid()}h{host_tag()}_{secrets.token_hex(4)}"


def temp_prefix(what: str) -> str:
    """The prefix of a temporary directory this process makes, e.g. `racebench-run-p42-`."""
    return f"racebench-{what}-p{os.getpid()}-"


def temp_file_prefix(target: Path) -> str:
    """The prefix of the temporary file written beside `target` before the rename."""
    return f".{target.name}.racebench-p{os.getpid()}-"


class Owner(enum.Enum):
    """Whose an object is, as far as this host can tell."""

    ALIVE = "alive"  # a process on this host with that PID runs: never touch
    DEAD = "dead"  # a run on this host that ended without cleaning up
    UNKNOWN = "unknown"  # another host's, or named by an older racebench


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs on this host (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _owner_of_pid(pid: int) -> Owner:
    # A reused PID makes a dead run look alive: the safe mistake.
    return Owner.ALIVE if pid_alive(pid) else Owner.DEAD


@dataclass(frozen=True)
class Leftover:
    """One object a run left: where it is, its name, its namespace and its owner."""

    kind: str  # "store", "lock" or "file"
    name: str  # backend, lock service, or "temp"
    where: str  # redacted URL, or a directory
    namespace: str  # the namespace, or the path of a file or directory
    objects: tuple[str, ...]
    owner: Owner
    pid: int | None


def namespace_of(object_name: str) -> str | None:
    """The namespace in a table name, Redis key, znode path or lock file name (None: none)."""
    if owned := _OWNED.search(object_name):
        return owned.group(0)
    if found := _ANY.search(object_name):
        return _TABLE_ROLES.sub("", found.group(0))
    return None


def owner_of_namespace(namespace: str) -> tuple[Owner, int | None]:
    owned = _OWNED.fullmatch(namespace)
    if owned is None or owned.group("host") != host_tag():
        return Owner.UNKNOWN, int(owned.group("pid")) if owned else None
    pid = int(owned.group("pid"))
    return _owner_of_pid(pid), pid


def group_by_namespace(kind: str, name: str, where: str, object_names: list[str]) -> list[Leftover]:
    """Objects listed by a store or lock service, grouped into one Leftover per namespace."""
    groups: dict[str, list[str]] = {}
    for object_name in object_names:
        if (namespace := namespace_of(object_name)) is not None:
            groups.setdefault(namespace, []).append(object_name)
    out = []
    for namespace, objects in sorted(groups.items()):
        owner, pid = owner_of_namespace(namespace)
        out.append(Leftover(kind, name, where, namespace, tuple(objects), owner, pid))
    return out


def _temporary_directories() -> list[Path]:
    """Where runs make their temporary directories: the system's temporary directory, and
    shared memory (/dev/shm), which holds the clients' history files when the system has it."""
    found = [Path(tempfile.gettempdir())]
    if Path("/dev/shm").is_dir() and Path("/dev/shm") not in found:
        found.append(Path("/dev/shm"))
    return found


def temporary_leftovers(directories: list[Path]) -> list[Leftover]:
    """racebench's temporary files in `directories`, and its temporary directories."""
    out = []
    for directory, patterns in [
        *((t, (_TEMP_DIR, _LEGACY_TEMP_DIR)) for t in _temporary_directories()),
        *((d, (_TEMP_FILE,)) for d in directories),
    ]:
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue  # a directory that does not exist holds no leftovers
        for entry in entries:
            for pattern in patterns:
                if match := pattern.fullmatch(entry.name):
                    pid = int(match.group("pid")) if "pid" in pattern.groupindex else None
                    owner = Owner.UNKNOWN if pid is None else _owner_of_pid(pid)
                    out.append(
                        Leftover(
                            "file", "temp", str(directory), str(entry), (entry.name,), owner, pid
                        )
                    )
                    break
    return out
