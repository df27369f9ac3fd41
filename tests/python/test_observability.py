"""Observability against real servers: OpenTelemetry traces exported over OTLP/gRPC to
an in-process receiver (otlp_receiver.py, built from the opentelemetry-proto sources
the server is compiled with), and the Prometheus `/metrics` endpoint.

The truth is independent of the server's answers: the trace and span ids the client
sent, the change log and tables read straight from the store (`Store`), the row
counts the store gives for the same query, what `promtool` says of the exposition, and
the metrics table of docs/observability.md.

One tracing-enabled server per store (module scope, `traced`) serves most tests; a
server without any OTEL_* variable (`plain`) checks that tracing off exports nothing
and keeps the client's `traceparent` in the change log. Counters are compared as
deltas around what a test does; nothing else talks to the server meanwhile."""

import contextlib
import os
import re
import secrets
import subprocess
import time
import warnings

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import grpc
import pytest
import requests

from conftest import Store, running_server
from otlp_receiver import KIND_CLIENT, KIND_PRODUCER, KIND_SERVER, Receiver, compile_otlp_protos
from observability_doc import OBSERVABILITY_DOC, documented_metrics, promtool
from quiver_clients import arrow_of, clock, connect_mutations, connect_subscriptions, some_feature, task


PROGRESS_MS = 200
POOL_MAX_SIZE = 7
SERVER_FLAGS = ["--subscription-progress-interval-ms", str(PROGRESS_MS), "--pool-max-size", str(POOL_MAX_SIZE)]
DB_SYSTEM = {"sqlite": "sqlite", "postgres": "postgresql"}
FLIGHT = "arrow.flight.protocol.FlightService"
TRACEPARENT_OPTION = "adbc.flight.sql.rpc.call_header.traceparent"
GRPC_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# Where an OTLP exporter sends when no endpoint is configured.
DEFAULT_OTLP_ADDRESSES = ("127.0.0.1:4317", "[::1]:4317")
SETTLE_S = 20


# --- fixtures ------------------------------------------------------------------------


@contextlib.contextmanager
def without_otel_environment():
    """os.environ without any OTEL_* variable, so that a server started inside sees
    only the ones the test gives it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def otlp_modules(tmp_path_factory):
    try:
        return compile_otlp_protos(tmp_path_factory.mktemp("otlp_pb"))
    except RuntimeError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def receiver(otlp_modules):
    """The OTLP receiver the tracing-enabled servers export to."""
    running = Receiver(otlp_modules)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def default_receiver(otlp_modules):
    """A receiver on the default OTLP endpoint (localhost:4317), where a server that
    exported without being asked to would send; None when the port is taken."""
    try:
        running = Receiver(otlp_modules, DEFAULT_OTLP_ADDRESSES)
    except OSError:
        try:
            running = Receiver(otlp_modules, DEFAULT_OTLP_ADDRESSES[:1])
        except OSError as err:
            warnings.warn(f"the default OTLP port is taken ({err}): the tracing-off export check is skipped")
            yield None
            return
    yield running
    running.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def traced(kind, tmp_path_factory, receiver):
    """This module's tracing-enabled server, exporting to `receiver` quickly."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    context = running_server(kind, tmp_path_factory, sqlite_truth=False, extra_args=SERVER_FLAGS, env=env)
    with without_otel_environment():
        running = context.__enter__()
    try:
        yield running
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def plain(kind, tmp_path_factory, default_receiver):
    """A server started without any OTEL_* variable (tracing off)."""
    context = running_server(kind, tmp_path_factory, sqlite_truth=False, extra_args=SERVER_FLAGS)
    with without_otel_environment():
        running = context.__enter__()
    try:
        yield running
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def store(traced):
    truth = Store(traced)
    yield truth
    truth.close()


@pytest.fixture(scope="module")
def plain_store(plain):
    truth = Store(plain)
    yield truth
    truth.close()


@pytest.fixture(scope="module")
def clients(traced, quiver_pb, subscriptions_pb):
    """(Mutations, Subscriptions) clients of `traced`."""
    mutations, m_channel = connect_mutations(traced.grpc_addr, quiver_pb)
    subscriptions, s_channel = connect_subscriptions(traced.grpc_addr, subscriptions_pb)
    yield mutations, subscriptions
    m_channel.close()
    s_channel.close()


@pytest.fixture(scope="module")
def plain_clients(plain, quiver_pb, subscriptions_pb):
    mutations, m_channel = connect_mutations(plain.grpc_addr, quiver_pb)
    subscriptions, s_channel = connect_subscriptions(plain.grpc_addr, subscriptions_pb)
    yield mutations, subscriptions
    m_channel.close()
    s_channel.close()


# --- helpers: traces -----------------------------------------------------------------

_KEYS = iter(range(1, 1_000_000))


def unique_key(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_KEYS)}"


def traceparent() -> tuple[str, str, str]:
    """A fresh W3C traceparent (sampled): (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def parse_traceparent(text) -> tuple[str, str]:
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", text or "")
    assert match, f"not a W3C traceparent: {text!r}"
    return match.group(1), match.group(2)


def adbc_connect(server, header: str | None = None, autocommit: bool = True):
    """An ADBC Flight SQL connection; with `header`, every call carries it as the
    `traceparent` metadata."""
    kwargs = {"db_kwargs": {TRACEPARENT_OPTION: header}} if header else {}
    return flight_sql.connect(server.grpc_uri, autocommit=autocommit, **kwargs)


def adbc_update(conn, sql: str) -> int:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.rowcount
    finally:
        cur.close()


def task_insert_sql(key: str, feature: int) -> str:
    return (
        "INSERT INTO tasks (feature_id, key, title, status, priority, created_at, updated_at) "
        f"VALUES ({feature}, '{key}', 'title of {key}', 'todo', 3, '2025-06-01 09:30:00', '2025-06-01 09:30:00')"
    )


def settle(fetch, condition, timeout: float = SETTLE_S):
    """Polls `fetch()` until `condition` holds of it (or the timeout passes) and answers
    the last value either way: the assertions that follow say what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        try:
            if condition(value):
                return value
        except (KeyError, ValueError, IndexError):
            pass
        if time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def is_descendant(span, ancestor_id: str, index: dict) -> bool:
    """Whether `ancestor_id` is on the parent chain of `span` (within `index`, plus the
    first parent outside it)."""
    seen = set()
    parent = span.parent_span_id
    while parent and parent not in seen:
        if parent == ancestor_id:
            return True
        seen.add(parent)
        above = index.get(parent)
        if above is None:
            return False
        parent = above.parent_span_id
    return False


def top_parent(span, index: dict) -> str:
    """The parent id where the chain of `span` leaves `index` ('' for a root)."""
    seen = set()
    while span.parent_span_id in index and span.span_id not in seen:
        seen.add(span.span_id)
        span = index[span.parent_span_id]
    return span.parent_span_id


def show(spans) -> str:
    return "\n".join(f"  {s!r}" for s in spans) or "  (none)"


def deliveries_linking(receiver, trace_id: str, span_id: str) -> list:
    return [
        s for s in receiver.snapshot() if s.name == "subscription deliver" and (trace_id, span_id) in s.links
    ]


def stored_trace_context(store, version: int):
    return store.scalar(f"SELECT trace_context FROM _quiver_commits WHERE version = {version}")


# --- helpers: metrics ----------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _labels(line: str, at: int) -> tuple[dict, int]:
    """Parses `{a="x",b="y"}` starting at line[at] == '{'; answers (labels, index after)."""
    labels = {}
    at += 1
    while line[at] != "}":
        match = _LABEL.match(line, at)
        if not match:
            raise ValueError(f"bad labels in {line!r}")
        labels[match.group(1)] = match.group(2)
        at = match.end()
    return labels, at + 1


class Sample:
    def __init__(self, name, labels, value, exemplar):
        self.name, self.labels, self.value, self.exemplar = name, labels, value, exemplar

    def __repr__(self):
        return f"{self.name}{self.labels} {self.value}" + (f" # {self.exemplar}" if self.exemplar else "")


class Scrape:
    """A parsed /metrics body (classic text or OpenMetrics)."""

    def __init__(self, text: str, content_type: str):
        self.text = text
        self.content_type = content_type
        self.types: dict[str, str] = {}
        self.samples: list[Sample] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind.strip()
                continue
            if not line or line.startswith("#"):
                continue
            name = _NAME.match(line).group(0)
            at = len(name)
            labels = {}
            if at < len(line) and line[at] == "{":
                labels, at = _labels(line, at)
            rest = line[at:]
            exemplar = None
            if " # " in rest:
                rest, _, ex = rest.partition(" # ")
                ex = ex.strip()
                ex_labels, end = _labels(ex, 0)
                exemplar = {"labels": ex_labels, "value": float(ex[end:].split()[0])}
            self.samples.append(Sample(name, labels, float(rest.split()[0]), exemplar))

    def series(self, name: str, **labels) -> list[Sample]:
        return [
            s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels) -> float:
        """The sum over the series of `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.series(name, **labels))

    def families(self) -> dict[str, set]:
        """Family name (as in the TYPE lines) to the label names its samples carry."""
        out = {}
        for family, kind in self.types.items():
            names = {family}
            if kind in ("histogram", "summary"):
                names |= {f"{family}_bucket", f"{family}_count", f"{family}_sum", f"{family}_created"}
            if kind == "counter":
                names |= {f"{family}_total", f"{family}_created"}
            labels = set()
            for s in self.samples:
                if s.name in names:
                    labels |= set(s.labels) - {"le", "quantile"}
            out[family] = labels
        return out

    def has_samples(self, family: str) -> bool:
        kind = self.types.get(family)
        names = {family, f"{family}_count", f"{family}_total"} if kind else set()
        return any(s.name in names for s in self.samples)


def scrape(server, openmetrics: bool = False) -> Scrape:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    response = requests.get(f"{server.http_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, f"/metrics answered {response.status_code}: {response.text[:500]}"
    return Scrape(response.text, response.headers.get("content-type", ""))


def expect_deltas(server, before: Scrape, expected: list[tuple[str, dict, float]], timeout: float = SETTLE_S):
    """Waits until every metric of `expected` (name, labels, delta) has grown by at
    least its delta since `before`, then checks that each grew by exactly that."""

    def reached(now: Scrape) -> bool:
        return all(now.value(n, **l) - before.value(n, **l) >= d for n, l, d in expected)

    after = settle(lambda: scrape(server), reached, timeout)
    wrong = [
        f"{name}{labels}: grew by {after.value(name, **labels) - before.value(name, **labels)}, expected {delta}"
        for name, labels, delta in expected
        if after.value(name, **labels) - before.value(name, **labels) != delta
    ]
    assert not wrong, "metrics did not move as expected:\n  " + "\n  ".join(wrong)
    return after


def gauge_settles(server, name: str, want, labels=None, timeout: float = SETTLE_S) -> Scrape:
    labels = labels or {}
    now = settle(lambda: scrape(server), lambda s: s.value(name, **labels) == want, timeout)
    assert now.value(name, **labels) == want, f"{name}{labels} is {now.value(name, **labels)}, expected {want}"
    return now


def grpc_code_of(error) -> str:
    """The gRPC code name of an ADBC Flight SQL error: its vendor code when the driver
    sets it, else the code name the driver's message starts with."""
    vendor = getattr(error, "vendor_code", None)
    if isinstance(vendor, int) and vendor in GRPC_CODE_NAMES and vendor != 0:
        return GRPC_CODE_NAMES[vendor]
    match = re.match(r"([A-Z_]+): ", str(error))
    assert match and match.group(1) in grpc.StatusCode.__members__, f"no gRPC code in {error!r}"
    return match.group(1)


def traffic(server, store, clients):
    """Some of everything: queries (one failing), a mutation, a subscription that
    receives it, an HTTP query and a failing one."""
    mutations, subscriptions = clients
    with adbc_connect(server) as conn:
        arrow_of(conn, "SELECT id, status FROM tasks WHERE priority = 1")
        with pytest.raises(adbc_driver_manager.Error):
            arrow_of(conn, "SELECT * FROM no_such_table_traffic")
    requests.post(f"{server.http_url}/v1/query", json={"sql": "SELECT count(*) AS n FROM epics"}, timeout=60)
    requests.post(f"{server.http_url}/v1/query", json={"sql": "SELECT * FROM no_such_table_traffic"}, timeout=60)
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        response = mutations.insert("tasks", [task(unique_key("OBS-TRAFFIC"), some_feature(store))])
        sub.wait_progress(response.commit_version)


# --- traces: queries ---------------------------------------------------------------


def test_a_flight_sql_query_continues_the_clients_trace(kind, traced, receiver, store):
    sql = "SELECT id, status FROM tasks WHERE priority = 1"
    header, trace_id, client_span = traceparent()
    with adbc_connect(traced, header) as conn:
        table = arrow_of(conn, sql)
    assert table.num_rows == store.count("tasks", "priority = 1")

    def complete(spans):
        index = {s.span_id: s for s in spans}
        names = {s.name for s in spans}
        doget = [s.span_id for s in spans if s.name == f"{FLIGHT}/DoGet"]
        return (
            {f"{FLIGHT}/GetFlightInfo", f"{FLIGHT}/DoGet", "query.plan", "flight.stream"} <= names
            and any(s.kind == KIND_CLIENT and any(is_descendant(s, d, index) for d in doget) for s in spans)
            and all(top_parent(s, index) == client_span for s in spans)
        )

    spans = settle(lambda: receiver.trace(trace_id), complete)
    index = {s.span_id: s for s in spans}
    servers = [s for s in spans if s.kind == KIND_SERVER]
    info = [s for s in servers if s.name == f"{FLIGHT}/GetFlightInfo"]
    doget = [s for s in servers if s.name == f"{FLIGHT}/DoGet"]
    assert info and doget, f"GetFlightInfo and DoGet server spans in trace {trace_id}:\n{show(spans)}"
    for span in servers:
        service, method = span.name.split("/")
        assert span.parent_span_id == client_span, f"a server span's parent is the client's span: {span}"
        assert span.attributes.get("rpc.system") == "grpc", span
        assert span.attributes.get("rpc.service") == service, span
        assert span.attributes.get("rpc.method") == method, span
        code = span.attributes.get("rpc.grpc.status_code")
        assert code == 0 and isinstance(code, int), f"rpc.grpc.status_code is the int 0: {span}"
        assert span.attributes.get("client.address") == "127.0.0.1", span
        assert span.attributes.get("principal"), span
        assert span.resource.get("service.name") == "quiver", span.resource

    plans = [s for s in spans if s.name == "query.plan"]
    assert any(s.attributes.get("db.query.text") == sql for s in plans), (
        f"a query.plan span with db.query.text = the client's SQL:\n{show(plans)}"
    )
    statements = [
        s for s in spans if s.kind == KIND_CLIENT and any(is_descendant(s, d.span_id, index) for d in doget)
    ]
    assert statements, f"a store statement span (kind CLIENT) below DoGet:\n{show(spans)}"
    for span in statements:
        assert span.attributes.get("db.system.name") == DB_SYSTEM[kind], span
        assert span.attributes.get("db.operation.name") == "SELECT" == span.name, span
        assert re.search(r"\btasks\b", span.attributes.get("db.query.text", "")), span
    streams = [s for s in spans if s.name == "flight.stream" and any(is_descendant(s, d.span_id, index) for d in doget)]
    assert streams, f"a flight.stream span below DoGet:\n{show(spans)}"
    orphans = [s for s in spans if top_parent(s, index) != client_span]
    assert not orphans, f"every span of the trace hangs under the client's span {client_span}:\n{show(orphans)}"
    assert all(s.trace_id == trace_id for s in spans)


def test_a_failing_flight_query_is_traced_and_counted_with_its_code(traced, receiver):
    header, trace_id, client_span = traceparent()
    before = scrape(traced)
    with adbc_connect(traced, header) as conn:
        with pytest.raises(adbc_driver_manager.Error) as raised:
            arrow_of(conn, "SELECT * FROM no_such_table_obs")
    code = grpc_code_of(raised.value)
    number = grpc.StatusCode[code].value[0]

    def failed(spans):
        return any(s.kind == KIND_SERVER and s.attributes.get("rpc.grpc.status_code") == number for s in spans)

    spans = settle(lambda: receiver.trace(trace_id), failed)
    failing = [s for s in spans if s.kind == KIND_SERVER and s.attributes.get("rpc.grpc.status_code") == number]
    assert failing, f"a server span with rpc.grpc.status_code {number} ({code}):\n{show(spans)}"
    assert all(s.parent_span_id == client_span for s in failing)
    method = failing[0].attributes["rpc.method"]

    # The call, the error and the query, each counted once under the code answered.
    expect_deltas(
        traced,
        before,
        [
            ("quiver_errors_total", {"surface": "grpc", "code": code}, 1),
            (
                "rpc_server_call_duration_seconds_count",
                {"rpc_service": FLIGHT, "rpc_method": method, "rpc_grpc_status_code": str(number)},
                1,
            ),
            ("quiver_queries_total", {"surface": "flight", "status": code}, 1),
        ],
    )


def test_http_query_spans_carry_the_response_status(kind, traced, receiver, store):
    url = f"{traced.http_url}/v1/query"
    before = scrape(traced)
    ok_header, ok_trace, ok_client = traceparent()
    response = requests.post(
        url, json={"sql": "SELECT id FROM tasks WHERE priority = 2"}, headers={"traceparent": ok_header}, timeout=60
    )
    assert response.status_code == 200, response.text
    rows = response.json()
    assert len(rows) == store.count("tasks", "priority = 2")
    bad_header, bad_trace, bad_client = traceparent()
    failed = requests.post(
        url, json={"sql": "SELECT * FROM no_such_table_http"}, headers={"traceparent": bad_header}, timeout=60
    )
    assert failed.status_code == 400, failed.text
    code = failed.json()["error"]["code"]

    def server_span(trace_id, client):
        spans = settle(
            lambda: receiver.trace(trace_id),
            lambda spans: any(s.name == "POST /v1/query" for s in spans)
            and all(top_parent(s, {x.span_id: x for x in spans}) == client for s in spans),
        )
        found = [s for s in spans if s.name == "POST /v1/query"]
        assert len(found) == 1, f"one POST /v1/query span in trace {trace_id}:\n{show(spans)}"
        span = found[0]
        assert span.kind == KIND_SERVER and span.parent_span_id == client, span
        assert span.attributes.get("http.request.method") == "POST", span
        assert span.attributes.get("http.route") == "/v1/query", span
        return span, spans

    ok, ok_spans = server_span(ok_trace, ok_client)
    index = {s.span_id: s for s in ok_spans}
    statements = [s for s in ok_spans if s.kind == KIND_CLIENT and is_descendant(s, ok.span_id, index)]
    assert statements and all(s.attributes.get("db.system.name") == DB_SYSTEM[kind] for s in statements), show(
        ok_spans
    )
    bad, _ = server_span(bad_trace, bad_client)
    assert str(ok.attributes.get("http.response.status_code")) == "200", ok
    assert str(bad.attributes.get("http.response.status_code")) == "400", bad

    expect_deltas(
        traced,
        before,
        [
            (
                "http_server_request_duration_seconds_count",
                {"http_request_method": "POST", "http_route": "/v1/query", "http_response_status_code": "200"},
                1,
            ),
            (
                "http_server_request_duration_seconds_count",
                {"http_request_method": "POST", "http_route": "/v1/query", "http_response_status_code": "400"},
                1,
            ),
            ("quiver_queries_total", {"surface": "http", "status": "OK"}, 1),
            ("quiver_queries_total", {"surface": "http", "status": code}, 1),
            ("quiver_errors_total", {"surface": "http", "code": code}, 1),
            ("quiver_query_rows_total", {"surface": "http"}, len(rows)),
        ],
    )
    # The semantic conventions type http.response.status_code as an int (like
    # rpc.grpc.status_code): backends compare it as a number (status >= 500).
    for span, want in ((ok, 200), (bad, 400)):
        status = span.attributes.get("http.response.status_code")
        assert status == want and isinstance(status, int), (
            f"http.response.status_code is the int {want}, got {status!r} ({type(status).__name__})"
        )


def test_health_checks_are_neither_traced_nor_measured(traced, receiver):
    header, trace_id, _ = traceparent()
    for path in ("/healthz", "/readyz"):
        response = requests.get(f"{traced.http_url}{path}", headers={"traceparent": header}, timeout=30)
        assert response.status_code == 200, (path, response.text)
    with grpc.insecure_channel(traced.grpc_addr) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda m: m, response_deserializer=lambda m: m
        )
        # An empty HealthCheckRequest (service "") is the empty message.
        check(b"", metadata=[("traceparent", header)], timeout=30)
    # A later traced request: once its span is exported, any span of the checks
    # (which ended earlier) would have been too.
    barrier_header, barrier_trace, _ = traceparent()
    requests.post(
        f"{traced.http_url}/v1/query", json={"sql": "SELECT 1 AS one"}, headers={"traceparent": barrier_header}, timeout=30
    )
    arrived = settle(lambda: receiver.trace(barrier_trace), lambda spans: any(s.name == "POST /v1/query" for s in spans))
    assert any(s.name == "POST /v1/query" for s in arrived), f"the barrier request is traced:\n{show(arrived)}"
    assert receiver.trace(trace_id) == [], f"health checks are not traced:\n{show(receiver.trace(trace_id))}"
    now = scrape(traced)
    probes = [
        s
        for s in now.samples
        if s.labels.get("http_route") in ("/healthz", "/readyz") or s.labels.get("rpc_service") == "grpc.health.v1.Health"
    ]
    assert not probes, f"probes are not measured: {probes[:5]}"


# --- traces: writes and their deliveries -------------------------------------------


def test_a_mutation_its_commit_and_its_delivery_share_the_writing_span(kind, traced, receiver, store, clients):
    mutations, subscriptions = clients
    feature = some_feature(store)
    header, trace_id, client_span = traceparent()
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        response = mutations.insert(
            "tasks", [task(unique_key("OBS-B"), feature), task(unique_key("OBS-B"), feature)], metadata=[("traceparent", header)]
        )
        version = response.commit_version
        sub.wait_progress(version)
        events = [c for c in sub.changes if c.version == version]
    assert len(events) == 2, sub.describe()

    stored = stored_trace_context(store, version)
    stored_trace, writer_id = parse_traceparent(stored)
    assert stored_trace == trace_id, f"the change log keeps the client's trace: {stored!r} for {header!r}"
    assert writer_id != client_span, "with tracing on, the change log keeps the writing span, not the client's"
    assert [e.trace_parent for e in events] == [stored, stored], "subscribers see the stored traceparent"

    def complete(spans):
        names = {s.name for s in spans}
        return (
            {"quiver.v1.Mutations/Insert", "COMMIT", "transaction"} <= names
            and writer_id in {s.span_id for s in spans}
            and deliveries_linking(receiver, trace_id, writer_id)
        )

    spans = settle(lambda: receiver.trace(trace_id), complete)
    index = {s.span_id: s for s in spans}
    inserts = [s for s in spans if s.name == "quiver.v1.Mutations/Insert"]
    assert len(inserts) == 1, f"one Mutations/Insert server span:\n{show(spans)}"
    insert = inserts[0]
    assert insert.kind == KIND_SERVER and insert.parent_span_id == client_span, insert
    assert insert.attributes.get("rpc.system") == "grpc", insert
    assert insert.attributes.get("rpc.service") == "quiver.v1.Mutations", insert
    assert insert.attributes.get("rpc.method") == "Insert", insert
    assert insert.attributes.get("rpc.grpc.status_code") == 0, insert

    assert writer_id in index, f"the span stored in the change log ({writer_id}) is exported:\n{show(spans)}"
    writer = index[writer_id]
    assert writer.name == "mutations.insert", writer
    assert is_descendant(writer, insert.span_id, index), writer

    commits = [s for s in spans if s.name == "COMMIT"]
    assert len(commits) == 1, f"one COMMIT span:\n{show(spans)}"
    assert commits[0].kind == KIND_CLIENT and is_descendant(commits[0], writer_id, index), commits[0]
    transactions = [s for s in spans if s.name == "transaction"]
    assert transactions and all(s.kind == KIND_CLIENT for s in transactions), show(transactions)
    assert all(s.attributes.get("db.system.name") == DB_SYSTEM[kind] for s in transactions), show(transactions)

    deliveries = deliveries_linking(receiver, trace_id, writer_id)
    assert deliveries, (
        f"a `subscription deliver` span links to ({trace_id}, {writer_id}); deliveries:\n"
        + show([s for s in receiver.snapshot() if s.name == "subscription deliver"])
    )
    for span in deliveries:
        assert span.kind == KIND_PRODUCER, span
        assert span.parent_span_id == "" and span.trace_id != trace_id, f"a delivery is a trace of its own: {span}"
        assert span.attributes.get("subscription.id") not in (None, ""), span
        assert int(span.attributes["first_version"]) <= version <= int(span.attributes["last_version"]), span
        assert int(span.attributes["events"]) == 2, span


def test_a_flight_sql_insert_is_delivered_with_a_link_to_its_trace(traced, receiver, store, clients):
    _, subscriptions = clients
    feature = some_feature(store)
    header, trace_id, client_span = traceparent()
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        start = clock(store)
        with adbc_connect(traced, header) as conn:
            assert adbc_update(conn, task_insert_sql(unique_key("OBS-FL"), feature)) == 1
        version = clock(store)
        assert version == start + 1, "the INSERT is one commit"
        sub.wait_progress(version)
        events = [c for c in sub.changes if c.version == version]
    assert len(events) == 1, sub.describe()

    stored = stored_trace_context(store, version)
    stored_trace, writer_id = parse_traceparent(stored)
    assert stored_trace == trace_id, f"the change log keeps the client's trace: {stored!r} for {header!r}"
    assert events[0].trace_parent == stored

    def complete(spans):
        return (
            writer_id in {s.span_id for s in spans}
            and any(s.name == "COMMIT" for s in spans)
            and deliveries_linking(receiver, trace_id, writer_id)
        )

    spans = settle(lambda: receiver.trace(trace_id), complete)
    index = {s.span_id: s for s in spans}
    assert writer_id in index, f"the span current at commit ({writer_id}) is exported:\n{show(spans)}"
    assert top_parent(index[writer_id], index) == client_span, f"it belongs to the client's call:\n{show(spans)}"
    commits = [s for s in spans if s.name == "COMMIT" and is_descendant(s, writer_id, index)]
    assert len(commits) == 1 and commits[0].kind == KIND_CLIENT, f"one COMMIT span below {writer_id}:\n{show(spans)}"
    deliveries = deliveries_linking(receiver, trace_id, writer_id)
    assert deliveries, (
        f"a `subscription deliver` span links to ({trace_id}, {writer_id}); deliveries:\n"
        + show([s for s in receiver.snapshot() if s.name == "subscription deliver"])
    )
    assert all(s.kind == KIND_PRODUCER and s.parent_span_id == "" for s in deliveries), show(deliveries)


# --- metrics -------------------------------------------------------------------------


def test_metrics_formats_and_promtool(traced, store, clients):
    traffic(traced, store, clients)
    response = requests.get(f"{traced.http_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4"), response.headers
    classic = response.text
    assert "# {" not in classic, "the classic text format carries no exemplars"
    assert "# EOF" not in classic
    om = scrape(traced, openmetrics=True)
    assert om.content_type.startswith("application/openmetrics-text"), om.content_type
    assert om.text.endswith("# EOF\n"), "an OpenMetrics body ends with # EOF"

    check = subprocess.run(
        [promtool(), "check", "metrics"], input=classic, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, (
        f"promtool check metrics exited {check.returncode}:\n{check.stdout}{check.stderr}"
    )


def test_query_counters_move_by_the_queries_made(traced, store):
    queries = {
        "SELECT id, status FROM tasks WHERE priority = 1": "priority = 1",
        "SELECT id, key FROM tasks WHERE status = 'done'": "status = 'done'",
        "SELECT id, title, priority FROM tasks WHERE priority >= 4": "priority >= 4",
    }
    with adbc_connect(traced) as conn:
        arrow_of(conn, "SELECT 1 AS warm")  # whatever the driver does once per connection
        before = scrape(traced)
        returned = 0
        for sql, where in queries.items():
            rows = arrow_of(conn, sql).num_rows
            assert rows == store.count("tasks", where), sql
            assert rows > 0, f"{sql} returns rows"
            returned += rows
    n = len(queries)
    after = expect_deltas(
        traced,
        before,
        [
            ("quiver_queries_total", {"surface": "flight", "status": "OK"}, n),
            ("quiver_query_rows_total", {"surface": "flight"}, returned),
            (
                "rpc_server_call_duration_seconds_count",
                {"rpc_service": FLIGHT, "rpc_method": "DoGet", "rpc_grpc_status_code": "0"},
                n,
            ),
            ("quiver_query_phase_duration_seconds_count", {"surface": "flight", "phase": "plan"}, n),
            ("quiver_query_phase_duration_seconds_count", {"surface": "flight", "phase": "execute"}, n),
            ("quiver_query_phase_duration_seconds_count", {"surface": "flight", "phase": "stream"}, n),
            ("quiver_errors_total", {}, 0),
        ],
    )
    grown = after.value("quiver_query_bytes_total", surface="flight") - before.value(
        "quiver_query_bytes_total", surface="flight"
    )
    assert grown >= 8 * returned, f"every row carries an int64 id: {grown} bytes for {returned} rows"
    assert after.value("quiver_queries_running") == 0
    assert after.value("quiver_slow_queries_total") == before.value("quiver_slow_queries_total")


def test_commit_and_subscription_metrics_follow_the_change_log(traced, store, clients):
    mutations, subscriptions = clients
    feature = some_feature(store)
    before = scrape(traced)
    base_version = clock(store)
    base_commits = store.scalar("SELECT count(*) FROM _quiver_commits")
    active = before.value("quiver_subscriptions_active")
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        gauge_settles(traced, "quiver_subscriptions_active", active + 1)
        first = mutations.insert("tasks", [task(unique_key("OBS-M"), feature), task(unique_key("OBS-M"), feature)])
        sub.wait_progress(first.commit_version)
        new_id = first.generated_keys[0].values["id"].int64
        second = mutations.update("tasks", mutations.keys([{"id": new_id}]), {"status": "blocked"})
        sub.wait_progress(second.commit_version)
        with adbc_connect(traced) as conn:
            assert adbc_update(conn, task_insert_sql(unique_key("OBS-M"), feature)) == 1
        third = clock(store)
        sub.wait_progress(third)
        delivered = len(sub.changes)
        assert delivered == 4, sub.describe()
        commits = store.scalar("SELECT count(*) FROM _quiver_commits") - base_commits
        assert commits == 3 and third == base_version + 3, "three commits, as made"
        expect_deltas(
            traced,
            before,
            [
                ("quiver_commits_total", {}, commits),
                ("quiver_subscription_events_delivered_total", {}, delivered),
                ("quiver_subscription_delivery_latency_seconds_count", {}, commits),
            ],
        )
        now = gauge_settles(traced, "quiver_change_log_latest_version", third)
        assert now.value("quiver_change_log_oldest_version") == store.scalar("SELECT min(version) FROM _quiver_commits")
        assert now.value("quiver_subscription_lag_versions_max") == 0, "the subscriber has caught up"

        # A second subscriber catching up from the change log.
        catch_up = before.value("quiver_subscription_catchup_reads_total")
        with subscriptions.open(tables=("tasks",), from_version=base_version) as late:
            late.wait_progress(third)
            assert len(late.changes) == 4, late.describe()
            now = gauge_settles(traced, "quiver_subscriptions_active", active + 2)
            assert now.value("quiver_subscription_catchup_reads_total") > catch_up
        expect_deltas(
            traced, before, [("quiver_subscription_events_delivered_total", {}, delivered + len(late.changes))]
        )
    gauge_settles(traced, "quiver_subscriptions_active", active)


def test_pool_gauges_agree_with_readyz(traced):
    def readyz():
        response = requests.get(f"{traced.http_url}/readyz", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["pool"]

    label = {"db_client_connection_pool_name": "store"}

    def counts(scraped):
        return tuple(
            scraped.value("db_client_connections_usage", db_client_connection_state=state, **label)
            for state in ("idle", "used")
        )

    # Background work may take a connection between two reads: read until /readyz says
    # the same before and after the scrape, and the scrape agrees (or give up and say).
    for _ in range(20):
        first, now, last = readyz(), scrape(traced), readyz()
        if (first["idle"], first["in_use"]) == (last["idle"], last["in_use"]) == counts(now):
            break
    assert now.value("db_client_connection_max", **label) == POOL_MAX_SIZE == first["max_size"], (
        f"--pool-max-size {POOL_MAX_SIZE}: metric {now.value('db_client_connection_max', **label)}, "
        f"readyz {first['max_size']}"
    )
    assert now.value("db_client_connections_usage", db_client_connection_state="idle", **label) == first["idle"]
    assert now.value("db_client_connections_usage", db_client_connection_state="used", **label) == first["in_use"]
    waits = now.value("db_client_connection_wait_time_seconds_count", **label)
    assert first["acquire_wait_us"]["count"] <= waits <= last["acquire_wait_us"]["count"], (
        f"wait_time _count {waits} vs readyz {first['acquire_wait_us']} / {last['acquire_wait_us']}"
    )
    assert waits > 0


def test_open_transactions_are_counted(traced):
    base = scrape(traced).value("quiver_transactions_open")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conn = adbc_connect(traced, autocommit=False)
    try:
        arrow_of(conn, "SELECT count(*) FROM epics")
        gauge_settles(traced, "quiver_transactions_open", base + 1)
    finally:
        try:
            conn.rollback()
            conn.adbc_connection.set_autocommit(True)
        finally:
            conn.close()
    gauge_settles(traced, "quiver_transactions_open", base)


def test_openmetrics_exemplars_name_exported_traces(traced, receiver):
    header, trace_id, _ = traceparent()
    before = scrape(traced)
    with adbc_connect(traced, header) as conn:
        arrow_of(conn, "SELECT id FROM epics")
    # The DoGet is measured when its stream ends, which may be just after the client has read it.
    settle(
        lambda: scrape(traced),
        lambda s: s.value("rpc_server_call_duration_seconds_count", rpc_method="DoGet")
        > before.value("rpc_server_call_duration_seconds_count", rpc_method="DoGet"),
    )
    om = scrape(traced, openmetrics=True)
    doget = {
        s.exemplar["labels"].get("trace_id")
        for s in om.series("rpc_server_call_duration_seconds_bucket", rpc_method="DoGet")
        if s.exemplar
    }
    assert trace_id in doget, f"the last DoGet's bucket carries its trace as exemplar; DoGet exemplars: {doget}"
    exemplars = {s.exemplar["labels"].get("trace_id") for s in om.samples if s.exemplar}
    assert all(re.fullmatch(r"[0-9a-f]{32}", t or "") for t in exemplars), exemplars
    received = settle(
        lambda: {s.trace_id for s in receiver.snapshot()}, lambda got: exemplars <= got
    )
    assert exemplars <= received, f"exemplar traces never exported: {exemplars - received}"


def test_the_documented_metrics_are_exactly_the_exported_ones(traced, store, clients):
    traffic(traced, store, clients)
    documented = documented_metrics()
    now = scrape(traced)
    families = now.families()
    ours = {f for f in families if f.split("_", 1)[0] in ("quiver", "rpc", "http", "db")}
    missing = sorted(name for name in documented if not now.has_samples(name))
    assert not missing, f"documented in {OBSERVABILITY_DOC.name} but without samples in /metrics: {missing}"
    undocumented = sorted(ours - set(documented))
    assert not undocumented, f"exported but not in the table of {OBSERVABILITY_DOC.name}: {undocumented}"
    wrong = [
        f"{name}: doc {spec['type']} {sorted(spec['labels'])}, /metrics {now.types.get(name)} {sorted(families[name])}"
        for name, spec in documented.items()
        if spec["type"] != now.types.get(name) or spec["labels"] != families[name]
    ]
    assert not wrong, "types and labels differ:\n  " + "\n  ".join(wrong)


# --- tracing off ---------------------------------------------------------------------


def test_without_tracing_commits_keep_the_clients_traceparent(plain, plain_store, plain_clients):
    mutations, subscriptions = plain_clients
    feature = some_feature(plain_store)
    header, _, _ = traceparent()
    flight_header, _, _ = traceparent()
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        sent = mutations.insert("tasks", [task(unique_key("OBS-OFF"), feature)], metadata=[("traceparent", header)])
        with adbc_connect(plain, flight_header) as conn:
            assert adbc_update(conn, task_insert_sql(unique_key("OBS-OFF"), feature)) == 1
        flight_version = clock(plain_store)
        untraced = mutations.insert("tasks", [task(unique_key("OBS-OFF"), feature)])
        assert sent.commit_version < flight_version < untraced.commit_version
        sub.wait_progress(untraced.commit_version)
        got = {c.version: c.trace_parent for c in sub.changes}
    assert stored_trace_context(plain_store, sent.commit_version) == header, "the change log keeps it as sent"
    assert stored_trace_context(plain_store, flight_version) == flight_header
    assert stored_trace_context(plain_store, untraced.commit_version) in (None, "")
    assert got == {sent.commit_version: header, flight_version: flight_header, untraced.commit_version: ""}


def test_without_otel_variables_nothing_is_exported(plain, plain_store, plain_clients, default_receiver):
    """Runs last on `plain`: it stops the server, which flushes any exporter."""
    if default_receiver is None:
        pytest.skip("the default OTLP port 4317 is taken")
    mutations, subscriptions = plain_clients
    header, _, _ = traceparent()
    with subscriptions.open(tables=("tasks",), latest=True) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress")
        with adbc_connect(plain, header) as conn:
            assert arrow_of(conn, "SELECT id FROM tasks WHERE priority = 1").num_rows > 0
        response = mutations.insert(
            "tasks", [task(unique_key("OBS-NONE"), some_feature(plain_store))], metadata=[("traceparent", header)]
        )
        sub.wait_progress(response.commit_version)
    http = requests.post(
        f"{plain.http_url}/v1/query", json={"sql": "SELECT 1 AS one"}, headers={"traceparent": header}, timeout=30
    )
    assert http.status_code == 200
    plain.stop()
    assert plain.process.returncode == 0
    assert default_receiver.requests == 0 and default_receiver.snapshot() == [], (
        f"spans were exported with tracing off:\n{show(default_receiver.snapshot())}"
    )
