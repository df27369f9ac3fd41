//! Test helpers (feature `test-utils`): rows as canonical text, from SQLite directly
//! and from Arrow batches, so that results through Quiver can be compared with what
//! SQLite itself answers.

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};

/// A float as text: integral values without a fraction, others with six decimals.
pub fn canonical_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.6}")
    }
}

/// Runs `sql` with SQLite on the database file at `path` (with standard, case-sensitive
/// `LIKE`) and returns each row as `a | b | …`.
pub fn sqlite_rows(path: &Path, sql: &str) -> Vec<String> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open(path).expect("open database");
    conn.execute_batch("PRAGMA case_sensitive_like = ON")
        .expect("pragma");
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = statement.column_count();
    let mut rows = statement.query([]).expect("query");
    let mut out = Vec::new();
    while let Some(row) = rows.next().expect("row") {
        let cells: Vec<String> = (0..columns)
            .map(|i| match row.get_ref(i).expect("value") {
                ValueRef::Null => "NULL".to_owned(),
                ValueRef::Integer(v) => v.to_string(),
                ValueRef::Real(v) => canonical_float(v),
                ValueRef::Text(v) => String::from_utf8_lossy(v).into_owned(),
                ValueRef::Blob(v) => format!("{v:?}"),
            })
            .collect();
        out.push(cells.join(" | "));
    }
    out
}

fn canonical_cell(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".to_owned();
    }
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt64 => array
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(row)
            .to_string(),
        DataType::Int32 => array
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(row)
            .to_string(),
        DataType::Float64 => canonical_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::Boolean => i64::from(array.as_boolean().value(row)).to_string(),
        DataType::Binary => format!("{:?}", array.as_binary::<i32>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => crate::time::format_timestamp_micros(
            array.as_primitive::<TimestampMicrosecondType>().value(row),
        ),
        DataType::Date32 => crate::time::format_date(array.as_primitive::<Date32Type>().value(row)),
        other => panic!("no canonical form for {other}"),
    }
}

/// The rows of a batch as `a | b | …`, in the form [`sqlite_rows`] produces.
pub fn canonical_batch(batch: &RecordBatch) -> Vec<String> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|column| canonical_cell(column.as_ref(), row))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

/// The administrative PostgreSQL URL tests create their databases through, from
/// `QUIVER_TEST_POSTGRES_URL`. Unset: `None` after a loud warning, unless
/// `QUIVER_REQUIRE_POSTGRES=1`, which makes it a failure.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("QUIVER_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("QUIVER_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("QUIVER_REQUIRE_POSTGRES=1 but QUIVER_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "WARNING: QUIVER_TEST_POSTGRES_URL is not set; skipping the PostgreSQL half of this test"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A PostgreSQL database of its own for one test, dropped (with its connections)
/// when this value is.
#[derive(Debug)]
pub struct PostgresTestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresTestDb {
    /// Creates a fresh, empty database; `None` when no test server is configured (see
    /// [`postgres_admin_url`]).
    pub async fn create(prefix: &str) -> Option<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin_url = postgres_admin_url()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "quiver_{prefix}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {admin_url}: {err}"));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|err| panic!("cannot create database {name}: {err}"));
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A direct connection to the database, bypassing Quiver.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", self.url));
        tokio::spawn(connection);
        client
    }
}

impl Drop for PostgresTestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// A TCP forwarder standing in for a database server, to take it away and bring it
/// back: [`TcpProxy::stop`] (or dropping it) closes every connection through it and
/// stops listening.
#[derive(Debug)]
pub struct TcpProxy {
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `listen` and forwards each connection to `upstream`.
    pub async fn start(listen: std::net::SocketAddr, upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|err| panic!("cannot listen on {listen}: {err}"));
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { accept }
    }

    /// Stops listening and cuts every forwarded connection.
    pub fn stop(self) {
        self.accept.abort();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A local address nothing listens on (yet).
pub async fn free_port() -> std::net::SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port")
}

/// The TCP address of the PostgreSQL server a URL names.
pub fn postgres_upstream(url: &str) -> std::net::SocketAddr {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) if host != "localhost" => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .expect("the PostgreSQL host is an IP address")
}

/// `url` pointed at another host and port (same user, database and options).
pub fn with_address(url: &str, address: std::net::SocketAddr) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let user = authority.rsplit_once('@').map(|(user, _)| user);
    let prefix = &url[..authority_start];
    let tail = &rest[authority_end..];
    match user {
        Some(user) => format!("{prefix}{user}@{address}{tail}"),
        None => format!("{prefix}{address}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t3"), "postgres://h/t3");
        let address = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            with_address("postgres://postgres@127.0.0.1:5432/t1?x=1", address),
            "postgres://postgres@127.0.0.1:6000/t1?x=1"
        );
        assert_eq!(
            with_address("postgres://h/db", address),
            "postgres://127.0.0.1:6000/db"
        );
    }
}
