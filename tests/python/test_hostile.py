"""Hostile-client probes: requests built to crash, stall, bloat or corrupt the server,
sent through its public APIs only (Flight SQL over raw gRPC and ADBC, the Mutations and
Subscriptions APIs, HTTP), on SQLite and on PostgreSQL.

Every probe checks, where it applies:
1. the server process is still alive;
2. the exact gRPC status code (HTTP status and JSON error body) of the contract, and
   never INTERNAL / HTTP 500 for a client's error;
3. the status message is at most ~1 KiB (it never echoes a large input back);
4. nothing changed: the change log (clock, commits, the last rows of the log, read
   straight from the store), the row counts of the touched tables, and another
   client's open transaction, which still commits afterwards.

The contract (limits and their defaults):
  --max-statement-kb 1024, --max-expression-depth 1000, --max-query-parameter-rows
  1024, --max-subscription-tables 64, --max-mutation-operations 10000,
  --query-timeout-s 300, --max-concurrent-queries 4 x CPUs with a queue of
  --query-queue-timeout-ms 30000; existing: --max-mutation-rows 100000,
  --max-mutation-size-mb 32, --max-message-size-mb 64.
  Limits -> RESOURCE_EXHAUSTED; malformed protobuf, SQL, values, Arrow IPC, handles
  and tickets -> INVALID_ARGUMENT; unknown table -> NOT_FOUND (INVALID_ARGUMENT also
  accepted for queries); Quiver's internal objects (`_quiver…`) and switching change
  capture off -> PERMISSION_DENIED; a query timing out -> DEADLINE_EXCEEDED; another
  connection's transaction -> NOT_FOUND. HTTP errors answer
  {"error": {"code": "<GRPC_CODE_NAME>", "message": "..."}}.

The servers under attack are restarted when a probe kills one (the probe has failed
by then), so one crash does not fail every later probe; a probe that leaves the
server busy or bloated (an old build that does not refuse it) settles or restarts it
before the next one.

Heavy probes (the large ingest, the abandoned aggregate) run at a reduced size by
default and at full size with QUIVER_HOSTILE_FULL=1; the size is in the test id."""

import contextlib
import itertools
import json
import math
import os
import signal
import sqlite3
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import requests

from conftest import Store, fresh_database
from hostile_clients import (
    COMMIT,
    INGEST_APPEND,
    ROLLBACK,
    RawFlight,
    Sampler,
    abandoned_http_post,
    adbc_code,
    any_of,
    change_log_state,
    changes_of_version,
    close_prepared,
    cpu_seconds,
    cpu_share,
    create_prepared,
    end_transaction,
    flight_descriptor,
    get_tables,
    huge_batch_stream,
    identity,
    internal,
    internal_schema,
    ipc_from_flight_data,
    ipc_messages,
    ipc_stream,
    pb_first,
    pb_message,
    prepared_query,
    prepared_update,
    rss_bytes,
    statement_ingest,
    statement_query,
    store_clock,
    ticket_statement,
)
from quiver_clients import connect_mutations, connect_subscriptions, some_feature, task

FULL = os.environ.get("QUIVER_HOSTILE_FULL") == "1"
MAX_DETAILS = 1100  # 1 KiB of message plus a small margin

Code = grpc.StatusCode
IA, NF, RE, PD = Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.PERMISSION_DENIED
DE, UNIMPL = Code.DEADLINE_EXCEEDED, Code.UNIMPLEMENTED

DEMO_TABLES = ("tasks", "features", "epics", "task_history")
BYSTANDER = "hostile_bystander"
POISON = "hostile_poison"

TASK_COLUMNS = "feature_id, key, title, status, priority, created_at, updated_at"


# --- The server under attack -------------------------------------------------------------


@contextlib.contextmanager
def environment(values: dict):
    """os.environ with `values` set (the server copies the environment at start)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: str(value) for name, value in values.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Target:
    """One backend's `quiver serve` under attack, with its clients and its database
    read directly (`store`). `revive()` restarts a server an earlier probe killed.

    New settings are passed as QUIVER_* environment variables (a build that does not
    know them still starts, and fails the probes that rely on them instead of every
    test); existing ones as flags."""

    def __init__(self, database, protos, extra_args=(), env=None):
        self.database = database
        self.protos = protos
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.deaths: list[str] = []
        self._clients: dict = {}
        self.server = self._start()
        self.store = Store(self.server)
        self.tables = list(DEMO_TABLES)

    def _start(self):
        with environment(self.env):
            server = self.database.server(self.extra_args)
        server.baseline_rss = rss_bytes(server.process.pid)
        return server

    # State of the process.
    @property
    def kind(self) -> str:
        return self.database.kind

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def alive(self, grace: float = 0.0) -> bool:
        """Whether the process runs (waiting up to `grace` seconds for it to exit: a
        process that crashed closes its sockets a moment before it is reaped)."""
        if grace:
            with contextlib.suppress(Exception):
                self.server.process.wait(timeout=grace)
        return self.server.process.poll() is None

    def assert_alive(self, what: str = "the probe", grace: float = 0.0):
        if not self.alive(grace):
            tail = "".join(self.server.log[-15:])
            raise AssertionError(
                f"the server died during {what} (exit {self.server.process.returncode}); log tail:\n{tail}"
            )

    def revive(self, why: str):
        if not self.alive():
            self.deaths.append(why)
            self._close_clients()
            self.server = self._start()

    def stop(self):
        """Stops the server: SIGTERM, SIGKILL when it does not stop within 10 s. The
        clients are closed after (closing an ADBC connection calls the server, which
        would wait on a wedged one)."""
        if self.alive():
            self.server.process.send_signal(signal.SIGTERM)
            try:
                self.server.process.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.server.process.kill()
                self.server.process.wait(timeout=15)
        self._close_clients()

    def start(self):
        self.server = self._start()

    def restart(self, why: str):
        self.deaths.append(f"restarted: {why}")
        self.stop()
        self.start()

    def kill(self):
        if self.alive():
            self.server.process.kill()
            self.server.process.wait(timeout=15)

    def settle(self, busy_share: float = 0.3, wait_s: float = 10, rss_slack: int = 1 << 30):
        """After a probe that may have left work running (on a server that did not
        refuse it): waits up to `wait_s` for the server to go idle, and kills and
        restarts it if it stays busy or kept a lot of memory, so the next probe starts
        clean."""
        if not self.alive():
            return
        deadline = time.monotonic() + wait_s
        while self.alive() and cpu_share(self.pid, 0.15) > busy_share:
            if time.monotonic() > deadline:
                self.deaths.append("killed: still busy after a probe")
                self.kill()
                self._close_clients()
                self.start()
                return
        if self.alive() and rss_bytes(self.pid) > self.server.baseline_rss + rss_slack:
            self.restart("kept its memory after a probe")

    # Clients, opened on first use and closed when the server is restarted.
    def _client(self, name, make):
        if name not in self._clients:
            self._clients[name] = make()
        return self._clients[name][0]

    def _close_clients(self):
        for _, close in self._clients.values():
            with contextlib.suppress(Exception):
                close()
        self._clients.clear()

    @property
    def mutations(self):
        pb = (self.protos["mutations_pb2"], self.protos["mutations_pb2_grpc"])
        return self._client("mutations", lambda: _with_close(connect_mutations(self.server.grpc_addr, pb)))

    @property
    def subscriptions(self):
        pb = (self.protos["subscriptions_pb2"], self.protos["subscriptions_pb2_grpc"])
        return self._client("subscriptions", lambda: _with_close(connect_subscriptions(self.server.grpc_addr, pb)))

    @property
    def flight(self) -> RawFlight:
        return self._client("flight", lambda: _closing(RawFlight(self.server.grpc_addr)))

    @property
    def bystander_flight(self) -> RawFlight:
        return self._client("bystander", lambda: _closing(RawFlight(self.server.grpc_addr)))

    @property
    def adbc(self):
        return self._client("adbc", lambda: _closing(flight_sql.connect(self.server.grpc_uri, autocommit=True)))

    def other_flight(self) -> RawFlight:
        """A raw Flight client on a connection of its own (close it)."""
        return RawFlight(self.server.grpc_addr)

    def unary(self, method: str):
        """A unary gRPC method taking and answering raw bytes."""
        return self.flight.channel.unary_unary(method, identity, identity)

    def server_stream(self, method: str):
        return self.flight.channel.unary_stream(method, identity, identity)

    @property
    def mpb(self):
        return self.protos["mutations_pb2"]

    @property
    def spb(self):
        return self.protos["subscriptions_pb2"]

    def http(self, path: str) -> str:
        return f"{self.server.http_url}{path}"

    def close(self):
        self.stop()
        self.store.close()


def _with_close(pair):
    client, channel = pair
    return client, channel.close


def _closing(client):
    return client, client.close


def create_scratch_tables(target: Target):
    """The module's own tables, made through Flight SQL DDL so the catalog knows them:
    `hostile_bystander` (rows of the bystander transactions and harmless targets) and
    `hostile_poison` (one column of each type values are checked against, with one
    seed row)."""
    if target.kind == "sqlite":
        poison = (
            f"CREATE TABLE {POISON} (id INTEGER PRIMARY KEY, ts TIMESTAMP, d DATE, r REAL, "
            "n INTEGER, label TEXT)"
        )
    else:
        poison = (
            f"CREATE TABLE {POISON} (id BIGINT PRIMARY KEY, ts TIMESTAMP, d DATE, r DOUBLE PRECISION, "
            "n BIGINT, label TEXT, u UUID, dec NUMERIC(10, 2))"
        )
    flight_client = target.flight
    flight_client.update(f"CREATE TABLE {BYSTANDER} (id BIGINT PRIMARY KEY, note TEXT)")
    flight_client.update(poison)
    flight_client.update(
        f"INSERT INTO {POISON} (id, ts, d, r, n, label) "
        "VALUES (1, '2025-01-01 00:00:00', '2025-01-01', 1.5, 7, 'seed')"
    )
    target.tables += [BYSTANDER, POISON]


def start_target(kind, tmp_path_factory, protos, extra_args=(), env=None):
    """A Target over a fresh database with the scratch tables, and the ExitStack that
    stops it and drops the database."""
    stack = contextlib.ExitStack()
    try:
        database = stack.enter_context(fresh_database(kind, tmp_path_factory))
        target = Target(database, protos, extra_args, env)
        stack.callback(target.close)
        create_scratch_tables(target)
    except BaseException:
        stack.close()
        raise
    return target, stack


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def target_server(request, tmp_path_factory, quiver_protos):
    """A server with the default limits, over a fresh demo database of its own."""
    target, stack = start_target(request.param, tmp_path_factory, quiver_protos)
    with stack:
        yield target
        if target.deaths:
            print(f"\n[{request.param}] server restarts during this module: {target.deaths}")


@pytest.fixture()
def hostile(target_server):
    """The default-limits server, alive at the start of the test."""
    target_server.revive("killed by an earlier probe")
    return target_server


SMALL_ENV = {
    "QUIVER_MAX_STATEMENT_KB": 4,
    "QUIVER_MAX_EXPRESSION_DEPTH": 50,
    "QUIVER_MAX_QUERY_PARAMETER_ROWS": 8,
    "QUIVER_MAX_SUBSCRIPTION_TABLES": 3,
    "QUIVER_MAX_MUTATION_OPERATIONS": 5,
    "QUIVER_QUERY_TIMEOUT_S": 2,
    "QUIVER_MAX_CONCURRENT_QUERIES": 1,
    "QUIVER_QUERY_QUEUE_TIMEOUT_MS": 300,
}
SMALL_ARGS = ("--max-message-size-mb", "4", "--max-mutation-size-mb", "4", "--max-mutation-rows", "10")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def small_server(request, tmp_path_factory, quiver_protos):
    """A server with small limits: SMALL_ARGS as flags, SMALL_ENV as environment."""
    target, stack = start_target(request.param, tmp_path_factory, quiver_protos, SMALL_ARGS, SMALL_ENV)
    with stack:
        yield target


@pytest.fixture()
def small(small_server):
    small_server.revive("killed by an earlier probe")
    return small_server


# --- Checks ------------------------------------------------------------------------------


def names(codes) -> str:
    return " or ".join(code.name for code in codes)


def as_codes(expected) -> tuple:
    return expected if isinstance(expected, tuple) else (expected,)


def check_status(code, details: str, expected, what: str):
    """A refusal's code is one of `expected`, never INTERNAL, and its message is short."""
    expected = as_codes(expected)
    details = details or ""
    assert "metadata size exceeds" not in details, (
        f"{what}: the server's status message is larger than gRPC clients accept (it echoes its input): {details}"
    )
    assert code != Code.INTERNAL, f"{what}: INTERNAL for a client's error: {details[:300]}"
    assert code in expected, f"{what}: expected {names(expected)}, got {code.name}: {details[:300]}"
    size = len(details.encode())
    assert size <= MAX_DETAILS, f"{what}: the message is {size} bytes (it echoes its input?): {details[:200]}…"


def short(value) -> str:
    text = repr(value)
    return text[:200] + ("…" if len(text) > 200 else "")


def expect_error(target: Target, expected, call, *args, what: str = "", within: float | None = None, **kwargs):
    """Runs `call(*args, **kwargs)`, which must fail with one of the `expected` gRPC
    codes (within `within` seconds), leaving the server alive; answers the error."""
    what = what or getattr(call, "__name__", "the call")
    started = time.monotonic()
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as error:
        elapsed = time.monotonic() - started
        broken = error.code() in (Code.UNAVAILABLE, Code.CANCELLED, Code.UNKNOWN)
        target.assert_alive(what, grace=1.0 if broken else 0.0)
        check_status(error.code(), error.details(), expected, what)
        if within is not None:
            assert elapsed < within, f"{what}: refused after {elapsed:.1f}s, not within {within}s"
        return error
    target.assert_alive(what)
    raise AssertionError(f"{what}: expected {names(as_codes(expected))}, the call succeeded: {short(result)}")


def expect_stream_error(target: Target, expected, stream, request: bytes, what: str, within=None, timeout=20):
    """A server-streaming call that must end with one of `expected` before its first
    message."""

    def first():
        call = stream(request, timeout=timeout)
        try:
            return next(call)
        finally:
            call.cancel()

    return expect_error(target, expected, first, what=what, within=within)


def expect_adbc_error(target: Target, expected, call, *args, what: str = ""):
    """An ADBC call that must fail with one of the `expected` gRPC codes (read from
    the driver's message)."""
    what = what or "ADBC call"
    try:
        result = call(*args)
    except adbc_driver_manager.Error as error:
        target.assert_alive(what)
        code, message = adbc_code(error)
        assert code is not None, f"{what}: no gRPC code in the driver's error: {str(error)[:300]}"
        check_status(code, message, expected, what)
        return error
    target.assert_alive(what)
    raise AssertionError(f"{what}: expected {names(as_codes(expected))}, the call succeeded: {short(result)}")


def state_of(target: Target, tables) -> dict:
    """What a refused probe must leave as it was: the change log and row counts."""
    try:
        state = change_log_state(target.store)
        state["rows"] = {table: target.store.count(table) for table in tables}
    except Exception as error:  # noqa: BLE001: a dropped internal table is a finding
        raise AssertionError(f"the change log or a table can no longer be read: {error}") from error
    return state


# Ids of rows written by this module's own clients: unique across runs and restarts.
ROW_IDS = itertools.count(1_000_000_000 + (time.time_ns() // 1000) % 1_000_000 * 1000)


class Bystander:
    """Another client's transaction, open across a probe: begun on a connection of its
    own before the probe, then written to and committed after it."""

    def __init__(self, target: Target):
        self.target = target
        self.flight = target.bystander_flight
        self.transaction = self.flight.begin()

    def finish(self):
        row_id = next(ROW_IDS)
        try:
            self.flight.update(f"INSERT INTO {BYSTANDER} (id, note) VALUES ({row_id}, 'bystander')", self.transaction)
            self.flight.end(self.transaction, COMMIT)
        except grpc.RpcError as error:
            self.abandon()
            raise AssertionError(
                f"another client's transaction did not survive the probe: {error.code().name}: {error.details()}"
            ) from error
        assert self.target.store.count(BYSTANDER, f"id = {row_id}") == 1, "the bystander's committed row is in the store"

    def abandon(self):
        with contextlib.suppress(Exception):
            self.flight.end(self.transaction, ROLLBACK, timeout=5)


@contextlib.contextmanager
def unchanged(target: Target, tables=None, bystander: bool = True):
    """The probe inside changes nothing: the server stays alive, the change log and the
    tables' row counts are as before, and a bystander's open transaction still
    commits."""
    tables = list(tables or target.tables)
    before = state_of(target, tables)
    other = Bystander(target) if bystander else None
    try:
        yield
    except BaseException:
        if other is not None and target.alive():
            other.abandon()
        raise
    target.assert_alive()
    after = state_of(target, tables)
    for key in before:
        assert after[key] == before[key], f"the probe changed {key}: {short(before[key])} -> {short(after[key])}"
    if other is not None:
        other.finish()


def assert_capture_works(target: Target, label: str = "capture"):
    """A normal Mutations insert still works and is in the change log under the next
    version; the clock moved forward to it."""
    store = target.store
    before = store_clock(store)
    key = f"HOSTILE-{label}-{time.monotonic_ns()}"[:60]
    response = target.mutations.insert("tasks", [task(key, some_feature(store))])
    assert response.affected_rows == 1
    assert response.commit_version == before + 1, (
        f"the next commit is version {before + 1}, not {response.commit_version}"
    )
    assert store_clock(store) == response.commit_version
    logged = changes_of_version(store, response.commit_version)
    assert [(table, op) for table, op, _ in logged] == [("tasks", "insert")], f"change log of the insert: {logged}"
    assert key in logged[0][2]


def http_error(response, statuses, code=None, what=""):
    """An HTTP error answer: one of `statuses`, a JSON body
    {"error": {"code": <gRPC code name>, "message": ...}} with a short message."""
    statuses = statuses if isinstance(statuses, tuple) else (statuses,)
    what = what or response.request.method + " " + response.request.url
    assert response.status_code != 500, f"{what}: 500 for a client's error: {response.text[:300]}"
    assert response.status_code in statuses, f"{what}: expected {statuses}, got {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{what}: the error body is not JSON: {response.text[:300]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: {body!r:.300}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), f"{what}: {error!r:.300}"
    assert error["code"] in Code.__members__, f"{what}: {error['code']!r} is not a gRPC code name"
    assert error["code"] not in ("INTERNAL", "UNKNOWN"), f"{what}: {error}"
    if code is not None:
        expected = [c if isinstance(c, str) else c.name for c in as_codes(code)]
        assert error["code"] in expected, f"{what}: expected {' or '.join(expected)}, got {error}"
    size = len(error["message"].encode())
    assert size <= MAX_DETAILS, f"{what}: the message is {size} bytes: {error['message'][:200]}…"
    return error


def post_query(target: Target, sql, timeout: float = 30, **kwargs):
    return requests.post(target.http("/v1/query"), json={"sql": sql}, timeout=timeout, **kwargs)


# --- Builders ----------------------------------------------------------------------------


def or_chain(terms: int, value=lambda i: i + 1) -> str:
    """`id = 1 OR id = 2 OR …`: a left-deep chain `terms` deep."""
    return " OR ".join(f"id = {value(i)}" for i in range(terms))


def and_self_chain(terms: int) -> str:
    return " AND ".join(["id = id"] * terms)


def plus_chain(terms: int) -> str:
    return "+".join(["1"] * terms)


def union_chain(branches: int) -> str:
    return " UNION ALL ".join(f"SELECT {i} AS x" for i in range(branches))


def in_list(count: int, sign: int = 1) -> str:
    return "id IN (" + ",".join(str(sign * (i + 1)) for i in range(count)) + ")"


def in_list_of_bytes(size: int, sign: int = -1) -> str:
    """An `id IN (…)` predicate of about `size` bytes."""
    numbers, total, i = [], 8, 1
    while total < size:
        text = str(sign * i)
        numbers.append(text)
        total += len(text) + 1
        i += 1
    return "id IN (" + ",".join(numbers) + ")"


JUST_OVER = 1010  # terms of a chain just over the default depth of 1000

# The heavy aggregate: DataFusion joins tasks with itself (5,000 x 5,000 rows), about
# 12 s on a debug build when nothing stops it; FULL multiplies the work by 8.
HEAVY_SQL = (
    "SELECT a.status, count(*) AS n, sum(a.priority * b.priority) AS s "
    "FROM tasks a CROSS JOIN tasks b"
    + (" CROSS JOIN (SELECT id FROM tasks WHERE id <= 8) c" if FULL else "")
    + " GROUP BY a.status"
)


# --- 1. Stack-depth attacks --------------------------------------------------------------

# (id, SQL): queries whose expression tree is too deep, big or just over the limit.
DEEP_QUERIES = [
    ("union-all-10000", union_chain(10_000)),
    ("plus-100000", "SELECT " + plus_chain(100_000) + " AS x"),
    ("and-self-100000", "SELECT id FROM tasks WHERE " + and_self_chain(100_000)),
    ("or-100000", "SELECT id FROM tasks WHERE " + or_chain(100_000)),
    ("union-all-just-over", union_chain(JUST_OVER)),
    ("plus-just-over", "SELECT " + plus_chain(JUST_OVER) + " AS x"),
    ("and-self-just-over", "SELECT id FROM tasks WHERE " + and_self_chain(JUST_OVER)),
    ("or-just-over", "SELECT id FROM tasks WHERE " + or_chain(JUST_OVER, lambda i: 1)),
]


@pytest.mark.parametrize("surface", ["flight-query", "prepare", "http"])
@pytest.mark.parametrize("sql", [sql for _, sql in DEEP_QUERIES], ids=[name for name, _ in DEEP_QUERIES])
def test_deep_queries_are_refused(hostile, sql, surface):
    """Attacks the planner's recursion: a left-deep chain (UNION ALL, `+`, AND, OR)
    tens of thousands deep, or just over the depth limit, must be refused with
    RESOURCE_EXHAUSTED before planning, not overflow the stack."""
    try:
        with unchanged(hostile, bystander=False):
            if surface == "flight-query":
                expect_error(hostile, RE, hostile.flight.get_flight_info, statement_query(sql), what="GetFlightInfo")
            elif surface == "prepare":
                expect_error(
                    hostile, RE, hostile.flight.action, "CreatePreparedStatement", create_prepared(sql), what="prepare"
                )
            else:
                response = post_query(hostile, sql)
                hostile.assert_alive("POST /v1/query")
                http_error(response, (429, 413), "RESOURCE_EXHAUSTED")
    finally:
        hostile.settle()


def test_deep_update_statement_is_refused(hostile):
    """A DML statement run on the store as written, with a 100,000-term OR chain in
    its WHERE and one just over the depth limit: RESOURCE_EXHAUSTED, nothing run."""
    try:
        for terms in (100_000, JUST_OVER):
            sql = f"UPDATE {BYSTANDER} SET note = 'deep' WHERE " + or_chain(terms, lambda i: -(i + 1))
            with unchanged(hostile):
                expect_error(hostile, RE, hostile.flight.update, sql, what=f"update with {terms} ORs")
    finally:
        hostile.settle()


# (id, predicate/filter): 100,000 ORs is ~1.4 MB (over max_statement_kb as well),
# 5,000 ORs is under the size limit but five times too deep, JUST_OVER is tiny.
DEEP_PREDICATES = [
    ("or-100000", or_chain(100_000, lambda i: -(i + 1))),
    ("or-5000", or_chain(5_000, lambda i: -(i + 1))),
    ("or-just-over", or_chain(JUST_OVER, lambda i: -1)),
]


@pytest.mark.parametrize("surface", ["delete", "update", "subscribe", "flight-subscribe", "flight-ticket"])
@pytest.mark.parametrize("predicate", [p for _, p in DEEP_PREDICATES], ids=[n for n, _ in DEEP_PREDICATES])
def test_deep_predicates_and_filters_are_refused(hostile, predicate, surface):
    """Attacks the predicate compilers: a Mutations Delete/Update predicate, a
    Subscriptions filter, the Flight `subscribe` action's filter and a hand-made
    subscription ticket carrying the filter straight to DoGet (skipping the action's
    checks) — each too deep or too long: RESOURCE_EXHAUSTED, the server alive."""
    m, spb = hostile.mutations, hostile.spb
    try:
        with unchanged(hostile):
            if surface == "delete":
                expect_error(hostile, RE, m.delete, "tasks", m.predicate(predicate), what="Delete")
            elif surface == "update":
                expect_error(hostile, RE, m.update, "tasks", m.predicate(predicate), {"agent_type": "deep"}, what="Update")
            elif surface == "subscribe":
                request = spb.SubscribeRequest(tables=["tasks"], filter=predicate).SerializeToString()
                expect_stream_error(
                    hostile, RE, hostile.server_stream("/quiver.v1.Subscriptions/Subscribe"), request, "Subscribe"
                )
            elif surface == "flight-subscribe":
                body = json.dumps({"table": "tasks", "filter": predicate}).encode()
                expect_error(hostile, RE, hostile.flight.action, "subscribe", body, what="subscribe action")
            else:
                request = spb.SubscribeRequest(tables=["tasks"], filter=predicate).SerializeToString()
                ticket = pb_message((1, "type.googleapis.com/quiver.v1.SubscribeRequest"), (2, request))
                expect_error(hostile, RE, hostile.flight.do_get_first, ticket, what="DoGet of a forged subscription ticket")
    finally:
        hostile.settle()


def test_deep_parenthesized_nesting_is_refused(hostile):
    """Nesting by parentheses just over the depth limit (2 KB of text): refused as too
    deep (RESOURCE_EXHAUSTED), or by the SQL parser's own recursion limit
    (INVALID_ARGUMENT) — never a crash."""
    nested = "(" * JUST_OVER + "id = 1" + ")" * JUST_OVER
    m = hostile.mutations
    try:
        with unchanged(hostile):
            expect_error(
                hostile, (RE, IA), hostile.flight.get_flight_info, statement_query(f"SELECT id FROM tasks WHERE {nested}")
            )
            expect_error(hostile, (RE, IA), m.delete, "tasks", m.predicate(nested), what="Delete")
    finally:
        hostile.settle()


def test_a_legitimate_500_term_or_still_works(hostile):
    """The depth limit must not refuse real work: a query and a Mutations predicate of
    500 ORed terms answer exactly what the store itself answers."""
    ids = [1 + (i * 37) % 5000 for i in range(500)]
    predicate = " OR ".join(f"id = {i}" for i in ids)
    sql = f"SELECT id, key FROM tasks WHERE {predicate} ORDER BY id"
    truth = hostile.store.rows(sql)
    assert len(truth) == len(set(ids))

    cursor = hostile.adbc.cursor()
    cursor.execute(sql)
    assert cursor.fetchall() == truth
    cursor.close()
    assert [tuple(row.values()) for row in post_query(hostile, sql).json()] == truth

    m = hostile.mutations
    marker = "or-500"
    response = m.update("tasks", m.predicate(predicate), {"agent_type": marker})
    assert response.affected_rows == len(truth)
    assert hostile.store.rows(f"SELECT id FROM tasks WHERE agent_type = '{marker}' ORDER BY id") == [
        (row[0],) for row in truth
    ]


# --- 2. Allocation attacks ---------------------------------------------------------------


@contextlib.contextmanager
def rss_guard(target: Target, kill_above: int = 1 << 30, interval: float = 0.05):
    """Samples the server's RSS while the block runs; kills the server if it grows by
    more than `kill_above` bytes (a probe that allocates per declared row would take
    the machine down). Yields the sampler; `.peak_growth` after the block."""
    baseline = rss_bytes(target.pid)
    pid = target.pid
    killed = []

    def sample():
        rss = rss_bytes(pid)
        if rss - baseline > kill_above and not killed:
            killed.append(rss)
            os.kill(pid, signal.SIGKILL)
        return rss

    sampler = Sampler(sample, interval)
    try:
        with sampler:
            yield sampler
    except BaseException as error:
        if killed:
            raise AssertionError(
                f"the server's RSS grew by more than {kill_above >> 20} MiB (to {killed[0] >> 20} MiB): "
                "the test killed it"
            ) from error
        raise
    if killed:
        raise AssertionError(f"the server's RSS grew by more than {kill_above >> 20} MiB: the test killed it")
    samples = sampler.values() or [baseline]
    sampler.peak_growth = max(samples) - baseline


@pytest.mark.parametrize(
    "rpc,columns",
    [("Insert", ()), ("Insert", ("description",)), ("Upsert", ("id",))],
    ids=["insert-zero-columns", "insert-null-column", "upsert-null-key"],
)
def test_a_batch_declaring_two_billion_rows_is_refused(hostile, rpc, columns):
    """An Arrow IPC stream of a few hundred bytes whose one batch declares 2**31-2 rows
    (zero columns, or null-type columns, which have no buffers): RESOURCE_EXHAUSTED
    (over max_mutation_rows) within 5 s, without the server allocating per row."""
    pb = hostile.mpb
    rows = pb.Rows(arrow_ipc=huge_batch_stream(2**31 - 2, columns))
    request = (pb.InsertRequest if rpc == "Insert" else pb.UpsertRequest)(table="tasks", rows=rows)
    call = getattr(hostile.mutations.stub, rpc)
    try:
        with unchanged(hostile):
            with rss_guard(hostile) as guard:
                expect_error(hostile, RE, call, request, timeout=10, what=rpc, within=5)
            assert guard.peak_growth < 100 << 20, f"RSS grew by {guard.peak_growth >> 20} MiB"
    finally:
        hostile.settle()


@pytest.mark.parametrize("command", ["bind-query-parameters", "prepared-update"])
def test_two_billion_null_parameters_are_refused(hostile, command):
    """DoPut of a parameter batch declaring 2**31-2 rows of one null-type column (a
    few hundred bytes) to a prepared query (bind) or a prepared update (executemany):
    RESOURCE_EXHAUSTED quickly, RSS flat."""
    if command == "bind-query-parameters":
        handle = hostile.flight.prepare("SELECT id FROM tasks WHERE id = ?")
        descriptor = prepared_query(handle)
    else:
        handle = hostile.flight.prepare(f"UPDATE {BYSTANDER} SET note = ? WHERE id = -1")
        descriptor = prepared_update(handle)
    stream = huge_batch_stream(2**31 - 2, ("$1",))
    try:
        with unchanged(hostile):
            with rss_guard(hostile) as guard:
                expect_error(hostile, RE, hostile.flight.put, descriptor, stream, what=command, within=5)
            assert guard.peak_growth < 100 << 20, f"RSS grew by {guard.peak_growth >> 20} MiB"
    finally:
        hostile.settle()


# --- 3. Unbounded ingest ------------------------------------------------------------------

INGEST_MIB = 2048 if FULL else 300


@pytest.mark.parametrize("mebibytes", [INGEST_MIB], ids=[f"{INGEST_MIB}MiB"])
def test_a_large_ingest_streams_in_bounded_memory(hostile, mebibytes):
    """CommandStatementIngest of a large stream in 4 MiB batches (300 MiB by default,
    2 GiB with QUIVER_HOSTILE_FULL=1): it succeeds, every row is in the store, and the
    server's RSS (sampled every 100 ms) never grows by 256 MB or more — the server
    writes as it reads instead of buffering the stream."""
    table = "hostile_ingest"
    payload_bytes, rows_per_batch = 4000, 1000  # ~4 MiB per batch
    batches = (mebibytes << 20) // (payload_bytes * rows_per_batch)
    schema = pa.schema([("id", pa.int64()), ("payload", pa.string())])
    payload = pa.array(["p" * payload_bytes] * rows_per_batch, pa.string())
    client = flight.FlightClient(hostile.server.grpc_uri)
    descriptor = flight.FlightDescriptor.for_command(statement_ingest(table))
    try:
        with rss_guard(hostile, kill_above=6 << 30, interval=0.1) as guard:
            writer, reader = client.do_put(descriptor, schema)
            for i in range(batches):
                ids = pa.array(range(i * rows_per_batch, (i + 1) * rows_per_batch), pa.int64())
                writer.write_batch(pa.record_batch([ids, payload], schema=schema))
            writer.done_writing()
            result = reader.read()
            writer.close()
        hostile.assert_alive("the ingest")
        sent = batches * rows_per_batch
        assert pb_first(result.to_pybytes(), 1) == sent, "DoPutUpdateResult.record_count is the rows sent"
        assert hostile.store.count(table) == sent
        assert guard.peak_growth < 256 << 20, (
            f"RSS grew by {guard.peak_growth >> 20} MiB during a {mebibytes} MiB ingest (limit 256 MB)"
        )
    finally:
        client.close()
        hostile.revive("the ingest probe")
        with contextlib.suppress(Exception):
            hostile.flight.update(f"DROP TABLE {table}")
        hostile.settle()


# --- 4. Internal objects through Flight SQL ----------------------------------------------


def _leak_into_tasks(source: str, text_cast: str = "") -> str:
    return (
        f"INSERT INTO tasks ({TASK_COLUMNS}) SELECT (SELECT min(id) FROM features), "
        f"'LEAK-' || id || '-' || random(), coalesce(row_after{text_cast}, 'none'), 'todo', 3, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP "
        f"FROM {source}"
    )


EITHER = (PD, IA)  # refused as forbidden, or as a statement that is not an update
ALL_PATHS = ("adbc", "update", "prepared", "prepared-update")
TWO_PATHS = ("adbc", "update")
BOTH = object()  # the same statement on both backends

# The attacks, each in its SQLite and its PostgreSQL form:
# (id, SQLite statement, PostgreSQL statement, accepted codes (or {backend: codes}), paths)
INTERNAL_STATEMENTS = [
    ("clock-reset", "UPDATE _quiver_clock SET version = 0", BOTH, PD, ALL_PATHS),
    ("changes-delete", "DELETE FROM _quiver_changes", BOTH, PD, ALL_PATHS),
    ("commits-drop", "DROP TABLE _quiver_commits", BOTH, PD, ALL_PATHS),
    ("versions-update", "UPDATE _quiver_versions SET version = 0", BOTH, PD, TWO_PATHS),
    ("changes-select", "SELECT * FROM _quiver_changes", BOTH, PD, TWO_PATHS),
    ("changes-delete-uppercase", "DELETE FROM _QUIVER_CHANGES", BOTH, PD, TWO_PATHS),
    ("changes-delete-comment", "DELETE FROM/**/_quiver_changes", BOTH, PD, TWO_PATHS),
    (
        "changes-into-tasks",
        _leak_into_tasks("_quiver_changes"),
        _leak_into_tasks("_quiver._quiver_changes", "::text"),
        PD,
        ALL_PATHS,
    ),
    (
        "changes-into-tasks-other-schema",
        _leak_into_tasks("main._quiver_changes"),
        _leak_into_tasks("public._quiver_changes", "::text"),
        PD,
        TWO_PATHS,
    ),
    (
        "qualified-clock-reset",
        "UPDATE main._quiver_clock SET version = 0",
        "UPDATE _quiver._quiver_clock SET version = 0",
        PD,
        ALL_PATHS,
    ),
    (
        "other-qualified-clock-reset",
        'UPDATE "main"."_quiver_clock" SET version = 0',
        "UPDATE public._quiver_clock SET version = 0",
        PD,
        TWO_PATHS,
    ),
    (
        "quoted-changes-delete",
        "DELETE FROM [_quiver_changes]",
        'DELETE FROM "_quiver"."_quiver_changes"',
        PD,
        TWO_PATHS,
    ),
    (
        "quoted-commits-delete",
        "DELETE FROM `_quiver_commits`",
        'DELETE FROM "public"."_quiver_commits"',
        PD,
        TWO_PATHS,
    ),
    (
        "quoted-other-case",
        'DELETE FROM "_QUIVER_CHANGES"',
        'DELETE FROM _quiver."_quiver_changes"',
        PD,
        TWO_PATHS,
    ),
    (
        "qualified-commits-drop",
        "DROP TABLE main._quiver_commits",
        "DROP TABLE _quiver._quiver_commits",
        PD,
        TWO_PATHS,
    ),
    (
        "qualified-select",
        "SELECT * FROM main._quiver_commits",
        "SELECT * FROM _quiver._quiver_commits",
        PD,
        TWO_PATHS,
    ),
    (
        "capture-off",
        "UPDATE temp._quiver_txn SET capture = 0",
        "SET quiver.capture = 'off'",
        {"sqlite": PD, "postgres": EITHER},
        ALL_PATHS,
    ),
    (
        "capture-state-rewound",
        "UPDATE temp._quiver_txn SET version = 0",
        "SELECT set_config('quiver.capture', 'off', false)",
        {"sqlite": PD, "postgres": EITHER},
        TWO_PATHS,
    ),
    (
        "capture-tampered-by-a-write",
        "CREATE TRIGGER hostile_trg AFTER INSERT ON tasks BEGIN DELETE FROM _quiver_changes; END",
        f"INSERT INTO tasks ({TASK_COLUMNS}) SELECT (SELECT min(id) FROM features), "
        "'UNLOGGED-' || set_config('quiver.capture', 'off', true) || random(), 'x', 'todo', 3, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP",
        PD,
        ALL_PATHS,
    ),
    (
        "capture-trigger-dropped",
        "DROP TRIGGER temp._quiver_capture_insert_tasks",
        "DROP TRIGGER _quiver_capture_insert ON tasks",
        PD,
        ALL_PATHS,
    ),
    (
        "capture-triggers-disabled",
        "DROP TRIGGER temp._quiver_capture_update_tasks",
        "ALTER TABLE tasks DISABLE TRIGGER ALL",
        PD,
        ALL_PATHS,
    ),
    (
        "capture-trigger-disabled",
        "DROP TRIGGER IF EXISTS temp._quiver_capture_delete_tasks",
        "ALTER TABLE tasks DISABLE TRIGGER _quiver_capture_insert",
        PD,
        TWO_PATHS,
    ),
    (
        "connection-setting",
        "PRAGMA foreign_keys = OFF",
        "SET session_replication_role = replica",
        EITHER,
        ALL_PATHS,
    ),
    (
        "connection-setting-other",
        "PRAGMA writable_schema = ON",
        "SELECT set_config('session_replication_role', 'replica', false)",
        EITHER,
        TWO_PATHS,
    ),
    (
        "attach-or-drop-schema",
        "ATTACH DATABASE ':memory:' AS hostile_x",
        "DROP SCHEMA _quiver CASCADE",
        {"sqlite": EITHER, "postgres": PD},
        TWO_PATHS,
    ),
    (
        "temp-table-or-code-block",
        "CREATE TEMP TABLE hostile_t (x)",
        "DO $$ BEGIN PERFORM set_config('quiver.capture', 'off', false); END $$",
        {"sqlite": PD, "postgres": EITHER},
        TWO_PATHS,
    ),
]

INTERNAL_CASES = [
    pytest.param({"sqlite": sqlite_sql, "postgres": sqlite_sql if pg_sql is BOTH else pg_sql}, codes, path, id=f"{name}-{path}")
    for name, sqlite_sql, pg_sql, codes, paths in INTERNAL_STATEMENTS
    for path in paths
]


def store_execute(target: Target, sql: str):
    """Runs `sql` on the store directly, outside Quiver (repairs after a probe the
    server did not refuse)."""
    if target.kind == "sqlite":
        conn = sqlite3.connect(target.server.db_path, timeout=30)
        try:
            conn.executescript(sql)
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(target.database.url, autocommit=True) as conn:
            conn.execute(sql)


def heal(target: Target, why: str):
    """Undoes what an unrefused internal-object probe may have broken, so the next
    probe meets a working server: with the server stopped, removes the probes' own
    objects, re-enables triggers and moves the clock back up to the last commit; the
    restart then opens fresh connections and reinstalls the change log's tables and
    capture triggers."""
    target.deaths.append(f"healed: {why}")
    target.stop()
    clock, commits = internal(target.store, "_quiver_clock"), internal(target.store, "_quiver_commits")
    repairs = [
        "DROP VIEW IF EXISTS hostile_view",
        f"UPDATE {clock} SET version = (SELECT max(version) FROM {commits}) "
        f"WHERE version < (SELECT coalesce(max(version), 0) FROM {commits})",
    ]
    if target.kind == "postgres":
        repairs += ["ALTER TABLE tasks ENABLE TRIGGER ALL"]
    else:
        repairs += ["DROP TRIGGER IF EXISTS hostile_trg"]
    for sql in repairs:
        with contextlib.suppress(Exception):
            store_execute(target, sql)
    target.start()


UPDATE_KEYWORDS = {"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "TRUNCATE", "CREATE", "DROP", "ALTER"}


def runs_as_update(sql: str) -> bool:
    """Whether a statement is DML or DDL by its first keyword (not a query, PRAGMA,
    SET, ATTACH or code block)."""
    return sql.split(None, 1)[0].upper() in UPDATE_KEYWORDS


def run_statement(target: Target, sql: str, path: str):
    """Sends `sql` by one path a Flight SQL client has: ADBC's cursor.execute
    (GetFlightInfo of CommandStatementQuery), a CommandStatementUpdate DoPut, or a
    prepared statement then run by GetFlightInfo or by a DoPut update."""
    if path == "adbc":
        cursor = target.adbc.cursor()
        try:
            cursor.execute(sql)
            return cursor.rowcount
        finally:
            cursor.close()
    if path == "update":
        return target.flight.update(sql)
    handle = target.flight.prepare(sql)
    if path == "prepared":
        return target.flight.get_flight_info(prepared_query(handle))
    return target.flight.put(prepared_update(handle))


@pytest.mark.parametrize("statements,codes,path", INTERNAL_CASES)
def test_internal_objects_are_off_limits(hostile, statements, codes, path):
    """A client statement that reads or writes Quiver's change log, clock, commits,
    versions or idempotency records, its capture triggers, the `_quiver` schema, or
    switches capture off (PRAGMA, ATTACH, TEMP objects on SQLite's shared writer;
    set_config / SET / session_replication_role / DISABLE TRIGGER on PostgreSQL):
    PERMISSION_DENIED (INVALID_ARGUMENT where it is not run as an update), nothing
    changed, and the next Mutations insert is captured under the next version."""
    sql = statements[hostile.kind]
    codes = as_codes(codes[hostile.kind] if isinstance(codes, dict) else codes)
    if path in ("update", "prepared-update") and not runs_as_update(sql):
        codes = tuple(dict.fromkeys(codes + (IA,)))  # may be refused as not an update
    refused = False
    try:
        with unchanged(hostile):
            if path == "adbc":
                expect_adbc_error(hostile, codes, run_statement, hostile, sql, path, what=f"{path}: {sql[:60]}")
            else:
                expect_error(hostile, codes, run_statement, hostile, sql, path, what=f"{path}: {sql[:60]}")
            refused = True
        assert_capture_works(hostile, "internal")
    finally:
        if not refused:
            heal(hostile, f"{sql[:40]} was not refused")


def test_a_view_over_internal_records_reads_nothing(hostile):
    """`CREATE VIEW … AS SELECT * FROM _quiver_idempotency`: refused
    (PERMISSION_DENIED), or, if the view is created anyway, reading it through the
    server returns no internal row."""
    m = hostile.mutations
    m.insert(BYSTANDER, [{"id": next(ROW_IDS), "note": "idem"}], idempotency_key=f"hostile-view-{time.time_ns()}")
    source = "_quiver_idempotency" if hostile.kind == "sqlite" else internal(hostile.store, "_quiver_idempotency")
    created = False
    try:
        try:
            hostile.flight.update(f"CREATE VIEW hostile_view AS SELECT * FROM {source}")
            created = True
        except grpc.RpcError as error:
            hostile.assert_alive()
            check_status(error.code(), error.details(), PD, "CREATE VIEW over _quiver_idempotency")
            return
        try:
            table = hostile.flight.query("SELECT * FROM hostile_view")
        except grpc.RpcError as error:
            check_status(error.code(), error.details(), (PD, IA, NF), "SELECT from the view")
            return
        assert table.num_rows == 0, f"the view leaks {table.num_rows} idempotency records"
    finally:
        if created:
            with contextlib.suppress(Exception):
                hostile.flight.update("DROP VIEW hostile_view")


def test_forged_idempotency_records_do_not_capture_a_key(hostile):
    """A client inserts an idempotency record for a key a victim is about to use
    (every write path it has): refused, and the victim's Insert with that key is
    applied (`replayed` false), not answered with the forgery."""
    key = f"victim-{time.monotonic_ns()}"
    now = int(time.time() * 1_000_000)
    blob = "X'00'" if hostile.kind == "sqlite" else "'\\x00'::bytea"
    for name in ["_quiver_idempotency"] + (
        [f"{internal_schema(hostile.store)}._quiver_idempotency"] if hostile.kind == "postgres" else []
    ):
        sql = (
            f"INSERT INTO {name} (idempotency_key, request_hash, response, created_at) "
            f"VALUES ('{key}', 'forged', {blob}, {now})"
        )
        for path in ("adbc", "update"):
            try:
                with unchanged(hostile):
                    if path == "adbc":
                        expect_adbc_error(hostile, PD, run_statement, hostile, sql, path, what=f"{path}: forge")
                    else:
                        expect_error(hostile, PD, run_statement, hostile, sql, path, what=f"{path}: forge")
            except AssertionError:
                heal(hostile, "forged idempotency record")
                raise
    row_id = next(ROW_IDS)
    response = hostile.mutations.insert(BYSTANDER, [{"id": row_id, "note": "victim"}], idempotency_key=key)
    assert not response.replayed, "the victim's call was answered with a forged record"
    assert response.affected_rows == 1
    assert hostile.store.count(BYSTANDER, f"id = {row_id}") == 1


# --- 5. Transaction hijack ----------------------------------------------------------------


def derived_ids(transaction_id: bytes) -> list[bytes]:
    """Ids a guesser derives from one it knows: neighbours of the last byte and of a
    trailing number, a flipped first byte, truncated, extended, other case."""
    t = transaction_id
    out = [
        t[:-1] + bytes([(t[-1] + 1) % 256]),
        t[:-1] + bytes([(t[-1] - 1) % 256]),
        bytes([t[0] ^ 1]) + t[1:],
        t[:-1],
        t + b"0",
        t.upper(),
        t.lower(),
    ]
    digits = len(t) - len(t.rstrip(b"0123456789"))
    if digits:
        number = int(t[-digits:])
        for delta in (1, -1, 2, -2):
            if number + delta >= 0:
                out.append(t[:-digits] + str(number + delta).encode())
    return [candidate for candidate in dict.fromkeys(out) if candidate and candidate != t]


def test_another_connection_cannot_end_or_use_a_transaction(hostile):
    """Client A begins a transaction and writes a row; client B (its own connection)
    tries EndTransaction commit and rollback with A's id and with ids derived from it,
    and an update, a query and a prepared statement inside A's transaction: all
    NOT_FOUND. A's transaction still works and commits, and its rows are visible."""
    a, b = hostile.other_flight(), hostile.other_flight()
    store = hostile.store
    try:
        transaction = a.begin()
        row_id = next(ROW_IDS)
        a.update(f"INSERT INTO {BYSTANDER} (id, note) VALUES ({row_id}, 'A')", transaction)
        assert store.count(BYSTANDER, f"id = {row_id}") == 0, "A's row is not visible before commit"
        own = b.begin()
        guesses = [transaction] + [g for g in derived_ids(transaction) + derived_ids(own) if g != own]
        for guess in dict.fromkeys(guesses):
            for action, name in ((COMMIT, "commit"), (ROLLBACK, "rollback")):
                expect_error(hostile, NF, b.end, guess, action, what=f"B {name}s {guess!r}")
        expect_error(
            hostile, NF, b.update, f"UPDATE {BYSTANDER} SET note = 'B' WHERE id = {row_id}", transaction, what="B updates in A's"
        )
        expect_error(hostile, NF, b.query, "SELECT 1 AS x", transaction, what="B queries in A's")
        expect_error(hostile, NF, b.prepare, "SELECT 1 AS x", transaction, what="B prepares in A's")
        b.end(own, ROLLBACK)

        a.update(f"UPDATE {BYSTANDER} SET note = 'A2' WHERE id = {row_id}", transaction)
        clock = store_clock(store)
        a.end(transaction, COMMIT)
        assert store.rows(f"SELECT note FROM {BYSTANDER} WHERE id = {row_id}") == [("A2",)]
        assert store_clock(store) == clock + 1
        assert [op for _, op, _ in changes_of_version(store, clock + 1)] == ["insert", "update"]
    finally:
        a.close()
        b.close()


def test_a_transaction_id_cannot_be_guessed_from_ones_own(hostile):
    """Client A (ADBC, autocommit off) writes in its transaction; B begins one of its
    own and tries to commit the ids next to it. None exists (NOT_FOUND), and A's
    commit still succeeds."""
    conn = flight_sql.connect(hostile.server.grpc_uri, autocommit=False)
    b = hostile.other_flight()
    store = hostile.store
    try:
        row_id = next(ROW_IDS)
        cursor = conn.cursor()
        cursor.execute(f"INSERT INTO {BYSTANDER} (id, note) VALUES ({row_id}, 'adbc')")
        own = b.begin()
        for guess in derived_ids(own):
            expect_error(hostile, NF, b.end, guess, COMMIT, what=f"B commits {guess!r}")
        b.end(own, ROLLBACK)
        conn.commit()
        cursor.close()
        assert store.count(BYSTANDER, f"id = {row_id}") == 1
    finally:
        b.close()
        conn.close()


def common_prefix(x: bytes, y: bytes) -> int:
    n = 0
    for p, q in zip(x, y):
        if p != q:
            break
        n += 1
    return n


def test_transaction_ids_are_random(hostile):
    """Flight transaction ids carry 128 random bits: at least 16 bytes, and no two
    share more than a few leading bytes (a counter or a per-process seed would)."""
    clients = [hostile.other_flight() for _ in range(3)]
    ids = []
    try:
        for _ in range(3):
            for client in clients:
                ids.append((client, client.begin()))
        values = [transaction for _, transaction in ids]
        assert len(set(values)) == len(values)
        for value in values:
            assert len(value) >= 16, f"transaction id {value!r} is {len(value)} bytes"
        longest = max(common_prefix(x, y) for x, y in itertools.combinations(values, 2))
        assert longest <= 8, f"transaction ids share a {longest}-byte prefix: {values[:3]}"
    finally:
        for client, transaction in ids:
            with contextlib.suppress(Exception):
                client.end(transaction, ROLLBACK)
        for client in clients:
            client.close()


# --- 6. Values that poison a table --------------------------------------------------------

# (id, column, Value fields): refused on both backends.
POISON_VALUES = [
    ("ts-before-year-0", "ts", {"timestamp_micros": -62167219200000001}),
    ("ts-after-year-9999", "ts", {"timestamp_micros": 253402300800000000}),
    ("ts-i64-min", "ts", {"timestamp_micros": -(2**63)}),
    ("ts-i64-max", "ts", {"timestamp_micros": 2**63 - 1}),
    ("ts-text-year-99999", "ts", {"string": "99999-01-01 00:00:00"}),
    ("date-before-year-0", "d", {"date_days": -719529}),
    ("date-after-year-9999", "d", {"date_days": 2932897}),
    ("date-i32-min", "d", {"date_days": -(2**31)}),
    ("date-i32-max", "d", {"date_days": 2**31 - 1}),
    ("date-text-invalid", "d", {"string": "2025-13-45"}),
    ("text-into-integer", "n", {"string": "abc"}),
    ("text-into-real", "r", {"string": "abc"}),
    ("bytes-into-integer", "n", {"bytes": b"\x00\xff"}),
]

# Values only one backend's types make poison: (id, column, Value fields).
BACKEND_POISON_VALUES = {
    "sqlite": [("nan-into-real", "r", {"double": math.nan})],
    "postgres": [
        ("uuid-non-ascii", "u", {"string": "é" * 16}),
        ("uuid-malformed", "u", {"string": "not-a-uuid"}),
        ("decimal-garbage", "dec", {"decimal": "abc"}),
        ("decimal-huge-exponent", "dec", {"decimal": "1e999999"}),
        ("decimal-out-of-range", "dec", {"decimal": "123456789012.50"}),
    ],
}


def poison_rows(target: Target):
    return target.store.rows(f"SELECT id, label FROM {POISON} ORDER BY id")


def assert_readable(target: Target, table: str = POISON):
    """`SELECT * FROM table` works for every client: raw Flight, ADBC and HTTP."""
    target.flight.query(f"SELECT * FROM {table}")
    cursor = target.adbc.cursor()
    try:
        cursor.execute(f"SELECT * FROM {table}")
        cursor.fetch_arrow_table()
    finally:
        cursor.close()
    response = post_query(target, f"SELECT * FROM {table}")
    assert response.status_code == 200, f"HTTP read of {table}: {response.status_code} {response.text[:300]}"


def repair_poison(target: Target):
    """Puts hostile_poison back to its seed row, directly on the store."""
    store_execute(
        target,
        f"DELETE FROM {POISON} WHERE id <> 1; UPDATE {POISON} SET ts = '2025-01-01 00:00:00', d = '2025-01-01', "
        f"r = 1.5, n = 7, label = 'seed' WHERE id = 1",
    )


def refuse_poison(target: Target, rpc: str, column: str, value: dict, row_id: int = 1000):
    """Inserts (a new row) or sets (on the seed row) one typed value that must be
    refused with INVALID_ARGUMENT, changing nothing; the table stays readable. Repairs
    the table when the value got in."""
    m, pb = target.mutations, target.mpb
    poisoned = pb.Value(**value)
    seed = poison_rows(target)
    try:
        with unchanged(target):
            if rpc == "insert":
                row = pb.Row(values={"id": pb.Value(int64=row_id), column: poisoned})
                request = pb.InsertRequest(table=POISON, rows=pb.Rows(rows=[row]))
                expect_error(target, IA, m.stub.Insert, request, timeout=30, what="Insert")
            else:
                request = pb.UpdateRequest(table=POISON, where=m.keys([{"id": 1}]), set=pb.Row(values={column: poisoned}))
                expect_error(target, IA, m.stub.Update, request, timeout=30, what="Update")
        assert poison_rows(target) == seed
        assert_readable(target)
    except AssertionError:
        target.revive("a poison probe")
        repair_poison(target)
        raise


# Values PostgreSQL's own types hold (it keeps dates and timestamps from 4714 BC to
# beyond year 294,000): there they must be stored and read back exactly, not refused.
POSTGRES_HOLDS = {"ts-before-year-0", "ts-after-year-9999", "ts-i64-max", "date-before-year-0", "date-after-year-9999"}


def store_and_read_back(target: Target, rpc: str, column: str, value: dict, row_id: int = 1000):
    """Inserts or sets one typed value the store holds: it must commit and read back
    through Flight SQL as exactly what was sent."""
    m, pb = target.mutations, target.mpb
    try:
        if rpc == "insert":
            row = pb.Row(values={"id": pb.Value(int64=row_id), column: pb.Value(**value)})
            m.stub.Insert(pb.InsertRequest(table=POISON, rows=pb.Rows(rows=[row])), timeout=30)
        else:
            row_id = 1
            request = pb.UpdateRequest(
                table=POISON, where=m.keys([{"id": 1}]), set=pb.Row(values={column: pb.Value(**value)})
            )
            m.stub.Update(request, timeout=30)
        table = target.flight.query(f"SELECT {column} FROM {POISON} WHERE id = {row_id}")
        [read] = table.column(column).cast(pa.int64() if column == "ts" else pa.int32()).to_pylist()
        expected = value.get("timestamp_micros", value.get("date_days"))
        assert read == expected, f"{column}: sent {expected}, read back {read}"
        assert_readable(target)
    finally:
        repair_poison(target)


@pytest.mark.parametrize("rpc", ["insert", "update"])
@pytest.mark.parametrize(
    "name,column,value", [pytest.param(n, c, v, id=n) for n, c, v in POISON_VALUES]
)
def test_values_that_would_poison_a_table_are_refused(hostile, name, column, value, rpc):
    """Typed Mutations values no reader could read back as the column's type
    (timestamps and dates outside what the store holds, as numbers or text, text or
    bytes into numbers), inserted or set: INVALID_ARGUMENT (never INTERNAL or
    CANCELLED), nothing stored, and the table stays readable for every client. A value
    PostgreSQL's types do hold (years before 0 or after 9999) is stored there and reads
    back exactly."""
    if hostile.kind == "postgres" and name in POSTGRES_HOLDS:
        store_and_read_back(hostile, rpc, column, value)
    else:
        refuse_poison(hostile, rpc, column, value)


@pytest.mark.parametrize("rpc", ["insert", "update"])
def test_backend_specific_poison_values_are_refused(hostile, rpc):
    """The values only one backend's types make poison, each checked like the common
    ones: NaN into SQLite's REAL; non-ASCII and malformed text for a PostgreSQL uuid,
    garbage, huge and out-of-range decimals for numeric(10, 2). On PostgreSQL, whose
    double precision holds NaN, a NaN is stored and reads back as NaN."""
    failures = []
    for name, column, value in BACKEND_POISON_VALUES[hostile.kind]:
        try:
            refuse_poison(hostile, rpc, column, value)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    if hostile.kind == "postgres":
        m, pb = hostile.mutations, hostile.mpb
        nan = pb.Value(double=math.nan)
        row_id = 901 if rpc == "insert" else 1
        try:
            if rpc == "insert":
                row = pb.Row(values={"id": pb.Value(int64=row_id), "r": nan})
                m.stub.Insert(pb.InsertRequest(table=POISON, rows=pb.Rows(rows=[row])), timeout=30)
            else:
                request = pb.UpdateRequest(table=POISON, where=m.keys([{"id": 1}]), set=pb.Row(values={"r": nan}))
                m.stub.Update(request, timeout=30)
        except grpc.RpcError as error:  # PostgreSQL may take NaN; refusing it is allowed too
            hostile.assert_alive("NaN")
            check_status(error.code(), error.details(), IA, "NaN into double precision")
        else:
            try:
                [value] = hostile.flight.query(f"SELECT r FROM {POISON} WHERE id = {row_id}").column("r").to_pylist()
                if not math.isnan(value):
                    failures.append(f"NaN read back as {value!r}")
                assert_readable(hostile)
            finally:
                repair_poison(hostile)
    assert not failures, "\n".join(failures)


def test_boundary_timestamps_and_dates_are_accepted(hostile):
    """The last representable moment and day of year 9999 are legitimate values."""
    m = hostile.mutations
    pb = hostile.mpb
    row = pb.Row(
        values={
            "id": pb.Value(int64=900),
            "ts": pb.Value(timestamp_micros=253402300799999999),
            "d": pb.Value(date_days=2932896),
        }
    )
    m.stub.Insert(pb.InsertRequest(table=POISON, rows=pb.Rows(rows=[row])), timeout=30)
    try:
        table = hostile.flight.query(f"SELECT ts, d FROM {POISON} WHERE id = 900")
        [[ts, d]] = [list(r.values()) for r in table.to_pylist()]
        assert (ts.year, ts.month, ts.day, ts.microsecond) == (9999, 12, 31, 999999)
        assert (d.year, d.month, d.day) == (9999, 12, 31)
        assert_readable(hostile)
    finally:
        m.delete(POISON, m.keys([{"id": 900}]))


# Flight SQL writes of values the reader cannot read back: raw DML on SQLite (any value
# fits any column there), malformed uuid/decimal parameters bound to a prepared INSERT
# on PostgreSQL. (id, SQL, parameter values or None, whether storing it is also
# acceptable provided every client can still read the table)
FLIGHT_POISON_WRITES = {
    "sqlite": [
        ("timestamp-year-99999", f"INSERT INTO {POISON} (id, ts) VALUES (99, '99999-01-01')", None, False),
        ("text-into-real", f"UPDATE {POISON} SET r = 'abc' WHERE id = 1", None, False),
        ("text-into-date", f"UPDATE {POISON} SET d = 'not a date' WHERE id = 1", None, False),
        ("blob-into-integer", f"UPDATE {POISON} SET n = x'00ff' WHERE id = 1", None, False),
        ("text-parameter-into-real", f"UPDATE {POISON} SET r = ? WHERE id = 1", ["abc"], False),
    ],
    "postgres": [
        ("uuid-parameter-malformed", f"INSERT INTO {POISON} (id, u) VALUES (902, ?)", ["zzz"], False),
        ("uuid-parameter-non-ascii", f"INSERT INTO {POISON} (id, u) VALUES (902, ?)", ["é" * 16], False),
        ("decimal-parameter-garbage", f"INSERT INTO {POISON} (id, dec) VALUES (902, ?)", ["abc"], False),
        ("decimal-parameter-huge-exponent", f"INSERT INTO {POISON} (id, dec) VALUES (902, ?)", ["1e999999"], False),
        ("decimal-parameter-nan", f"INSERT INTO {POISON} (id, dec) VALUES (902, ?)", ["NaN"], True),
    ],
}


def write_through_flight(target: Target, sql: str, params, path: str):
    """A DML statement through ADBC (cursor.execute, with parameters bound) or a raw
    Flight DoPut (CommandStatementUpdate, or a prepared update with a parameter batch)."""
    if path == "adbc":
        cursor = target.adbc.cursor()
        try:
            cursor.execute(sql, params) if params else cursor.execute(sql)
            return cursor.rowcount
        finally:
            cursor.close()
    if params is None:
        return target.flight.update(sql)
    batch = pa.record_batch([pa.array(params, pa.string())], names=["$1"])
    return target.flight.put(prepared_update(target.flight.prepare(sql)), ipc_stream([batch]))


@pytest.mark.parametrize("path", ["adbc", "raw"])
def test_flight_writes_cannot_poison_a_table(hostile, path):
    """Flight SQL DML that would store a value no reader reads back as the column's
    type (SQLite: raw DML of text into REAL/DATE, a year-99999 timestamp, a blob into
    INTEGER; PostgreSQL: malformed uuid and decimal parameters, a NaN for numeric(10, 2),
    which no Decimal128 holds): INVALID_ARGUMENT, nothing stored, the table readable for every client."""
    failures = []
    for name, sql, params, may_store in FLIGHT_POISON_WRITES[hostile.kind]:
        seed = hostile.store.rows(f"SELECT id, label FROM {POISON} ORDER BY id")
        try:
            if may_store:
                try:
                    write_through_flight(hostile, sql, params, path)
                except grpc.RpcError as error:
                    hostile.assert_alive(name)
                    check_status(error.code(), error.details(), IA, name)
                except adbc_driver_manager.Error as error:
                    hostile.assert_alive(name)
                    code, message = adbc_code(error)
                    check_status(code, message, IA, name)
                assert_readable(hostile)
                repair_poison(hostile)
                continue
            with unchanged(hostile):
                if path == "adbc":
                    expect_adbc_error(hostile, IA, write_through_flight, hostile, sql, params, path, what=name)
                else:
                    expect_error(hostile, IA, write_through_flight, hostile, sql, params, path, what=name)
            assert hostile.store.rows(f"SELECT id, label FROM {POISON} ORDER BY id") == seed
            assert_readable(hostile)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
            hostile.revive("a poison probe")
            repair_poison(hostile)
    assert not failures, "\n".join(failures)


# --- 7. Work that outlives its client ------------------------------------------------------


def latency_sampler(target: Target, path: str) -> Sampler:
    session = requests.Session()
    url = target.http(path)

    def probe():
        started = time.monotonic()
        response = session.get(url, timeout=5)
        elapsed = time.monotonic() - started
        assert response.status_code == 200, f"GET {path}: {response.status_code}"
        return elapsed

    return Sampler(probe, 0.05)


def assert_abandoned_work_stops(target: Target, start_and_abandon):
    """Runs `start_and_abandon()` (starts the heavy aggregate and returns once its
    client is gone, after ~0.5 s) while /healthz and /readyz are sampled every 50 ms:
    the aggregate was working, the server's CPU drops below 20% of a core within 1 s
    of the client leaving, and both endpoints always answered within 50 ms."""
    pid = target.pid
    with latency_sampler(target, "/healthz") as health, latency_sampler(target, "/readyz") as ready:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        start_and_abandon()
        gone = time.monotonic()
        working = (cpu_seconds(pid) - cpu_before) / (gone - started)
        time.sleep(max(0.0, gone + 1.0 - time.monotonic()))
        after = cpu_share(pid, 1.0)
        time.sleep(0.2)
    target.assert_alive("the abandoned aggregate")
    assert working > 0.3, f"the aggregate did not load the server ({working:.0%} of a core): recalibrate HEAVY_SQL"
    assert after < 0.2, f"the server still uses {after:.0%} of a core 1 s after the client left"
    for name, sampler in (("/healthz", health), ("/readyz", ready)):
        assert not sampler.errors, f"{name} failed while the aggregate ran: {sampler.errors[:3]}"
        assert sampler.samples, f"{name} was never sampled"
        slowest = max(sampler.values())
        assert slowest < 0.05, f"{name} took {slowest * 1000:.0f} ms while the aggregate ran"


@pytest.mark.parametrize("size", ["full" if FULL else "reduced"])
def test_an_abandoned_flight_query_stops(hostile, size):
    """The heavy aggregate over pyarrow Flight with a 0.5 s client deadline: the
    server stops working on it once the client is gone, and stays responsive."""
    client = flight.FlightClient(hostile.server.grpc_uri)

    def start_and_abandon():
        info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(HEAVY_SQL)))
        options = flight.FlightCallOptions(timeout=0.5)
        with pytest.raises((flight.FlightTimedOutError, flight.FlightCancelledError)):
            client.do_get(info.endpoints[0].ticket, options=options).read_all()

    try:
        assert_abandoned_work_stops(hostile, start_and_abandon)
    finally:
        client.close()
        hostile.settle()


@pytest.mark.parametrize("size", ["full" if FULL else "reduced"])
def test_an_abandoned_http_query_stops(hostile, size):
    """The heavy aggregate over POST /v1/query, the connection closed after 0.5 s: the
    server stops working on it, and stays responsive."""
    body = json.dumps({"sql": HEAVY_SQL}).encode()
    try:
        assert_abandoned_work_stops(
            hostile, lambda: abandoned_http_post(hostile.server.http_addr, "/v1/query", body, after=0.5)
        )
    finally:
        hostile.settle()


# --- 8. Cheap requests that cost a lot -----------------------------------------------------


def test_a_subscription_naming_one_table_300000_times(hostile):
    """Subscribe with `tasks` named 300,000 times (2 MB): RESOURCE_EXHAUSTED (over
    max_subscription_tables) within 2 s."""
    request = hostile.spb.SubscribeRequest(tables=["tasks"] * 300_000).SerializeToString()
    try:
        with unchanged(hostile):
            expect_stream_error(
                hostile, RE, hostile.server_stream("/quiver.v1.Subscriptions/Subscribe"), request, "Subscribe", 2, 10
            )
    finally:
        hostile.settle()


def test_an_apply_of_300000_deletes(hostile):
    """Apply with 300,000 predicate deletes (9 MB): RESOURCE_EXHAUSTED (over
    max_mutation_operations) within 2 s."""
    pb = hostile.mpb
    delete = pb.Operation(delete=pb.DeleteRequest(table=BYSTANDER, where=pb.Selector(predicate="id = -1")))
    request = pb.ApplyRequest(operations=[delete] * 300_000)
    try:
        with unchanged(hostile):
            expect_error(hostile, RE, hostile.mutations.stub.Apply, request, timeout=10, what="Apply", within=2)
    finally:
        hostile.settle()


TWENTY_MB_IN = in_list_of_bytes(20 << 20)


@pytest.mark.parametrize("surface", ["flight-query", "delete", "subscribe"])
def test_a_20mb_in_list(hostile, surface):
    """A 20 MB `id IN (…)` as a Flight SQL query, a Mutations predicate and a
    Subscriptions filter: RESOURCE_EXHAUSTED (over max_statement_kb) within 2 s, the
    message at most 1 KiB."""
    m = hostile.mutations
    try:
        with unchanged(hostile):
            if surface == "flight-query":
                query = statement_query(f"SELECT id FROM tasks WHERE {TWENTY_MB_IN}")
                expect_error(hostile, RE, hostile.flight.get_flight_info, query, 10, what="GetFlightInfo", within=2)
            elif surface == "delete":
                request = m.delete_request("tasks", m.predicate(TWENTY_MB_IN))
                expect_error(hostile, RE, m.stub.Delete, request, timeout=10, what="Delete", within=2)
            else:
                request = hostile.spb.SubscribeRequest(tables=["tasks"], filter=TWENTY_MB_IN).SerializeToString()
                expect_stream_error(
                    hostile,
                    RE,
                    hostile.server_stream("/quiver.v1.Subscriptions/Subscribe"),
                    request,
                    "Subscribe",
                    within=2,
                    timeout=10,
                )
    finally:
        hostile.settle()


def test_an_in_list_over_the_bind_parameter_limit(hostile):
    """A Mutations predicate `id IN (-1, …, -70000)` (550 KB, under the size limit, flat)
    needs more bind parameters than the store takes (PostgreSQL 65,535; SQLite
    32,766): RESOURCE_EXHAUSTED, nothing run."""
    m = hostile.mutations
    predicate = in_list(70_000, sign=-1)
    assert len(predicate) < 1024 * 1024
    try:
        with unchanged(hostile):
            expect_error(hostile, RE, m.delete, "tasks", m.predicate(predicate), what="Delete")
            expect_error(hostile, RE, m.update, "tasks", m.predicate(predicate), {"priority": 1}, what="Update")
    finally:
        hostile.settle()


# --- 9. Codes ----------------------------------------------------------------------------


MUTATION_METHODS = ["Insert", "Update", "Delete", "Upsert", "Apply"]
GARBAGE = {
    "invalid-varint": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    "invalid-utf8": b"\x0a\x02\xff\xfe",
    "wrong-wire-type": b"\x08\x01",
    "length-past-end": b"\x0a\xff\xff\xff\x0f",
    "random": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
@pytest.mark.parametrize("method", MUTATION_METHODS + ["Subscribe"])
def test_garbage_protobuf_is_invalid_argument(hostile, method, garbage):
    """Bytes that are not the request message, as the body of every Mutations RPC and
    of Subscribe: INVALID_ARGUMENT (not INTERNAL), nothing changed."""
    body = GARBAGE[garbage]
    with unchanged(hostile):
        if method == "Subscribe":
            stream = hostile.server_stream("/quiver.v1.Subscriptions/Subscribe")
            expect_stream_error(hostile, IA, stream, body, f"Subscribe({garbage})")
        else:
            call = hostile.unary(f"/quiver.v1.Mutations/{method}")
            expect_error(hostile, IA, call, body, timeout=20, what=f"{method}({garbage})")


def test_a_request_over_the_message_limit(small):
    """With --max-message-size-mb 4, a 5 MiB Mutations request, Subscribe request and
    Flight GetFlightInfo: RESOURCE_EXHAUSTED."""
    pb, spb = small.mpb, small.spb
    blob = "x" * (5 << 20)
    insert = pb.InsertRequest(table="tasks", rows=pb.Rows(arrow_ipc=blob.encode()))
    with unchanged(small):
        expect_error(small, RE, small.mutations.stub.Insert, insert, timeout=30, what="Insert of 5 MiB")
        subscribe = spb.SubscribeRequest(tables=["tasks"], filter=blob).SerializeToString()
        expect_stream_error(small, RE, small.server_stream("/quiver.v1.Subscriptions/Subscribe"), subscribe, "Subscribe")
        query = statement_query(f"SELECT 1 AS x -- {blob}")
        expect_error(small, RE, small.flight.get_flight_info, query, what="GetFlightInfo of 5 MiB")


@pytest.mark.parametrize(
    "method,path,kwargs,statuses,code",
    [
        ("post", "/v1/query", {"data": b'{"sql": ', "headers": {"Content-Type": "application/json"}}, 400, "INVALID_ARGUMENT"),
        ("post", "/v1/query", {"json": {"sql": 5}}, 422, "INVALID_ARGUMENT"),
        ("post", "/v1/query", {"json": {"query": "SELECT 1"}}, 422, "INVALID_ARGUMENT"),
        ("post", "/v1/query", {"json": {"sql": "SELECT 1 AS x -- " + "x" * (10 << 20)}}, 413, "RESOURCE_EXHAUSTED"),
        ("get", "/nope", {}, 404, "NOT_FOUND"),
        ("delete", "/v1/query", {}, 405, None),
        ("get", "/v1/query", {}, 405, None),
        ("post", "/v1/query", {"json": {"sql": "SELEC 1"}}, 400, "INVALID_ARGUMENT"),
        ("post", "/v1/query", {"json": {"sql": "SELECT * FROM hostile_missing"}}, (404, 400), ("NOT_FOUND", "INVALID_ARGUMENT")),
    ],
    ids=[
        "invalid-json",
        "sql-not-a-string",
        "sql-missing",
        "10MB-body",
        "unknown-route",
        "delete-method",
        "get-method",
        "bad-sql",
        "unknown-table",
    ],
)
def test_http_errors_are_json(hostile, method, path, kwargs, statuses, code):
    """Every HTTP error answers the documented status with a JSON body
    {"error": {"code": "<GRPC_CODE_NAME>", "message": "..."}}: bad JSON 400, wrong
    shape 422, a body too large 413, an unknown route 404, a
    wrong method 405."""
    codes = code if isinstance(code, tuple) else ((code,) if code else None)
    response = getattr(requests, method)(hostile.http(path), timeout=60, **kwargs)
    hostile.assert_alive(f"{method.upper()} {path}")
    http_error(response, statuses, codes)


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}],
    ids=["text-plain", "form (curl -d)", "none"],
)
def test_http_query_body_is_json_whatever_the_content_type(hostile, headers):
    """`curl -d '{"sql": …}'` sends a form content type: the body is still the query."""
    response = requests.post(
        hostile.http("/v1/query"), data=b'{"sql": "SELECT 40 + 2 AS answer"}', headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json() == [{"answer": 42}]


# --- 10. The bad-input matrix ---------------------------------------------------------------


def flip(data: bytes, position: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([data[position] ^ 0x5A]) + data[position + 1 :]


def real_ticket(target: Target, sql: str = "SELECT id FROM tasks WHERE id = 1") -> bytes:
    return target.flight.tickets(target.flight.get_flight_info(statement_query(sql)))[0]


def _bind_then_run(target: Target, sql: str, params: pa.RecordBatch):
    """Binds `params` to a prepared `sql` with DoPut, then plans and runs the bound
    handle: a bad parameter may be refused at either step."""
    handle = target.flight.prepare(sql)
    [result] = target.flight.put(prepared_query(handle), ipc_stream([params]))
    bound = pb_first(result, 1, handle)
    info = target.flight.get_flight_info(prepared_query(bound))
    return [target.flight.do_get(ticket) for ticket in target.flight.tickets(info)]


def _put_first_message_without_descriptor(target: Target):
    header, body = ipc_messages(ipc_stream([pa.record_batch([pa.array([1])], names=["x"])]))[0]
    return target.flight.do_put_raw([pb_message((2, header))])


def _ingest(target: Target, table: str, batch: pa.RecordBatch, options=None, transaction=None):
    command = statement_ingest(table, **({"options": options} if options else {}), transaction_id=transaction)
    return target.flight.put(command, ipc_stream([batch]))


def _end_unspecified(target: Target):
    """EndTransaction of a real transaction with no action: INVALID_ARGUMENT; the
    transaction is still there afterwards (rolled back here)."""
    transaction = target.flight.begin()
    try:
        return target.flight.action("EndTransaction", end_transaction(transaction, 0))
    finally:
        target.flight.end(transaction, ROLLBACK)


def _cancel_garbage_flight_info(target: Target):
    info = pb_message((3, pb_message((1, pb_message((1, b"garbage ticket"))))))
    return target.flight.action("CancelFlightInfo", pb_message((1, info)))


def _subscribe_raw(target: Target, request) -> list:
    call = target.server_stream("/quiver.v1.Subscriptions/Subscribe")(request.SerializeToString(), timeout=20)
    try:
        return next(call)
    finally:
        call.cancel()


def _mutation_cases():
    """(id, codes, fn(target)) for the Mutations API."""
    long_name = "t" * 100_000

    def m(t):
        return t.mutations

    def pb(t):
        return t.mpb

    def insert(table, values, **kw):
        def run(t):
            row = pb(t).Row(values={k: (v(t) if callable(v) else m(t).value(v)) for k, v in values.items()})
            return m(t).stub.Insert(pb(t).InsertRequest(table=table, rows=pb(t).Rows(rows=[row]), **kw), timeout=20)

        return run

    def insert_ipc(stream_of):
        def run(t):
            rows = pb(t).Rows(arrow_ipc=stream_of(t))
            return m(t).stub.Insert(pb(t).InsertRequest(table="tasks", rows=rows), timeout=20)

        return run

    def update(predicate=None, set_values=None, keys=None, table="tasks"):
        def run(t):
            where = None
            if predicate is not None:
                where = pb(t).Selector(predicate=predicate)
            elif keys is not None:
                where = m(t).keys(keys)
            set_row = m(t).row(set_values) if set_values is not None else None
            return m(t).stub.Update(pb(t).UpdateRequest(table=table, where=where, set=set_row), timeout=20)

        return run

    def delete(predicate=None, table="tasks"):
        def run(t):
            where = pb(t).Selector(predicate=predicate) if predicate is not None else None
            return m(t).stub.Delete(pb(t).DeleteRequest(table=table, where=where), timeout=20)

        return run

    good_ipc = ipc_stream([pa.record_batch([pa.array(["x"])], names=["title"])])
    feature = lambda t: pb(t).Value(int64=some_feature(t.store))  # noqa: E731
    return [
        ("insert-unknown-table", NF, insert("hostile_missing", {"id": 1})),
        ("insert-empty-table-name", (IA, NF), insert("", {"id": 1})),
        ("insert-100KB-table-name", (NF, IA), insert(long_name, {"id": 1})),
        ("insert-internal-table", (PD, NF), insert("_quiver_changes", {"id": 1})),
        ("insert-internal-clock", (PD, NF), insert("_quiver_clock", {"id": 2, "version": 0})),
        ("insert-unknown-column", IA, insert("tasks", {"feature_id": feature, "no_such_column": 1})),
        ("insert-100KB-column-name", IA, insert("tasks", {"feature_id": feature, long_name: 1})),
        ("insert-text-into-priority", IA, insert("tasks", {"feature_id": feature, "priority": "high"})),
        (
            "insert-rows-and-ipc",
            IA,
            lambda t: m(t).stub.Insert(
                pb(t).InsertRequest(
                    table="tasks", rows=pb(t).Rows(rows=[m(t).row({"title": "x"})], arrow_ipc=good_ipc)
                ),
                timeout=20,
            ),
        ),
        ("insert-ipc-garbage", IA, insert_ipc(lambda t: b"\xff\xff\xff\xff" + bytes(range(200)))),
        ("insert-ipc-truncated", IA, insert_ipc(lambda t: good_ipc[: len(good_ipc) // 2])),
        ("insert-ipc-unknown-column", IA, insert_ipc(lambda t: ipc_stream([pa.record_batch([pa.array([1])], names=["nope"])]))),
        (
            "insert-ipc-wrong-type",
            IA,
            insert_ipc(lambda t: ipc_stream([pa.record_batch([pa.array(["high"])], names=["priority"])])),
        ),
        ("update-no-where", IA, update(set_values={"priority": 1})),
        ("update-no-set", IA, update(predicate="id = -1")),
        ("update-empty-predicate", IA, update(predicate="", set_values={"priority": 1})),
        ("update-non-boolean-predicate", IA, update(predicate="priority + 1", set_values={"priority": 1})),
        ("update-unknown-column-predicate", IA, update(predicate="nope = 1", set_values={"priority": 1})),
        ("update-statement-injection", IA, update(predicate="id = -1; DELETE FROM tasks", set_values={"priority": 1})),
        ("update-parenthesis-injection", IA, update(predicate="id = -1) OR (1 = 1", set_values={"priority": 1})),
        (
            "update-subquery-on-internal",
            (IA, PD),
            update(predicate="id IN (SELECT version FROM _quiver_clock)", set_values={"priority": 1}),
        ),
        ("update-unknown-function", IA, update(predicate="pg_sleep(5) IS NOT NULL", set_values={"priority": 1})),
        ("update-set-unknown-column", IA, update(predicate="id = -1", set_values={"nope": 1})),
        ("update-key-missing-pk", IA, update(keys=[{"key": "x"}], set_values={"priority": 1})),
        ("update-key-wrong-type", IA, update(keys=[{"id": "one"}], set_values={"priority": 1})),
        ("update-100KB-garbage-predicate", IA, update(predicate="@" * 100_000, set_values={"priority": 1})),
        ("delete-no-where", IA, delete()),
        ("delete-empty-predicate", IA, delete(predicate="")),
        ("delete-non-boolean-predicate", IA, delete(predicate="1")),
        ("delete-unknown-table", NF, delete(predicate="id = 1", table="hostile_missing")),
        (
            "upsert-without-key",
            IA,
            lambda t: m(t).stub.Upsert(
                pb(t).UpsertRequest(table="tasks", rows=m(t).rows([{"title": "no key"}])), timeout=20
            ),
        ),
        (
            "upsert-unknown-table",
            NF,
            lambda t: m(t).stub.Upsert(pb(t).UpsertRequest(table="hostile_missing", rows=m(t).rows([{"id": 1}])), timeout=20),
        ),
        (
            "apply-empty-operation",
            IA,
            lambda t: m(t).stub.Apply(pb(t).ApplyRequest(operations=[pb(t).Operation()]), timeout=20),
        ),
        (
            "apply-unknown-table-after-a-good-op",
            NF,
            lambda t: m(t).stub.Apply(
                pb(t).ApplyRequest(
                    operations=[
                        pb(t).Operation(insert=m(t).insert_request(BYSTANDER, [{"id": next(ROW_IDS), "note": "x"}])),
                        pb(t).Operation(delete=pb(t).DeleteRequest(table="hostile_missing", where=pb(t).Selector(predicate="id = 1"))),
                    ]
                ),
                timeout=20,
            ),
        ),
    ]


def _subscription_cases():
    def sub(**fields):
        return lambda t: _subscribe_raw(t, t.spb.SubscribeRequest(**fields))

    return [
        ("subscribe-no-table", IA, sub(tables=[])),
        ("subscribe-empty-table-name", IA, sub(tables=[""])),
        ("subscribe-unknown-table", NF, sub(tables=["hostile_missing"])),
        ("subscribe-100KB-table-name", (NF, IA), sub(tables=["t" * 100_000])),
        ("subscribe-internal-table", (PD, NF), sub(tables=["_quiver_changes"])),
        ("subscribe-filter-syntax", IA, sub(tables=["tasks"], filter="status = = 'x'")),
        ("subscribe-filter-unknown-column", IA, sub(tables=["tasks"], filter="nope = 1")),
        ("subscribe-filter-not-boolean", IA, sub(tables=["tasks"], filter="priority")),
        ("subscribe-filter-statement-injection", IA, sub(tables=["tasks"], filter="true; DELETE FROM tasks")),
        ("subscribe-filter-on-internal", (IA, PD), sub(tables=["tasks"], filter="id IN (SELECT version FROM _quiver_clock)")),
        ("subscribe-filter-100KB-garbage", IA, sub(tables=["tasks"], filter="@" * 100_000)),
        ("subscribe-unknown-column", IA, sub(tables=["tasks"], columns=["nope"])),
    ]


def _flight_cases():
    """(id, codes, fn(target)) for Flight SQL: every RPC, command and action."""

    def f(t):
        return t.flight

    def raw(method, body=b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", kind="unary"):
        def run(t):
            path = "/arrow.flight.protocol.FlightService/" + method
            channel = f(t).channel
            if kind == "unary":
                return channel.unary_unary(path, identity, identity)(body, timeout=20)
            if kind == "server":
                call = channel.unary_stream(path, identity, identity)(body, timeout=20)
            else:
                call = channel.stream_stream(path, identity, identity)(iter([body]), timeout=20)
            try:
                return list(call)
            finally:
                call.cancel()

        return run

    def info(command):
        return lambda t: f(t).get_flight_info(command(t) if callable(command) else command)

    def update(sql, transaction=None):
        return lambda t: f(t).update(sql, transaction)

    def action(kind, body):
        return lambda t: f(t).action(kind, body(t) if callable(body) else body)

    def put(command, stream=None):
        return lambda t: f(t).put(command(t) if callable(command) else command, stream(t) if callable(stream) else stream)

    def get(ticket):
        return lambda t: f(t).do_get(ticket(t) if callable(ticket) else ticket)

    garbage_value = b"\xff\xff\xff\xff"
    int_params = ipc_stream([pa.record_batch([pa.array([1], pa.int64())], names=["$1"])])
    text_params = pa.record_batch([pa.array(["one"], pa.string())], names=["$1"])
    handle = lambda sql: (lambda t: f(t).prepare(sql))  # noqa: E731
    select_handle = handle("SELECT id FROM tasks WHERE id = ?")
    rows_1025 = pa.record_batch([pa.array(range(1025), pa.int64())], names=["$1"])
    return [
        # Garbage protobuf to every Flight RPC.
        ("GetFlightInfo-garbage", IA, raw("GetFlightInfo")),
        ("GetSchema-garbage", (IA, UNIMPL), raw("GetSchema")),
        ("PollFlightInfo-garbage", (IA, UNIMPL), raw("PollFlightInfo")),
        ("DoGet-garbage", IA, raw("DoGet", kind="server")),
        ("DoAction-garbage", IA, raw("DoAction", kind="server")),
        ("ListFlights-garbage", (IA, UNIMPL), raw("ListFlights", kind="server")),
        ("ListActions-garbage", IA, raw("ListActions", kind="server")),
        ("DoPut-garbage", IA, raw("DoPut", kind="bidi")),
        ("Handshake-garbage", (IA, UNIMPL), raw("Handshake", kind="bidi")),
        ("DoExchange-garbage", (IA, UNIMPL), raw("DoExchange", kind="bidi")),
        # GetFlightInfo commands.
        ("info-cmd-not-an-any", IA, lambda t: f(t).get_flight_info_raw(pb_message((1, 2), (2, b"\xff\xff\xff")))),
        ("info-any-garbage-value", IA, info(any_of("CommandStatementQuery", garbage_value))),
        ("info-unknown-command", (IA, UNIMPL), info(pb_message((1, "type.googleapis.com/hostile.Nope"), (2, b"")))),
        ("info-path-descriptor", (IA, UNIMPL), lambda t: f(t).get_flight_info_raw(pb_message((1, 1), (3, "tasks")))),
        ("query-empty", IA, info(statement_query(""))),
        ("query-syntax", IA, info(statement_query("SELEC 1"))),
        ("query-unknown-table", (NF, IA), info(statement_query("SELECT * FROM hostile_missing"))),
        ("query-100KB-garbage", IA, info(statement_query("@" * 100_000))),
        ("query-invalid-utf8", IA, info(any_of("CommandStatementQuery", pb_message((1, b"SELECT \xff\xfe"))))),
        ("query-two-statements", IA, info(statement_query("SELECT 1; SELECT 2"))),
        ("query-garbage-transaction", NF, info(statement_query("SELECT 1 AS x", b"\x00garbage-transaction"))),
        ("prepared-query-garbage-handle", IA, info(prepared_query(b"garbage handle"))),
        ("prepared-query-flipped-handle", IA, info(lambda t: prepared_query(flip(f(t).prepare("SELECT 1 AS x"), 9)))),
        ("prepared-query-truncated-handle", IA, info(lambda t: prepared_query(f(t).prepare("SELECT 1 AS x")[:-5]))),
        ("get-tables-garbage-value", IA, info(any_of("CommandGetTables", garbage_value))),
        ("get-primary-keys-garbage-value", IA, info(any_of("CommandGetPrimaryKeys", garbage_value))),
        ("get-sql-info-garbage-value", IA, info(any_of("CommandGetSqlInfo", garbage_value))),
        # DoGet tickets.
        ("ticket-garbage", IA, get(b"garbage ticket")),
        ("ticket-garbage-handle", IA, get(ticket_statement(b"QVH2" + b"\x00" * 40))),
        ("ticket-flipped", IA, get(lambda t: flip(real_ticket(t), -20))),
        ("ticket-truncated", IA, get(lambda t: real_ticket(t)[:-7])),
        ("ticket-unknown-type", IA, get(pb_message((1, "type.googleapis.com/hostile.Nope"), (2, b"x")))),
        ("ticket-any-garbage-value", IA, get(any_of("TicketStatementQuery", garbage_value))),
        (
            "ticket-subscription-garbage",
            IA,
            get(pb_message((1, "type.googleapis.com/quiver.v1.SubscribeRequest"), (2, garbage_value))),
        ),
        ("ticket-get-tables-garbage", IA, get(any_of("CommandGetTables", garbage_value))),
        # DoPut.
        ("put-no-messages", IA, lambda t: f(t).do_put_raw([])),
        ("put-no-descriptor", IA, _put_first_message_without_descriptor),
        ("put-descriptor-garbage-cmd", IA, lambda t: f(t).do_put_raw([pb_message((1, pb_message((1, 2), (2, b"\xff\xff"))))])),
        ("put-any-garbage-value", IA, put(any_of("CommandStatementUpdate", garbage_value))),
        ("put-unknown-command", (IA, UNIMPL), put(pb_message((1, "type.googleapis.com/hostile.Nope"), (2, b"")))),
        ("bind-garbage-handle", IA, put(prepared_query(b"garbage handle"), int_params)),
        ("bind-flipped-handle", IA, put(lambda t: prepared_query(flip(f(t).prepare("SELECT id FROM tasks WHERE id = ?"), 12)), int_params)),
        (
            "bind-garbage-data-header",
            IA,
            lambda t: f(t).do_put_raw(
                [pb_message((1, flight_descriptor(prepared_query(select_handle(t)))), (2, b"\xff" * 64))]
            ),
        ),
        ("bind-wrong-parameter-type", IA, lambda t: _bind_then_run(t, "SELECT id FROM tasks WHERE id = ?", text_params)),
        (
            "bind-too-many-parameter-columns",
            IA,
            lambda t: _bind_then_run(
                t, "SELECT id FROM tasks WHERE id = ?", pa.record_batch([pa.array([1]), pa.array([2])], names=["$1", "$2"])
            ),
        ),
        ("bind-1025-parameter-rows", RE, lambda t: _bind_then_run(t, "SELECT id FROM tasks WHERE id = ?", rows_1025)),
        ("prepared-update-garbage-handle", IA, put(prepared_update(b"garbage handle"))),
        ("update-empty", IA, update("")),
        ("update-syntax", IA, update("UPDAT tasks SET priority = 1")),
        ("update-unknown-table", NF, update("UPDATE hostile_missing SET x = 1")),
        ("update-two-statements", (IA, PD), update(f"UPDATE {BYSTANDER} SET note = 'x' WHERE id = -1; DELETE FROM tasks")),
        ("update-100KB-garbage", IA, update("@" * 100_000)),
        ("update-garbage-transaction", NF, update(f"UPDATE {BYSTANDER} SET note = 'x' WHERE id = -1", b"\x00garbage")),
        ("ingest-garbage-data", IA, lambda t: f(t).do_put_raw(
            [pb_message((1, flight_descriptor(statement_ingest("hostile_ingest_bad"))), (2, b"\xff" * 32), (1000, b"\x00" * 32))]
        )),
        ("ingest-no-data", IA, put(statement_ingest("hostile_ingest_bad"))),
        ("ingest-empty-table-name", IA, lambda t: _ingest(t, "", pa.record_batch([pa.array([1])], names=["x"]))),
        ("ingest-internal-table", PD, lambda t: _ingest(t, "_quiver_changes", pa.record_batch([pa.array([1])], names=["id"]), INGEST_APPEND)),
        ("ingest-append-missing-table", NF, lambda t: _ingest(t, "hostile_missing", pa.record_batch([pa.array([1])], names=["x"]), INGEST_APPEND)),
        (
            "ingest-append-wrong-type",
            IA,
            lambda t: _ingest(t, BYSTANDER, pa.record_batch([pa.array(["one"]), pa.array(["x"])], names=["id", "note"]), INGEST_APPEND),
        ),
        ("ingest-garbage-transaction", NF, lambda t: _ingest(t, "hostile_ingest_bad", pa.record_batch([pa.array([1])], names=["x"]), transaction=b"\x00garbage")),
        # Actions.
        ("action-unknown-type", (IA, UNIMPL), action("hostile-nope", b"")),
        ("action-10KB-type", (IA, UNIMPL), action("x" * 10_000, b"")),
        ("prepare-garbage-body", IA, action("CreatePreparedStatement", b"\xff\xff\xff")),
        ("prepare-any-garbage-value", IA, action("CreatePreparedStatement", any_of("ActionCreatePreparedStatementRequest", garbage_value))),
        ("prepare-wrong-any-type", IA, action("CreatePreparedStatement", any_of("CommandStatementQuery", b""))),
        ("prepare-syntax", IA, action("CreatePreparedStatement", create_prepared("SELEC 1"))),
        ("prepare-empty", IA, action("CreatePreparedStatement", create_prepared(""))),
        ("prepare-garbage-transaction", NF, action("CreatePreparedStatement", create_prepared("SELECT 1 AS x", b"\x00garbage"))),
        ("close-garbage-handle", IA, action("ClosePreparedStatement", close_prepared(b"garbage handle"))),
        ("close-garbage-body", IA, action("ClosePreparedStatement", b"\xff\xff\xff")),
        ("begin-garbage-body", IA, action("BeginTransaction", b"\xff\xff\xff")),
        ("begin-any-garbage-value", IA, action("BeginTransaction", any_of("ActionBeginTransactionRequest", garbage_value))),
        ("end-garbage-id", NF, action("EndTransaction", end_transaction(b"\x00garbage-id", COMMIT))),
        ("end-garbage-id-rollback", NF, action("EndTransaction", end_transaction(b"\x00garbage-id", ROLLBACK))),
        ("end-empty-id", (NF, IA), action("EndTransaction", end_transaction(b"", COMMIT))),
        ("end-garbage-body", IA, action("EndTransaction", b"\xff\xff\xff")),
        ("end-any-garbage-value", IA, action("EndTransaction", any_of("ActionEndTransactionRequest", garbage_value))),
        ("end-no-action", IA, _end_unspecified),
        ("cancel-flight-info-garbage-body", (IA, UNIMPL), action("CancelFlightInfo", b"\xff\xff\xff")),
        ("cancel-flight-info-garbage-ticket", (IA, NF, UNIMPL), _cancel_garbage_flight_info),
        ("cancel-query-garbage", (IA, UNIMPL), action("CancelQuery", b"\xff\xff\xff")),
        ("set-session-options-garbage", IA, action("SetSessionOptions", b"\xff\xff\xff")),
        ("subscribe-bad-json", IA, action("subscribe", b"{bad json")),
        ("subscribe-json-array", IA, action("subscribe", b'["tasks"]')),
        ("subscribe-json-no-table", IA, action("subscribe", b"{}")),
        ("subscribe-json-unknown-table", NF, action("subscribe", b'{"table": "hostile_missing"}')),
        ("subscribe-json-bad-filter", IA, action("subscribe", b'{"table": "tasks", "filter": "status = = 1"}')),
        ("subscribe-json-negative-version", IA, action("subscribe", b'{"table": "tasks", "from_version": -1}')),
        ("subscribe-json-100KB-garbage-filter", IA, action("subscribe", json.dumps({"table": "tasks", "filter": "@" * 100_000}).encode())),
        ("subscribe-not-utf8", IA, action("subscribe", b"\xff\xfe{")),
    ]


MATRIX = _mutation_cases() + _subscription_cases() + _flight_cases()


@pytest.mark.parametrize("codes,probe", [pytest.param(c, p, id=name) for name, c, p in MATRIX])
def test_bad_input_matrix(hostile, codes, probe):
    """Malformed, empty, oversized and wrong-type inputs to every RPC (Mutations,
    Subscribe, each Flight RPC, Flight SQL command and action): the precise code of
    the contract, never INTERNAL, a short message, the server alive and nothing
    changed."""
    with unchanged(hostile):
        expect_error(hostile, codes, probe, hostile, what="the probe")


def test_metadata_never_lists_internal_tables(hostile):
    """GetTables with patterns that would match Quiver's tables (and garbage patterns)
    answers without an internal table, and never fails with INTERNAL."""
    patterns = [None, "%", "_quiver%", "\\_quiver%", "%quiver%", "%" + "\\" * 1000, "[", "_" * 10_000]
    for pattern in patterns:
        for schema_pattern in (None, "%", "_quiver"):
            command = get_tables(schema_pattern=schema_pattern, table_pattern=pattern, include_schema=True)
            try:
                info = hostile.flight.get_flight_info(command)
                table = pa.concat_tables(
                    [
ipc_from_flight_data(hostile.flight.do_get(ticket)) for ticket in hostile.flight.tickets(info)]
                )
            except grpc.RpcError as error:
                hostile.assert_alive()
                check_status(error.code(), error.details(), IA, f"GetTables {pattern!r:.40}")
                continue
            listed = table.column("table_name").to_pylist() + table.column("db_schema_name").to_pylist()
            leaked = [name for name in listed if name and name.lower().startswith("_quiver")]
            assert not leaked, f"GetTables({schema_pattern!r}, {pattern!r:.40}) lists {leaked}"


# --- 11. Limits follow the configuration (the small server) -------------------------------


def test_limits_follow_the_configuration(small):
    """Each new limit, set small through its QUIVER_* variable: just under it works,
    just over it is RESOURCE_EXHAUSTED (statement size 4 KiB, expression depth 50,
    parameter rows 8, subscription tables 3, mutation operations 5, mutation rows 10)."""
    m, spb, fl = small.mutations, small.spb, small.flight
    subscribe = small.server_stream("/quiver.v1.Subscriptions/Subscribe")
    padded = lambda size: "id = -1" + " " * (size - 7)  # noqa: E731  (size without depth)

    # Statement size.
    fl.get_flight_info(statement_query("SELECT 1 AS x --" + " " * 3800))
    m.delete(BYSTANDER, m.predicate(padded(3800)))
    expect_error(small, RE, fl.get_flight_info, statement_query("SELECT 1 AS x --" + " " * 4300), what="4.2 KiB query")
    expect_error(small, RE, m.delete, BYSTANDER, m.predicate(padded(4300)), what="4.2 KiB predicate")
    request = spb.SubscribeRequest(tables=["tasks"], filter=padded(4300)).SerializeToString()
    expect_stream_error(small, RE, subscribe, request, "4.2 KiB filter")

    # Expression depth.
    fl.get_flight_info(statement_query("SELECT " + plus_chain(40) + " AS x"))
    m.delete(BYSTANDER, m.predicate(or_chain(40, lambda i: -1)))
    expect_error(small, RE, fl.get_flight_info, statement_query("SELECT " + plus_chain(60) + " AS x"), what="depth 60 query")
    expect_error(small, RE, m.delete, BYSTANDER, m.predicate(or_chain(60, lambda i: -1)), what="depth 60 predicate")
    request = spb.SubscribeRequest(tables=["tasks"], filter=or_chain(60, lambda i: -1)).SerializeToString()
    expect_stream_error(small, RE, subscribe, request, "depth 60 filter")

    # Parameter rows.
    sql = "SELECT id FROM tasks WHERE id = ?"
    _bind_then_run(small, sql, pa.record_batch([pa.array(range(1, 9), pa.int64())], names=["$1"]))
    expect_error(
        small, RE, _bind_then_run, small, sql, pa.record_batch([pa.array(range(1, 10), pa.int64())], names=["$1"]),
        what="9 parameter rows",
    )

    # Subscription tables.
    with small.subscriptions.open(tables=["tasks", "features", "epics"]) as ok:
        ok.wait(lambda s: s.responses, "the first message of a 3-table subscription", timeout=15)
    request = spb.SubscribeRequest(tables=["tasks", "features", "epics", "task_history"]).SerializeToString()
    expect_stream_error(small, RE, subscribe, request, "4 tables")

    # Mutation operations and rows.
    delete = m.delete_request(BYSTANDER, m.predicate("id = -1"))
    m.apply([delete] * 5)
    expect_error(small, RE, m.apply, [delete] * 6, what="6 operations")
    rows = [{"id": 30_000_000 + i, "note": "x"} for i in range(11)]
    expect_error(small, RE, m.insert, BYSTANDER, rows, what="11 rows")


def test_a_query_over_the_timeout_is_deadline_exceeded(small):
    """With QUIVER_QUERY_TIMEOUT_S=2, the heavy aggregate ends with DEADLINE_EXCEEDED
    after about 2 s (Flight), and HTTP answers 504 with the JSON error."""
    try:
        started = time.monotonic()
        expect_error(small, DE, small.flight.query, HEAVY_SQL, timeout=60, what="heavy query")
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"the 2 s query timeout ended the query after {elapsed:.1f}s"
        small.settle()
        response = post_query(small, HEAVY_SQL, timeout=60)
        small.assert_alive("POST /v1/query")
        http_error(response, 504, "DEADLINE_EXCEEDED")
    finally:
        small.settle()


def test_queries_beyond_the_concurrency_limit_wait_then_are_refused(small):
    """With one query at a time and a 300 ms queue: while the heavy aggregate runs, a
    second query waits about 300 ms and is refused with RESOURCE_EXHAUSTED (Flight) /
    429 (HTTP)."""
    heavy = small.other_flight()
    outcome = {}

    def run_heavy():
        try:
            heavy.query(HEAVY_SQL, timeout=60)
            outcome["heavy"] = "ok"
        except grpc.RpcError as error:
            outcome["heavy"] = error.code()

    thread = threading.Thread(target=run_heavy, daemon=True)
    try:
        thread.start()
        time.sleep(0.5)
        expect_error(small, RE, small.flight.query, "SELECT 1 AS x", what="a query beyond the limit", within=3)
        response = post_query(small, "SELECT 1 AS x")
        http_error(response, 429, "RESOURCE_EXHAUSTED")
    finally:
        thread.join(timeout=90)
        heavy.close()
        small.settle()
