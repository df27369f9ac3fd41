"""Transactions over Flight SQL: roll back, then commit.

An ADBC connection opened with `autocommit=False` runs its writes in a server-side
transaction until `commit()` or `rollback()`. A second, autocommit connection shows
what everyone else sees: nothing of the transaction until it commits.

    pip install adbc-driver-flightsql pyarrow
    QUIVER_GRPC=127.0.0.1:50051 python transaction.py
"""

import os

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: "30",
    DatabaseOptions.TIMEOUT_FETCH.value: "30",
    DatabaseOptions.TIMEOUT_UPDATE.value: "30",
}
TABLE = "example_ledger"


def main():
    uri = f"grpc://{GRPC}"
    observer = flight_sql.connect(uri, db_kwargs=TIMEOUTS, autocommit=True)
    with observer, observer.cursor() as look:

        def visible() -> list:
            look.execute(f"SELECT id, account, amount FROM {TABLE} ORDER BY id")
            return look.fetchall()

        # A scratch table of our own, emptied so every run starts the same way.
        look.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id BIGINT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL)"
        )
        look.execute(f"DELETE FROM {TABLE}")
        print(f"{TABLE} at start: {visible()}")

        conn = flight_sql.connect(uri, db_kwargs=TIMEOUTS, autocommit=False)
        try:
            cur = conn.cursor()
            cur.execute(f"INSERT INTO {TABLE} (id, account, amount) VALUES (1, 'alice', -50), (2, 'bob', 50)")
            print(f"inserted {cur.rowcount} rows in a transaction; others see: {visible()}")
            conn.rollback()
            print(f"after rollback: {visible()}")

            cur.execute(f"INSERT INTO {TABLE} (id, account, amount) VALUES (3, 'alice', -20), (4, 'carol', 20)")
            cur.execute(f"UPDATE {TABLE} SET amount = amount * 2 WHERE id IN (3, 4)")
            print(f"inserted and updated {cur.rowcount} rows in a transaction; others see: {visible()}")
            conn.commit()
            print(f"after commit: {visible()}")
        finally:
            # The driver opens a new transaction after each commit or rollback, and
            # closing the connection does not end it: roll back whatever an error
            # left, leave transaction mode, then close.
            conn.rollback()
            conn.adbc_connection.set_autocommit(True)
            conn.close()


if __name__ == "__main__":
    main()
