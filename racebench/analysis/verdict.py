"""From a trial's history and final state to figures, anomalies and the run's verdict.

The verdict compares what happened with what the strategy claims: a strategy that claims
safety and showed an anomaly is UNEXPECTED; an unguarded run that happened not to race is
"race not reproduced", never "safe". A verdict needs evidence: a run whose operations were
not acknowledged, or failed too often, to show the race is "inconclusive", never "safe".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from racebench.analysis.history_sample import sample_history
from racebench.analysis.metrics import (
    LAG_LINE_MS,
    latency_summary,
    new_histogram,
    record_durations,
    share_range,
    spread,
)
from racebench.analysis.samples import within_run_samples
from racebench.config.scenario import CustomWorkload, RunSpec
from racebench.history import Outcome, RunHistory
from racebench.locks.base import LockService
from racebench.protocol import RunnerResult
from racebench.result_model import RunEntry
from racebench.stores.base import StrategySpec
from racebench.util.naming import ANOMALIES, INCONCLUSIVE, NOT_REPRODUCED, SAFE, UNEXPECTED
from racebench.workloads.attribution import MAX_EXAMPLES, Example
from racebench.workloads.counters import (
    Check,
    CounterPlan,
    FinalState,
    Invariant,
    count_overlapping_pairs,
)

ME_VIOLATIONS = "mutual_exclusion_violations"
# The error rate above which a run cannot vouch for a strategy, unless expect.max_error_rate
# says otherwise: the race may hide among the operations that errored.
DEFAULT_MAX_ERROR_RATE = 0.01


@dataclass
class TrialAnalysis:
    trial: int
    interrupted: bool
    duration_s: float
    throughput_ops_s: float
    latency_ms: dict[str, float]
    operations: dict[str, int]
    retries_by_code: dict[str, int]
    invariants: list[Invariant]
    anomalies: dict[str, int]
    claims_data_safety: bool
    claims_exclusion: bool
    lock: dict[str, Any] | None
    errors_sample: dict[str, int]
    timeline: dict[str, Any] | None = None
    history_sample: dict[str, Any] | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)
    sequence: int = 0  # position of this trial in the session's run order (interleaving)
    host_load: float | None = None  # the machine's 1-minute load average as the trial ended
    faults_not_fired: list[dict[str, Any]] = field(default_factory=list)
    service_time_ms: dict[str, float] | None = None
    service_histogram: HdrHistogram | None = None  # open loop: merged over trials
    load: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # attributed anomalies


_TIMELINE_SECTIONS = 5000


def example_entries(examples: list[Example], trial: int, t0_ns: int) -> list[dict[str, Any]]:
    """Attributed anomalies as result-file entries, times in ms from the run's start."""
    return [
        {
            "trial": trial,
            "kind": e.kind,
            "text": e.text,
            "ops": [list(op) for op in e.ops],
            "start_ms": round((e.start_ns - t0_ns) / 1e6, 3) if e.start_ns else None,
            "end_ms": round((e.end_ns - t0_ns) / 1e6, 3) if e.end_ns else None,
            **({"note": e.note} if e.note else {}),
        }
        for e in examples[:MAX_EXAMPLES]
    ]


def _timeline(history: RunHistory, t0_ns: int) -> dict[str, Any] | None:
    """Critical sections per client and the overlaps between them, in ms from the start.

    Capped to the first sections of the run, which is where a fault's effect is looked for.
    """
    clients, starts, ends = history.critical_sections()
    if not len(starts):
        return None
    order = np.argsort(starts, kind="stable")[:_TIMELINE_SECTIONS]
    c, s, e = clients[order], starts[order], ends[order]
    overlaps: list[list[float]] = []
    for i in range(len(s)):
        j = i + 1
        while j < len(s) and s[j] < e[i] and len(overlaps) < _TIMELINE_SECTIONS:
            overlaps.append(
                [round((s[j] - t0_ns) / 1e6, 3), round((min(e[i], e[j]) - t0_ns) / 1e6, 3)]
            )
            j += 1
    to_ms = lambda v: np.round((v - t0_ns) / 1e6, 3).tolist()  # noqa: E731
    return {
        "critical_sections": [list(x) for x in zip(c.tolist(), to_ms(s), to_ms(e), strict=True)],
        "violations": overlaps,
        "truncated": len(starts) > _TIMELINE_SECTIONS,
    }


def _claims(
    spec: RunSpec, strategy: StrategySpec, lock_service: LockService | None
) -> tuple[bool, bool]:
    """(claims no data anomaly, claims mutual exclusion) for this run's configuration."""
    s = spec.scenario
    safe = s.workload.type in strategy.safe_for
    exclusion = False
    if lock_service is not None:
        exclusion = lock_service.claims_exclusion(s.race_window_ms, s.faults)
        # A lease shorter than the critical section, or a fault that ends the lock behind
        # its holder's back, breaks exclusion; fencing keeps the data.
        safe = safe and (exclusion or s.guard.fencing)
    return safe, exclusion


def _lock_metrics(history: RunHistory, clients: int) -> dict[str, Any]:
    r = history.records
    entered = r["cs_start"] > 0
    acquire = new_histogram()
    record_durations(acquire, (r["cs_start"] - r["start"])[entered])
    hold = new_histogram()
    record_durations(hold, (r["cs_end"] - r["cs_start"])[entered])
    per_client = np.bincount(history.client[entered], minlength=clients)
    acq, held = latency_summary(acquire), latency_summary(hold)
    return {
        "acquisitions": int(entered.sum()),
        "acquire_ms": {"p50": acq["p50"], "p99": acq["p99"], "max": acq["max"]},
        "hold_ms": {"p50": held["p50"], "p99": held["p99"], "max": held["max"]},
        "acquire_timeouts": history.count(Outcome.LOCK_TIMEOUT),
        "stale_writes_rejected": history.count(Outcome.STALE),
        "fairness": share_range(per_client, clients),
    }


def analyze_trial(
    spec: RunSpec,
    strategy: StrategySpec,
    lock_service: LockService | None,
    final: FinalState,
    history: RunHistory,
    result: RunnerResult,
    trial: int,
    check: Check | None = None,
) -> tuple[TrialAnalysis, HdrHistogram]:
    """Figures and anomalies of one trial; `check` is a custom workload's own check."""
    s = spec.scenario
    if check is None:
        workload = s.workload
        assert not isinstance(workload, CustomWorkload)  # a custom one brings its own check
        if s.guard.strategy == "crdt":
            plan = workload.plan()
            assert isinstance(plan, CounterPlan)  # crdt supports the likes counter only
            final.value = plan.initial + final.slots_total
        check = workload.check(final, history)
    anomalies = dict(check.anomalies)
    cs_client, cs_start, cs_end = history.critical_sections()
    possible_overlaps = None
    if result.cluster is not None and len(cs_start):
        # Across hosts only an overlap longer than the clocks' uncertainty is certain.
        certain, possible_overlaps = cluster_overlaps(result.cluster, cs_client, cs_start, cs_end)
        anomalies[ME_VIOLATIONS] = certain
    elif len(cs_start) or lock_service is not None:
        anomalies[ME_VIOLATIONS] = count_overlapping_pairs(cs_start, cs_end)

    r = history.records
    measured_from = result.t0_ns + int(s.warmup * 1e9)
    measured = r["start"] >= measured_from
    # Response time counts from when the operation was due (the open loop's schedule), so a
    # stall shows in full; service time from when it really started.
    histogram = new_histogram()
    record_durations(histogram, (r["end"] - r["intended"])[measured])
    service = None
    if s.rate is not None:
        service = new_histogram()
        record_durations(service, (r["end"] - r["start"])[measured])
    last_end = int(r["end"].max()) if len(r) else result.t0_ns
    window_s = max(1e-9, (last_end - measured_from) / 1e9)
    counts = history.outcome_counts()
    operations = {
        "attempted": len(history),
        "ok": counts["ok"],
        "rejected": counts["rejected"],
        "conflicts": counts["conflict"],
        "errors": counts["error"],
        "unknown": counts["unknown"],
        "stale": counts["stale"],
        "lock_timeouts": counts["lock_timeout"],
        "retries": int(r["retries"].sum()),
    }
    claims_safe, claims_exclusion = _claims(spec, strategy, lock_service)
    analysis = TrialAnalysis(
        trial=trial,
        interrupted=result.interrupted,
        duration_s=round((last_end - result.t0_ns) / 1e9, 4),
        throughput_ops_s=round(int(measured.sum()) / window_s, 2),
        latency_ms=latency_summary(histogram),
        operations=operations,
        retries_by_code=dict(result.retry_codes),
        invariants=check.invariants,
        anomalies=anomalies,
        claims_data_safety=claims_safe,
        claims_exclusion=claims_exclusion,
        lock=_lock_metrics(history, s.clients) if lock_service is not None else None,
        errors_sample=history.error_messages(),
        timeline=_timeline(history, result.t0_ns) if s.faults or lock_service else None,
        samples=within_run_samples(history, measured_from, histogram),
        host_load=round(os.getloadavg()[0], 2),
        history_sample=sample_history(history, result.t0_ns),
        service_time_ms=latency_summary(service) if service is not None else None,
        service_histogram=service,
        load=load_figures(result, s.rate),
        examples=example_entries(check.examples, trial, result.t0_ns),
    )
    if result.cluster is not None:
        analysis.load["cluster"] = {**result.cluster, "possible_overlaps": possible_overlaps}
    return analysis, histogram


def missing_evidence(
    operations: dict[str, int], max_error_rate: float | None, faults_injected: bool = False
) -> str | None:
    """Why these operations cannot support "safe" or "race not reproduced", or None.

    Acknowledged operations are those the server answered with a definite outcome (applied,
    rejected by the guard, or refused as stale). None of them, or a failure rate above
    `max_error_rate` (default 1%), leaves too little to show the race. Failures are errors,
    and outcomes left unknown (a connection lost mid-write) unless the scenario injects
    faults, whose expected effect they are.
    """
    attempted, errors = operations["attempted"], operations["errors"]
    failed = errors if faults_injected else errors + operations["unknown"]
    what = "errored" if faults_injected else "errored or ended unknown"
    acknowledged = operations["ok"] + operations["rejected"] + operations["stale"]
    if not acknowledged:
        return f"no operation acknowledged ({attempted} attempted, {failed} {what})"
    limit = DEFAULT_MAX_ERROR_RATE if max_error_rate is None else max_error_rate
    if failed / attempted > limit:
        return (
            f"{failed} of {attempted} operations {what} ({failed / attempted:.1%}, "
            f"above {limit:.1%})"
        )
    return None


def unexplained_state(
    invariants: list[dict[str, Any]], anomalies: dict[str, int], lost_hosts: list[str]
) -> str | None:
    """Why the history cannot stand behind the final state, or None.

    An invariant broken while no anomaly was counted means the final state holds writes the
    history does not show (a Dask worker lost before it shipped its last operations; another
    writer on the same keys): the history explains neither "safe" nor an anomaly.
    """
    if any(anomalies.values()):
        return None
    broken = next((i for i in invariants if not i["holds"]), None)
    if broken is None:
        return None
    why = f"the history does not explain the final state ({broken['name']}: {broken['detail']})"
    if lost_hosts:
        why += (
            f"; Dask worker {', '.join(sorted(set(lost_hosts)))} was lost: what its clients"
            " did after their last shipment is not in the history"
        )
    return why


def cluster_overlaps(
    cluster: dict[str, Any], client: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[int, int]:
    """(certain, possible) critical-section overlaps of a run whose workers ran on a cluster."""
    from racebench.engine.cluster import count_overlaps_across_hosts

    host_of: dict[int, int] = {}
    uncertainty: dict[int, int] = {}
    hosts: dict[str, int] = {}  # racebench workers on one Dask worker share its clock
    for worker in cluster["workers"]:
        host = hosts.setdefault(worker["address"], len(hosts))
        uncertainty[host] = int(worker["uncertainty_ms"] * 1e6)
        for c in worker["clients"]:
            host_of[c] = host
    return count_overlaps_across_hosts(client, starts, ends, host_of, uncertainty)


# A worker above this share of one core, or whose loop ran this late at p99, measured itself.
SATURATED_CPU_SHARE = 0.9
SATURATED_LAG_P99_MS = LAG_LINE_MS
# Where the kernel does not say what a late loop did (engine.worker.sample_lag), lag past the
# line while no worker computed even half the time is taken for waiting: for a core that other
# processes held (PostgreSQL's backends on the same 2 cores put lag p99 at 1.8-2.1 ms with the
# workers at 17-18% of a core each) or on a call that blocks it. More workers would help neither.
BUSY_WORKER_SHARE = 0.5
_SATURATED_ADVICE = "these figures describe racebench, not the server; add workers or hosts"
# What the loop did in its late samples (the largest part) -> what the reason adds, the advice.
_LAG_CAUSES = {
    "computing": ("the loop computing", _SATURATED_ADVICE),
    "waiting_for_core": (
        "waiting for a core other processes held",
        "these latencies include that wait; run the clients on a host of their own",
    ),
    "blocked": (
        "in a call that blocked the loop",
        "these latencies include that wait; keep blocking calls off the loop",
    ),
}


def lag_cause(result: RunnerResult, busiest: float) -> tuple[str, str]:
    """Why the loops ran late: (what the lag reason adds, the advice).

    From what the loops' threads did in their late samples, summed over the workers; where the
    kernel did not say (no run-queue figures), from the workers' CPU shares."""
    outputs = [o.lag_parts_us for o in result.outputs if o.lag_parts_us]
    if outputs and all("waiting_for_core" in parts for parts in outputs):
        total = {k: sum(parts.get(k, 0) for parts in outputs) for k in _LAG_CAUSES}
        whole = sum(total.values())
        if whole > 0:
            # The largest part decides the advice; a second one of a quarter or more is
            # named too, so "51% computing" does not hide 45% waiting for a core.
            causes = sorted(total, key=lambda k: -total[k])
            named = [causes[0]] + [k for k in causes[1:] if total[k] >= whole / 4]
            what = [f"{total[k] / whole:.0%} {_LAG_CAUSES[k][0]}" for k in named]
            what[0] = what[0].replace("%", "% of it", 1)
            return ", " + " and ".join(what), _LAG_CAUSES[causes[0]][1]
    if busiest < BUSY_WORKER_SHARE:
        return (
            f" with no worker above {busiest:.0%} of a core: the loop was waiting, for a core "
            "other processes held or on a call that blocks it",
            "these latencies include that wait; run the clients on a host of their own "
            "and keep blocking calls off the loop",
        )
    return "", _SATURATED_ADVICE


def load_figures(result: RunnerResult, rate: float | None) -> dict[str, Any]:
    """racebench's own load: workers, their CPU and loop lag, and whether it was the limit.

    Lag is merged as HDR histograms across workers (percentiles are never averaged).
    """
    shares = [round(o.cpu_share, 3) for o in result.outputs]
    lag = latency_summary(result.loop_lag())
    reasons = []
    busiest = max(shares, default=0.0)
    advice = _SATURATED_ADVICE
    if lag["p99"] > SATURATED_LAG_P99_MS:
        what, advice = lag_cause(result, busiest)
        reasons.append(f"event-loop lag p99 {lag['p99']:.1f} ms{what}")
    if busiest > SATURATED_CPU_SHARE:  # a saturated worker: more of them is the advice
        reasons.insert(0, f"a worker used {busiest:.0%} of a core")
        advice = _SATURATED_ADVICE
    figures: dict[str, Any] = {
        "workers": result.workers,
        "ready_s": round(result.ready_s, 3),
        "worker_max_rss_mb": [round(o.max_rss_mb, 1) for o in result.outputs],
        "worker_cpu_share": shares,
        "loop_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
        "client_bound": bool(reasons),
    }
    if reasons:
        figures["client_bound_reason"] = "; ".join(reasons) + ": " + advice
    if rate is not None:
        figures["open_loop"] = {
            "rate_ops_s": rate,
            "late": sum(o.late for o in result.outputs),
            "dropped": sum(o.dropped for o in result.outputs),
        }
    return figures


def decide_verdict(
    anomalies: dict[str, int],
    claims_data_safety: bool,
    claims_exclusion: bool,
    evidence_missing: str | None = None,
) -> str:
    """The run's verdict; an anomaly seen is evidence enough, its absence needs operations."""
    violations = anomalies.get(ME_VIOLATIONS, 0)
    data = sum(v for k, v in anomalies.items() if k != ME_VIOLATIONS)
    if (claims_data_safety and data) or (claims_exclusion and violations):
        return UNEXPECTED
    if data or (violations and not claims_data_safety):
        return ANOMALIES
    if evidence_missing is not None:
        return INCONCLUSIVE
    return SAFE if claims_data_safety else NOT_REPRODUCED


def _expectation_failures(run: dict[str, Any], spec: RunSpec) -> list[str]:
    e = spec.scenario.expect
    failures = []
    if run["verdict"] == INCONCLUSIVE:
        failures.append(f"inconclusive: {run['evidence_missing']}")
    failures += [f"fault did not fire: {describe_fault(f)}" for f in run["faults_not_fired"]]
    seen = sum(run["anomalies"].values())
    if e.anomalies == "auto" and run["verdict"] == UNEXPECTED:
        failures.append("a strategy that claims safety showed anomalies")
    elif e.anomalies == "none" and seen:
        failures.append(f"expected no anomaly, saw {seen}")
    elif e.anomalies == "present" and not seen:
        failures.append("expected anomalies, saw none (race not reproduced)")
    ops = run["operations"]
    if e.max_error_rate is not None and ops["attempted"]:
        rate = ops["errors"] / ops["attempted"]
        if rate > e.max_error_rate:
            failures.append(f"error rate {rate:.1%} above {e.max_error_rate:.1%}")
    if e.min_throughput_ops_s is not None and run["throughput_ops_s"] < e.min_throughput_ops_s:
        failures.append(
            f"throughput {run['throughput_ops_s']:.0f} ops/s below {e.min_throughput_ops_s:.0f}"
        )
    if e.max_p99_ms is not None and run["latency_ms"]["p99"] > e.max_p99_ms:
        failures.append(f"p99 {run['latency_ms']['p99']:.2f} ms above {e.max_p99_ms} ms")
    if e.verdict is not None and run["verdict"] not in e.verdict:
        failures.append(f"verdict {run['verdict']}, expected one of: {', '.join(e.verdict)}")
    return failures


def describe_fault(fault: dict[str, Any]) -> str:
    """e.g. 'pause_client (when: holding, client 0)'."""
    return f"{fault['kind']} ({fault['trigger']}, client {fault['client']})"


def _merged_load(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """The load figures of the trial that was most client-bound (the last one if none was)."""
    bound = [load for load in loads if load.get("client_bound")]
    return (bound or loads)[-1] if loads else {}


def summarize_run(
    spec: RunSpec, trials: list[TrialAnalysis], histograms: list[HdrHistogram]
) -> RunEntry:
    """One run's entry in the result file, over all its trials (the fields: RunEntry)."""
    s = spec.scenario
    merged = new_histogram()
    for histogram in histograms:
        merged.add(histogram)
    operations = {k: sum(t.operations[k] for t in trials) for k in trials[0].operations}
    anomalies = {k: sum(t.anomalies.get(k, 0) for t in trials) for k in trials[0].anomalies}
    retries_by_code: dict[str, int] = {}
    for t in trials:
        for code, n in t.retries_by_code.items():
            retries_by_code[code] = retries_by_code.get(code, 0) + n
    invariants = []
    for i, first in enumerate(trials[0].invariants):
        broken = next((t.invariants[i] for t in trials if not t.invariants[i].holds), None)
        chosen = broken or trials[-1].invariants[i]
        invariants.append({"name": first.name, "holds": broken is None, "detail": chosen.detail})
    throughput = spread([t.throughput_ops_s for t in trials])
    lock = s.guard.lock
    service: dict[str, float] | None = None
    if trials[0].service_histogram is not None:
        merged_service = new_histogram()
        for t in trials:
            if t.service_histogram is not None:
                merged_service.add(t.service_histogram)
        service = latency_summary(merged_service)
    run: dict[str, Any] = {
        "label": spec.label,
        "params": spec.params,
        "workload": s.workload.type,
        "backend": s.store.backend,
        "strategy": s.guard.strategy,
        "lock_service": lock.service if s.guard.strategy == "lock" and lock else None,
        "fencing": s.guard.fencing,
        # Only a renewable lease's config has `renew` (racebench.locks.redis_lock).
        "lease_renewal": bool(
            s.guard.strategy == "lock" and lock and getattr(lock, "renew", False)
        ),
        "clients": s.clients,
        "workers": trials[-1].load.get("workers"),
        "arrival": f"{s.rate:g}/s {s.arrival}" if s.rate is not None else "closed loop",
        "race_window_ms": s.race_window_ms,
        # The matrix cell's resolved scenario after overrides: compare warns on any change.
        "settings": s.model_dump(mode="json", exclude={"name", "description"}),
        "trials_count": len(trials),
        "interrupted": any(t.interrupted for t in trials),
        "operations": operations,
        "retries_by_code": retries_by_code,
        "duration_s": float(np.median([t.duration_s for t in trials])),
        "throughput_ops_s": throughput["median"],
        "throughput_spread": throughput,
        "latency_ms": latency_summary(merged),
        "service_time_ms": service,
        "load": _merged_load([t.load for t in trials]),
        "invariants": invariants,
        "anomalies": anomalies,
        "claims_safety": trials[0].claims_data_safety,
        "lock": trials[-1].lock,
        "errors_sample": trials[-1].errors_sample,
        "faults": trials[-1].faults,
        # From the first trial that missed one: a fault asked for must fire in every trial.
        "faults_not_fired": next((t.faults_not_fired for t in trials if t.faults_not_fired), []),
        "timeline": trials[-1].timeline,
        # The first anomalies attributed to operations (workloads.attribution), trial by trial.
        "anomaly_examples": [e for t in trials for e in t.examples][:MAX_EXAMPLES],
        "history_sample": trials[-1].history_sample,
        "trials": [
            {
                "trial": t.trial,
                "sequence": t.sequence,
                "duration_s": t.duration_s,
                "throughput_ops_s": t.throughput_ops_s,
                "latency_ms": t.latency_ms,
                "operations": t.operations,
                "anomalies": t.anomalies,
                "samples": t.samples,
                "host_load_1m": t.host_load,
            }
            for t in trials
        ],
    }
    lost_hosts = [
        w["address"]
        for t in trials
        for w in t.load.get("cluster", {}).get("workers", [])
        if w["lost"]
    ]
    run["evidence_missing"] = missing_evidence(
        operations, s.expect.max_error_rate, faults_injected=bool(s.faults)
    ) or unexplained_state(invariants, anomalies, lost_hosts)
    run["verdict"] = decide_verdict(
        anomalies,
        trials[0].claims_data_safety,
        trials[0].claims_exclusion,
        run["evidence_missing"],
    )
    run["expectation_failures"] = _expectation_failures(run, spec)
    run["passed"] = not run["expectation_failures"]
    # Lax: figures computed with numpy may be numpy scalars; the model makes them numbers.
    return RunEntry.model_validate(run, strict=False)
