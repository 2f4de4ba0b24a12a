"""Transfer on ZooKeeper: one znode per account, `/racebench/{run}/accounts/<id>`.

Each znode's version counts its writes, so a `multi` that sets both accounts at the versions
read commits only if neither changed since (`optimistic`). Readers are the subtle part: a get
reads one znode, and a transfer can commit between two gets of one reader even when it writes
both accounts in one `multi` (tests/test_row_workloads.py shows it on a real server). Under
`optimistic` a reader therefore validates what it read: a `multi` of `check(path, version)`
for every account commits only if no account changed since its get, so the values read were
all current at that one moment; otherwise it reads again (a retry, code `bad_version`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from racebench.history import Outcome
from racebench.stores.base import Conflict
from racebench.stores.kv_transfer import KeyValueTransfer
from racebench.workloads.rows import TransferPlan

if TYPE_CHECKING:
    from kazoo.client import KazooClient, TransactionRequest
    from kazoo.protocol.states import ZnodeStat

# Znodes created per setup transaction: a multi is one request, and the server drops the
# connection of a request larger than its jute.maxbuffer (1 MB by default).
SEED_BATCH = 1000
# A reader's validating multi checks every account in one request: about 80 bytes per check
# (its path, version, header), so 10,000 accounts stay well under 1 MB.
MAX_ACCOUNTS = 10_000


def account_path(accounts: str, account: int) -> str:
    return f"{accounts}/{account}"


def commit(tx: TransactionRequest) -> None:
    """Commit `tx`; a BadVersion in it is a Conflict, any other failure is raised."""
    from kazoo.exceptions import BadVersionError, RolledBackError

    results = tx.commit()
    if any(isinstance(result, BadVersionError) for result in results):
        raise Conflict("bad_version")
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, RolledBackError):
            raise result


def seed_accounts(client: KazooClient, accounts: str, plan: TransferPlan) -> None:
    """Create `accounts` and one znode per account holding its opening balance."""
    client.create(accounts)
    balances = list(enumerate(plan.opening_balances()))
    for start in range(0, len(balances), SEED_BATCH):
        tx = client.transaction()
        for account, balance in balances[start : start + SEED_BATCH]:
            tx.create(account_path(accounts, account), str(balance).encode())
        commit(tx)


def read_stats(client: KazooClient, paths: list[str]) -> list[tuple[int, ZnodeStat]]:
    """The balance and stat of each znode: every get sent before waiting on any, so the
    reads take one round trip, not one each (still one znode per read: no snapshot)."""
    pending = [client.get_async(path) for path in paths]
    return [(int(data), stat) for data, stat in (p.get() for p in pending)]


class ZookeeperTransfer(KeyValueTransfer):
    """Transfer on one client's kazoo session (`zk` and `accounts`: set by the client)."""

    zk: KazooClient
    accounts: str  # the parent znode of the accounts

    def _paths(self, *accounts: int) -> list[str]:
        return [account_path(self.accounts, a) for a in accounts]

    def read_accounts(self, plan: TransferPlan) -> list[int]:
        return [b for b, _ in read_stats(self.zk, self._paths(*range(plan.accounts)))]

    def read_snapshot(self, plan: TransferPlan) -> list[int]:
        paths = self._paths(*range(plan.accounts))
        read = read_stats(self.zk, paths)
        tx = self.zk.transaction()
        for path, (_, stat) in zip(paths, read, strict=True):
            tx.check(path, stat.version)
        commit(tx)
        return [balance for balance, _ in read]

    def read_pair(self, source: int, target: int) -> tuple[int, int]:
        [(balance, _), (credit, _)] = read_stats(self.zk, self._paths(source, target))
        return balance, credit

    def write_balance(self, account: int, balance: int) -> None:
        self.zk.set(account_path(self.accounts, account), str(balance).encode())

    def native_transfer(self, strategy: str, source: int, target: int, amount: int) -> Outcome:
        assert strategy == "optimistic"
        paths = self._paths(source, target)
        [(balance, from_stat), (credit, to_stat)] = read_stats(self.zk, paths)
        self.pause()
        if balance < amount:
            return Outcome.REJECTED
        tx = self.zk.transaction()
        tx.set_data(paths[0], str(balance - amount).encode(), from_stat.version)
        tx.set_data(paths[1], str(credit + amount).encode(), to_stat.version)
        commit(tx)
        return Outcome.OK
