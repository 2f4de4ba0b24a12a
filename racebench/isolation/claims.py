"""What the documentation claims, what Hermitage published, and where measurements differ.

Documentation speaks of the SQL standard's phenomena, not of Adya's anomalies, so each probe
is mapped to the phenomenon it is an instance of (after Berenson et al., "A Critique of ANSI
SQL Isolation Levels": a lost update and read skew are what forbidding non-repeatable reads
rules out; predicate reads and writes are phantoms; G2 is a serialization anomaly).

- PostgreSQL: the table "Transaction Isolation Levels" in the manual's chapter on
  transaction isolation ("Allowed, but not in PG" counts as prevented), and its statement that
  a second writer of a row waits for the first (no dirty writes at any level).
- MariaDB/MySQL: their SET TRANSACTION pages say InnoDB offers the four levels of the SQL
  standard, so the standard's table is the claim; InnoDB locks each row it writes until the
  transaction ends (no dirty writes at any level).

Hermitage's published results are those of ept/hermitage (PostgreSQL 9.3.5, MySQL 5.6.21),
per probe from its scripts, with its summary's "R/O" split into the read-only probes
(prevented) and the write-predicate ones (allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

PHENOMENON = {
    "G0": "dirty write",
    "G1a": "dirty read",
    "G1b": "dirty read",
    "G1c": "dirty read",
    "OTV": "dirty read",
    "PMP": "phantom",
    "PMP-write": "phantom",
    "G-single-predicate": "phantom",
    "P4": "non-repeatable read",
    "G-single": "non-repeatable read",
    "G-single-write": "non-repeatable read",
    "G2-item": "serialization anomaly",
    "G2": "serialization anomaly",
    "G2-two-edges": "serialization anomaly",
}

_ALL = ("dirty write", "dirty read", "non-repeatable read", "phantom", "serialization anomaly")

# level -> phenomena the documentation says cannot happen
_POSTGRES_PREVENTS = {
    "read uncommitted": {"dirty write", "dirty read"},
    "read committed": {"dirty write", "dirty read"},
    "repeatable read": {"dirty write", "dirty read", "non-repeatable read", "phantom"},
    "serializable": set(_ALL),
}
_SQL_STANDARD_PREVENTS = {
    "read uncommitted": {"dirty write"},
    "read committed": {"dirty write", "dirty read"},
    "repeatable read": {"dirty write", "dirty read", "non-repeatable read"},
    "repeatable read + innodb_snapshot_isolation": {
        "dirty write",
        "dirty read",
        "non-repeatable read",
    },
    "serializable": set(_ALL),
}
DOCUMENTATION = {
    "postgresql": ("PostgreSQL manual, Transaction Isolation", _POSTGRES_PREVENTS),
    "mariadb": ("MariaDB SET TRANSACTION: the SQL standard's levels", _SQL_STANDARD_PREVENTS),
    "mysql": ("MySQL SET TRANSACTION: the SQL standard's levels", _SQL_STANDARD_PREVENTS),
}

_PROBES = tuple(PHENOMENON)
_DIRTY = ("G0", "G1a", "G1b", "G1c", "OTV")


def _prevents(*names: str) -> dict[str, bool]:
    return {p: p in names for p in _PROBES}


_SNAPSHOT = (*_DIRTY, "PMP", "PMP-write", "P4", "G-single", "G-single-predicate", "G-single-write")
# server kind -> level -> probe -> prevented in Hermitage's published results
HERMITAGE = {
    "postgresql": {
        "read committed": _prevents(*_DIRTY),
        "repeatable read": _prevents(*_SNAPSHOT),
        "serializable": _prevents(*_PROBES),
    },
    "mysql": {
        "read uncommitted": _prevents("G0"),
        "read committed": _prevents(*_DIRTY),
        "repeatable read": _prevents(*_DIRTY, "PMP", "G-single", "G-single-predicate"),
        "serializable": _prevents(*_PROBES),
    },
}
HERMITAGE["mariadb"] = HERMITAGE["mysql"]  # Hermitage tested MySQL's InnoDB, MariaDB's origin


def documented(kind: str, level: str, probe: str) -> bool | None:
    """True: the documentation says `probe`'s anomaly cannot happen at `level`; False: it
    allows it; None: it says nothing about that level."""
    prevents = DOCUMENTATION[kind][1].get(level)
    return None if prevents is None else PHENOMENON[probe] in prevents


def published(kind: str, level: str, probe: str) -> bool | None:
    """Hermitage's published verdict (True: prevented), or None where it has none."""
    return HERMITAGE.get(kind, {}).get(level, {}).get(probe)


@dataclass(frozen=True)
class Difference:
    """A cell where the measurement and a published claim disagree."""

    level: str
    probe: str
    measured: str  # "allowed" | "prevented"
    claimed: str
    direction: str  # "weaker" (an anomaly the claim rules out happened) | "stronger"

    def describe(self, source: str) -> str:
        phenomenon = PHENOMENON[self.probe]
        return (
            f"{self.level}: {self.probe} ({phenomenon}) {self.measured}, {source} says "
            f"{self.claimed}"
            + (" (WEAKER than claimed)" if self.direction == "weaker" else " (stronger)")
        )


def differences(
    cells: dict[tuple[str, str], str], claim: dict[tuple[str, str], bool | None]
) -> list[Difference]:
    """Cells {(level, probe): "allowed"/"prevented"} that disagree with `claim`."""
    found = []
    for (level, probe), status in cells.items():
        prevented = claim.get((level, probe))
        if prevented is None or status not in ("allowed", "prevented"):
            continue
        if (status == "prevented") != prevented:
            claimed = "prevented" if prevented else "allowed"
            direction = "weaker" if prevented else "stronger"
            found.append(Difference(level, probe, status, claimed, direction))
    return found
