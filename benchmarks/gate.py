"""Measure the compare gate: false alarms on identical code, detections of a 2x slowdown.

    python -m benchmarks.gate [--pairs 20] [--duration 2s] [--max-slowdown 10%]

Each compare is one trial per side, made as CI makes them: two separate `racebench run`
invocations back to back, then `racebench compare`. Same code: quickstart's `atomic` run
twice. A candidate truly 2x slower: `optimistic` with `race_window_ms` doubled (each attempt
sleeps twice as long inside its read-modify-write) against the same with the original
window. Required (issue 12): at most 1 false alarm of 20, at least 19 catches of 20.
Undecided outcomes (exit 4) are counted apart: neither an alarm nor a pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

OUTCOMES = {0: "passed", 1: "regression", 4: "undecided"}


def scenario(strategy: str, race_window_ms: float, duration: str) -> dict:
    """Quickstart's stock workload on SQLite, one strategy, bounded by time."""
    return {
        "name": "gate",
        "workload": {"type": "stock", "initial": 10_000_000, "quantity": 1},
        "store": {"backend": "sqlite"},
        "guard": {"strategy": strategy},
        "clients": 8,
        "duration": duration,
        "race_window_ms": race_window_ms,
    }


def racebench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("racebench")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def run_once(directory: Path, name: str, data: dict) -> Path:
    source, out = directory / f"{name}.yaml", directory / f"{name}.json"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    result = racebench("run", str(source), "-q", "-o", str(out))
    if result.returncode != 0:
        raise SystemExit(f"racebench run {name} failed: {result.stderr.strip()}")
    return out


def compare_pairs(
    directory: Path, base: dict, cand: dict, pairs: int, max_slowdown: str, tag: str
) -> tuple[Counter[str], list[float]]:
    """Outcome counts and throughput ratios (candidate/baseline) of `pairs` compares."""
    outcomes: Counter[str] = Counter()
    ratios = []
    for i in range(pairs):
        b = run_once(directory, f"{tag}-{i}-base", base)
        c = run_once(directory, f"{tag}-{i}-cand", cand)
        result = racebench(
            "compare", str(b), str(c), "--max-slowdown", max_slowdown, "--format", "json"
        )
        if result.returncode not in OUTCOMES:
            raise SystemExit(f"compare failed ({result.returncode}): {result.stderr.strip()}")
        outcome = OUTCOMES[result.returncode]
        outcomes[outcome] += 1
        run = json.loads(result.stdout)["runs"][0]
        ratios.append(run["throughput"]["ratio_of_medians"] or float("nan"))
        print(
            f"{tag} {i + 1:2}/{pairs}: {outcome:10} throughput x{ratios[-1]:.2f} "
            f"{run['throughput']['verdict']}; p99 {run['p99']['verdict']}",
            file=sys.stderr,
            flush=True,
        )
    return outcomes, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", default="2s")
    parser.add_argument("--max-slowdown", default="10%")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="racebench-gate-") as tmp:
        directory = Path(tmp)
        same = scenario("atomic", 2, args.duration)
        alarms, same_ratios = compare_pairs(
            directory, same, same, args.pairs, args.max_slowdown, "same"
        )
        slow_base = scenario("optimistic", 2, args.duration)
        slow_cand = scenario("optimistic", 4, args.duration)
        caught, slow_ratios = compare_pairs(
            directory, slow_base, slow_cand, args.pairs, args.max_slowdown, "2x-slower"
        )
    summary = {
        "pairs": args.pairs,
        "duration": args.duration,
        "max_slowdown": args.max_slowdown,
        "same_code": dict(alarms),
        "same_code_throughput_ratios": [round(r, 3) for r in same_ratios],
        "two_x_slower": dict(caught),
        "two_x_slower_throughput_ratios": [round(r, 3) for r in slow_ratios],
        "false_alarms_ok": alarms["regression"] <= 1,
        "detections_ok": caught["regression"] >= args.pairs - 1,
    }
    print(json.dumps(summary, indent=2))
    sys.exit(0 if summary["false_alarms_ok"] and summary["detections_ok"] else 1)


if __name__ == "__main__":
    main()
