"""JUnit XML for CI test reports: `racebench run --junit PATH` and `compare --format junit`.

One `testcase` per run (classname = scenario name, name = run label). A run fails the
testcase when its verdict is UNEXPECTED or inconclusive, an expectation failed, or (compare)
it regressed or its speed was undecided without --allow-undecided. Properties carry the
figures, each saying what it is (medians over trials, anomaly totals with the trial count).
Written with the standard library's ElementTree: the format is a few elements, and the
tests read it back with junitparser.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from racebench.result_model import RunEntry
from racebench.util.naming import INCONCLUSIVE, UNEXPECTED

if TYPE_CHECKING:
    from racebench.output.compare import Comparison


def run_properties(run: RunEntry) -> dict[str, str]:
    """Figures of one run, named with what they are."""
    trials = len(run.trials) or 1
    anomalies = sum(run.anomalies.values())
    properties = {
        "trials": str(trials),
        "throughput_ops_s_median": f"{run.throughput_ops_s:.2f}",
        "p99_ms": f"{run.latency_ms.p99:.3f}",
        f"anomalies_total_over_{trials}_trials": str(anomalies),
        "verdict": run.verdict,
    }
    properties.update({f"anomaly.{k}": str(v) for k, v in run.anomalies.items()})
    return properties


def run_failures(run: RunEntry) -> list[str]:
    """Why a run fails as a test: UNEXPECTED, inconclusive, failed expectations."""
    reasons = []
    if run.verdict == UNEXPECTED:
        reasons.append("UNEXPECTED: a strategy that claims safety showed anomalies")
    elif run.verdict == INCONCLUSIVE:
        reasons.append("inconclusive: too little evidence for a verdict")
    reasons += [f"expectation failed: {f}" for f in run.expectation_failures]
    return reasons


def _testcase(
    suite: ET.Element,
    classname: str,
    name: str,
    seconds: float,
    properties: dict[str, str],
    failures: list[str],
) -> None:
    case = ET.SubElement(
        suite, "testcase", classname=classname, name=name, time=f"{max(0.0, seconds):.3f}"
    )
    props = ET.SubElement(case, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", name=key, value=value)
    if failures:
        failure = ET.SubElement(case, "failure", message=failures[0], type="racebench")
        failure.text = "\n".join(failures)


def _document(suites: list[ET.Element]) -> str:
    root = ET.Element("testsuites")
    for suite in suites:
        suite.set("tests", str(len(suite.findall("testcase"))))
        suite.set("failures", str(len(suite.findall("testcase/failure"))))
        suite.set("errors", "0")
        root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def runs_junit(files: list[tuple[str, list[RunEntry]]]) -> str:
    """JUnit XML of `racebench run`: one suite per scenario, one testcase per run."""
    suites = []
    for scenario, runs in files:
        suite = ET.Element("testsuite", name=f"racebench run {scenario}")
        for run in runs:
            seconds = sum(t.duration_s for t in run.trials)
            _testcase(suite, scenario, run.label, seconds, run_properties(run), run_failures(run))
        suites.append(suite)
    return _document(suites)


def comparison_junit(comparison: Comparison) -> str:
    """JUnit XML of `racebench compare`: one testcase per compared run of the candidate."""
    scenario = comparison.candidate.document.scenario.name
    classname = scenario or comparison.candidate.path.stem
    candidate_runs = {r.label: r for r in comparison.candidate.runs}
    suite = ET.Element("testsuite", name=f"racebench compare {comparison.baseline.path.name}")
    for run in comparison.runs:
        candidate = candidate_runs[run.label]
        failures = [f"regression: {reason}" for reason in run.regressions]
        failures += run_failures(candidate)
        if run.speed_undecided and not comparison.allow_undecided:
            failures.append(
                "undecided: the speed change could not be told from noise "
                f"(throughput {run.throughput.verdict}, p99 {run.p99.verdict})"
            )
        properties = run_properties(candidate)
        for change in (run.throughput, run.p99):
            properties[f"{change.metric}.verdict"] = change.verdict
            if change.ratio is not None:
                properties[f"{change.metric}.ratio_of_medians"] = f"{change.ratio:.4f}"
            if change.interval is not None:
                properties[f"{change.metric}.interval"] = (
                    f"{change.interval[0]:.4f}..{change.interval[1]:.4f}"
                )
        seconds = sum(t.duration_s for t in candidate.trials)
        _testcase(suite, classname, run.label, seconds, properties, failures)
    return _document([suite])
