//! The `quiver` command line: `serve`, `demo load`, `query`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use quiver_storage::demo::{self, DemoProgress, ProgressFn};
use quiver_storage::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_DB, ServeArgs};
use crate::error::{Error, Result};
use crate::{Listeners, Server};

/// Quiver: Arrow Flight SQL and a mutation/subscription API over SQLite or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage the demo data set.
    Demo {
        /// What to do with it.
        #[command(subcommand)]
        command: DemoCommand,
    },
    /// Run a SQL query against a server over Flight SQL and print the result.
    Query(QueryArgs),
}

/// `quiver demo …`.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Create the demo schema and load deterministic data (same N → same rows).
    Load(DemoLoadArgs),
}

/// `quiver demo load`.
#[derive(Debug, clap::Args)]
pub struct DemoLoadArgs {
    /// Database URL.
    #[arg(long, env = "QUIVER_DB", default_value = DEFAULT_DB)]
    pub db: String,
    /// Number of tasks (features: one per 20 tasks, epics: one per 50 features).
    #[arg(long, env = "QUIVER_DEMO_TASKS", default_value_t = 10_000)]
    pub tasks: u64,
    /// Drop existing demo tables first.
    #[arg(long)]
    pub replace: bool,
}

/// Output formats of `quiver query`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// A boxed text table.
    Table,
    /// One JSON object per row and line.
    Json,
}

/// `quiver query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The server's gRPC address.
    #[arg(long, env = "QUIVER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// The SQL query.
    pub sql: String,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Demo {
            command: DemoCommand::Load(args),
        } => demo_load(args).await,
        Command::Query(args) => query(args).await,
    }
}

/// `quiver serve`: runs until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.with_file()?.resolve()?;
    let server = Server::open(config, progress_printer()).await?;
    let listeners = Listeners::bind(&server.config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run(listeners, server, shutdown).await
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}

/// `quiver demo load`.
pub async fn demo_load(args: DemoLoadArgs) -> Result<()> {
    let store = Store::open(&args.db, &StoreOptions::default()).await?;
    let started = Instant::now();
    let summary = demo::load(&store, args.tasks, args.replace, progress_printer()).await?;
    eprintln!(
        "loaded {} epics, {} features, {} tasks, {} history rows into {} in {:.1}s",
        summary.epics,
        summary.features,
        summary.tasks,
        summary.history,
        store.describe(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A progress reporter for demo loads: a redrawn bar on a terminal, a line every few
/// seconds otherwise.
pub fn progress_printer() -> ProgressFn {
    let interactive = std::io::stderr().is_terminal();
    let last_line = Mutex::new(None::<Instant>);
    let started = Instant::now();
    Arc::new(move |progress: DemoProgress| {
        let fraction = if progress.total == 0 {
            1.0
        } else {
            progress.done as f64 / progress.total as f64
        };
        let complete = progress.done == progress.total;
        let mut stderr = std::io::stderr().lock();
        if interactive {
            let filled = (fraction * 30.0).round() as usize;
            let _ = write!(
                stderr,
                "\r{:<12} [{}{}] {:>10}/{:<10} {:5.1}s",
                progress.table,
                "#".repeat(filled),
                "-".repeat(30 - filled),
                progress.done,
                progress.total,
                started.elapsed().as_secs_f64()
            );
            if complete {
                let _ = writeln!(stderr);
            }
        } else {
            let mut last = last_line.lock().expect("progress lock is never poisoned");
            let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(2));
            if due || complete {
                *last = Some(Instant::now());
                let _ = writeln!(
                    stderr,
                    "demo load: {} {}/{} ({:.0}%) after {:.1}s",
                    progress.table,
                    progress.done,
                    progress.total,
                    fraction * 100.0,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    })
}

/// Runs `sql` on the Flight SQL server at `addr` and collects the result.
pub async fn fetch(addr: &str, sql: &str) -> Result<Vec<RecordBatch>> {
    let client_error =
        |what: &str, err: &dyn std::fmt::Display| Error::Client(format!("{what}: {err}"));
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|err| client_error("invalid address", &err))?
        .connect()
        .await
        .map_err(|err| client_error(&format!("cannot connect to {addr}"), &err))?;
    let inner = FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut client = FlightSqlServiceClient::new_from_inner(inner);
    let info = client
        .execute(sql.to_owned(), None)
        .await
        .map_err(|err| client_error("query failed", &err))?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| {
            Error::Client("the server returned an endpoint without a ticket".to_owned())
        })?;
        let stream = client
            .do_get(ticket)
            .await
            .map_err(|err| client_error("fetch failed", &err))?;
        let mut part: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|err| client_error("fetch failed", &err))?;
        batches.append(&mut part);
    }
    Ok(batches)
}

/// `quiver query`.
pub async fn query(args: QueryArgs) -> Result<()> {
    let batches = fetch(&args.addr, &args.sql).await?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Table => {
            let table = arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(stdout, "{table}")?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            writeln!(stdout, "({rows} row{})", if rows == 1 { "" } else { "s" })?;
        }
        OutputFormat::Json => {
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut stdout);
            for batch in &batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}
