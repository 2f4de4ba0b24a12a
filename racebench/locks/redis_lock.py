"""redis_lock: a lease on one Redis server, `SET lock token NX PX ttl`.

The lock is a lease. It expires `ttl_ms` after the grant whether or not its holder is done,
and nothing tells the holder: a client slower than the lease, or paused past it, goes on with
its critical section while the next client is granted the lock. A Redis restart without
persistence forgets the lock at once. Only fencing (`guard.fencing`) keeps the data safe then:
each grant comes with a token from INCR on a counter key, taken in the same Lua script as the
SET, so a later grant always has a larger token.

Release is a Lua compare-and-delete on the grant's random value, so a client whose lease
expired never deletes the lock that another client holds by then.

`guard.lock.renew: true` adds Redisson's watchdog: a thread in the holder's process extends
the lease to `ttl_ms` again every `ttl_ms / 3` while the lock is held (a compare-and-PEXPIRE
on the grant's value), and stops at release, when the lease turns out to be lost, or with
the process. A section longer than the ttl then keeps the lock. What renewal cannot do: a
stop-the-world pause (`pause_client`) stops the watchdog with the holder, and a partition
keeps its renewals from Redis, so a lease lapses after its last renewal exactly as without
one, while the holder works on. Only fencing keeps the data safe then.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from pydantic import Field

from racebench.locks.base import LockClient, LockService, LockTimeout
from racebench.stores.redis import (
    DEFAULT_URL,
    connect_options,
    open_redis,
    scan_keys,
    server_facts,
)
from racebench.util.ownership import MIN_LEFTOVER_TTL_S
from racebench.util.plugin_config import FaultConfig, LockConfig

if TYPE_CHECKING:
    import redis

# Grant and fencing token in one step: no later grant can take a token before this one.
# The token counter expires MIN_LEFTOVER_TTL_S after the last grant (a killed run's does not
# stay forever); the lock key itself is a lease.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return token
end
return 0
"""

# Delete the lock only if it still holds our value (the lease may have passed to another).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend the lease only if it is still ours (it may have lapsed and passed to another).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Redlock: lift a server's token counter to the token a grant settled on (never lower it).
RAISE_COUNTER = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# Backoff between attempts doubles from retry_delay_ms up to this many times it.
_BACKOFF_CAP_FACTOR = 16


def lock_keys(namespace: str) -> list[str]:
    """The lock key and its fencing-token counter."""
    return [f"racebench:{namespace}:lock", f"racebench:{namespace}:lock:token"]


def px(ttl_ms: float) -> int:
    return max(1, round(ttl_ms))


def sleep_before_retry(attempt: int, base_s: float, deadline: float) -> None:
    """Exponential backoff with equal jitter, never past the deadline; LockTimeout after it.

    The jitter keeps waiting clients from retrying in lockstep; its floor (half the step)
    keeps them from spinning on the server.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LockTimeout
    step = base_s * min(2**attempt, _BACKOFF_CAP_FACTOR)
    time.sleep(min(remaining, step / 2 + random.uniform(0, step / 2)))


class RedisLease:
    """The lock key and its token counter on one Redis server, for one client.

    It talks over one connection of its own, so the server's CLIENT ID of that connection
    names this client's lock session for the kill_session fault.
    """

    def __init__(self, url: str, namespace: str, timeout_s: float = 10.0) -> None:
        import redis

        # One connection, opened on first use: a pool of one always hands out the same.
        self.redis = redis.Redis.from_url(url, max_connections=1, **connect_options(timeout_s))
        self._client_id: int | None = None
        self._watching = False
        self.keys = lock_keys(namespace)
        self._acquire = self.redis.register_script(ACQUIRE)
        self._release = self.redis.register_script(RELEASE)
        self._renew = self.redis.register_script(RENEW)
        self._raise_counter = self.redis.register_script(RAISE_COUNTER)

    def try_acquire(self, value: str, ttl_ms: float) -> int:
        """The fencing token if granted, else 0."""
        return int(self._acquire(keys=self.keys, args=[value, px(ttl_ms), MIN_LEFTOVER_TTL_S]))

    def release(self, value: str) -> bool:
        return bool(self._release(keys=self.keys[:1], args=[value]))

    def prepare_renewals(self) -> None:
        """Connect and load the renewal script now: done cold, at the first renewal, it took
        190 ms here under load, longer than the slack a lease has between two renewals."""
        self.redis.script_load(RENEW)

    def renew(self, value: str, ttl_ms: float) -> bool:
        """Extend the lease to `ttl_ms` from now if it still holds `value`."""
        return bool(self._renew(keys=self.keys[:1], args=[value, px(ttl_ms)]))

    def raise_counter(self, token: int) -> None:
        self._raise_counter(keys=self.keys[1:], args=[token, MIN_LEFTOVER_TTL_S])

    def client_id(self) -> int:
        """The server's CLIENT ID of this lease's connection (asked once per connection)."""
        if self._client_id is None:
            self._client_id = int(self.redis.client_id())
            if not self._watching:
                # A killed connection reconnects on the next command, under a new CLIENT ID.
                pool = self.redis.connection_pool
                connection = pool.get_connection()
                try:
                    connection.register_connect_callback(self._forget_client_id)
                finally:
                    pool.release(connection)
                self._watching = True
        return self._client_id

    def _forget_client_id(self, connection: object) -> None:
        self._client_id = None

    def close(self) -> None:
        self.redis.close()


class LeaseWatchdog:
    """Renews a held lease every `ttl_ms / 3` from a daemon thread, as Redisson's does.

    `renew()` extends the lease and says whether it was still held. The thread stops when
    `stop()` is called (at release), when a renewal finds the lease gone (it lapsed: the holder
    is not told, as with Redisson), or with its process. A renewal that cannot reach the server
    is tried again at the next tick: the lease may still be there. A paused process pauses
    this thread too, so a pause longer than the lease left lets it lapse.
    """

    def __init__(self, renew: Callable[[], bool], ttl_ms: float) -> None:
        self._renew = renew
        self._interval_s = ttl_ms / 3000
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        while not self._stopped.wait(self._interval_s):
            try:
                if not self._renew():
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                continue

    def stop(self) -> None:
        """Stop renewing; wait for a renewal in flight, so none lands after the release."""
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()


# Faults whose harm to a lease depends on how long they last against the ttl.
_TIMED_FAULTS = frozenset({"pause_client", "partition", "server_pause", "latency"})


def renewal_keeps_exclusion(fault: FaultConfig, ttl_ms: float) -> bool:
    """Whether a lease renewed every ttl/3 outlasts a timed fault, whatever the section's length.

    Renewal leaves at least two thirds of the ttl on the lease at any moment, less a renewal's
    round trip. A pause of the holder's process (the watchdog stops with it), or a partition
    or server pause that keeps renewals from the server, lets the lease lapse once it lasts
    longer than that; racebench claims exclusion only below half the ttl, leaving the rest for
    the round trip and scheduling. Latency delays each renewal there and back.
    """
    from racebench.faults.network import LatencyConfig

    if isinstance(fault, LatencyConfig):
        return 2 * (fault.delay_ms + fault.jitter_ms) < ttl_ms / 6
    return fault.lasts_ms() < ttl_ms / 2


class RenewableLockConfig(LockConfig):
    """The keys of a lease that a watchdog can renew (redis_lock, redlock)."""

    renew: bool = Field(
        default=False,
        description="a watchdog in the holder's process renews the lease every ttl/3 while "
        "it is held",
    )


class RenewableLease(LockService):
    """A lease that `guard.lock.renew` keeps alive from a watchdog in the holder's process."""

    renewable = True
    config_model = RenewableLockConfig
    config: RenewableLockConfig

    def claims_exclusion(self, race_window_ms: float, faults: Sequence[FaultConfig] = ()) -> bool:
        if not self.config.renew:
            return super().claims_exclusion(race_window_ms, faults)
        # Renewed, the section may outlast the ttl; only timed faults can still outlast it.
        return all(
            renewal_keeps_exclusion(f, self.config.ttl_ms)
            if f.kind in _TIMED_FAULTS
            else self.keeps_exclusion(f, race_window_ms)
            for f in faults
        )


def expire_now(client: redis.Redis, namespace: str) -> bool:
    """PEXPIRE the lock key to 1 ms, as a forward clock jump past the lease would; held?"""
    return bool(client.pexpire(lock_keys(namespace)[0], 1))


class RedisLockClient(LockClient):
    def __init__(
        self,
        url: str,
        namespace: str,
        ttl_ms: float,
        acquire_timeout_s: float,
        retry_s: float,
        renew: bool = False,
    ) -> None:
        self.lease = RedisLease(url, namespace)
        self.ttl_ms = ttl_ms
        self.acquire_timeout_s = acquire_timeout_s
        self.retry_s = retry_s
        self.value: str | None = None
        # The watchdog's own connection: the lease's connection is busy in the holder's thread.
        self.renewal = RedisLease(url, namespace) if renew else None
        if self.renewal is not None:
            self.renewal.prepare_renewals()
        self.watchdog: LeaseWatchdog | None = None

    def acquire(self) -> int:
        deadline = time.monotonic() + self.acquire_timeout_s
        attempt = 0
        while True:
            value = secrets.token_hex(16)  # unique per grant: release proves ownership
            token = self.lease.try_acquire(value, self.ttl_ms)
            if token:
                self.value = value
                if self.renewal is not None:
                    renew = partial(self.renewal.renew, value, self.ttl_ms)
                    self.watchdog = LeaseWatchdog(renew, self.ttl_ms)
                return token
            sleep_before_retry(attempt, self.retry_s, deadline)
            attempt += 1

    def release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.value is not None:
            value, self.value = self.value, None
            self.lease.release(value)

    def session_id(self) -> int:
        return self.lease.client_id()

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.lease.close()
        if self.renewal is not None:
            self.renewal.close()


class RedisLock(RenewableLease):
    """A lease on one Redis server; lost when it expires or the server forgets it.

    See the module docstring: exclusion holds only while every critical section is shorter
    than `ttl_ms`; fencing tokens turn a late writer into a counted rejection.
    """

    service = "redis_lock"
    description = "SET key value NX PX ttl on one Redis server; Lua compare-and-delete release"
    failure_mode = (
        "a lease: a holder slower or paused past ttl_ms goes on while the next is granted "
        "(two in the critical section), and a Redis restart without persistence forgets the "
        "lock; guard.fencing (INCR token) keeps the data safe"
    )
    lease = True
    default_url = DEFAULT_URL
    url_env = "RACEBENCH_REDIS_URL"
    extra = "redis"
    drivers = ("redis", "hiredis")
    test_server = "redis_url"
    fault_kinds = frozenset({"expire_early", "lose_lock_state", "kill_session", "server_pause"})

    @property
    def url(self) -> str:
        """guard.lock.url, else the store's URL when the store is Redis, else the default."""
        if self.config.url:
            return self.config.url
        if self.store_url and self.store_url.startswith(("redis://", "rediss://", "unix://")):
            return self.store_url
        return self.configured_url() or DEFAULT_URL

    def server_url(self) -> str:
        return self.url

    def check_reachable(self) -> dict[str, str]:
        facts = server_facts(self.url, self.service)
        return {"server": "redis", "version": facts["version"]}

    def teardown(self) -> None:
        client = open_redis(self.url)
        try:
            client.delete(*lock_keys(self.namespace))
        finally:
            client.close()

    def leftovers(self) -> list[str]:
        client = open_redis(self.url)
        try:
            return scan_keys(client, "racebench:*:lock*")
        finally:
            client.close()

    def _admin(self) -> redis.Redis:
        return open_redis(self.url, timeout_s=2.0)

    def expire_early(self) -> str:
        client = self._admin()
        try:
            held = expire_now(client, self.namespace)
        finally:
            client.close()
        return "emulated: PEXPIRE lock 1 ms" if held else "emulated: no lock was held"

    def lose_state(self, instances: int) -> str:
        # racebench never starts the server itself, so it cannot restart it: delete instead.
        client = self._admin()
        try:
            deleted = client.delete(*lock_keys(self.namespace))
        finally:
            client.close()
        return f"emulated: deleted the lock key and token counter ({deleted} keys)"

    def kill_session(self, session_id: int) -> str:
        client = self._admin()
        try:
            killed = client.client_kill_filter(_id=str(session_id)) if session_id else 0
        finally:
            client.close()
        # Redis ties no key to a connection: the lease lives on, and the holder's client
        # reconnects for its release.
        return f"CLIENT KILL ID {session_id}: {killed} killed (the lock key stays)"

    def pause_server(self, duration_ms: float) -> str:
        client = self._admin()
        try:
            client.client_pause(max(1, round(duration_ms)), all=True)
        finally:
            client.close()
        return f"CLIENT PAUSE {round(duration_ms)} ALL"

    def keeps_exclusion(self, fault: FaultConfig, race_window_ms: float) -> bool:
        # A killed connection leaves the key: the lease runs on until released or expired.
        if fault.kind == "kill_session":
            return True
        return super().keeps_exclusion(fault, race_window_ms)

    def connect(self, client_id: int) -> LockClient:
        return RedisLockClient(
            self.url,
            self.namespace,
            self.config.ttl_ms,
            self.config.acquire_timeout_ms / 1000,
            self.config.retry_delay_ms / 1000,
            self.config.renew,
        )
