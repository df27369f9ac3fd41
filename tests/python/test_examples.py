"""The Python examples in examples/python, run as their users run them: each a
subprocess of its own against a live server (this module's `writable_server`, on
SQLite and on PostgreSQL), its exit status checked and its printed output compared
with the server's database read directly (`store`)."""

import ast
import collections
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import pytest

from auth_setup import PASSWORDS, capture, make_credentials
from conftest import Store, running_server
from quiver_clients import change_log, clock

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "python"
TIMEOUT_S = 90
DEMO_TABLES = {"epics", "features", "tasks", "task_history"}


def run_example(server, name: str, env: dict | None = None) -> str:
    """Runs examples/python/`name` against `server`, with `env` added to the
    environment; its stdout (exit status 0 asserted)."""
    env = {**os.environ, "QUIVER_GRPC": server.grpc_addr, "QUIVER_HTTP": server.http_addr, **(env or {})}
    env.pop("QUIVER_PROTO_DIR", None)
    try:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / name)],
            env=env,
            cwd=EXAMPLES,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"{name} did not finish within {TIMEOUT_S}s:\n{timeout.stdout}\n{timeout.stderr}")
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one(pattern: str, text: str) -> re.Match:
    """The single line of `text` matching `pattern`."""
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    assert len(matches) == 1, f"one line matching {pattern!r} in:\n{text}"
    return matches[0]


def test_every_python_example_is_tested_and_listed():
    examples = {p.name for p in EXAMPLES.glob("*.py")} - {"quiver_stubs.py"}
    tested = {n.removeprefix("test_") + ".py" for n in globals() if n.startswith("test_")} & examples
    assert examples == tested, f"examples without a test: {sorted(examples - tested)}"
    listing = (ROOT / "examples" / "README.md").read_text()
    assert [e for e in sorted(examples) if f"python/{e}" not in listing] == [], "every example is in the README"


def test_query_adbc(writable_server, store):
    out = run_example(writable_server, "query_adbc.py")
    predicate = "status = 'blocked' AND priority <= 2"
    count = int(one(r"^blocked tasks with priority <= 2: (\d+) rows$", out).group(1))
    assert count == store.count("tasks", predicate) > 0

    shown = [
        (int(m.group(1)), m.group(2), int(m.group(3)), m.group(4))
        for m in re.finditer(r"^ +(\d+)  (\S+) +p(\d) +(.+)$", out, re.MULTILINE)
    ]
    assert shown == store.rows(
        f"SELECT id, key, priority, title FROM tasks WHERE {predicate} ORDER BY priority, id LIMIT 3"
    )

    tables = one(rf"^tables in quiver\.{writable_server.schema}: (.+)$", out).group(1).split(", ")
    assert DEMO_TABLES <= set(tables)
    assert not [t for t in tables if t.startswith("_quiver")], "the change log's tables are not listed"

    columns = re.findall(r"^  (\w+): \S+ \(", out, re.MULTILINE)
    assert columns == store.columns("tasks")
    assert "  id: int64 (" in out and "  created_at: timestamp[us] (" in out


def test_dataframes(writable_server, store):
    out = run_example(writable_server, "dataframes.py")
    pandas_part = out.split("\npandas:\n", 1)[1]
    rows = re.finditer(r"^ *(\w+) +(\d+) +\S+$", pandas_part, re.MULTILINE)
    counts = {m.group(1): int(m.group(2)) for m in rows}
    assert counts == dict(store.rows("SELECT status, count(*) FROM tasks GROUP BY status"))
    polars_part = out.split("\npandas:\n", 1)[0]
    for status, n in counts.items():
        assert re.search(rf"│ {status} +┆ {n} +┆", polars_part), f"polars shows {status}: {n}"
    assert out.rstrip().endswith("polars and pandas agree: True")


def test_ingest_pandas(writable_server, writer, store):
    # A table of that name already exists: mode="replace" drops it first.
    writer.cursor().execute("CREATE TABLE example_readings (id BIGINT PRIMARY KEY, old TEXT)")
    writer.cursor().execute("INSERT INTO example_readings (id, old) VALUES (1, 'a'), (2, 'b')")

    out = run_example(writable_server, "ingest_pandas.py")
    mib = float(one(r"^DataFrame: 200000 rows, ([\d.]+) MiB as Arrow$", out).group(1))
    assert mib > 16, "the DataFrame is too big for one message: re-chunking is needed"
    batches, rows = map(int, one(r"^sending (\d+) batches of at most (\d+) rows$", out).groups())
    assert batches > 1 and rows * (mib / 200_000) < 16
    ingested, table = one(r"^ingested (\d+) rows into (\w+)$", out).groups()
    assert (int(ingested), table) == (200_000, "example_readings")
    assert one(r"^read back: (\d+) rows", out).group(1) == ingested

    assert store.columns(table) == ["id", "sensor", "value", "recorded_at", "note"]
    aggregates = f"SELECT count(*), count(DISTINCT id), min(id), max(id), count(DISTINCT sensor) FROM {table}"
    assert store.rows(aggregates) == [(200_000, 200_000, 1, 200_000, 97)]


def test_transaction(writable_server, store):
    for _ in range(2):  # the example starts from an empty table of its own: runs again the same
        out = run_example(writable_server, "transaction.py")
        assert out.splitlines() == [
            "example_ledger at start: []",
            "inserted 2 rows in a transaction; others see: []",
            "after rollback: []",
            "inserted and updated 2 rows in a transaction; others see: []",
            "after commit: [(3, 'alice', -40), (4, 'carol', 40)]",
        ]
        assert store.rows("SELECT id, account, amount FROM example_ledger ORDER BY id") == [
            (3, "alice", -40),
            (4, "carol", 40),
        ]


def test_mutations_grpc(writable_server, store):
    start = clock(store)
    out = run_example(writable_server, "mutations_grpc.py")
    keys = one(r"^epic keys: (.+)$", out).group(1).split()
    assert len(keys) == 3
    insert = one(r"^insert: commit_version=(\d+) ids=\[(.+)\] replayed=False$", out)
    retry = one(r"^retry:  commit_version=(\d+) ids=\[(.+)\] replayed=True$", out)
    assert insert.groups() == retry.groups(), "the retry is answered with the first response"
    ids = [int(i) for i in insert.group(2).split(", ")]
    update = one(r"^update: commit_version=(\d+) affected_rows=2$", out)
    delete = one(r"^delete: commit_version=(\d+) affected_rows=1$", out)
    apply = one(r"^apply:  commit_version=(\d+) affected_rows=3 results=\[1, 1, 1\] feature_id=(\d+)$", out)
    versions = [int(m.group(1)) for m in (insert, update, delete, apply)]
    feature_id = int(apply.group(2))

    # Each call is one commit of the store, in order; the retry made none.
    assert versions == [start + 1, start + 2, start + 3, start + 4] == list(range(start + 1, clock(store) + 1))
    in_keys = ", ".join(f"'{k}'" for k in keys)
    assert store.rows(f"SELECT id, key, status, priority FROM epics WHERE key IN ({in_keys})") == [
        (ids[0], keys[0], "done", 1)
    ]
    assert store.rows(f"SELECT id, epic_id, status FROM features WHERE epic_id = {ids[0]}") == [
        (feature_id, ids[0], "active")
    ]
    log = change_log(store, start, tables=("epics", "features"))
    changes = [(version, table, op, key["id"]) for version, _, table, op, key, _, _ in log]
    i1, i2, i3 = versions[0], versions[1], versions[2]
    assert changes == [
        (i1, "epics", "insert", ids[0]),
        (i1, "epics", "insert", ids[1]),
        (i1, "epics", "insert", ids[2]),
        (i2, "epics", "update", ids[0]),
        (i2, "epics", "update", ids[1]),
        (i3, "epics", "delete", ids[2]),
        (versions[3], "features", "insert", feature_id),
        (versions[3], "epics", "update", ids[0]),
        (versions[3], "epics", "delete", ids[1]),
    ]


def test_subscribe_resume(writable_server, store):
    start = clock(store)
    out = run_example(writable_server, "subscribe_resume.py")
    prefix = one(r"^tasks written: (\S+)-\*;", out).group(1)
    run1, run2 = out.split("\nrun 2 (from_version=", 1)
    checkpoint = int(one(r"^run 1 stopped at checkpoint (\d+)$", run1).group(1))
    assert run2.startswith(f"{checkpoint}):")
    pattern = r"^  v(\d+) (\w+) (\S+) \w+ p\d$"
    first = [(int(v), op, key) for v, op, key in re.findall(pattern, run1, re.MULTILINE)]
    second = [(int(v), op, key) for v, op, key in re.findall(pattern, run2, re.MULTILINE)]
    assert len(first) >= 2 and all(v <= checkpoint for v, _, _ in first)
    assert second and all(v > checkpoint for v, _, _ in second)

    # The truth: the change log's changes of the example's tasks that match the filter
    # (an insert by its new row, an update by either row image).
    def matching(row):
        return row is not None and row["status"] == "blocked" and row["priority"] <= 2

    expected = [
        (version, op, (after or before)["key"])
        for version, _, _, op, _, after, before in change_log(store, start)
        if (after or before)["key"].startswith(prefix + "-") and (matching(after) or matching(before))
    ]
    assert first + second == expected
    assert len(expected) == 5 and store.count("tasks", f"key LIKE '{prefix}-%'") == 7
    assert out.rstrip().endswith("5 changes received, 5 expected: 0 lost, 0 repeated")


def test_flight_live_aggregate(writable_server, store):
    group_by = "SELECT status, count(*) FROM tasks GROUP BY status"
    before = dict(store.rows(group_by))
    out = run_example(writable_server, "flight_live_aggregate.py")
    snapshot = one(r"^snapshot at version (\d+): (\d+) tasks (\{.*\})$", out)
    version = int(snapshot.group(1))
    assert int(snapshot.group(2)) == sum(before.values())
    assert ast.literal_eval(snapshot.group(3)) == before

    # The changes printed are the change log's after the snapshot.
    # (A line is one message of the stream, which may carry several commits.)
    printed = [item for line in re.findall(r"^  (.+)$", out, re.MULTILINE) for item in line.split(", ")]
    ops = collections.Counter((v, op) for v, _, _, op, *_ in change_log(store, version))
    assert printed == [f"v{v} {op} x{n}" for (v, op), n in sorted(ops.items())]
    assert [op for _, op in sorted(ops)] == ["update", "insert", "delete"]

    after = dict(store.rows(group_by))
    assert ast.literal_eval(one(r"^live counts: (\{.*\})$", out).group(1)) == after
    assert after == {
        **before,
        "review": before["review"] - 5,
        "done": before["done"] + 5,
        "blocked": before["blocked"] + 1,
        "todo": before["todo"] - 1,
    }
    assert out.rstrip().endswith("matches SELECT status, count(*): True")


# --- with authentication and TLS ------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A SQLite server with auth on (its auth file configures credentials: auth_setup's
    users alice/bob/carol and a static `write` token) and TLS on both ports (auth_setup's
    test PKI); with its credentials and its truth (`store`)."""
    creds = make_credentials(tmp_path_factory.mktemp("auth"))
    args = [
        "--auth-file", str(creds.main_auth_file),
        "--tls-cert", str(creds.pki.server.cert), "--tls-key", str(creds.pki.server.key),
    ]
    with running_server("sqlite", tmp_path_factory, sqlite_truth=False, extra_args=args) as running:
        store = Store(running)
        try:
            yield types.SimpleNamespace(server=running, creds=creds, store=store)
        finally:
            store.close()


def test_secure_clients(secure):
    server, creds, store = secure.server, secure.creds, secure.store
    addr = f"grpc+tls://{server.grpc_addr}"

    def query_without_credentials():
        tls = {"adbc.flight.sql.client_option.tls_root_certs": creds.pki.ca.cert_pem}
        with flight_sql.connect(addr, db_kwargs=tls, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    # The server does want credentials: TLS alone is refused.
    refused = capture(query_without_credentials)
    assert refused.code == "UNAUTHENTICATED", str(refused)

    epics_before, start = store.count("epics"), clock(store)
    out = run_example(
        server,
        "secure_clients.py",
        env={
            "QUIVER_ADDR": addr,
            "QUIVER_TLS_CA": str(creds.pki.ca.cert),
            "QUIVER_USER": "alice",  # role read
            "QUIVER_PASSWORD": PASSWORDS["alice"],
            "QUIVER_TOKEN": creds.token,  # role write
        },
    )
    assert one(r"^server: (\S+)$", out).group(1) == addr
    by_status = one(r"^adbc, user alice: tasks per status (\{.*\})$", out).group(1)
    assert ast.literal_eval(by_status) == dict(store.rows("SELECT status, count(*) FROM tasks GROUP BY status"))
    assert int(one(r"^adbc, token: (\d+) epics$", out).group(1)) == epics_before > 0
    assert int(one(r"^pyarrow\.flight, user alice: (\d+) features$", out).group(1)) == store.count("features") > 0
    by_priority = one(r"^polars, user alice: tasks per priority (\{.*\})$", out).group(1)
    assert ast.literal_eval(by_priority) == dict(store.rows("SELECT priority, count(*) FROM tasks GROUP BY priority"))

    insert = one(r"^grpcio mutations, token: inserted epic (\S+) id=(\d+) commit_version=(\d+)$", out)
    key, epic_id, version = insert.group(1), int(insert.group(2)), int(insert.group(3))
    assert store.rows(f"SELECT id, key, title, status, priority FROM epics WHERE key = '{key}'") == [
        (epic_id, key, "Written over TLS", "planned", 3)
    ]
    assert store.count("epics") == epics_before + 1
    # The insert is the one commit the example made.
    assert version == start + 1 == clock(store)
    changes = [(v, table, op, row_key["id"]) for v, _, table, op, row_key, _, _ in change_log(store, start, ("epics",))]
    assert changes == [(version, "epics", "insert", epic_id)]
    assert one(r"^read back by alice: (.+)$", out).group(1) == f"[({epic_id},)]"


# --- Rust examples ----------------------------------------------------------------------

RUST_BIN = Path(os.environ.get("QUIVER_EXAMPLES_BIN", ROOT / "target" / "debug"))


def run_rust_example(server, name: str) -> str:
    """Runs the Rust example binary `name` (built by `cargo build -p quiver-examples`)."""
    binary = RUST_BIN / name
    if not binary.exists():
        pytest.fail(f"{binary} not found: run `cargo build -p quiver-examples` first")
    result = subprocess.run(
        [str(binary)],
        env={**os.environ, "QUIVER_GRPC": server.grpc_addr},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_rust_mutations(writable_server, store):
    out = run_rust_example(writable_server, "mutations")
    insert = one(r"^insert: commit_version=(\d+) id=(\d+) replayed=false$", out)
    retry = one(r"^retry:  commit_version=(\d+) id=(\d+) replayed=true$", out)
    assert retry.groups() == insert.groups(), "the retry is answered from the first call"
    epic_id = int(insert.group(2))
    assert store.count("epics", f"id = {epic_id}") == 0, "the example deletes what it inserted"
    versions = [int(insert.group(1))] + [
        int(one(rf"^{op}: commit_version=(\d+) affected_rows=1$", out).group(1))
        for op in ("update", "delete")
    ]
    log = change_log(store, tables=("epics",))
    ops = {version: [(c[2], c[3]) for c in log if c[0] == version] for version in versions}
    assert ops == {
        versions[0]: [("epics", "insert")],
        versions[1]: [("epics", "update")],
        versions[2]: [("epics", "delete")],
    }


def test_rust_flight_sql(writable_server, store):
    out = run_rust_example(writable_server, "flight_sql")
    shown = re.findall(r"^\| (\w+) +\| (\d+) +\|$", out, re.MULTILINE)
    truth = store.rows("SELECT status, count(*) FROM tasks WHERE priority <= 2 GROUP BY status ORDER BY status")
    assert [(status, int(n)) for status, n in shown] == [tuple(r) for r in truth]
    tables = one(r"^tables: (.+)$", out).group(1).split(", ")
    assert DEMO_TABLES <= set(tables)
