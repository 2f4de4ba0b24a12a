"""redlock: the Redlock quorum algorithm over N independent Redis servers.

A client sets the lock (`SET NX PX ttl`, one random value) on every server in turn, with a
per-server timeout small against the ttl, and holds the lock when a majority granted it and
the time left, `ttl - elapsed - (0.01 * ttl + 2 ms)` measured on the monotonic clock, is
still positive; otherwise it releases on all servers and retries. Release is a
compare-and-delete on every server.

The lock is a lease, so it is lost exactly like redis_lock's: a holder paused past the
validity runs on while another holds the lock. A server restarting without persistence
breaks exclusion when it was one of a bare majority that granted the holder (the others can
then win a majority); Redlock relies on persistence or restarts delayed past the ttl. Servers
that stay dead only make grants rarer: the holder keeps its grants on the live ones, so no
one else can win a majority (kill_server keeps exclusion, restart_server does not).

With `guard.lock.renew: true` a watchdog thread in the holder's process extends the lease on
every server every `ttl / 3` (compare-and-PEXPIRE), and stops at release, with the process, or
when fewer than a majority still hold the grant within the validity; a pause or a partition
stops the renewals as it does for redis_lock.

Fencing is best effort. Each server's grant increments its own token counter in the same
script, the token is the largest over the granting majority, and the grant lifts the
counters of the servers it reached to that token. Two majorities share a server, so a later
grant usually gets a larger token; but a server that lost its counter, or a holder paused
between its grant and the lift, can give a later grant an equal or smaller token. Redlock has
no consensus to order grants; a lock service that does (ZooKeeper) gives sound tokens.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from pydantic import Field

from racebench.errors import RacebenchError
from racebench.locks.base import LockClient
from racebench.locks.redis_lock import (
    LeaseWatchdog,
    RedisLease,
    RenewableLease,
    RenewableLockConfig,
    expire_now,
    lock_keys,
    sleep_before_retry,
)
from racebench.stores.redis import open_redis, scan_keys, server_facts
from racebench.util.redact import redact_text

if TYPE_CHECKING:
    import redis


DEFAULT_URLS = "redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0,redis://127.0.0.1:6381/0"


def drift_allowance_ms(ttl_ms: float) -> float:
    """The clock-drift allowance of the Redlock description: 1% of the ttl plus 2 ms."""
    return 0.01 * ttl_ms + 2.0


def instance_timeout_s(ttl_ms: float) -> float:
    # Small against the ttl, so a dead server costs little of the validity; not below 50 ms,
    # which a busy two-core host can take to schedule a reply.
    return min(1.0, max(0.05, ttl_ms / 10_000))


class RedlockClient(LockClient):
    def __init__(
        self,
        urls: list[str],
        namespace: str,
        ttl_ms: float,
        acquire_timeout_s: float,
        retry_s: float,
        renew: bool = False,
    ) -> None:
        import redis

        timeout_s = instance_timeout_s(ttl_ms)
        self.leases = [RedisLease(url, namespace, timeout_s) for url in urls]
        self.quorum = len(urls) // 2 + 1
        self.ttl_ms = ttl_ms
        self.acquire_timeout_s = acquire_timeout_s
        self.retry_s = retry_s
        self.value: str | None = None
        # The watchdog's own connections: the leases' are busy in the holder's thread.
        self.renewals = [RedisLease(url, namespace, timeout_s) for url in urls] if renew else []
        for lease in self.renewals:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                lease.prepare_renewals()  # a server down now is tried again at each renewal
        self.watchdog: LeaseWatchdog | None = None

    def _renew_all(self, value: str) -> bool:
        """Extend the lease on every server; still held if a majority did within validity."""
        import redis

        started = time.monotonic()
        renewed = 0
        for lease in self.renewals:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                renewed += lease.renew(value, self.ttl_ms)
        elapsed_ms = (time.monotonic() - started) * 1000
        validity_ms = self.ttl_ms - elapsed_ms - drift_allowance_ms(self.ttl_ms)
        return renewed >= self.quorum and validity_ms > 0

    def _try_each(self, value: str) -> list[tuple[RedisLease, int]]:
        import redis

        granted = []
        for lease in self.leases:
            try:
                token = lease.try_acquire(value, self.ttl_ms)
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # a server down or slow counts as a refusal
            if token:
                granted.append((lease, token))
        return granted

    def acquire(self) -> int:
        deadline = time.monotonic() + self.acquire_timeout_s
        attempt = 0
        while True:
            value = secrets.token_hex(16)
            started = time.monotonic()
            granted = self._try_each(value)
            elapsed_ms = (time.monotonic() - started) * 1000
            validity_ms = self.ttl_ms - elapsed_ms - drift_allowance_ms(self.ttl_ms)
            if len(granted) >= self.quorum and validity_ms > 0:
                self.value = value
                token = max(t for _, t in granted)
                self._lift_counters(granted, token)
                if self.renewals:
                    self.watchdog = LeaseWatchdog(partial(self._renew_all, value), self.ttl_ms)
                return token
            # A server may have granted although its reply timed out: release on all.
            self._release_all(value)
            sleep_before_retry(attempt, self.retry_s, deadline)
            attempt += 1

    def _lift_counters(self, granted: list[tuple[RedisLease, int]], token: int) -> None:
        import redis

        for lease, own in granted:
            # Best effort: a server missed here is lifted by a later grant through it.
            if own < token:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    lease.raise_counter(token)

    def _release_all(self, value: str) -> None:
        import redis

        for lease in self.leases:
            # A server that does not answer lets the key expire with the ttl.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                lease.release(value)

    def release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.value is not None:
            value, self.value = self.value, None
            self._release_all(value)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        for lease in self.leases + self.renewals:
            lease.close()


class RedlockConfig(RenewableLockConfig):
    """redlock's keys: the independent Redis servers it takes a majority of."""

    urls: list[str] | None = Field(
        default=None, description="one URL per independent Redis server (else servers' URLs)"
    )


class Redlock(RenewableLease):
    """A lease granted by a majority of N independent Redis servers.

    See the module docstring: the lease expires like redis_lock's, a minority of servers may
    fail, a server that forgets can break it, and its fencing tokens are best effort.
    """

    service = "redlock"
    description = "Redlock: SET NX PX on a majority of N independent Redis servers (urls)"
    failure_mode = (
        "a lease: a holder paused past the validity runs on beside the next holder; survives a "
        "minority of servers failing, but a server of a bare granting majority that restarts "
        "without persistence lets another client in; fencing tokens (max of per-server INCR) "
        "are best effort and can tie after a server loses its counter"
    )
    lease = True
    default_url = DEFAULT_URLS  # comma-separated, one URL per independent Redis server
    url_env = "RACEBENCH_REDLOCK_URLS"
    extra = "redis"
    drivers = ("redis", "hiredis")
    test_server = "redlock_urls"  # a list of URLs: the scenario key is guard.lock.urls
    fault_kinds = frozenset({"expire_early", "lose_lock_state", "server_pause"})
    config_model = RedlockConfig
    config: RedlockConfig

    @property
    def urls(self) -> list[str]:
        """guard.lock.urls, else those of guard.lock.servers, else $RACEBENCH_REDLOCK_URLS."""
        if self.config.urls:
            return self.config.urls
        if self.config.servers:
            return [server.url for server in self.config.servers]
        listed = self.configured_url() or DEFAULT_URLS
        return [url.strip() for url in listed.split(",") if url.strip()]

    def check_reachable(self) -> dict[str, str]:
        from racebench.errors import BackendUnavailable

        if self.config.url:
            raise RacebenchError("redlock: use guard.lock.urls (a list of Redis URLs), not url")
        facts, down = {}, []
        for url in self.urls:
            try:
                facts[url] = server_facts(url, self.service)
            except BackendUnavailable as exc:
                down.append(str(exc).split(": ", 1)[1])
        if down:
            raise BackendUnavailable(
                f"redlock: {len(down)} of {len(self.urls)} Redis servers unreachable ("
                + "; ".join(down)
                + "); set guard.lock.urls or RACEBENCH_REDLOCK_URLS"
            )
        run_ids = [f["run_id"] for f in facts.values()]
        if len(set(run_ids)) < len(run_ids):
            raise RacebenchError(
                redact_text(
                    "redlock: guard.lock.urls name one Redis server more than once "
                    f"({', '.join(self.urls)}); the quorum needs independent servers"
                )
            )
        versions = sorted({f["version"] for f in facts.values()})
        return {"server": "redis", "version": ",".join(versions), "instances": str(len(facts))}

    def teardown(self) -> None:
        import redis

        for url in self.urls:
            client = open_redis(url, timeout_s=2.0)
            try:
                client.delete(*lock_keys(self.namespace))
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # a server down now cannot be cleaned; leftovers() will show its keys
            finally:
                client.close()

    def leftovers(self) -> list[str]:
        import redis

        found = []
        for url in self.urls:
            client = open_redis(url, timeout_s=2.0)
            try:
                found += [
                    f"{redact_text(url)} {key}" for key in scan_keys(client, "racebench:*:lock*")
                ]
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            finally:
                client.close()
        return found

    @property
    def quorum(self) -> int:
        return len(self.urls) // 2 + 1

    # A proxy fault sits between a client and the first server; the others stay reachable.
    def server_url(self) -> str:
        return self.urls[0]

    def route_through(self, url: str) -> None:
        self.config = self.config.model_copy(update={"urls": [url, *self.urls[1:]]})

    def _on_servers(self, count: int, action: Callable[[redis.Redis], object]) -> list[object]:
        results = []
        for url in self.urls[:count]:
            client = open_redis(url, timeout_s=2.0)
            try:
                results.append(action(client))
            finally:
                client.close()
        return results

    def expire_early(self) -> str:
        held = self._on_servers(len(self.urls), lambda c: expire_now(c, self.namespace))
        return f"emulated: PEXPIRE lock 1 ms on {sum(map(bool, held))} of {len(self.urls)} servers"

    def lose_state(self, instances: int) -> str:
        """Delete the lock keys on the first `instances` servers; say what the holder kept.

        Forgetting even a minority can break exclusion: a holder granted by a bare majority
        keeps a minority when one of its servers forgets, and the others can win the rest
        (Redlock relies on persistence or delayed restarts). So no exclusion is claimed
        through this fault (LockService.keeps_exclusion); the note tells which case it was.
        """
        keys = lock_keys(self.namespace)
        held = self._on_servers(len(self.urls), lambda c: c.get(keys[0]))
        values = [v for v in held if v is not None]
        holder = max(set(values), key=values.count) if values else None
        granted = {i for i, v in enumerate(held) if holder is not None and v == holder}
        self._on_servers(instances, lambda c: c.delete(*keys))
        hit = min(instances, len(self.urls))
        kept = len(granted - set(range(hit)))
        return (
            f"emulated: deleted the lock keys on {hit} of {len(self.urls)} servers; the "
            f"holder's grant was on {len(granted)}, {kept} left (quorum {self.quorum})"
        )

    def pause_server(self, duration_ms: float) -> str:
        # The first server, as for proxy faults: the majority still answers without it.
        ms = max(1, round(duration_ms))
        self._on_servers(1, lambda c: c.client_pause(ms, all=True))
        return f"CLIENT PAUSE {ms} ALL on the first of {len(self.urls)} servers"

    def connect(self, client_id: int) -> LockClient:
        return RedlockClient(
            self.urls,
            self.namespace,
            self.config.ttl_ms,
            self.config.acquire_timeout_ms / 1000,
            self.config.retry_delay_ms / 1000,
            self.config.renew,
        )
