//! `quiver-bench`: the end-to-end harness. Runs `quiver` as a separate process and
//! measures it with real clients, each figure beside its peer from the same run.
//!
//! - `quiver-bench e2e`: the same query over Flight SQL and over `POST /v1/query`
//!   (JSON rows, and NDJSON decoded to Arrow), and SQLite reading the file directly.
//! - `quiver-bench memory`: server RSS while a client streams `SELECT *` of a
//!   10M-row table.
//! - `quiver-bench pool`: connection acquisition, uncontended and 4× oversubscribed,
//!   beside opening a fresh connection, on SQLite and PostgreSQL.
//! - `quiver-bench queries`: the demo's typical queries through Quiver beside the
//!   same SQL run on the store directly (rusqlite, tokio-postgres).
//! - `quiver-bench mutations`: the write path — Mutations API latencies (single
//!   insert, update by key, batch of 100, cascade delete of 1,000 tasks) and the
//!   progress aggregation, p50/p95/p99 per backend; bulk ingest rows/s through
//!   `Mutations.Insert` (Arrow IPC) beside the store's own bulk path (rusqlite, COPY)
//!   and, optionally, ADBC from Python.
//! - `quiver-bench subscriptions`: change delivery — events/s to one subscriber
//!   (catch-up from the log, live while writing) and commit→delivery latency with
//!   1/100/1,000 subscribers, per backend, beside a raw tonic server streaming the
//!   same messages.
//!
//! Build with `cargo build --release -p quiver-server -p quiver-bench`; see
//! `docs/performance.md` for the full procedure, including the Python clients.

mod e2e;
mod mutations;
mod pool;
mod queries;
mod server;
mod subscriptions;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::e2e::{FlightClient, median, report};
use crate::server::{QuiverProcess, default_binary, load_demo, rss_bytes, sqlite_url};

#[derive(Debug, Parser)]
#[command(name = "quiver-bench", about = "Quiver's end-to-end benchmarks")]
struct Cli {
    /// The `quiver` binary to benchmark (default: next to this one).
    #[arg(long, global = true)]
    quiver: Option<PathBuf>,
    /// Where to keep the benchmark databases (reused between runs when present).
    #[arg(long, global = true, default_value = "bench-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Flight SQL vs JSON vs SQLite direct, at several result sizes.
    E2e {
        /// Result sizes, in rows.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        rows: Vec<usize>,
        /// Measured runs per path (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also run the Python clients (benches/python/e2e.py) with this interpreter.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Server memory while streaming a large table.
    Memory {
        /// Rows in the streamed table.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
    },
    /// Pool acquisition latency and fresh connections, per backend.
    Pool {
        /// Also measure PostgreSQL, in a database created (and dropped) on this server.
        #[arg(long, env = "QUIVER_TEST_POSTGRES_URL")]
        postgres: Option<String>,
        /// Acquisitions per measurement.
        #[arg(long, default_value_t = 100_000)]
        acquires: usize,
    },
    /// Demo queries through Quiver vs the store read directly.
    Queries {
        /// Also measure PostgreSQL, in a database created (and dropped) on this server.
        #[arg(long, env = "QUIVER_TEST_POSTGRES_URL")]
        postgres: Option<String>,
        /// Demo size, in tasks.
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Measured runs per query and path (after warm-up); medians are reported.
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Write-path latencies and bulk ingest through the Mutations API, per backend.
    Mutations {
        /// Also measure PostgreSQL, in a database created (and dropped) on this server.
        #[arg(long, env = "QUIVER_TEST_POSTGRES_URL")]
        postgres: Option<String>,
        /// Demo size, in tasks (at least 3000: the progress query reads epic 3).
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Samples per latency measure (after warm-up); the cascade delete takes
        /// between 10 and 20 of them.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Rows per bulk ingest path.
        #[arg(long, default_value_t = 200_000)]
        ingest_rows: usize,
        /// Also ingest with ADBC from Python (benches/python/ingest.py) with this interpreter.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Subscription delivery: throughput and fan-out latency, beside raw tonic streaming.
    Subscriptions {
        /// Also measure PostgreSQL, in a database created (and dropped) on this server.
        #[arg(long, env = "QUIVER_TEST_POSTGRES_URL")]
        postgres: Option<String>,
        /// Events for the throughput measures.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Subscriber counts of the fan-out measures.
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        subscribers: Vec<usize>,
        /// Single-row commits (one every 10 ms) per fan-out measure.
        #[arg(long, default_value_t = 200)]
        commits: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let binary = cli.quiver.unwrap_or_else(default_binary);
    if !binary.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p quiver-server",
            binary.display()
        );
    }
    std::fs::create_dir_all(&cli.data_dir)?;
    match cli.command {
        Command::E2e { rows, runs, python } => {
            run_e2e(&binary, &cli.data_dir, &rows, runs, python.as_deref()).await
        }
        Command::Memory { rows } => run_memory(&binary, &cli.data_dir, rows).await,
        Command::Pool { postgres, acquires } => {
            pool::run(&cli.data_dir, postgres.as_deref(), acquires).await
        }
        Command::Queries {
            postgres,
            tasks,
            runs,
        } => queries::run(&binary, &cli.data_dir, postgres.as_deref(), tasks, runs).await,
        Command::Mutations {
            postgres,
            tasks,
            runs,
            ingest_rows,
            python,
        } => {
            let options = mutations::Options {
                postgres,
                tasks,
                runs,
                ingest_rows,
                python,
            };
            mutations::run(&binary, &cli.data_dir, &options).await
        }
        Command::Subscriptions {
            postgres,
            events,
            subscribers,
            commits,
        } => {
            let options = subscriptions::Options {
                postgres,
                events,
                subscribers,
                commits,
            };
            subscriptions::run(&binary, &cli.data_dir, &options).await
        }
    }
}

async fn run_e2e(
    binary: &std::path::Path,
    data_dir: &std::path::Path,
    sizes: &[usize],
    runs: usize,
    python: Option<&std::path::Path>,
) -> Result<()> {
    let largest = sizes.iter().copied().max().context("no sizes")?;
    let tasks = largest.max(1) as u64;
    let db = data_dir.join(format!("demo-{tasks}.db"));
    if !db.exists() {
        eprintln!("loading {tasks} demo tasks into {}", db.display());
        load_demo(binary, &sqlite_url(&db), tasks, &[])?;
    }
    let quiver = QuiverProcess::start(binary, &sqlite_url(&db), &[])?;
    eprintln!(
        "quiver serving gRPC on {} and HTTP on {}",
        quiver.grpc_addr, quiver.http_addr
    );
    let flight = FlightClient::connect(&quiver.grpc_addr).await?;
    let http = reqwest::Client::new();

    println!("| rows | path | median | rows/s | MB/s | time vs Flight |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (step, &rows) in sizes.iter().enumerate() {
        eprintln!(
            "[{}/{}] {rows} rows × {runs} runs per path",
            step + 1,
            sizes.len()
        );
        let sql = format!("SELECT * FROM tasks WHERE id <= {rows}");
        let schema = flight.schema(&sql).await?;
        let flight_sample = median(runs, || flight.fetch(&sql, |_| {})).await?;
        anyhow::ensure!(
            flight_sample.rows == rows,
            "Flight returned {} rows",
            flight_sample.rows
        );
        let json = median(runs, || e2e::json_rows(&http, &quiver.http_addr, &sql)).await?;
        let ndjson = median(runs, || {
            e2e::json_to_arrow(&http, &quiver.http_addr, &sql, Arc::clone(&schema))
        })
        .await?;
        let db_path = db.clone();
        let sql_direct = sql.clone();
        let direct = median(runs, || {
            let (db_path, sql_direct) = (db_path.clone(), sql_direct.clone());
            async move {
                tokio::task::spawn_blocking(move || e2e::sqlite_direct(&db_path, &sql_direct))
                    .await?
            }
        })
        .await?;
        anyhow::ensure!(
            json.rows == rows && ndjson.rows == rows && direct.rows == rows,
            "row counts differ"
        );
        println!(
            "{}",
            report(rows, "Flight SQL → Arrow batches", flight_sample, None)
        );
        println!(
            "{}",
            report(rows, "HTTP JSON → serde rows", json, Some(flight_sample))
        );
        println!(
            "{}",
            report(
                rows,
                "HTTP NDJSON → Arrow (arrow-json)",
                ndjson,
                Some(flight_sample)
            )
        );
        println!(
            "{}",
            report(
                rows,
                "SQLite direct (rusqlite, owned values)",
                direct,
                Some(flight_sample)
            )
        );
    }
    if let Some(python) = python {
        println!();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/e2e.py");
        let sizes: Vec<String> = sizes.iter().map(ToString::to_string).collect();
        let status = std::process::Command::new(python)
            .arg(script)
            .args(["--grpc", &quiver.grpc_addr, "--http", &quiver.http_addr])
            .args([
                "--db",
                &db.display().to_string(),
                "--rows",
                &sizes.join(","),
            ])
            .args(["--runs", &runs.min(3).to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "python clients failed: {status}");
    }
    Ok(())
}

/// Creates `events` with `rows` rows (id, timestamp, kind, value, payload) in chunks,
/// printing progress.
fn create_events(db: &std::path::Path, rows: u64) -> Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;
         CREATE TABLE events (id INTEGER PRIMARY KEY, at TIMESTAMP NOT NULL, kind TEXT NOT NULL,
                              value REAL, payload TEXT);",
    )?;
    let chunk = 1_000_000u64;
    let mut done = 0;
    let started = Instant::now();
    while done < rows {
        let end = (done + chunk).min(rows);
        conn.execute(
            "WITH RECURSIVE c(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM c WHERE n < ?2)
             INSERT INTO events
             SELECT n, datetime(1735689600 + n, 'unixepoch'),
                    CASE n % 4 WHEN 0 THEN 'click' WHEN 1 THEN 'view' WHEN 2 THEN 'buy' ELSE 'share' END,
                    (n % 1000) / 10.0, printf('payload-%010d-%x', n, n * 2654435761)
             FROM c",
            [done as i64 + 1, end as i64],
        )?;
        done = end;
        eprintln!(
            "events: {done}/{rows} rows after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn run_memory(binary: &std::path::Path, data_dir: &std::path::Path, rows: u64) -> Result<()> {
    let db = data_dir.join(format!("events-{rows}.db"));
    if !db.exists() {
        create_events(&db, rows)?;
    }
    let quiver = QuiverProcess::start(binary, &sqlite_url(&db), &[])?;
    let pid = quiver.pid();
    let flight = FlightClient::connect(&quiver.grpc_addr).await?;
    // Warm the process (pool, plan, allocator) with a small query first.
    flight
        .fetch("SELECT * FROM events WHERE id <= 10000", |_| {})
        .await?;
    let baseline = rss_bytes(pid)?;
    let peak = Arc::new(AtomicU64::new(baseline));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (Arc::clone(&peak), Arc::clone(&running));
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut next_report = Instant::now();
    let mut received = 0usize;
    let sample = flight
        .fetch("SELECT * FROM events", |batch| {
            received += batch.num_rows();
            if Instant::now() >= next_report {
                eprintln!(
                    "streamed {received} rows, server RSS {:.1} MiB",
                    rss_bytes(pid).unwrap_or(0) as f64 / 1048576.0
                );
                next_report = Instant::now() + Duration::from_secs(2);
            }
        })
        .await?;
    running.store(false, Ordering::Relaxed);
    sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler thread panicked"))?;
    anyhow::ensure!(
        sample.rows as u64 == rows,
        "streamed {} of {rows} rows",
        sample.rows
    );
    let peak = peak.load(Ordering::Relaxed);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("| rows streamed | time | rows/s | MB/s (IPC) | server RSS before | peak | growth |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} s | {:.0} | {:.1} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        sample.rows,
        sample.elapsed.as_secs_f64(),
        sample.rows as f64 / sample.elapsed.as_secs_f64(),
        sample.bytes as f64 / sample.elapsed.as_secs_f64() / 1e6,
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
    );
    Ok(())
}
