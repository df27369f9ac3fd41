"""What authentication, TLS and per-client limits cost, and what the limits buy.

Runs `quiver serve` itself (a release build: `--quiver target/release/quiver`) over one
SQLite demo database, several ways in the same run, and measures with ADBC:

1. Overhead: connect (ADBC connect, with the handshake when logging in), a point
   lookup (p50/p99), and a large scan into a pyarrow Table, each with
   - no authentication, plaintext (the peer),
   - a static API token, plaintext,
   - a user logging in with a password (handshake; the issued token after),
   - a static API token over TLS.
2. Fairness: principal A floods the server with concurrent heavy queries while
   principal B runs point lookups; B's latency alone, during the flood with the
   default per-client query limit (half of the server's query slots), and during the
   flood with no per-client limit (the peer).

Credentials and certificates are made with the test suite's helpers
(`tests/python/auth_setup.py`: the `quiver auth` commands and the openssl CLI).
Prints Markdown tables on stdout and progress lines on stderr.

    .venv/bin/python benches/python/security.py --quiver target/release/quiver --tasks 200000
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import adbc_driver_flightsql.dbapi as flight_sql  # noqa: E402
from bench_server import Server, percentile  # noqa: E402

POINT_SQL = "SELECT * FROM tasks WHERE id = 1"  # set from --tasks in main()
HEAVY_SQL = (
    "SELECT a.status, count(*) AS n, sum(b.priority) AS p FROM tasks a JOIN tasks b "
    "ON a.status = b.status AND a.priority = b.priority AND a.feature_id = b.feature_id "
    "GROUP BY a.status ORDER BY a.status"
)


def progress(message):
    print(f"[security] {message}", file=sys.stderr, flush=True)


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def connect(uri, db_kwargs):
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def run(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    table = cur.fetch_arrow_table()
    cur.close()
    return table


def overhead(binary, db_path, creds, lookups, scans, rounds):
    tls_args = ["--tls-cert", str(creds.pki.server.cert), "--tls-key", str(creds.pki.server.key)]
    auth_args = ["--auth-file", str(creds.main_auth_file)]
    ca = creds.pki.ca.cert.read_text()
    token = {"adbc.flight.sql.authorization_header": f"Bearer {creds.token}"}
    login = {"username": "alice", "password": auth_setup.PASSWORDS["alice"]}
    setups = [
        ("no authentication, plaintext", [], "grpc", {}),
        ("API token, plaintext", auth_args, "grpc", token),
        ("user + password (handshake), plaintext", auth_args, "grpc", login),
        ("API token, TLS", auth_args + tls_args, "grpc+tls",
         {**token, "adbc.flight.sql.client_option.tls_root_certs": ca}),
    ]
    # Every server runs at once and the setups take turns, round after round, so a
    # machine that slows down or speeds up during the run weighs on all of them alike.
    servers = [Server(binary, db_path, *args) for _, args, _, _ in setups]
    samples = {name: {"connect": [], "lookup": [], "scan": []} for name, *_ in setups}
    scan_bytes = 0
    try:
        uris = [f"{scheme}://{server.grpc}" for (_, _, scheme, _), server in zip(setups, servers)]
        conns = [connect(uri, db_kwargs) for uri, (_, _, _, db_kwargs) in zip(uris, setups)]
        for conn in conns:
            run(conn, POINT_SQL)
            run(conn, "SELECT * FROM tasks")
        for round_ in range(rounds):
            progress(f"overhead round {round_ + 1}/{rounds}")
            order = list(zip(setups, uris, conns))
            if round_ % 2:
                order.reverse()
            for (name, _, _, db_kwargs), uri, conn in order:
                started = time.perf_counter()
                fresh = connect(uri, db_kwargs)
                run(fresh, "SELECT 1")
                samples[name]["connect"].append(time.perf_counter() - started)
                fresh.close()
                for _ in range(lookups // rounds):
                    started = time.perf_counter()
                    assert run(conn, POINT_SQL).num_rows == 1
                    samples[name]["lookup"].append(time.perf_counter() - started)
                for _ in range(max(1, scans // rounds)):
                    started = time.perf_counter()
                    table = run(conn, "SELECT * FROM tasks")
                    samples[name]["scan"].append(time.perf_counter() - started)
                    scan_bytes = table.nbytes
        for conn in conns:
            conn.close()
    finally:
        for server in servers:
            server.stop()
    base_scan = statistics.median(samples[setups[0][0]]["scan"])
    base_lookup = percentile(samples[setups[0][0]]["lookup"], 0.5)
    print(f"{rounds} rounds, setups in turn; {len(samples[setups[0][0]]['lookup'])} lookups, "
          f"{len(samples[setups[0][0]]['scan'])} scans of {scan_bytes / 1e6:.0f} MB each per setup.\n")
    print("| setup | connect (median) | point lookup p50 | p99 | p50 vs no auth | full scan (median) | MB/s | scan vs no auth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, *_ in setups:
        s = samples[name]
        p50 = percentile(s["lookup"], 0.5)
        scan = statistics.median(s["scan"])
        print(f"| {name} | {ms(statistics.median(s['connect']))} | {ms(p50)} | "
              f"{ms(percentile(s['lookup'], 0.99))} | {p50 / base_lookup:.2f}× | {ms(scan)} | "
              f"{scan_bytes / scan / 1e6:.0f} | {scan / base_scan:.2f}× |")
    print()


def fairness(binary, db_path, creds, seconds, flooders):
    token = {"adbc.flight.sql.authorization_header": f"Bearer {creds.token}"}
    alice = {"username": "alice", "password": auth_setup.PASSWORDS["alice"]}
    cpus = os.cpu_count() or 2
    setups = [
        ("default per-client limit (half the query slots)", []),
        ("no per-client limit", ["--client-max-concurrent-queries", str(4 * cpus)]),
    ]
    results = []
    alone = None
    for step, (name, args) in enumerate(setups, 1):
        progress(f"fairness {step}/{len(setups)}: {name}")
        server = Server(binary, db_path, "--auth-file", str(creds.main_auth_file), *args)
        uri = f"grpc://{server.grpc}"
        try:
            b = connect(uri, token)
            run(b, POINT_SQL)
            if alone is None:
                samples = []
                deadline = time.monotonic() + seconds / 2
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    run(b, POINT_SQL)
                    samples.append(time.perf_counter() - started)
                alone = samples
            stop = threading.Event()
            outcomes = {"ok": 0, "refused": 0}
            lock = threading.Lock()

            def flood():
                conn = connect(uri, alice)
                while not stop.is_set():
                    try:
                        run(conn, HEAVY_SQL)
                        key = "ok"
                    except Exception:  # noqa: BLE001 - RESOURCE_EXHAUSTED or a timeout: counted
                        key = "refused"
                    with lock:
                        outcomes[key] += 1
                conn.close()

            threads = [threading.Thread(target=flood, daemon=True) for _ in range(flooders)]
            for thread in threads:
                thread.start()
            time.sleep(2)  # the flood is under way
            samples, failures = [], 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    run(b, POINT_SQL)
                    samples.append(time.perf_counter() - started)
                except Exception:  # noqa: BLE001 - counted
                    failures += 1
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            b.close()
            results.append((name, samples, failures, dict(outcomes)))
        finally:
            server.stop()
    print(f"Principal B's point lookups while principal A runs {flooders} heavy queries at once:")
    print()
    print("| server | B p50 | B p95 | B p99 | B queries | B failed | A's heavy queries done / refused |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| B alone | {ms(percentile(alone, 0.5))} | {ms(percentile(alone, 0.95))} | "
          f"{ms(percentile(alone, 0.99))} | {len(alone)} | 0 | – |")
    for name, samples, failures, outcomes in results:
        if samples:
            print(f"| flood, {name} | {ms(percentile(samples, 0.5))} | {ms(percentile(samples, 0.95))} | "
                  f"{ms(percentile(samples, 0.99))} | {len(samples)} | {failures} | "
                  f"{outcomes['ok']} / {outcomes['refused']} |")
        else:
            print(f"| flood, {name} | – | – | – | 0 | {failures} | {outcomes['ok']} / {outcomes['refused']} |")
    print()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiver", default=str(ROOT / "target" / "release" / "quiver"))
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--flooders", type=int, default=16)
    args = parser.parse_args()
    global POINT_SQL
    POINT_SQL = f"SELECT * FROM tasks WHERE id = {args.tasks // 2}"
    os.environ["QUIVER_BIN"] = str(Path(args.quiver).resolve())
    global auth_setup
    import auth_setup  # noqa: E402  (needs QUIVER_BIN)

    with tempfile.TemporaryDirectory(prefix="quiver-security-bench-") as tmp:
        tmp = Path(tmp)
        progress("credentials and certificates")
        creds = auth_setup.make_credentials(tmp)
        db_path = tmp / "bench.db"
        progress(f"demo data: {args.tasks} tasks")
        subprocess.run([args.quiver, "demo", "load", "--db", f"sqlite://{db_path}", "--tasks", str(args.tasks)],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"SQLite demo database, {args.tasks} tasks; ADBC (Python) clients; "
              f"{os.cpu_count()} CPUs.\n")
        overhead(args.quiver, db_path, creds, args.lookups, args.scans, args.rounds)
        fairness(args.quiver, db_path, creds, args.seconds, args.flooders)


if __name__ == "__main__":
    main()
