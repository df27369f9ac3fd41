"""Bulk-load a pandas DataFrame into Quiver with ADBC ingest.

`cursor.adbc_ingest` streams Arrow record batches to the server, which writes them
with the store's bulk path and creates the table from the Arrow schema. The ADBC
Flight SQL driver refuses to send a gRPC message above 16 MiB, and a DataFrame
converts to one big batch: re-chunk it into a RecordBatchReader of smaller batches
first, as below.

    pip install adbc-driver-flightsql pyarrow pandas
    QUIVER_GRPC=127.0.0.1:50051 python ingest_pandas.py
"""

import os

import adbc_driver_flightsql.dbapi as flight_sql
import numpy as np
import pandas as pd
import pyarrow as pa
from adbc_driver_flightsql import DatabaseOptions

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: "30",
    DatabaseOptions.TIMEOUT_FETCH.value: "30",
    DatabaseOptions.TIMEOUT_UPDATE.value: "30",
}
TABLE = "example_readings"
ROWS = 200_000
# Each batch is one gRPC message: keep it well under the driver's 16 MiB limit.
MAX_BATCH_BYTES = 8 * 2**20
MAX_BATCH_ROWS = 65_536


def readings(n: int) -> pd.DataFrame:
    """n sensor readings of about 100 bytes each (200,000 are over 16 MiB)."""
    ids = np.arange(1, n + 1)
    return pd.DataFrame(
        {
            "id": ids,
            "sensor": [f"sensor-{i % 97:02d}" for i in ids],
            "value": np.round(np.sin(ids / 1000.0) * 50 + 20, 3),
            "recorded_at": pd.Timestamp("2025-01-01") + pd.to_timedelta(ids, unit="s"),
            "note": [f"reading {i:07d}: calibrated, within tolerance, no action needed" for i in ids],
        }
    )


def main():
    df = readings(ROWS)
    table = pa.Table.from_pandas(df, preserve_index=False)
    row_bytes = table.nbytes / max(table.num_rows, 1)
    batch_rows = max(1, min(MAX_BATCH_ROWS, int(MAX_BATCH_BYTES / row_bytes)))
    batches = table.to_batches(max_chunksize=batch_rows)
    print(f"DataFrame: {len(df)} rows, {table.nbytes / 2**20:.1f} MiB as Arrow")
    print(f"sending {len(batches)} batches of at most {batch_rows} rows")

    conn = flight_sql.connect(f"grpc://{GRPC}", db_kwargs=TIMEOUTS, autocommit=True)
    with conn, conn.cursor() as cur:
        # mode="replace" drops the table if it exists, so the example can be re-run;
        # "create" fails on an existing table, "append" adds to one.
        reader = pa.RecordBatchReader.from_batches(table.schema, batches)
        ingested = cur.adbc_ingest(TABLE, reader, mode="replace")
        print(f"ingested {ingested} rows into {TABLE}")

        cur.execute(f"SELECT count(*), min(recorded_at), max(recorded_at) FROM {TABLE}")
        count, first, last = cur.fetchone()
        print(f"read back: {count} rows, recorded {first} .. {last}")
    if count != len(df):
        raise SystemExit(f"expected {len(df)} rows, found {count}")


if __name__ == "__main__":
    main()
