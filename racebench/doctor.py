"""`racebench doctor`: can every server a scenario needs be reached, and which version is it?

Each store and lock service is asked the same question a run asks first (`check_reachable`);
a SQL store also creates and drops a probe table, as a run would (a user without CREATE or
DROP fails here, naming the privilege). The answer is the version, or exactly what is wrong
(refused, authentication failed, database missing, privilege missing). Leftovers of runs that
died are found by racebench.leftovers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from racebench.errors import RacebenchError
from racebench.locks.base import LockService
from racebench.stores.base import Store
from racebench.util.ownership import new_namespace
from racebench.util.redact import redact_text

if TYPE_CHECKING:
    from racebench.engine.cluster import ClusterSession


@dataclass(frozen=True)
class ServerCheck:
    """One store or lock service: where it is, and its version or what is wrong."""

    kind: str  # "store" or "lock"
    name: str  # backend or lock service
    url: str  # redacted
    ok: bool
    detail: str
    where: str = "here"  # or the address of the Dask worker that checked it


def _namespace() -> str:
    # A fresh namespace per target, as a run would have: the probe table of
    # check_can_create can never be another run's table.
    return new_namespace()


# (kind, name, url, what to check); None: an embedded store on a temporary file, no server.
Target = tuple[str, str, str, Store | LockService | None]
EMBEDDED = "embedded, no server needed"


def _from_scenarios(paths: list[Path]) -> Iterator[Target]:
    from racebench.config.scenario import load
    from racebench.engine.trials import make_lock_service, make_store
    from racebench.plugins.registry import store_class

    for path in paths:
        for spec in load(path):
            backend = spec.scenario.store.backend
            cls = store_class(backend)
            store = make_store(spec, _namespace())
            if cls.default_url is None and spec.scenario.store.url is None:
                yield "store", backend, "", None  # a temporary file, made at setup
            else:
                yield "store", backend, store.url or "", store
            lock = make_lock_service(spec, store.namespace, store)
            if lock is not None:
                yield "lock", lock.service, lock.server_url() or "", lock


def _defaults() -> Iterator[Target]:
    from racebench.config.scenario import lock_config
    from racebench.plugins.registry import lock_class, lock_names, store_class, store_names

    for backend in store_names():
        cls = store_class(backend)
        url = cls.configured_url()
        if url is None:
            yield "store", backend, "", None
            continue
        yield "store", backend, url, cls(url, _namespace())
    for service in lock_names():
        lock = lock_class(service)(lock_config({"service": service}), _namespace(), None)
        yield "lock", service, lock.server_url() or "", lock


def _check(target: Store | LockService | None) -> tuple[bool, str]:
    if target is None:
        return True, EMBEDDED
    try:
        facts = target.check_reachable()
        created = target.check_can_create() if isinstance(target, Store) else None
    except RacebenchError as error:
        return False, str(error)
    except Exception as error:  # a driver failure we did not foresee: still one line
        return False, f"{type(error).__name__}: {error}".splitlines()[0]
    detail = " ".join(v for k, v in facts.items() if k != "server") or facts.get("server", "")
    if created:
        detail += f"; {created}"
    limit_of = getattr(target, "connection_limit", None)
    if limit_of is not None:
        try:
            limit = limit_of()
        except Exception as error:  # the limit is information: never fail doctor for it
            limit = None
            detail += f"; connection limit unknown ({type(error).__name__})"
        if limit is not None:
            detail += f"; {limit[1]} more connections allowed ({limit[0]})"
    return True, detail


def targets(paths: list[Path]) -> Iterator[Target]:
    """Every store and lock service the scenarios need (every matrix cell), once each.

    Without scenarios: the default URL of every registered backend and lock service.
    """
    seen: set[tuple[str, str, str]] = set()
    for kind, name, url, target in _from_scenarios(paths) if paths else _defaults():
        if (kind, name, url) not in seen:
            seen.add((kind, name, url))
            yield kind, name, url, target


def check_servers(paths: list[Path], cluster: ClusterSession | None = None) -> list[ServerCheck]:
    """Check every store and lock service the scenarios need (every matrix cell), once each.

    Without scenarios: the default URL of every registered backend and lock service. With a
    cluster, also from every Dask worker: that is where the clients will connect from.
    """
    checks = []
    for kind, name, url, target in targets(paths):
        ok, detail = _check(target)
        checks.append(ServerCheck(kind, name, redact_text(url), ok, redact_text(detail)))
        if cluster is None or target is None:
            continue
        for where, answer in cluster.run_everywhere(_check, target).items():
            if isinstance(answer, BaseException):
                answer = (False, f"{type(answer).__name__}: {answer}".splitlines()[0])
            ok, detail = answer
            checks.append(ServerCheck(kind, name, redact_text(url), ok, redact_text(detail), where))
    return checks
