"""The warnings of `racebench compare`: every way the two results were not made alike
(settings of a run, setup of the machine and servers, how busy the machine was), since a
speed change between unlike results may not be the code's."""

from __future__ import annotations

from typing import Any

import numpy as np

from racebench.output.report import LoadedResult, server_versions
from racebench.result_model import ResultDocument, RunEntry

# Per-run settings that change what a label measures, for result files that predate the
# per-run `settings` record; command-line overrides do not enter the scenario hash.
_RUN_SETTINGS = (
    "workload",
    "backend",
    "strategy",
    "lock_service",
    "fencing",
    "clients",
    "race_window_ms",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: value}


def setting_changes(base: RunEntry, cand: RunEntry) -> list[str]:
    """Every per-run setting that differs: operations, duration, clients, trials, workers...

    Reads each run's resolved `settings` (the scenario of that matrix cell after command-line
    overrides); files without it fall back to the few settings every run entry carries.
    """
    if base.settings is not None and cand.settings is not None:
        b, c = _flatten(base.settings), _flatten(cand.settings)
        keys = [k for k in {**b, **c} if k not in ("name", "description")]
    else:
        b = {k: getattr(base, k) for k in _RUN_SETTINGS}
        c = {k: getattr(cand, k) for k in _RUN_SETTINGS}
        keys = list(_RUN_SETTINGS)
    return [f"{k} {b.get(k)!r} -> {c.get(k)!r}" for k in keys if b.get(k) != c.get(k)]


def setup_differences(base: ResultDocument, cand: ResultDocument) -> list[str]:
    """Warnings for results made on different setups, where speed is not comparable."""
    warnings = []

    def differs(what: str, b: Any, c: Any) -> None:
        if b != c:
            warnings.append(f"different {what}: baseline {b}, candidate {c}")

    differs("CPU count", base.host.cpu_count, cand.host.cpu_count)
    differs("racebench version", base.racebench_version, cand.racebench_version)
    differs("scenario hash", base.scenario.hash, cand.scenario.hash)
    b_servers, c_servers = server_versions(base), server_versions(cand)
    for name in sorted(set(b_servers) & set(c_servers)):
        differs(f"{name} server version", b_servers[name], c_servers[name])
    b_drivers = base.environment.drivers
    c_drivers = cand.environment.drivers
    for name in sorted(set(b_drivers) & set(c_drivers)):
        differs(f"{name} driver version", b_drivers[name], c_drivers[name])
    return warnings


# Load average per CPU, beyond which two results are warned about as made on a machine that
# was not equally busy: other processes then take a different share of the CPUs.
_LOAD_PER_CPU_DIFFERENCE = 0.5


def _median_load(result: LoadedResult) -> float | None:
    loads = [t.host_load_1m for r in result.runs for t in r.trials if t.host_load_1m]
    return float(np.median(loads)) if loads else None


def load_difference(base: LoadedResult, cand: LoadedResult) -> str | None:
    """A warning when the machine was much busier during one result than the other."""
    b, c = _median_load(base), _median_load(cand)
    cpus = base.document.host.cpu_count or 1
    if b is None or c is None or abs(b - c) / cpus <= _LOAD_PER_CPU_DIFFERENCE:
        return None
    return (
        f"the machine was not equally busy: load average {b:.1f} (baseline) vs {c:.1f} "
        f"(candidate) on {cpus} CPUs; a speed change may be the machine's"
    )
