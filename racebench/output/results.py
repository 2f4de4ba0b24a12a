"""The versioned result document (racebench.result_model): build, write atomically, read back.

Reading is the one way into the output layer: JSON, then the version (an older document is
upgraded, a newer one refused), then the typed model; any problem is one ResultFileError
line naming the file and the field (exit 2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from racebench import __version__
from racebench.errors import OutputPathError, ResultFileError
from racebench.result_model import (
    SCHEMA,
    ResultDocument,
    ResultVersionError,
    RunEntry,
    TrialRef,
    upgraded,
)
from racebench.util.ownership import temp_file_prefix
from racebench.util.redact import redact


def host_info() -> dict[str, Any]:
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }


def driver_versions(drivers: Iterable[str]) -> dict[str, str]:
    """The installed version of each driver distribution (those not installed are left out)."""
    versions = {}
    for name in drivers:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the racebench checkout, when it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def scenario_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_document(
    *,
    source: str,
    raw: dict[str, Any],
    runs: list[RunEntry],
    started_at: dt.datetime,
    partial: bool,
    servers: dict[str, Any],
    drivers: Iterable[str] = (),
) -> ResultDocument:
    """The whole result document; passwords are redacted from everything in it.

    `drivers` are the distributions the runs' plug-ins declare (their versions are recorded).
    """
    document = {
        "schema": SCHEMA,
        "racebench_version": __version__,
        "git_commit": git_commit(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "partial": partial,
        "host": host_info(),
        "environment": {"drivers": driver_versions(drivers), "servers": servers},
        "scenario": {"source": source, "hash": scenario_hash(raw), "resolved": raw},
        "trial_order": [t.model_dump() for t in trial_order(runs)],
        "runs": [run.model_dump() for run in runs],
    }
    # Lax: the engine's figures may be numpy scalars, which become plain numbers here.
    return ResultDocument.model_validate(redact(document), strict=False)


def trial_order(runs: list[RunEntry]) -> list[TrialRef]:
    """The order the trials ran in (interleaved across runs)."""
    done = sorted((t.sequence, run.label, t.trial) for run in runs for t in run.trials)
    return [TrialRef(label=label, trial=trial) for _, label, trial in done]


# An array of numbers only, as json.dumps(indent=...) spreads it over one line per number.
_NUMBER_ARRAY = re.compile(r"\[\s+(-?[0-9][-+0-9.eE]*(?:,\s+-?[0-9][-+0-9.eE]*)*)\s+\]")


def to_json(document: ResultDocument | dict[str, Any]) -> str:
    """Indented JSON with each array of numbers on one line.

    Timelines and operation samples are thousands of short [t, latency, outcome] rows; one
    line per number would make the file five times longer and no easier to read. (Strings
    cannot match: json.dumps escapes their newlines.)
    """
    if isinstance(document, ResultDocument):
        document = document.to_dict()
    text = json.dumps(document, indent=2, default=str)
    return _NUMBER_ARRAY.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def write_atomically(path: Path, document: ResultDocument) -> None:
    """Write JSON to a temp file beside `path`, fsync it, then rename over `path`."""
    write_text_atomically(path, to_json(document) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Write text to a temp file beside `path`, fsync it, then rename over `path`.

    A reader (or a CI step) never sees a half-written file, even if racebench is killed.
    The file gets the mode a plain `open()` would give (0666 less the umask), not mkstemp's
    0600: results are shared artefacts, and they hold no secret.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_file_prefix(path), dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a quota, a vanished directory
            raise cannot_write(path, exc) from None
        raise


def cannot_write(path: Path, exc: OSError) -> OutputPathError:
    """A write to an output file failed after its path was checked (a full disk, a quota)."""
    return OutputPathError(f"{path}: cannot write: {exc.strerror or exc}")


def new_file_mode() -> int:
    """0666 less the process umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


def file_stem(name: str) -> str:
    """A scenario name made safe as a file name: no path separators, NULs or leading dots."""
    stem = _UNSAFE_NAME_CHARS.sub("_", name).strip("._")[:100]
    return stem or "scenario"


def default_path(results_dir: Path, name: str, started_at: dt.datetime) -> Path:
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    return results_dir / f"{file_stem(name)}-{stamp}.json"


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before anything runs, a file path that racebench could not write atomically.

    The path must be absent or a regular file (never a device, FIFO, directory or symlink,
    which the final rename would replace), and its directory must exist or be creatable,
    and accept new files.
    """
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # the directory check below names the part that is not a directory
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a symbolic link (the atomic rename would replace it)"
            if stat.S_ISLNK(mode)
            else "not a regular file (a device or FIFO)"
        )
        raise OutputPathError(f"{option} {path}: exists and is {kind}")
    check_output_dir(path.parent, option, shown=path)


def check_output_dir(directory: Path, option: str, shown: Path | None = None) -> None:
    """Create `directory` if needed and prove a file can be created in it."""
    shown = shown or directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(
            f"{option} {shown}: {_first_non_directory(directory)} is not a directory"
        ) from None
    except OSError as exc:
        raise OutputPathError(
            f"{option} {shown}: cannot create {directory}: {exc.strerror}"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".racebench-write-check.", dir=directory)
    except OSError as exc:
        raise OutputPathError(
            f"{option} {shown}: cannot write in {directory}: {exc.strerror}"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _first_non_directory(directory: Path) -> Path:
    for candidate in [*reversed(directory.parents), directory]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return directory


def read_result(path: Path) -> ResultDocument:
    """Read a result file of this or an older version into the typed model.

    Raises ResultFileError naming the file and the first wrong field, a version this
    racebench cannot read, or a run label used twice (runs are matched by label, so a
    repeated one would hide one of the runs).
    """
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ResultFileError(f"{path}: not a JSON file: {exc}") from None
    except RecursionError:
        raise ResultFileError(f"{path}: not a result file: JSON nested too deeply") from None
    return result_document(path, document)


def result_document(path: object, document: object) -> ResultDocument:
    """A parsed JSON value as a result document (upgraded from an older version), checked
    field by field; errors as in `read_result`, naming `path`."""
    if not isinstance(document, dict):
        kind = _JSON_KINDS.get(type(document), type(document).__name__)
        raise ResultFileError(f"{path}: not a result file: a JSON {kind}, not an object")
    try:
        model = ResultDocument.model_validate(upgraded(document))
    except ResultVersionError as exc:
        raise ResultFileError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise ResultFileError(f"{path}: {_first_error(exc)}") from None
    except RecursionError:
        raise ResultFileError(f"{path}: not a result file: nested too deeply") from None
    seen: dict[str, int] = {}
    for i, run in enumerate(model.runs):
        if run.label in seen:
            raise ResultFileError(
                f"{path}: runs[{seen[run.label]}] and runs[{i}] share the label {run.label!r}: "
                "runs are matched by label, so this file cannot be reported or compared"
            )
        seen[run.label] = i
    return model


# What json.loads gives, named as JSON names it.
_JSON_KINDS: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _first_error(exc: ValidationError) -> str:
    """`runs[0].latency_ms.p99: missing`, or the field, the problem and what was found."""
    first = exc.errors()[0]
    where = _where(first["loc"])
    if first["type"] == "missing":
        return f"{where}: missing"
    got = repr(first.get("input"))
    got = got if len(got) <= 40 else got[:39] + "…"
    message = first["msg"].removeprefix("Value error, ").lower()
    return f"{where}: {message} (got {got})"


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "document"
