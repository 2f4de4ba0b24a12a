"""How much racebench's own machinery costs, against a bare loop of the same driver.

For each backend: (a) N forked processes run `benchmarks/bare_<backend>.py`'s loop (the same
statements as racebench's strategy, nothing else) after a common start; (b) racebench runs
the stock workload with that strategy, the same client count and operation count. Trials are
interleaved (A B B A) and medians compared, since single timings here vary by up to 2x; the
per-pair ratios' median and quartiles are printed too (benchmarks/pairs.py). Target:
racebench >= 0.95x the bare loop.

    python benchmarks/overhead.py [--backend sqlite --backend postgres ...] [--clients 4]
        [--operations 20000] [--trials 5]
    python benchmarks/overhead.py --memory 1000000   # parent memory for 1M recorded ops
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import resource
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pairs import pairwise
from racebench.config.scenario import expand
from racebench.engine.trials import Execution, ExecutionOptions, execute, make_store


def _scenario(backend: str, strategy: str, clients: int, operations: int, url: str | None) -> dict:
    store = {"backend": backend} | ({"url": url} if url else {})
    return {
        "name": f"overhead-{backend}",
        "workload": {"type": "stock", "initial": operations * 2},
        "store": store,
        "guard": {"strategy": strategy},
        "clients": clients,
        "operations": operations,
    }


def bare_throughput(backend: str, clients: int, operations: int, url: str | None) -> float:
    """Operations per second of N processes running the bare driver loop."""
    bare = importlib.import_module(f"benchmarks.bare_{backend}")
    [spec] = expand(_scenario(backend, bare.STRATEGY, clients, operations, url), "overhead")
    namespace = f"racebench_{secrets.token_hex(4)}"
    store = make_store(spec, namespace)
    store.check_reachable()  # imports the driver before the fork, as racebench does
    store.setup(spec.scenario.workload.plan(), clients)
    try:
        ctx = mp.get_context("fork")
        go = ctx.Event()
        per_client = operations // clients

        def client() -> None:
            go.wait()
            bare.bare_loop(store.path if backend == "sqlite" else store.url, namespace, per_client)

        procs = [ctx.Process(target=client) for _ in range(clients)]
        for p in procs:
            p.start()
        time.sleep(0.2)  # let every process reach the start line
        start = time.perf_counter()
        go.set()
        for p in procs:
            p.join()
        return per_client * clients / (time.perf_counter() - start)
    finally:
        store.teardown()


def racebench_throughput(backend: str, clients: int, operations: int, url: str | None) -> float:
    strategy = importlib.import_module(f"benchmarks.bare_{backend}").STRATEGY
    specs = expand(_scenario(backend, strategy, clients, operations, url), "overhead")
    execution = Execution()
    execute(specs, ExecutionOptions(), execution)
    [run] = execution.runs
    assert run.operations.errors == 0, run.errors_sample
    return run.throughput_ops_s


def measure_overhead(args: argparse.Namespace) -> None:
    print(f"clients={args.clients} operations={args.operations} trials={args.trials}")
    print(f"{'backend':<10} {'strategy':<10} {'bare ops/s':>12} {'racebench':>12} {'ratio':>7}")
    for backend in args.backend:
        url = dict(u.split("=", 1) for u in args.url).get(backend)
        bare, bench = [], []
        for trial in range(args.trials):  # A B B A, so drift hits both sides alike
            sides = ["bare", "racebench"] if trial % 2 == 0 else ["racebench", "bare"]
            for side in sides:
                if side == "bare":
                    bare.append(bare_throughput(backend, args.clients, args.operations, url))
                else:
                    bench.append(racebench_throughput(backend, args.clients, args.operations, url))
        b, r = statistics.median(bare), statistics.median(bench)
        strategy = importlib.import_module(f"benchmarks.bare_{backend}").STRATEGY
        print(f"{backend:<10} {strategy:<10} {b:>12,.0f} {r:>12,.0f} {r / b:>7.2f}")
        trials = f"bare {[round(x) for x in bare]}, racebench {[round(x) for x in bench]}"
        print(f"{'':<21} trials: {trials}")
        print(f"{'':<21} {pairwise(bench, bare)}")


def measure_memory(operations: int) -> None:
    """Parent peak RSS for a run that records `operations` operations."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = _scenario("sqlite", "atomic", 4, operations, None)
    spec["workload"] = {"type": "likes"}
    execution = Execution()
    start = time.perf_counter()
    execute(expand(spec, "memory"), ExecutionOptions(), execution)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    [run] = execution.runs
    print(
        f"recorded {run.operations.attempted:,} operations in {elapsed:.1f}s; "
        f"parent peak RSS {peak:.0f} MB (before the run {before:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backend", action="append", help="backend(s) to measure (default sqlite)")
    parser.add_argument("--url", action="append", default=[], help="BACKEND=URL to override a URL")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--operations", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--memory", type=int, metavar="N", help="measure parent memory for N ops")
    args = parser.parse_args()
    if args.memory:
        measure_memory(args.memory)
        return
    args.backend = args.backend or ["sqlite"]
    measure_overhead(args)


if __name__ == "__main__":
    main()
