"""What tracing, metrics and the query history cost.

Runs `quiver serve` itself (a release build: `--quiver target/release/quiver`) over one
SQLite demo database, three ways at once, and measures with ADBC:

- `off`: no `OTEL_*` variable (the default; the query history and metrics are always on);
- `traced`: every request traced and exported over OTLP/gRPC to an in-process receiver
  (`tests/python/otlp_receiver.py`);
- `traced, unsampled`: tracing on with `OTEL_TRACES_SAMPLER=always_off` (spans are
  built, nothing is exported).

Per setup: a point lookup (p50/p99), a scan of every task into a pyarrow Table, a
`GET /metrics` scrape, and the spans exported per lookup. The setups take turns, round
after round, so drift on the machine falls on all of them alike. Prints a Markdown
table on stdout and progress lines on stderr.

    .venv/bin/python benches/python/observability.py --quiver target/release/quiver --tasks 200000
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import adbc_driver_flightsql.dbapi as flight_sql  # noqa: E402
from bench_server import Server, percentile  # noqa: E402
from otlp_receiver import Receiver, compile_otlp_protos  # noqa: E402


def progress(message):
    print(f"[observability] {message}", file=sys.stderr, flush=True)


def timed(work):
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiver", default=str(ROOT / "target" / "release" / "quiver"))
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "demo.db"
        progress(f"loading {args.tasks} demo tasks")
        subprocess.run([args.quiver, "demo", "load", "--db", f"sqlite://{db_path}",
                        "--tasks", str(args.tasks)], check=True)
        (Path(tmp) / "otlp").mkdir()
        receiver = Receiver(compile_otlp_protos(Path(tmp) / "otlp"))
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"}
        setups = [
            ("off", {}),
            ("traced", traced),
            ("traced, unsampled", {**traced, "OTEL_TRACES_SAMPLER": "always_off"}),
        ]
        servers = {name: Server(args.quiver, db_path, env=env) for name, env in setups}
        # Autocommit: a DB-API connection otherwise holds a transaction open, which the
        # server ends after transaction_idle_timeout_s while the other setups take turns.
        connections = {name: flight_sql.connect(f"grpc://{s.grpc}", autocommit=True) for name, s in servers.items()}
        samples = {name: {"lookup": [], "scan": [], "scrape": []} for name, _ in setups}
        try:
            for round_ in range(args.rounds):
                progress(f"round {round_ + 1}/{args.rounds}")
                for name, _ in setups:
                    conn, server = connections[name], servers[name]
                    cursor = conn.cursor()
                    for i in range(args.lookups // args.rounds):
                        task_id = 1 + (i * 7919) % args.tasks

                        def lookup():
                            cursor.execute(f"SELECT * FROM tasks WHERE id = {task_id}")
                            assert len(cursor.fetchall()) == 1

                        samples[name]["lookup"].append(timed(lookup))
                    for _ in range(max(1, args.scans // args.rounds)):

                        def scan():
                            cursor.execute("SELECT * FROM tasks")
                            assert cursor.fetch_arrow_table().num_rows == args.tasks

                        samples[name]["scan"].append(timed(scan))
                    for _ in range(max(1, args.scrapes // args.rounds)):
                        samples[name]["scrape"].append(
                            timed(lambda: requests.get(f"http://{server.http}/metrics", timeout=30).raise_for_status())
                        )
                    cursor.close()
            time.sleep(2)  # the last batch of spans
            spans = len(receiver.snapshot())
        finally:
            for conn in connections.values():
                conn.close()
            for server in servers.values():
                server.stop()
            receiver.stop()

    lookups_traced = len(samples["traced"]["lookup"])
    print(f"{args.rounds} rounds, setups in turn; {lookups_traced} lookups, "
          f"{len(samples['off']['scan'])} scans of {args.tasks} tasks and "
          f"{len(samples['off']['scrape'])} scrapes per setup; {spans} spans exported in all "
          f"(traced setup: {lookups_traced} lookups and {len(samples['traced']['scan'])} scans)\n")
    print("| setup | lookup p50 | lookup p99 | scan median | /metrics scrape p50 |")
    print("|---|---|---|---|---|")
    for name, _ in setups:
        s = samples[name]
        print(f"| {name} | {percentile(s['lookup'], 0.5) * 1e3:.2f} ms | {percentile(s['lookup'], 0.99) * 1e3:.2f} ms "
              f"| {statistics.median(s['scan']) * 1e3:.0f} ms | {percentile(s['scrape'], 0.5) * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
