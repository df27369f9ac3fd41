//! The demo's typical queries (DESIGN §9) through Quiver over Flight SQL, beside the
//! same SQL run on the store directly over one open connection with a cached
//! statement: rusqlite on the SQLite file, tokio-postgres (binary rows) on PostgreSQL. The direct paths decode nothing into Arrow,
//! so the ratio is Quiver's whole cost: planning, the pool, Arrow, gRPC.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::types::{FromSql, Type};

use crate::e2e::{FlightClient, Sample, median};
use crate::server::{QuiverProcess, load_demo, sqlite_url};

/// (name, SQL): the same text runs through Quiver and directly.
const QUERIES: [(&str, &str); 5] = [
    ("point lookup by key", "SELECT * FROM tasks WHERE id = 4242"),
    (
        "filter by status",
        "SELECT id, key, title, priority FROM tasks WHERE status = 'blocked'",
    ),
    (
        "status + priority",
        "SELECT id, key, title FROM tasks WHERE status = 'blocked' AND priority <= 2",
    ),
    (
        "3-table join (one epic)",
        "SELECT t.key, f.key AS feature, e.key AS epic FROM tasks t \
         JOIN features f ON t.feature_id = f.id JOIN epics e ON f.epic_id = e.id WHERE e.id = 3",
    ),
    (
        "progress of 50 features",
        "SELECT f.id, count(*) AS total, sum(CASE WHEN t.status = 'done' THEN 1 ELSE 0 END) AS done \
         FROM features f JOIN tasks t ON t.feature_id = f.id WHERE f.epic_id = 3 GROUP BY f.id",
    ),
];

/// A database of its own on a PostgreSQL server, for one benchmark.
pub(crate) struct BenchDatabase {
    admin: String,
    name: String,
    pub(crate) url: String,
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl BenchDatabase {
    pub(crate) async fn create(admin: &str, purpose: &str) -> Result<Self> {
        let name = format!("quiver_bench_{purpose}");
        let client = admin_client(admin).await?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = quiver_storage::testing::with_database(admin, &name);
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop(self) -> Result<()> {
        admin_client(&self.admin)
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

/// A column value as sent, undecoded: the cheapest possible direct read.
struct AnyValue(usize);

impl<'a> FromSql<'a> for AnyValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue(raw.len()))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue(0))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

async fn postgres_direct(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
) -> Result<Sample> {
    let started = Instant::now();
    let rows = client.query(statement, &[]).await?;
    let mut bytes = 0;
    for row in &rows {
        for index in 0..row.len() {
            bytes += row.try_get::<_, AnyValue>(index)?.0;
        }
    }
    Ok(Sample {
        rows: rows.len(),
        bytes,
        elapsed: started.elapsed(),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn row(backend: &str, name: &str, quiver: Sample, direct: Sample) {
    println!(
        "| {backend} | {name} | {} | {} | {} | {:.1}× |",
        quiver.rows,
        ms(quiver.elapsed),
        ms(direct.elapsed),
        quiver.elapsed.as_secs_f64() / direct.elapsed.as_secs_f64().max(1e-9)
    );
}

pub(crate) async fn run(
    binary: &Path,
    data_dir: &Path,
    postgres: Option<&str>,
    tasks: u64,
    runs: usize,
) -> Result<()> {
    println!("| backend | query | rows | Quiver (Flight SQL) p50 | store directly p50 | ratio |");
    println!("|---|---|---:|---:|---:|---:|");

    let db = data_dir.join(format!("demo-{tasks}.db"));
    if !db.exists() {
        load_demo(binary, &sqlite_url(&db), tasks, &[])?;
    }
    {
        let quiver = QuiverProcess::start(binary, &sqlite_url(&db), &[])?;
        let flight = FlightClient::connect(&quiver.grpc_addr).await?;
        // One open connection, as the PostgreSQL direct path keeps one.
        let direct_conn = std::sync::Arc::new(std::sync::Mutex::new(
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?,
        ));
        for (step, (name, sql)) in QUERIES.iter().enumerate() {
            eprintln!("[SQLite {}/{}] {name}", step + 1, QUERIES.len());
            let through = median(runs, || flight.fetch(sql, |_| {})).await?;
            let sql = sql.to_string();
            let direct = median(runs, || {
                let (conn, sql) = (std::sync::Arc::clone(&direct_conn), sql.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        let conn = conn.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        crate::e2e::sqlite_direct_on(&conn, &sql)
                    })
                    .await?
                }
            })
            .await?;
            anyhow::ensure!(through.rows == direct.rows, "{name}: row counts differ");
            row("SQLite", name, through, direct);
        }
    }

    let Some(admin) = postgres else {
        eprintln!("no --postgres URL: PostgreSQL skipped");
        return Ok(());
    };
    let database = BenchDatabase::create(admin, "queries").await?;
    load_demo(binary, &database.url, tasks, &[])?;
    {
        let quiver = QuiverProcess::start(binary, &database.url, &[])?;
        let flight = FlightClient::connect(&quiver.grpc_addr).await?;
        let client = admin_client(&database.url).await?;
        for (step, (name, sql)) in QUERIES.iter().enumerate() {
            eprintln!("[PostgreSQL {}/{}] {name}", step + 1, QUERIES.len());
            let through = median(runs, || flight.fetch(sql, |_| {})).await?;
            let statement = client.prepare(sql).await?;
            let direct = median(runs, || postgres_direct(&client, &statement)).await?;
            anyhow::ensure!(through.rows == direct.rows, "{name}: row counts differ");
            row("PostgreSQL", name, through, direct);
        }
    }
    database.drop().await?;
    Ok(())
}
