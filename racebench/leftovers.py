"""Leftovers of runs that died (tables, Redis keys, znodes, lock and temporary files): find
them for `racebench doctor`, remove them for `racebench clean`.

Each store and lock service lists racebench's objects on its server (`leftovers()`), and
racebench.util.ownership groups them by namespace and tells whose they are. Removal goes through
the same code that tears a run down, one namespace at a time, so it touches nothing but
racebench's own namespaced objects. A namespace whose owner still runs is never removed; one
whose owner cannot be checked (another host, an older racebench) only with `any_owner`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from racebench.doctor import targets
from racebench.errors import RacebenchError
from racebench.locks.base import LockService
from racebench.stores.base import Store
from racebench.util.ownership import Leftover, Owner, group_by_namespace, temporary_leftovers
from racebench.util.redact import redact_text


@dataclass
class Survey:
    """What was found, how to remove each item, and the servers that could not be searched."""

    found: list[tuple[Leftover, Callable[[], None]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def leftovers(self) -> list[Leftover]:
        return [leftover for leftover, _ in self.found]


def _remover(target: Store | LockService, namespace: str) -> Callable[[], None]:
    """Tear down `namespace` with a copy of `target` (same class, same server)."""
    # A fresh instance per namespace: teardown code knows only its own namespace, so removal
    # reuses it unchanged instead of a second, riskier "delete by pattern" path.
    if isinstance(target, Store):
        store = type(target)(target.url, namespace)
        return store.remove_namespace
    lock = type(target)(target.config, namespace, target.store_url)
    return lock.teardown


def _remove_path(path: Path) -> Callable[[], None]:
    def remove() -> None:
        # A symlink is unlinked, never followed: rmtree through it would delete its target.
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    return remove


def survey(
    scenarios: list[Path],
    directories: list[Path],
    skip: frozenset[tuple[str, str, str]] = frozenset(),
) -> Survey:
    """Find leftovers on the servers the scenarios use (or the default ones), in the system's
    temporary directory, and half-written result or history files in `directories`.

    `skip` holds (kind, name, redacted URL) of servers already known to be unreachable.
    """
    result = Survey()
    for kind, name, url, target in targets(scenarios):
        if target is None or (kind, name, redact_text(url)) in skip:
            continue  # embedded stores live in temporary files: found among the files below
        try:
            names = target.leftovers()
        except RacebenchError as error:
            result.problems.append(str(error))
            continue
        except Exception as error:  # a driver failure we did not foresee: still one line
            result.problems.append(f"{name}: {type(error).__name__}: {error}".splitlines()[0])
            continue
        where = redact_text(url)
        for leftover in group_by_namespace(kind, name, where, names):
            result.found.append((leftover, _remover(target, leftover.namespace)))
    for leftover in temporary_leftovers(directories):
        result.found.append((leftover, _remove_path(Path(leftover.namespace))))
    return result


@dataclass
class Cleaning:
    """What `clean` removed, what it left (and why), and what failed."""

    removed: list[Leftover] = field(default_factory=list)
    kept: list[Leftover] = field(default_factory=list)
    failed: list[tuple[Leftover, str]] = field(default_factory=list)


def clean(found: Survey, any_owner: bool) -> Cleaning:
    """Remove the leftovers of dead runs (and, with `any_owner`, of unknown owners)."""
    outcome = Cleaning()
    for leftover, remove in found.found:
        # A live run's objects are in use; an unknown owner's may be (another host's run).
        if leftover.owner is Owner.ALIVE or (leftover.owner is Owner.UNKNOWN and not any_owner):
            outcome.kept.append(leftover)
            continue
        try:
            remove()
        except (RacebenchError, OSError) as error:
            outcome.failed.append((leftover, redact_text(str(error)).splitlines()[0]))
            continue
        except Exception as error:  # a driver failure we did not foresee: still one line
            message = f"{type(error).__name__}: {error}"
            outcome.failed.append((leftover, redact_text(message).splitlines()[0]))
            continue
        outcome.removed.append(leftover)
    return outcome


def describe(leftover: Leftover) -> str:
    """One line: where, what, whose; e.g. 'redis store redis://...: racebench_p42h..._..
    (3 objects), run pid 42 is gone'."""
    if leftover.owner is Owner.ALIVE:
        whose = f"run pid {leftover.pid} still going"
    elif leftover.owner is Owner.DEAD:
        whose = f"run pid {leftover.pid} is gone"
    else:
        whose = "owner unknown: made on another host or by an older racebench"
    if leftover.kind == "file":
        return f"temporary: {leftover.namespace} ({whose})"
    count = len(leftover.objects)
    return (
        f"{leftover.name} {leftover.kind} at {leftover.where}: {leftover.namespace} "
        f"({count} object{'s' * (count != 1)}: {', '.join(leftover.objects[:4])}"
        f"{', ...' if count > 4 else ''}; {whose})"
    )
