//! Queries answered by Quiver equal what SQLite answers on the same file.

use crate::common::Fixture;

/// (SQL, whether the row order is defined by the query).
const QUERIES: &[(&str, bool)] = &[
    ("SELECT count(*) FROM tasks", true),
    ("SELECT status, count(*) FROM tasks GROUP BY status", false),
    ("SELECT * FROM tasks WHERE id = 42", true),
    (
        "SELECT id, key, priority FROM tasks WHERE status = 'blocked' AND priority <= 2",
        false,
    ),
    (
        "SELECT id FROM tasks WHERE priority IN (1, 5) AND id BETWEEN 100 AND 200",
        false,
    ),
    (
        "SELECT id FROM tasks WHERE priority NOT IN (1, 2, 3) AND NOT (status = 'done' OR status = 'todo')",
        false,
    ),
    ("SELECT count(*) FROM tasks WHERE agent_type IS NULL", true),
    // Text order is byte order, whatever the store's collation ('b' sorts after
    // every capital letter).
    ("SELECT count(*) FROM tasks WHERE title < 'b'", true),
    (
        "SELECT id FROM tasks WHERE key >= 'TASK-0001990' AND status BETWEEN 'blocked' AND 'review'",
        false,
    ),
    (
        "SELECT count(*) FROM tasks WHERE description IS NOT NULL AND estimate_hours > 10.5",
        true,
    ),
    ("SELECT id, title FROM tasks WHERE title LIKE 'Fix%'", false),
    ("SELECT id, title FROM tasks WHERE title LIKE 'fix%'", false),
    (
        "SELECT id FROM tasks WHERE 3 > priority AND feature_id < 4",
        false,
    ),
    (
        "SELECT id FROM tasks WHERE status = 'review' ORDER BY id LIMIT 7",
        true,
    ),
    (
        "SELECT id, estimate_hours FROM tasks ORDER BY estimate_hours DESC NULLS LAST, id LIMIT 10",
        true,
    ),
    (
        "SELECT t.key, f.key, e.key FROM tasks t JOIN features f ON t.feature_id = f.id \
         JOIN epics e ON f.epic_id = e.id WHERE t.priority = 1 AND t.status = 'blocked'",
        false,
    ),
    (
        "SELECT f.id, count(*) AS total, sum(CASE WHEN t.status = 'done' THEN 1 ELSE 0 END) AS done \
         FROM features f JOIN tasks t ON t.feature_id = f.id WHERE f.epic_id = 1 GROUP BY f.id",
        false,
    ),
    (
        "SELECT id, feature_id, priority, row_number() OVER (PARTITION BY feature_id ORDER BY priority, id) AS rank \
         FROM tasks WHERE feature_id <= 5",
        false,
    ),
    (
        "SELECT key FROM epics WHERE id IN (SELECT epic_id FROM features WHERE status = 'done')",
        false,
    ),
    (
        "SELECT agent_type, avg(estimate_hours), min(priority), max(priority) FROM tasks GROUP BY agent_type",
        false,
    ),
    ("SELECT DISTINCT new_status FROM task_history", false),
    (
        "SELECT count(*) FROM tasks WHERE created_at >= '2025-06-01'",
        true,
    ),
    (
        "SELECT id, created_at, completed_at FROM tasks WHERE id <= 25",
        false,
    ),
    (
        "SELECT upper(status), length(title), coalesce(agent_type, 'none') FROM tasks WHERE id < 30",
        false,
    ),
    (
        "SELECT t.id, count(h.id) FROM tasks t LEFT JOIN task_history h ON h.task_id = t.id \
         WHERE t.id <= 40 GROUP BY t.id",
        false,
    ),
    (
        "SELECT feature_id, sum(estimate_hours) FROM tasks GROUP BY feature_id HAVING sum(estimate_hours) > 200",
        false,
    ),
];

#[tokio::test]
async fn quiver_answers_like_sqlite() {
    answers_like_sqlite(&Fixture::demo(2_000).await).await;
}

/// The same queries through Quiver on PostgreSQL, holding the same deterministic demo,
/// answer what SQLite answers: type mapping and pushdown in the PostgreSQL dialect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_on_postgres_answers_like_sqlite() {
    let Some(fixture) = Fixture::demo_on_postgres(2_000).await else {
        return;
    };
    answers_like_sqlite(&fixture).await;
}

async fn answers_like_sqlite(fixture: &Fixture) {
    for (sql, ordered) in QUERIES {
        let mut ours = fixture.quiver_rows(sql).await;
        let mut truth = fixture.sqlite_rows(sql);
        if !ordered {
            ours.sort();
            truth.sort();
        }
        assert!(
            !truth.is_empty() || sql.contains("'fix%'"),
            "query returns no rows, so it proves little: {sql}"
        );
        assert_eq!(ours, truth, "{sql}");
    }
}
