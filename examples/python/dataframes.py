"""Load a Quiver query into polars and pandas DataFrames.

Both frames come from one ADBC Flight SQL connection: polars through
`pl.read_database`, pandas through the cursor's `fetch_df` (Arrow to pandas, no row
loop in Python).

    pip install adbc-driver-flightsql pyarrow polars pandas
    QUIVER_GRPC=127.0.0.1:50051 python dataframes.py
"""

import os

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
from adbc_driver_flightsql import DatabaseOptions

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: "30",
    DatabaseOptions.TIMEOUT_FETCH.value: "30",
    DatabaseOptions.TIMEOUT_UPDATE.value: "30",
}

SQL = """
    SELECT status, count(*) AS tasks, sum(estimate_hours) AS estimate_hours
    FROM tasks
    GROUP BY status
    ORDER BY status
"""


def main():
    with flight_sql.connect(f"grpc://{GRPC}", db_kwargs=TIMEOUTS, autocommit=True) as conn:
        # polars: pass the ADBC connection; the result arrives as Arrow.
        df_polars = pl.read_database(SQL, connection=conn)
        print("polars:")
        print(df_polars)

        # pandas: run the query on a cursor and fetch a DataFrame.
        with conn.cursor() as cur:
            cur.execute(SQL)
            df_pandas = cur.fetch_df()
        print("pandas:")
        print(df_pandas.to_string(index=False))

    # The same rows and types either way.
    same = df_polars.equals(pl.from_pandas(df_pandas))
    print(f"polars and pandas agree: {same}")
    if not same:
        raise SystemExit("the two frames differ")


if __name__ == "__main__":
    main()
