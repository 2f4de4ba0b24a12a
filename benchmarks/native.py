"""racebench against each server's own benchmark tool, on the same statement and client count.

- redis: `redis-benchmark -t incr` against racebench's likes/atomic (INCRBY on one key), and
  stock/atomic (EVALSHA of the floor-checking script) against the same INCR figure;
- postgres: `pgbench -M prepared -f` running the stock/atomic UPDATE on racebench's own
  one-row counter table against racebench's stock/atomic;
- mysql: `mysqlslap --query` with the same UPDATE against racebench's stock/atomic.

Runs alternate A B A B (the machine drifts; neither side always goes first), and the ratio
is of the medians of at least 3 runs per side.

    python benchmarks/native.py --backend redis --clients 16 --clients 256 [--trials 3]
        [--operations 200000] [--workers 2]
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from racebench.config.scenario import expand
from racebench.engine.trials import Execution, ExecutionOptions, execute, make_store

URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
_UPDATE = "UPDATE {table} SET value = value + -1 WHERE id = 1 AND value + -1 >= 0"


def _scenario(backend: str, workload: str, clients: int, ops: int, workers: int | None) -> dict:
    data = {
        "name": f"native-{backend}",
        "workload": {"type": workload} | ({"initial": ops * 4} if workload == "stock" else {}),
        "store": {"backend": backend, "url": URLS[backend]},
        "guard": {"strategy": "atomic"},
        "clients": clients,
        "operations": ops,
    }
    if workers is not None:
        data["workers"] = workers
    return data


def racebench_ops(
    backend: str, workload: str, clients: int, ops: int, workers: int | None
) -> float:
    execution = Execution()
    execute(
        expand(_scenario(backend, workload, clients, ops, workers), "native"),
        ExecutionOptions(),
        execution,
    )
    [run] = execution.runs
    assert run["operations"]["errors"] == 0, run["errors_sample"]
    return run["throughput_ops_s"]


def redis_benchmark_ops(clients: int, ops: int) -> float:
    url = urlparse(URLS["redis"])
    command = ["redis-benchmark", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    command += ["-t", "incr", "-c", str(clients), "-n", str(ops), "-q"]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.findall(r"INCR: ([\d.]+) requests per second", out)[-1])


def _with_counter_table(backend: str, ops: int, run) -> float:
    """Create racebench's counter table (as a run's setup does), run the tool, drop it."""
    [spec] = expand(_scenario(backend, "stock", 1, ops, None), "native")
    store = make_store(spec, f"racebench_{secrets.token_hex(4)}")
    store.setup(spec.scenario.workload.plan(), 1)
    try:
        return run(store.namespace + "_counter")
    finally:
        store.teardown()


def pgbench_ops(clients: int, ops: int) -> float:
    def run(table: str) -> float:
        url = urlparse(URLS["postgres"])
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(_UPDATE.format(table=table) + ";\n")
            script.flush()
            command = ["pgbench", "-n", "-M", "prepared", "-f", script.name]
            command += ["-c", str(clients), "-j", "2", "-t", str(max(1, ops // clients))]
            command += ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432)]
            command += ["-U", url.username or "postgres", url.path.lstrip("/") or "postgres"]
            out = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        return float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]

    return _with_counter_table("postgres", ops, run)


def mysqlslap_ops(clients: int, ops: int) -> float:
    def run(table: str) -> float:
        url = urlparse(URLS["mysql"])
        command = ["mysqlslap", "-h", url.hostname or "127.0.0.1", "-P", str(url.port or 3306)]
        command += ["-u", url.username or "root", f"--create-schema={url.path.lstrip('/')}"]
        command += [f"--query={_UPDATE.format(table=table)}", f"--concurrency={clients}"]
        command += ["--iterations=1", f"--number-of-queries={ops}"]
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seconds = float(re.search(r"run all queries: ([\d.]+) seconds", out).group(1))  # type: ignore[union-attr]
        return ops / seconds

    return _with_counter_table("mysql", ops, run)


NATIVE = {"redis": redis_benchmark_ops, "postgres": pgbench_ops, "mysql": mysqlslap_ops}
# (label, workload) of the racebench side, per backend
RACEBENCH_SIDES = {
    "redis": [("likes atomic (INCRBY)", "likes"), ("stock atomic (EVALSHA)", "stock")],
    "postgres": [("stock atomic", "stock")],
    "mysql": [("stock atomic", "stock")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", action="append", choices=list(NATIVE))
    parser.add_argument("--clients", action="append", type=int)
    parser.add_argument("--operations", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    for backend in args.backend or ["redis"]:
        for clients in args.clients or [16]:
            ops = args.operations if backend == "redis" else args.operations // 10
            native: list[float] = []
            ours: dict[str, list[float]] = {label: [] for label, _ in RACEBENCH_SIDES[backend]}
            for _ in range(max(3, args.trials)):
                native.append(NATIVE[backend](clients, ops))
                for label, workload in RACEBENCH_SIDES[backend]:
                    ours[label].append(racebench_ops(backend, workload, clients, ops, args.workers))
            base = statistics.median(native)
            print(f"{backend} clients={clients}: native median {base:,.0f} ops/s {native}")
            for label, values in ours.items():
                median = statistics.median(values)
                print(
                    f"  racebench {label}: median {median:,.0f} ops/s "
                    f"ratio {median / base:.2f}x  {[round(v) for v in values]}"
                )


if __name__ == "__main__":
    main()
