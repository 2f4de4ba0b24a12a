"""file_lock: an flock(2) on a file, for clients on one host; needs no server.

The kernel drops an flock when its holder's process dies, so a crashed holder never blocks
the others; it is not a lease, so a paused holder keeps it. The fencing token is a counter
kept in the lock file itself and incremented while the lock is held.
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
import time
from pathlib import Path

from racebench.locks.base import LockClient, LockService, LockTimeout

_TOKEN = struct.Struct("<q")


class FileLockClient(LockClient):
    """One client's open file description of the lock file: flock(2) locks belong to it."""

    def __init__(self, path: str, acquire_timeout_s: float, retry_s: float) -> None:
        # Each client opens the file itself: flocks on descriptors from one open(2) would be
        # shared, and two clients of one process (threads of a worker) would both "hold" it.
        self.fd = os.open(path, os.O_RDWR)
        self.acquire_timeout_s = acquire_timeout_s
        self.retry_s = retry_s

    def acquire(self) -> int:
        deadline = time.monotonic() + self.acquire_timeout_s
        while True:
            try:
                # Non-blocking and polled, not LOCK_EX alone: a blocking flock cannot time out,
                # and the acquire timeout is part of the scenario (acquire_timeout_ms).
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout from None
                time.sleep(self.retry_s)
        # The token is read and bumped while the lock is held, so tokens grow with every
        # grant; pread/pwrite at offset 0 leave no file position shared between clients.
        raw = os.pread(self.fd, _TOKEN.size, 0)
        token = (_TOKEN.unpack(raw)[0] if len(raw) == _TOKEN.size else 0) + 1
        os.pwrite(self.fd, _TOKEN.pack(token), 0)
        return token

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


class FileLock(LockService):
    service = "file_lock"
    description = "flock(2) on a file: clients on one host, no server"
    failure_mode = (
        "not a lease: a paused holder keeps the lock and the others wait; a dead one frees it"
    )
    lease = False
    networked = False

    def _path(self) -> str:
        # `url` is a directory for this service: the lock file is named after the namespace,
        # so two runs (or a run and `racebench clean`) never share one.
        directory = self.config.url or tempfile.gettempdir()
        return os.path.join(directory, f"{self.namespace}.lock")

    def server_url(self) -> str:
        """The lock file's directory (there is no server)."""
        return str(Path(self._path()).parent)

    def check_reachable(self) -> dict[str, str]:
        from racebench.errors import BackendUnavailable

        directory = Path(self._path()).parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise BackendUnavailable(f"file_lock: directory {directory} is not writable")
        return {"server": "flock"}

    def setup(self) -> None:
        Path(self._path()).write_bytes(_TOKEN.pack(0))

    def teardown(self) -> None:
        Path(self._path()).unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        # Every racebench lock file in the directory; `clean` keeps those of live owners.
        directory = Path(self._path()).parent
        return sorted(p.name for p in directory.glob("racebench_*.lock"))

    def connect(self, client_id: int) -> LockClient:
        return FileLockClient(
            self._path(),
            self.config.acquire_timeout_ms / 1000,
            self.config.retry_delay_ms / 1000,
        )
