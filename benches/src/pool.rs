//! Connection acquisition: uncontended, and 64 tasks sharing 16 connections (4×
//! oversubscribed), beside opening a fresh connection — per backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use quiver_storage::{PoolOptions, Store, StoreOptions};

/// Sorted durations summarized as p50 / p99 / max.
struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn open(url: &str, max_size: u32) -> Result<Store> {
    let store = Store::open(
        url,
        &StoreOptions {
            pool: PoolOptions {
                max_size,
                min_idle: max_size,
                acquire_timeout: Duration::from_secs(30),
                ..PoolOptions::default()
            },
            ..StoreOptions::default()
        },
    )
    .await?;
    // Warm up to the full size.
    let warm: Vec<_> = (0..max_size)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ping().await })
        })
        .collect();
    for task in warm {
        task.await??;
    }
    Ok(store)
}

/// One backend's rows of the table.
async fn measure(
    name: &str,
    url: &str,
    acquires: usize,
    fresh: impl AsyncFn() -> Result<()>,
) -> Result<()> {
    eprintln!("{name}: {acquires} uncontended acquisitions");
    let store = open(url, 16).await?;
    let mut samples = Vec::with_capacity(acquires);
    for _ in 0..acquires {
        let started = Instant::now();
        store.checkout().await?;
        samples.push(started.elapsed());
    }
    let uncontended = percentiles(samples);

    // 64 tasks, 16 connections, each task running a small query per acquisition; the
    // wait is what the pool measures between asking and getting.
    eprintln!(
        "{name}: 64 tasks × {} queries on 16 connections",
        acquires / 64
    );
    let before = store.pool_status();
    let one = Arc::new(Schema::new(vec![Field::new("one", DataType::Int64, true)]));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, one) = (store.clone(), Arc::clone(&one));
            tokio::spawn(async move {
                let mut waits = Vec::new();
                for _ in 0..acquires / 64 {
                    let asked = Instant::now();
                    let stream = store
                        .query("SELECT 1", Vec::new(), Arc::clone(&one))
                        .await?;
                    waits.push(asked.elapsed());
                    let _: Vec<_> = stream.try_collect().await?;
                }
                anyhow::Ok(waits)
            })
        })
        .collect();
    let mut waits = Vec::new();
    for task in tasks {
        waits.extend(task.await??);
    }
    let contended_elapsed = started.elapsed();
    let contended = percentiles(waits);
    let after = store.pool_status();
    let acquired = after.acquired - before.acquired;
    let created = after.connections_created - before.connections_created;

    eprintln!("{name}: 200 fresh connections");
    let mut samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        fresh().await?;
        samples.push(started.elapsed());
    }
    let fresh = percentiles(samples);
    println!(
        "| {name} | uncontended | {} | {} | {} |",
        micros(uncontended.p50),
        micros(uncontended.p99),
        micros(uncontended.max)
    );
    println!(
        "| {name} | 64 tasks on 16 connections (query start incl. wait) | {} | {} | {} |",
        micros(contended.p50),
        micros(contended.p99),
        micros(contended.max)
    );
    println!(
        "| {name} | fresh connection (open + first statement) | {} | {} | {} |",
        micros(fresh.p50),
        micros(fresh.p99),
        micros(fresh.max)
    );
    println!(
        "| {name} | reuse under load: {acquired} acquisitions, {created} new connections ({:.3} % reused), {:.0} queries/s | | | |",
        100.0 * (1.0 - created as f64 / acquired.max(1) as f64),
        acquired as f64 / contended_elapsed.as_secs_f64()
    );
    Ok(())
}

pub(crate) async fn run(
    data_dir: &std::path::Path,
    postgres: Option<&str>,
    acquires: usize,
) -> Result<()> {
    println!("| backend | case | p50 | p99 | max |");
    println!("|---|---|---:|---:|---:|");
    let db = data_dir.join("pool.db");
    let url = crate::server::sqlite_url(&db);
    let path = db.clone();
    measure("SQLite", &url, acquires, async || {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let conn = rusqlite::Connection::open(&path)?;
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")?;
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await?
    })
    .await?;
    if let Some(admin) = postgres {
        let database = crate::queries::BenchDatabase::create(admin, "pool").await?;
        let url = database.url.clone();
        measure("PostgreSQL", &url, acquires, async || {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .context("fresh connection")?;
            let task = tokio::spawn(connection);
            client.simple_query("SELECT 1").await?;
            drop(client);
            let _ = task.await;
            Ok(())
        })
        .await?;
        database.drop().await?;
    } else {
        eprintln!("no --postgres URL: PostgreSQL skipped");
    }
    Ok(())
}
