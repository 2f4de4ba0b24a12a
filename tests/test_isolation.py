"""`racebench isolation` on the real servers: the matrix, probe by probe, for this machine's
versions (PostgreSQL 15, MariaDB 10.11 with innodb_snapshot_isolation off by default)."""

from __future__ import annotations

import json
import secrets

import pytest

from racebench.isolation import run_isolation
from racebench.isolation.claims import PHENOMENON
from racebench.isolation.probes import PROBES
from racebench.isolation.render import hermitage_differences, render
from tests.conftest import cli_in_process, run_cli

# The cell text of each probe per level: "-" allowed; "abort" / "wait" / "snapshot" prevented
# by a failed transaction, a lock wait, or reading a consistent snapshot.
POSTGRES_15 = {
    #                    RU          RC          RR          SERIALIZABLE
    "G0": ("wait", "wait", "abort", "abort"),
    "G1a": ("snapshot", "snapshot", "snapshot", "snapshot"),
    "G1b": ("snapshot", "snapshot", "snapshot", "snapshot"),
    "G1c": ("snapshot", "snapshot", "snapshot", "abort"),
    "OTV": ("wait", "wait", "abort", "abort"),
    "PMP": ("-", "-", "snapshot", "snapshot"),
    "PMP-write": ("-", "-", "abort", "abort"),
    "P4": ("-", "-", "abort", "abort"),
    "G-single": ("-", "-", "snapshot", "snapshot"),
    "G-single-predicate": ("-", "-", "snapshot", "snapshot"),
    "G-single-write": ("-", "-", "abort", "abort"),
    "G2-item": ("-", "-", "-", "abort"),
    "G2": ("-", "-", "-", "abort"),
    "G2-two-edges": ("-", "-", "-", "abort"),
}
MARIADB_10_11 = {
    #                    RU      RC          RR          RR+snapshot  SERIALIZABLE
    "G0": ("wait", "wait", "wait", "wait", "wait"),
    "G1a": ("-", "snapshot", "snapshot", "snapshot", "wait"),
    "G1b": ("-", "snapshot", "snapshot", "snapshot", "wait"),
    "G1c": ("-", "snapshot", "snapshot", "snapshot", "abort"),
    "OTV": ("-", "wait", "wait", "wait", "wait"),
    "PMP": ("-", "-", "snapshot", "snapshot", "wait"),
    "PMP-write": ("wait", "wait", "-", "abort", "wait"),
    "P4": ("-", "-", "-", "abort", "abort"),
    "G-single": ("-", "-", "snapshot", "snapshot", "wait"),
    "G-single-predicate": ("-", "-", "snapshot", "snapshot", "wait"),
    "G-single-write": ("-", "-", "-", "abort", "abort"),
    "G2-item": ("-", "-", "-", "-", "abort"),
    "G2": ("-", "-", "-", "-", "abort"),
    "G2-two-edges": ("-", "-", "-", "-", "abort"),
}


def _cell_text(matrix, level: str, probe: str) -> str:
    cell = matrix.cells[(level, probe)]
    if cell.status == "allowed":
        return "-"
    assert cell.status == "prevented", f"{level} {probe}: {cell.evidence}"
    if " aborted: " in cell.how:
        return "abort"
    return "wait" if " blocked on " in cell.how else "snapshot"


@pytest.fixture(scope="module")
def postgres_matrix(postgres_url):
    matrix = run_isolation(postgres_url)
    if not matrix.server.version.startswith("15."):
        pytest.skip(f"expectations are for PostgreSQL 15, the server is {matrix.server.version}")
    return matrix


@pytest.fixture(scope="module")
def mariadb_matrix(mysql_url):
    matrix = run_isolation(mysql_url)
    if matrix.server.kind != "mariadb" or not matrix.server.version.startswith("10.11."):
        pytest.skip(f"expectations are for MariaDB 10.11, the server is {matrix.server.version}")
    return matrix


def test_probe_names_match_the_documented_phenomena():
    assert [p.name for p in PROBES] == list(POSTGRES_15)
    assert set(PHENOMENON) == set(POSTGRES_15)
    assert list(POSTGRES_15) == list(MARIADB_10_11)


@pytest.mark.postgres
@pytest.mark.parametrize("probe", list(POSTGRES_15))
def test_postgres_matrix(postgres_matrix, probe):
    levels = [lv.name for lv in postgres_matrix.levels]
    assert levels == ["read uncommitted", "read committed", "repeatable read", "serializable"]
    measured = tuple(_cell_text(postgres_matrix, level, probe) for level in levels)
    assert measured == POSTGRES_15[probe]


@pytest.mark.mysql
@pytest.mark.parametrize("probe", list(MARIADB_10_11))
def test_mariadb_matrix(mariadb_matrix, probe):
    # 10.11.8+ has innodb_snapshot_isolation (OFF by default until 11.6): racebench probes
    # repeatable read with it off and with it on.
    assert mariadb_matrix.server.settings.get("innodb_snapshot_isolation") == "OFF"
    levels = [lv.name for lv in mariadb_matrix.levels]
    assert levels == [
        "read uncommitted",
        "read committed",
        "repeatable read",
        "repeatable read + innodb_snapshot_isolation",
        "serializable",
    ]
    measured = tuple(_cell_text(mariadb_matrix, level, probe) for level in levels)
    assert measured == MARIADB_10_11[probe]


@pytest.mark.postgres
def test_postgres_agrees_with_hermitage_and_its_documentation(postgres_matrix):
    assert hermitage_differences(postgres_matrix) == []
    text = render(postgres_matrix, "text")
    assert "Differences from documentation: none" in text
    assert "Differences from Hermitage's published table: none" in text


@pytest.mark.mysql
def test_mariadb_differences_name_the_weaker_repeatable_read(mariadb_matrix):
    text = render(mariadb_matrix, "text")
    assert (
        "repeatable read: P4 (non-repeatable read) allowed, the documentation says prevented "
        "(WEAKER than claimed)" in text
    )
    assert "repeatable read: G-single-write (non-repeatable read) allowed" in text
    # Hermitage's "—" for MySQL's PMP at RC comes from its read-predicate test; in its
    # write-predicate test the DELETE took T1's committed row, which is serialisable.
    found = {(d.level, d.probe) for d in hermitage_differences(mariadb_matrix)}
    assert found == {("read uncommitted", "PMP-write"), ("read committed", "PMP-write")}


@pytest.mark.postgres
def test_cli_json_and_no_leftover_table(postgres_url):
    import psycopg

    done = run_cli("isolation", postgres_url, "--format", "json", "--level", "serializable")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["server"]["kind"] == "postgresql"
    assert {c["status"] for c in report["cells"]} == {"prevented"}
    write_skew = next(c for c in report["cells"] if c["probe"] == "G2-item")
    assert write_skew["mechanism"] == "abort" and "40001" in write_skew["how"]
    assert write_skew["documented"] == write_skew["hermitage"] == "prevented"
    assert any("commit" in s["sql"] and "error" in s for s in write_skew["steps"])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'racebench\\_iso\\_%'"
        ).fetchall()
    assert left == []


@pytest.mark.mysql
def test_cli_markdown_on_mariadb(mysql_url):
    done = run_cli("isolation", mysql_url, "--format", "markdown", "--level", "repeatable read")
    assert done.returncode == 0, done.stderr
    assert "| P4 | lost update | — |" in done.stdout
    assert "| G-single | read skew | ✓ snapshot |" in done.stdout


def test_cli_unreachable_server_is_one_line_and_exit_3():
    done = run_cli("isolation", "postgresql://postgres@127.0.0.1:1/postgres")
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0
    assert "connection refused" in done.stderr


def test_cli_unknown_target_and_level_are_usage_errors(postgres_url):
    done = cli_in_process("isolation", "oracle")
    assert done.returncode == 2
    assert "'oracle' is not postgres, mysql" in done.stderr
    done = cli_in_process("isolation", postgres_url, "--level", "snapshot")
    assert done.returncode == 2
    assert "unknown level" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.mysql
def test_mysql_user_without_process_privilege_is_told_what_to_grant(mysql_url):
    import pymysql

    from racebench.stores.mysql import connect_kwargs

    admin = pymysql.connect(**connect_kwargs(mysql_url))
    user = f"racebench_iso_np_{secrets.token_hex(3)}"  # a second suite may run beside
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%'")
            cur.execute(f"GRANT ALL ON {admin.db.decode()}.* TO '{user}'@'%'")
        host_and_db = mysql_url.split("@", 1)[1]
        done = run_cli("isolation", f"mysql://{user}@{host_and_db}")
        assert done.returncode == 2
        assert "needs the PROCESS privilege" in done.stderr
        assert done.stderr.strip().count("\n") == 0
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()
