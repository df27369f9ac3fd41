//! The write path: the `quiver.v1.Mutations` API and Flight SQL measured against a
//! running `quiver serve`, per backend, on a freshly loaded demo database.
//!
//! Latencies (p50 / p95 / p99 after a warm-up), each call one gRPC round trip and one
//! committed transaction, change log included:
//! 1. single-row insert of a task (typed row, every NOT NULL column);
//! 2. single-row update by primary key (status and updated_at of a task from 1);
//! 3. batch insert of 100 tasks in one call (typed rows);
//! 4. cascade delete of an epic with 10 features and 1,000 tasks (the tree is created
//!    untimed before each sample; only the Delete is timed; the store is read after
//!    each one to check that the cascade left nothing);
//! 5. the demo's progress aggregation over the 50 features of epic 3, over Flight SQL.
//!
//! Bulk ingest, rows/s, all into tables of the same shape in the same database:
//! - Quiver: `Mutations.Insert` with Arrow IPC streams of at most 50,000 rows each,
//!   into `bench_events`, created beforehand through Flight SQL DDL;
//! - the store's own bulk path, bypassing Quiver (and its change log):
//!   rusqlite (one prepared INSERT in one transaction) on the server's SQLite file,
//!   tokio-postgres `COPY … FROM STDIN` (text) on PostgreSQL, into `bench_events_direct`;
//! - with `--python`, ADBC's `adbc_ingest` (Flight SQL bulk ingest) from
//!   `python/ingest.py`, into `bench_events_adbc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType,
};
use arrow::ipc::writer::StreamWriter;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::SinkExt;
use quiver_proto::v1::mutations_client::MutationsClient;
use quiver_proto::v1::{self as pb, selector, value::Kind};
use quiver_storage::demo::{FEATURES_PER_EPIC, TASK_STATUSES};
use quiver_storage::time::format_timestamp_micros;
use tonic::transport::Channel;

use crate::e2e::FlightClient;
use crate::queries::BenchDatabase;
use crate::server::{QuiverProcess, load_demo, sqlite_url};

/// The demo's "progress of 50 features" query (DESIGN §9), as in `queries`.
const PROGRESS_SQL: &str = "SELECT f.id, count(*) AS total, \
     sum(CASE WHEN t.status = 'done' THEN 1 ELSE 0 END) AS done \
     FROM features f JOIN tasks t ON t.feature_id = f.id WHERE f.epic_id = 3 GROUP BY f.id";
/// The feature the inserted tasks of 1 and 3 belong to (epic 1: never read by 5).
const TASK_FEATURE: i64 = 1;
/// Tasks per batch insert.
const BATCH_ROWS: usize = 100;
/// The tree under each deleted epic.
const CASCADE_FEATURES: usize = 10;
const CASCADE_TASKS: usize = 1_000;
/// Rows per `Mutations.Insert` while ingesting (the server takes 100,000 and 32 MiB).
const INGEST_CHUNK_ROWS: usize = 50_000;
/// Bytes of COPY text sent per message.
const COPY_CHUNK_BYTES: usize = 64 * 1024;
/// 2026-01-01T00:00:00Z in µs: `at` of event `i` is this plus `i` seconds (as in
/// `python/ingest.py`).
const EVENTS_BASE_MICROS: i64 = 1_767_225_600_000_000;
/// The shape of every ingest table.
const EVENTS_COLUMNS: &str =
    "(id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, at TIMESTAMP)";
/// How often long steps print progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The command line of `quiver-bench mutations`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Admin URL of a PostgreSQL server (a database is created and dropped on it).
    pub(crate) postgres: Option<String>,
    /// Demo size, in tasks.
    pub(crate) tasks: u64,
    /// Samples per latency measure.
    pub(crate) runs: usize,
    /// Rows per bulk ingest.
    pub(crate) ingest_rows: usize,
    /// Python interpreter for `python/ingest.py` (with adbc_driver_flightsql and pyarrow).
    pub(crate) python: Option<PathBuf>,
}

/// Sorted latencies summarized.
#[derive(Debug, Clone, Copy)]
struct Latencies {
    samples: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
}

impl Latencies {
    fn of(mut samples: Vec<Duration>) -> Result<Self> {
        ensure!(!samples.is_empty(), "no samples");
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Ok(Self {
            samples: samples.len(),
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
        })
    }
}

/// One bulk ingest of `rows` rows per path.
#[derive(Debug, Clone)]
struct IngestReport {
    rows: usize,
    quiver: Duration,
    direct: Duration,
    direct_path: &'static str,
    python: Option<Duration>,
}

/// Everything measured on one backend.
#[derive(Debug, Clone)]
struct BackendReport {
    backend: &'static str,
    insert: Latencies,
    update: Latencies,
    batch: Latencies,
    cascade: Latencies,
    /// Rows the last cascade delete removed (epic + features + tasks), read from the store.
    cascade_removed: i64,
    progress: Latencies,
    ingest: IngestReport,
}

/// The store, opened directly (not through Quiver): to check what Quiver wrote, and
/// to measure the store's own bulk path.
enum Direct {
    /// The server's SQLite file.
    Sqlite(PathBuf),
    /// A connection to the server's PostgreSQL database.
    Postgres(tokio_postgres::Client),
}

impl Direct {
    /// The store's bulk path, as the ingest table names it.
    fn bulk_path(&self) -> &'static str {
        match self {
            Direct::Sqlite(_) => "store directly: rusqlite, one prepared INSERT, one transaction",
            Direct::Postgres(_) => "store directly: tokio-postgres COPY FROM STDIN (text)",
        }
    }

    /// Runs one `SELECT count(*) …`.
    async fn count(&self, sql: &str) -> Result<i64> {
        match self {
            Direct::Sqlite(db) => {
                let (db, sql) = (db.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || -> Result<i64> {
                    let conn = rusqlite::Connection::open_with_flags(
                        &db,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )?;
                    conn.busy_timeout(Duration::from_secs(30))?;
                    Ok(conn.query_row(&sql, [], |row| row.get::<_, i64>(0))?)
                })
                .await?
            }
            Direct::Postgres(client) => Ok(client
                .query_one(sql, &[])
                .await
                .with_context(|| format!("direct: {sql}"))?
                .try_get::<_, i64>(0)?),
        }
    }

    /// Runs a DDL statement on the store, bypassing Quiver.
    async fn execute(&self, sql: &str) -> Result<()> {
        match self {
            Direct::Sqlite(db) => {
                let (db, sql) = (db.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let conn = rusqlite::Connection::open(&db)?;
                    conn.busy_timeout(Duration::from_secs(30))?;
                    conn.execute_batch(&sql)?;
                    Ok(())
                })
                .await?
            }
            Direct::Postgres(client) => {
                client
                    .batch_execute(sql)
                    .await
                    .with_context(|| format!("direct: {sql}"))?;
                Ok(())
            }
        }
    }

    /// Loads `events` into `bench_events_direct` by the store's own bulk path; returns
    /// the time from the first row to the commit.
    async fn bulk_load(&self, events: &RecordBatch) -> Result<Duration> {
        match self {
            Direct::Sqlite(db) => {
                let (db, events) = (db.clone(), events.clone());
                tokio::task::spawn_blocking(move || sqlite_bulk_load(&db, &events)).await?
            }
            Direct::Postgres(client) => postgres_bulk_load(client, events).await,
        }
    }
}

/// The event columns of a batch built by [`events_batch`].
struct EventColumns<'a> {
    ids: &'a Int64Array,
    names: &'a StringArray,
    scores: &'a Float64Array,
    ats: &'a TimestampMicrosecondArray,
}

impl<'a> EventColumns<'a> {
    fn of(batch: &'a RecordBatch) -> Self {
        Self {
            ids: batch.column(0).as_primitive::<Int64Type>(),
            names: batch.column(1).as_string::<i32>(),
            scores: batch.column(2).as_primitive::<Float64Type>(),
            ats: batch.column(3).as_primitive::<TimestampMicrosecondType>(),
        }
    }
}

/// rusqlite: one prepared INSERT, one transaction, on the server's database file, with
/// the server's `synchronous` setting; timestamps as the text Quiver stores.
fn sqlite_bulk_load(db: &Path, events: &RecordBatch) -> Result<Duration> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
    let columns = EventColumns::of(events);
    let started = Instant::now();
    let tx = conn.transaction()?;
    {
        let mut statement = tx.prepare(
            "INSERT INTO bench_events_direct (id, name, score, at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for i in 0..events.num_rows() {
            statement.execute(rusqlite::params![
                columns.ids.value(i),
                columns.names.value(i),
                columns.scores.value(i),
                format_timestamp_micros(columns.ats.value(i)),
            ])?;
        }
    }
    tx.commit()?;
    Ok(started.elapsed())
}

/// tokio-postgres: `COPY … FROM STDIN` in text format, 64 KiB per message.
async fn postgres_bulk_load(
    client: &tokio_postgres::Client,
    events: &RecordBatch,
) -> Result<Duration> {
    use std::fmt::Write as _;

    // A table Quiver captures would make this measure Quiver's triggers too.
    let triggers = client
        .query_one(
            "SELECT count(*) FROM pg_trigger \
             WHERE tgrelid = 'public.bench_events_direct'::regclass",
            &[],
        )
        .await?
        .try_get::<_, i64>(0)?;
    ensure!(triggers == 0, "bench_events_direct has {triggers} triggers");
    let columns = EventColumns::of(events);
    let started = Instant::now();
    let sink = client
        .copy_in("COPY bench_events_direct (id, name, score, at) FROM STDIN")
        .await?;
    futures::pin_mut!(sink);
    let mut buffer = String::with_capacity(COPY_CHUNK_BYTES + 256);
    for i in 0..events.num_rows() {
        writeln!(
            buffer,
            "{}\t{}\t{}\t{}",
            columns.ids.value(i),
            columns.names.value(i),
            columns.scores.value(i),
            format_timestamp_micros(columns.ats.value(i))
        )?;
        if buffer.len() >= COPY_CHUNK_BYTES {
            let chunk =
                std::mem::replace(&mut buffer, String::with_capacity(COPY_CHUNK_BYTES + 256));
            sink.send(bytes::Bytes::from(chunk)).await?;
        }
    }
    if !buffer.is_empty() {
        sink.send(bytes::Bytes::from(buffer)).await?;
    }
    let written = sink.finish().await?;
    let elapsed = started.elapsed();
    ensure!(
        written == events.num_rows() as u64,
        "COPY wrote {written} of {} rows",
        events.num_rows()
    );
    Ok(elapsed)
}

async fn connect_postgres(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

// ---- typed rows -----------------------------------------------------------------

fn text(value: impl Into<String>) -> pb::Value {
    pb::Value {
        kind: Some(Kind::String(value.into())),
    }
}

fn int(value: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::Int64(value)),
    }
}

fn timestamp(micros: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::TimestampMicros(micros)),
    }
}

fn row<const N: usize>(values: [(&str, pb::Value); N]) -> pb::Row {
    pb::Row {
        values: values
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    }
}

fn typed(rows: Vec<pb::Row>) -> pb::Rows {
    pb::Rows {
        rows,
        arrow_ipc: Vec::new(),
    }
}

fn arrow_ipc(batch: &RecordBatch) -> Result<pb::Rows> {
    let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref())?;
    writer.write(batch)?;
    Ok(pb::Rows {
        rows: Vec::new(),
        arrow_ipc: writer.into_inner()?,
    })
}

/// Selects one row by its `id` primary key.
fn by_id(id: i64) -> pb::Selector {
    pb::Selector {
        target: Some(selector::Target::Keys(pb::KeyList {
            keys: vec![row([("id", int(id))])],
        })),
    }
}

/// The `id` of a generated key.
fn generated_id(key: &pb::Row) -> Result<i64> {
    match key.values.get("id").and_then(|value| value.kind.as_ref()) {
        Some(Kind::Int64(id)) => Ok(*id),
        _ => anyhow::bail!("the generated key has no int64 'id'"),
    }
}

fn now_micros() -> Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros(),
    )?)
}

/// A task with every NOT NULL column (the id is generated).
fn task_row(key: String, now: i64) -> pb::Row {
    row([
        ("feature_id", int(TASK_FEATURE)),
        ("title", text(format!("Benchmark task {key}"))),
        ("key", text(key)),
        ("status", text("todo")),
        ("priority", int(3)),
        ("created_at", timestamp(now)),
        ("updated_at", timestamp(now)),
    ])
}

fn epic_row(sample: usize, now: i64) -> pb::Row {
    row([
        ("key", text(format!("BENCH-EPIC-{sample:05}"))),
        ("title", text(format!("Benchmark epic {sample}"))),
        ("status", text("active")),
        ("priority", int(2)),
        ("created_at", timestamp(now)),
        ("updated_at", timestamp(now)),
    ])
}

fn feature_row(epic_id: i64, sample: usize, index: usize, now: i64) -> pb::Row {
    row([
        ("epic_id", int(epic_id)),
        ("key", text(format!("BENCH-FEAT-{sample:05}-{index:02}"))),
        (
            "title",
            text(format!("Benchmark feature {index} of epic {sample}")),
        ),
        ("status", text("planned")),
        ("priority", int(3)),
        ("created_at", timestamp(now)),
        ("updated_at", timestamp(now)),
    ])
}

/// The 1,000 tasks under a cascade sample's features, as one Arrow batch.
fn cascade_tasks(feature_ids: &[i64], sample: usize, now: i64) -> Result<RecordBatch> {
    ensure!(!feature_ids.is_empty(), "no features");
    let n = CASCADE_TASKS;
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("feature_id", DataType::Int64, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("priority", DataType::Int64, false),
        Field::new("created_at", micros.clone(), false),
        Field::new("updated_at", micros, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|k| feature_ids[k % feature_ids.len()]),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|k| format!("BENCH-CASC-{sample:05}-{k:04}")),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|k| format!("Cascade task {k} of epic {sample}")),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|k| TASK_STATUSES[k % TASK_STATUSES.len()]),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|k| 1 + (k % 5) as i64),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            std::iter::repeat_n(now, n),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            std::iter::repeat_n(now, n),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `rows` events (id, name, score, at), ids from 1; the same rows as `python/ingest.py`.
fn events_batch(rows: usize) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]));
    let ids = 1..=rows as i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(ids.clone())),
        Arc::new(StringArray::from_iter_values(
            ids.clone().map(|i| format!("event-{i:09}")),
        )),
        Arc::new(Float64Array::from_iter_values(
            ids.clone().map(|i| (i % 1000) as f64 / 10.0),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            ids.map(|i| EVENTS_BASE_MICROS + i * 1_000_000),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

// ---- measuring --------------------------------------------------------------------

async fn insert_rows(
    client: &mut MutationsClient<Channel>,
    table: &str,
    rows: pb::Rows,
) -> Result<pb::MutateResponse> {
    let request = pb::InsertRequest {
        table: table.to_owned(),
        rows: Some(rows),
        idempotency_key: String::new(),
    };
    Ok(client
        .insert(request)
        .await
        .with_context(|| format!("Mutations.Insert into {table}"))?
        .into_inner())
}

/// `warmup` untimed calls, then `runs` samples; `call(i)` (i counts every call, warm-up
/// included) does its own setup and returns the time of what it measures.
async fn sample(
    what: &str,
    warmup: usize,
    runs: usize,
    mut call: impl AsyncFnMut(usize) -> Result<Duration>,
) -> Result<Latencies> {
    eprintln!("{what}: {warmup} warm-up + {runs} samples");
    for i in 0..warmup {
        call(i)
            .await
            .with_context(|| format!("{what}: warm-up call {}", i + 1))?;
    }
    let mut samples = Vec::with_capacity(runs);
    let started = Instant::now();
    let mut next_report = started + PROGRESS_EVERY;
    for i in 0..runs {
        let elapsed = call(warmup + i)
            .await
            .with_context(|| format!("{what}: sample {}", i + 1))?;
        samples.push(elapsed);
        if Instant::now() >= next_report {
            eprintln!(
                "{what}: {}/{runs} samples after {:.1}s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
            next_report = Instant::now() + PROGRESS_EVERY;
        }
    }
    Latencies::of(samples)
}

/// 1. One task per call; returns the latencies and the ids of the tasks inserted.
async fn single_insert(
    what: &str,
    mutations: &MutationsClient<Channel>,
    warmup: usize,
    runs: usize,
) -> Result<(Latencies, Vec<i64>)> {
    let mut client = mutations.clone();
    let mut ids = Vec::with_capacity(warmup + runs);
    let latencies = sample(what, warmup, runs, async |i: usize| -> Result<Duration> {
        let rows = typed(vec![task_row(format!("BENCH-ONE-{i:07}"), now_micros()?)]);
        let started = Instant::now();
        let response = insert_rows(&mut client, "tasks", rows).await?;
        let elapsed = started.elapsed();
        ensure!(
            response.affected_rows == 1,
            "inserted {} rows",
            response.affected_rows
        );
        let key = response
            .generated_keys
            .first()
            .context("no generated key")?;
        ids.push(generated_id(key)?);
        Ok(elapsed)
    })
    .await?;
    Ok((latencies, ids))
}

/// 2. Status and updated_at of one task, selected by primary key, per call.
async fn single_update(
    what: &str,
    mutations: &MutationsClient<Channel>,
    ids: &[i64],
    warmup: usize,
    runs: usize,
) -> Result<Latencies> {
    const STATUSES: [&str; 4] = ["in_progress", "review", "done", "todo"];
    ensure!(!ids.is_empty(), "no tasks to update");
    let mut client = mutations.clone();
    sample(what, warmup, runs, async |i: usize| -> Result<Duration> {
        let request = pb::UpdateRequest {
            table: "tasks".to_owned(),
            r#where: Some(by_id(ids[i % ids.len()])),
            set: Some(row([
                ("status", text(STATUSES[i % STATUSES.len()])),
                ("updated_at", timestamp(now_micros()?)),
            ])),
            idempotency_key: String::new(),
        };
        let started = Instant::now();
        let response = client
            .update(request)
            .await
            .context("Mutations.Update of tasks")?
            .into_inner();
        let elapsed = started.elapsed();
        ensure!(
            response.affected_rows == 1,
            "updated {} rows",
            response.affected_rows
        );
        Ok(elapsed)
    })
    .await
}

/// 3. 100 tasks per call, typed rows.
async fn batch_insert(
    what: &str,
    mutations: &MutationsClient<Channel>,
    warmup: usize,
    runs: usize,
) -> Result<Latencies> {
    let mut client = mutations.clone();
    sample(what, warmup, runs, async |i: usize| -> Result<Duration> {
        let now = now_micros()?;
        let rows = typed(
            (0..BATCH_ROWS)
                .map(|j| task_row(format!("BENCH-BATCH-{i:05}-{j:03}"), now))
                .collect(),
        );
        let started = Instant::now();
        let response = insert_rows(&mut client, "tasks", rows).await?;
        let elapsed = started.elapsed();
        ensure!(
            response.affected_rows == BATCH_ROWS as u64
                && response.generated_keys.len() == BATCH_ROWS,
            "inserted {} rows, {} keys",
            response.affected_rows,
            response.generated_keys.len()
        );
        Ok(elapsed)
    })
    .await
}

/// Measure 4: the delete of one epic by primary key, cascading to its 10 features and 1,000
/// tasks. Returns the latencies and the rows the last delete removed.
async fn cascade_delete(
    what: &str,
    mutations: &MutationsClient<Channel>,
    direct: &Direct,
    runs: usize,
) -> Result<(Latencies, i64)> {
    let mut client = mutations.clone();
    let mut removed = 0i64;
    let latencies = sample(what, 1, runs, async |i: usize| -> Result<Duration> {
        // Untimed: the tree to delete.
        let now = now_micros()?;
        let epic = insert_rows(&mut client, "epics", typed(vec![epic_row(i, now)])).await?;
        let epic_id = generated_id(epic.generated_keys.first().context("no epic key")?)?;
        let features = (0..CASCADE_FEATURES)
            .map(|j| feature_row(epic_id, i, j, now))
            .collect();
        let features = insert_rows(&mut client, "features", typed(features)).await?;
        let feature_ids = features
            .generated_keys
            .iter()
            .map(generated_id)
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            feature_ids.len() == CASCADE_FEATURES,
            "{} feature keys",
            feature_ids.len()
        );
        let tasks = arrow_ipc(&cascade_tasks(&feature_ids, i, now)?)?;
        insert_rows(&mut client, "tasks", tasks).await?;
        let in_features = feature_ids
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let tasks_sql = format!("SELECT count(*) FROM tasks WHERE feature_id IN ({in_features})");
        let features_sql = format!("SELECT count(*) FROM features WHERE epic_id = {epic_id}");
        let tasks_before = direct.count(&tasks_sql).await?;
        let features_before = direct.count(&features_sql).await?;
        ensure!(
            tasks_before == CASCADE_TASKS as i64 && features_before == CASCADE_FEATURES as i64,
            "the tree has {features_before} features and {tasks_before} tasks"
        );

        // Timed: the delete alone.
        let request = pb::DeleteRequest {
            table: "epics".to_owned(),
            r#where: Some(by_id(epic_id)),
            idempotency_key: String::new(),
        };
        let started = Instant::now();
        let response = client
            .delete(request)
            .await
            .context("Mutations.Delete of an epic")?
            .into_inner();
        let elapsed = started.elapsed();

        // The cascade, read back from the store.
        ensure!(
            response.affected_rows == 1,
            "deleted {} epics",
            response.affected_rows
        );
        let tasks_after = direct.count(&tasks_sql).await?;
        let features_after = direct.count(&features_sql).await?;
        ensure!(
            tasks_after == 0 && features_after == 0,
            "the cascade left {features_after} features and {tasks_after} tasks of epic {epic_id}"
        );
        removed = 1 + features_before + tasks_before;
        Ok(elapsed)
    })
    .await?;
    Ok((latencies, removed))
}

/// 5. The progress aggregation over Flight SQL.
async fn progress_aggregation(
    what: &str,
    flight: &FlightClient,
    warmup: usize,
    runs: usize,
) -> Result<Latencies> {
    sample(what, warmup, runs, async |_: usize| -> Result<Duration> {
        let result = flight.fetch(PROGRESS_SQL, |_| {}).await?;
        ensure!(
            result.rows == FEATURES_PER_EPIC as usize,
            "the progress query returned {} rows",
            result.rows
        );
        Ok(result.elapsed)
    })
    .await
}

/// Measure 6, bulk ingest: Quiver's Mutations API, the store's own bulk path, and (with
/// `python`) ADBC.
async fn bulk_ingest(
    backend: &str,
    channel: Channel,
    mutations: &MutationsClient<Channel>,
    grpc_addr: &str,
    direct: &Direct,
    rows: usize,
    python: Option<&Path>,
) -> Result<IngestReport> {
    let events = events_batch(rows)?;

    // Quiver's table first, through Flight SQL DDL. On PostgreSQL, DDL through Quiver
    // installs capture triggers on every table it finds, so the direct table is
    // created after it, on the store.
    let mut flight_sql = FlightSqlServiceClient::new(channel);
    flight_sql
        .execute_update(format!("CREATE TABLE bench_events {EVENTS_COLUMNS}"), None)
        .await
        .context("create bench_events through Flight SQL")?;
    direct
        .execute(&format!(
            "CREATE TABLE bench_events_direct {EVENTS_COLUMNS}"
        ))
        .await?;

    eprintln!(
        "{backend} ingest: {rows} rows through Mutations.Insert, {INGEST_CHUNK_ROWS} per request"
    );
    let mut client = mutations.clone();
    let started = Instant::now();
    let mut next_report = started + PROGRESS_EVERY;
    let mut offset = 0;
    while offset < rows {
        let length = INGEST_CHUNK_ROWS.min(rows - offset);
        let chunk = arrow_ipc(&events.slice(offset, length))?;
        insert_rows(&mut client, "bench_events", chunk).await?;
        offset += length;
        if Instant::now() >= next_report {
            eprintln!(
                "{backend} ingest: {offset}/{rows} rows after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            next_report = Instant::now() + PROGRESS_EVERY;
        }
    }
    let quiver = started.elapsed();
    let written = direct.count("SELECT count(*) FROM bench_events").await?;
    ensure!(
        written == rows as i64,
        "bench_events has {written} of {rows} rows"
    );

    eprintln!("{backend} ingest: {rows} rows by the store's bulk path");
    let direct_elapsed = direct.bulk_load(&events).await?;
    let written = direct
        .count("SELECT count(*) FROM bench_events_direct")
        .await?;
    ensure!(
        written == rows as i64,
        "bench_events_direct has {written} of {rows} rows"
    );

    let python = match python {
        Some(python) => {
            eprintln!("{backend} ingest: {rows} rows through ADBC (python/ingest.py)");
            Some(python_ingest(python, grpc_addr, rows).await?)
        }
        None => None,
    };
    Ok(IngestReport {
        rows,
        quiver,
        direct: direct_elapsed,
        direct_path: direct.bulk_path(),
        python,
    })
}

/// Runs `python/ingest.py`, which prints `{"rows": N, "seconds": s}` last.
async fn python_ingest(python: &Path, grpc_addr: &str, rows: usize) -> Result<Duration> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ingest.py");
    // Not `output()`: tokio's pipes stderr too, and the script reports progress there.
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .args(["--grpc", grpc_addr, "--rows", &rows.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let output = child.wait_with_output().await?;
    ensure!(
        output.status.success(),
        "python ingest failed: {}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .context("python ingest printed nothing")?;
    let result: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("python ingest printed {line}"))?;
    let got = result["rows"]
        .as_u64()
        .context("no 'rows' in the python result")?;
    ensure!(got == rows as u64, "python ingested {got} of {rows} rows");
    let seconds = result["seconds"]
        .as_f64()
        .context("no 'seconds' in the python result")?;
    Ok(Duration::try_from_secs_f64(seconds)?)
}

/// Every measure on one backend, against a server on a freshly loaded demo database.
async fn measure(
    backend: &'static str,
    quiver: &QuiverProcess,
    direct: Direct,
    options: &Options,
) -> Result<BackendReport> {
    // The Mutations service listens on the same port as Flight SQL.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", quiver.grpc_addr))?
        .connect()
        .await
        .context("connect to the gRPC port")?;
    let mutations = MutationsClient::new(channel.clone());
    let flight = FlightClient::connect(&quiver.grpc_addr).await?;
    let runs = options.runs.max(1);
    let warmup = (runs / 10).clamp(1, 20);

    eprintln!("[{backend} 1/6] single-row insert");
    let (insert, ids) = single_insert(
        &format!("{backend} single insert"),
        &mutations,
        warmup,
        runs,
    )
    .await?;
    eprintln!("[{backend} 2/6] single-row update by key");
    let update = single_update(
        &format!("{backend} single update"),
        &mutations,
        &ids,
        warmup,
        runs,
    )
    .await?;
    eprintln!("[{backend} 3/6] batch insert of {BATCH_ROWS}");
    let batch = batch_insert(&format!("{backend} batch insert"), &mutations, warmup, runs).await?;
    eprintln!("[{backend} 4/6] cascade delete of {CASCADE_TASKS} tasks");
    let (cascade, cascade_removed) = cascade_delete(
        &format!("{backend} cascade delete"),
        &mutations,
        &direct,
        runs.clamp(10, 20),
    )
    .await?;
    eprintln!("[{backend} 5/6] progress aggregation");
    let progress = progress_aggregation(
        &format!("{backend} progress aggregation"),
        &flight,
        warmup,
        runs,
    )
    .await?;
    eprintln!(
        "[{backend} 6/6] bulk ingest of {} rows",
        options.ingest_rows
    );
    let ingest = bulk_ingest(
        backend,
        channel,
        &mutations,
        &quiver.grpc_addr,
        &direct,
        options.ingest_rows,
        options.python.as_deref(),
    )
    .await?;
    Ok(BackendReport {
        backend,
        insert,
        update,
        batch,
        cascade,
        cascade_removed,
        progress,
        ingest,
    })
}

// ---- reporting --------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rows_per_second(rows: usize, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn rate(rows: usize, elapsed: Duration) -> String {
    let rate = rows_per_second(rows, elapsed);
    if rate >= 1e6 {
        format!("{:.2}M rows/s", rate / 1e6)
    } else {
        format!("{:.0}K rows/s", rate / 1e3)
    }
}

fn p50_p99(latencies: &Latencies) -> String {
    format!("{} / {}", ms(latencies.p50), ms(latencies.p99))
}

fn ingest_cell(ingest: &IngestReport) -> String {
    format!(
        "{} (store directly {})",
        rate(ingest.rows, ingest.quiver),
        rate(ingest.rows, ingest.direct)
    )
}

fn print_backend(report: &BackendReport) {
    let backend = report.backend;
    println!("| backend | measure | samples | p50 | p95 | p99 | notes |");
    println!("|---|---|---:|---:|---:|---:|---|");
    let cascade_note = format!(
        "1 epic → {CASCADE_FEATURES} features → {CASCADE_TASKS} tasks: {} rows removed, \
         0 left (read from the store); tree created untimed",
        report.cascade_removed
    );
    let latency_rows = [
        (
            "single-row insert",
            &report.insert,
            "tasks, typed row of every NOT NULL column; generated id".to_owned(),
        ),
        (
            "single-row update by key",
            &report.update,
            "status + updated_at of a task from the inserts, by primary key".to_owned(),
        ),
        (
            "batch insert of 100",
            &report.batch,
            format!("{BATCH_ROWS} typed task rows in one Insert"),
        ),
        ("cascade delete of an epic", &report.cascade, cascade_note),
        (
            "progress aggregation",
            &report.progress,
            "Flight SQL, 50 features of epic 3".to_owned(),
        ),
    ];
    for (measure, latencies, note) in latency_rows {
        println!(
            "| {backend} | {measure} | {} | {} | {} | {} | {note} |",
            latencies.samples,
            ms(latencies.p50),
            ms(latencies.p95),
            ms(latencies.p99),
        );
    }
    println!();

    let ingest = &report.ingest;
    let direct_rate = rows_per_second(ingest.rows, ingest.direct);
    println!("| backend | bulk ingest path | rows | time | rows/s | rate vs store |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut paths = vec![
        (
            format!("Quiver Mutations.Insert, Arrow IPC, {INGEST_CHUNK_ROWS} rows per request"),
            ingest.quiver,
        ),
        (ingest.direct_path.to_owned(), ingest.direct),
    ];
    if let Some(python) = ingest.python {
        paths.push((
            "Python ADBC adbc_ingest (Flight SQL), mode create".to_owned(),
            python,
        ));
    }
    for (path, elapsed) in paths {
        let rows_per_s = rows_per_second(ingest.rows, elapsed);
        println!(
            "| {backend} | {path} | {} | {:.2} s | {rows_per_s:.0} | {:.2}× |",
            ingest.rows,
            elapsed.as_secs_f64(),
            rows_per_s / direct_rate.max(1e-9)
        );
    }
    println!();
}

fn print_summary(sqlite: &BackendReport, postgres: Option<&BackendReport>) {
    println!("| measure | SQLite | PostgreSQL | required | DESIGN target |");
    println!("|---|---:|---:|---|---|");
    type Cell = fn(&BackendReport) -> String;
    let rows: [(&str, Cell, &str, &str); 6] = [
        (
            "single-row insert, p50 / p99",
            |r: &BackendReport| p50_p99(&r.insert),
            "< 50 ms",
            "p50 < 2 ms",
        ),
        (
            "single-row update, p50 / p99",
            |r: &BackendReport| p50_p99(&r.update),
            "< 50 ms",
            "—",
        ),
        (
            "batch insert of 100, p50 / p99",
            |r: &BackendReport| p50_p99(&r.batch),
            "< 2 s",
            "< 10 ms",
        ),
        (
            "cascade delete of 1,000 tasks, p50 / p99",
            |r: &BackendReport| p50_p99(&r.cascade),
            "< 500 ms",
            "< 50 ms",
        ),
        (
            "progress aggregation (50 features), p50 / p99",
            |r: &BackendReport| p50_p99(&r.progress),
            "< 200 ms",
            "< 10 ms",
        ),
        (
            "bulk ingest (Mutations, Arrow IPC)",
            |r: &BackendReport| ingest_cell(&r.ingest),
            "—",
            "≥ 500K rows/s SQLite, ≥ 300K rows/s PostgreSQL",
        ),
    ];
    for (measure, cell, required, target) in rows {
        println!(
            "| {measure} | {} | {} | {required} | {target} |",
            cell(sqlite),
            postgres.map_or_else(|| "not run".to_owned(), cell)
        );
    }
}

/// Removes a SQLite database and its WAL files.
fn remove_sqlite(db: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

pub(crate) async fn run(binary: &Path, data_dir: &Path, options: &Options) -> Result<()> {
    let tasks_needed = 3 * FEATURES_PER_EPIC * quiver_storage::demo::TASKS_PER_FEATURE;
    ensure!(
        options.tasks >= tasks_needed,
        "--tasks must be at least {tasks_needed}: the progress query reads epic 3"
    );
    ensure!(options.ingest_rows > 0, "--ingest-rows must be at least 1");

    // A fresh demo database every run: the measures write to it.
    let db = data_dir.join(format!("mutations-{}.db", options.tasks));
    remove_sqlite(&db)?;
    eprintln!("loading {} demo tasks into {}", options.tasks, db.display());
    load_demo(binary, &sqlite_url(&db), options.tasks, &[])?;
    let sqlite = {
        let quiver = QuiverProcess::start(binary, &sqlite_url(&db), &[])?;
        measure("SQLite", &quiver, Direct::Sqlite(db.clone()), options).await?
    };
    print_backend(&sqlite);

    let postgres = match options.postgres.as_deref() {
        None => {
            eprintln!("no --postgres URL: PostgreSQL skipped");
            None
        }
        Some(admin) => {
            let database = BenchDatabase::create(admin, "mutations").await?;
            load_demo(binary, &database.url, options.tasks, &[])?;
            let report = {
                let quiver = QuiverProcess::start(binary, &database.url, &[])?;
                let client = connect_postgres(&database.url).await?;
                measure("PostgreSQL", &quiver, Direct::Postgres(client), options).await?
            };
            database.drop().await?;
            print_backend(&report);
            Some(report)
        }
    };
    print_summary(&sqlite, postgres.as_ref());
    Ok(())
}
