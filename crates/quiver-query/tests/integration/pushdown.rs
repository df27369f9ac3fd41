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
