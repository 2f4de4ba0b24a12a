"""Anomalies attributed to the operations that made them, from the values they recorded.

A count ("348 lost updates") says that something went wrong; an example names who did it:
"c3#17 read 42 and wrote 41 over c1#16, which had also written 41 (lost update)". Each
finder here reads the values in the history records (history.RECORD: `read`, `written`) and,
where the anomaly lives in the final state (a ledger row, a booking), that state, and returns
`Example`s in the order the anomalies happened. Operations are named `c<client>#<seq>`, as
in `--history` exports. Only acknowledged operations are blamed: an unknown outcome may not
have happened.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from racebench.history import NO_VALUE, Outcome, RunHistory

# The result file lists this many examples per run; the counts stay exact.
MAX_EXAMPLES = 20


@dataclass(frozen=True)
class Example:
    """One anomaly, the operations it involves and when they ran (monotonic ns)."""

    kind: str  # the anomaly's name, as in Check.anomalies
    text: str
    ops: tuple[tuple[int, int], ...]  # (client, seq)
    start_ns: int
    end_ns: int
    note: str = ""  # "first", "worst", "last" for violations checked over time


def op_name(client: int, seq: int) -> str:
    """`c<client>#<seq>`, the name an operation has in every export and example."""
    return f"c{client}#{seq}"


def _names(ops: list[tuple[int, int]]) -> str:
    """'c1#2 and c3#4', or 'c1#2, c3#4 and c5#6'."""
    names = [op_name(c, s) for c, s in ops]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class RecordIndex:
    """Finds the record of an operation by (client, seq)."""

    def __init__(self, history: RunHistory) -> None:
        self.history = history
        # One sortable int64 per operation (seq below 2**40), searched by bisection: a dict
        # over millions of records would cost more to build than the few lookups it serves.
        self._keys = history.client.astype(np.int64) * (1 << 40) + history.seq
        self._order = np.argsort(self._keys, kind="stable")
        self._sorted = self._keys[self._order]

    def find(self, client: int, seq: int) -> int | None:
        key = client * (1 << 40) + seq
        at = int(np.searchsorted(self._sorted, key))
        if at < len(self._sorted) and self._sorted[at] == key:
            return int(self._order[at])
        return None


def _span(history: RunHistory, indices: list[int]) -> tuple[int, int]:
    """From the first start to the last end of the operations: when the anomaly was made."""
    r = history.records
    return int(r["start"][indices].min()), int(r["end"][indices].max())


def lost_updates(history: RunHistory, limit: int = MAX_EXAMPLES) -> list[Example]:
    """Acknowledged writes of a counter that wrote the value an earlier write had written.

    Each operation writes `read + delta`; two that wrote the same value read the same value,
    so the later write (by its end) erased the earlier one's step. Ordered by the later end.
    """
    r = history.records
    acked = np.flatnonzero((r["outcome"] == Outcome.OK) & (r["written"] != NO_VALUE))
    if len(acked) < 2:
        return []
    # Sorted by value written, then by end: equal writes become neighbours, each after the
    # one it overwrote.
    order = acked[np.lexsort((r["end"][acked], r["written"][acked]))]
    written = r["written"][order]
    repeat = np.flatnonzero(written[1:] == written[:-1]) + 1  # positions in `order`
    if not len(repeat):
        return []
    repeat = repeat[np.argsort(r["end"][order[repeat]], kind="stable")][:limit]
    examples = []
    for at in repeat.tolist():
        over, earlier = int(order[at]), int(order[at - 1])
        ops = [
            (int(history.client[over]), int(history.seq[over])),
            (int(history.client[earlier]), int(history.seq[earlier])),
        ]
        value = int(r["written"][over])
        examples.append(
            Example(
                "lost_updates",
                f"{op_name(*ops[0])} read {int(r['read'][over])} and wrote {value} over "
                f"{op_name(*ops[1])}, which had also written {value} (lost update)",
                tuple(ops),
                *_span(history, [over, earlier]),
            )
        )
    return examples


def write_skews(
    history: RunHistory,
    rows: list[tuple[int, int, int]],
    deposit_rows: int = 1,
    limit: int = MAX_EXAMPLES,
) -> list[Example]:
    """Withdrawals that overdrew the ledger, each with the one it missed.

    `rows` are the ledger's (amount, client, seq) in insert order, the first `deposit_rows`
    the opening deposit(s). A withdrawal that overdrew read a balance the ledger had when
    only the rows before some position P were in; the first row it missed (at P) is the
    concurrent withdrawal whose check it skipped: "c2#8 and c5#9 both checked balance 30
    and each withdrew 20 (write skew)".
    """
    index = RecordIndex(history)
    r = history.records
    # The balance before each row, and where each balance value was first reached.
    balance_before: dict[int, int] = {}
    running = 0
    examples = []
    for position, (amount, client, seq) in enumerate(rows):
        balance_before.setdefault(running, position)
        running += amount
        if position < deposit_rows or amount >= 0 or running >= 0:
            continue
        found = index.find(client, seq)
        read = int(r["read"][found]) if found is not None else NO_VALUE
        seen_up_to = balance_before.get(read) if read != NO_VALUE else None
        # No earlier state with the balance it read (or no record of what it read): there is
        # no missed withdrawal to name, only the overdraft itself.
        if found is None or seen_up_to is None or seen_up_to >= position:
            examples.append(
                Example(
                    "overdrafts",
                    f"{op_name(client, seq)} withdrew {-amount} and left the balance at "
                    f"{running} (overdraft)",
                    ((client, seq),),
                    *(_span(history, [found]) if found is not None else (0, 0)),
                )
            )
        else:
            missed_amount, missed_client, missed_seq = rows[seen_up_to]
            other = index.find(missed_client, missed_seq)
            other_read = int(r["read"][other]) if other is not None else NO_VALUE
            pair = [(missed_client, missed_seq), (client, seq)]
            missed = position - seen_up_to
            if missed == 1 and other_read == read and missed_amount == amount:
                text = (
                    f"{_names(pair)} both checked balance {read} and each withdrew {-amount} "
                    f"(write skew): balance {running}"
                )
            else:
                first = op_name(missed_client, missed_seq)
                if other_read != NO_VALUE:
                    first += f", which read {other_read}"
                text = (
                    f"{op_name(client, seq)} checked balance {read} and withdrew {-amount} "
                    f"after {missed} withdrawal{'s' if missed > 1 else ''} it did not see "
                    f"(first {first}) (write skew): balance {running}"
                )
            spans = [i for i in (found, other) if i is not None]
            examples.append(Example("overdrafts", text, tuple(pair), *_span(history, spans)))
        if len(examples) >= limit:
            break
    return examples


def seats_booked_twice(
    history: RunHistory, bookings: list[tuple[int, int, int]], limit: int = MAX_EXAMPLES
) -> list[Example]:
    """Seats booked more than once: every booking of each, in the order the second one was
    inserted. `bookings` are (seat, client, seq) in insert order."""
    holders: dict[int, list[tuple[int, int]]] = defaultdict(list)
    doubled_at: list[int] = []  # seats, in the order they were booked a second time
    for seat, client, seq in bookings:
        holders[seat].append((client, seq))
        if len(holders[seat]) == 2:
            doubled_at.append(seat)
    index = RecordIndex(history)
    r = history.records
    examples = []
    for seat in doubled_at[:limit]:
        ops = holders[seat]
        found = [i for i in (index.find(c, s) for c, s in ops) if i is not None]
        # Each booking recorded the count it read; "found it free" only when all read 0,
        # since a store that booked under a stale count is a different story.
        seen = {int(r["read"][i]) for i in found}
        checked = f"found seat {seat} free" if seen == {0} else f"checked seat {seat}"
        word = "both" if len(ops) == 2 else "all"
        examples.append(
            Example(
                "double_bookings",
                f"{_names(ops)} {word} {checked} and booked it (double booking)",
                tuple(ops),
                *(_span(history, found) if found else (0, 0)),
            )
        )
    return examples


def missing_acknowledged(
    history: RunHistory, present: set[tuple[int, int]], kind: str, what: str, limit: int
) -> list[Example]:
    """Acknowledged operations whose row is not in the final state (lost writes)."""
    r = history.records
    ok = np.flatnonzero(r["outcome"] == Outcome.OK)
    # By acknowledgement time: the first lost writes are the ones to investigate first.
    ok = ok[np.argsort(r["end"][ok], kind="stable")]
    examples = []
    for i in ok.tolist():
        op = (int(history.client[i]), int(history.seq[i]))
        if op not in present:
            examples.append(
                Example(
                    kind,
                    f"{op_name(*op)} was acknowledged but its {what} is missing",
                    (op,),
                    *_span(history, [i]),
                )
            )
            if len(examples) >= limit:
                break
    return examples


def over_time(examples: list[Example], worst: int, limit: int = MAX_EXAMPLES) -> list[Example]:
    """The first `limit` violations of an invariant checked over time, with the first, the
    worst (`examples[worst]`) and the last marked, as Jepsen's bank checker reports them;
    the worst and the last are kept even when they come later than the first `limit`."""
    if not examples:
        return []
    marks: dict[int, list[str]] = defaultdict(list)
    for index, mark in ((0, "first"), (worst, "worst"), (len(examples) - 1, "last")):
        marks[index].append(mark)
    chosen = list(range(min(limit, len(examples))))
    extra = sorted(i for i in {worst, len(examples) - 1} if i >= limit)
    if extra:
        chosen = chosen[: limit - len(extra)] + extra
    out = []
    for i in chosen:
        e = examples[i]
        out.append(Example(e.kind, e.text, e.ops, e.start_ns, e.end_ns, ", ".join(marks[i])))
    return out
