"""The HTTP JSON endpoint and `quiver query`, as a curl or shell user meets them."""

import subprocess

import requests

from conftest import quiver_binary, rows_of_sqlite


def test_http_query_matches_sqlite(server, sqlite):
    sql = "SELECT id, key, agent_type FROM tasks WHERE status = 'blocked' ORDER BY id"
    response = requests.post(f"{server.http_url}/v1/query", json={"sql": sql}, timeout=30)
    assert response.status_code == 200
    rows = [(r["id"], r["key"], r["agent_type"]) for r in response.json()]
    assert rows == rows_of_sqlite(sqlite, sql)


def test_http_errors_carry_the_code(server):
    response = requests.post(f"{server.http_url}/v1/query", json={"sql": "SELECT nope FROM tasks"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_readyz(server):
    body = requests.get(f"{server.http_url}/readyz", timeout=30).json()
    assert body["status"] == "ready"


def test_quiver_query_prints_the_count(server, sqlite):
    output = subprocess.run(
        [quiver_binary(), "query", "--addr", f"http://{server.grpc_addr}", "SELECT count(*) FROM tasks"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    count = sqlite.execute("SELECT count(*) FROM tasks").fetchone()[0]
    assert f"| {count}" in output
    assert "(1 row)" in output


def test_quiver_query_reports_errors(server):
    result = subprocess.run(
        [quiver_binary(), "query", "--addr", f"http://{server.grpc_addr}", "SELECT * FROM missing"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "missing" in result.stderr
