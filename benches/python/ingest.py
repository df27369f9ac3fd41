"""Bulk ingest from Python into a running Quiver: ADBC Flight SQL `adbc_ingest`.

Started by `quiver-bench mutations --python .venv/bin/python`, which passes the server's
gRPC address and the row count. Builds a pyarrow Table of the same rows as the Rust
harness's `bench_events` (id, name, score, at), times `cursor.adbc_ingest` into a new
table (mode "create", autocommit), checks the row count, and prints one JSON line on
stdout: {"rows": N, "seconds": s}. Progress goes to stderr.
"""

import argparse
import json
import sys
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa

# 2026-01-01T00:00:00Z in µs: `at` of event i is this plus i seconds (as in mutations.rs).
BASE_MICROS = 1_767_225_600_000_000


def events(rows, chunk):
    """`rows` events, ids from 1, in record batches of at most `chunk` rows."""
    ids = list(range(1, rows + 1))
    table = pa.table(
        {
            "id": pa.array(ids, type=pa.int64()),
            "name": pa.array([f"event-{i:09d}" for i in ids], type=pa.string()),
            "score": pa.array([(i % 1000) / 10 for i in ids], type=pa.float64()),
            "at": pa.array([BASE_MICROS + i * 1_000_000 for i in ids], type=pa.timestamp("us")),
        }
    )
    return pa.Table.from_batches(table.to_batches(max_chunksize=chunk), schema=table.schema)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True, help="host:port of Quiver's gRPC listener")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--table", default="bench_events_adbc")
    parser.add_argument("--chunk", type=int, default=50_000, help="rows per record batch")
    args = parser.parse_args()

    print(f"python ingest: building {args.rows} rows", file=sys.stderr, flush=True)
    table = events(args.rows, args.chunk)
    with flight_sql.connect(f"grpc://{args.grpc}", autocommit=True) as conn:
        with conn.cursor() as cur:
            print(
                f"python ingest: adbc_ingest of {table.num_rows} rows into {args.table}",
                file=sys.stderr,
                flush=True,
            )
            started = time.perf_counter()
            cur.adbc_ingest(args.table, table, mode="create")
            seconds = time.perf_counter() - started
            cur.execute(f"SELECT count(*) FROM {args.table}")
            (count,) = cur.fetchone()
    if count != args.rows:
        print(f"python ingest: {args.table} has {count} of {args.rows} rows", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"rows": args.rows, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
