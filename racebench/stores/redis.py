"""Redis: one single-threaded server, with Lua scripts and WATCH/MULTI/EXEC.

Keys live under `racebench:{namespace}:`. The counter is a string key (so INCRBY applies),
the G-counter a hash with one field per client, and the withdraw ledger a list of
`amount:client:seq` entries whose sum is the balance; transfer's accounts are one key each
(stores/redis_transfer.py). Redis runs each command and each Lua script alone, so a script
that reads, checks and writes is atomic; the races come from a read and a write sent as
separate commands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    OK_STEP,
    REJECTED_STEP,
    AsyncStoreClient,
    ClientOptions,
    Conflict,
    StaleToken,
    StepResult,
    Store,
    StoreClient,
    StrategySpec,
)
from racebench.stores.kv_transfer import KEY_VALUE_WORKLOADS
from racebench.stores.redis_transfer import TRANSFER, RedisTransfer, read_balances, seed_accounts
from racebench.util.redact import redact_text
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, LedgerRow, Plan
from racebench.workloads.rows import RowPlan, TransferPlan

if TYPE_CHECKING:
    import redis

    from racebench.guards import CallbackLoop

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# INCRBY only when the result stays at or above the floor: check and write in one script.
COUNTER_ADD_WITH_FLOOR = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
if value + tonumber(ARGV[1]) < tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
"""

# Append a withdrawal only when the ledger's sum covers it.
LEDGER_WITHDRAW = """
local balance = 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  balance = balance + tonumber(string.match(entry, '^(-?%d+)'))
end
if balance < tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
"""

# Fenced read: register the token unless a newer one was seen, then read (nil: stale).
FENCED_GET = """
if tonumber(ARGV[1]) < tonumber(redis.call('GET', KEYS[1]) or '0') then return false end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return redis.call('GET', KEYS[2])
"""

FENCED_LRANGE = """
if tonumber(ARGV[1]) < tonumber(redis.call('GET', KEYS[1]) or '0') then return false end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# Fenced writes: accepted only while the token is still the newest registered (0: stale).
# Every SET keeps the key's time to live (KEEPTTL): see RedisStore.setup.
FENCED_SET = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
return 1
"""

FENCED_RPUSH = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


def connect_options(timeout_s: float = 10.0) -> dict[str, Any]:
    """How every racebench Redis connection is opened (store, locks, bare benchmark)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No automatic resend: a retried INCRBY or RPUSH after a lost reply could apply twice,
    # and racebench must see each failure to record an unknown outcome.
    return {
        "socket_connect_timeout": min(timeout_s, 2.0),
        "socket_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }


def open_redis(url: str, timeout_s: float = 10.0) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, **connect_options(timeout_s))


def server_facts(url: str, what: str) -> dict[str, str]:
    """Ping one Redis server; its version and run id, or BackendUnavailable naming `what`."""
    import redis

    client = open_redis(url, timeout_s=2.0)
    try:
        info = client.info("server")
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(
            redact_text(f"{what}: cannot reach Redis at {url}: {message}")
        ) from None
    finally:
        client.close()
    return {"server": "redis", "version": str(info["redis_version"]), "run_id": info["run_id"]}


def scan_keys(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match=pattern, count=1000))


def delete_matching(client: redis.Redis, pattern: str) -> None:
    if keys := list(client.scan_iter(match=pattern, count=1000)):
        client.delete(*keys)


# Each strategy Redis runs natively, by the client method that builds its step (the
# blocking RedisClient and the asyncio AsyncRedisClient share the names).
COUNTER_STEPS: Mapping[str, str] = {
    "atomic": "_counter_atomic_step",
    "optimistic": "_counter_watch_step",
}
LEDGER_STEPS: Mapping[str, str] = {
    "atomic": "_ledger_atomic_step",
    "optimistic": "_ledger_watch_step",
}


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one namespace; `fence` holds the newest fencing token of the resource;
    transfer's account `i` is `account` + `i`."""

    counter: str
    slots: str
    ledger: str
    fence: str
    account: str

    @classmethod
    def of(cls, namespace: str) -> RedisKeys:
        prefix = f"racebench:{namespace}:"
        return cls(
            prefix + "counter",
            prefix + "slots",
            prefix + "ledger",
            prefix + "fence",
            prefix + "account:",
        )


def _entry(amount: int, client: int, seq: int) -> str:
    return f"{amount}:{client}:{seq}"


def _raw_replies(replies: list[bytes | str]) -> list[bytes]:
    """The replies as the bytes they are: `open_redis` never sets decode_responses.

    redis-py types its replies `bytes | str` because a client may decode them; ours do not.
    """
    return cast(list[bytes], replies)


def _ledger_balance(entries: list[bytes]) -> int:
    """The sum of the amounts of ledger entries (`amount:client:seq`)."""
    return sum(int(entry.split(b":", 1)[0]) for entry in entries)


def _int_reply(reply: bytes | str | None, what: str) -> int:
    """An integer stored in Redis; a key that is missing (None) is an error naming it."""
    if reply is None:
        raise ValueError(f"redis: {what} is missing")
    return int(reply)


def _parse_entry(raw: bytes) -> LedgerRow:
    amount, client, seq = raw.split(b":")
    return LedgerRow(int(amount), int(client), int(seq))


class RedisClient(RedisTransfer):
    """One client's redis-py connection, with its Lua scripts registered.

    A connection lost or timed out mid-command makes the operation's outcome unknown (the
    server may have applied it); redis-py reconnects on the next command.
    """

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self.redis = open_redis(url)
        self.keys = RedisKeys.of(namespace)
        self.slot_field = str(options.client_id)
        register = self.redis.register_script
        self.add_with_floor = register(COUNTER_ADD_WITH_FLOOR)
        self.withdraw = register(LEDGER_WITHDRAW)
        self.fenced_get = register(FENCED_GET)
        self.fenced_lrange = register(FENCED_LRANGE)
        self.fenced_set = register(FENCED_SET)
        self.fenced_rpush = register(FENCED_RPUSH)
        self.transfer_script = register(TRANSFER)

    def read_counter(self, token: int | None = None) -> int:
        if token is None:
            return _int_reply(self.redis.get(self.keys.counter), self.keys.counter)
        value = self.fenced_get(keys=[self.keys.fence, self.keys.counter], args=[token])
        if value is None:
            raise StaleToken
        return int(value)

    def write_counter(self, value: int, token: int | None = None) -> None:
        if token is None:
            self.redis.set(self.keys.counter, value, keepttl=True)
        elif not self.fenced_set(keys=[self.keys.fence, self.keys.counter], args=[token, value]):
            raise StaleToken

    def read_balance(self, token: int | None = None) -> int:
        if token is None:
            entries = _raw_replies(self.redis.lrange(self.keys.ledger, 0, -1))
        else:
            entries = self.fenced_lrange(keys=[self.keys.fence, self.keys.ledger], args=[token])
            if entries is None:
                raise StaleToken
        return _ledger_balance(entries)

    def append_entry(self, amount: int, seq: int, token: int | None = None) -> None:
        entry = _entry(amount, self.options.client_id, seq)
        if token is None:
            self.redis.rpush(self.keys.ledger, entry)
        elif not self.fenced_rpush(keys=[self.keys.fence, self.keys.ledger], args=[token, entry]):
            raise StaleToken

    def read_slot(self) -> int:
        return _int_reply(self.redis.hget(self.keys.slots, self.slot_field), self.keys.slots)

    def write_slot(self, value: int) -> None:
        self.redis.hset(self.keys.slots, self.slot_field, value)

    def _counter_atomic_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        if plan.floor is None:
            self.redis.incrby(self.keys.counter, plan.delta)
            return OK_STEP
        done = self.add_with_floor(keys=[self.keys.counter], args=[plan.delta, plan.floor])
        return OK_STEP if done else REJECTED_STEP

    def _counter_watch_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        return self.retrying(lambda: self._counter_watch(plan))

    def _counter_watch(self, plan: CounterPlan) -> Outcome:
        import redis

        # Leaving the `with` block resets the pipeline, which UNWATCHes on every path.
        with self.redis.pipeline() as pipe:
            pipe.watch(self.keys.counter)
            value = self.read_value = _int_reply(pipe.get(self.keys.counter), self.keys.counter)
            self.pause()
            if plan.floor is not None and value + plan.delta < plan.floor:
                return Outcome.REJECTED
            pipe.multi()
            pipe.set(self.keys.counter, value + plan.delta, keepttl=True)
            try:
                pipe.execute()
            except redis.WatchError:
                raise Conflict("watch") from None
        self.written_value = value + plan.delta
        return Outcome.OK

    def _ledger_atomic_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        entry = _entry(-plan.amount, self.options.client_id, seq)
        done = self.withdraw(keys=[self.keys.ledger], args=[plan.amount, entry])
        return OK_STEP if done else REJECTED_STEP

    def _ledger_watch_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        return self.retrying(lambda: self._ledger_watch(plan, seq))

    # RedisStore.strategies (transfer: RedisTransfer.row_steps); the asyncio client names its
    # methods alike.
    counter_steps: ClassVar[Mapping[str, str]] = COUNTER_STEPS
    ledger_steps: ClassVar[Mapping[str, str]] = LEDGER_STEPS

    def _ledger_watch(self, plan: LedgerPlan, seq: int) -> Outcome:
        import redis

        # WATCH on the ledger list itself: any append between our read and EXEC aborts it,
        # so the balance we checked is the balance we append to.
        with self.redis.pipeline() as pipe:
            pipe.watch(self.keys.ledger)
            balance = _ledger_balance(_raw_replies(pipe.lrange(self.keys.ledger, 0, -1)))
            self.read_value = balance
            self.pause()
            if balance < plan.amount:
                return Outcome.REJECTED
            pipe.multi()
            pipe.rpush(self.keys.ledger, _entry(-plan.amount, self.options.client_id, seq))
            try:
                pipe.execute()
            except redis.WatchError:
                raise Conflict("watch") from None
        self.written_value = -plan.amount
        return Outcome.OK

    def classify(self, exc: BaseException) -> Outcome:
        import redis

        # A lost connection or a timeout may hide a write the server applied.
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return Outcome.UNKNOWN
        return super().classify(exc)

    def close(self) -> None:
        self.redis.close()


class AsyncRedisClient(AsyncStoreClient):
    """One client's lean asyncio connection (racebench.stores.redis_lean), for the unguarded
    primitives and the native strategies; the commands it sends are the blocking client's."""

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        from racebench.stores.redis_lean import LeanRedis, encode, encode_cached, script_sha

        super().__init__(options)
        self.conn = LeanRedis(url)
        keys = self.keys = RedisKeys.of(namespace)
        self.slot_field = str(options.client_id)
        self.scripts = {
            script_sha(text): text for text in (COUNTER_ADD_WITH_FLOOR, LEDGER_WITHDRAW)
        }
        self.add_with_floor_sha = script_sha(COUNTER_ADD_WITH_FLOOR)
        self.withdraw_sha = script_sha(LEDGER_WITHDRAW)
        self.encode, self.encode_cached = encode, encode_cached
        # Commands whose bytes never change, encoded once (and shared by the worker's clients).
        self.get_counter = encode_cached("GET", keys.counter)
        self.get_slot = b""  # this client's own field: encoded on first use (crdt only)
        self.lrange_ledger = encode_cached("LRANGE", keys.ledger, 0, -1)
        self.watch_counter = encode_cached("WATCH", keys.counter)
        self.watch_ledger = encode_cached("WATCH", keys.ledger)
        self.unwatch = encode_cached("UNWATCH")

    async def connect(self) -> None:
        # Scripts are loaded on the first NOSCRIPT, not here: 8,000 clients connect faster.
        await self.conn.connect()

    async def read_counter(self) -> int:
        return int(await self.conn.call(self.get_counter))

    async def write_counter(self, value: int) -> None:
        await self.conn.call(self.encode("SET", self.keys.counter, value, "KEEPTTL"))

    async def read_balance(self) -> int:
        return _ledger_balance(await self.conn.call(self.lrange_ledger))

    async def append_entry(self, amount: int, seq: int) -> None:
        entry = _entry(amount, self.options.client_id, seq)
        await self.conn.call(self.encode("RPUSH", self.keys.ledger, entry))

    async def read_slot(self) -> int:
        if not self.get_slot:
            self.get_slot = self.encode("HGET", self.keys.slots, self.slot_field)
        return int(await self.conn.call(self.get_slot))

    async def write_slot(self, value: int) -> None:
        await self.conn.call(self.encode("HSET", self.keys.slots, self.slot_field, value))

    async def _evalsha(self, payload: bytes) -> Any:
        from racebench.stores.redis_lean import RedisReplyError

        try:
            return await self.conn.call(payload)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # The server lost its script cache (a restart): load the scripts, send again.
            for text in self.scripts.values():
                await self.conn.call(self.encode("SCRIPT", "LOAD", text))
            return await self.conn.call(payload)

    def _counter_atomic_step(
        self, strategy: str, plan: CounterPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        if plan.floor is None:
            incrby = self.encode_cached("INCRBY", self.keys.counter, plan.delta)
            call = self.conn.call

            async def incr(seq: int) -> StepResult:
                await call(incrby)
                return OK_STEP

            return incr
        add = self.encode_cached(
            "EVALSHA", self.add_with_floor_sha, 1, self.keys.counter, plan.delta, plan.floor
        )

        async def add_with_floor(seq: int) -> StepResult:
            return OK_STEP if await self._evalsha(add) else REJECTED_STEP

        return add_with_floor

    def _ledger_atomic_step(
        self, strategy: str, plan: LedgerPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        async def withdraw(seq: int) -> StepResult:
            entry = _entry(-plan.amount, self.options.client_id, seq)
            payload = self.encode(
                "EVALSHA", self.withdraw_sha, 1, self.keys.ledger, plan.amount, entry
            )
            return OK_STEP if await self._evalsha(payload) else REJECTED_STEP

        return withdraw

    def _counter_watch_step(
        self, strategy: str, plan: CounterPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        return lambda seq: self.retrying(lambda: self._counter_watch(plan))

    def _ledger_watch_step(
        self, strategy: str, plan: LedgerPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        return lambda seq: self.retrying(lambda: self._ledger_watch(plan, seq))

    # RedisStore.strategies on the loop, by the same method names as RedisClient's.
    counter_steps: ClassVar[Mapping[str, str]] = COUNTER_STEPS
    ledger_steps: ClassVar[Mapping[str, str]] = LEDGER_STEPS

    def callback_loop(self, strategy: str, plan: CounterPlan | LedgerPlan) -> CallbackLoop | None:
        # likes (INCRBY) and stock (the floor script) atomic: one fixed command per operation,
        # run from the protocol's callbacks (see racebench.stores.redis_lean for why).
        from racebench.stores.redis_lean import callback_loop

        if strategy != "atomic" or not isinstance(plan, CounterPlan):
            return None
        if plan.floor is None:
            return callback_loop(
                self.conn, self.encode_cached("INCRBY", self.keys.counter, plan.delta), True
            )
        add = self.encode_cached(
            "EVALSHA", self.add_with_floor_sha, 1, self.keys.counter, plan.delta, plan.floor
        )
        return callback_loop(self.conn, add, False)

    async def _watched_write(self, write: bytes) -> Outcome:
        # MULTI, the write and EXEC in one round trip; a nil EXEC reply: the key changed.
        batch = self.encode("MULTI") + write + self.encode("EXEC")
        if await self.conn.call(batch, replies=3) is None:
            raise Conflict("watch")
        return Outcome.OK

    async def _counter_watch(self, plan: CounterPlan) -> Outcome:
        await self.conn.call(self.watch_counter)
        value = self.read_value = int(await self.conn.call(self.get_counter))
        await self.pause()
        if plan.floor is not None and value + plan.delta < plan.floor:
            await self.conn.call(self.unwatch)
            return Outcome.REJECTED
        outcome = await self._watched_write(
            self.encode("SET", self.keys.counter, value + plan.delta, "KEEPTTL")
        )
        self.written_value = value + plan.delta
        return outcome

    async def _ledger_watch(self, plan: LedgerPlan, seq: int) -> Outcome:
        # WATCH the ledger list itself, as the blocking client does.
        await self.conn.call(self.watch_ledger)
        balance = self.read_value = await self.read_balance()
        await self.pause()
        if balance < plan.amount:
            await self.conn.call(self.unwatch)
            return Outcome.REJECTED
        entry = _entry(-plan.amount, self.options.client_id, seq)
        outcome = await self._watched_write(self.encode("RPUSH", self.keys.ledger, entry))
        self.written_value = -plan.amount
        return outcome

    def classify(self, exc: BaseException) -> Outcome:
        # A lost connection may hide a write the server applied.
        if isinstance(exc, ConnectionError | OSError | TimeoutError):
            return Outcome.UNKNOWN
        return super().classify(exc)

    async def recover(self) -> None:
        # A connection lost mid-WATCH also lost its WATCH: reconnecting starts clean.
        if self.conn.protocol is not None and self.conn.protocol.lost is not None:
            self.conn.close()

    async def close(self) -> None:
        self.conn.close()


class RedisStore(Store):
    """Redis: `atomic` as one command or Lua script, `optimistic` as WATCH/MULTI/EXEC."""

    backend = "redis"
    description = "Redis via redis-py + hiredis; keys under racebench:{run}:"
    integer_type = "a Redis integer (signed 64-bit, INCRBY)"
    default_url = DEFAULT_URL
    url_env = "RACEBENCH_REDIS_URL"
    extra = "redis"
    drivers = ("redis", "hiredis")
    ports = {"redis": 6379, "rediss": 6379}
    test_server = "redis_url"
    workloads = KEY_VALUE_WORKLOADS
    strategies = {
        "atomic": StrategySpec(
            "one server-side step: INCRBY for likes; a Lua script that checks the floor (stock)"
            ", the ledger's sum (withdraw) or the source's balance (transfer) and writes",
            prevents="lost update, oversell, overdraft, lost transfer, read skew (Redis runs a "
            "script alone, start to end; transfer readers read every account with one MGET)",
            safe_for=KEY_VALUE_WORKLOADS,
            supports=KEY_VALUE_WORKLOADS,
        ),
        "optimistic": StrategySpec(
            "WATCH the key (the counter, the ledger list, or both accounts), read, "
            "MULTI/write/EXEC; EXEC aborts if a watched key changed since WATCH, and the "
            "operation is retried",
            prevents="lost update, oversell, overdraft, lost transfer, read skew (a transfer's "
            "two writes commit in one EXEC; readers read every account with one MGET)",
            safe_for=KEY_VALUE_WORKLOADS,
            supports=KEY_VALUE_WORKLOADS,
        ),
    }

    async_strategies = frozenset({"none", "crdt", "atomic", "optimistic"})
    async_driver = "lean RESP over hiredis (racebench.stores.redis_lean)"

    def __init__(self, url: str | None, namespace: str) -> None:
        super().__init__(url, namespace)
        self.keys = RedisKeys.of(namespace)

    def connection_limit(self) -> tuple[str, int] | None:
        client = open_redis(self.redis_url, timeout_s=2.0)
        try:
            maxclients = _int_reply(client.config_get("maxclients")["maxclients"], "maxclients")
            connected = int(client.info("clients")["connected_clients"])
        except Exception:  # CONFIG may be renamed or refused (managed Redis): no check
            return None
        finally:
            client.close()
        return "maxclients", maxclients - connected

    async def async_connect(self, options: ClientOptions) -> AsyncStoreClient:
        client = AsyncRedisClient(self.redis_url, self.namespace, options)
        await client.connect()
        return client

    @property
    def redis_url(self) -> str:
        # Read at each use: a proxy fault rewrites `url` in the client's process.
        return self.url or DEFAULT_URL

    def check_reachable(self) -> dict[str, str]:
        facts = server_facts(self.redis_url, "redis store")
        return {"server": facts["server"], "version": facts["version"]}

    def setup(self, plan: Plan | RowPlan, clients: int) -> None:
        assert isinstance(plan, CounterPlan | LedgerPlan | TransferPlan)  # workloads: no booking
        # Every key gets a time to live that outlasts the run (expire_after_s): a run killed
        # before its teardown leaves keys that `racebench clean` removes, or Redis in time.
        ttl = self.expire_after_s
        client = open_redis(self.redis_url)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.set(self.keys.fence, 0, ex=ttl)
            if isinstance(plan, CounterPlan):
                pipe.set(self.keys.counter, plan.initial, ex=ttl)
                pipe.hset(self.keys.slots, mapping={str(i): 0 for i in range(clients)})
                pipe.expire(self.keys.slots, ttl)
            elif isinstance(plan, TransferPlan):
                seed_accounts(pipe, self.keys, plan, ttl)
            else:
                pipe.rpush(self.keys.ledger, _entry(plan.deposit, -1, 0))
                pipe.expire(self.keys.ledger, ttl)
            pipe.execute()
        finally:
            client.close()

    def read_final(self, plan: Plan | RowPlan) -> FinalState:
        assert isinstance(plan, CounterPlan | LedgerPlan | TransferPlan)  # workloads: no booking
        client = open_redis(self.redis_url)
        try:
            if isinstance(plan, TransferPlan):
                return FinalState(balances=read_balances(client, self.keys, plan))
            if isinstance(plan, CounterPlan):
                value = _int_reply(client.get(self.keys.counter), self.keys.counter)
                slots = sum(int(v) for v in client.hvals(self.keys.slots))
                return FinalState(value=value, slots_total=slots)
            entries = _raw_replies(client.lrange(self.keys.ledger, 0, -1))
            rows = [_parse_entry(raw) for raw in entries]
            return FinalState(rows=rows)
        finally:
            client.close()

    def teardown(self) -> None:
        client = open_redis(self.redis_url)
        try:
            delete_matching(client, f"racebench:{self.namespace}:*")
        finally:
            client.close()

    def leftovers(self) -> list[str]:
        client = open_redis(self.redis_url)
        try:
            return scan_keys(client, "racebench:*")
        finally:
            client.close()

    def connect(self, options: ClientOptions) -> StoreClient:
        return RedisClient(self.redis_url, self.namespace, options)
