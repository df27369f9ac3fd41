"""The ADBC Flight SQL driver (what pyarrow, pandas and polars users run) against Quiver."""

import adbc_driver_manager
import pyarrow as pa
import pytest

from conftest import DEMO_TASKS, rows_of_sqlite, rows_of_table

QUERIES = [
    "SELECT status, count(*) FROM tasks GROUP BY status",
    "SELECT id, key, priority FROM tasks WHERE status = 'blocked' AND priority <= 2",
    "SELECT t.key, f.key, e.key FROM tasks t JOIN features f ON t.feature_id = f.id "
    "JOIN epics e ON f.epic_id = e.id WHERE t.priority = 1",
    "SELECT f.id, count(*), sum(CASE WHEN t.status = 'done' THEN 1 ELSE 0 END) "
    "FROM features f JOIN tasks t ON t.feature_id = f.id WHERE f.epic_id = 2 GROUP BY f.id",
    "SELECT id, created_at, completed_at, estimate_hours FROM tasks WHERE id <= 50",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_execute_and_fetch_arrow_table_match_sqlite(adbc, sqlite, sql):
    cur = adbc.cursor()
    cur.execute(sql)
    table = cur.fetch_arrow_table()
    truth = rows_of_sqlite(sqlite, sql)
    assert truth, "the query returns rows"
    assert sorted(rows_of_table(table), key=repr) == sorted(truth, key=repr)


def test_the_readme_snippet(adbc):
    cur = adbc.cursor()
    cur.execute("SELECT status, count(*) FROM tasks GROUP BY status")
    table = cur.fetch_arrow_table()
    assert table.column_names == ["status", "count(*)"]
    assert sum(table.column(1).to_pylist()) == DEMO_TASKS
    cur.execute("SELECT * FROM tasks WHERE id = ?", (42,))
    assert cur.fetch_arrow_table().column("id").to_pylist() == [42]
    objects = adbc.adbc_get_objects(depth="all").read_all()
    assert objects.num_rows == 1


def test_parameters_rebind_and_match_sqlite(adbc, sqlite):
    cur = adbc.cursor()
    sql = "SELECT id, key, status FROM tasks WHERE feature_id = ? AND priority >= ?"
    for feature, priority in [(1, 1), (7, 3), (250, 5)]:
        cur.execute(sql, (feature, priority))
        ours = rows_of_table(cur.fetch_arrow_table())
        truth = rows_of_sqlite(sqlite, sql, (feature, priority))
        assert sorted(ours) == sorted(truth)


def test_text_parameters(adbc, sqlite):
    cur = adbc.cursor()
    cur.execute("SELECT count(*) FROM tasks WHERE status = ? AND agent_type = ?", ("review", "coder"))
    ours = cur.fetchone()[0]
    truth = sqlite.execute(
        "SELECT count(*) FROM tasks WHERE status = 'review' AND agent_type = 'coder'"
    ).fetchone()[0]
    assert ours == truth > 0


def test_fetch_record_batch_streams_the_whole_result(adbc, sqlite):
    cur = adbc.cursor()
    cur.execute("SELECT h.id, h.task_id, h.new_status FROM task_history h")
    reader = cur.fetch_record_batch()
    rows = 0
    batches = 0
    for batch in reader:
        rows += batch.num_rows
        batches += 1
    assert rows == sqlite.execute("SELECT count(*) FROM task_history").fetchone()[0]
    assert batches >= 1


def test_get_objects_lists_tables_and_columns_like_sqlite(server, adbc, sqlite):
    objects = adbc.adbc_get_objects(depth="all").read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["quiver"]
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert server.schema in schemas
    tables = {t["table_name"]: t for t in schemas[server.schema]["db_schema_tables"]}
    truth_tables = [r[0] for r in sqlite.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        # Quiver's own change-log tables are internal and never listed.
        "AND name NOT LIKE '\\_quiver\\_%' ESCAPE '\\' ORDER BY name")]
    assert sorted(tables) == truth_tables
    columns = [c["column_name"] for c in tables["tasks"]["table_columns"]]
    truth_columns = [r[0] for r in sqlite.execute("SELECT name FROM pragma_table_info('tasks') ORDER BY cid")]
    assert columns == truth_columns


def test_get_table_schema_and_types(adbc):
    schema = adbc.adbc_get_table_schema("tasks")
    assert schema.field("id").type == pa.int64()
    assert schema.field("status").type == pa.string()
    assert schema.field("created_at").type == pa.timestamp("us")
    assert schema.field("estimate_hours").type == pa.float64()
    assert adbc.adbc_get_table_types() == ["SYSTEM TABLE", "TABLE", "VIEW"]


def test_get_info_describes_quiver(adbc):
    info = adbc.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert info["vendor_arrow_version"] == "1.5"


def test_current_catalog_and_schema(server, adbc):
    assert adbc.adbc_current_catalog == "quiver"
    assert adbc.adbc_current_db_schema == server.schema


def test_bad_sql_raises_with_the_parser_message_and_the_connection_survives(adbc):
    cur = adbc.cursor()
    with pytest.raises(adbc_driver_manager.Error) as raised:
        cur.execute("SELEC 1")
    assert "SELEC" in str(raised.value)
    with pytest.raises(adbc_driver_manager.Error) as raised:
        cur.execute("SELECT * FROM no_such_table")
    assert "no_such_table" in str(raised.value)
    cur.execute("SELECT count(*) FROM epics")
    assert cur.fetchone()[0] == 5
