"""Issue 9, input and output: each hostile reproduction of the issue as a regression test.

Passwords never printed or stored, run labels unique, numbers the backend cannot hold refused,
output paths checked before a run, scenario names kept out of paths, YAML bombs and binary
files refused in one line, result files checked by schema, rich markup escaped.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import tracemalloc
from pathlib import Path

import pytest
from rich.console import Console

from racebench.config.scenario import expand, load, load_raw
from racebench.errors import OutputPathError, ResultFileError, ScenarioError
from racebench.output.render import results_table
from racebench.output.results import (
    check_output_dir,
    check_output_file,
    default_path,
    file_stem,
    result_document,
    write_text_atomically,
)
from racebench.result_model import RunEntry
from racebench.util.redact import redact, redact_text
from tests.conftest import REPO, cli_in_process, run_cli

SECRET = "Sekret-4711"
GOLDEN = REPO / "tests" / "golden" / "gc-pause.json"


def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    return lines[0]


# --- 1. passwords -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:5432/db",
        f"postgresql://u:p@{SECRET}@127.0.0.1:5432/db",  # an unencoded @ in the password
        f"redis://:{SECRET}@127.0.0.1:6379/0",
        f"postgresql://u@127.0.0.1:5432/db?password={SECRET}",
        f"postgresql://u@127.0.0.1:5432/db?sslmode=disable&passwd={SECRET}&x=1",
        f"redis://127.0.0.1:6379/0?pass={SECRET}",
        f"redis://127.0.0.1:6379/0?password={SECRET}: connection refused",
        f"host=127.0.0.1 password={SECRET} dbname=postgres",
        f"host=127.0.0.1 password = '{SECRET} with space' dbname=postgres",
        f"Server=db;Password={SECRET};Database=x",
        f"PGPASSWORD={SECRET} psql --password={SECRET}",
        f"connect(host='h', password='{SECRET}', port=5432)",
        f"{{'user': 'u', 'password': '{SECRET}'}}",
        f'{{"url": "host=h password={SECRET}"}}',
    ],
)
def test_every_credential_form_is_masked(text: str) -> None:
    masked = redact_text(text)
    assert SECRET not in masked and "***" in masked
    assert SECRET not in json.dumps(redact({"url": text, "nested": [text]}))


def test_redaction_keeps_the_rest_readable() -> None:
    assert redact_text("postgresql://u@h/db?password=x: connection refused") == (
        "postgresql://u@h/db?password=***: connection refused"
    )
    assert redact_text("passage=3 bypass=4 password_file=/x") == (
        "passage=3 bypass=4 password_file=/x"
    )


def test_password_is_never_printed_or_stored(
    tmp_path: Path, write_scenario, postgres_url: str
) -> None:
    """A run whose store URL carries the password as a query parameter (the test server
    trusts local connections and ignores it), then doctor, report and compare on its result."""
    url = f"{postgres_url}?password={SECRET}"
    path = write_scenario(
        {
            "name": "secret",
            "workload": {"type": "stock", "initial": 100},
            "store": {"backend": "postgres", "url": url},
            "clients": 2,
            "operations": 20,
            "matrix": {"guard.strategy": ["atomic", "none"]},
        }
    )
    result, history = tmp_path / "r.json", tmp_path / "h.jsonl"
    procs = [run_cli("run", str(path), "-o", str(result), "--history", str(history))]
    assert procs[0].returncode == 0, procs[0].stderr
    procs.append(run_cli("doctor", str(path)))
    # 1: leftovers of other (killed) runs on this machine; this test is about the password.
    assert procs[-1].returncode in (0, 1), procs[-1].stderr
    outputs = [result, history, tmp_path / "report.html"]
    procs.append(run_cli("report", str(result), "--format", "html", "-o", str(outputs[-1])))
    procs.append(run_cli("report", str(result), "--format", "json"))
    outputs.append(tmp_path / "compare.md")
    procs.append(
        run_cli(
            "compare",
            str(result),
            str(result),
            "--format",
            "markdown",
            "--allow-undecided",
            "-o",
            str(outputs[-1]),
        )
    )
    for proc in procs:
        assert proc.returncode in ((0, 1) if proc is procs[1] else (0,)), proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    for output in outputs:
        assert SECRET not in output.read_text(), output
    stored = json.loads(result.read_text())["scenario"]["resolved"]["store"]["url"]
    assert stored == f"{postgres_url}?password=***"


def test_reports_of_a_hand_made_result_are_redacted(tmp_path: Path) -> None:
    """Result files racebench writes are redacted already; one edited by hand may not be."""
    document = json.loads(GOLDEN.read_text())
    document["scenario"]["source"] = f"host=db password={SECRET}"
    for run in document["runs"]:
        run["label"] += f"[store.url=redis://:{SECRET}@h/0]"
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(document))
    compare = ("compare", str(path), str(path), "--format", "json", "--allow-undecided")
    for args in (("report", str(path)), compare):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr and "***" in proc.stdout


@pytest.mark.parametrize(
    ("backend", "url"),
    [
        ("postgres", f"host=127.0.0.1 port=1 user=postgres password={SECRET} dbname=postgres"),
        ("postgres", f"postgresql://postgres@127.0.0.1:1/postgres?password={SECRET}"),
        ("redis", f"redis://127.0.0.1:1/0?password={SECRET}"),
    ],
)
def test_password_not_in_error_lines_doctor_or_debug_tracebacks(
    tmp_path: Path, write_scenario, backend: str, url: str
) -> None:
    path = write_scenario(
        {"workload": {"type": "stock"}, "store": {"backend": backend, "url": url}, "clients": 2}
    )
    for args in (
        ("--debug", "run", str(path), "-o", str(tmp_path / "r.json")),
        ("doctor", str(path)),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 3, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        assert "***" in proc.stderr
    assert not (tmp_path / "r.json").exists()


# --- 2. run labels ------------------------------------------------------------------------


def test_every_shipped_scenario_has_unique_labels() -> None:
    for path in sorted((REPO / "scenarios").rglob("*.yaml")):
        labels = [spec.label for spec in load(path)]
        assert len(labels) == len(set(labels)), path


def test_fencing_is_in_the_label() -> None:
    labels = [spec.label for spec in load(REPO / "scenarios" / "postgres-stock.yaml")]
    assert labels[-2:] == ["postgres-stock[guard=lock]", "postgres-stock[guard=lock(fencing=True)]"]


def test_mapping_matrix_values_get_short_label_parts() -> None:
    raw = {
        "name": "m",
        "workload": {"type": "stock"},
        "matrix": {
            "workload": [{"type": "stock", "initial": 10}, {"type": "stock", "initial": 20}],
            "guard": [
                {"strategy": "lock", "lock": {"service": "file_lock", "ttl_ms": 100}},
                {"strategy": "lock", "lock": {"service": "file_lock", "ttl_ms": 200}},
            ],
        },
    }
    labels = [spec.label for spec in expand(raw, "m.yaml")]
    assert labels == [
        "m[workload=stock(initial=10),guard=lock(lock.ttl_ms=100)]",
        "m[workload=stock(initial=10),guard=lock(lock.ttl_ms=200)]",
        "m[workload=stock(initial=20),guard=lock(lock.ttl_ms=100)]",
        "m[workload=stock(initial=20),guard=lock(lock.ttl_ms=200)]",
    ]


def test_runs_that_would_share_a_label_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"runs 1 and 2 would share the label 'x\[clients=2\]'"):
        expand({"name": "x", "workload": {"type": "stock"}, "matrix": {"clients": [2, 2]}}, "s")
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nworkload: {type: stock}\nmatrix: {guard.retries: [1, 1]}\n")
    for command in ("validate", "run"):
        line = _one_line(cli_in_process(command, str(path)))
        assert f"{path}: matrix: runs 1 and 2 would share the label" in line


def test_result_files_with_duplicate_labels_are_refused(tmp_path: Path) -> None:
    """The issue's reproduction: a duplicated label hid an anomaly from compare (exit 0)."""
    document = json.loads(GOLDEN.read_text())
    safe = next(r for r in document["runs"] if r["verdict"] == "safe")
    baseline = dict(document, runs=[safe, dict(safe)])
    broken = dict(safe, anomalies={k: 5 for k in safe["anomalies"]}, verdict="UNEXPECTED")
    candidate = dict(document, runs=[dict(safe), broken])
    base_path, cand_path = tmp_path / "base.json", tmp_path / "cand.json"
    base_path.write_text(json.dumps(baseline))
    cand_path.write_text(json.dumps(candidate))
    proc = cli_in_process("compare", str(base_path), str(cand_path))
    assert proc.returncode == 2
    assert "share the label" in _one_line(proc)
    proc = cli_in_process("report", str(cand_path))
    assert proc.returncode == 2 and str(cand_path) in _one_line(proc)


# --- 3. numbers the backend cannot hold ---------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "limit"),
    [
        ("sqlite", "SQLite INTEGER"),
        ("postgres", "PostgreSQL bigint"),
        ("mysql", "MySQL BIGINT"),
        ("redis", "Redis integer"),
    ],
)
def test_out_of_range_numbers_are_refused_at_validation(backend: str, limit: str) -> None:
    raw = {
        "workload": {"type": "stock", "initial": 99999999999999999999},
        "store": {"backend": backend},
        "guard": {"strategy": "atomic"},
    }
    with pytest.raises(ScenarioError, match=f"workload.initial: .*{limit}.*9223372036854775807"):
        expand({"name": "n", **raw}, "n.yaml")
    raw["workload"] = {"type": "likes", "initial": 2**63 - 10}
    with pytest.raises(ScenarioError, match=f"operations: 1000 operations .*{limit}"):
        expand({"name": "n", **raw}, "n.yaml")


def test_redis_overflow_from_the_issue_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(
        "workload: {type: stock, initial: 99999999999999999999}\nstore: {backend: redis}\n"
        "guard: {strategy: atomic}\noperations: 20\n"
    )
    proc = cli_in_process("run", str(path), "-q", "--results-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "workload.initial" in _one_line(proc) and "Redis" in proc.stderr
    assert not list(tmp_path.glob("*.json"))


# --- 4 and 5. output paths ----------------------------------------------------------------


@pytest.fixture
def odd_paths(tmp_path: Path) -> dict[str, Path]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(afile)
    return {
        "device": Path("/dev/full"),
        "fifo": fifo,
        "symlink": link,
        "directory": tmp_path,
        "under a file": afile / "r.json",
        "in /proc": Path("/proc/r.json"),
    }


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("device", "not a regular file"),
        ("fifo", "not a regular file"),
        ("symlink", "symbolic link"),
        ("directory", "is a directory"),
        ("under a file", "afile is not a directory"),
        ("in /proc", "cannot write in /proc"),
    ],
)
def test_unusable_output_files_are_refused(odd_paths: dict[str, Path], kind: str, problem: str):
    with pytest.raises(OutputPathError, match=problem):
        check_output_file(odd_paths[kind], "--output")


def test_unusable_output_directories_are_refused(odd_paths: dict[str, Path]) -> None:
    with pytest.raises(OutputPathError, match="afile is not a directory"):
        check_output_dir(odd_paths["under a file"], "--results-dir")
    with pytest.raises(OutputPathError, match="--results-dir /proc/x: cannot create"):
        check_output_dir(Path("/proc/x"), "--results-dir")


def test_output_paths_are_checked_before_anything_runs(
    tmp_path: Path, write_scenario, odd_paths: dict[str, Path]
) -> None:
    """A 60 s run refused at once for each bad path; special files are left as they were."""
    path = write_scenario({"workload": {"type": "stock"}, "duration": "60s", "operations": None})
    good = tmp_path / "r.json"
    # Every kind of bad path is covered in-process above; here each option once, end to end.
    cases = [
        ("run", str(path), "-o", "/dev/full"),
        ("run", str(path), "-o", str(odd_paths["symlink"])),
        ("run", str(path), "-o", str(good), "--history", str(odd_paths["fifo"])),
        ("run", str(path), "--results-dir", str(odd_paths["under a file"].parent)),
        ("report", str(GOLDEN), "-o", str(tmp_path)),
        ("compare", str(GOLDEN), str(GOLDEN), "-o", str(odd_paths["fifo"])),
    ]
    for args in cases:
        started = time.monotonic()
        proc = run_cli(*args, "-q" if args[0] == "run" else "--format=json", timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert time.monotonic() - started < 20, args
        assert "--" in _one_line(proc)
    assert not good.exists() and not list(tmp_path.glob("*.json"))
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert stat.S_ISFIFO(odd_paths["fifo"].lstat().st_mode)
    assert odd_paths["symlink"].is_symlink()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_get_the_mode_of_a_plain_file(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        write_text_atomically(tmp_path / "r.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode


# --- 6. scenario names in file names ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"),
    [("../../../tmp/x", "tmp_x"), ("a\0b", "a_b"), ("", "scenario"), ("..", "scenario")],
)
def test_scenario_names_are_sanitised_into_file_names(tmp_path: Path, name: str, stem: str):
    import datetime as dt

    assert file_stem(name) == stem
    target = default_path(tmp_path, name, dt.datetime(2026, 1, 2, 3, 4, 5))
    assert target.parent == tmp_path and target.name == f"{stem}-20260102-030405.json"


def test_a_traversing_name_writes_inside_results_dir(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: '../../../escaped'\nworkload: {type: stock}\noperations: 8\n")
    results = tmp_path / "deep" / "results"
    proc = run_cli("run", str(path), "-q", "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    assert [p.name.split("-")[0] for p in results.iterdir()] == ["escaped"]
    assert [p for p in tmp_path.rglob("*.json") if results not in p.parents] == []


# --- 7 and 11. YAML bombs, binary files, deep nesting -------------------------------------


def _billion_laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_billion_laughs(), "aliases expand to more than"),
        ("a: &a [*a]\n", "aliases expand to more than"),
        ("a: &a '" + "x" * 100_000 + "'\nb: [" + ", ".join(["*a"] * 200) + "]\n", "aliases"),
        ("a: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 100 levels"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nest"),
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 300)), "nested deeper"),
    ],
)
def test_yaml_bombs_are_refused_fast_and_small(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.process_time()  # CPU time: other processes on the machine do not count
    with pytest.raises(ScenarioError, match=problem):
        load_raw(path)
    assert time.process_time() - started < 1.0
    tracemalloc.start()  # a second pass for memory: tracing slows the parser down
    try:
        with pytest.raises(ScenarioError, match=problem):
            load_raw(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_a_matrix_product_too_large_is_refused_at_once() -> None:
    matrix = {"clients": list(range(1, 101)), "race_window_ms": list(range(100))}
    matrix["guard.retries"] = list(range(100))
    started = time.process_time()
    with pytest.raises(ScenarioError, match="matrix: expands to 1,000,000 runs, more than"):
        expand({"name": "m", "workload": {"type": "stock"}, "matrix": matrix}, "m.yaml")
    assert time.process_time() - started < 1.0


def test_billion_laughs_cli_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_billion_laughs())
    assert len(path.read_bytes()) < 600
    proc = run_cli("validate", str(path), timeout=20)
    assert proc.returncode == 2 and str(path) in _one_line(proc)


def test_binary_scenario_is_one_line_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    proc = cli_in_process("validate", str(path))
    assert proc.returncode == 2
    assert _one_line(proc) == f"racebench: {path}: not a UTF-8 text file (byte 0x80 at offset 128)"


# --- 11. result files checked by schema ---------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["runs"][0].update(throughput_ops_s="fast"), "runs[0].throughput_ops_s"),
        (
            lambda d: d["runs"][0]["trials"][0].update(throughput_ops_s="1.5"),
            "runs[0].trials[0].throughput_ops_s",
        ),
        (lambda d: d["runs"][0].update(clients=True), "runs[0].clients"),
        (lambda d: d["runs"][1]["latency_ms"].pop("p99"), "runs[1].latency_ms.p99: missing"),
        (lambda d: d["runs"][0].update(anomalies=[1]), "runs[0].anomalies"),
        (lambda d: d["runs"][0]["faults"].append({"kind": 1}), "runs[0].faults[1].kind"),
        (lambda d: d.update(host="x"), "host"),
    ],
)
def test_wrong_typed_result_fields_name_the_field(mutate, field: str) -> None:
    document = json.loads(GOLDEN.read_text())
    mutate(document)
    with pytest.raises(ResultFileError, match=f"^r.json: {re.escape(field)}"):
        result_document("r.json", document)


def test_wrong_typed_result_is_one_line_for_report_and_compare(tmp_path: Path) -> None:
    document = json.loads(GOLDEN.read_text())
    document["runs"][0]["throughput_ops_s"] = "fast"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    for args in (("report", str(bad)), ("compare", str(GOLDEN), str(bad))):
        proc = cli_in_process(*args)
        assert proc.returncode == 2
        assert "runs[0].throughput_ops_s: input should be a valid number" in _one_line(proc)


# --- 13. rich markup ----------------------------------------------------------------------


def test_emulated_faults_and_user_strings_survive_rich_markup() -> None:
    run = json.loads(GOLDEN.read_text())["runs"][0]
    run["faults"][0]["note"] = "emulated: a lock service cannot lose state"
    run["workload"] = "[bold]stock"
    console = Console(record=True, width=300)
    entry = RunEntry.model_validate(run)
    console.print(results_table([entry], title="[red]title"))
    # Without a title of its own, the table's title names the workload and backend.
    console.print(results_table([entry]))
    text = console.export_text()
    assert "[emulated]" in text and "[bold]stock" in text and "[red]title" in text


# --- 14. small ones -----------------------------------------------------------------------


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("workload: {type: stock}\nclients: 2\noperations: 10\nclients: 3\n")
    with pytest.raises(ScenarioError, match=r"duplicate key 'clients' \(lines 2 and 4\)"):
        load_raw(path)
    merged = tmp_path / "merge.yaml"
    merged.write_text("base: &b {clients: 2}\nover:\n  <<: *b\n  clients: 3\n")
    assert load_raw(merged)["over"] == {"clients": 3}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"clients": True}, "clients"),
        ({"operations": "100"}, "operations"),
        ({"race_window_ms": False}, "race_window_ms"),
        ({"duration": float("inf")}, "duration"),
        ({"duration": [1]}, "duration"),
        ({"guard": {"retries": 1.5}}, "guard.retries"),
        ({"workload": {"type": "stock", "initial": True}}, "workload.initial"),
    ],
)
def test_strict_types(extra: dict, field: str) -> None:
    with pytest.raises(ScenarioError, match=f": {field}: "):
        expand({"name": "s", "workload": {"type": "stock"}, **extra}, "s.yaml")


def test_warmup_is_refused_or_warned(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="warmup: 5s must be shorter than duration"):
        expand({"name": "w", "workload": {"type": "stock"}, "duration": 2, "warmup": 5}, "w")
    path = tmp_path / "w.yaml"
    path.write_text("workload: {type: stock}\nclients: 2\noperations: 10\nwarmup: 60s\n")
    proc = run_cli("run", str(path), "-q", "-o", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert "within its warmup of 60s: no operation was measured" in proc.stderr


def test_bad_lock_url_is_reported_under_guard_lock_url(tmp_path: Path, write_scenario) -> None:
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "store": {"backend": "sqlite"},
            "guard": {
                "strategy": "lock",
                "lock": {"service": "redis_lock", "url": "redis://127.0.0.1:1/0"},
            },
            "clients": 2,
        }
    )
    proc = run_cli("run", str(path), "-o", str(tmp_path / "r.json"))  # progress on: no -q
    assert proc.returncode == 3
    line = _one_line(proc)
    assert line.startswith(f"racebench: {path}: guard.lock.url: redis_lock: cannot reach Redis")
    assert not proc.stderr.startswith("\n")


def test_file_lock_refusal_lists_the_faults_it_supports() -> None:
    raw = {
        "name": "f",
        "workload": {"type": "stock"},
        "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
        "faults": [{"kind": "kill_session"}],
    }
    with pytest.raises(ScenarioError, match=r"\(faults it supports: kill_client, pause_client\)"):
        expand(raw, "f.yaml")


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs filled to the last byte (root only: CI runs as root)."""
    import contextlib
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        # ENOSPC ends the loop: the disk is full.
        with open(mount / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_result_that_meets_a_full_disk_is_one_line_and_leaves_nothing(
    full_disk: Path, write_scenario
) -> None:
    # The path passes the check before the run (a directory that exists, a file that does
    # not); the disk is full when the result is written after it.
    path = write_scenario({"workload": {"type": "likes"}, "operations": 200})
    target = full_disk / "result.json"
    proc = run_cli("run", str(path), "-o", str(target), "-q", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc) == f"racebench: {target}: cannot write: No space left on device"
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_history_that_meets_a_full_disk_is_one_line_and_not_half_kept(
    full_disk: Path, write_scenario, tmp_path: Path
) -> None:
    path = write_scenario({"workload": {"type": "likes"}, "operations": 5000})
    history = full_disk / "history.jsonl"
    proc = run_cli(
        "run", str(path), "-o", str(tmp_path / "r.json"), "--history", str(history), "-q",
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc) == f"racebench: {history}: cannot write: No space left on device"
    # Half a history would pass for the run's whole story: none is kept.
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_full_dev_shm_is_one_line_not_an_internal_error(write_scenario, tmp_path: Path) -> None:
    # In a mount namespace of its own, so the servers' /dev/shm is not touched: a 64 KiB
    # /dev/shm filled to the last byte, where multiprocessing's locks and the records live.
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    path = write_scenario({"workload": {"type": "likes"}, "operations": 200})
    racebench = Path(sys.executable).with_name("racebench")
    script = (
        "set -e; mount -t tmpfs -o size=64k tmpfs /dev/shm; "
        "(cat /dev/zero > /dev/shm/filler) 2>/dev/null || true; "
        f"exec {racebench} run {path} -o {tmp_path / 'r.json'} -q"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc).startswith("racebench: No space left on device (racebench keeps")
    assert not (tmp_path / "r.json").exists()
