"""Query Quiver over Arrow Flight SQL with the ADBC driver and pyarrow.

Shows a query with bound parameters fetched as a pyarrow Table, and the catalog
metadata ADBC exposes (tables, and a table's Arrow schema with declared types).

    pip install adbc-driver-flightsql pyarrow
    QUIVER_GRPC=127.0.0.1:50051 python query_adbc.py
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

SQL = """
    SELECT id, key, title, priority, estimate_hours
    FROM tasks
    WHERE status = ? AND priority <= ?
    ORDER BY priority, id
"""


def main():
    # autocommit=True: this connection only reads, so it needs no transaction.
    conn = flight_sql.connect(f"grpc://{GRPC}", db_kwargs=TIMEOUTS, autocommit=True)
    with conn, conn.cursor() as cur:
        # `?` placeholders are bound by the server (a prepared statement), never
        # spliced into the SQL text.
        cur.execute(SQL, ("blocked", 2))
        table = cur.fetch_arrow_table()
        print(f"blocked tasks with priority <= 2: {table.num_rows} rows")
        print(f"columns: {', '.join(f'{f.name} {f.type}' for f in table.schema)}")
        for row in table.slice(0, 3).to_pylist():
            print(f"  {row['id']:>6}  {row['key']:<12} p{row['priority']}  {row['title']}")

        # Metadata: every table the server exposes, by catalog and schema.
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        for catalog in objects:
            for schema in catalog["catalog_db_schemas"]:
                names = sorted(t["table_name"] for t in schema["db_schema_tables"])
                print(f"tables in {catalog['catalog_name']}.{schema['db_schema_name']}: {', '.join(names)}")

        # One table's Arrow schema; the store's declared type rides in field metadata.
        schema = conn.adbc_get_table_schema("tasks")
        print("tasks schema:")
        for field in schema:
            declared = (field.metadata or {}).get(b"ARROW:FLIGHT:SQL:TYPE_NAME", b"?").decode()
            print(f"  {field.name}: {field.type} ({declared}{'' if field.nullable else ', not null'})")


if __name__ == "__main__":
    main()
