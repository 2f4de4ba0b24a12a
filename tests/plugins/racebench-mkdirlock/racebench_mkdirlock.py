"""mkdir_lock: the lock of shell scripts, `mkdir` of a directory, which is atomic (POSIX).

A third-party racebench lock service, kept outside the racebench package on purpose: it is
this module plus one entry-point line in pyproject.toml, and racebench's contract suite
runs it like its own services (tests/test_plugins.py, tests/test_locks.py).

Whoever creates `<dir>/<namespace>.lock.d` holds the lock; the others retry until it is
removed. Unlike flock(2) the kernel does not free it when the holder dies: a crashed holder
leaves the directory behind and the others wait until their acquire timeout (a stale lock,
which is why scripts write their pid into it). It is not a lease, so a paused holder keeps
it. The fencing token is a counter file beside it, incremented while the lock is held.

It also brings a fault kind of its own, `steal_mkdir_lock` (registered under the
`racebench.faults` entry point): the stale-lock cleaner of such scripts, which removes a
lock directory it wrongly believes dead, while its holder is still inside.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from racebench.errors import BackendUnavailable
from racebench.faults.kind import Fail, FaultContext, FaultKind
from racebench.locks.base import LockClient, LockService, LockTimeout
from racebench.util.plugin_config import FaultConfig
from racebench.util.plugin_info import PluginInfo

if TYPE_CHECKING:
    from racebench.config.scenario import Scenario


class MkdirLockClient(LockClient):
    """One client's handle: mkdir to acquire, rmdir to release."""

    def __init__(self, lock_dir: Path, acquire_timeout_s: float, retry_s: float) -> None:
        self.lock_dir = lock_dir
        self.counter = lock_dir.with_suffix(".token")
        self.acquire_timeout_s = acquire_timeout_s
        self.retry_s = retry_s

    def acquire(self) -> int:
        deadline = time.monotonic() + self.acquire_timeout_s
        while True:
            try:
                self.lock_dir.mkdir()
                break
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise LockTimeout from None
                time.sleep(self.retry_s)
        # Only the holder touches the counter, so read-increment-write cannot race.
        token = int(self.counter.read_text() or 0) + 1
        self.counter.write_text(str(token))
        return token

    def release(self) -> None:
        # No lease: nobody else can have taken the lock since this client's grant, unless a
        # steal_mkdir_lock fault removed it (then the directory may be gone, or another's).
        with contextlib.suppress(FileNotFoundError):
            self.lock_dir.rmdir()


class MkdirLock(LockService):
    """mkdir(2) of a directory: clients on one host, no server; guard.lock.url is the dir."""

    service = "mkdir_lock"
    description = "mkdir(2) of a directory (a third-party plug-in): clients on one host"
    failure_mode = (
        "not a lease: a paused holder keeps the lock; a dead one leaves it behind (stale) "
        "and the others wait until their acquire timeout"
    )
    lease = False
    networked = False  # no server, so no test server to declare either
    default_url = None

    def _directory(self) -> Path:
        return Path(self.config.url or tempfile.gettempdir())

    def _lock_dir(self) -> Path:
        return self._directory() / f"{self.namespace}.lock.d"

    def server_url(self) -> str:
        """The directory the lock lives in (there is no server)."""
        return str(self._directory())

    def check_reachable(self) -> dict[str, str]:
        directory = self._directory()
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise BackendUnavailable(f"mkdir_lock: directory {directory} is not writable")
        return {"server": "mkdir"}

    def setup(self) -> None:
        self._lock_dir().with_suffix(".token").write_text("0")

    def teardown(self) -> None:
        lock_dir = self._lock_dir()
        if lock_dir.is_dir():
            lock_dir.rmdir()
        lock_dir.with_suffix(".token").unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        directory = self._directory()
        return sorted(p.name for p in directory.glob("racebench_*.lock.*"))

    def connect(self, client_id: int) -> LockClient:
        return MkdirLockClient(
            self._lock_dir(),
            self.config.acquire_timeout_ms / 1000,
            self.config.retry_delay_ms / 1000,
        )


class StealMkdirLock(FaultKind):
    """Remove the lock directory behind its holder's back, as a stale-lock cleaner that
    guessed wrong does: the next client's mkdir succeeds while the holder is still inside."""

    kind = "steal_mkdir_lock"
    breaks = "removes mkdir_lock's directory under its holder: the next client gets in too"

    @classmethod
    def can_suffer(cls, plugin: type[PluginInfo], role: Literal["store", "lock"]) -> bool:
        return role == "lock" and issubclass(plugin, MkdirLock)

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        super().validate(fault, field, scenario, fail)
        lock = scenario.guard.lock if scenario.guard.strategy == "lock" else None
        if lock is None or lock.service != MkdirLock.service:
            raise fail(f"{field}.kind", f"{cls.kind} needs guard.lock.service: mkdir_lock")

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return False

    def fire(self, client: int, context: FaultContext) -> str:
        service = context.lock_service
        assert isinstance(service, MkdirLock)  # validate required it
        try:
            service._lock_dir().rmdir()
        except FileNotFoundError:
            return "no lock directory to remove"
        return "removed the lock directory"
