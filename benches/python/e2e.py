"""Python clients against a running Quiver: ADBC/pyarrow vs HTTP JSON vs sqlite3 direct.

Started by `quiver-bench e2e --python .venv/bin/python`, which passes the server's
addresses and database file. Prints a Markdown table; every path ends in a pyarrow
Table except `sqlite3 fetchall` (Python tuples, the store's own driver).
"""

import argparse
import io
import json
import sqlite3
import statistics
import sys
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.json as pa_json
import requests


def timed(fn, runs):
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = fn()
        samples.append((time.perf_counter() - started, rows))
    return statistics.median(s for s, _ in samples), samples[0][1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    conn = flight_sql.connect(f"grpc://{args.grpc}")
    session = requests.Session()
    lite = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)

    print("| rows | Python path | median | rows/s | time vs ADBC |")
    print("|---:|---|---:|---:|---:|")
    sizes = [int(r) for r in args.rows.split(",")]
    for step, rows in enumerate(sizes, 1):
        print(f"[{step}/{len(sizes)}] python clients, {rows} rows", file=sys.stderr, flush=True)
        sql = f"SELECT * FROM tasks WHERE id <= {rows}"

        def adbc():
            cur = conn.cursor()
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            cur.close()
            return table.num_rows

        def http_json():
            response = session.post(f"http://{args.http}/v1/query", json={"sql": sql})
            response.raise_for_status()
            return pa.Table.from_pylist(json.loads(response.content)).num_rows

        def http_ndjson():
            response = session.post(f"http://{args.http}/v1/query", json={"sql": sql, "format": "ndjson"})
            response.raise_for_status()
            return pa_json.read_json(io.BytesIO(response.content)).num_rows

        def sqlite_tuples():
            return len(lite.execute(sql).fetchall())

        def sqlite_arrow():
            cursor = lite.execute(sql)
            names = [d[0] for d in cursor.description]
            columns = list(zip(*cursor.fetchall()))
            return pa.table({name: list(values) for name, values in zip(names, columns)}).num_rows

        paths = [
            ("ADBC Flight SQL → pyarrow Table", adbc),
            ("HTTP JSON → json.loads → pyarrow Table", http_json),
            ("HTTP NDJSON → pyarrow.json.read_json", http_ndjson),
            ("sqlite3 direct → fetchall tuples", sqlite_tuples),
            ("sqlite3 direct → pyarrow Table", sqlite_arrow),
        ]
        reference = None
        for name, fn in paths:
            seconds, got = timed(fn, args.runs)
            assert got == rows, f"{name} returned {got} rows, expected {rows}"
            reference = reference or seconds
            ratio = "—" if seconds is reference else f"{seconds / reference:.1f}×"
            print(f"| {rows} | {name} | {seconds * 1e3:.1f} ms | {rows / seconds:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
