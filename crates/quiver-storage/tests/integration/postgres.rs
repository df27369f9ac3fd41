//! What only the PostgreSQL backend has: its type mapping, and riding out connections
//! that break and a database that goes away and comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Int16Type, Int32Type, Int64Type,
    IntervalMonthDayNanoType, Time64MicrosecondType, TimestampMicrosecondType,
};
use futures::TryStreamExt;
use quiver_storage::testing::{
    PostgresTestDb, TcpProxy, free_port, postgres_upstream, with_address,
};
use quiver_storage::{Error, PoolOptions, Store, StoreOptions, demo};

const TYPES_SQL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (
    id      integer PRIMARY KEY,
    flag    boolean,
    small   smallint,
    big     bigint,
    real4   real,
    money2  numeric(12, 2),
    free    numeric,
    name    varchar(20),
    fixed   char(4),
    blob    bytea,
    day     date,
    clock   time,
    at      timestamp,
    at_tz   timestamptz,
    span    interval,
    ident   uuid,
    doc     jsonb,
    tags    text[],
    scores  int4[],
    feeling mood,
    addr    inet
);
INSERT INTO kinds VALUES
    (1, true, -32768, 9007199254740993, 1.5, 12345.67, 0.1234567890123, 'héllo', 'ab',
     '\\x00ff10', '2024-02-29', '13:45:30.25', '2025-01-02 03:04:05.678901',
     '2025-01-02 03:04:05+02', '1 year 2 months 3 days 04:05:06.5',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', ARRAY['x', NULL, 'z'],
     ARRAY[3, 1, 2], 'happy', '192.168.0.1/24'),
    (2, NULL, NULL, NULL, NULL, -0.05, -1e20, NULL, NULL, NULL, '1969-12-31', NULL, NULL,
     NULL, NULL, NULL, NULL, ARRAY[]::text[], NULL, NULL, NULL);
ANALYZE kinds;
";

async fn store_for(db: &PostgresTestDb, pool: PoolOptions) -> Store {
    Store::open(
        db.url(),
        &StoreOptions {
            pool,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store opens")
}

async fn read_table(store: &Store, table: &str, order: &str) -> RecordBatch {
    let catalog = store.catalog().await.unwrap();
    let info = catalog.table("public", table).expect("table in catalog");
    let dialect = store.dialect();
    let columns: Vec<String> = info
        .columns
        .iter()
        .map(|c| dialect.select_column(c))
        .collect();
    let sql = format!(
        "SELECT {} FROM {table} ORDER BY {order}",
        columns.join(", ")
    );
    let batches: Vec<RecordBatch> = store
        .query(sql, Vec::new(), info.arrow_schema())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    arrow::compute::concat_batches(&info.arrow_schema(), &batches).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_map_as_documented() {
    let Some(db) = PostgresTestDb::create("types").await else {
        return;
    };
    db.connect().await.batch_execute(TYPES_SQL).await.unwrap();
    let store = store_for(&db, PoolOptions::default()).await;
    let batch = read_table(&store, "kinds", "id").await;
    let column = |name: &str| Arc::clone(batch.column_by_name(name).expect(name));

    assert!(column("flag").as_boolean().value(0));
    assert!(column("flag").is_null(1));
    assert_eq!(column("small").as_primitive::<Int16Type>().value(0), -32768);
    assert_eq!(
        column("big").as_primitive::<Int64Type>().value(0),
        9_007_199_254_740_993
    );
    assert_eq!(column("real4").as_primitive::<Float32Type>().value(0), 1.5);
    let money = column("money2");
    assert_eq!(money.data_type().to_string(), "Decimal128(12, 2)");
    assert_eq!(money.as_primitive::<Decimal128Type>().value(0), 1_234_567);
    assert_eq!(money.as_primitive::<Decimal128Type>().value(1), -5);
    let free = column("free");
    assert_eq!(free.data_type().to_string(), "Decimal128(38, 10)");
    // 0.1234567890123 rounded to 10 places.
    assert_eq!(
        free.as_primitive::<Decimal128Type>().value(0),
        1_234_567_890
    );
    assert_eq!(
        free.as_primitive::<Decimal128Type>().value(1),
        -(10i128.pow(30))
    );
    assert_eq!(column("name").as_string::<i32>().value(0), "héllo");
    assert_eq!(column("fixed").as_string::<i32>().value(0), "ab  ");
    assert_eq!(
        column("blob").as_binary::<i32>().value(0),
        &[0x00, 0xff, 0x10]
    );
    // 2024-02-29 is day 19782 of the Unix epoch; 1969-12-31 is day -1.
    assert_eq!(column("day").as_primitive::<Date32Type>().value(0), 19_782);
    assert_eq!(column("day").as_primitive::<Date32Type>().value(1), -1);
    assert_eq!(
        column("clock")
            .as_primitive::<Time64MicrosecondType>()
            .value(0),
        (13 * 3600 + 45 * 60 + 30) * 1_000_000 + 250_000
    );
    // 2025-01-02 03:04:05.678901 UTC = 1735787045678901 µs.
    assert_eq!(
        column("at")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_735_787_045_678_901
    );
    assert_eq!(
        column("at_tz").data_type().to_string(),
        "Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        column("at_tz")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_735_787_045_000_000 - 2 * 3_600_000_000
    );
    let span = column("span")
        .as_primitive::<IntervalMonthDayNanoType>()
        .value(0);
    assert_eq!((span.months, span.days), (14, 3));
    assert_eq!(
        span.nanoseconds,
        ((4 * 3600 + 5 * 60 + 6) * 1_000_000 + 500_000) * 1000
    );
    assert_eq!(
        column("ident").as_string::<i32>().value(0),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(column("doc").as_string::<i32>().value(0), "{\"a\": [1, 2]}");
    let tags = column("tags");
    let tags = tags.as_list::<i32>();
    let first = tags.value(0);
    let first = first.as_string::<i32>();
    assert_eq!(
        first.iter().collect::<Vec<_>>(),
        vec![Some("x"), None, Some("z")]
    );
    assert_eq!(tags.value(1).len(), 0);
    assert!(!tags.is_null(1), "an empty array is not NULL");
    let scores = column("scores");
    let scores = scores.as_list::<i32>();
    assert_eq!(
        scores
            .value(0)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec(),
        vec![3, 1, 2]
    );
    assert!(scores.is_null(1));
    assert_eq!(column("feeling").as_string::<i32>().value(0), "happy");
    assert_eq!(column("addr").as_string::<i32>().value(0), "192.168.0.1/24");
    let catalog = store.catalog().await.unwrap();
    let kinds = catalog.table("public", "kinds").unwrap();
    assert!(kinds.column("addr").unwrap().read_as_text);
    assert!(!kinds.column("feeling").unwrap().read_as_text);
}

/// Terminates every Quiver connection to `db` from outside; returns how many.
async fn terminate_quiver_connections(db: &PostgresTestDb) -> i64 {
    let admin = db.connect().await;
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'quiver'",
            &[&db.name()],
        )
        .await
        .unwrap()
        .get(0)
}

async fn task_count(store: &Store) -> Result<i64, Error> {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, true),
    ]));
    let batches: Vec<RecordBatch> = store
        .query("SELECT count(*) FROM tasks", Vec::new(), schema)
        .await?
        .try_collect()
        .await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced_and_the_next_queries_succeed() {
    let Some(db) = PostgresTestDb::create("terminate").await else {
        return;
    };
    let store = store_for(
        &db,
        PoolOptions {
            max_size: 4,
            min_idle: 4,
            ..PoolOptions::default()
        },
    )
    .await;
    demo::load(&store, 500, false, Arc::new(|_| {}))
        .await
        .unwrap();
    // Use every connection, so all four are open and idle.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { task_count(&store).await })
        })
        .collect();
    for query in warm {
        assert_eq!(query.await.unwrap().unwrap(), 500);
    }
    let killed = terminate_quiver_connections(&db).await;
    assert!(killed >= 1, "terminated {killed} connections");
    for _ in 0..20 {
        assert_eq!(task_count(&store).await.unwrap(), 500);
    }
    // Concurrent queries too, on whatever the pool has now.
    let after: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { task_count(&store).await })
        })
        .collect();
    for query in after {
        assert_eq!(query.await.unwrap().unwrap(), 500);
    }
    let status = store.pool_status();
    assert!(status.connections_broken >= 1, "{status:?}");
    assert_eq!(status.in_use, 0);
}

async fn until_ready(store: &Store, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if store.ping().await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not ready within {within:?}: {:?}",
            store.pool_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_and_later_restarted_is_ridden_out() {
    let Some(db) = PostgresTestDb::create("outage").await else {
        return;
    };
    demo::load(
        &store_for(&db, PoolOptions::default()).await,
        200,
        false,
        Arc::new(|_| {}),
    )
    .await
    .unwrap();
    let upstream = postgres_upstream(db.url());
    let listen = free_port().await;
    let url = with_address(db.url(), listen);
    let options = StoreOptions {
        pool: PoolOptions {
            max_size: 4,
            min_idle: 2,
            acquire_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_millis(500),
            ..PoolOptions::default()
        },
        ..StoreOptions::default()
    };

    // Down at start: the store opens, answers UNAVAILABLE at once, and says why.
    let store = Store::open(&url, &options).await.expect("opens while down");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    assert!(
        matches!(err, Error::Unavailable(_) | Error::Connect { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    let status = store.pool_status();
    assert!(
        !status.reachable && status.last_error.is_some(),
        "{status:?}"
    );

    // Up: ready within seconds, no restart.
    let proxy = TcpProxy::start(listen, upstream).await;
    let took = until_ready(&store, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "ready after {took:?}");
    assert_eq!(task_count(&store).await.unwrap(), 200);

    // Down again mid-run (every connection cut), then back.
    proxy.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed = task_count(&store).await.unwrap_err();
    assert!(
        failed.is_connection_lost()
            || matches!(failed, Error::Unavailable(_) | Error::Connect { .. }),
        "{failed}"
    );
    let _proxy = TcpProxy::start(listen, upstream).await;
    until_ready(&store, Duration::from_secs(10)).await;
    for _ in 0..10 {
        assert_eq!(task_count(&store).await.unwrap(), 200);
    }
    assert_eq!(store.pool_status().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_read_is_cancelled_and_its_connection_retired() {
    let Some(db) = PostgresTestDb::create("abandon").await else {
        return;
    };
    let store = Store::open(
        db.url(),
        &StoreOptions {
            batch_size: 10,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    demo::load(&store, 2_000, false, Arc::new(|_| {}))
        .await
        .unwrap();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
    ]));
    // Four million rows: far more than anyone reads here.
    let mut stream = store
        .query("SELECT a.id FROM tasks a, tasks b", Vec::new(), schema)
        .await
        .unwrap();
    assert_eq!(stream.try_next().await.unwrap().unwrap().num_rows(), 10);
    let broken_before = store.pool_status().connections_broken;
    drop(stream);

    let admin = db.connect().await;
    let started = Instant::now();
    loop {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND state = 'active' AND query LIKE '%tasks a, tasks b%'
                   AND pid <> pg_backend_pid()",
                &[&db.name()],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the abandoned statement still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.pool_status().connections_broken, broken_before + 1);
    assert_eq!(task_count(&store).await.unwrap(), 2_000);
}
