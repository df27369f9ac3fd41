"""polars through ADBC against Quiver."""

import polars as pl

from conftest import rows_of_sqlite


def test_read_database_matches_sqlite(adbc, sqlite):
    sql = "SELECT id, status, priority, estimate_hours FROM tasks WHERE priority = 1 ORDER BY id"
    frame = pl.read_database(sql, connection=adbc)
    assert frame.columns == ["id", "status", "priority", "estimate_hours"]
    assert frame.schema["id"] == pl.Int64
    truth = rows_of_sqlite(sqlite, sql)
    ours = [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in frame.rows()]
    assert ours == truth


def test_aggregation_in_polars_after_fetch(adbc, sqlite):
    frame = pl.read_database("SELECT agent_type, estimate_hours FROM tasks", connection=adbc)
    ours = (
        frame.filter(pl.col("agent_type").is_not_null())
        .group_by("agent_type")
        .agg(pl.col("estimate_hours").sum())
        .sort("agent_type")
        .rows()
    )
    truth = sqlite.execute(
        "SELECT agent_type, sum(estimate_hours) FROM tasks WHERE agent_type IS NOT NULL "
        "GROUP BY agent_type ORDER BY agent_type"
    ).fetchall()
    assert [(a, round(b, 6)) for a, b in ours] == [(a, round(b, 6)) for a, b in truth]
