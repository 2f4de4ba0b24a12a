"""racebench against each server's own benchmark tool, on the same statement and client count.

- redis: `redis-benchmark -t incr` against racebench's likes/atomic (INCRBY on one key), and
  `redis-benchmark ... EVALSHA <sha> 1 <key> -1 0` (the same floor-checking script, loaded
  first) against racebench's stock/atomic;
- postgres: `pgbench -M prepared -f` running the stock/atomic UPDATE on racebench's own
  one-row counter table against racebench's stock/atomic;
- mysql: `mysqlslap --query` with the same UPDATE against racebench's stock/atomic.

Runs alternate A B B A (the machine drifts; neither side always goes first), and the ratio
is of the medians of at least 3 runs per side; the per-pair ratios' median and quartiles are
printed beside it (benchmarks/pairs.py).

    python benchmarks/native.py --backend redis --clients 16 --clients 256 [--trials 3]
        [--operations 200000] [--workers 2]
    python benchmarks/native.py --backend postgres --clients 16 --operations 150000  # 15,000 a run
    python benchmarks/native.py --startup 8000   # Redis clients: ready time and memory
    python benchmarks/native.py --backend postgres --clients 64 --noise   # the tool vs itself

`--noise` runs the native tool in racebench's place, in the same alternation: nothing differs
between the two sides, so its ratio's distance from 1.00x and its pairs' quartiles are what
the machine alone does to a set. A racebench ratio inside that spread is not a finding.
PostgreSQL's session settings reach both sides through libpq's `PGOPTIONS`, e.g.
`PGOPTIONS='-c synchronous_commit=off'` takes the WAL fsync out of each statement.

Each figure is printed with the 1-minute load average when it was taken: on a shared machine
a ratio means little without it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pairs import pairwise
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
    assert run.operations.errors == 0, run.errors_sample
    return run.throughput_ops_s


def _load() -> str:
    return os.getloadavg()[0].__format__(".1f")


def _redis_benchmark(clients: int, ops: int, *what: str) -> float:
    url = urlparse(URLS["redis"])
    command = ["redis-benchmark", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    command += ["-c", str(clients), "-n", str(ops), "-q", *what]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.findall(r": ([\d.]+) requests per second", out)[-1])


def redis_benchmark_ops(clients: int, ops: int) -> float:
    return _redis_benchmark(clients, ops, "-t", "incr")


def redis_benchmark_evalsha_ops(clients: int, ops: int) -> float:
    """The stock/atomic script through redis-benchmark's arbitrary-command form: the same
    EVALSHA racebench sends (sell one unit if that leaves at least 0), on a key of its own."""
    from racebench.stores.redis import COUNTER_ADD_WITH_FLOOR, open_redis

    client = open_redis(URLS["redis"])
    key = f"racebench:native_{secrets.token_hex(4)}:counter"
    try:
        sha = client.script_load(COUNTER_ADD_WITH_FLOOR)
        client.set(key, ops * 4, ex=3600)
        return _redis_benchmark(clients, ops, "EVALSHA", sha, "1", key, "-1", "0")
    finally:
        client.delete(key)
        client.close()


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


# (label, native tool, racebench workload) per backend: each pair runs the same command.
PAIRS = {
    "redis": [
        ("likes atomic (INCRBY) vs redis-benchmark -t incr", redis_benchmark_ops, "likes"),
        ("stock atomic (EVALSHA) vs redis-benchmark EVALSHA", redis_benchmark_evalsha_ops, "stock"),
    ],
    "postgres": [("stock atomic vs pgbench -M prepared", pgbench_ops, "stock")],
    "mysql": [("stock atomic vs mysqlslap", mysqlslap_ops, "stock")],
}


def startup(clients: int, workers: int | None) -> tuple[float, float, float]:
    """(ready seconds, the workers' summed peak RSS in MB, this process's peak RSS in MB) of
    `clients` Redis clients doing two INCRBYs each."""
    import resource

    execution = Execution()
    data = _scenario("redis", "likes", clients, clients * 2, workers)
    execute(expand(data, "native"), ExecutionOptions(), execution)
    [run] = execution.runs
    assert run.load is not None and run.load.ready_s is not None
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return run.load.ready_s, sum(run.load.worker_max_rss_mb), parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", action="append", choices=list(PAIRS))
    parser.add_argument("--clients", action="append", type=int)
    parser.add_argument(
        "--operations",
        type=int,
        default=100_000,
        help="operations a run on Redis; a tenth of it on PostgreSQL and MySQL",
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--startup", type=int, metavar="CLIENTS", help="time Redis start-up")
    parser.add_argument(
        "--noise",
        action="store_true",
        help="run the native tool against itself instead of racebench (the set's own noise)",
    )
    args = parser.parse_args()
    if args.startup:
        for _ in range(max(3, args.trials)):
            ready, workers_mb, parent_mb = startup(args.startup, args.workers)
            print(
                f"redis {args.startup} clients: ready {ready:.2f} s, workers {workers_mb:,.0f} MB"
                f" + parent {parent_mb:,.0f} MB (load {_load()})",
                flush=True,
            )
        return
    for backend in args.backend or ["redis"]:
        for clients in args.clients or [16]:
            ops = args.operations if backend == "redis" else args.operations // 10
            for label, native_fn, workload in PAIRS[backend]:
                native: list[float] = []
                ours: list[float] = []
                loads: list[str] = []
                for trial in range(max(3, args.trials)):
                    # A B, then B A: neither side always runs first (a server warms up, a
                    # checkpoint lands on whoever runs at that moment).
                    sides = ["native", "racebench"] if trial % 2 == 0 else ["racebench", "native"]
                    for side in sides:
                        if side == "native":
                            native.append(native_fn(clients, ops))
                        elif args.noise:
                            ours.append(native_fn(clients, ops))
                        else:
                            workers = args.workers
                            ours.append(racebench_ops(backend, workload, clients, ops, workers))
                    loads.append(_load())
                base, median = statistics.median(native), statistics.median(ours)
                ours_name = "native again" if args.noise else "racebench"
                if args.noise:
                    label = label.split(" vs ")[1] + " vs itself"
                print(
                    f"{backend} clients={clients} ({ops:,} operations a run) {label}: "
                    f"{ours_name} {median:,.0f} ops/s, "
                    f"native {base:,.0f} ops/s, ratio {median / base:.2f}x  "
                    f"({ours_name} {[round(v) for v in ours]}, native {[round(v) for v in native]},"
                    f" load {loads})\n    {pairwise(ours, native, ours_name)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
