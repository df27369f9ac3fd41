//! The storage suite: every case runs once per backend (`storage_suite!(sqlite)`,
//! `storage_suite!(postgres)`), against a fresh database.
//!
//! Truth is independent of the code under test: the demo generator's pure row
//! functions, and counts computed from them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use futures::TryStreamExt;
use quiver_storage::demo::{self, history, task};
use quiver_storage::{Error, ForeignKeyAction, PoolOptions, Store, StoreOptions, Value};

use crate::backend::TestBackend;

const TASKS: u64 = 2_000;

macro_rules! suite_cases {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = crate::backend::TestBackend::$backend().await else {
                        return;
                    };
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

macro_rules! storage_suite {
    ($backend:ident) => {
        suite_cases!($backend:
            demo_rows_equal_the_generator,
            demo_load_refuses_or_skips_existing_tables,
            catalog_describes_keys_indexes_and_estimates,
            reads_stream_in_batches_of_the_configured_size,
            parameters_bind_in_the_backends_dialect,
            key_ranges_cover_the_table,
            pool_serves_many_waiters_fairly_and_gets_every_connection_back,
            exhausted_pool_times_out_with_a_clear_error,
            long_held_connections_are_reported_as_leaks,
            bad_sql_fails_and_the_store_keeps_working,
        );
    };
}

storage_suite!(sqlite);
storage_suite!(postgres);

fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Every batch of `sql`, or the error of starting or streaming it.
async fn try_read(
    store: &Store,
    sql: &str,
    params: Vec<Value>,
    schema: SchemaRef,
) -> Result<Vec<RecordBatch>, Error> {
    store.query(sql, params, schema).await?.try_collect().await
}

async fn read(store: &Store, sql: &str, params: Vec<Value>, schema: SchemaRef) -> Vec<RecordBatch> {
    try_read(store, sql, params, schema)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

pub(crate) async fn count(store: &Store, sql: &str, params: Vec<Value>) -> i64 {
    let batches = read(store, sql, params, schema(&[("n", DataType::Int64)])).await;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// Connections in use once reads have wound down: a SQLite reader thread returns its
/// connection just after sending its last batch, so give it a moment.
async fn in_use_when_settled(store: &Store) -> u32 {
    for _ in 0..100 {
        if store.pool_status().in_use == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.pool_status().in_use
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

async fn demo_rows_equal_the_generator(backend: &TestBackend) {
    let store = backend.demo(TASKS).await;
    let batches = read(
        &store,
        "SELECT id, feature_id, key, description, status, priority, agent_type, estimate_hours, created_at, completed_at FROM tasks ORDER BY id",
        Vec::new(),
        schema(&[
            ("id", DataType::Int64),
            ("feature_id", DataType::Int64),
            ("key", DataType::Utf8),
            ("description", DataType::Utf8),
            ("status", DataType::Utf8),
            ("priority", DataType::Int64),
            ("agent_type", DataType::Utf8),
            ("estimate_hours", DataType::Float64),
            ("created_at", timestamp()),
            ("completed_at", timestamp()),
        ]),
    )
    .await;
    let mut seen = 0u64;
    for batch in &batches {
        let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
        let text = |i: usize| batch.column(i).as_string::<i32>();
        let time = |i: usize| batch.column(i).as_primitive::<TimestampMicrosecondType>();
        let optional_text = |i: usize, row: usize| {
            let column = text(i);
            column.is_valid(row).then(|| column.value(row).to_owned())
        };
        for row in 0..batch.num_rows() {
            seen += 1;
            let expected = task(seen);
            assert_eq!(int(0).value(row), expected.id as i64);
            assert_eq!(int(1).value(row), expected.feature_id as i64);
            assert_eq!(text(2).value(row), expected.key);
            assert_eq!(optional_text(3, row), expected.description);
            assert_eq!(text(4).value(row), expected.status);
            assert_eq!(int(5).value(row), expected.priority);
            assert_eq!(optional_text(6, row).as_deref(), expected.agent_type);
            let hours = batch.column(7).as_primitive::<Float64Type>();
            assert_eq!(
                hours.is_valid(row).then(|| hours.value(row)),
                expected.estimate_hours
            );
            assert_eq!(time(8).value(row), expected.created_at);
            assert_eq!(
                time(9).is_valid(row).then(|| time(9).value(row)),
                expected.completed_at
            );
        }
    }
    assert_eq!(seen, TASKS);
    let history_rows: usize = (1..=TASKS).map(|id| history(&task(id)).len()).sum();
    assert_eq!(
        count(&store, "SELECT count(*) FROM task_history", Vec::new()).await,
        history_rows as i64
    );
    let scale = demo::DemoScale::new(TASKS);
    assert_eq!(
        count(&store, "SELECT count(*) FROM features", Vec::new()).await,
        scale.features as i64
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM epics", Vec::new()).await,
        scale.epics as i64
    );
}

async fn demo_load_refuses_or_skips_existing_tables(backend: &TestBackend) {
    let store = backend.demo(100).await;
    let err = demo::load(&store, 100, false, Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exist"), "{err}");
    let skipped = demo::load_if_missing(&store, 100, Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(skipped, None);
    let replaced = demo::load(&store, 300, true, Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(replaced.tasks, 300);
    assert_eq!(
        count(&store, "SELECT count(*) FROM tasks", Vec::new()).await,
        300
    );
}

async fn catalog_describes_keys_indexes_and_estimates(backend: &TestBackend) {
    let store = backend.demo(TASKS).await;
    let catalog = store.catalog().await.unwrap();
    let schema = store.default_schema();
    for name in demo::DEMO_TABLES {
        assert!(catalog.table(schema, name).is_some(), "{name} is listed");
    }
    let tasks = catalog.table(schema, "tasks").unwrap();
    assert_eq!(tasks.primary_key, vec!["id".to_owned()]);
    let column_types: Vec<(&str, &DataType, bool)> = tasks
        .columns
        .iter()
        .map(|c| (c.name.as_str(), &c.data_type, c.nullable))
        .collect();
    assert_eq!(column_types[0], ("id", &DataType::Int64, column_types[0].2));
    assert!(column_types.contains(&("status", &DataType::Utf8, false)));
    assert!(column_types.contains(&("estimate_hours", &DataType::Float64, true)));
    assert!(column_types.contains(&("created_at", &timestamp(), false)));
    assert!(column_types.contains(&("completed_at", &timestamp(), true)));

    let [fk] = tasks.foreign_keys.as_slice() else {
        panic!("one foreign key on tasks: {:?}", tasks.foreign_keys);
    };
    assert_eq!(fk.columns, vec!["feature_id".to_owned()]);
    assert_eq!(fk.referenced_table, "features");
    assert_eq!(fk.referenced_columns, vec!["id".to_owned()]);
    assert_eq!(fk.on_delete, ForeignKeyAction::Cascade);

    let index = |name: &str| tasks.indexes.iter().find(|i| i.name == name);
    assert_eq!(index("tasks_status").unwrap().columns, vec!["status"]);
    assert_eq!(
        index("tasks_status_priority").unwrap().columns,
        vec!["status", "priority"]
    );
    assert!(
        tasks
            .indexes
            .iter()
            .any(|i| i.unique && i.columns == ["key"])
    );

    let estimate = tasks
        .estimated_rows
        .expect("analyzed tables have estimates");
    assert!(
        estimate.abs_diff(TASKS) <= TASKS / 10,
        "estimate {estimate} near {TASKS}"
    );
    assert!(tasks.range_key.is_some(), "integer key splits scans");
}

async fn reads_stream_in_batches_of_the_configured_size(backend: &TestBackend) {
    backend.demo(TASKS).await;
    let store = backend
        .open_with(StoreOptions {
            batch_size: 128,
            ..StoreOptions::default()
        })
        .await;
    let batches = read(
        &store,
        "SELECT id FROM tasks ORDER BY id",
        Vec::new(),
        schema(&[("id", DataType::Int64)]),
    )
    .await;
    assert_eq!(batches.len(), TASKS.div_ceil(128) as usize);
    assert!(batches.iter().all(|b| b.num_rows() <= 128));
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, (1..=TASKS as i64).collect::<Vec<_>>());

    // No columns at all: only the row count (what `count(*)` pushes down).
    let counted = read(
        &store,
        "SELECT NULL FROM tasks",
        Vec::new(),
        Arc::new(Schema::empty()),
    )
    .await;
    assert_eq!(
        counted.iter().map(RecordBatch::num_rows).sum::<usize>(),
        TASKS as usize
    );
}

async fn parameters_bind_in_the_backends_dialect(backend: &TestBackend) {
    let store = backend.demo(TASKS).await;
    let dialect = store.dialect();
    let status = Value::Text("blocked".to_owned());
    let priority = Value::Int(2);
    let sql = format!(
        "SELECT count(*) FROM tasks WHERE status = {} AND priority <= {}",
        dialect.placeholder(1, &status),
        dialect.placeholder(2, &priority)
    );
    let expected = (1..=TASKS)
        .map(task)
        .filter(|t| t.status == "blocked" && t.priority <= 2)
        .count();
    assert!(expected > 0);
    assert_eq!(
        count(&store, &sql, vec![status, priority]).await,
        expected as i64
    );
    let hours = Value::Float(10.5);
    let sql = format!(
        "SELECT count(*) FROM tasks WHERE estimate_hours > {}",
        dialect.placeholder(1, &hours)
    );
    let expected = (1..=TASKS)
        .map(task)
        .filter(|t| t.estimate_hours.is_some_and(|h| h > 10.5))
        .count();
    assert_eq!(count(&store, &sql, vec![hours]).await, expected as i64);
}

async fn key_ranges_cover_the_table(backend: &TestBackend) {
    let store = backend.demo(TASKS).await;
    let catalog = store.catalog().await.unwrap();
    let tasks = catalog.table(store.default_schema(), "tasks").unwrap();
    let (low, high) = store.key_range(tasks).await.unwrap().expect("rows exist");
    let id_range = (1, TASKS as i64);
    // SQLite ranges over rowid, PostgreSQL over the key: both equal the ids here.
    assert_eq!((low, high), id_range);
}

async fn pool_serves_many_waiters_fairly_and_gets_every_connection_back(backend: &TestBackend) {
    backend.demo(100).await;
    let store = backend
        .open_pool(PoolOptions {
            max_size: 4,
            min_idle: 1,
            ..PoolOptions::default()
        })
        .await;
    const TASKS_AT_ONCE: usize = 50;
    const QUERIES_EACH: usize = 200;
    let started = Instant::now();
    let workers: Vec<_> = (0..TASKS_AT_ONCE)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                for query in 0..QUERIES_EACH {
                    let id = ((worker * QUERIES_EACH + query) % 100 + 1) as i64;
                    let sql = format!(
                        "SELECT count(*) FROM tasks WHERE id = {}",
                        store.dialect().placeholder(1, &Value::Int(id))
                    );
                    assert_eq!(count(&store, &sql, vec![Value::Int(id)]).await, 1);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker finished");
    }
    assert_eq!(
        in_use_when_settled(&store).await,
        0,
        "every connection came back"
    );
    let status = store.pool_status();
    let total = (TASKS_AT_ONCE * QUERIES_EACH) as u64;
    assert_eq!(status.waiting, 0);
    assert!(status.connections <= 4, "{status:?}");
    assert!(status.acquired >= total, "{status:?}");
    assert_eq!(status.acquire_timeouts, 0);
    assert_eq!(status.acquire_wait.count, status.acquired);
    assert!(status.reuse_rate > 0.99, "{status:?}");
    // FIFO: nobody waits much longer than the whole run divided among the waiters
    // ahead of them; with 50 tasks on 4 connections the worst wait stays a small
    // fraction of the run.
    let worst = Duration::from_micros(status.acquire_wait.max_micros);
    assert!(
        worst < started.elapsed() / 4,
        "worst wait {worst:?} in a run of {:?}",
        started.elapsed()
    );
}

async fn exhausted_pool_times_out_with_a_clear_error(backend: &TestBackend) {
    backend.demo(TASKS).await;
    let store = backend
        .open_with(StoreOptions {
            pool: PoolOptions {
                max_size: 1,
                min_idle: 1,
                acquire_timeout: Duration::from_millis(300),
                ..PoolOptions::default()
            },
            batch_size: 10,
            ..StoreOptions::default()
        })
        .await;
    // An unfinished read holds the only connection.
    let mut held = store
        .query(
            "SELECT id FROM tasks",
            Vec::new(),
            schema(&[("id", DataType::Int64)]),
        )
        .await
        .unwrap();
    let first = held.try_next().await.unwrap().expect("a first batch");
    assert_eq!(first.num_rows(), 10);
    let started = Instant::now();
    let err = store
        .query("SELECT 1", Vec::new(), schema(&[("one", DataType::Int64)]))
        .await
        .err()
        .expect("no connection is free");
    assert!(matches!(err, Error::PoolTimeout { .. }), "{err}");
    assert!(err.to_string().contains("pool of 1 exhausted"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "no hang");
    assert_eq!(store.pool_status().acquire_timeouts, 1);
    drop(held);
    assert_eq!(
        count(&store, "SELECT count(*) FROM epics", Vec::new()).await,
        2
    );
}

async fn long_held_connections_are_reported_as_leaks(backend: &TestBackend) {
    backend.demo(TASKS).await;
    let store = backend
        .open_with(StoreOptions {
            pool: PoolOptions {
                leak_threshold: Duration::from_millis(100),
                ..PoolOptions::default()
            },
            batch_size: 10,
            ..StoreOptions::default()
        })
        .await;
    let held = store
        .query(
            "SELECT id FROM tasks",
            Vec::new(),
            schema(&[("id", DataType::Int64)]),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = store.pool_status();
    assert_eq!(status.leaks_detected, 1, "{status:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.pool_status().leaks_detected, 1, "reported once");
}

async fn bad_sql_fails_and_the_store_keeps_working(backend: &TestBackend) {
    let store = backend.demo(100).await;
    let one = schema(&[("one", DataType::Int64)]);
    let syntax = try_read(&store, "SELEC 1", Vec::new(), Arc::clone(&one))
        .await
        .expect_err("syntax error");
    assert!(syntax.to_string().contains("syntax error"), "{syntax}");
    let missing = try_read(&store, "SELECT id FROM no_such_table", Vec::new(), one)
        .await
        .expect_err("unknown table");
    assert!(missing.to_string().contains("no_such_table"), "{missing}");
    assert_eq!(
        count(&store, "SELECT count(*) FROM tasks", Vec::new()).await,
        100
    );
    assert_eq!(in_use_when_settled(&store).await, 0);
}
