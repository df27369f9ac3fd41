"""What an Arrow client expects of transactions and schema changes, with the ADBC
driver against a server of this module's own (both backends): a transaction reads its
own writes and nobody else does; a connection that goes away mid-transaction leaves
writers unblocked within seconds; a table dropped and created again with other column
types is queryable at once on every pooled connection; the schema announced for a
query is the schema of the batches streamed. The truth is the database read directly
(`store`)."""

import contextlib
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pytest

from arrow_types import every_type_table, to_microseconds


@contextlib.contextmanager
def transaction(server):
    """An ADBC connection in transaction mode, rolled back and closed afterwards."""
    conn = flight_sql.connect(server.grpc_uri, autocommit=False)
    try:
        yield conn
    finally:
        try:
            conn.rollback()
            conn.adbc_connection.set_autocommit(True)
        finally:
            conn.close()


def fetch(conn, sql, params=None):
    cur = conn.cursor()
    cur.execute(sql, params)
    return cur.fetchall()


def test_a_transaction_reads_its_own_writes_and_nobody_else_does(writable_server, writer, store):
    writer.cursor().execute("CREATE TABLE txn_own (id BIGINT PRIMARY KEY, label TEXT NOT NULL)")
    writer.cursor().execute("CREATE TABLE txn_own_tags (id BIGINT PRIMARY KEY, item BIGINT, tag TEXT)")
    writer.cursor().execute("INSERT INTO txn_own (id, label) VALUES (1, 'committed before')")
    with transaction(writable_server) as conn:
        cur = conn.cursor()
        cur.execute("INSERT INTO txn_own (id, label) VALUES (2, 'mine')")
        cur.execute("UPDATE txn_own SET label = 'changed by me' WHERE id = 1")
        cur.execute("INSERT INTO txn_own_tags (id, item, tag) VALUES (10, 2, 'a'), (11, 2, 'b')")

        # The transaction's own reads: plain, filtered, prepared with a parameter,
        # aggregated and joined across two tables, all seeing the uncommitted rows.
        assert fetch(conn, "SELECT id, label FROM txn_own ORDER BY id") == [
            (1, "changed by me"),
            (2, "mine"),
        ]
        assert fetch(conn, "SELECT label FROM txn_own WHERE id = ?", [2]) == [("mine",)]
        assert fetch(conn, "SELECT count(*) FROM txn_own") == [(2,)]
        assert fetch(
            conn,
            "SELECT t.label, g.tag FROM txn_own t JOIN txn_own_tags g ON g.item = t.id ORDER BY g.tag",
        ) == [("mine", "a"), ("mine", "b")]

        # Everyone else sees only what is committed.
        assert fetch(writer, "SELECT id, label FROM txn_own ORDER BY id") == [(1, "committed before")]
        assert store.rows("SELECT id, label FROM txn_own ORDER BY id") == [(1, "committed before")]

        conn.rollback()
        # After the rollback the same connection (in a new transaction) sees the
        # committed state again.
        assert fetch(conn, "SELECT id, label FROM txn_own ORDER BY id") == [(1, "committed before")]

        cur = conn.cursor()
        cur.execute("INSERT INTO txn_own (id, label) VALUES (3, 'kept')")
        assert fetch(conn, "SELECT id FROM txn_own ORDER BY id") == [(1,), (3,)]
        conn.commit()
    assert store.rows("SELECT id, label FROM txn_own ORDER BY id") == [(1, "committed before"), (3, "kept")]
    assert fetch(writer, "SELECT id FROM txn_own ORDER BY id") == [(1,), (3,)]


def test_a_query_in_a_transaction_sees_rows_beyond_one_batch(writable_server, writer, store):
    """Reads on the transaction's connection come in batches like any other read."""
    writer.cursor().execute("CREATE TABLE txn_many (id BIGINT PRIMARY KEY, v BIGINT)")
    with transaction(writable_server) as conn:
        conn.cursor().execute(
            "INSERT INTO txn_many (id, v) SELECT x, x FROM "
            "(WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < 19999) SELECT x FROM c) s"
        )
        assert fetch(conn, "SELECT count(*), sum(v) FROM txn_many") == [(20_000, sum(range(20_000)))]
        rows = conn.cursor()
        rows.execute("SELECT id FROM txn_many ORDER BY id")
        assert rows.fetch_arrow_table().column("id").to_pylist() == list(range(20_000))
        assert store.count("txn_many") == 0
        conn.rollback()
    assert store.count("txn_many") == 0


def test_a_closed_connection_rolls_back_and_writers_go_on_within_seconds(writable_server, writer, store):
    writer.cursor().execute("CREATE TABLE txn_abandoned (id BIGINT PRIMARY KEY)")
    conn = flight_sql.connect(writable_server.grpc_uri, autocommit=False)
    conn.cursor().execute("INSERT INTO txn_abandoned (id) VALUES (1)")
    # Gone without commit or rollback (the client process died, say).
    conn.close()
    started = time.monotonic()
    writer.cursor().execute("INSERT INTO txn_abandoned (id) VALUES (2)")
    waited = time.monotonic() - started
    assert waited < 5, f"a writer waited {waited:.1f} s behind an abandoned transaction"
    assert store.rows("SELECT id FROM txn_abandoned ORDER BY id") == [(2,)]


def test_a_table_created_again_with_other_types_is_queryable_at_once_everywhere(writable_server, writer, store):
    """Drop and create again with other column types: every following query works,
    whichever pooled connection serves it (PostgreSQL caches statements per
    connection)."""
    writer.cursor().execute("CREATE TABLE retyped (id BIGINT PRIMARY KEY, v BIGINT)")
    writer.cursor().execute("INSERT INTO retyped (id, v) VALUES (1, 10)")
    # Warm every pooled connection's statement cache with the old shape.
    readers = [flight_sql.connect(writable_server.grpc_uri, autocommit=True) for _ in range(4)]
    try:
        for _ in range(3):
            for reader in readers:
                assert fetch(reader, "SELECT id, v FROM retyped") == [(1, 10)]
                assert fetch(reader, "SELECT v FROM retyped WHERE id = ?", [1]) == [(10,)]
        writer.cursor().execute("DROP TABLE retyped")
        writer.cursor().execute("CREATE TABLE retyped (id BIGINT PRIMARY KEY, v TEXT)")
        writer.cursor().execute("INSERT INTO retyped (id, v) VALUES (1, 'ten')")
        for _ in range(3):
            for reader in readers:
                assert fetch(reader, "SELECT id, v FROM retyped") == [(1, "ten")]
                assert fetch(reader, "SELECT v FROM retyped WHERE id = ?", [1]) == [("ten",)]
    finally:
        for reader in readers:
            reader.close()
    assert store.rows("SELECT id, v FROM retyped") == [(1, "ten")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, key, title FROM tasks ORDER BY id LIMIT 5",
        "SELECT t.id, f.title AS feature FROM tasks t LEFT JOIN features f ON f.id = t.feature_id ORDER BY t.id LIMIT 5",
        "SELECT count(*) AS n, max(id) AS top FROM tasks",
        "SELECT id, coalesce(title, 'none') AS title FROM tasks WHERE id < 4",
        "SELECT 1 AS one, 'x' AS letter",
    ],
)
def test_the_announced_schema_is_the_streamed_schema(writable_server, sql):
    """GetFlightInfo announces fields, types and nullability; the batches carry the same."""
    from pyarrow import flight

    from hostile_clients import statement_query

    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)))
        announced = info.schema
        reader = client.do_get(info.endpoints[0].ticket)
        table = reader.read_all()
        assert reader.schema == announced, f"announced {announced} but streamed {reader.schema}"
        assert table.schema == announced
        for field in announced:
            if not field.nullable:
                assert table.column(field.name).null_count == 0
    finally:
        client.close()


def test_ddl_reports_no_rows_changed(writer):
    cur = writer.cursor()
    cur.execute("CREATE TABLE ddl_counts (id BIGINT PRIMARY KEY)")
    cur.execute("INSERT INTO ddl_counts (id) VALUES (1), (2), (3)")
    assert cur.rowcount == 3
    # SQLite's own count would still be the INSERT's 3.
    cur.execute("CREATE INDEX ddl_counts_idx ON ddl_counts (id)")
    assert cur.rowcount == 0
    cur.execute("DROP TABLE ddl_counts")
    assert cur.rowcount == 0


@pytest.mark.parametrize("option,value", [("adbc.connection.db_schema", "no_such_schema"), ("adbc.connection.catalog", "no_such_catalog")])
def test_setting_an_unknown_catalog_or_schema_is_not_found(writable_server, option, value):
    conn = flight_sql.connect(writable_server.grpc_uri, autocommit=True)
    try:
        with pytest.raises(Exception) as raised:
            conn.adbc_connection.set_options(**{option: value})
        assert "NOT_FOUND" in str(raised.value) and value in str(raised.value), str(raised.value)
        # The connection still works, on the schema it had.
        assert conn.adbc_current_db_schema == writable_server.schema
        assert fetch(conn, "SELECT 1 AS one") == [(1,)]
    finally:
        conn.close()


def test_an_append_that_does_not_match_names_the_columns(writer, store):
    import pyarrow as pa

    writer.cursor().execute("CREATE TABLE append_target (id BIGINT PRIMARY KEY, label TEXT)")
    data = pa.table({"id": [1], "labell": ["typo"], "extra": [1.5]})
    with pytest.raises(Exception) as raised:
        writer.cursor().adbc_ingest("append_target", data, mode="append")
    message = str(raised.value)
    assert "INVALID_ARGUMENT" in message
    for name in ("'labell'", "'extra'", "'id'", "'label'"):
        assert name in message, message
    assert store.count("append_target") == 0


def test_a_varbinary_column_reads_as_binary(writable_server, writer, store):
    """SQLite keeps the declared type text: `VARBINARY(n)` is a binary column."""
    if writable_server.kind != "sqlite":
        pytest.skip("VARBINARY is SQLite (and MySQL) syntax; PostgreSQL has bytea")
    writer.cursor().execute("CREATE TABLE varbinary_keys (id BIGINT PRIMARY KEY, k VARBINARY(16))")
    value = bytes(range(16))
    writer.cursor().execute("INSERT INTO varbinary_keys (id, k) VALUES (?, ?)", [1, value])
    cur = writer.cursor()
    cur.execute("SELECT k FROM varbinary_keys")
    table = cur.fetch_arrow_table()
    assert table.schema.field("k").type == "binary"
    assert table.column("k").to_pylist() == [value] == [row[0] for row in store.rows("SELECT k FROM varbinary_keys")]


NARROW = pa.table(
    {
        "i8": pa.array([-128, 0, 127, None], pa.int8()),
        "i16": pa.array([-32768, 1, 32767, None], pa.int16()),
        "i32": pa.array([-(2**31), 2, 2**31 - 1, None], pa.int32()),
        "u8": pa.array([0, 1, 255, None], pa.uint8()),
        "u16": pa.array([0, 2, 65535, None], pa.uint16()),
        "u32": pa.array([0, 3, 2**32 - 1, None], pa.uint32()),
        "f32": pa.array([-1.5, 0.25, 3.4028234663852886e38, None], pa.float32()),
        "n": pa.array([1, 2, 3, 4], pa.int64()),
    }
)


def test_narrow_numbers_read_back_as_ingested(writable_server, writer, store):
    """Ingest of narrow integers and Float32, read back: the same values; on SQLite the
    same Arrow types (the declared type records them); PostgreSQL holds each in the
    nearest type that fits (documented mapping)."""
    writer.cursor().adbc_ingest("narrow_numbers", NARROW, mode="create")
    cur = writer.cursor()
    cur.execute("SELECT i8, i16, i32, u8, u16, u32, f32, n FROM narrow_numbers ORDER BY n")
    table = cur.fetch_arrow_table()
    for name in NARROW.column_names:
        assert table.column(name).to_pylist() == NARROW.column(name).to_pylist(), name
    if writable_server.kind == "sqlite":
        assert table.schema.remove_metadata() == NARROW.schema, table.schema
        # Pushed-down comparisons on narrow columns agree with the engine's.
        cur.execute("SELECT n FROM narrow_numbers WHERE i16 > 0 AND u32 >= 3 ORDER BY n")
        expected = [
            (n,)
            for n, i16, u32 in zip(*(NARROW.column(c).to_pylist() for c in ("n", "i16", "u32")))
            if i16 is not None and u32 is not None and i16 > 0 and u32 >= 3
        ]
        assert cur.fetchall() == expected
    assert store.count("narrow_numbers") == 4


def test_a_value_outside_a_narrow_column_is_refused(writable_server, writer, store):
    if writable_server.kind != "sqlite":
        pytest.skip("PostgreSQL refuses out-of-range values itself")
    writer.cursor().execute("CREATE TABLE narrow_checked (id BIGINT PRIMARY KEY, small SMALLINT, tiny TINYINT)")
    writer.cursor().execute("INSERT INTO narrow_checked (id, small, tiny) VALUES (1, 32767, -128)")
    for sql in (
        "INSERT INTO narrow_checked (id, small) VALUES (2, 32768)",
        "UPDATE narrow_checked SET tiny = 200 WHERE id = 1",
    ):
        with pytest.raises(Exception) as raised:
            writer.cursor().execute(sql)
        assert "INVALID_ARGUMENT" in str(raised.value), str(raised.value)
    assert store.rows("SELECT id, small, tiny FROM narrow_checked") == [(1, 32767, -128)]
    assert fetch(writer, "SELECT small, tiny FROM narrow_checked") == [(32767, -128)]


def test_timestamps_keep_their_unit(writable_server, writer, store):
    """pandas writes timestamp[ns]; Arrow clients expect the unit they ingested. SQLite
    records it in the declared type (`TIMESTAMP(3)`); both stores keep microseconds,
    so finer digits are rounded (documented); the values here are whole microseconds."""
    import datetime

    moments = [datetime.datetime(2024, 2, 29, 23, 59, 58, 123000), datetime.datetime(1999, 1, 1), None]
    data = pa.table(
        {
            "s": pa.array([m and m.replace(microsecond=0) for m in moments], pa.timestamp("s")),
            "ms": pa.array(moments, pa.timestamp("ms")),
            "us": pa.array(moments, pa.timestamp("us")),
            "ns": pa.array(moments, pa.timestamp("ns")),
            "ms_utc": pa.array(moments, pa.timestamp("ms", tz="UTC")),
            "n": pa.array([1, 2, 3], pa.int64()),
        }
    )
    writer.cursor().adbc_ingest("stamped", data, mode="create")
    cur = writer.cursor()
    cur.execute("SELECT s, ms, us, ns, ms_utc, n FROM stamped ORDER BY n")
    table = cur.fetch_arrow_table()
    for name in data.column_names:
        assert table.column(name).to_pylist() == data.column(name).to_pylist(), name
    if writable_server.kind == "sqlite":
        assert table.schema.remove_metadata() == data.schema, table.schema
    assert store.count("stamped") == 3


def test_strings_and_bytes_of_every_arrow_form_ingest(writable_server, writer, store):
    """Large strings and binaries, fixed-size binaries and dictionary-encoded strings
    (pandas categoricals) ingest; large types read back as large types on SQLite,
    fixed-size binaries as binary, dictionaries as their values."""
    data = pa.table(
        {
            "n": pa.array([1, 2, 3], pa.int64()),
            "big_text": pa.array(["a", None, "ü" * 1000], pa.large_string()),
            "big_bytes": pa.array([b"\x00\x01", b"", None], pa.large_binary()),
            "fixed": pa.array([b"abcd", None, b"\xff\x00\xff\x00"], pa.binary(4)),
            "category": pa.array(["red", "blue", "red"]).dictionary_encode(),
        }
    )
    writer.cursor().adbc_ingest("string_forms", data, mode="create")
    cur = writer.cursor()
    cur.execute("SELECT n, big_text, big_bytes, fixed, category FROM string_forms ORDER BY n")
    table = cur.fetch_arrow_table()
    for name in data.column_names:
        expected = data.column(name).to_pylist()
        assert table.column(name).to_pylist() == expected, name
    assert pa.types.is_string(table.schema.field("category").type)
    if writable_server.kind == "sqlite":
        assert table.schema.field("big_text").type == pa.large_string()
        assert table.schema.field("big_bytes").type == pa.large_binary()
    assert store.rows("SELECT category FROM string_forms ORDER BY n") == [("red",), ("blue",), ("red",)]


def test_decimals_round_trip_exactly(writable_server, writer, store):
    """Decimal128 through ingest and back: every digit, the same precision and scale
    (SQLite keeps ingested decimals as text; PostgreSQL as numeric(p, s))."""
    from decimal import Decimal

    values = [Decimal("12345678901234567890.1234567891"), Decimal("-0.0000000001"), Decimal("0"), None]
    data = pa.table({"n": pa.array([1, 2, 3, 4], pa.int64()), "amount": pa.array(values, pa.decimal128(38, 10))})
    writer.cursor().adbc_ingest("exact_amounts", data, mode="create")
    cur = writer.cursor()
    cur.execute("SELECT n, amount FROM exact_amounts ORDER BY n")
    table = cur.fetch_arrow_table()
    assert table.schema.field("amount").type == pa.decimal128(38, 10)
    assert table.column("amount").to_pylist() == values
    # Compared in the engine: the value is exact.
    cur.execute("SELECT n FROM exact_amounts WHERE amount > 12345678901234567890.1234567890")
    assert cur.fetchall() == [(1,)]


def test_a_declared_decimal_reads_as_decimal(writable_server, writer, store):
    from decimal import Decimal

    writer.cursor().execute("CREATE TABLE priced (id BIGINT PRIMARY KEY, price DECIMAL(10, 2))")
    writer.cursor().execute("INSERT INTO priced (id, price) VALUES (1, 19.99), (2, -0.5), (3, NULL)")
    cur = writer.cursor()
    cur.execute("SELECT price FROM priced ORDER BY id")
    table = cur.fetch_arrow_table()
    assert table.schema.field("price").type == pa.decimal128(10, 2)
    assert table.column("price").to_pylist() == [Decimal("19.99"), Decimal("-0.50"), None]
    if writable_server.kind == "sqlite":
        # More digits than the column holds: refused, nothing changes.
        with pytest.raises(Exception) as raised:
            writer.cursor().execute("INSERT INTO priced (id, price) VALUES (4, 123456789012)")
        assert "INVALID_ARGUMENT" in str(raised.value), str(raised.value)
    assert store.count("priced") == 3


def test_a_dictionary_that_decodes_huge_is_refused_before_decoding(writable_server, writer, store):
    """Two MiB on the wire can name one 1 MiB value 200,000 times (200 GiB decoded):
    refused with RESOURCE_EXHAUSTED, nothing written, the server still answers. A
    dictionary without values (every key null) ingests as NULLs."""
    big = pa.DictionaryArray.from_arrays(pa.array([0] * 200_000, pa.int32()), pa.array(["x" * (1 << 20)]))
    data = pa.table({"n": pa.array(range(200_000), pa.int64()), "v": big})
    with pytest.raises(Exception) as raised:
        writer.cursor().adbc_ingest("dictionary_bomb", data, mode="create")
    # The driver shows the gRPC code as "(ResourceExhausted; …)".
    assert "ResourceExhausted" in str(raised.value), str(raised.value)
    assert "dictionary_bomb" not in store.rows(
        "SELECT name FROM sqlite_master" if writable_server.kind == "sqlite" else "SELECT tablename FROM pg_tables"
    )
    assert fetch(writer, "SELECT 1 AS alive") == [(1,)]

    empty = pa.DictionaryArray.from_arrays(pa.array([None, None], pa.int32()), pa.array([], pa.string()))
    writer.cursor().adbc_ingest("dictionary_empty", pa.table({"n": [1, 2], "v": empty}), mode="create")
    assert fetch(writer, "SELECT n, v FROM dictionary_empty ORDER BY n") == [(1, None), (2, None)]


def assert_reads_back(server, table, original):
    """`table` (read through Quiver) equals `original` (the client's own data): the
    same schema on both stores (SQLite records the Arrow type in the declared type,
    PostgreSQL in a column comment), the same values (PostgreSQL keeps microseconds)."""
    assert table.schema.remove_metadata() == original.schema, table.schema
    for field in original.schema:
        got = table.column(field.name).combine_chunks()
        expected = original.column(field.name).combine_chunks()
        if server.kind == "postgres":
            expected = to_microseconds(expected)
        assert got.equals(expected), (field.name, got.to_pylist(), expected.to_pylist())


def test_every_arrow_type_round_trips_through_ingest(writable_server, writer, store):
    """The acceptance: ADBC ingests a table with a column of each Arrow type and reads
    back an equal table, the same schema on both stores; PostgreSQL keeps microseconds
    (the documented rounding)."""
    data = every_type_table()
    writer.cursor().adbc_ingest("every_type", data, mode="create")
    cur = writer.cursor()
    cur.execute("SELECT * FROM every_type ORDER BY n")
    assert_reads_back(writable_server, cur.fetch_arrow_table(), data)
    assert store.count("every_type") == 3
    # A filter in the engine sees the same values.
    cur.execute("SELECT n FROM every_type WHERE ts_ns > CAST('2000-01-01' AS TIMESTAMP) AND u64 > 0")
    assert cur.fetchall() == [(2,)]
    # Appending the same data again goes through the same conversions.
    writer.cursor().adbc_ingest("every_type", data, mode="append")
    assert store.count("every_type") == 6


def test_every_arrow_type_binds_as_a_parameter(writable_server, writer, store):
    """Each type bound as a parameter of an INSERT (one batch of three rows binds every
    column at once) is stored as ingest stores it and reads back the same."""
    data = every_type_table()
    # (The driver sends nothing at all for an ingest of no rows: created with rows,
    # then emptied.)
    writer.cursor().adbc_ingest("every_type_bound", data, mode="create")
    writer.cursor().execute("DELETE FROM every_type_bound")
    columns = ", ".join(data.column_names)
    marks = ", ".join("?" for _ in data.column_names)
    cur = writer.cursor()
    cur.execute(f"INSERT INTO every_type_bound ({columns}) VALUES ({marks})", data)
    assert store.count("every_type_bound") == 3
    cur.execute("SELECT * FROM every_type_bound ORDER BY n")
    assert_reads_back(writable_server, cur.fetch_arrow_table(), data)


def test_types_with_no_column_are_refused_before_anything_is_written(writable_server, writer, store):
    """A type the store has no column for (here a struct and a 256-bit decimal) is
    refused naming the column and the type; no table is created."""
    from decimal import Decimal

    for name, column, type_name in (
        ("point", pa.array([{"x": 1, "y": 2}]), "struct"),
        ("huge", pa.array([Decimal(1)], pa.decimal256(60, 2)), "decimal256(60, 2)"),
    ):
        with pytest.raises(Exception) as raised:
            writer.cursor().adbc_ingest(f"refused_{name}", pa.table({"n": [1], name: column}), mode="create")
        message = str(raised.value)
        assert "INVALID_ARGUMENT" in message and f"'{name}'" in message and type_name in message.lower(), message
        assert store.columns(f"refused_{name}") == []


def test_an_unsigned_value_beyond_sqlite_integers_is_refused(writable_server, writer, store):
    if writable_server.kind != "sqlite":
        pytest.skip("PostgreSQL keeps UInt64 as numeric(20, 0), every value")
    data = pa.table({"n": [1, 2], "u64": pa.array([1, 2**64 - 1], pa.uint64())})
    with pytest.raises(Exception) as raised:
        writer.cursor().adbc_ingest("unsigned_big", data, mode="create")
    message = str(raised.value)
    assert "INVALID_ARGUMENT" in message and "u64" in message, message
    assert store.columns("unsigned_big") == []


def test_declared_types_read_as_a_user_expects(writable_server, writer, store):
    """DDL with SQL's type names: each reads back as the Arrow type a user expects."""
    if writable_server.kind != "sqlite":
        pytest.skip("the declared-type names are SQLite's; PostgreSQL's types are its own")
    declared = {
        "a": ("TINYINT", pa.int8()),
        "b": ("SMALLINT", pa.int16()),
        "c": ("INTEGER", pa.int64()),
        "d": ("FLOAT", pa.float64()),
        "e": ("DOUBLE PRECISION", pa.float64()),
        "f": ("VARCHAR(20)", pa.string()),
        "g": ("VARBINARY(16)", pa.binary()),
        "h": ("DECIMAL(10, 2)", pa.decimal128(10, 2)),
        "i": ("BOOLEAN", pa.bool_()),
        "j": ("DATE", pa.date32()),
        "k": ("TIMESTAMP(3)", pa.timestamp("ms")),
        "l": ("TIME(9)", pa.time64("ns")),
        "m": ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    }
    writer.cursor().execute(
        "CREATE TABLE declared_types (" + ", ".join(f"{c} {t}" for c, (t, _) in declared.items()) + ")"
    )
    writer.cursor().execute(
        "INSERT INTO declared_types VALUES (1, 2, 3, 4.5, 5.5, 'six', x'07', 8.25, 1, '2024-01-09', "
        "'2024-01-10 11:12:13.014', '15:16:17.123456789', '2024-01-19 20:21:22')"
    )
    cur = writer.cursor()
    cur.execute("SELECT * FROM declared_types")
    table = cur.fetch_arrow_table()
    assert [f.type for f in table.schema] == [t for _, t in declared.values()]
    (stored_time,) = store.rows("SELECT l FROM declared_types")[0]
    clock, fraction = stored_time.split(".")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    nanos = ((hours * 60 + minutes) * 60 + seconds) * 10**9 + int(fraction.ljust(9, "0"))
    assert table.column("l").cast(pa.int64()).to_pylist() == [nanos]


# The Arrow types each XDBC type family of GetXdbcTypeInfo reads back as.
XDBC_FAMILIES = {
    -7: lambda t: t == pa.bool_(),
    -6: lambda t: t in (pa.int8(), pa.uint8()),
    5: lambda t: t in (pa.int16(), pa.uint16()),
    4: lambda t: t in (pa.int32(), pa.uint32()),
    -5: lambda t: t in (pa.int64(), pa.uint64()),
    7: lambda t: t == pa.float32(),
    8: lambda t: t == pa.float64(),
    3: pa.types.is_decimal,
    12: lambda t: t == pa.string(),
    -1: lambda t: t == pa.large_string(),
    -2: pa.types.is_fixed_size_binary,
    -3: lambda t: t == pa.binary(),
    -4: lambda t: t == pa.large_binary(),
    91: pa.types.is_date,
    92: pa.types.is_time,
    93: pa.types.is_timestamp,
    10: lambda t: pa.types.is_duration(t) or pa.types.is_interval(t),
}


def test_type_info_lists_types_that_ddl_accepts_and_read_back_in_their_family(writable_server, writer):
    """Every type GetXdbcTypeInfo lists is one DDL on this store accepts, and a column
    of it reads back as an Arrow type of the listed XDBC family (unsigned where the
    answer says so)."""
    from pyarrow import flight

    from hostile_clients import any_of

    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(any_of("CommandGetXdbcTypeInfo", b"")))
        types = client.do_get(info.endpoints[0].ticket).read_all().to_pylist()
    finally:
        client.close()
    assert len(types) >= 14
    for index, row in enumerate(types):
        params = {"DECIMAL": "(12, 3)", "numeric": "(12, 3)", "FIXED_BLOB": "(4)"}.get(row["type_name"], "")
        table = f"xdbc_type_{index}"
        writer.cursor().execute(f"CREATE TABLE {table} (c {row['type_name']}{params})")
        cur = writer.cursor()
        cur.execute(f"SELECT c FROM {table}")
        read = cur.fetch_arrow_table().schema.field("c").type
        assert XDBC_FAMILIES[row["data_type"]](read), (row["type_name"], row["data_type"], read)
        if row["unsigned_attribute"] is not None:
            assert row["unsigned_attribute"] == (pa.types.is_unsigned_integer(read)), (row["type_name"], read)


def test_a_recorded_type_holds_while_the_column_keeps_its_type(writable_server, writer, store):
    """PostgreSQL: an Int8 column (a smallint with the Arrow type in its comment) reads
    as Int8; a value written behind Quiver's back that Int8 does not hold fails the
    query naming the column; once the column's type changes it reads as that type."""
    if writable_server.kind != "postgres":
        pytest.skip("SQLite records the Arrow type in the declared type itself")
    import psycopg

    writer.cursor().adbc_ingest("recorded_small", pa.table({"n": [1, 2], "small": pa.array([1, -2], pa.int8())}), mode="create")
    cur = writer.cursor()
    cur.execute("SELECT small FROM recorded_small ORDER BY n")
    assert cur.fetch_arrow_table().schema.field("small").type == pa.int8()
    with psycopg.connect(writable_server.db_url, autocommit=True) as direct:
        direct.execute(f"UPDATE {writable_server.schema}.recorded_small SET small = 300 WHERE n = 2")
    with pytest.raises(Exception) as raised:
        cur = writer.cursor()
        cur.execute("SELECT small FROM recorded_small ORDER BY n")
        cur.fetch_arrow_table()
    message = str(raised.value)
    assert "FAILED_PRECONDITION" in message or "FailedPrecondition" in message, message
    assert "'small'" in message, message
    writer.cursor().execute("ALTER TABLE recorded_small ALTER COLUMN small TYPE integer")
    cur = writer.cursor()
    cur.execute("SELECT small FROM recorded_small ORDER BY n")
    table = cur.fetch_arrow_table()
    assert table.schema.field("small").type == pa.int32()
    assert table.column("small").to_pylist() == [row[0] for row in store.rows("SELECT small FROM recorded_small ORDER BY n")] == [1, 300]


def view_bomb(rows, size=1 << 20, view_type=pa.string_view()):
    """A view column of `rows` rows, each naming the same `size`-byte value: a message
    of `16 * rows + size` bytes that is `rows * size` bytes once read."""
    import struct

    views = pa.py_buffer(struct.pack("<I4sII", size, b"xxxx", 0, 0) * rows)
    return pa.Array.from_buffers(view_type, rows, [None, views, pa.py_buffer(b"x" * size)])


def dictionary_bomb(rows, size=1 << 20):
    return pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * size]))


@pytest.mark.parametrize("view_type", [pa.string_view(), pa.binary_view()], ids=["string", "binary"])
def test_a_view_column_that_expands_huge_is_refused_before_writing(writable_server, writer, store, view_type):
    """A view column whose 200,000 rows name one 1 MiB value (3 MiB on the wire, 200 GiB
    written out): refused with RESOURCE_EXHAUSTED before anything is written, and for
    strings before Arrow checks the UTF-8 of every view (seconds of CPU per message)."""
    from pyarrow import flight

    from hostile_clients import statement_ingest

    data = pa.table({"n": pa.array(range(200_000), pa.int64()), "v": view_bomb(200_000, view_type=view_type)})
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        writer_stream, reader = client.do_put(flight.FlightDescriptor.for_command(statement_ingest("view_bomb")), data.schema)
        # The refusal reaches the client when the stream closes (Arrow raises it there).
        with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as raised:
            writer_stream.write_table(data)
            writer_stream.done_writing()
            reader.read()
            writer_stream.close()
    finally:
        client.close()
    assert "resource exhausted" in str(raised.value) and "max_mutation_size_mb" in str(raised.value), str(raised.value)
    assert store.columns("view_bomb") == []
    assert fetch(writer, "SELECT 1 AS alive") == [(1,)]


@pytest.mark.parametrize("bomb", [view_bomb, dictionary_bomb], ids=["view", "dictionary"])
def test_parameters_that_expand_huge_are_refused(writable_server, writer, store, bomb):
    """Parameter sets are bounded in bytes once read, not only in rows: 5,000 rows (a
    prepared INSERT) or 1,000 rows (a query) naming one 1 MiB value each are refused
    with RESOURCE_EXHAUSTED; nothing is written and the server answers."""
    table = f"expanded_{bomb.__name__}"
    writer.cursor().execute(f"CREATE TABLE {table} (v TEXT)")
    for sql, rows in ((f"INSERT INTO {table} (v) VALUES (?)", 5_000), ("SELECT ? AS v", 1_000)):
        with pytest.raises(Exception) as raised:
            cur = writer.cursor()
            cur.execute(sql, pa.table({"v": bomb(rows)}))
            cur.fetchall()
        assert "ResourceExhausted" in str(raised.value), str(raised.value)
    assert store.count(table) == 0
    assert fetch(writer, "SELECT 1 AS alive") == [(1,)]


def test_lists_ingest_where_the_store_has_arrays(writable_server, writer, store):
    """PostgreSQL has arrays: list columns ingest, bind as parameters and read back as
    the lists sent (one dimension, elements of the types above). SQLite has no list
    type: refused before anything is written, naming the column and the type."""
    data = pa.table(
        {
            "n": pa.array([1, 2, 3, 4], pa.int64()),
            "ints": pa.array([[1, None, 3], [], None, [-(2**63)]], pa.list_(pa.int64())),
            "small": pa.array([[1, -128], None, [127], []], pa.list_(pa.int8())),
            "words": pa.array([["a", 'b"c', "d\\e", "{,}"], [None], [], ["NULL"]], pa.list_(pa.string())),
            "stamps": pa.array([[0, 1_700_000_000_000_000], None, [None], []], pa.list_(pa.timestamp("us"))),
            "amounts": pa.array([["1.50", "-0.01"], [], None, ["0"]], pa.list_(pa.string())).cast(pa.list_(pa.decimal128(10, 2))),
            "big": pa.array([[1.5], [2.5, None], None, []], pa.large_list(pa.float64())),
        }
    )
    if writable_server.kind == "sqlite":
        with pytest.raises(Exception) as raised:
            writer.cursor().adbc_ingest("listed", data, mode="create")
        message = str(raised.value)
        assert "INVALID_ARGUMENT" in message and "'ints'" in message and "list" in message.lower(), message
        assert store.columns("listed") == []
        return
    writer.cursor().adbc_ingest("listed", data, mode="create")
    # Large lists travel as lists (arrow-flight's encoder writes a large list's field
    # as a list in the stream's schema): docs/types.md.
    sent = data.set_column(6, "big", data.column("big").cast(pa.list_(pa.float64())))
    cur = writer.cursor()
    cur.execute("SELECT * FROM listed ORDER BY n")
    assert_reads_back(writable_server, cur.fetch_arrow_table(), sent)
    # The store holds arrays: PostgreSQL's own answer for one of them.
    assert store.rows("SELECT array_length(ints, 1), ints[3] FROM listed WHERE n = 1") == [(3, 3)]
    # Bound as parameters of an INSERT, the same lists read back.
    writer.cursor().execute("DELETE FROM listed")
    columns = ", ".join(data.column_names)
    marks = ", ".join("?" for _ in data.column_names)
    writer.cursor().execute(f"INSERT INTO listed ({columns}) VALUES ({marks})", data)
    cur = writer.cursor()
    cur.execute("SELECT * FROM listed ORDER BY n")
    assert_reads_back(writable_server, cur.fetch_arrow_table(), sent)


def test_a_batch_that_claims_more_rows_than_it_carries_is_refused(writable_server, writer, store):
    """A Null column costs no byte a row: a message of a few hundred bytes can claim a
    billion rows, each of which ingest would write. Refused with RESOURCE_EXHAUSTED at
    once; nothing is created."""
    data = pa.table({"nothing": pa.nulls(1_000_000_000)})
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        writer.cursor().adbc_ingest("claimed_rows", data, mode="create")
    assert "ResourceExhausted" in str(raised.value), str(raised.value)
    assert time.monotonic() - started < 30
    assert store.columns("claimed_rows") == []


def test_a_column_comment_anyone_writes_cannot_stop_the_catalog(writable_server, writer):
    """PostgreSQL: a comment in the form ingest records types with, nested 100,000 deep
    (a recursive parse would overflow the stack), is not taken as a type: the column
    reads as its own type and the server answers."""
    if writable_server.kind != "postgres":
        pytest.skip("SQLite records the Arrow type in the declared type")
    writer.cursor().execute("CREATE TABLE commented (n BIGINT)")
    deep = "List(" * 100_000 + "Int64" + ")" * 100_000
    writer.cursor().execute(f"COMMENT ON COLUMN commented.n IS 'quiver:arrow={deep}'")
    writer.cursor().execute("INSERT INTO commented (n) VALUES (7)")
    cur = writer.cursor()
    cur.execute("SELECT n FROM commented")
    table = cur.fetch_arrow_table()
    assert table.schema.field("n").type == pa.int64()
    assert table.column("n").to_pylist() == [7]
