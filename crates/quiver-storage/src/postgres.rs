//! The PostgreSQL backend: a pool of tokio-postgres connections, binary-format reads
//! decoded straight into Arrow, and `COPY` for bulk loads.
//!
//! Reads stream: rows are decoded batch by batch as the server sends them, and the
//! connection's backpressure stops the server when the consumer is slow. Each pooled
//! connection keeps its prepared statements, so a repeated query costs one round trip.
//! A read that fails because its connection was closed underneath (a restart,
//! `pg_terminate_backend`) before any row arrived is retried on another connection.

mod introspect;
pub(crate) mod read;
pub mod tls;
pub(crate) mod transaction;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::tls::Connector;
use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use futures::{SinkExt, StreamExt};
use tokio_postgres::{Client, RowStream, Statement};
use tracing::Instrument;

use self::read::{Decoder, Raw};
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::pool::{Lease, Pool, PoolOptions, PoolStatus};
use crate::stream::BatchStream;
use crate::value::{Cell, Value};

/// The `NOTIFY` channel every commit announces its version on.
pub const COMMIT_CHANNEL: &str = "quiver_commits";

/// A connection used within this long of its last use is handed out without a
/// validation round trip; older ones are checked first.
const VALIDATION_BYPASS: Duration = Duration::from_millis(500);
/// Prepared statements kept per connection before the cache starts over.
const STATEMENT_CACHE_CAPACITY: usize = 256;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled PostgreSQL connection and its prepared statements.
pub(crate) struct PgConnection {
    client: Client,
    /// For cancel requests, which open a connection of their own.
    pub(crate) tls: Connector,
    /// Set when the connection must not be reused (a read abandoned mid-stream, a
    /// transaction abandoned open).
    pub(crate) retire: bool,
    statements: HashMap<String, Statement>,
    /// The schema generation `statements` were prepared in.
    generation: u64,
    /// The store's schema generation, moved on when the schema may have changed.
    schema: Arc<AtomicU64>,
    last_used: Instant,
}

impl PgConnection {
    /// The statement for `sql`, prepared once per connection.
    ///
    /// A statement prepared before the schema changed (a table dropped and created
    /// again with other column types) would describe the old result, and PostgreSQL
    /// refuses to run it (`cached plan must not change result type`): the cache starts
    /// over whenever the store's schema generation moved on.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        let generation = self.schema.load(Ordering::Acquire);
        if generation != self.generation {
            self.statements.clear();
            self.generation = generation;
        }
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE_CAPACITY {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Marks the prepared statements of every pooled connection as stale (the
    /// schema changed).
    pub(crate) fn schema_changed(&self) {
        self.schema.fetch_add(1, Ordering::AcqRel);
    }

    /// The client, marking the connection as used now.
    pub(crate) fn client(&mut self) -> &Client {
        self.last_used = Instant::now();
        &self.client
    }
}

/// The stream of a connection: TLS or not, as negotiated.
type TlsStream =
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream;

/// Opens one connection to `target` (described by `config`), outside any pool.
async fn open(
    config: &tokio_postgres::Config,
    tls: &Connector,
    target: &str,
) -> Result<(
    Client,
    tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
)> {
    config
        .connect(tls.0.clone())
        .await
        .map_err(|err| Error::Connect {
            target: target.to_owned(),
            message: with_causes(&err),
        })
}

/// Opens connections for the pool.
#[derive(Debug, Clone)]
pub(crate) struct PgManager {
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks.
    tls: Connector,
    target: String,
    /// The schema generation shared with every connection.
    schema: Arc<AtomicU64>,
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = Error;

    async fn connect(&self) -> Result<PgConnection> {
        let (client, connection) = open(&self.config, &self.tls, &self.target).await?;
        tokio::spawn(
            async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "postgres connection ended");
                }
            }
            .instrument(tracing::Span::none()),
        );
        Ok(PgConnection {
            client,
            tls: self.tls.clone(),
            retire: false,
            statements: HashMap::new(),
            generation: self.schema.load(Ordering::Acquire),
            schema: Arc::clone(&self.schema),
            last_used: Instant::now(),
        })
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<()> {
        if conn.client.is_closed() {
            return Err(Error::Internal("connection closed".to_owned()));
        }
        if conn.last_used.elapsed() > VALIDATION_BYPASS {
            conn.client().simple_query("").await?;
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.retire || conn.client.is_closed()
    }
}

/// An error's message followed by its causes (`error connecting to server: Connection
/// refused (os error 111)`).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Describes a connection config without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A PostgreSQL database served through a pool.
#[derive(Debug)]
pub(crate) struct PostgresStore {
    target: String,
    /// For the commit listener's own connection.
    config: Box<tokio_postgres::Config>,
    tls: Connector,
    pool: Pool<PgManager>,
    /// Moved on when the schema may have changed: pooled connections then prepare
    /// their statements afresh.
    schema: Arc<AtomicU64>,
}

impl PostgresStore {
    /// Parses `url` and starts the pool; does not wait for the database, which may be
    /// down at start.
    pub(crate) fn open(url: &str, pool_options: &PoolOptions) -> Result<Self> {
        let tls_url = tls::split_url(url)?;
        let mut config: tokio_postgres::Config = tls_url
            .url
            .parse()
            .map_err(|err| Error::Config(format!("invalid PostgreSQL URL: {err}")))?;
        if config.get_application_name().is_none() {
            config.application_name("quiver");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        let tls = tls::connector(&tls_url, &mut config)?;
        let target = describe(&config);
        let schema = Arc::new(AtomicU64::new(0));
        let manager = PgManager {
            config: config.clone(),
            tls: tls.clone(),
            target: target.clone(),
            schema: Arc::clone(&schema),
        };
        Ok(Self {
            pool: Pool::new(manager, pool_options),
            schema,
            config: Box::new(config),
            tls,
            target,
        })
    }

    /// `LISTEN`s on [`COMMIT_CHANNEL`] and announces each notified version on
    /// `commits`, reconnecting with backoff; runs until dropped.
    pub(crate) async fn follow_commits(&self, commits: &tokio::sync::watch::Sender<u64>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.listen(commits).await {
                Ok(()) => {
                    tracing::warn!(target = %self.target, "commit listener disconnected; reconnecting");
                    delay = Duration::from_millis(100);
                }
                Err(err) => {
                    tracing::warn!(error = %err, target = %self.target, "cannot listen for commits; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One listening connection: `Err` when it cannot be set up, `Ok` when it was
    /// listening and closed.
    async fn listen(&self, commits: &tokio::sync::watch::Sender<u64>) -> Result<()> {
        let (client, mut connection) = open(&self.config, &self.tls, &self.target).await?;
        let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(
            async move {
                let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                            if notified.send(notification.payload().to_owned()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::debug!(error = %err, "commit listener connection ended");
                            break;
                        }
                    }
                }
            }
            .instrument(tracing::Span::none()),
        );
        let listening = client
            .batch_execute(&format!("LISTEN {COMMIT_CHANNEL}"))
            .await;
        if let Err(err) = listening {
            driver.abort();
            return Err(err.into());
        }
        tracing::debug!(target = %self.target, "listening for commits of other replicas");
        // Announcements made while no connection listened are lost: wake everyone.
        commits.send_modify(|_| {});
        while let Some(payload) = notifications.recv().await {
            let Ok(version) = payload.parse::<u64>() else {
                continue;
            };
            commits.send_if_modified(|latest| {
                let newer = version > *latest;
                if newer {
                    *latest = version;
                }
                newer
            });
        }
        drop(client);
        Ok(())
    }

    /// Where the data lives, without credentials.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// A pooled connection.
    pub(crate) async fn connection(&self) -> Result<Lease<PgManager>> {
        self.pool.get().await
    }

    /// Starts `sql` on a pooled connection, retrying on another connection when one
    /// was closed underneath (each failure retires a broken connection, so the retries
    /// are bounded by the pool size), and once with fresh statements when the schema
    /// changed outside Quiver since the statement was prepared.
    async fn start(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<(Lease<PgManager>, Statement, RowStream)> {
        let mut attempt = 0;
        let mut replanned = false;
        loop {
            attempt += 1;
            let mut conn = self.connection().await?;
            let started = async {
                let statement = conn.prepare(sql).await?;
                let rows = conn
                    .client()
                    .query_raw(
                        &statement,
                        params
                            .iter()
                            .map(|p| p as &dyn tokio_postgres::types::ToSql),
                    )
                    .await?;
                Ok::<_, Error>((statement, rows))
            }
            .await;
            match started {
                Ok((statement, rows)) => return Ok((conn, statement, rows)),
                Err(err) if attempt <= self.pool.options().max_size && err.is_connection_lost() => {
                    tracing::info!(error = %err, "connection lost; retrying on a fresh one");
                    drop(conn);
                }
                Err(err) if !replanned && err.is_stale_plan() => {
                    tracing::info!(error = %err, "the schema changed under a prepared statement; preparing afresh");
                    replanned = true;
                    self.schema_changed();
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Streams the rows of `sql` as batches shaped like `schema`.
    pub(crate) async fn query(
        &self,
        sql: String,
        params: Vec<Value>,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<BatchStream> {
        let span = crate::statement_span("postgresql", &sql);
        let (conn, statement, rows) = self.start(&sql, &params).instrument(span.clone()).await?;
        let decoders = decoders(&statement, &schema, batch_size)?;
        let state = ReadState {
            cancel: Some(conn.client.cancel_token()),
            conn,
            rows: Box::pin(rows),
            decoders,
            schema,
            batch_size: batch_size.max(1),
            done: false,
            span,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut state| async move {
                if state.done {
                    return None;
                }
                let batch = state.next_batch().await;
                match batch {
                    Ok(Some(batch)) => Some((Ok(batch), state)),
                    Ok(None) => None,
                    Err(err) => {
                        state.done = true;
                        Some((Err(err), state))
                    }
                }
            },
        )))
    }

    /// Executes one statement and returns the rows it changed.
    pub(crate) async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut conn = self.connection().await?;
        let statement = conn.prepare(sql).await?;
        let changed = conn
            .client()
            .execute_raw(
                &statement,
                params
                    .iter()
                    .map(|p| p as &dyn tokio_postgres::types::ToSql),
            )
            .await?;
        Ok(changed)
    }

    /// Executes `;`-separated statements.
    pub(crate) async fn execute_script(&self, sql: &str) -> Result<()> {
        let mut conn = self.connection().await?;
        conn.client().batch_execute(sql).await?;
        Ok(())
    }

    /// Marks the prepared statements of every pooled connection as stale.
    pub(crate) fn schema_changed(&self) {
        self.schema.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the catalog. It is read again when the schema changed, so the
    /// statements prepared before are dropped too.
    pub(crate) async fn catalog(&self) -> Result<Catalog> {
        self.schema_changed();
        let mut conn = self.connection().await?;
        introspect::read_catalog(conn.client())
            .instrument(tracing::debug_span!("storage.postgres.catalog"))
            .await
    }

    /// Checks that the database answers a query.
    pub(crate) async fn ping(&self) -> Result<()> {
        let mut conn = self.connection().await?;
        conn.client().simple_query("").await?;
        Ok(())
    }

    /// Pool occupancy and counters.
    pub(crate) fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    /// Streams text-format `COPY … FROM STDIN` data on a connection inside the
    /// caller's transaction.
    pub(crate) async fn copy_in(
        client: &Client,
        statement: &str,
        chunks: impl IntoIterator<Item = bytes::Bytes>,
    ) -> Result<u64> {
        let sink = client.copy_in(statement).await?;
        futures::pin_mut!(sink);
        for chunk in chunks {
            sink.send(chunk).await?;
        }
        Ok(sink.finish().await?)
    }
}

/// A value in `COPY … FROM STDIN` text form (`None` is NULL).
fn copy_text<'a>(cell: &'a Cell<'a>) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    Some(match cell {
        Cell::Null => return None,
        Cell::Bool(v) => Cow::Borrowed(if *v { "t" } else { "f" }),
        Cell::Int(v) => Cow::Owned(v.to_string()),
        Cell::Float(v) if v.is_nan() => Cow::Borrowed("NaN"),
        Cell::Float(v) if v.is_infinite() => {
            Cow::Borrowed(if *v > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Cell::Float(v) => Cow::Owned(v.to_string()),
        Cell::Text(v) => Cow::Borrowed(v),
        Cell::Decimal(v) => Cow::Borrowed(v.as_str()),
        Cell::Blob(v) => {
            let mut hex = String::with_capacity(2 + v.len() * 2);
            hex.push_str("\\x");
            for byte in v.iter() {
                hex.push_str(&format!("{byte:02x}"));
            }
            Cow::Owned(hex)
        }
        Cell::Date(days) => Cow::Owned(crate::time::format_date(*days)),
        Cell::Timestamp(micros) => Cow::Owned(crate::time::format_timestamp_micros(*micros)),
        // PostgreSQL keeps microseconds: what is below them is dropped, as the binary
        // encoding does (PostgreSQL would round text).
        Cell::TimestampNanos(nanos) => Cow::Owned(crate::time::format_timestamp_micros(
            nanos.div_euclid(1_000),
        )),
        Cell::Time(nanos) => Cow::Owned(crate::time::format_time_nanos(nanos - nanos % 1_000)),
        // Checked before it is written (`check_storable`): elements convert.
        Cell::List(items) => {
            let elements = (0..items.len())
                .map(|i| crate::value::cell_at(items, i, "item").ok())
                .collect::<Option<Vec<_>>>()?;
            Cow::Owned(array_literal(&elements))
        }
        Cell::Values(items) => {
            let elements: Vec<Cell<'_>> = items.iter().map(crate::value::Value::as_cell).collect();
            Cow::Owned(array_literal(&elements))
        }
        // Checked to fit an interval before it is written (`check_storable`).
        Cell::Duration(count, unit) => Cow::Owned(format!(
            "{} microseconds",
            crate::value::duration_micros(*count, *unit)?
        )),
    })
}

/// One-dimensional array text (`{"1","a \"b\"",NULL}`): every element quoted, NULL
/// bare.
fn array_literal(elements: &[Cell<'_>]) -> String {
    let mut text = String::from("{");
    for (index, element) in elements.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        match copy_text(element) {
            None => text.push_str("NULL"),
            Some(value) => {
                text.push('"');
                for c in value.chars() {
                    if c == '"' || c == '\\' {
                        text.push('\\');
                    }
                    text.push(c);
                }
                text.push('"');
            }
        }
    }
    text.push('}');
    text
}

/// `COPY` text messages of about 64 KiB each.
#[derive(Debug, Default)]
pub(crate) struct CopyChunks {
    chunks: Vec<bytes::Bytes>,
    text: String,
}

impl CopyChunks {
    const CHUNK: usize = 64 * 1024;

    /// Appends one row.
    pub(crate) fn row(&mut self, cells: &[Cell<'_>]) {
        let fields: Vec<Option<std::borrow::Cow<'_, str>>> = cells.iter().map(copy_text).collect();
        crate::dialect::copy_line(&mut self.text, fields.iter().map(|f| f.as_deref()));
        if self.text.len() >= Self::CHUNK {
            self.chunks
                .push(bytes::Bytes::from(std::mem::take(&mut self.text)));
        }
    }

    /// The messages.
    pub(crate) fn finish(mut self) -> Vec<bytes::Bytes> {
        if !self.text.is_empty() {
            self.chunks.push(bytes::Bytes::from(self.text));
        }
        self.chunks
    }
}

/// Rows as `COPY` text messages of about 64 KiB each.
pub(crate) fn copy_chunks(rows: &[Vec<Value>]) -> Vec<bytes::Bytes> {
    let mut chunks = CopyChunks::default();
    for row in rows {
        let cells: Vec<Cell<'_>> = row.iter().map(Value::as_cell).collect();
        chunks.row(&cells);
    }
    chunks.finish()
}

/// A streaming read in progress.
struct ReadState {
    /// Cancels the statement on the server when the reader leaves early, so the
    /// server stops producing rows nobody reads.
    cancel: Option<tokio_postgres::CancelToken>,
    /// Held until the read ends, so the connection is not lent out mid-stream; retired
    /// instead of reused when the read is abandoned (its remaining rows, and the
    /// cancel request, must never meet another statement).
    conn: Lease<PgManager>,
    rows: std::pin::Pin<Box<RowStream>>,
    decoders: Vec<Decoder>,
    schema: SchemaRef,
    batch_size: usize,
    done: bool,
    span: tracing::Span,
}

impl Drop for ReadState {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.conn.retire = true;
        if let (Some(token), Ok(runtime)) =
            (self.cancel.take(), tokio::runtime::Handle::try_current())
        {
            let tls = self.conn.tls.clone();
            runtime.spawn(async move {
                if let Err(err) = token.cancel_query(tls.0).await {
                    tracing::debug!(error = %err, "cannot cancel an abandoned read");
                }
            });
        }
    }
}

impl ReadState {
    /// Decodes up to one batch of rows; `None` at the end.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut count = 0;
        while count < self.batch_size {
            let Some(row) = self.rows.next().instrument(self.span.clone()).await else {
                self.done = true;
                break;
            };
            decode_row(&mut self.decoders, &self.schema, &row?)?;
            count += 1;
        }
        if count == 0 {
            return Ok(None);
        }
        finish_batch(&mut self.decoders, &self.schema, count).map(Some)
    }
}

/// A decoder per column of `statement`'s result, into the fields of `schema` (which has
/// one field per column, or none to only count rows).
pub(crate) fn decoders(
    statement: &Statement,
    schema: &SchemaRef,
    batch_size: usize,
) -> Result<Vec<Decoder>> {
    let columns = statement.columns();
    if !schema.fields().is_empty() && columns.len() != schema.fields().len() {
        return Err(Error::Internal(format!(
            "query returns {} columns where {} were expected",
            columns.len(),
            schema.fields().len()
        )));
    }
    schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| {
            Decoder::new(field.data_type(), column.type_(), batch_size).map_err(|message| {
                Error::Conversion {
                    column: field.name().clone(),
                    value: column.type_().to_string(),
                    target: message,
                }
            })
        })
        .collect()
}

/// Decodes one row into `decoders`.
pub(crate) fn decode_row(
    decoders: &mut [Decoder],
    schema: &SchemaRef,
    row: &tokio_postgres::Row,
) -> Result<()> {
    for (index, decoder) in decoders.iter_mut().enumerate() {
        let raw: Raw<'_> = row.try_get(index)?;
        decoder.append(raw.0).map_err(|message| Error::Conversion {
            column: schema.field(index).name().clone(),
            value: message,
            target: schema.field(index).data_type().to_string(),
        })?;
    }
    Ok(())
}

/// The `count` rows decoded so far as a batch shaped like `schema`.
pub(crate) fn finish_batch(
    decoders: &mut [Decoder],
    schema: &SchemaRef,
    count: usize,
) -> Result<RecordBatch> {
    let columns = decoders
        .iter_mut()
        .zip(schema.fields())
        .map(|(decoder, field)| {
            decoder.finish().map_err(|message| Error::Conversion {
                column: field.name().clone(),
                value: message,
                target: field.data_type().to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(count));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}
