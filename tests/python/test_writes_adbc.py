"""Writes through Flight SQL with the ADBC driver (DDL, DML, executemany, bulk ingest,
transactions), against a server of this module's own; the truth is the server's
database read directly (`store`)."""

import datetime
import warnings

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pytest

T0 = datetime.datetime(2025, 3, 1, 12, 0, 0)
T0_MICROS = (T0 - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)


def table_objects(conn, schema: str, table: str):
    """The ADBC get_objects entry of one table (None when it is not listed)."""
    objects = conn.adbc_get_objects(depth="columns", table_name_filter=table).read_all().to_pylist()
    for catalog in objects:
        for db_schema in catalog["catalog_db_schemas"] or []:
            if db_schema["db_schema_name"] != schema:
                continue
            for entry in db_schema["db_schema_tables"] or []:
                if entry["table_name"] == table:
                    return entry
    return None


def events(n: int, offset: int = 0) -> pa.Table:
    """n rows with ids offset+1..offset+n; every 10th amount is NULL."""
    ids = list(range(offset + 1, offset + n + 1))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"event {i}" for i in ids], pa.string()),
            "amount": pa.array([None if i % 10 == 0 else i * 0.5 for i in ids], pa.float64()),
            "created_at": pa.array([T0_MICROS + i * 1_000_000 for i in ids], pa.int64()).cast(pa.timestamp("us")),
        }
    )


def expected_aggregates(ids: list[int]) -> tuple:
    """(count, sum(id), count(amount), sum(amount)) of `events` rows with these ids."""
    amounts = [i * 0.5 for i in ids if i % 10 != 0]
    return (len(ids), sum(ids), len(amounts), round(sum(amounts), 6))


AGGREGATES = "SELECT count(*), sum(id), count(amount), sum(amount) FROM {}"


def test_create_table_is_listed_and_queryable(writable_server, writer, store):
    cur = writer.cursor()
    assert store.columns("adbc_ddl_notes") == []
    cur.execute("CREATE TABLE adbc_ddl_notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL, score DOUBLE PRECISION)")

    assert store.columns("adbc_ddl_notes") == ["id", "body", "score"]
    entry = table_objects(writer, writable_server.schema, "adbc_ddl_notes")
    assert entry is not None, "the new table is in adbc_get_objects"
    assert entry["table_type"] == "TABLE"
    assert [c["column_name"] for c in entry["table_columns"]] == store.columns("adbc_ddl_notes")

    schema = writer.adbc_get_table_schema("adbc_ddl_notes")
    assert schema.names == ["id", "body", "score"]
    assert schema.field("id").type == pa.int64()
    assert schema.field("body").type == pa.string()
    assert schema.field("score").type == pa.float64()

    cur.execute("SELECT id, body, score FROM adbc_ddl_notes")
    result = cur.fetch_arrow_table()
    assert result.num_rows == 0
    assert result.column_names == ["id", "body", "score"]


def test_drop_table_removes_it(writable_server, writer, store):
    cur = writer.cursor()
    cur.execute("CREATE TABLE adbc_ddl_dropped (id BIGINT PRIMARY KEY)")
    assert table_objects(writer, writable_server.schema, "adbc_ddl_dropped") is not None
    cur.execute("DROP TABLE adbc_ddl_dropped")
    assert store.columns("adbc_ddl_dropped") == []
    assert table_objects(writer, writable_server.schema, "adbc_ddl_dropped") is None
    with pytest.raises(adbc_driver_manager.Error) as raised:
        cur.execute("SELECT * FROM adbc_ddl_dropped")
    assert "adbc_ddl_dropped" in str(raised.value)


def test_insert_update_delete_rowcounts_match_the_store(writer, store):
    cur = writer.cursor()
    cur.execute("CREATE TABLE adbc_dml_items (id BIGINT PRIMARY KEY, grp BIGINT NOT NULL, label TEXT)")
    values = ", ".join(f"({i}, {i % 4}, 'item {i}')" for i in range(1, 41))
    cur.execute(f"INSERT INTO adbc_dml_items (id, grp, label) VALUES {values}")
    assert cur.rowcount == store.count("adbc_dml_items") == 40

    expected = store.count("adbc_dml_items", "grp = 2 AND id > 10")
    assert expected > 0
    cur.execute("UPDATE adbc_dml_items SET label = 'updated' WHERE grp = 2 AND id > 10")
    assert cur.rowcount == expected
    assert store.count("adbc_dml_items", "label = 'updated'") == expected
    assert store.count("adbc_dml_items", "label = 'updated' AND NOT (grp = 2 AND id > 10)") == 0

    expected = store.count("adbc_dml_items", "grp = 3")
    assert expected > 0
    cur.execute("DELETE FROM adbc_dml_items WHERE grp = 3")
    assert cur.rowcount == expected
    assert store.count("adbc_dml_items", "grp = 3") == 0
    assert store.count("adbc_dml_items") == 40 - expected

    cur.execute("UPDATE adbc_dml_items SET label = 'nothing' WHERE id > 1000")
    assert cur.rowcount == 0
    cur.execute("DELETE FROM adbc_dml_items WHERE id > 1000")
    assert cur.rowcount == 0
    assert store.count("adbc_dml_items") == 40 - expected

    # Flight reads agree with the store.
    cur.execute("SELECT id, grp, label FROM adbc_dml_items ORDER BY id")
    assert cur.fetchall() == store.rows("SELECT id, grp, label FROM adbc_dml_items ORDER BY id")


def test_executemany_inserts_every_row(writer, store):
    cur = writer.cursor()
    cur.execute("CREATE TABLE adbc_many_notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL, score DOUBLE PRECISION)")
    rows = [(i, f"note {i}", None if i % 7 == 0 else i * 0.5) for i in range(1, 501)]
    cur.executemany("INSERT INTO adbc_many_notes (id, body, score) VALUES (?, ?, ?)", rows)
    assert cur.rowcount == 500
    assert store.count("adbc_many_notes") == 500
    scores = [s for _, _, s in rows if s is not None]
    assert store.rows("SELECT sum(id), count(score), sum(score) FROM adbc_many_notes") == [
        (sum(range(1, 501)), len(scores), round(sum(scores), 6))
    ]
    assert store.rows("SELECT id, body, score FROM adbc_many_notes ORDER BY id") == [
        (i, body, None if score is None else round(score, 6)) for i, body, score in rows
    ]


def test_ingest_create_append_replace(writer, store):
    cur = writer.cursor()
    first = events(100_000)
    assert cur.adbc_ingest("adbc_ingest_events", first, mode="create") == 100_000
    assert store.columns("adbc_ingest_events") == ["id", "name", "amount", "created_at"]
    assert store.rows(AGGREGATES.format("adbc_ingest_events")) == [expected_aggregates(list(range(1, 100_001)))]

    # create on an existing table fails and changes nothing.
    with pytest.raises(adbc_driver_manager.Error):
        cur.adbc_ingest("adbc_ingest_events", events(10), mode="create")
    assert store.count("adbc_ingest_events") == 100_000

    assert cur.adbc_ingest("adbc_ingest_events", events(100_000, offset=100_000), mode="append") == 100_000
    assert store.count("adbc_ingest_events") == 200_000
    assert store.rows(AGGREGATES.format("adbc_ingest_events")) == [expected_aggregates(list(range(1, 200_001)))]

    replacement = events(1_000, offset=500_000)
    assert cur.adbc_ingest("adbc_ingest_events", replacement, mode="replace") == 1_000
    assert store.count("adbc_ingest_events") == 1_000
    assert store.rows(AGGREGATES.format("adbc_ingest_events")) == [
        expected_aggregates(list(range(500_001, 501_001)))
    ]

    # The data round-trips: a sample read from the store, and through Flight with its types.
    sample = [500_001, 500_010, 500_500, 501_000]
    in_list = ", ".join(map(str, sample))
    source = {r["id"]: r for r in replacement.to_pylist()}
    assert store.rows(f"SELECT id, name, amount FROM adbc_ingest_events WHERE id IN ({in_list}) ORDER BY id") == [
        (i, source[i]["name"], source[i]["amount"]) for i in sample
    ]
    cur.execute(f"SELECT id, name, amount, created_at FROM adbc_ingest_events WHERE id IN ({in_list}) ORDER BY id")
    fetched = cur.fetch_arrow_table()
    assert fetched.schema.field("id").type == pa.int64()
    assert fetched.schema.field("amount").type == pa.float64()
    assert fetched.schema.field("created_at").type == pa.timestamp("us")
    assert fetched.to_pylist() == [source[i] for i in sample]


def test_transactions_roll_back_and_commit(writable_server, writer, store):
    writer.cursor().execute("CREATE TABLE adbc_txn_items (id BIGINT PRIMARY KEY, label TEXT)")
    with warnings.catch_warnings():
        # "Cannot disable autocommit" would mean the server advertises no transactions.
        warnings.simplefilter("error")
        conn = flight_sql.connect(writable_server.grpc_uri, autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO adbc_txn_items (id, label) VALUES (1, 'rolled back')")
        assert cur.rowcount == 1
        assert store.count("adbc_txn_items") == 0, "uncommitted rows are not visible"
        conn.rollback()
        assert store.count("adbc_txn_items") == 0

        cur.execute("INSERT INTO adbc_txn_items (id, label) VALUES (2, 'committed')")
        cur.execute("INSERT INTO adbc_txn_items (id, label) VALUES (3, 'committed too')")
        cur.execute("UPDATE adbc_txn_items SET label = 'committed, updated' WHERE id = 3")
        assert cur.rowcount == 1
        assert store.count("adbc_txn_items") == 0, "uncommitted rows are not visible"
        other = writer.cursor()
        other.execute("SELECT count(*) FROM adbc_txn_items")
        assert other.fetchone()[0] == 0, "other Flight connections do not see uncommitted rows"
        conn.commit()
        assert store.rows("SELECT id, label FROM adbc_txn_items ORDER BY id") == [
            (2, "committed"),
            (3, "committed, updated"),
        ]
        other.execute("SELECT id, label FROM adbc_txn_items ORDER BY id")
        assert other.fetchall() == [(2, "committed"), (3, "committed, updated")]

        # A failed statement inside a transaction, then rollback: nothing of it stays.
        cur.execute("INSERT INTO adbc_txn_items (id, label) VALUES (4, 'before the error')")
        with pytest.raises(adbc_driver_manager.Error):
            cur.execute("INSERT INTO adbc_txn_items (id, label) VALUES (2, 'duplicate')")
        conn.rollback()
        assert store.rows("SELECT id FROM adbc_txn_items ORDER BY id") == [(2,), (3,)]
    finally:
        # The driver begins a new transaction after every commit and rollback, and its
        # close does not end it: roll back what a failure left, then leave transaction
        # mode (which commits the new, empty transaction) before closing.
        try:
            conn.rollback()
            conn.adbc_connection.set_autocommit(True)
        finally:
            conn.close()


def test_a_unique_violation_raises_and_changes_nothing(writer, store):
    cur = writer.cursor()
    cur.execute("CREATE TABLE adbc_unique_items (id BIGINT PRIMARY KEY, code TEXT NOT NULL UNIQUE)")
    cur.execute("INSERT INTO adbc_unique_items (id, code) VALUES (1, 'a'), (2, 'b')")
    before = store.rows("SELECT id, code FROM adbc_unique_items ORDER BY id")
    assert before == [(1, "a"), (2, "b")]

    # The second row collides on `code`: the statement fails whole.
    with pytest.raises((adbc_driver_manager.IntegrityError, adbc_driver_manager.ProgrammingError)) as raised:
        cur.execute("INSERT INTO adbc_unique_items (id, code) VALUES (3, 'c'), (4, 'a')")
    message = str(raised.value).lower()
    assert any(word in message for word in ("unique", "duplicate")), message
    assert raised.value.status_code in (
        adbc_driver_manager.AdbcStatusCode.ALREADY_EXISTS,
        adbc_driver_manager.AdbcStatusCode.INTEGRITY,
    )
    assert store.rows("SELECT id, code FROM adbc_unique_items ORDER BY id") == before

    # The same through executemany (primary key this time), and the connection survives.
    with pytest.raises((adbc_driver_manager.IntegrityError, adbc_driver_manager.ProgrammingError)):
        cur.executemany("INSERT INTO adbc_unique_items (id, code) VALUES (?, ?)", [(5, "e"), (1, "f")])
    assert store.rows("SELECT id, code FROM adbc_unique_items ORDER BY id") == before
    cur.execute("SELECT count(*) FROM adbc_unique_items")
    assert cur.fetchone()[0] == 2


def test_an_update_of_tasks_is_seen_by_the_next_select(writer, store):
    predicate = "status = 'blocked' AND priority = 1"
    ids = [row[0] for row in store.rows(f"SELECT id FROM tasks WHERE {predicate} ORDER BY id")]
    assert ids, "the demo has blocked tasks of priority 1"
    cur = writer.cursor()
    cur.execute(f"SELECT count(*) FROM tasks WHERE {predicate}")
    assert cur.fetchone()[0] == len(ids)

    cur.execute(f"UPDATE tasks SET status = 'review' WHERE {predicate}")
    assert cur.rowcount == len(ids)

    cur.execute(f"SELECT count(*) FROM tasks WHERE {predicate}")
    assert cur.fetchone()[0] == 0 == store.count("tasks", predicate)
    in_list = ", ".join(map(str, ids))
    cur.execute(f"SELECT id, status FROM tasks WHERE id IN ({in_list}) ORDER BY id")
    assert cur.fetchall() == [(i, "review") for i in ids]
    assert store.rows(f"SELECT id, status FROM tasks WHERE id IN ({in_list}) ORDER BY id") == [
        (i, "review") for i in ids
    ]
    cur.execute("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
    assert cur.fetchall() == store.rows("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")


def test_a_check_violation_through_flight_raises_and_changes_nothing(writer, store):
    task_id = store.scalar("SELECT min(id) FROM tasks")
    before = store.rows(f"SELECT id, priority, status FROM tasks WHERE id = {task_id}")
    cur = writer.cursor()
    with pytest.raises(adbc_driver_manager.Error) as raised:
        cur.execute(f"UPDATE tasks SET priority = 9, status = 'done' WHERE id = {task_id}")
    assert "priority" in str(raised.value).lower()
    assert store.rows(f"SELECT id, priority, status FROM tasks WHERE id = {task_id}") == before
