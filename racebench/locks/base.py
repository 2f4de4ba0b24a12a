"""The narrow interface every lock service implements.

A lock service guards one named resource per run. `acquire` returns a fencing token: a
number that grows with every grant (0 when the service hands out none). A service whose lock
is a lease (it expires after `ttl_ms` on its own) declares `lease = True`: its mutual
exclusion then holds only while the critical section is shorter than the lease.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from racebench.util.plugin_config import LockConfig
from racebench.util.plugin_info import PluginInfo

if TYPE_CHECKING:
    from racebench.util.plugin_config import FaultConfig


class LockTimeout(Exception):
    """The lock was not granted within the acquire timeout."""


class LockClient(ABC):
    """One client's handle on the lock, opened inside the client process."""

    @abstractmethod
    def acquire(self) -> int:
        """Block until granted or raise LockTimeout; return the fencing token (0 if none)."""

    @abstractmethod
    def release(self) -> None:
        """Release this client's grant; never another client's (after a lease expired)."""

    def close(self) -> None:
        """Close the connection."""

    def session_id(self) -> int:
        """The server's id of this client's lock session (for the kill_session fault); 0: none."""
        return 0


class LockService(PluginInfo, ABC):
    """A lock service, created in the parent; `connect` runs in each client process.

    Registered under the `racebench.locks` entry point; what it declares about itself
    (default URL, drivers, ports, test server) is described in `PluginInfo`.
    """

    service: ClassVar[str]
    failure_mode: ClassVar[str]
    lease: ClassVar[bool]
    # The lock faults (racebench.faults.lock) this service has hooks for: any of
    # expire_early, lose_lock_state, kill_session, server_pause. Client, proxy and server
    # faults decide for themselves (FaultKind.can_suffer).
    fault_kinds: ClassVar[frozenset[str]] = frozenset()
    # Its scenario keys: LockConfig, or a subclass with keys of its own.
    config_model: ClassVar[type[LockConfig]] = LockConfig
    renewable: ClassVar[bool] = False  # a lease that guard.lock.renew can keep alive

    def __init__(self, config: LockConfig, namespace: str, store_url: str | None) -> None:
        self.config = config
        self.namespace = namespace
        self.store_url = store_url

    def claims_exclusion(self, race_window_ms: float, faults: Sequence[FaultConfig] = ()) -> bool:
        """Whether mutual exclusion is promised for a critical section this long, under
        these faults (a lock is not expected to survive a fault that ends it on purpose)."""
        if self.lease and self.config.ttl_ms <= race_window_ms:
            return False
        return all(self.keeps_exclusion(f, race_window_ms) for f in faults)

    def keeps_exclusion(self, fault: FaultConfig, race_window_ms: float) -> bool:
        """Whether this fault leaves mutual exclusion promised.

        The fault kind knows what it breaks (racebench.faults.kind.FaultKind.keeps_exclusion:
        ending the lock behind the holder's back breaks it by design; a pause, a slow or a
        cut-off link breaks a lease only when it can stretch a section past the lease); a
        service overrides this where it differs (a ZooKeeper session outlives a short pause).
        """
        from racebench.plugins.entry_points import fault_class

        return fault_class(fault.kind).keeps_exclusion(fault, self, race_window_ms)

    @abstractmethod
    def check_reachable(self) -> dict[str, str]:
        """Connect once; return server facts. Raise BackendUnavailable if not reachable."""

    def setup(self) -> None:
        """Create what the lock needs (counter keys, parent znodes)."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove every key, znode or file of this run's namespace."""

    @abstractmethod
    def leftovers(self) -> list[str]:
        """Names of racebench's lock objects (any namespace) still present."""

    @abstractmethod
    def connect(self, client_id: int) -> LockClient:
        """Open one client's handle (in the client process)."""

    # Fault hooks, called from the parent's nemesis thread; each returns a short note of what
    # it really did (e.g. "emulated: deleted the lock keys").
    def server_url(self) -> str | None:
        """The URL of the lock's server, which a proxy fault routes a client through."""
        return self.config.url or self.store_url

    def route_through(self, url: str) -> None:
        """Use `url` (a proxy's) instead of the server's; called in one client's process."""
        self.config = self.config.model_copy(update={"url": url})

    def expire_early(self) -> str:
        """Make the current grant expire now, as a forward clock jump on the server would."""
        raise NotImplementedError

    def lose_state(self, instances: int) -> str:
        """Forget every lock, as a restart without persistence does, on `instances` servers."""
        raise NotImplementedError

    def kill_session(self, session_id: int) -> str:
        """End the given lock session on the server (pg_terminate_backend, KILL, CLIENT KILL)."""
        raise NotImplementedError

    def pause_server(self, duration_ms: float) -> str:
        """Make the server stop answering for `duration_ms`."""
        raise NotImplementedError
