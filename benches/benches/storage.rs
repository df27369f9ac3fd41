//! In-process benchmarks, each beside its peer: Quiver's SQLite→Arrow read vs rusqlite
//! reading the same rows, and a point lookup through the query engine vs rusqlite.
//!
//! `cargo bench -p quiver-bench --bench storage`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::TryStreamExt;
use quiver_query::{EngineConfig, QueryEngine};
use quiver_storage::{Store, StoreOptions, Value, demo};

const TASKS: u64 = 100_000;

struct Fixture {
    store: Store,
    engine: QueryEngine,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture(runtime: &tokio::runtime::Runtime) -> Fixture {
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("bench.db");
        let store = Store::open(
            &format!("sqlite://{}", path.display()),
            &StoreOptions::default(),
        )
        .await
        .expect("store");
        eprintln!("loading {TASKS} demo tasks");
        demo::load(&store, TASKS, false, Arc::new(|_| {}))
            .await
            .expect("demo data");
        let engine = QueryEngine::new(store.clone(), EngineConfig::default())
            .await
            .expect("engine");
        Fixture {
            store,
            engine,
            path,
            _dir: dir,
        }
    })
}

fn scans(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = fixture(&runtime);
    let catalog = runtime.block_on(fixture.store.catalog()).expect("catalog");
    let schema = catalog
        .table("main", "tasks")
        .expect("tasks")
        .arrow_schema();
    let sql = "SELECT * FROM tasks";

    let mut group = c.benchmark_group("scan 100K tasks");
    group.sample_size(10);
    group.bench_function("quiver store → Arrow batches", |b| {
        b.to_async(&runtime).iter(|| async {
            let stream = fixture
                .store
                .query(sql, Vec::new(), Arc::clone(&schema))
                .await
                .expect("query");
            let batches: Vec<_> = stream.try_collect().await.expect("batches");
            assert_eq!(
                batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                TASKS as usize
            );
        });
    });
    group.bench_function("rusqlite direct → owned values", |b| {
        let conn = rusqlite::Connection::open(&fixture.path).expect("open");
        b.iter(|| {
            let mut statement = conn.prepare_cached(sql).expect("prepare");
            let columns = statement.column_count();
            let rows: Vec<Vec<rusqlite::types::Value>> = statement
                .query_map([], |row| (0..columns).map(|i| row.get(i)).collect())
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            assert_eq!(rows.len(), TASKS as usize);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("point lookup by key");
    let query = runtime
        .block_on(fixture.engine.prepare("SELECT * FROM tasks WHERE id = ?"))
        .expect("prepare");
    let mut id = 0i64;
    group.bench_function("quiver engine (prepared, plan + execute)", |b| {
        b.to_async(&runtime).iter(|| {
            id = id % TASKS as i64 + 1;
            let params = vec![datafusion_scalar(id)];
            let engine = &fixture.engine;
            let query = &query;
            async move {
                let stream = engine.execute(query, params).await.expect("execute");
                let batches: Vec<_> = stream.try_collect().await.expect("batches");
                assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
            }
        });
    });
    group.bench_function("quiver store (pooled read, one row)", |b| {
        b.to_async(&runtime).iter(|| {
            id = id % TASKS as i64 + 1;
            let store = &fixture.store;
            let schema = Arc::clone(&schema);
            async move {
                let stream = store
                    .query(
                        "SELECT * FROM tasks WHERE id = ?1",
                        vec![Value::Int(id)],
                        schema,
                    )
                    .await
                    .expect("query");
                let batches: Vec<_> = stream.try_collect().await.expect("batches");
                assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
            }
        });
    });
    group.bench_function("rusqlite direct (prepared)", |b| {
        let conn = rusqlite::Connection::open(&fixture.path).expect("open");
        b.iter(|| {
            id = id % TASKS as i64 + 1;
            let mut statement = conn
                .prepare_cached("SELECT * FROM tasks WHERE id = ?1")
                .expect("prepare");
            let columns = statement.column_count();
            let row: Vec<rusqlite::types::Value> = statement
                .query_row([id], |row| (0..columns).map(|i| row.get(i)).collect())
                .expect("row");
            assert_eq!(row.len(), columns);
        });
    });
    group.finish();
}

fn datafusion_scalar(value: i64) -> quiver_query::params::ScalarValue {
    quiver_query::params::ScalarValue::Int64(Some(value))
}

criterion_group!(benches, scans);
criterion_main!(benches);
