"""Fixtures: a real `quiver serve` process over a fresh demo database, once on SQLite
and once on PostgreSQL (from QUIVER_TEST_POSTGRES_URL), with SQLite as the truth.

Read-only tests share the session-scoped `server`, whose data never changes. Tests
that write use `writable_server` (a fresh server per test module) and read the truth
straight from its database through `store`."""

import contextlib
import decimal
import importlib
import itertools
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from quiver_clients import connect_mutations, micros  # noqa: F401  (micros: re-exported)

ROOT = Path(__file__).resolve().parents[2]
DEMO_TASKS = 5_000


def quiver_binary() -> str:
    binary = os.environ.get("QUIVER_BIN", str(ROOT / "target" / "debug" / "quiver"))
    if not Path(binary).exists():
        pytest.fail(f"quiver binary not found at {binary}: run `cargo build -p quiver-server` first")
    return binary


class Server:
    """A running `quiver serve`; its addresses are read from its log.

    `db_path` is a SQLite file holding the same demo data: the server's own database,
    or for a PostgreSQL-backed server a copy loaded as the truth to compare with (None
    for a writable PostgreSQL-backed server, whose truth is its database at `db_url`).
    `kind` is "sqlite" or "postgres"."""

    def __init__(
        self,
        db_url: str,
        db_path: Path | None,
        schema: str,
        kind: str = "sqlite",
        extra_args=(),
        env: dict | None = None,
    ):
        self.db_url = db_url
        self.db_path = db_path
        self.schema = schema
        self.kind = kind
        self.process = subprocess.Popen(
            [
                quiver_binary(),
                "serve",
                "--db",
                db_url,
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--demo",
                "--demo-tasks",
                str(DEMO_TASKS),
                *extra_args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "QUIVER_LOG": "info", **(env or {})},
        )
        self.log: list[str] = []
        for line in self.process.stderr:
            self.log.append(line)
            match = re.search(r"serving grpc_addr=(\S+) http_addr=(\S+)", line)
            if match:
                self.grpc_addr, self.http_addr = match.group(1), match.group(2)
                break
        else:
            raise RuntimeError("quiver serve exited before serving:\n" + "".join(self.log))
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stderr:
            self.log.append(line)

    @property
    def grpc_uri(self) -> str:
        return f"grpc://{self.grpc_addr}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_addr}"

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self):
        """SIGKILL: the process ends at once, without any shutdown work."""
        self.process.kill()
        self.process.wait(timeout=15)


def postgres_admin_url():
    url = os.environ.get("QUIVER_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("QUIVER_REQUIRE_POSTGRES") == "1":
        pytest.fail("QUIVER_REQUIRE_POSTGRES=1 but QUIVER_TEST_POSTGRES_URL is not set")
    warnings.warn("QUIVER_TEST_POSTGRES_URL is not set: skipping the PostgreSQL-backed server")
    pytest.skip("no PostgreSQL configured")


def with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


_DATABASE_NUMBERS = itertools.count(1)


class PostgresDatabase:
    """A fresh database for one server, dropped afterwards."""

    def __init__(self, admin_url: str):
        import psycopg

        self.admin_url = admin_url
        # Several servers may start within one second of one process.
        self.name = f"quiver_pytest_{os.getpid()}_{int(time.time())}_{next(_DATABASE_NUMBERS)}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = with_database(admin_url, self.name)

    def drop(self):
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Database:
    """Where a server's data lives: `url` for `--db`, `truth_path` (the SQLite file, or
    for PostgreSQL an optional SQLite copy of the demo), `schema` and `kind`."""

    def __init__(self, kind: str, url: str, truth_path: Path | None, schema: str):
        self.kind = kind
        self.url = url
        self.truth_path = truth_path
        self.schema = schema

    def server(self, extra_args=(), env: dict | None = None) -> Server:
        """Starts a `quiver serve` on this database (again, after a restart), with
        `env` added to its environment."""
        return Server(self.url, self.truth_path, self.schema, self.kind, extra_args, env)


@contextlib.contextmanager
def fresh_database(kind: str, tmp_path_factory, *, sqlite_truth: bool = False):
    """A fresh database of `kind` ("sqlite" or "postgres"), dropped afterwards.

    With `sqlite_truth`, a PostgreSQL database also gets a SQLite copy of the demo at
    `truth_path` (the truth read-only tests compare with); without it, `truth_path` is
    None there and the truth is the PostgreSQL database itself."""
    db_path = tmp_path_factory.mktemp("quiver") / "demo.db"
    if kind == "sqlite":
        yield Database("sqlite", f"sqlite://{db_path}", db_path, "main")
        return
    postgres = PostgresDatabase(postgres_admin_url())
    try:
        truth_path = None
        if sqlite_truth:
            # The truth: the same deterministic demo, in SQLite.
            subprocess.run(
                [quiver_binary(), "demo", "load", "--db", f"sqlite://{db_path}", "--tasks", str(DEMO_TASKS)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            truth_path = db_path
        yield Database("postgres", postgres.url, truth_path, "public")
    finally:
        postgres.drop()


@contextlib.contextmanager
def running_server(kind: str, tmp_path_factory, *, sqlite_truth: bool, extra_args=(), env=None):
    """Starts `quiver serve --demo` over a fresh database of `kind` ("sqlite" or
    "postgres") and stops it afterwards, checking that it exits cleanly.

    With `sqlite_truth`, a PostgreSQL-backed server also gets a SQLite copy of the
    same demo at `db_path` (the truth read-only tests compare with); without it,
    `db_path` is None there and the truth is the PostgreSQL database itself.
    `extra_args` are more `quiver serve` flags, `env` more environment variables."""
    with fresh_database(kind, tmp_path_factory, sqlite_truth=sqlite_truth) as database:
        running = database.server(extra_args, env)
        try:
            yield running
        finally:
            running.stop()
    assert running.process.returncode == 0, "server exits cleanly on SIGTERM:\n" + "".join(running.log[-20:])


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request, tmp_path_factory):
    """A read-only server shared by the whole session: never write through it."""
    with running_server(request.param, tmp_path_factory, sqlite_truth=True) as running:
        yield running


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def writable_server(request, tmp_path_factory):
    """A server of its own for one test module, free to be written to."""
    with running_server(request.param, tmp_path_factory, sqlite_truth=False) as running:
        yield running


@pytest.fixture()
def sqlite(server):
    """SQLite itself on the server's database file: the source of truth."""
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    yield conn
    conn.close()


@pytest.fixture()
def adbc(server):
    import adbc_driver_flightsql.dbapi as flight_sql

    # Autocommit: a read-only connection has no use for a transaction, and the driver's
    # close does not end one (it only sends CloseSession).
    conn = flight_sql.connect(server.grpc_uri, autocommit=True)
    yield conn
    conn.close()


def canonical(value):
    """Values from Arrow and from sqlite3 in one comparable form."""
    import datetime

    if value is None:
        return None
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value


def rows_of_table(table) -> list[tuple]:
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [tuple(canonical(v) for v in row) for row in zip(*columns)]


def rows_of_sqlite(conn, sql, params=()) -> list[tuple]:
    return [tuple(canonical(v) for v in row) for row in conn.execute(sql, params).fetchall()]


def canonical_store(value):
    """A value read from SQLite or PostgreSQL in one comparable form (PostgreSQL's
    sum() of integers is a Decimal; timestamps read back as datetime or ISO text)."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else round(float(value), 6)
    if isinstance(value, memoryview):
        return bytes(value)
    return canonical(value)


class Store:
    """The writable server's own database, read directly: the truth for write tests.

    `rows(sql)` / `scalar(sql)` take plain SQL without parameters, valid on both SQLite
    and PostgreSQL; values come back through `canonical_store`. Every SQLite read opens
    a fresh read-only connection, and PostgreSQL runs in autocommit, so each read sees
    exactly what is committed at that moment."""

    def __init__(self, server: Server):
        self.kind = server.kind
        self.schema = server.schema
        self._sqlite_path = server.db_path if server.kind == "sqlite" else None
        self._pg = None
        if server.kind == "postgres":
            import psycopg

            # Quiver's change log lives in its own schema; the truth reads it by name.
            self._pg = psycopg.connect(
                server.db_url, autocommit=True, options="-c search_path=public,_quiver"
            )

    def _raw_rows(self, sql: str) -> list[tuple]:
        if self._pg is not None:
            with self._pg.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        conn = sqlite3.connect(f"file:{self._sqlite_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(canonical_store(v) for v in row) for row in self._raw_rows(sql)]

    def scalar(self, sql: str):
        rows = self.rows(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, f"{sql!r} gives one value, not {rows!r}"
        return rows[0][0]

    def count(self, table: str, where: str | None = None) -> int:
        return self.scalar(f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else ""))

    def columns(self, table: str) -> list[str]:
        """The table's column names in declaration order ([] when it does not exist)."""
        if self._pg is not None:
            sql = (
                "SELECT column_name FROM information_schema.columns "
                f"WHERE table_schema = '{self.schema}' AND table_name = '{table}' ORDER BY ordinal_position"
            )
        else:
            sql = f"SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        return [row[0] for row in self.rows(sql)]

    def close(self):
        if self._pg is not None:
            self._pg.close()


@pytest.fixture(scope="module")
def store(writable_server):
    """Direct reads of `writable_server`'s database."""
    truth = Store(writable_server)
    yield truth
    truth.close()


@pytest.fixture()
def writer(writable_server):
    """An ADBC Flight SQL connection to `writable_server` in autocommit mode: every
    statement commits on its own."""
    import adbc_driver_flightsql.dbapi as flight_sql

    conn = flight_sql.connect(writable_server.grpc_uri, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def quiver_protos(tmp_path_factory):
    """Python modules generated from proto/quiver/v1/mutations.proto,
    subscriptions.proto and admin.proto (one protoc run), by module name."""
    out = tmp_path_factory.mktemp("quiver_pb")
    protoc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "proto"),
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "quiver/v1/mutations.proto",
            "quiver/v1/subscriptions.proto",
            "quiver/v1/admin.proto",
        ],
        capture_output=True,
        text=True,
    )
    if protoc.returncode != 0:
        pytest.fail(f"grpc_tools.protoc failed ({protoc.returncode}):\n{protoc.stdout}{protoc.stderr}")
    (out / "quiver" / "__init__.py").touch()
    (out / "quiver" / "v1" / "__init__.py").touch()
    sys.path.insert(0, str(out))
    try:
        names = [
            "mutations_pb2",
            "mutations_pb2_grpc",
            "subscriptions_pb2",
            "subscriptions_pb2_grpc",
            "admin_pb2",
            "admin_pb2_grpc",
        ]
        return {name: importlib.import_module(f"quiver.v1.{name}") for name in names}
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="session")
def quiver_pb(quiver_protos):
    """Python modules generated from proto/quiver/v1/mutations.proto:
    (mutations_pb2, mutations_pb2_grpc)."""
    return quiver_protos["mutations_pb2"], quiver_protos["mutations_pb2_grpc"]


@pytest.fixture(scope="session")
def subscriptions_pb(quiver_protos):
    """Python modules generated from proto/quiver/v1/subscriptions.proto:
    (subscriptions_pb2, subscriptions_pb2_grpc)."""
    return quiver_protos["subscriptions_pb2"], quiver_protos["subscriptions_pb2_grpc"]


@pytest.fixture(scope="module")
def mutations(writable_server, quiver_pb):
    """A Mutations client (`quiver_clients.Mutations`) of `writable_server`."""
    client, channel = connect_mutations(writable_server.grpc_addr, quiver_pb)
    yield client
    channel.close()
