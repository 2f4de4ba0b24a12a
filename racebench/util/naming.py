"""Names shared by the engine and the output layer: verdicts, matrix values, fault summaries.

A leaf module (at run time it imports nothing from racebench), so that reports and compare can
read result files without importing the runner, and the engine can use the same words. A
run's strategy label is derived data of the run: `RunEntry.strategy_label`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from racebench.result_model import AnomalyExample, FaultEntry, RunEntry, UnfiredFault

SAFE = "safe"
ANOMALIES = "ANOMALIES"
UNEXPECTED = "UNEXPECTED"
NOT_REPRODUCED = "race not reproduced"
INCONCLUSIVE = "inconclusive"

# What each verdict means, in the order a reader meets them; the reports' verdict legend.
VERDICT_MEANINGS = {
    SAFE: "the strategy claims safety and no anomaly happened",
    ANOMALIES: "an unguarded or weaker strategy showed what it allows",
    UNEXPECTED: "a strategy that claims safety showed an anomaly",
    NOT_REPRODUCED: "no anomaly, but no claim either",
    INCONCLUSIVE: "no anomaly, but too few acknowledged operations to show one (none, or "
    "failures above expect.max_error_rate, default 1%): never passes",
}

# The key of a mapping that names what the mapping is ({backend: postgres}, {type: withdraw}).
_NAMING_KEYS = ("backend", "service", "type", "strategy", "kind")


def short_value(value: Any) -> str:
    """A matrix value as a reader wants it: `redis_lock(ttl_ms=10000)`, not a dict repr.

    A mapping is named by its naming key (backend, service, type, ...) with the other keys in
    parentheses; lists are joined by `/`; everything else is `str()`.
    """
    if isinstance(value, dict):
        name = next((str(value[k]) for k in _NAMING_KEYS if k in value), None)
        rest = [f"{k}={short_value(v)}" for k, v in value.items() if str(v) != name]
        if name is None:
            return ", ".join(rest)
        return name + (f"({', '.join(rest)})" if rest else "")
    if isinstance(value, list | tuple):
        return "/".join(short_value(v) for v in value)
    return str(value)


def short_param(key: str, value: Any) -> str:
    """`guard.lock={'service': 'redis_lock', 'ttl_ms': 100}` -> `lock=redis_lock(ttl_ms=100)`."""
    return f"{key.rsplit('.', 1)[-1]}={short_value(value)}"


def params_text(params: dict[str, Any] | None, leave_out: tuple[str, ...] = ()) -> str:
    """The matrix parameters of a run, short, in matrix order, minus the keys in `leave_out`."""
    return ", ".join(short_param(k, v) for k, v in (params or {}).items() if k not in leave_out)


def fault_summary(faults: list[FaultEntry], not_fired: list[UnfiredFault] | None = None) -> str:
    """e.g. 'pause_client c0 300ms; kill_client c1 (unavailable 2.2ms)'; plain text."""
    parts = []
    for f in faults:
        text = f"{f.kind} c{f.client}"
        if f.end_ms - f.start_ms >= 1:
            text += f" {f.end_ms - f.start_ms:.0f}ms"
        if f.unavailable_ms is not None:
            text += f" (unavailable {f.unavailable_ms:.1f}ms)"
        elif f.grants_after == 0:  # a server fault after which the lock never came
            text += " (no grant after)"
        if f.note.startswith(("failed", "emulated")):
            text += f" [{f.note.split(':')[0]}]"
        parts.append(text)
    parts += [f"{f.kind} c{f.client} did not fire ({f.trigger})" for f in not_fired or []]
    return "; ".join(parts) or "-"


def client_bound_caption(runs: list[RunEntry]) -> str | None:
    """One line per run whose workers were saturated: its figures describe racebench."""
    lines = [
        f"client-bound: {r.label}: {r.load.client_bound_reason}"
        for r in runs
        if r.load is not None and r.load.client_bound
    ]
    return "\n".join(lines) or None


def example_text(example: AnomalyExample, several_trials: bool = False) -> str:
    """One attributed anomaly of a result file, as a reader sees it: its text, then when it
    happened and its mark among violations checked over time (first, worst, last)."""
    where = []
    if example.end_ms is not None:
        where.append(f"at {example.end_ms / 1000:.3f}s")
    if several_trials:
        where.append(f"trial {example.trial + 1}")
    if example.note:
        where.append(example.note)
    return example.text + (f" [{', '.join(where)}]" if where else "")


def anomaly_examples_summary(run: RunEntry, limit: int) -> tuple[list[str], int]:
    """The first `limit` attributed anomalies of a run as text, and how many more the result
    file lists."""
    examples = run.anomaly_examples
    several = len(run.trials) > 1
    return [example_text(e, several) for e in examples[:limit]], max(0, len(examples) - limit)
