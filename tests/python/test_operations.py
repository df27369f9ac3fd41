"""Operating a server, end to end, from real clients (ADBC, pyarrow.flight, grpcio,
requests) against real servers on SQLite and PostgreSQL:

- the query history and the slow-query log as system tables (`system.queries`,
  `system.slow_queries`), compared with what the same queries return from the store
  read directly (sqlite3 / psycopg);
- the other system tables (`transactions`, `pool`, `subscriptions`, `tables`,
  `settings`) against the store's own catalog, `/readyz` and the server's flags;
- GetTables listing the system tables, EXPLAIN and EXPLAIN ANALYZE;
- the admin operations, as the `quiver.v1.Admin` gRPC service
  (proto/quiver/v1/admin.proto, compiled here) and as Flight actions
  `quiver.admin.<op>`: maintenance checked against the store (statistics, free pages,
  the write-ahead log, index files), backups opened with sqlite3, refusals with their
  exact codes;
- principal scoping with authentication on (read, write and admin users);
- live configuration: SIGHUP and ReloadConfig re-reading the --config file.

Servers are module-scoped: one writable server per backend without auth (history,
system tables, maintenance, backups), one per backend with auth and a slow-query
threshold of 0, and one per backend started with --config for the reload tests."""

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import grpc
import pyarrow.flight as flight
import pytest
import requests

from auth_setup import (
    begin_transaction,
    call_options,
    capture,
    end_transaction,
    flight_update,
    hash_password,
)
from conftest import ROOT, Store, canonical, running_server
from quiver_clients import Mutations, Subscriptions, arrow_of, clock, some_feature, task

SYSTEM_TABLES = {"queries", "slow_queries", "transactions", "pool", "subscriptions", "tables", "settings"}
QUERY_COLUMNS = [
    "query_id",
    "started_at",
    "duration_ms",
    "status",
    "error",
    "rows",
    "bytes",
    "surface",
    "principal",
    "client_address",
    "sql",
    "store_sql",
    "trace_id",
]
LIVE_SETTINGS = {"log", "slow_query_ms", "query_history", "slow_query_history"}
HIGH_THRESHOLD_MS = 600_000
POOL_MAX_SIZE = 6
ANONYMOUS = "anonymous:anonymous"
MARKERS = itertools.count(1)
ADBC_TIMEOUTS = {
    "adbc.flight.sql.rpc.timeout_seconds.query": "60",
    "adbc.flight.sql.rpc.timeout_seconds.fetch": "60",
    "adbc.flight.sql.rpc.timeout_seconds.update": "60",
}

USERS = {
    "alice": ("read", "alice-reads-the-history-1"),
    "wanda": ("write", "wanda-writes-rows-2"),
    "bob": ("admin", "bob-administers-3"),
}


def marker(what: str) -> str:
    """A string no other query of the session contains."""
    return f"op_{what}_{os.getpid()}_{next(MARKERS)}"


def log_tail(server, lines: int = 30) -> str:
    return "server log (tail):\n" + "".join(server.log[-lines:])


def wait_for(condition, what: str, timeout: float = 15, interval: float = 0.1):
    """Polls `condition()` until it returns a truthy value, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the Admin service stubs ----------------------------------------------------------


@pytest.fixture(scope="session")
def admin_pb(quiver_protos):
    """(admin_pb2, admin_pb2_grpc) generated from proto/quiver/v1/admin.proto."""
    return quiver_protos["admin_pb2"], quiver_protos["admin_pb2_grpc"]


class AdminClient:
    """The Admin gRPC service and the Flight admin actions, with one caller's
    credentials (`authorization` header, or none)."""

    def __init__(self, admin_pb, channel, flight_client, authorization: str | None = None):
        self.pb, pb_grpc = admin_pb
        self.stub = pb_grpc.AdminStub(channel)
        self.flight = flight_client
        self.metadata = [("authorization", authorization)] if authorization else None
        self.options = call_options(authorization)

    def call(self, method: str, **fields):
        """Calls Admin/`method`; (operation, result parsed from JSON)."""
        request_type = {
            "Backup": self.pb.BackupRequest,
            "SetLogFilter": self.pb.SetLogFilterRequest,
            "SetSlowQueryThreshold": self.pb.SetSlowQueryThresholdRequest,
        }.get(method, self.pb.AdminRequest)
        for attempt in itertools.count():
            try:
                answer = getattr(self.stub, method)(request_type(**fields), metadata=self.metadata, timeout=120)
                break
            except grpc.RpcError as error:
                # The binary may be rebuilt without the service yet: wait for it.
                if error.code() != grpc.StatusCode.UNIMPLEMENTED or attempt >= 2:
                    raise
                time.sleep(5)
        assert answer.duration_ms >= 0, answer
        return answer.operation, json.loads(answer.result_json)

    def code(self, method: str, **fields) -> str:
        """The gRPC code name Admin/`method` answers."""
        return capture(lambda: self.call(method, **fields)).code

    def action(self, operation: str, body: dict | bytes | None = None) -> dict:
        """Runs the Flight action `quiver.admin.<operation>`: its one JSON result."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        results = list(self.flight.do_action(flight.Action(f"quiver.admin.{operation}", body or b""), self.options))
        assert len(results) == 1, f"one result of quiver.admin.{operation}, got {len(results)}"
        answer = json.loads(results[0].body.to_pybytes())
        assert answer["operation"] == operation, answer
        assert isinstance(answer["duration_ms"], (int, float)) and answer["duration_ms"] >= 0, answer
        return answer["result"]

    def action_code(self, operation: str, body: dict | bytes | None = None) -> str:
        return flight_code(capture(lambda: self.action(operation, body)))


def flight_code(outcome) -> str:
    """pyarrow names ALREADY_EXISTS and FAILED_PRECONDITION as generic errors: read
    the code from the message."""
    if outcome.code.startswith("PYARROW:") or outcome.code == "INVALID_ARGUMENT":
        text = outcome.message.lower()
        for phrase, code in [
            ("already exists error", "ALREADY_EXISTS"),
            ("precondition failed", "FAILED_PRECONDITION"),
            ("invalid argument error", "INVALID_ARGUMENT"),
            ("permission denied", "PERMISSION_DENIED"),
        ]:
            if phrase in text:
                return code
    return outcome.code


# --- clients --------------------------------------------------------------------------


@contextlib.contextmanager
def adbc_connection(uri: str, db_kwargs: dict | None = None, autocommit: bool = True):
    conn = flight_sql.connect(uri, db_kwargs={**ADBC_TIMEOUTS, **(db_kwargs or {})}, autocommit=autocommit)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def records(conn, sql: str) -> list[dict]:
    return arrow_of(conn, sql).to_pylist()


def history_of(conn, sql: str, table: str = "system.queries") -> list[dict]:
    """The rows of `table` whose query text is exactly `sql`."""
    return [r for r in records(conn, f"SELECT * FROM {table} ORDER BY query_id") if r["sql"] == sql]


def finished_history_of(conn, sql: str, table: str = "system.queries", timeout: float = 15) -> list[dict]:
    """The rows of `table` for `sql` once none is RUNNING (and at least one exists)."""
    return wait_for(
        lambda: (rows := history_of(conn, sql, table)) and all(r["status"] != "RUNNING" for r in rows) and rows,
        f"{sql!r} finished in {table}",
        timeout,
    )


def settings_of(conn) -> dict:
    return {r["name"]: r["value"] for r in records(conn, "SELECT name, value FROM system.settings")}


def store_rows(store: Store, sql: str) -> list[tuple]:
    return store.rows(sql)


def adbc_code(error) -> str:
    """The gRPC code name of an ADBC Flight SQL error, from its message (the driver
    reports the gRPC status as `(InvalidArgument; Prepare)`)."""
    match = re.search(r"\((\w+); \w+\)", str(error))
    if not match:
        return f"ADBC: {error}"
    return re.sub(r"(?<!^)([A-Z])", r"_\1", match.group(1)).upper()


# --- the servers ----------------------------------------------------------------------


class Ops:
    """A writable server without authentication (anyone is admin): its store, an
    ADBC connection, the Admin service, Mutations and Subscriptions clients."""

    def __init__(self, server, backup_dir: Path, admin_pb, quiver_protos):
        self.server = server
        self.kind = server.kind
        self.backup_dir = backup_dir
        self.store = Store(server)
        self.conn = flight_sql.connect(server.grpc_uri, db_kwargs=dict(ADBC_TIMEOUTS), autocommit=True)
        self.channel = grpc.insecure_channel(server.grpc_addr)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.flight = flight.FlightClient(server.grpc_uri)
        self.admin = AdminClient(admin_pb, self.channel, self.flight)
        self.mutations = Mutations(
            quiver_protos["mutations_pb2"], quiver_protos["mutations_pb2_grpc"].MutationsStub(self.channel)
        )
        self.subscriptions = Subscriptions(
            quiver_protos["subscriptions_pb2"],
            quiver_protos["subscriptions_pb2_grpc"].SubscriptionsStub(self.channel),
        )

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()
        self.flight.close()
        self.channel.close()
        self.store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ops(request, tmp_path_factory, admin_pb, quiver_protos):
    backup_dir = tmp_path_factory.mktemp("backups")
    args = [
        "--backup-dir",
        str(backup_dir),
        "--slow-query-ms",
        str(HIGH_THRESHOLD_MS),
        "--pool-max-size",
        str(POOL_MAX_SIZE),
    ]
    with running_server(request.param, tmp_path_factory, sqlite_truth=False, extra_args=args) as server:
        context = Ops(server, backup_dir, admin_pb, quiver_protos)
        try:
            yield context
        finally:
            context.close()


class AuthOps:
    """A server with authentication on (alice: read, wanda: write, bob: admin), a
    slow-query threshold of 0 and no backup_dir."""

    def __init__(self, server, admin_pb):
        self.server = server
        self.kind = server.kind
        self.store = Store(server)
        self.flight = flight.FlightClient(server.grpc_uri)
        self.channel = grpc.insecure_channel(server.grpc_addr)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.admin_pb = admin_pb
        self._bearers: dict[str, str] = {}

    def bearer(self, user: str) -> str:
        if user not in self._bearers:
            name, value = self.flight.authenticate_basic_token(user, USERS[user][1])
            assert name.decode().lower() == "authorization", name
            self._bearers[user] = value.decode()
        return self._bearers[user]

    def admin(self, user: str | None) -> AdminClient:
        return AdminClient(self.admin_pb, self.channel, self.flight, self.bearer(user) if user else None)

    def connect(self, user: str, autocommit: bool = True):
        return adbc_connection(
            self.server.grpc_uri, {"username": user, "password": USERS[user][1]}, autocommit=autocommit
        )

    def close(self):
        self.flight.close()
        self.channel.close()
        self.store.close()


@pytest.fixture(scope="module")
def auth_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ops_auth") / "auth.toml"
    text = "token_ttl_s = 3600\n"
    for name, (role, password) in USERS.items():
        text += f'\n[[users]]\nname = "{name}"\nrole = "{role}"\npassword_hash = "{hash_password(password)}"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def auth_ops(request, tmp_path_factory, auth_file, admin_pb):
    args = ["--auth", "on", "--auth-file", str(auth_file), "--slow-query-ms", "0"]
    with running_server(request.param, tmp_path_factory, sqlite_truth=False, extra_args=args) as server:
        context = AuthOps(server, admin_pb)
        try:
            yield context
        finally:
            context.close()


# --- (a) the query history ------------------------------------------------------------


def history_queries() -> list[str]:
    """Distinct queries, each with a unique comment, valid on the store as written."""
    return [
        f"SELECT id, key, status FROM tasks WHERE status = 'blocked' AND priority <= 2 /* {marker('a')} */",
        f"SELECT * FROM epics /* {marker('a')} */",
        f"SELECT count(*) AS n FROM features /* {marker('a')} */",
        f"SELECT feature_id, count(*) AS n FROM tasks WHERE priority = 1 GROUP BY feature_id /* {marker('a')} */",
        f"SELECT id FROM task_history WHERE id < 0 /* {marker('a')} */",
    ]


def test_history_lists_each_query_with_the_rows_the_store_returns(ops):
    queries = history_queries()
    tables = ["tasks", "epics", "features", "tasks", "task_history"]
    returned = [arrow_of(ops.conn, sql).num_rows for sql in queries]
    truth = [len(store_rows(ops.store, sql)) for sql in queries]
    assert returned == truth, "the queries themselves answer what the store answers"
    assert truth[-1] == 0 and max(truth) > 1, "the queries cover empty and multi-row results"

    ids = []
    for sql, rows, table in zip(queries, truth, tables):
        [record] = finished_history_of(ops.conn, sql)
        assert record["status"] == "OK", record
        assert record["error"] is None, record
        assert record["rows"] == rows, f"rows of {sql!r}: {record}"
        assert record["surface"] == "flight", record
        assert record["principal"] == ANONYMOUS, record
        assert record["client_address"] == "127.0.0.1", record
        assert record["duration_ms"] is not None and record["duration_ms"] >= 0, record
        if not any(name.startswith("OTEL_") for name in os.environ):
            assert record["trace_id"] is None, "no tracing configured"
        assert rows == 0 or record["bytes"] > 0, record
        assert re.search(rf'\bFROM\s+("?\w+"?\.)?"?{table}"?', record["store_sql"]), (
            f"store_sql names {table}: {record['store_sql']!r}"
        )
        assert str(record["started_at"].tzinfo) == "UTC", record["started_at"]
        ids.append(record["query_id"])
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"ids grow in the order run: {ids}"

    # The same rows under the catalog-qualified name, and every column documented.
    qualified = arrow_of(ops.conn, "SELECT * FROM quiver.system.queries")
    assert qualified.schema.names == QUERY_COLUMNS
    assert str(qualified.schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    by_sql = {r["sql"]: r for r in qualified.to_pylist()}
    for sql, query_id in zip(queries, ids):
        assert by_sql[sql]["query_id"] == query_id


def test_prepared_queries_are_in_the_history(ops):
    sql = f"SELECT id, key FROM tasks WHERE priority = ? AND status = ? /* {marker('prepared')} */"
    cur = ops.conn.cursor()
    try:
        counts = []
        for priority, status in [(1, "todo"), (2, "blocked")]:
            cur.execute(sql, (priority, status))
            counts.append(cur.fetch_arrow_table().num_rows)
    finally:
        cur.close()
    truth = [
        ops.store.count("tasks", f"priority = {priority} AND status = '{status}'")
        for priority, status in [(1, "todo"), (2, "blocked")]
    ]
    assert counts == truth and all(truth)
    executions = finished_history_of(ops.conn, sql)
    assert [(r["status"], r["rows"], r["surface"]) for r in executions] == [("OK", n, "flight") for n in truth]


def test_a_query_its_client_abandons_is_cancelled(ops):
    from auth_setup import statement_query

    sql = f"SELECT t.id, h.id FROM tasks t CROSS JOIN task_history h /* {marker('abandoned')} */"
    options = call_options(None, timeout=60)
    info = ops.flight.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)), options)
    reader = ops.flight.do_get(info.endpoints[0].ticket, options)
    first = reader.read_chunk()
    assert first.data.num_rows > 0
    reader.cancel()
    [record] = finished_history_of(ops.conn, sql)
    assert record["status"] == "CANCELLED", record
    total = ops.store.count("tasks") * ops.store.count("task_history")
    assert 0 < record["rows"] < total, (record["rows"], total)


def test_the_running_query_lists_itself_as_running(ops):
    sql = f"SELECT query_id, status, duration_ms, sql FROM system.queries /* {marker('running')} */"
    rows = records(ops.conn, sql)
    mine = [r for r in rows if r["sql"] == sql]
    assert len(mine) == 1 and mine[0]["status"] == "RUNNING" and mine[0]["duration_ms"] is None, mine
    [done] = finished_history_of(ops.conn, sql)
    assert done["status"] == "OK" and done["rows"] == len(rows), done


def test_a_failed_flight_query_is_in_the_history_with_its_code(ops):
    table = marker("missing_table")
    sql = f"SELECT * FROM {table}"
    with pytest.raises(Exception) as raised:
        arrow_of(ops.conn, sql)
    assert adbc_code(raised.value) == "INVALID_ARGUMENT", raised.value
    # The truth: the store has no such table either.
    if ops.kind == "sqlite":
        assert not store_rows(ops.store, f"SELECT name FROM sqlite_master WHERE name = '{table}'")
    else:
        assert not store_rows(ops.store, f"SELECT table_name FROM information_schema.tables WHERE table_name = '{table}'")
    try:
        # A query is recorded before its client hears how it ended: a short wait.
        [record] = finished_history_of(ops.conn, sql, "system.queries", timeout=3)
    except AssertionError:
        pytest.fail(
            f"the failed Flight SQL query {sql!r} (INVALID_ARGUMENT at GetFlightInfo) is not in "
            f"system.queries: {records(ops.conn, 'SELECT query_id, status, surface, sql FROM system.queries')[-5:]}"
        )
    assert record["status"] == "INVALID_ARGUMENT", record
    assert table in (record["error"] or ""), record
    assert record["rows"] == 0 and record["surface"] == "flight", record


def test_http_queries_are_in_the_history_with_surface_http(ops):
    sql = f"SELECT id, title FROM features WHERE epic_id = 1 /* {marker('http')} */"
    response = requests.post(f"{ops.server.http_url}/v1/query", json={"sql": sql}, timeout=60)
    assert response.status_code == 200, response.text
    truth = store_rows(ops.store, sql)
    assert len(response.json()) == len(truth) > 0
    [record] = finished_history_of(ops.conn, sql)
    assert (record["status"], record["surface"], record["rows"], record["principal"]) == (
        "OK",
        "http",
        len(truth),
        ANONYMOUS,
    ), record
    assert "features" in record["store_sql"], record

    missing = marker("http_missing")
    bad = f"SELECT * FROM {missing}"
    response = requests.post(f"{ops.server.http_url}/v1/query", json={"sql": bad}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_ARGUMENT", response.text
    [record] = finished_history_of(ops.conn, bad)
    assert (record["status"], record["surface"], record["rows"]) == ("INVALID_ARGUMENT", "http", 0), record
    assert missing in record["error"], record


# --- (b) the slow-query log -----------------------------------------------------------


def test_a_high_threshold_keeps_no_query(ops):
    for sql in history_queries()[:3]:
        arrow_of(ops.conn, sql)
        finished_history_of(ops.conn, sql)
    settings = settings_of(ops.conn)
    assert settings["slow_query_ms"] == str(HIGH_THRESHOLD_MS), settings
    assert records(ops.conn, "SELECT * FROM system.slow_queries") == []


def test_set_slow_query_threshold_changes_it_live(ops):
    try:
        operation, result = ops.admin.call("SetSlowQueryThreshold", milliseconds=0)
        assert (operation, result) == ("set_slow_query_ms", {"slow_query_ms": 0})
        assert settings_of(ops.conn)["slow_query_ms"] == "0"
        _, config = ops.admin.call("GetConfig")
        assert {c["name"]: c["value"] for c in config}["slow_query_ms"] == "0"

        sql = f"SELECT count(*) FROM tasks WHERE priority = 2 /* {marker('slow')} */"
        arrow_of(ops.conn, sql)
        [slow] = finished_history_of(ops.conn, sql, "system.slow_queries")
        [kept] = finished_history_of(ops.conn, sql)
        assert slow == kept, "the slow log keeps the same record as the history"
        assert slow["status"] == "OK" and slow["rows"] == 1

        # Back over the Flight action: a following query is not slow.
        assert ops.admin.action("set_slow_query_ms", {"ms": HIGH_THRESHOLD_MS}) == {"slow_query_ms": HIGH_THRESHOLD_MS}
        assert settings_of(ops.conn)["slow_query_ms"] == str(HIGH_THRESHOLD_MS)
        fast = f"SELECT count(*) FROM tasks WHERE priority = 3 /* {marker('fast')} */"
        arrow_of(ops.conn, fast)
        finished_history_of(ops.conn, fast)
        assert history_of(ops.conn, fast, "system.slow_queries") == []
        assert ops.admin.action_code("set_slow_query_ms", {"ms": -1}) == "INVALID_ARGUMENT"
        assert settings_of(ops.conn)["slow_query_ms"] == str(HIGH_THRESHOLD_MS)
    finally:
        ops.admin.call("SetSlowQueryThreshold", milliseconds=HIGH_THRESHOLD_MS)


def test_a_zero_threshold_keeps_every_query(auth_ops):
    with auth_ops.connect("bob") as conn:
        tags = [marker("zero") for _ in range(3)]
        mine = [f"SELECT count(*) FROM epics /* {tag} */" for tag in tags]
        for sql in mine:
            arrow_of(conn, sql)
            finished_history_of(conn, sql)
        history = [r for r in records(conn, "SELECT * FROM system.queries") if r["status"] != "RUNNING"]
        slow = {r["query_id"]: r for r in records(conn, "SELECT * FROM system.slow_queries")}
        assert {r["sql"] for r in history} >= set(mine)
        missing = [r for r in history if r["query_id"] not in slow]
        assert not missing, f"finished queries not in system.slow_queries: {missing}"
        for record in history:
            assert slow[record["query_id"]] == record
        assert any(line for line in auth_ops.server.log if "slow query" in line and tags[0] in line), (
            "each slow query is logged\n" + log_tail(auth_ops.server)
        )


# --- (c) principals -------------------------------------------------------------------


def test_a_reader_sees_only_its_own_queries_and_an_admin_sees_all(auth_ops):
    alice_sql = f"SELECT count(*) FROM tasks /* {marker('alice')} */"
    bob_sql = f"SELECT count(*) FROM epics /* {marker('bob')} */"
    alice_http = f"SELECT id FROM epics /* {marker('alice_http')} */"
    with auth_ops.connect("alice") as alice, auth_ops.connect("bob") as bob:
        arrow_of(alice, alice_sql)
        arrow_of(bob, bob_sql)
        response = requests.post(
            f"{auth_ops.server.http_url}/v1/query",
            json={"sql": alice_http},
            auth=("alice", USERS["alice"][1]),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        [by_alice] = finished_history_of(alice, alice_sql)
        assert by_alice["principal"] == "user:alice"
        [over_http] = finished_history_of(alice, alice_http)
        assert (over_http["principal"], over_http["surface"]) == ("user:alice", "http")

        for table in ("system.queries", "system.slow_queries"):
            seen_by_alice = records(alice, f"SELECT * FROM {table}")
            principals = {r["principal"] for r in seen_by_alice}
            assert principals == {"user:alice"}, f"alice sees in {table}: {principals}"
            assert bob_sql not in {r["sql"] for r in seen_by_alice}

            seen_by_bob = records(bob, f"SELECT * FROM {table}")
            by_principal = {}
            for r in seen_by_bob:
                by_principal.setdefault(r["principal"], []).append(r)
            assert {"user:alice", "user:bob"} <= by_principal.keys(), by_principal.keys()
            assert alice_sql in {r["sql"] for r in by_principal["user:alice"]}
            assert bob_sql in {r["sql"] for r in by_principal["user:bob"]}
            # Alice's rows as she sees them are her rows as the admin sees them.
            finished = lambda rows: {r["query_id"]: r for r in rows if r["status"] != "RUNNING"}  # noqa: E731
            alice_view = finished(seen_by_alice)
            admin_view = finished(by_principal["user:alice"])
            common = alice_view.keys() & admin_view.keys()
            assert alice_sql in {alice_view[i]["sql"] for i in common}
            for query_id in common:
                assert alice_view[query_id] == admin_view[query_id]


def test_a_reader_sees_no_transactions_and_an_admin_sees_them(auth_ops):
    with auth_ops.connect("bob") as bob:
        before = len(records(bob, "SELECT * FROM system.transactions"))
        # ADBC's DB-API connection begins a transaction when autocommit is off.
        with auth_ops.connect("alice", autocommit=False) as open_one, auth_ops.connect("alice") as alice:
            arrow_of(open_one, "SELECT 1")
            wait_for(
                lambda: len(records(bob, "SELECT * FROM system.transactions")) == before + 1,
                "alice's transaction listed for the admin",
            )
            assert records(alice, "SELECT * FROM system.transactions") == []


def test_only_an_admin_runs_admin_operations(auth_ops):
    with auth_ops.connect("bob") as bob:
        before = settings_of(bob)
    for user in ("alice", "wanda"):
        client = auth_ops.admin(user)
        for method, fields in [
            ("Analyze", {}),
            ("GetConfig", {}),
            ("SetSlowQueryThreshold", {"milliseconds": 99_999}),
            ("SetLogFilter", {"filter": "trace"}),
            ("Backup", {"file": "refused.db"}),
            ("ReloadConfig", {}),
            ("PruneChangeLog", {}),
        ]:
            assert client.code(method, **fields) == "PERMISSION_DENIED", (user, method)
        for operation, body in [("analyze", None), ("set_slow_query_ms", {"ms": 99_999}), ("config", None)]:
            assert client.action_code(operation, body) == "PERMISSION_DENIED", (user, operation)
    anonymous = auth_ops.admin(None)
    assert anonymous.code("Analyze") == "UNAUTHENTICATED"
    assert anonymous.action_code("analyze") == "UNAUTHENTICATED"

    with auth_ops.connect("bob") as bob:
        assert settings_of(bob) == before, "refused calls change nothing"
        assert before["slow_query_ms"] == "0" and before["log"] != "trace"

        admin = auth_ops.admin("bob")
        assert admin.call("Analyze")[0] == "analyze"
        assert admin.action("analyze")["statements"] == "ANALYZE"
        _, config = admin.call("GetConfig")
        assert {c["name"]: c["value"] for c in config} == settings_of(bob)
        assert admin.action("config") == config
        # No backup_dir on this server.
        assert admin.code("Backup", file="nowhere.db") == "FAILED_PRECONDITION"
        assert admin.action_code("backup", {"file": "nowhere.db"}) == "FAILED_PRECONDITION"


# --- (d) GetTables, (e) EXPLAIN ----------------------------------------------------------


def test_get_tables_lists_the_system_tables(ops):
    objects = ops.conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    [catalog] = [c for c in objects if c["catalog_name"] == "quiver"]
    schemas = {s["db_schema_name"]: s["db_schema_tables"] or [] for s in catalog["catalog_db_schemas"]}
    assert "system" in schemas, schemas.keys()
    system = {t["table_name"]: t["table_type"] for t in schemas["system"]}
    assert system == {name: "SYSTEM TABLE" for name in SYSTEM_TABLES}
    user_tables = {t["table_name"]: t["table_type"] for t in schemas[ops.server.schema]}
    assert {"epics", "features", "tasks", "task_history"} <= user_tables.keys()
    assert set(user_tables.values()) <= {"TABLE", "VIEW"}, user_tables

    schema = ops.conn.adbc_get_table_schema("queries", db_schema_filter="system")
    assert schema.names == QUERY_COLUMNS

    # Filtered by type, only they come back; GetTableTypes names the type.
    filtered = ops.conn.adbc_get_objects(depth="tables", table_types_filter=["SYSTEM TABLE"]).read_all().to_pylist()
    names = {
        (s["db_schema_name"], t["table_name"], t["table_type"])
        for c in filtered
        for s in c["catalog_db_schemas"] or []
        for t in s["db_schema_tables"] or []
    }
    assert names == {("system", name, "SYSTEM TABLE") for name in SYSTEM_TABLES}
    assert "SYSTEM TABLE" in ops.conn.adbc_get_table_types()


@pytest.mark.parametrize("analyze", [False, True], ids=["explain", "explain_analyze"])
def test_explain_shows_the_plan_and_the_store_sql(ops, analyze):
    sql = "SELECT id, status FROM tasks WHERE priority = 1"
    table = arrow_of(ops.conn, ("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + sql)
    assert table.schema.names == ["plan_type", "plan"]
    plans = dict(zip(table.column("plan_type").to_pylist(), table.column("plan").to_pylist()))
    if analyze:
        assert list(plans) == ["Plan with Metrics"], plans
        physical = plans["Plan with Metrics"]
        assert "metrics=" in physical
    else:
        assert {"logical_plan", "physical_plan"} <= plans.keys(), plans
        assert "tasks" in plans["logical_plan"]
        physical = plans["physical_plan"]
    match = re.search(r"StoreScanExec: table=tasks, sql=(SELECT .*?FROM .*?)(?:, params=|\n|$)", physical)
    assert match, physical
    store_sql = match.group(1)
    assert f'"{ops.server.schema}"."tasks"' in store_sql and "priority" in store_sql, store_sql


# --- (f) maintenance and backups ------------------------------------------------------


def test_backup_is_a_checked_copy_of_the_database(ops):
    if ops.kind != "sqlite":
        pytest.skip("backups are SQLite's (PostgreSQL refuses: see the next test)")
    feature = some_feature(ops.store)
    keys = [marker("bk") for _ in range(3)]
    inserted = ops.mutations.insert("tasks", [task(key, feature, priority=2) for key in keys])
    assert len(inserted.generated_keys) == 3
    ops.mutations.update("tasks", ops.mutations.predicate(f"key = '{keys[0]}'"), {"status": "done"})
    ops.mutations.delete("tasks", ops.mutations.predicate(f"key = '{keys[1]}'"))

    name = marker("backup") + ".db"
    operation, result = ops.admin.call("Backup", file=name)
    assert operation == "backup"
    path = ops.backup_dir / name
    assert Path(result["path"]) == path and path.exists(), result
    assert result["integrity_check"] == "ok" and result["bytes"] == path.stat().st_size, result

    copy = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA page_count").fetchone()[0] == result["pages"]
        columns = "id, feature_id, key, title, status, priority, agent_type, estimate_hours"
        backed_up = [tuple(canonical(v) for v in row) for row in copy.execute(f"SELECT {columns} FROM tasks ORDER BY id")]
    finally:
        copy.close()
    served = arrow_of(ops.conn, f"SELECT {columns} FROM tasks ORDER BY id").to_pylist()
    served = [tuple(canonical(r[c.strip()]) for c in columns.split(",")) for r in served]
    assert backed_up == served
    by_key = {row[2]: row for row in backed_up}
    assert by_key[keys[0]][4] == "done" and keys[1] not in by_key and keys[2] in by_key

    # The Flight action writes another backup; the existing name is refused untouched.
    second = ops.admin.action("backup", {"file": name + ".2"})
    assert second["integrity_check"] == "ok" and Path(second["path"]).exists()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ops.admin.code("Backup", file=name) == "ALREADY_EXISTS"
    assert ops.admin.action_code("backup", {"file": name}) == "ALREADY_EXISTS"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


BAD_NAMES = ["../escape.db", ".hidden.db", "sub/dir.db", "", "space name.db", "/tmp/abs.db", "..", "a\\b.db"]


def test_bad_backup_names_are_refused(ops):
    before = sorted(p.name for p in ops.backup_dir.iterdir())
    parent = sorted(p.name for p in ops.backup_dir.parent.iterdir())
    for name in BAD_NAMES:
        assert ops.admin.code("Backup", file=name) == "INVALID_ARGUMENT", name
        assert ops.admin.action_code("backup", {"file": name}) == "INVALID_ARGUMENT", name
    assert ops.admin.action_code("backup", {}) == "INVALID_ARGUMENT"
    assert ops.admin.action_code("backup", b"not json") == "INVALID_ARGUMENT"
    assert sorted(p.name for p in ops.backup_dir.iterdir()) == before
    assert sorted(p.name for p in ops.backup_dir.parent.iterdir()) == parent


def test_postgres_refuses_backup_and_checkpoint(ops):
    if ops.kind != "postgres":
        pytest.skip("PostgreSQL only")
    before = list(ops.backup_dir.iterdir())
    assert ops.admin.code("Backup", file="pg.db") == "FAILED_PRECONDITION"
    assert ops.admin.action_code("backup", {"file": "pg.db"}) == "FAILED_PRECONDITION"
    assert ops.admin.code("Checkpoint") == "FAILED_PRECONDITION"
    assert ops.admin.action_code("checkpoint") == "FAILED_PRECONDITION"
    assert list(ops.backup_dir.iterdir()) == before


def sqlite_pragma(store: Store, pragma: str):
    return store.scalar(f"PRAGMA {pragma}")


def test_analyze_refreshes_the_statistics(ops):
    if ops.kind == "sqlite":
        path = ops.server.db_path
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("ANALYZE")  # makes sqlite_stat1 exist, then empty it
            conn.execute("DELETE FROM sqlite_stat1")
            conn.commit()
        finally:
            conn.close()
        assert ops.store.count("sqlite_stat1") == 0
        assert ops.admin.call("Analyze") == ("analyze", {"statements": "ANALYZE"})
        stats = ops.store.rows("SELECT tbl FROM sqlite_stat1")
        assert {"tasks", "features", "epics", "task_history"} <= {r[0] for r in stats}, stats
    else:
        count = "SELECT analyze_count FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = 'tasks'"
        before = ops.store.scalar(count)
        assert ops.admin.call("Analyze")[0] == "analyze"
        after = ops.store.scalar(count)
        assert after == before + 1, (before, after)
        assert ops.admin.action("analyze") == {"statements": "ANALYZE"}
        assert ops.store.scalar(count) == before + 2


def test_vacuum_reclaims_space(ops):
    if ops.kind == "sqlite":
        # Free pages: delete many task_history rows through Mutations.
        ops.mutations.delete("task_history", ops.mutations.predicate("id > 3000"))
        ops.admin.call("Checkpoint")
        assert sqlite_pragma(ops.store, "freelist_count") > 0, "the deletes freed pages"
        assert ops.admin.call("Vacuum") == ("vacuum", {"statements": "VACUUM"})
        assert sqlite_pragma(ops.store, "freelist_count") == 0
        assert ops.store.rows("PRAGMA integrity_check") == [("ok",)]
    else:
        count = "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = 'tasks'"
        before = ops.store.scalar(count)
        assert ops.admin.call("Vacuum")[0] == "vacuum"
        assert ops.store.scalar(count) == before + 1
    # The data is still served, and equal to the store.
    sql = "SELECT count(*) FROM task_history"
    assert arrow_of(ops.conn, sql).column(0).to_pylist() == [ops.store.scalar(sql)]


def test_reindex_rebuilds_the_indexes(ops):
    if ops.kind == "postgres":
        node = "SELECT relfilenode FROM pg_class WHERE relname = 'tasks_pkey'"
        before = ops.store.scalar(node)
        operation, result = ops.admin.call("Reindex")
        assert operation == "reindex" and 'REINDEX SCHEMA "public"' in result["statements"], result
        assert ops.store.scalar(node) != before, "REINDEX writes new index files"
        before = ops.store.scalar(node)
        assert ops.admin.action("reindex") == result
        assert ops.store.scalar(node) != before
    else:
        assert ops.admin.call("Reindex") == ("reindex", {"statements": "REINDEX"})
        assert ops.admin.action("reindex") == {"statements": "REINDEX"}
        assert ops.store.rows("PRAGMA integrity_check") == [("ok",)]
    sql = "SELECT count(*) FROM tasks WHERE status = 'blocked'"
    assert arrow_of(ops.conn, sql).column(0).to_pylist() == [ops.store.scalar(sql)]


def test_checkpoint_empties_the_write_ahead_log(ops):
    if ops.kind != "sqlite":
        pytest.skip("SQLite only (PostgreSQL's refusal is tested above)")
    wal = Path(f"{ops.server.db_path}-wal")
    feature = some_feature(ops.store)
    ops.mutations.insert("tasks", [task(marker("wal"), feature)])
    assert wal.exists() and wal.stat().st_size > 0, "the write is in the write-ahead log"
    assert ops.admin.call("Checkpoint") == ("checkpoint", {"statements": "PRAGMA wal_checkpoint(TRUNCATE)"})
    assert wal.stat().st_size == 0
    ops.mutations.insert("tasks", [task(marker("wal"), feature)])
    assert wal.stat().st_size > 0
    assert ops.admin.action("checkpoint")["statements"] == "PRAGMA wal_checkpoint(TRUNCATE)"
    assert wal.stat().st_size == 0


def test_prune_change_log_keeps_what_is_within_retention(ops):
    ops.mutations.insert("tasks", [task(marker("prune"), some_feature(ops.store))])
    commits = ops.store.count("_quiver_commits")
    assert commits > 0
    operation, result = ops.admin.call("PruneChangeLog")
    assert operation == "prune_change_log"
    after = ops.store.count("_quiver_commits")
    assert result == {"commits_pruned": commits - after} and after == commits, (result, commits, after)
    assert ops.admin.action("prune_change_log") == {"commits_pruned": 0}


def test_list_actions_names_the_admin_actions(ops):
    names = {action.type for action in ops.flight.list_actions()}
    expected = {
        "analyze",
        "vacuum",
        "reindex",
        "checkpoint",
        "backup",
        "prune_change_log",
        "config",
        "reload_config",
        "set_log_filter",
        "set_slow_query_ms",
    }
    assert {f"quiver.admin.{op}" for op in expected} <= names, names
    assert ops.admin.action_code("no_such_operation") == "INVALID_ARGUMENT"


# --- (h) transactions, pool, subscriptions, tables -------------------------------------


def transactions(conn) -> list[dict]:
    return records(conn, "SELECT * FROM system.transactions")


def test_transactions_lists_an_open_transaction(ops):
    assert transactions(ops.conn) == [], "no transaction open before"
    key = marker("tx")
    feature = some_feature(ops.store)
    ops.mutations.insert("tasks", [task(key, feature, priority=4)])
    # ADBC with autocommit off: the transaction is open once the connection is.
    with adbc_connection(ops.server.grpc_uri, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute(f"UPDATE tasks SET priority = 5 WHERE key = '{key}'")
        assert cur.rowcount == 1
        cur.close()
        [open_one] = transactions(ops.conn)
        assert open_one["connection"] and open_one["idle_ms"] >= 0 and open_one["in_use"] is False, open_one
        assert ops.store.scalar(f"SELECT priority FROM tasks WHERE key = '{key}'") == 4, "not committed yet"
        conn.commit()
        assert ops.store.scalar(f"SELECT priority FROM tasks WHERE key = '{key}'") == 5
    wait_for(lambda: transactions(ops.conn) == [], "no transaction after the connection closed")

    # BeginTransaction / EndTransaction by hand: listed while open, gone at commit.
    options = call_options(None)
    transaction_id = begin_transaction(ops.flight, options)
    assert flight_update(ops.flight, f"UPDATE tasks SET priority = 3 WHERE key = '{key}'", options, transaction_id) == 1
    assert len(transactions(ops.conn)) == 1
    end_transaction(ops.flight, transaction_id, True, options)
    assert transactions(ops.conn) == [], "the committed transaction is no longer listed"
    assert ops.store.scalar(f"SELECT priority FROM tasks WHERE key = '{key}'") == 3


def test_pool_matches_readyz_and_the_flag(ops):
    [pool] = records(ops.conn, "SELECT * FROM system.pool")
    ready = requests.get(f"{ops.server.http_url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    detail = ready.json()["pool"]
    assert pool["max_size"] == detail["max_size"] == POOL_MAX_SIZE
    assert pool["reachable"] is True and detail["reachable"] is True
    assert settings_of(ops.conn)["pool_max_size"] == str(POOL_MAX_SIZE)
    assert 0 < pool["connections"] <= POOL_MAX_SIZE
    assert pool["idle"] + pool["in_use"] == pool["connections"], pool
    # Counters only grow.
    assert pool["acquired"] <= detail["acquired"] and pool["connections_created"] <= detail["connections_created"]


def test_subscriptions_lists_an_open_subscription(ops):
    sql = "SELECT * FROM system.subscriptions"
    assert records(ops.conn, sql) == []
    with ops.subscriptions.open(latest=True) as subscription:
        subscription.wait(lambda s: s.progresses, "a first Progress")
        latest = clock(ops.store)
        [row] = wait_for(lambda: (rows := records(ops.conn, sql)) and rows[0]["delivered_version"] >= latest and rows,
                         "the subscription caught up")
        assert row["delivered_version"] == latest and row["lag_versions"] == 0, (row, latest)
    wait_for(lambda: records(ops.conn, sql) == [], "the subscription gone after cancel")


def store_catalog(store: Store) -> dict:
    """(schema, table) -> (kind, number of columns, primary key) from the store."""
    if store.kind == "sqlite":
        tables = store.rows(
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_quiver%'"
        )
        catalog = {}
        for name, kind in tables:
            info = store.rows(f"SELECT name, pk FROM pragma_table_info('{name}') ORDER BY pk")
            key = ", ".join(column for column, pk in info if pk > 0)
            catalog[("main", name)] = (kind.upper(), len(info), key)
        return catalog
    tables = store.rows(
        "SELECT table_schema, table_name, table_type FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema', '_quiver')"
    )
    catalog = {}
    for schema, name, kind in tables:
        columns = store.scalar(
            f"SELECT count(*) FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = '{name}'"
        )
        key = store.rows(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
            "AND k.table_schema = c.table_schema AND k.table_name = c.table_name "
            f"WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = '{schema}' AND c.table_name = '{name}' "
            "ORDER BY k.ordinal_position"
        )
        catalog[(schema, name)] = ("TABLE" if kind == "BASE TABLE" else kind, columns, ", ".join(r[0] for r in key))
    return catalog


def test_tables_matches_the_store_catalog(ops):
    served = {
        (r["schema_name"], r["table_name"]): (r["kind"], r["columns"], r["primary_key"])
        for r in records(ops.conn, "SELECT * FROM system.tables")
    }
    truth = store_catalog(ops.store)
    assert {"epics", "features", "tasks", "task_history"} <= {name for _, name in truth}
    assert served == truth


# --- (g) live configuration -----------------------------------------------------------

RELOADED = "SIGHUP: configuration reloaded"
NOT_LOADED = "SIGHUP: the configuration does not load; keeping the previous one"


class Reloadable:
    def __init__(self, server, config: Path, admin_pb):
        self.server = server
        self.config = config
        self.conn = flight_sql.connect(server.grpc_uri, db_kwargs=dict(ADBC_TIMEOUTS), autocommit=True)
        self.channel = grpc.insecure_channel(server.grpc_addr)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.flight = flight.FlightClient(server.grpc_uri)
        self.admin = AdminClient(admin_pb, self.channel, self.flight)

    def lines(self, text: str) -> int:
        return sum(text in line for line in list(self.server.log))

    def hangup(self) -> int:
        """Sends SIGHUP and waits until the server logged what it did with the file;
        the index in the log where this reload's lines start."""
        start = len(self.server.log)
        done = self.lines(RELOADED) + self.lines(NOT_LOADED)
        self.server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self.lines(RELOADED) + self.lines(NOT_LOADED) > done, "the SIGHUP handled")
        return start

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()
        self.flight.close()
        self.channel.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def reloadable(request, tmp_path_factory, admin_pb):
    config = tmp_path_factory.mktemp("config") / "quiver.toml"
    config.write_text('slow_query_ms = 5000\nlog = "info"\n')
    args = ["--config", str(config)]
    with running_server(request.param, tmp_path_factory, sqlite_truth=False, extra_args=args) as server:
        context = Reloadable(server, config, admin_pb)
        try:
            yield context
        finally:
            context.close()


INVALID_FILES = [
    ("bad TOML", "slow_query_ms = \n", None),
    ("unknown key", "slow_query_ms = 1\nno_such_setting = 3\n", "no_such_setting"),
    ("bad value", 'slow_query_ms = "fast"\n', "slow_query_ms"),
    ("bad log filter", 'log = "quiver=[[["\n', None),
]


def test_sighup_applies_the_live_settings(reloadable):
    ctx = reloadable
    settings = settings_of(ctx.conn)
    assert (settings["slow_query_ms"], settings["log"]) == ("5000", "info"), settings
    pool_size = settings["pool_max_size"]
    assert pool_size != "3"
    [pool] = records(ctx.conn, "SELECT max_size FROM system.pool")
    assert str(pool["max_size"]) == pool_size
    before = f"SELECT count(*) FROM tasks /* {marker('before_reload')} */"
    arrow_of(ctx.conn, before)
    finished_history_of(ctx.conn, before)
    assert history_of(ctx.conn, before, "system.slow_queries") == []
    assert not any(" DEBUG " in line for line in ctx.server.log), "info: no debug lines yet"

    ctx.config.write_text('slow_query_ms = 0\nlog = "debug"\npool_max_size = 3\n')
    start = ctx.hangup()
    reload_lines = "".join(ctx.server.log[start:])
    assert RELOADED in reload_lines, reload_lines[-3000:]
    assert re.search(r"take effect at restart.*pool_max_size|pool_max_size.*take effect at restart", reload_lines), (
        "the log names pool_max_size as taking effect at restart:\n" + reload_lines[-3000:]
    )

    settings = settings_of(ctx.conn)
    assert (settings["slow_query_ms"], settings["log"], settings["pool_max_size"]) == ("0", "debug", pool_size)
    [pool] = records(ctx.conn, "SELECT max_size FROM system.pool")
    assert str(pool["max_size"]) == pool_size
    assert str(requests.get(f"{ctx.server.http_url}/readyz", timeout=30).json()["pool"]["max_size"]) == pool_size
    after = f"SELECT count(*) FROM tasks /* {marker('after_reload')} */"
    arrow_of(ctx.conn, after)
    [slow] = finished_history_of(ctx.conn, after, "system.slow_queries")
    assert slow["status"] == "OK"
    wait_for(lambda: any(" DEBUG " in line for line in ctx.server.log[start:]), "debug lines in the log")

    # Files that do not load change nothing and are logged.
    for what, text, _ in INVALID_FILES:
        ctx.config.write_text(text)
        start = ctx.hangup()
        assert NOT_LOADED in "".join(ctx.server.log[start:]), what
        assert settings_of(ctx.conn) == settings, what
    ctx.config.write_text('slow_query_ms = 0\nlog = "info"\n')
    ctx.hangup()
    assert settings_of(ctx.conn)["log"] == "info"


def test_reload_config_call_does_the_same(reloadable):
    ctx = reloadable
    ctx.config.write_text('slow_query_ms = 7000\nlog = "info"\nquery_history = 4\npool_max_size = 3\n')
    operation, result = ctx.admin.call("ReloadConfig")
    assert operation == "reload_config"
    assert "slow_query_ms" in result["changed"] and "query_history" in result["changed"], result
    assert result["take_effect_at_restart"] == ["pool_max_size"], result
    assert set(result["changed"]) <= LIVE_SETTINGS, result
    settings = settings_of(ctx.conn)
    assert (settings["slow_query_ms"], settings["query_history"]) == ("7000", "4"), settings
    _, config = ctx.admin.call("GetConfig")
    assert {c["name"]: c["value"] for c in config} == settings
    assert {c["name"] for c in config if c["changes_live"]} >= LIVE_SETTINGS

    # query_history = 4 holds live: the history keeps the last 4 queries (a query is
    # in the history before its client sees the end of its result), and the running
    # one.
    mine = [f"SELECT count(*) FROM epics /* {marker('kept')} */" for _ in range(6)]
    for sql in mine:
        arrow_of(ctx.conn, sql)
    listing = f"SELECT * FROM system.queries /* {marker('listing')} */"
    kept = records(ctx.conn, listing)
    assert [(r["sql"], r["status"]) for r in kept] == [(sql, "OK") for sql in mine[-4:]] + [(listing, "RUNNING")]

    for what, text, named in INVALID_FILES:
        ctx.config.write_text(text)
        outcome = capture(lambda: ctx.admin.call("ReloadConfig"))
        assert outcome.code == "FAILED_PRECONDITION", (what, outcome)
        if named:
            assert named in outcome.message, (what, outcome.message)
        assert ctx.admin.action_code("reload_config") == "FAILED_PRECONDITION", what
        assert settings_of(ctx.conn) == settings, what

    ctx.config.write_text('slow_query_ms = 0\nlog = "info"\nslow_query_history = 2\n')
    result = ctx.admin.action("reload_config")
    assert set(result["changed"]) == {"slow_query_ms", "query_history", "slow_query_history"}, result
    assert result["take_effect_at_restart"] == [], result
    settings = settings_of(ctx.conn)
    assert (settings["slow_query_ms"], settings["slow_query_history"]) == ("0", "2"), settings
    # slow_query_history = 2 holds live: the slow log keeps the last 2 queries.
    mine = [f"SELECT count(*) FROM features /* {marker('slow_kept')} */" for _ in range(3)]
    for sql in mine:
        arrow_of(ctx.conn, sql)
    assert [r["sql"] for r in records(ctx.conn, "SELECT * FROM system.slow_queries")] == mine[-2:]


def test_set_log_filter_changes_it_live(reloadable):
    ctx = reloadable
    assert ctx.admin.code("SetLogFilter", filter="quiver=[[[") == "INVALID_ARGUMENT"
    assert ctx.admin.call("SetLogFilter", filter="warn") == ("set_log_filter", {"log": "warn"})
    assert settings_of(ctx.conn)["log"] == "warn"
    start = len(ctx.server.log)
    # An admin operation logs at info: not shown under warn.
    ctx.admin.call("Analyze")
    assert not any(" INFO " in line for line in ctx.server.log[start:]), "".join(ctx.server.log[start:])
    assert ctx.admin.action("set_log_filter", {"filter": "info"}) == {"log": "info"}
    ctx.admin.call("Analyze")
    wait_for(lambda: any("admin operation done" in line for line in ctx.server.log[start:]), "info lines again")
    assert settings_of(ctx.conn)["log"] == "info"
