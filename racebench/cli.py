"""The racebench command line: parse, call the library, render, return an exit code."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from racebench import __version__
from racebench.errors import ExitStatus, RacebenchError
from racebench.util.redact import redact_text

if TYPE_CHECKING:  # the CLI imports the model lazily: `racebench --help` stays fast
    from racebench.result_model import RunEntry

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)


class _Context:
    """What the group passes to its commands: only --debug.

    Each command imports what it needs inside its body, so that `racebench --help` and a
    sqlite run import no server driver.
    """

    debug = False


_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}
)


def _fail(error: BaseException, debug: bool) -> int:
    """Print one line for a user error (a traceback only with --debug); return the exit code."""
    if debug:
        stderr.print(redact_text(traceback.format_exc()), markup=False, highlight=False)
    if isinstance(error, RacebenchError):
        message, status = str(error), error.exit_status
    elif isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        # The machine's, not racebench's: a full disk or /dev/shm (multiprocessing's locks,
        # the clients' records), a quota, a read-only file system, no file descriptors left.
        where = f": {error.filename}" if error.filename else ""
        message = f"{error.strerror}{where} (racebench keeps its clients' records and locks "
        message += "in /dev/shm when the system has it, else in the temporary directory)"
        status = ExitStatus.USAGE
    else:
        message, status = f"internal error: {type(error).__name__}: {error}", ExitStatus.USAGE
        if not debug:
            message += " (run with --debug for the traceback)"
    # Exactly one line, whatever a driver's message holds.
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    stderr.print(f"racebench: {redact_text(one_line)}", markup=False, highlight=False)
    return int(status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="racebench")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fire real concurrent clients at real servers, verify the invariants, and table
    throughput, latency and anomalies per concurrency-control strategy.

    Exit codes: 0 all runs completed and every expectation held; 1 an expectation failed,
    a run was inconclusive or a fault did not fire (compare: a regression; doctor: leftovers
    of dead runs); 2 bad usage, scenario or result file; 3 a backend could not be reached or
    refused a privilege; 4 compare could not decide a run's speed; 130 interrupted.
    """
    ctx.obj = _Context()
    ctx.obj.debug = debug


def _load_all(
    paths: tuple[Path, ...], overrides: dict[str, Any]
) -> list[tuple[Path, dict[str, Any], list[Any]]]:
    from racebench.api import load

    # Every file is loaded and validated before any runs: a typo in the third file must not
    # surface after the first file's long run.
    return [load(path, overrides) for path in paths]


@cli.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="Result JSON path (one scenario only); absent or a regular file, checked before the run.",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Where result files go when --output is not given.",
)
@click.option(
    "--history", type=click.Path(path_type=Path), help="Write every operation to this file."
)
@click.option(
    "--history-format",
    type=click.Choice(["json", "jepsen"]),
    default="json",
    show_default=True,
    help="json: one JSON line per operation; jepsen: Jepsen's EDN invoke/ok/fail/info "
    "events, for Elle or Knossos.",
)
@click.option("--clients", type=click.IntRange(min=1), help="Override clients.")
@click.option(
    "--operations", type=click.IntRange(min=1), help="Override the total operation count."
)
@click.option(
    "--duration",
    help="Override the duration (e.g. 10s); without --operations it alone stops the run.",
)
@click.option("--trials", type=click.IntRange(min=1), help="Override trials per run.")
@click.option(
    "--junit",
    type=click.Path(path_type=Path),
    help="Also write JUnit XML here: one testcase per run, failures for UNEXPECTED, "
    "inconclusive and failed expectations.",
)
@click.option(
    "--workers",
    help="Worker processes the clients are spread over (default: one per CPU; `clients`: "
    "one process per client).",
)
@click.option(
    "--rate",
    help="Open loop: start operations at this rate (e.g. 5000/s) whatever the server does; "
    "latency then counts from each operation's intended start.",
)
@click.option(
    "--cluster",
    envvar="RACEBENCH_CLUSTER",
    help="Run the workers on a Dask cluster: tcp://HOST:8786, tls://HOST:8786, or local:N "
    "for a local cluster of N processes (needs racebench[cluster]).",
)
@click.option(
    "--insecure-cluster",
    is_flag=True,
    help="Allow passwords to travel over a plain tcp:// cluster address that is not loopback.",
)
@click.option("--tls-ca-file", help="CA certificate for a tls:// cluster.")
@click.option("--tls-cert", help="Client certificate for a tls:// cluster.")
@click.option("--tls-key", help="Client key for a tls:// cluster.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.pass_obj
def run(
    obj: _Context,
    scenarios: tuple[Path, ...],
    output: Path | None,
    results_dir: Path,
    history: Path | None,
    history_format: str,
    clients: int | None,
    operations: int | None,
    duration: str | None,
    trials: int | None,
    junit: Path | None,
    workers: str | None,
    rate: str | None,
    cluster: str | None,
    insecure_cluster: bool,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    quiet: bool,
) -> None:
    """Run scenario files and print the results table.

    The trials of a matrix's runs interleave (run 1 trial 1, run 2 trial 1, ...). Live
    progress on a terminal; one plain line per finished trial when output is piped (CI
    logs). With $GITHUB_STEP_SUMMARY set, a markdown report is appended to that file.
    """
    from racebench.api import overrides_of, run_paths
    from racebench.engine.cluster import ClusterOptions
    from racebench.output.render import anomaly_example_lines, progress_display, results_table

    try:
        if output is not None and len(scenarios) > 1:
            raise RacebenchError(
                "--output takes one scenario; omit it to write one file per scenario"
            )
        loaded = _load_all(
            scenarios, overrides_of(clients, operations, duration, trials, workers, rate)
        )
        _check_run_outputs(output, results_dir, history)
        # A live bar only when both streams are a terminal: in a CI log, plain lines.
        live = stderr.is_terminal and sys.stdout.isatty()
        with progress_display(stderr, not quiet, live=live) as progress:
            outcomes = run_paths(
                loaded,
                output=output,
                results_dir=results_dir,
                history=history,
                history_format=history_format,
                progress=progress,
                clusters=ClusterOptions(cluster, insecure_cluster, tls_ca_file, tls_cert, tls_key),
            )
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    if any(o.interrupted for o in outcomes):
        # Stopped by a signal: the partial result is written; the process only reports and
        # exits now, so a late Ctrl-C must not kill it before it says exit 130.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    runs = [r.summary for o in outcomes for r in o.runs]
    if runs:
        stdout.print(results_table(runs, width=stdout.width))
        for line in anomaly_example_lines(runs):
            stdout.print(f"  e.g. {line}", markup=False, highlight=False)
    names = {str(path): specs[0].scenario.name for path, _, specs in loaded}
    _write_ci_outputs(outcomes, names, junit)
    for outcome in outcomes:
        stderr.print(
            f"result: {outcome.result_path}" + (" (partial)" if outcome.interrupted else ""),
            markup=False,
            highlight=False,
        )
    for warning in _warmup_warnings(loaded, runs):
        stderr.print(f"warning: {warning}", markup=False, highlight=False)
    for r in runs:
        for failure in r.expectation_failures:
            stderr.print(f"expectation failed: {r.label}: {failure}", markup=False, highlight=False)
    # The exit code comes last, after every output is written: a CI job that fails on it
    # still has the result file, the JUnit XML and the summary that say why.
    if any(o.interrupted for o in outcomes):
        sys.exit(ExitStatus.INTERRUPTED)
    sys.exit(ExitStatus.OK if all(r.passed for r in runs) else ExitStatus.EXPECTATION_FAILED)


def _append_step_summary(markdown: str) -> None:
    """Append to $GITHUB_STEP_SUMMARY when GitHub Actions set it (a no-op elsewhere)."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(markdown)


def _write_ci_outputs(outcomes: list[Any], names: dict[str, str], junit: Path | None) -> None:
    """JUnit XML (--junit) and the GitHub step summary of a finished `run`; `names` maps
    each scenario file to its scenario name (the testcases' classname)."""
    from racebench.output.junit import runs_junit
    from racebench.output.report import render_report
    from racebench.output.results import write_text_atomically

    if junit is not None:
        files = [(names[o.source], [r.summary for r in o.runs]) for o in outcomes]
        write_text_atomically(junit, runs_junit(files))
        stderr.print(f"junit: {junit}", markup=False, highlight=False)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        written = [o.result_path for o in outcomes if o.result_path is not None]
        if written:
            _append_step_summary(render_report(written, "markdown"))


def _warmup_warnings(loaded: list[Any], runs: list[RunEntry]) -> list[str]:
    """Runs that ended inside their warmup: nothing was measured, so 0 ops/s means nothing.

    (A run with a duration is refused at validation when warmup >= duration; a run bounded
    by operations only shows how long it took at the end.)
    """
    warmups = {spec.label: spec.scenario.warmup for _, _, specs in loaded for spec in specs}
    return [
        f"{r.label}: the run took {r.duration_s:g}s, within its warmup of "
        f"{warmups[r.label]:g}s: no operation was measured (lower warmup or add operations)"
        for r in runs
        if warmups.get(r.label, 0) and r.duration_s <= warmups[r.label]
    ]


def _check_run_outputs(output: Path | None, results_dir: Path, history: Path | None) -> None:
    """Every path a run writes, checked before anything runs: a run is not lost at the end."""
    from racebench.output.results import check_output_dir, check_output_file

    if output is not None:
        check_output_file(output, "--output")
    else:
        check_output_dir(results_dir, "--results-dir")
    if history is not None:
        check_output_file(history, "--history")


@cli.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
def validate(obj: _Context, scenarios: tuple[Path, ...]) -> None:
    """Check scenario files without running them; print the runs each expands into."""
    try:
        loaded = _load_all(scenarios, {})
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    for path, _, specs in loaded:
        stdout.print(f"{path}: ok, {len(specs)} run(s)", markup=False, highlight=False)
        for spec in specs:
            stdout.print(f"  {spec.label}", markup=False, highlight=False)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "markdown"]),
    default="json",
    show_default=True,
    help="json: the JSON Schema of a scenario file (for editors); markdown: the reference.",
)
def schema(fmt: str) -> None:
    """Print the scenario file's JSON Schema, or the scenario reference generated from it."""
    from racebench.config.schema import scenario_json_schema, scenario_reference_markdown

    if fmt == "markdown":
        click.echo(scenario_reference_markdown(), nl=False)
    else:
        click.echo(json.dumps(scenario_json_schema(), indent=2))


@cli.command(name="list")
def list_command() -> None:
    """List workloads (with installed plug-ins and their packages), backends, strategies and
    lock services, and which combine. Exit 2 if a plug-in cannot be loaded."""
    from racebench.plugins.catalog import catalog_tables, plugin_table

    tables, broken = catalog_tables()
    for table in tables:
        stdout.print(table)
    plugins, broken_workloads = plugin_table()
    stdout.print(plugins)
    # Everything that loaded is listed first: one broken plug-in must not hide the others.
    broken += broken_workloads
    for problem in broken:
        stderr.print(f"racebench: {problem}", markup=False, highlight=False)
    if broken:
        sys.exit(ExitStatus.USAGE)


_DIR_OPTION = click.option(
    "--dir",
    "directories",
    multiple=True,
    type=click.Path(path_type=Path),
    default=[Path("results")],
    show_default=True,
    help="Where to look for half-written result and history files (repeatable).",
)


@cli.command()
@click.argument("scenarios", nargs=-1, type=click.Path(path_type=Path))
@_DIR_OPTION
@click.option(
    "--cluster",
    envvar="RACEBENCH_CLUSTER",
    help="Also check from every worker of this Dask cluster (tcp://, tls:// or local:N).",
)
@click.pass_obj
def doctor(
    obj: _Context, scenarios: tuple[Path, ...], directories: tuple[Path, ...], cluster: str | None
) -> None:
    """Check that every server the scenarios need is reachable (without scenarios: the
    default URL of every backend and lock service) and that a SQL user can create and drop
    tables; print versions or what is wrong. Then list what runs that died left behind.

    Exit codes: 0 all ok; 1 leftovers of dead runs found (remove them with `racebench
    clean`); 3 a server unreachable or a privilege missing.
    """
    from rich.table import Table

    from racebench.doctor import check_servers
    from racebench.engine.cluster import ClusterOptions
    from racebench.leftovers import describe, survey
    from racebench.util.ownership import Owner

    clusters = ClusterOptions(cluster)
    try:
        session = clusters.session(cluster) if cluster else None
        checks = check_servers(list(scenarios), session)
        failed = [c for c in checks if not c.ok]
        # Leftovers are searched from here: skip the servers that did not answer here.
        skip = frozenset((c.kind, c.name, c.url) for c in failed if c.where == "here")
        found = survey(list(scenarios), list(directories), skip)
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    finally:
        clusters.close()
    table = Table(header_style="bold")
    for header in ("kind", "name", "url", "from", "status", "version / problem"):
        table.add_column(header)
    for c in checks:
        status = "[green]ok[/]" if c.ok else "[bold red]UNREACHABLE[/]"
        table.add_row(c.kind, c.name, escape(c.url), escape(c.where), status, escape(c.detail))
    stdout.print(table)
    for leftover in found.leftovers:
        click.echo(f"leftover: {describe(leftover)}")
    for c in failed:
        where = "" if c.where == "here" else f" (from {c.where})"
        stderr.print(f"racebench: {c.detail}{where}", markup=False, highlight=False)
    if failed:
        sys.exit(ExitStatus.BACKEND_UNAVAILABLE)
    # The leftovers (listed above) decide the exit code only when every server answered.
    dead = [x for x in found.leftovers if x.owner is Owner.DEAD]
    if dead:
        stderr.print(
            f"racebench: {len(dead)} leftover(s) of dead runs; remove them with `racebench clean`",
            markup=False,
            highlight=False,
        )
    sys.exit(ExitStatus.EXPECTATION_FAILED if dead else ExitStatus.OK)


@cli.command()
@click.argument("scenarios", nargs=-1, type=click.Path(path_type=Path))
@_DIR_OPTION
@click.option(
    "--any-owner",
    is_flag=True,
    help="Also remove objects whose owner cannot be checked (made on another host or by an "
    "older racebench); only when no racebench run is going on anywhere.",
)
@click.pass_obj
def clean(
    obj: _Context, scenarios: tuple[Path, ...], directories: tuple[Path, ...], any_owner: bool
) -> None:
    """Remove what runs that died left behind: tables, Redis keys, znodes, lock files and
    temporary files, on the servers the scenarios use (without scenarios: the default URL of
    every backend and lock service). Only racebench's own namespaced objects, and never
    those of a run that is still going (their namespace names its process).

    Exit codes: 0 done (also when nothing was found); 3 a server unreachable or an object
    that could not be removed.
    """
    from racebench.leftovers import clean as remove_leftovers
    from racebench.leftovers import describe, survey

    try:
        found = survey(list(scenarios), list(directories))
        done = remove_leftovers(found, any_owner)
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    for leftover in done.removed:
        click.echo(f"removed: {describe(leftover)}")
    for leftover in done.kept:
        click.echo(f"kept: {describe(leftover)}")
    for leftover, why in done.failed:
        stderr.print(
            f"racebench: cannot remove {describe(leftover)}: {why}", markup=False, highlight=False
        )
    for problem in found.problems:
        stderr.print(f"racebench: {problem}", markup=False, highlight=False)
    if not (done.removed or done.kept or done.failed):
        click.echo("nothing to clean")
    # Something left on a server is not a finding but a cleanup that did not finish: exit 3,
    # as for a server that could not be reached.
    failed = done.failed or found.problems
    sys.exit(ExitStatus.BACKEND_UNAVAILABLE if failed else ExitStatus.OK)


def _check_report_output(output: Path | None) -> None:
    """Refuse an unusable --output before the (possibly slow) report is built."""
    from racebench.output.results import check_output_file

    if output is not None:
        check_output_file(output, "--output")


def _emit(text: str, output: Path | None) -> None:
    """Write a report to --output atomically, or to stdout as plain text.

    Result files are redacted when written, but a report may be given a hand-made one.
    """
    from racebench.output.results import write_text_atomically

    text = redact_text(text)

    if output is None:
        click.echo(text, nl=False)
    else:
        write_text_atomically(output, text)
        stderr.print(f"written: {output}", markup=False, highlight=False)


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "html", "json"]),
    default="markdown",
    show_default=True,
    help="markdown tables, one self-contained HTML page with plots, or a JSON summary.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here, atomically.")
@click.pass_obj
def report(obj: _Context, results: tuple[Path, ...], fmt: str, output: Path | None) -> None:
    """Report result files: tables per workload (markdown); per scenario, with plots over
    clients and per run over time (html, see docs/reports.md)."""
    from racebench.output.report import render_report

    try:
        _check_report_output(output)
        text = render_report(list(results), fmt)
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    _emit(text, output)


class _Percent(click.ParamType):
    """ "10%" or "10" -> 0.10."""

    name = "percent"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        try:
            fraction = float(str(value).strip().rstrip("%")) / 100
        except ValueError:
            self.fail(f"{value!r} is not a percentage like 10%", param, ctx)
        if fraction < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return fraction


@cli.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--max-slowdown",
    type=_Percent(),
    default="10%",
    show_default=True,
    help="Allowed throughput drop or p99 rise, beyond noise.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "github", "json", "benchmark-json", "junit", "html"]),
    default="text",
    show_default=True,
    help="github: markdown with verdict marks; benchmark-json: github-action-benchmark's "
    "customBiggerIsBetter list; junit: one testcase per run; html: a self-contained page, "
    "before and after per run.",
)
@click.option(
    "--allow-undecided",
    is_flag=True,
    help="Exit 0 instead of 4 when a run's speed cannot be told from noise.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here, atomically.")
@click.pass_obj
def compare(
    obj: _Context,
    baseline: Path,
    candidate: Path,
    max_slowdown: float,
    fmt: str,
    allow_undecided: bool,
    output: Path | None,
) -> None:
    """Compare CANDIDATE with BASELINE by run label; exit 1 on a regression, 4 when a run's
    speed is undecided.

    A regression: slower than --max-slowdown beyond noise (a block-bootstrap interval of the
    ratio of medians, from within-run samples and trials; docs/gate.md), an anomaly in a run
    that was safe in the baseline, or a candidate run that is inconclusive (too few
    acknowledged operations to show the race). With $GITHUB_STEP_SUMMARY set, the github
    format is appended to that file.
    """
    from racebench.output.compare import compare_results
    from racebench.output.compare_render import render_comparison

    try:
        _check_report_output(output)
        comparison = compare_results(baseline, candidate, max_slowdown, allow_undecided)
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    for warning in comparison.warnings:
        stderr.print(f"warning: {redact_text(warning)}", markup=False, highlight=False)
    _emit(render_comparison(comparison, fmt), output)
    # Always the github format there, whatever --format: the step summary renders markdown.
    _append_step_summary(render_comparison(comparison, "github"))
    for label, reason in comparison.regressions:
        line = redact_text(f"regression: {label}: {reason}")
        stderr.print(line, markup=False, highlight=False)
    for label in comparison.undecided:
        stderr.print(
            redact_text(f"undecided: {label}: speed not decided"), markup=False, highlight=False
        )
    sys.exit(comparison.exit_status)


@cli.command()
@click.argument("target")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="A matrix of probes by level, as text or markdown; json adds every probe's steps.",
)
@click.option(
    "--level",
    "levels",
    multiple=True,
    help="Probe only this isolation level (repeatable), e.g. 'repeatable read'.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here, atomically.")
@click.pass_obj
def isolation(
    obj: _Context, target: str, fmt: str, levels: tuple[str, ...], output: Path | None
) -> None:
    """Run Hermitage's isolation tests on TARGET: postgres, mysql, or a postgresql:// or
    mysql:// URL. Prints which anomalies each isolation level prevents, how (abort, lock
    wait, snapshot), the server version, and where that differs from the documentation and
    from Hermitage's published table. Exit 0, or 1 if a probe could not decide.
    """
    from racebench.isolation import render, run_isolation

    try:
        matrix = run_isolation(target, levels=list(levels) or None)
    except RacebenchError as error:
        sys.exit(_fail(error, obj.debug))
    _emit(render(matrix, fmt), output)
    # A matrix with a hole must not pass for a complete one in a script that checks $?.
    undecided = any(c.status == "unknown" for c in matrix.cells.values())
    sys.exit(ExitStatus.EXPECTATION_FAILED if undecided else ExitStatus.OK)


def _interrupt_once() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once for the whole command; later ones are
    ignored. A late Ctrl-C (after a run saved its partial result) must not kill the process
    by the signal (exit -2) instead of ending it with exit 130."""
    from racebench.util.interrupts import was_interrupted

    received = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal received
        received += 1
        if received == 1 and not was_interrupted():
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def run_command(args: list[str]) -> int:
    """Run one racebench command line (without the program name) and return its exit code.

    The console script's whole behaviour short of its signal handling: errors are one line
    on stderr, never a traceback. Tests call it in-process to spare a Python start-up.
    """
    # Read by hand: an error can escape before click has run the group and set the context.
    debug = "--debug" in args
    try:
        status = cli.main(args=args, prog_name="racebench", standalone_mode=False)
    except SystemExit as exit_:  # the commands end with sys.exit(status)
        return ExitStatus.OK if exit_.code is None else int(exit_.code)
    except click.exceptions.Abort:
        # click turns a KeyboardInterrupt raised inside a command into Abort.
        stderr.print("racebench: interrupted")
        return ExitStatus.INTERRUPTED
    except click.ClickException as error:
        # A bad option or a missing argument: exit 2 as documented, whatever click's own code.
        error.show()
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        stderr.print("racebench: interrupted")
        return ExitStatus.INTERRUPTED
    except Exception as error:  # the last line of defence: one line, no traceback
        return _fail(error, debug)
    return status if isinstance(status, int) else ExitStatus.OK


def main() -> None:
    """Console-script entry point: SIGTERM stops a run like Ctrl-C does."""
    _interrupt_once()
    sys.exit(run_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
