"""Transfer on Redis: one string key per account, `racebench:{run}:account:<id>`.

A key per account, not a hash: WATCH watches whole keys, so with a hash every transfer would
abort every other one in flight; with keys only the transfers sharing an account conflict.
Readers read every account with one `MGET`, which Redis runs alone: a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from racebench.history import Outcome
from racebench.stores.base import Conflict, StepResult
from racebench.stores.kv_transfer import KeyValueTransfer
from racebench.workloads.rows import RowPlan, TransferPlan

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from racebench.stores.redis import RedisKeys

# Move ARGV[1] from KEYS[1] to KEYS[2] only if KEYS[1] holds that much: the check and both
# writes in one script, which Redis runs alone. DECRBY and INCRBY keep the keys' time to live.
TRANSFER = """
local balance = redis.call('GET', KEYS[1])
if not balance or redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('racebench: account key missing')
end
if tonumber(balance) < tonumber(ARGV[1]) then return 0 end
redis.call('DECRBY', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[1])
return 1
"""


def account_keys(keys: RedisKeys, accounts: int) -> list[str]:
    """Every account's key, in account order (the order MGET returns the balances in)."""
    return [f"{keys.account}{i}" for i in range(accounts)]


def balances_of(replies: list[bytes | str | None], names: list[str]) -> list[int]:
    """The balances an MGET returned; a missing account is an error naming its key."""
    # A missing key reads as nil, which a sum would take for 0: money silently destroyed.
    # It means the key expired or another process deleted it, which the run must not hide.
    missing = [name for name, reply in zip(names, replies, strict=True) if reply is None]
    if missing:
        raise ValueError(f"redis: {missing[0]} is missing")
    return [int(reply) for reply in replies if reply is not None]


def seed_accounts(
    pipe: redis.client.Pipeline, keys: RedisKeys, plan: TransferPlan, ttl: int
) -> None:
    """Queue the opening balances on `pipe`, each key expiring after `ttl` seconds."""
    for name, balance in zip(
        account_keys(keys, plan.accounts), plan.opening_balances(), strict=True
    ):
        pipe.set(name, balance, ex=ttl)


def read_balances(client: redis.Redis, keys: RedisKeys, plan: TransferPlan) -> list[int]:
    """Every balance in one MGET: Redis runs it alone, so it is a consistent snapshot."""
    names = account_keys(keys, plan.accounts)
    return balances_of(client.mget(names), names)


class RedisTransfer(KeyValueTransfer):
    """Transfer on one client's redis-py connection (`redis`, `keys` and the registered
    `transfer_script`: set by the client)."""

    redis: redis.Redis
    keys: RedisKeys
    transfer_script: Script

    def read_accounts(self, plan: TransferPlan) -> list[int]:
        return read_balances(self.redis, self.keys, plan)

    def read_pair(self, source: int, target: int) -> tuple[int, int]:
        # One MGET: both balances from the same instant, so the race is only read-to-write.
        names = [f"{self.keys.account}{source}", f"{self.keys.account}{target}"]
        balance, credit = balances_of(self.redis.mget(names), names)
        return balance, credit

    def write_balance(self, account: int, balance: int) -> None:
        # keepttl: a plain SET would drop the key's expiry, and a killed run's keys would then
        # stay forever.
        self.redis.set(f"{self.keys.account}{account}", balance, keepttl=True)

    def _row_atomic_step(self, strategy: str, plan: RowPlan, seq: int) -> StepResult:
        return self._transfer_step(self._scripted_transfer, plan)

    def _row_watch_step(self, strategy: str, plan: RowPlan, seq: int) -> StepResult:
        return self._transfer_step(self._watched_transfer, plan)

    row_steps: ClassVar[Mapping[str, str]] = {
        "none": "_row_none",
        "atomic": "_row_atomic_step",
        "optimistic": "_row_watch_step",
    }

    def _names(self, source: int, target: int) -> list[str]:
        return [f"{self.keys.account}{source}", f"{self.keys.account}{target}"]

    def _scripted_transfer(self, source: int, target: int, amount: int) -> Outcome:
        moved = self.transfer_script(keys=self._names(source, target), args=[amount])
        return Outcome.OK if moved else Outcome.REJECTED

    def _watched_transfer(self, source: int, target: int, amount: int) -> Outcome:
        import redis

        names = self._names(source, target)
        # Leaving the `with` block resets the pipeline, which UNWATCHes on every path.
        with self.redis.pipeline() as pipe:
            pipe.watch(*names)
            balance, credit = balances_of(pipe.mget(names), names)
            self.pause()
            if balance < amount:
                return Outcome.REJECTED
            # Both writes in one MULTI/EXEC: no reader's MGET runs between them, and EXEC
            # aborts if either account changed since WATCH.
            pipe.multi()
            pipe.set(names[0], balance - amount, keepttl=True)
            pipe.set(names[1], credit + amount, keepttl=True)
            try:
                pipe.execute()
            except redis.WatchError:
                raise Conflict("watch") from None
        return Outcome.OK
