"""A database user without the privileges racebench needs: exit 3, one line naming it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.conftest import run_cli


@pytest.fixture
def postgres_user_without_create(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL login that may connect but not CREATE in schema public."""
    import psycopg

    user = f"racebench_test_nocreate_{secrets.token_hex(3)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {user} LOGIN")
        admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {user}")
    rest = postgres_url.split("@", 1)[1]
    try:
        yield f"postgresql://{user}@{rest}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {user}")


@pytest.fixture
def mysql_user_with_select_only(mysql_url: str) -> Iterator[str]:
    """A MariaDB login with SELECT on the test database and nothing else."""
    from racebench.stores.mysql import open_connection

    user = f"rb_test_ro_{secrets.token_hex(3)}"
    admin = open_connection(mysql_url)
    database = mysql_url.rsplit("/", 1)[1]
    with admin.cursor() as cur:
        for host in ("%", "localhost"):
            cur.execute(f"CREATE USER '{user}'@'{host}'")
            cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'{host}'")
    rest = mysql_url.split("@", 1)[1]
    try:
        yield f"mysql://{user}@{rest}"
    finally:
        with admin.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER '{user}'@'{host}'")
        admin.close()


@pytest.mark.parametrize(
    ("backend", "fixture", "names"),
    [
        ("postgres", "postgres_user_without_create", "lacks the CREATE privilege on schema public"),
        ("mysql", "mysql_user_with_select_only", "CREATE command denied to user"),
    ],
)
def test_missing_privilege_is_a_backend_problem_in_one_line(
    backend: str, fixture: str, names: str, request, write_scenario
) -> None:
    url = request.getfixturevalue(fixture)
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "store": {"backend": backend, "url": url},
            "guard": {"strategy": "atomic"},
            "clients": 2,
            "operations": 10,
        }
    )
    ran = run_cli("run", str(path), "-q", "-o", str(path.with_suffix(".json")))
    assert ran.returncode == 3, ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert line.startswith(f"racebench: {backend}: ") and names in line, line
    assert "internal error" not in line

    doctor = run_cli("doctor", str(path), "--dir", str(path.parent))
    assert doctor.returncode == 3, doctor.stdout + doctor.stderr
    assert any(names in line for line in doctor.stderr.splitlines()), doctor.stderr
