"""`racebench doctor` against the real servers, through the console script."""

from __future__ import annotations

from tests.conftest import run_cli


def _scenario(write_scenario, store: dict, lock: dict | None = None) -> str:
    guard = {"strategy": "lock", "lock": lock} if lock else {"strategy": "none"}
    data = {"name": "doctor", "workload": {"type": "stock"}, "store": store, "guard": guard}
    return str(write_scenario(data, f"doctor-{store['backend']}.yaml"))


def test_doctor_prints_versions_of_every_server_a_scenario_needs(
    write_scenario, postgres_url: str, mysql_url: str
) -> None:
    pg = _scenario(write_scenario, {"backend": "postgres", "url": postgres_url})
    my = _scenario(
        write_scenario,
        {"backend": "mysql", "url": mysql_url},
        {"service": "advisory", "url": postgres_url},
    )
    result = run_cli("doctor", pg, my, timeout=60)
    # Exit 1 means leftovers of dead runs on these shared servers (another session's killed
    # run, say): not this test's subject, but then that must be the only complaint.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    if result.returncode == 1:
        assert "leftover(s) of dead runs" in result.stderr, result.stderr
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            line for line in result.stderr.splitlines() if "leftover(s) of dead runs" in line
        ], result.stderr
    assert "PostgreSQL" in result.stdout
    assert "MariaDB" in result.stdout or "mysql" in result.stdout
    assert "advisory" in result.stdout
    assert "UNREACHABLE" not in result.stdout


def test_doctor_says_what_is_wrong_and_exits_3(write_scenario, mysql_url: str) -> None:
    url = mysql_url.replace("://root@", "://root:pw-secret@")
    path = _scenario(write_scenario, {"backend": "mysql", "url": url})
    result = run_cli("doctor", path, timeout=60)
    assert result.returncode == 3
    assert "UNREACHABLE" in result.stdout
    assert "authentication failed" in result.stderr
    assert "pw-secret" not in result.stdout + result.stderr
