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
    /// Make credentials for the auth file.
    Auth {
        /// What to make.
        #[command(subcommand)]
        command: AuthCommand,
    },
}

/// `quiver auth …`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a password (one line on stdin) and print its argon2id hash for a user's
    /// `password_hash`.
    HashPassword,
    /// Print a new random API token (`token=…`, given to the client) and its SHA-256
    /// (`sha256=…`, for the auth file's `[[tokens]]`).
    NewToken,
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
    /// How to connect and authenticate.
    #[command(flatten)]
    pub client: ClientOptions,
    /// The SQL query.
    pub sql: String,
}

/// Credentials and TLS of a client connection.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientOptions {
    /// User name: logs in with the Flight SQL handshake (with --password).
    #[arg(long, env = "QUIVER_USER")]
    pub user: Option<String>,
    /// Password of --user.
    #[arg(long, env = "QUIVER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A bearer token (an API token or a JWT) sent with every call.
    #[arg(
        long,
        env = "QUIVER_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    pub token: Option<String>,
    /// PEM roots the server's certificate is checked against (an `https://` address
    /// without it uses the Mozilla roots).
    #[arg(long, env = "QUIVER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS), with --tls-key.
    #[arg(
        long,
        env = "QUIVER_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "QUIVER_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Demo {
            command: DemoCommand::Load(args),
        } => demo_load(args).await,
        Command::Query(args) => query(args).await,
        Command::Auth {
            command: AuthCommand::HashPassword,
        } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(Error::Config("no password on stdin".to_owned()));
            }
            let hash = crate::auth::hash_password(password)?;
            writeln!(std::io::stdout(), "{hash}")?;
            Ok(())
        }
        Command::Auth {
            command: AuthCommand::NewToken,
        } => {
            let (token, sha256) = crate::auth::new_token();
            writeln!(std::io::stdout(), "token={token}\nsha256={sha256}")?;
            Ok(())
        }
    }
}

/// `quiver serve`: runs until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = crate::Config::load(args)?;
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
    fetch_with(addr, sql, &ClientOptions::default()).await
}

/// Runs `sql` on the Flight SQL server at `addr`, connecting and authenticating as
/// `options` say, and collects the result.
pub async fn fetch_with(
    addr: &str,
    sql: &str,
    options: &ClientOptions,
) -> Result<Vec<RecordBatch>> {
    let client_error = |what: &str, err: &dyn std::fmt::Display| {
        Error::Client(format!("{what}: {}", with_code_name(&err.to_string())))
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|err| client_error("invalid address", &err))?;
    let tls_asked = options.tls_ca.is_some() || options.tls_cert.is_some();
    let sends_secrets = options.password.is_some() || options.token.is_some();
    if sends_secrets && !tls_asked && !addr.starts_with("https://") && !is_loopback(addr) {
        eprintln!(
            "quiver: warning: sending credentials to {addr} without TLS (use an https:// \
             address and --tls-ca)"
        );
    }
    if addr.starts_with("https://") || tls_asked {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|err| client_error(&format!("cannot read {}", path.display()), &err))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &options.tls_ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| client_error("invalid TLS settings", &err))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| client_error(&format!("cannot connect to {addr}"), &err))?;
    let inner = FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut client = FlightSqlServiceClient::new_from_inner(inner);
    match (&options.user, &options.password, &options.token) {
        (Some(user), password, _) => {
            client
                .handshake(user, password.as_deref().unwrap_or(""))
                .await
                .map_err(|err| client_error("login failed", &err))?;
        }
        (None, Some(_), _) => {
            return Err(Error::Client("--password needs --user".to_owned()));
        }
        (None, None, Some(token)) => client.set_token(token.clone()),
        (None, None, None) => {}
    }
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

/// Whether `addr` (`http://host:port`) names this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr
        .split("://")
        .nth(1)
        .unwrap_or(addr)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .map_or(host, |(host, _)| host)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client error's text with the gRPC code's name (`UNAUTHENTICATED`) in front of
/// tonic's description of it, which is all arrow-flight's errors carry.
fn with_code_name(text: &str) -> String {
    const CODES: [tonic::Code; 16] = [
        tonic::Code::Cancelled,
        tonic::Code::Unknown,
        tonic::Code::InvalidArgument,
        tonic::Code::DeadlineExceeded,
        tonic::Code::NotFound,
        tonic::Code::AlreadyExists,
        tonic::Code::PermissionDenied,
        tonic::Code::ResourceExhausted,
        tonic::Code::FailedPrecondition,
        tonic::Code::Aborted,
        tonic::Code::OutOfRange,
        tonic::Code::Unimplemented,
        tonic::Code::Internal,
        tonic::Code::Unavailable,
        tonic::Code::DataLoss,
        tonic::Code::Unauthenticated,
    ];
    match CODES
        .iter()
        .find(|code| text.contains(&format!("code: '{}'", code.description())))
    {
        Some(code) => format!("{} ({text})", crate::error::code_name(*code)),
        None => text.to_owned(),
    }
}

/// `quiver query`.
pub async fn query(args: QueryArgs) -> Result<()> {
    let batches = fetch_with(&args.addr, &args.sql, &args.client).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_recognised() {
        for addr in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in ["http://10.0.0.5:50051", "http://quiver.example.com:50051"] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn client_errors_name_the_code() {
        let text = "Can't handshake code: 'The request does not have valid authentication \
                    credentials', message: \"invalid user name or password\"";
        assert!(with_code_name(text).starts_with("UNAUTHENTICATED ("));
        assert_eq!(with_code_name("transport error"), "transport error");
    }
}
