"""The benchmark scripts read racebench's typed results: a tiny run of racebench's side of
each keeps them working (their figures come from real runs, never from this test)."""

from __future__ import annotations

import pytest


def test_native_benchmark_runs_racebench_and_times_start_up(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import native

    monkeypatch.setitem(native.URLS, "redis", redis_url)
    assert native.racebench_ops("redis", "likes", 2, 200, 1) > 0
    ready_s, workers_rss_mb, parent_rss_mb = native.startup(4, 1)
    assert ready_s >= 0 and workers_rss_mb > 0 and parent_rss_mb > 0


def test_overhead_benchmark_runs_racebench_and_measures_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import overhead

    assert overhead.racebench_throughput("sqlite", 2, 400, None) > 0
    overhead.measure_memory(2_000)
    assert "recorded 2,000 operations" in capsys.readouterr().out


def test_pairwise_summary_reads_each_pair_as_its_own_ratio() -> None:
    from benchmarks.pairs import pairwise

    # Medians 100 vs 100 (1.00x); per pair 0.90, 0.95, 1.00 and 2.00.
    line = pairwise([90, 95, 100, 200], [100, 100, 100, 100])
    assert line.startswith("pairwise ratio median 0.97x (quartiles 0.94-1.25;")
    assert "racebench ahead in 1 of 4 pairs" in line
    assert "0.90-1.05" in pairwise([90, 105], [100, 100])


def test_noise_mode_runs_the_native_tool_against_itself(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import native

    monkeypatch.setitem(native.URLS, "redis", redis_url)
    monkeypatch.setattr(native, "racebench_ops", _must_not_run)
    argv = ["native.py", "--backend", "redis", "--clients", "2", "--operations", "300", "--noise"]
    monkeypatch.setattr("sys.argv", argv)
    native.main()
    out = capsys.readouterr().out
    assert (
        "redis clients=2 (300 operations a run) redis-benchmark -t incr vs itself: native again"
        in out
    )
    assert "redis-benchmark EVALSHA vs itself" in out
    assert "native again ahead in" in out and "racebench" not in out


def _must_not_run(*args: object) -> float:
    raise AssertionError("--noise ran racebench")
