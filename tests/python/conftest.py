"""Fixtures: a real `quiver serve` process over a fresh SQLite demo database."""

import os
import re
import sqlite3
import subprocess
import threading
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
    """A running `quiver serve`; its addresses are read from its log."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self.process = subprocess.Popen(
            [
                quiver_binary(),
                "serve",
                "--db",
                f"sqlite://{db_path}",
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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    db_path = tmp_path_factory.mktemp("quiver") / "demo.db"
    running = Server(db_path)
    yield running
    running.stop()
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


