"""The warnings of `racebench compare`: every way the two results were not made alike
(settings of a run, setup of the machine and servers, how busy the machine was), since a
speed change between unlike results may not be the code's."""

from __future__ import annotations

from typing import Any

import numpy as np

from racebench.output.report import LoadedResult, server_versions

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


def setting_changes(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Every per-run setting that differs: operations, duration, clients, trials, workers...

    Reads each run's resolved `settings` (the scenario of that matrix cell after command-line
    overrides); files without it fall back to the few settings every run entry carries.
    """
    if "settings" in base and "settings" in cand:
        b, c = _flatten(base["settings"]), _flatten(cand["settings"])
        keys = [k for k in {**b, **c} if k not in ("name", "description")]
    else:
        b, c, keys = base, cand, list(_RUN_SETTINGS)
    return [f"{k} {b.get(k)!r} -> {c.get(k)!r}" for k in keys if b.get(k) != c.get(k)]


def setup_differences(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Warnings for results made on different setups, where speed is not comparable."""
    warnings = []

    def differs(what: str, b: Any, c: Any) -> None:
        if b != c:
            warnings.append(f"different {what}: baseline {b}, candidate {c}")

    differs(
        "CPU count", base.get("host", {}).get("cpu_count"), cand.get("host", {}).get("cpu_count")
    )
    differs("racebench version", base.get("racebench_version"), cand.get("racebench_version"))
    differs(
        "scenario hash", base.get("scenario", {}).get("hash"), cand.get("scenario", {}).get("hash")
    )
    b_servers, c_servers = server_versions(base), server_versions(cand)
    for name in sorted(set(b_servers) & set(c_servers)):
        differs(f"{name} server version", b_servers[name], c_servers[name])
    b_drivers = base.get("environment", {}).get("drivers") or {}
    c_drivers = cand.get("environment", {}).get("drivers") or {}
    for name in sorted(set(b_drivers) & set(c_drivers)):
        differs(f"{name} driver version", b_drivers[name], c_drivers[name])
    return warnings


# Load average per CPU, beyond which two results are warned about as made on a machine that
# was not equally busy: other processes then take a different share of the CPUs.
_LOAD_PER_CPU_DIFFERENCE = 0.5


def _median_load(result: LoadedResult) -> float | None:
    loads = [t["host_load_1m"] for r in result.runs for t in r["trials"] if t.get("host_load_1m")]
    return float(np.median(loads)) if loads else None


def load_difference(base: LoadedResult, cand: LoadedResult) -> str | None:
    """A warning when the machine was much busier during one result than the other."""
    b, c = _median_load(base), _median_load(cand)
    cpus = base.document.get("host", {}).get("cpu_count") or 1
    if b is None or c is None or abs(b - c) / cpus <= _LOAD_PER_CPU_DIFFERENCE:
        return None
    return (
        f"the machine was not equally busy: load average {b:.1f} (baseline) vs {c:.1f} "
        f"(candidate) on {cpus} CPUs; a speed change may be the machine's"
    )
