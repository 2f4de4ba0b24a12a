"""Hermitage's anomaly tests as scripts, each deciding from what it observed.

Every probe starts from the table {1: 10, 2: 20}, runs its sessions' statements in one fixed
order (the same order on every server; steps are Hermitage's, from ept/hermitage's postgres.md
and mysql.md), and then judges the anomaly from what the transactions read, what they changed
and whether they committed: never from which server or level it ran on. A probe returns an
`Observation`: did the anomaly happen, and the evidence in one sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from racebench.isolation.sessions import Step


class Script(Protocol):
    """The interleaving as a probe sees it."""

    def begin(self, session: str) -> None: ...
    def run(self, session: str, sql: str) -> Step: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class Observation:
    """A probe's judgement: whether the anomaly occurred, and what showed it (or its absence)."""

    anomaly: bool
    evidence: str


@dataclass(frozen=True)
class Probe:
    """One anomaly test: its Hermitage name, what it shows, its sessions and its script."""

    name: str
    title: str
    sessions: tuple[str, ...]
    script: Callable[[Script], Observation]


def _fmt(rows: dict[int, int]) -> str:
    """Rows as `{1: 10, 2: 20}`, the notation of Hermitage's write-ups, for the evidence."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(rows.items())) + "}" if rows else "{}"


def _begin_all(x: Script, *sessions: str) -> None:
    # Hermitage begins every session before the first statement, so a snapshot server takes
    # each snapshot at the first read, not at BEGIN: the order of the steps decides what they see.
    for session in sessions:
        x.begin(session)


def g0(x: Script) -> Observation:
    """Write cycles: T2 overwrites a row T1 has written but not committed (a dirty write)."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "update {t} set value = 11 where id = 1")
    dirty = x.run("T2", "update {t} set value = 12 where id = 1")
    x.run("T1", "update {t} set value = 21 where id = 2")
    x.run("T1", "commit")
    x.run("T2", "update {t} set value = 22 where id = 2")
    x.run("T2", "commit")
    x.finish()
    # A write that waited for T1's commit is not dirty: every server we probe blocks here,
    # and a server that failed T2 instead (ok False) prevented it too.
    if dirty.ok and not dirty.blocked:
        return Observation(True, "T2 wrote row 1 while T1's write to it was uncommitted")
    return Observation(False, "T2's write to row 1 did not go ahead while T1's was uncommitted")


def g1a(x: Script) -> Observation:
    """Aborted read: T2 reads a value that T1 wrote and then rolled back."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "update {t} set value = 101 where id = 1")
    first = x.run("T2", "select id, value from {t} order by id")
    x.run("T1", "rollback")
    second = x.run("T2", "select id, value from {t} order by id")
    x.run("T2", "commit")
    x.finish()
    # Either read counts: 101 was never committed, so seeing it at any time is an aborted read.
    seen = [s.rows for s in (first, second) if s.ok]
    if any(rows.get(1) == 101 for rows in seen):
        return Observation(True, "T2 read 1 => 101, which T1 rolled back")
    return Observation(False, f"T2 read {' then '.join(map(_fmt, seen)) or 'nothing'}")


def g1b(x: Script) -> Observation:
    """Intermediate read: T2 reads a value T1 overwrote before committing."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "update {t} set value = 101 where id = 1")
    first = x.run("T2", "select id, value from {t} order by id")
    x.run("T1", "update {t} set value = 11 where id = 1")
    x.run("T1", "commit")
    x.run("T2", "select id, value from {t} order by id")
    x.run("T2", "commit")
    x.finish()
    # Only the first read can show the intermediate value: once T1 committed, 11 is legal.
    if first.ok and first.rows.get(1) == 101:
        return Observation(True, "T2 read 1 => 101, T1's intermediate value (it committed 11)")
    return Observation(False, f"T2 read {_fmt(first.rows) if first.ok else 'nothing'} first")


def g1c(x: Script) -> Observation:
    """Circular information flow: T1 and T2 each read the other's uncommitted write."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "update {t} set value = 11 where id = 1")
    x.run("T2", "update {t} set value = 22 where id = 2")
    r1 = x.run("T1", "select id, value from {t} where id = 2")
    r2 = x.run("T2", "select id, value from {t} where id = 1")
    x.run("T1", "commit")
    x.run("T2", "commit")
    x.finish()
    # One dirty read is G1a/G1b territory; G1c needs the cycle, so both reads must be dirty.
    if r1.ok and r2.ok and r1.rows.get(2) == 22 and r2.rows.get(1) == 11:
        return Observation(True, "T1 read T2's 2 => 22 and T2 read T1's 1 => 11")
    return Observation(
        False,
        f"T1 read {_fmt(r1.rows) if r1.ok else 'nothing'}, "
        f"T2 read {_fmt(r2.rows) if r2.ok else 'nothing'}",
    )


def otv(x: Script) -> Observation:
    """Observed transaction vanishes: T3 sees T2's write, then T1's value that T2 replaced."""
    _begin_all(x, "T1", "T2", "T3")
    x.run("T1", "update {t} set value = 11 where id = 1")
    x.run("T1", "update {t} set value = 19 where id = 2")
    x.run("T2", "update {t} set value = 12 where id = 1")
    x.run("T1", "commit")
    reads = [x.run("T3", "select id, value from {t} order by id")]
    x.run("T2", "update {t} set value = 18 where id = 2")
    reads.append(x.run("T3", "select id, value from {t} order by id"))
    x.run("T2", "commit")
    reads.append(x.run("T3", "select id, value from {t} order by id"))
    x.run("T3", "commit")
    x.finish()
    # Once T3 has seen anything of T2 (which overwrote T1), seeing T1's values again means T2
    # vanished from T3's view; the order of T3's reads is what makes it an anomaly.
    seen = [r.rows for r in reads if r.ok]
    saw_t2 = False
    for rows in seen:
        saw_t2 = saw_t2 or rows.get(1) == 12 or rows.get(2) == 18
        if saw_t2 and (rows.get(1) == 11 or rows.get(2) == 19):
            return Observation(True, f"T3 read {_fmt(rows)}: T2's write beside T1's it replaced")
    return Observation(False, f"T3 read {' then '.join(map(_fmt, seen)) or 'nothing'}")


def pmp(x: Script) -> Observation:
    """Predicate-many-preceders: a predicate read sees a row committed after an earlier one."""
    _begin_all(x, "T1", "T2")
    first = x.run("T1", "select id, value from {t} where value = 30")
    x.run("T2", "insert into {t} (id, value) values (3, 30)")
    x.run("T2", "commit")
    # Hermitage's second predicate differs from the first but also matches 30, so a stable
    # view must return no row 3 here either.
    second = x.run("T1", "select id, value from {t} where value % 3 = 0")
    x.run("T1", "commit")
    x.finish()
    if first.ok and second.ok and not first.rows and 3 in second.rows:
        return Observation(True, "T1's second predicate read found T2's row 3 => 30")
    return Observation(False, "T1's predicate reads agreed: no row 3")


def pmp_write(x: Script) -> Observation:
    """PMP with a write predicate: T2's DELETE misses a row that matches it in T2's view."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "update {t} set value = value + 10")
    x.run("T2", "select id, value from {t} where value = 20")
    delete = x.run("T2", "delete from {t} where value = 20")
    x.run("T1", "commit")
    after = x.run("T2", "select id, value from {t} order by id")
    x.run("T2", "commit")
    x.finish()
    # T1 turns {10, 20} into {20, 30}. A value-20 row left after T2's `delete where value =
    # 20` means the delete and the read saw different states: read committed re-checks row 2
    # after the lock wait (now 30) and misses row 1 (10 when it scanned); InnoDB's repeatable
    # read deletes the committed row 1 but reads row 2 from its older snapshot.
    if delete.ok and after.ok and 20 in after.rows.values():
        return Observation(
            True, f"after `delete where value = 20` T2 still read {_fmt(after.rows)}"
        )
    return Observation(False, f"T2 read {_fmt(after.rows) if after.ok else 'nothing'} after it")


def p4(x: Script) -> Observation:
    """Lost update: T1 and T2 both read 10 and write 11; both commit."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "select id, value from {t} where id = 1")
    x.run("T2", "select id, value from {t} where id = 1")
    x.run("T1", "update {t} set value = 11 where id = 1")
    x.run("T2", "update {t} set value = 11 where id = 1")
    c1 = x.run("T1", "commit")
    c2 = x.run("T2", "commit")
    x.finish()
    # T2's update blocks on T1's row lock until T1 commits; what follows decides: a snapshot
    # server at repeatable read aborts T2 (its row changed since the snapshot), read committed
    # and InnoDB's repeatable read let it overwrite.
    if c1.ok and c2.ok:
        return Observation(True, "both read 10, wrote 11 and committed: one increment is lost")
    return Observation(False, "only one of the two read-modify-writes committed")


def g_single(x: Script) -> Observation:
    """Read skew: T1 reads row 1 before T2's commit and row 2 after it."""
    _begin_all(x, "T1", "T2")
    r1 = x.run("T1", "select id, value from {t} where id = 1")
    x.run("T2", "select id, value from {t} where id = 1")
    x.run("T2", "select id, value from {t} where id = 2")
    x.run("T2", "update {t} set value = 12 where id = 1")
    x.run("T2", "update {t} set value = 18 where id = 2")
    x.run("T2", "commit")
    # T2 moved 2 from row 2 to row 1 (the sum stays 30); T1 sees 10 + 18 = 28, a total that
    # never existed.
    r2 = x.run("T1", "select id, value from {t} where id = 2")
    x.run("T1", "commit")
    x.finish()
    if r1.ok and r2.ok and r1.rows.get(1) == 10 and r2.rows.get(2) == 18:
        return Observation(True, "T1 read 1 => 10 (before T2) and 2 => 18 (after T2)")
    return Observation(
        False,
        f"T1 read {_fmt(r1.rows) if r1.ok else 'nothing'} "
        f"then {_fmt(r2.rows) if r2.ok else 'nothing'}",
    )


def g_single_predicate(x: Script) -> Observation:
    """Read skew through a predicate: T1's second predicate read sees T2's committed change."""
    _begin_all(x, "T1", "T2")
    first = x.run("T1", "select id, value from {t} where value % 5 = 0")
    x.run("T2", "update {t} set value = 12 where value = 10")
    x.run("T2", "commit")
    second = x.run("T1", "select id, value from {t} where value % 3 = 0")
    x.run("T1", "commit")
    x.finish()
    if first.ok and second.ok and first.rows.get(1) == 10 and second.rows.get(1) == 12:
        return Observation(True, "T1 read 1 => 10, then 1 => 12 by another predicate")
    return Observation(False, f"T1's second read returned {_fmt(second.rows)}")


def g_single_write(x: Script) -> Observation:
    """Read skew through a write predicate: T1's DELETE acts on T2's rows, not on T1's view."""
    _begin_all(x, "T1", "T2")
    r1 = x.run("T1", "select id, value from {t} where id = 1")
    x.run("T2", "select id, value from {t} order by id")
    x.run("T2", "update {t} set value = 12 where id = 1")
    x.run("T2", "update {t} set value = 18 where id = 2")
    x.run("T2", "commit")
    delete = x.run("T1", "delete from {t} where value = 20")
    x.run("T1", "select id, value from {t} where id = 2")
    x.run("T1", "commit")
    x.finish()
    # T1 read row 1 before T2 (10); a delete that finds no 20 looked at T2's committed 18, so
    # T1 read before T2 and wrote after it. InnoDB's repeatable read does this (its writes read
    # the latest committed rows, not the snapshot); PostgreSQL's repeatable read aborts T1.
    if r1.ok and r1.rows.get(1) == 10 and delete.ok and delete.result.rowcount == 0:
        return Observation(
            True, "T1 read 1 => 10 (before T2), then its delete found T2's 2 => 18 and no 20"
        )
    if delete.ok:
        return Observation(False, f"T1's delete removed {delete.result.rowcount} row(s)")
    return Observation(False, "T1's delete did not run against T2's rows")


def g2_item(x: Script) -> Observation:
    """Write skew: both read rows 1 and 2, each updates a different one, both commit."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "select id, value from {t} where id in (1, 2)")
    x.run("T2", "select id, value from {t} where id in (1, 2)")
    x.run("T1", "update {t} set value = 11 where id = 1")
    x.run("T2", "update {t} set value = 21 where id = 2")
    c1 = x.run("T1", "commit")
    c2 = x.run("T2", "commit")
    x.finish()
    # Disjoint rows: no write-write conflict, so row locks and first-committer-wins never see
    # it; only serializable's read tracking (SSI, or InnoDB's shared locks on reads) stops it.
    if c1.ok and c2.ok:
        return Observation(True, "both read {1: 10, 2: 20}, wrote disjoint rows and committed")
    return Observation(False, "only one of the two committed")


def g2(x: Script) -> Observation:
    """Anti-dependency cycle on a predicate: both read `value % 3 = 0`, each inserts a match."""
    _begin_all(x, "T1", "T2")
    x.run("T1", "select id, value from {t} where value % 3 = 0")
    x.run("T2", "select id, value from {t} where value % 3 = 0")
    x.run("T1", "insert into {t} (id, value) values (3, 30)")
    x.run("T2", "insert into {t} (id, value) values (4, 42)")
    c1 = x.run("T1", "commit")
    c2 = x.run("T2", "commit")
    x.finish()
    # New rows, not existing ones: only predicate (gap or SIREAD) locks can see the conflict.
    if c1.ok and c2.ok:
        return Observation(True, "both found no match, each inserted one and both committed")
    return Observation(False, "only one of the two committed")


def g2_two_edges(x: Script) -> Observation:
    """Fekete et al.'s read-only anomaly: T3 sees T2's commit, not T1's write serialised before."""
    x.begin("T1")
    t1_read = x.run("T1", "select id, value from {t} order by id")
    x.begin("T2")
    x.run("T2", "update {t} set value = value + 5 where id = 2")
    c2 = x.run("T2", "commit")
    x.begin("T3")
    t3_read = x.run("T3", "select id, value from {t} order by id")
    c3 = x.run("T3", "commit")
    x.run("T1", "update {t} set value = 0 where id = 1")
    c1 = x.run("T1", "commit")
    x.finish()
    # T1 must serialise before T2 (it read 2 => 20), T3 after T2 (it read 25) and before T1
    # (it missed 1 => 0): a cycle even though T3 wrote nothing. Snapshot isolation commits all
    # three; PostgreSQL's serializable aborts one.
    committed = c1.ok and c2.ok and c3.ok
    if committed and t1_read.rows.get(2) == 20 and t3_read.rows == {1: 10, 2: 25}:
        return Observation(
            True, "all committed; T3 saw T2's 2 => 25 but not T1's 1 => 0, which T2 must follow"
        )
    return Observation(False, "not all three committed with T3 reading {1: 10, 2: 25}")


# The matrix's rows, in the order of Hermitage's write-ups; claims.PHENOMENON maps each name
# to the SQL standard's phenomenon that the documentation speaks of.
PROBES: tuple[Probe, ...] = (
    Probe("G0", "write cycles (dirty write)", ("T1", "T2"), g0),
    Probe("G1a", "aborted read", ("T1", "T2"), g1a),
    Probe("G1b", "intermediate read", ("T1", "T2"), g1b),
    Probe("G1c", "circular information flow", ("T1", "T2"), g1c),
    Probe("OTV", "observed transaction vanishes", ("T1", "T2", "T3"), otv),
    Probe("PMP", "predicate-many-preceders, read predicate", ("T1", "T2"), pmp),
    Probe("PMP-write", "predicate-many-preceders, write predicate", ("T1", "T2"), pmp_write),
    Probe("P4", "lost update", ("T1", "T2"), p4),
    Probe("G-single", "read skew", ("T1", "T2"), g_single),
    Probe("G-single-predicate", "read skew, predicate read", ("T1", "T2"), g_single_predicate),
    Probe("G-single-write", "read skew, write predicate", ("T1", "T2"), g_single_write),
    Probe("G2-item", "write skew", ("T1", "T2"), g2_item),
    Probe("G2", "anti-dependency cycle, predicate", ("T1", "T2"), g2),
    Probe(
        "G2-two-edges",
        "anti-dependency cycle, read-only (Fekete)",
        ("T1", "T2", "T3"),
        g2_two_edges,
    ),
)
