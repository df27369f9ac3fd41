//! What reaches the store: projection, filters and limit become SQL.

use arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;

use crate::common::Fixture;

async fn physical_plan(fixture: &Fixture, sql: &str) -> String {
    let stream = fixture.engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let batches: Vec<_> = stream.try_collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn exact_filters_projection_and_limit_reach_the_store() {
    let fixture = Fixture::demo(200).await;
    let plan = physical_plan(
        &fixture,
        "SELECT id, key FROM tasks WHERE status = 'blocked' AND priority <= 2 LIMIT 3",
    )
    .await;
    assert!(
        plan.contains(
            r#"StoreScanExec: table=tasks, sql=SELECT "id", "key" FROM "main"."tasks" WHERE "status" = ?1 AND "priority" <= ?2 LIMIT 3, params=['blocked', 2]"#
        ),
        "{plan}"
    );
    assert!(
        !plan.contains("FilterExec"),
        "exact filters are not applied twice:\n{plan}"
    );
}

#[tokio::test]
async fn inexact_and_unsupported_filters_stay_in_datafusion() {
    let fixture = Fixture::demo(200).await;
    let plan = physical_plan(
        &fixture,
        "SELECT id FROM tasks WHERE title LIKE 'Fix%' AND upper(status) = 'DONE'",
    )
    .await;
    assert!(plan.contains(r#"WHERE "title" LIKE ?1"#), "{plan}");
    assert!(
        plan.contains("FilterExec"),
        "LIKE is re-checked and upper() evaluated by DataFusion:\n{plan}"
    );
}

#[tokio::test]
async fn count_star_reads_no_column() {
    let fixture = Fixture::demo(200).await;
    let plan = physical_plan(&fixture, "SELECT count(*) FROM tasks WHERE status = 'done'").await;
    assert!(
        plan.contains(r#"sql=SELECT NULL FROM "main"."tasks" WHERE "status" = ?1"#),
        "{plan}"
    );
}

#[tokio::test]
async fn large_scans_split_into_parallel_key_ranges() {
    let script = "CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER, s TEXT);
        CREATE INDEX big_v ON big (v);
        WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 250000)
        INSERT INTO big SELECT n * 3, n % 97, 'k' || (n % 1000) FROM c;
        ANALYZE;";
    let fixture = Fixture::from_script(script, 2).await;
    let plan = physical_plan(&fixture, "SELECT v, s FROM big WHERE v < 50").await;
    assert!(plan.contains("partitions=2"), "{plan}");
    assert!(plan.contains("rowid >= ?2 AND rowid < ?3"), "{plan}");
    for sql in [
        "SELECT count(*), sum(v), count(DISTINCT s), min(id), max(id) FROM big",
        "SELECT count(*), sum(id) FROM big WHERE v < 50 AND s > 'k5'",
    ] {
        assert_eq!(
            fixture.quiver_rows(sql).await,
            fixture.sqlite_rows(sql),
            "{sql}"
        );
    }
    // Key lookups and limits stay one narrow statement.
    let plan = physical_plan(&fixture, "SELECT v FROM big WHERE id = 300").await;
    assert!(!plan.contains("partitions="), "{plan}");
    let plan = physical_plan(&fixture, "SELECT v FROM big LIMIT 5").await;
    assert!(!plan.contains("partitions="), "{plan}");
    // Columns an index covers are read from the index in one statement.
    let plan = physical_plan(&fixture, "SELECT id, v FROM big WHERE v > 3").await;
    assert!(!plan.contains("partitions="), "{plan}");
    // Key ranges still split.
    let plan = physical_plan(&fixture, "SELECT s FROM big WHERE id > 100").await;
    assert!(plan.contains("partitions=2"), "{plan}");
}
