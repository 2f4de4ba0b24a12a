"""The isolation matrix as text, markdown or JSON, with its differences from the claims."""

from __future__ import annotations

import json
from typing import Any

from racebench.isolation.claims import Difference, differences, documented, published
from racebench.isolation.matrix import Cell, IsolationMatrix

FORMATS = ("text", "markdown", "json")


def _mechanism(cell: Cell) -> str:
    """How a prevented cell was prevented: abort, wait or snapshot, read off `Cell.how`.

    The phrases are matrix._how's. Which mechanism a server uses is the interesting part of
    the table: a level that prevents by aborting needs retries in the application, one that
    prevents by waiting costs latency, a snapshot costs neither but may be stale.
    """
    if cell.status != "prevented":
        return ""
    if " aborted: " in cell.how:
        return "abort"
    if " blocked on " in cell.how:
        return "wait"
    return "snapshot"


def _short(cell: Cell) -> str:
    """A text cell; ALLOWED in capitals because an anomaly is what the reader scans for."""
    if cell.status == "allowed":
        return "ALLOWED"
    if cell.status == "unknown":
        return "unknown"
    return f"prevented ({_mechanism(cell)})"


def _mark(cell: Cell) -> str:
    """A markdown cell as a symbol: a table of 14 probes by 4-5 levels must fit a docs page."""
    if cell.status == "allowed":
        return "—"
    if cell.status == "unknown":
        return "?"
    return f"✓ {_mechanism(cell)}"


def _statuses(matrix: IsolationMatrix) -> dict[tuple[str, str], str]:
    # Unknown cells go in too; claims.differences skips them, as a stuck probe proves nothing.
    return {key: cell.status for key, cell in matrix.cells.items()}


def documentation_differences(matrix: IsolationMatrix) -> list[Difference]:
    """Cells where the measurement disagrees with the server's own manual (claims.documented).

    A "weaker" difference is the finding that matters: an anomaly the manual rules out
    happened. Levels the manual does not describe are not compared.
    """
    kind = matrix.server.kind
    claim = {key: documented(kind, *key) for key in matrix.cells}
    return differences(_statuses(matrix), claim)


def hermitage_differences(matrix: IsolationMatrix) -> list[Difference]:
    """Cells that disagree with Hermitage's published table (PostgreSQL 9.3.5, MySQL 5.6.21).

    A difference here is often a server that changed since then, not a bug: the report says
    which version was measured so the reader can tell.
    """
    kind = matrix.server.kind
    claim = {key: published(kind, *key) for key in matrix.cells}
    return differences(_statuses(matrix), claim)


def _header(matrix: IsolationMatrix) -> str:
    # Version and settings belong in the header: a matrix without them cannot be compared
    # with another server's (innodb_snapshot_isolation changes whole rows of MariaDB's).
    settings = ", ".join(f"{k}={v}" for k, v in sorted(matrix.server.settings.items()))
    return (
        f"{matrix.server.kind} {matrix.server.version} at {matrix.url}"
        + (f" ({settings})" if settings else "")
        + f"; {len(matrix.cells)} probe runs in {matrix.seconds:.1f} s"
    )


def render_text(matrix: IsolationMatrix) -> str:
    """The matrix as an aligned terminal table, then its differences from the claims."""
    levels = [lv.name for lv in matrix.levels]
    rows = [["probe", *levels]]
    for probe in matrix.probes:
        rows.append([probe.name, *(_short(matrix.cells[(lv, probe.name)]) for lv in levels)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_header(matrix), ""]
    for row in rows:
        lines.append(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        )
    lines += _difference_lines(matrix)
    return "\n".join(lines) + "\n"


def _difference_lines(matrix: IsolationMatrix, bullet: str = "  ") -> list[str]:
    """The differences, level notes and undecided cells that follow either table.

    "none" is printed rather than omitted: that the measurement agrees with the claims is
    a result too.
    """
    lines = []
    for title, found, source in (
        ("documentation", documentation_differences(matrix), "the documentation"),
        ("Hermitage's published table", hermitage_differences(matrix), "Hermitage"),
    ):
        lines.append("")
        lines.append(f"Differences from {title}: {len(found) or 'none'}")
        lines += [bullet + d.describe(source) for d in found]
    for lv in matrix.levels:
        if lv.note:
            lines.append(f"\nNote: {lv.name}: {lv.note}.")
    unknown = [c for c in matrix.cells.values() if c.status == "unknown"]
    if unknown:
        lines.append("")
        lines += [f"Undecided: {c.level}: {c.probe}: {c.evidence}" for c in unknown]
    return lines


def render_markdown(matrix: IsolationMatrix) -> str:
    """The matrix as a markdown table with a legend, ready to paste into docs or an issue."""
    levels = [lv.name for lv in matrix.levels]
    lines = [
        f"**{_header(matrix)}**",
        "",
        "| probe | anomaly | " + " | ".join(levels) + " |",
        "|:--|:--|" + ":-:|" * len(levels),
    ]
    for probe in matrix.probes:
        marks = (_mark(matrix.cells[(lv, probe.name)]) for lv in levels)
        lines.append(f"| {probe.name} | {probe.title} | " + " | ".join(marks) + " |")
    lines.append("")
    lines.append(
        "✓ prevented (abort: a transaction failed; wait: blocked on a lock; snapshot: "
        "it read a consistent snapshot), — allowed, ? undecided"
    )
    lines += _difference_lines(matrix, bullet="- ")
    return "\n".join(lines) + "\n"


def matrix_json(matrix: IsolationMatrix) -> dict[str, Any]:
    """Everything measured, with each probe's steps, in a JSON-ready mapping."""
    kind = matrix.server.kind
    return {
        "schema": "racebench.isolation/1",
        "server": {
            "kind": kind,
            "version": matrix.server.version,
            "url": matrix.url,
            "settings": matrix.server.settings,
        },
        "seconds": round(matrix.seconds, 3),
        "levels": [{"name": lv.name, "note": lv.note} for lv in matrix.levels],
        "probes": [{"name": p.name, "title": p.title} for p in matrix.probes],
        "cells": [
            {
                "level": c.level,
                "probe": c.probe,
                "status": c.status,
                "mechanism": _mechanism(c),
                "how": c.how,
                "evidence": c.evidence,
                "documented": _claim(documented(kind, c.level, c.probe)),
                "hermitage": _claim(published(kind, c.level, c.probe)),
                "steps": c.steps,
            }
            for c in matrix.cells.values()
        ],
        "differences": {
            "documentation": [d.__dict__ for d in documentation_differences(matrix)],
            "hermitage": [d.__dict__ for d in hermitage_differences(matrix)],
        },
    }


def _claim(prevented: bool | None) -> str | None:
    # null in JSON, not "allowed": a source silent about a level claims nothing.
    return None if prevented is None else ("prevented" if prevented else "allowed")


def render(matrix: IsolationMatrix, fmt: str) -> str:
    """The matrix in `fmt` (one of FORMATS)."""
    if fmt == "json":
        return json.dumps(matrix_json(matrix), indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        return render_markdown(matrix)
    return render_text(matrix)
