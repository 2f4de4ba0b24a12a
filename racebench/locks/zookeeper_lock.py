"""zookeeper_lock: kazoo's Lock recipe, an ephemeral sequential znode per contender.

The lock is not a lease: a holder keeps it however long its critical section takes, as long
as its ZooKeeper session lives. When the session is lost (the holder paused, or cut off from
the server, longer than the session timeout, `session_timeout_ms`, 10 s by default),
ZooKeeper deletes the holder's
ephemeral znode and grants the lock to the next contender, while the old holder, unless it
watches kazoo's connection state, still believes it holds the lock. The fencing token is the
lock znode's sequence number: the lock goes to contenders in sequence order, so a later
holder always has a larger token.

Faults: client-side, proxy and server ones (kill_server, pause_server, restart_server of
ensemble members listed in guard.lock.servers). ZooKeeper keeps its state across restarts
and has no lease to shorten; ending a session from outside
needs the client's session password (kazoo's test harness reconnects with it), which lives
in the client's process, so kill_session is not offered.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

from pydantic import Field

from racebench.locks.base import LockClient, LockService, LockTimeout
from racebench.stores.zookeeper import (
    DEFAULT_HOSTS,
    ROOT,
    close_kazoo,
    open_kazoo,
    remove_namespace,
    server_facts,
)
from racebench.util.plugin_config import LockConfig

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from racebench.util.plugin_config import FaultConfig

# A ZooKeeper connection string: host:port[,host:port...][/chroot]; no scheme.
_ZOOKEEPER_HOSTS = re.compile(r"^[^/:@,\s]+:\d+(,[^/:@,\s]+:\d+)*(/\S*)?$")


class ZookeeperLockClient(LockClient):
    """One client's kazoo Lock, bounded in time when the ensemble stops serving.

    kazoo would wait forever for a member that serves (one that is part of a quorum); this
    client gives up after the session timeout, which its session could not outlive anyway:
    the call in progress fails, and the next acquire starts a new session, or times out.
    """

    def __init__(
        self, hosts: str, path: str, acquire_timeout_s: float, session_timeout_s: float, cid: int
    ) -> None:
        self.zk = open_kazoo(
            hosts,
            "zookeeper_lock",
            session_timeout_s=session_timeout_s,
            reconnect_deadline_s=session_timeout_s,
        )
        self.path = path
        self.identifier = f"client-{cid}"
        self.lock = self.zk.Lock(path, identifier=self.identifier)
        self.acquire_timeout_s = acquire_timeout_s
        self.orphan: str | None = None  # a lock znode whose release failed

    def acquire(self) -> int:
        from kazoo.exceptions import LockTimeout as KazooLockTimeout
        from kazoo.exceptions import NoNodeError
        from kazoo.protocol.states import KeeperState

        if self.zk.client_state == KeeperState.CLOSED:
            self._new_session()
        if self.orphan is not None:
            # Our session may have outlived the failed release: its znode would block us.
            with contextlib.suppress(NoNodeError):
                self.zk.delete(self.orphan)
            self.orphan = None
        try:
            granted = self.lock.acquire(timeout=self.acquire_timeout_s)
        except KazooLockTimeout:
            granted = False
        if not granted:
            raise LockTimeout
        # The node is "<uuid>__lock__<10-digit sequence>".
        return int(self.lock.node[-10:])

    def _new_session(self) -> None:
        """Connect again after kazoo gave up; LockTimeout if no member serves in time."""
        self.zk.stop()
        try:
            self.zk.start(timeout=self.acquire_timeout_s)
        except self.zk.handler.timeout_exception:
            raise LockTimeout from None
        # The old session's znodes go with it: they are not ours to delete any more.
        self.lock = self.zk.Lock(self.path, identifier=self.identifier)
        self.orphan = None

    def release(self) -> None:
        node = self.lock.node
        try:
            self.lock.release()
        finally:
            if self.lock.is_acquired:
                # kazoo keeps a lock whose delete failed (connection lost) marked acquired, and
                # would never acquire it again: start afresh and delete the znode next time.
                self.orphan = f"{self.path}/{node}"
                self.lock = self.zk.Lock(self.path, identifier=self.identifier)

    def close(self) -> None:
        close_kazoo(self.zk)


class ZookeeperLockConfig(LockConfig):
    """zookeeper_lock's keys: the session its holder's lock lives with."""

    session_timeout_ms: float = Field(
        default=10_000,
        gt=0,
        description="the holder's session; the server clamps it to 2-20 times its tickTime",
    )


class ZookeeperLock(LockService):
    """kazoo's Lock under /racebench/{run}/lock; lost when the holder's session expires.

    See the module docstring: no ttl, but a session that expires deletes the holder's znode
    and lets the next contender in while the old holder may still be working.
    """

    service = "zookeeper_lock"
    description = "kazoo Lock recipe: ephemeral sequential znodes under /racebench/{run}/lock"
    failure_mode = (
        "not a lease, but tied to the holder's session: a pause or partition longer than the "
        "session timeout (session_timeout_ms) expires it, ZooKeeper grants the next contender "
        "and the old holder still believes it holds the lock; fencing token = the znode's "
        "sequence number"
    )
    lease = False
    default_url = DEFAULT_HOSTS
    url_env = "RACEBENCH_ZOOKEEPER_HOSTS"
    extra = "zookeeper"
    drivers = ("kazoo",)
    test_server = "zookeeper_hosts"
    config_model = ZookeeperLockConfig
    config: ZookeeperLockConfig

    @property
    def hosts(self) -> str:
        """guard.lock.url, else the members in guard.lock.servers, else the store's hosts when
        the store is ZooKeeper, else the default."""
        if self.config.url:
            return self.config.url
        if self.config.servers:
            return ",".join(server.url for server in self.config.servers)
        if self.store_url and _ZOOKEEPER_HOSTS.match(self.store_url):
            return self.store_url
        return self.configured_url() or DEFAULT_HOSTS

    def server_url(self) -> str:
        return self.hosts

    @property
    def path(self) -> str:
        return f"{ROOT}/{self.namespace}/lock"

    def _open(self) -> KazooClient:
        return open_kazoo(self.hosts, self.service)

    def check_reachable(self) -> dict[str, str]:
        return server_facts(self.hosts, self.service)

    def setup(self) -> None:
        client = self._open()
        try:
            client.ensure_path(self.path)
        finally:
            close_kazoo(client)

    def teardown(self) -> None:
        client = self._open()
        try:
            remove_namespace(client, self.path)
        finally:
            close_kazoo(client)

    def leftovers(self) -> list[str]:
        from kazoo.exceptions import NoNodeError

        client = self._open()
        try:
            runs = client.get_children(ROOT)
            return sorted(
                f"{ROOT}/{run}/lock" for run in runs if client.exists(f"{ROOT}/{run}/lock")
            )
        except NoNodeError:
            return []
        finally:
            close_kazoo(client)

    def keeps_exclusion(self, fault: FaultConfig, race_window_ms: float) -> bool:
        # Out of touch longer than the session timeout, the holder loses its znode unawares;
        # the server last heard from it up to a third of the timeout before (kazoo's pings).
        if fault.kind in ("pause_client", "partition"):
            silent = race_window_ms + fault.lasts_ms()
            return silent < self.config.session_timeout_ms * 2 / 3
        # Ensemble members log every change to disk before they acknowledge it, so a kill or
        # a restart loses no znode; while a quorum is gone nothing is granted and no session
        # expires (the next leader gives every session a fresh timeout). A holder keeps its
        # lock if it gets through to a member within its session timeout.
        if fault.kind in ("kill_server", "restart_server", "pause_server"):
            return race_window_ms < self.config.session_timeout_ms * 2 / 3
        return super().keeps_exclusion(fault, race_window_ms)

    def connect(self, client_id: int) -> LockClient:
        return ZookeeperLockClient(
            self.hosts,
            self.path,
            self.config.acquire_timeout_ms / 1000,
            self.config.session_timeout_ms / 1000,
            client_id,
        )
