"""Fixtures: a real `quiver serve` process over a fresh demo database, once on SQLite
and once on PostgreSQL (from QUIVER_TEST_POSTGRES_URL), with SQLite as the truth."""

import os
import re
import sqlite3
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

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
    or for a PostgreSQL-backed server a copy loaded as the truth to compare with."""

    def __init__(self, db_url: str, db_path: Path, schema: str):
        self.db_path = db_path
        self.schema = schema
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
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "QUIVER_LOG": "info"},
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


class PostgresDatabase:
    """A fresh database for one test session, dropped afterwards."""

    def __init__(self, admin_url: str):
        import psycopg

        self.admin_url = admin_url
        self.name = f"quiver_pytest_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = with_database(admin_url, self.name)

    def drop(self):
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request, tmp_path_factory):
    db_path = tmp_path_factory.mktemp("quiver") / "demo.db"
    postgres = None
    if request.param == "sqlite":
        running = Server(f"sqlite://{db_path}", db_path, "main")
    else:
        postgres = PostgresDatabase(postgres_admin_url())
        # The truth: the same deterministic demo, in SQLite.
        subprocess.run(
            [quiver_binary(), "demo", "load", "--db", f"sqlite://{db_path}", "--tasks", str(DEMO_TASKS)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running = Server(postgres.url, db_path, "public")
    try:
        yield running
    finally:
        running.stop()
        if postgres is not None:
            postgres.drop()
    assert running.process.returncode == 0, "server exits cleanly on SIGTERM:\n" + "".join(running.log[-20:])


@pytest.fixture()
def sqlite(server):
    """SQLite itself on the server's database file: the source of truth."""
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    yield conn
    conn.close()


@pytest.fixture()
def adbc(server):
    import adbc_driver_flightsql.dbapi as flight_sql

    conn = flight_sql.connect(server.grpc_uri)
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


