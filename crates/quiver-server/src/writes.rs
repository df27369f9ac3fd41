//! The write path shared by Flight SQL and the Mutations API: statements run in a
//! transaction on the store, committed with a change-log version; Flight SQL
//! transactions pinned to one connection; bulk ingest; change-log retention.
//!
//! Every write commits through [`quiver_storage::Transaction::commit`], so each one is
//! in the change log. After DDL the engine's catalog is re-read at once, and capture
//! triggers are installed on new tables inside the same transaction.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions};
use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
use bytes::Bytes;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use quiver_query::QueryEngine;
use quiver_storage::{CommitOptions, Dialect, Transaction, Value};
use tokio_util::sync::CancellationToken;

use crate::config::WriteConfig;
use crate::error::{Error, Result};

/// What a SQL statement does, judged by its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Returns rows (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, `SHOW`, …): planned by DataFusion.
    Query,
    /// Changes rows (`INSERT`, `UPDATE`, `DELETE`, …): run on the store as written.
    Update,
    /// Changes the schema (`CREATE`, `DROP`, `ALTER`): run on the store, then the catalog
    /// is re-read.
    Ddl,
}

/// Classifies `sql` by its first keyword (comments and parentheses skipped).
pub fn statement_kind(sql: &str) -> StatementKind {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return StatementKind::Query;
    };
    let first = tokens.iter().find_map(|token| match token {
        Token::Word(word) => Some(word.keyword),
        Token::Whitespace(_) | Token::LParen => None,
        _ => Some(Keyword::NoKeyword),
    });
    match first {
        Some(
            Keyword::INSERT
            | Keyword::UPDATE
            | Keyword::DELETE
            | Keyword::MERGE
            | Keyword::REPLACE
            | Keyword::TRUNCATE,
        ) => StatementKind::Update,
        Some(Keyword::CREATE | Keyword::DROP | Keyword::ALTER | Keyword::COMMENT) => {
            StatementKind::Ddl
        }
        _ => StatementKind::Query,
    }
}

/// `sql` with its placeholders as the store takes them: SQLite numbers `?` itself;
/// PostgreSQL needs `$N`.
fn store_placeholders(sql: &str, dialect: Dialect) -> Result<String> {
    Ok(match dialect {
        Dialect::Postgres => quiver_query::params::number_placeholders(sql)?,
        Dialect::Sqlite => sql.to_owned(),
    })
}

/// The base table `name` (`tasks`, or `schema.table` outside the default schema)
/// names: NOT_FOUND when there is none, INVALID_ARGUMENT for a view.
pub(crate) fn resolve_table(
    engine: &QueryEngine,
    name: &str,
) -> Result<Arc<quiver_storage::TableInfo>> {
    let catalog = engine.catalog();
    let (schema, table) = match name.split_once('.') {
        Some((schema, table)) => (schema, table),
        None => (engine.store().default_schema(), name),
    };
    if table.is_empty() {
        return Err(Error::InvalidRequest("no table named".to_owned()));
    }
    let info = catalog
        .table(schema, table)
        .ok_or_else(|| Error::NotFound(format!("table '{name}' does not exist")))?;
    if info.kind != quiver_storage::TableKind::Table {
        return Err(Error::InvalidRequest(format!(
            "'{name}' is a view; only tables can be written or followed"
        )));
    }
    Ok(Arc::new(info.clone()))
}

/// A Flight SQL transaction: begun on the store at its first write, so a client that
/// keeps a transaction open only to read never holds a connection (or, on SQLite, the
/// writer).
#[derive(Debug, Default)]
struct OpenTransaction {
    transaction: Option<Transaction>,
    changed_schema: bool,
}

#[derive(Debug)]
struct TransactionSlot {
    state: tokio::sync::Mutex<OpenTransaction>,
    last_used: Mutex<Instant>,
}

/// The write path: runs statements and ingests, keeps Flight SQL transactions.
#[derive(Debug)]
pub struct Writer {
    engine: Arc<QueryEngine>,
    config: WriteConfig,
    transactions: Mutex<HashMap<Bytes, Arc<TransactionSlot>>>,
    next_id: AtomicU64,
    id_seed: u64,
}

impl Writer {
    /// A writer over `engine`'s store.
    pub fn new(engine: Arc<QueryEngine>, config: WriteConfig) -> Self {
        let id_seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            engine,
            config,
            transactions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            id_seed,
        }
    }

    /// The engine whose store this writes to.
    pub fn engine(&self) -> &Arc<QueryEngine> {
        &self.engine
    }

    /// The write limits.
    pub fn config(&self) -> &WriteConfig {
        &self.config
    }

    /// Runs a data-changing or DDL statement once per parameter row, in `transaction_id`
    /// or in a transaction of its own. Returns the rows changed.
    pub async fn execute_update(
        &self,
        sql: &str,
        rows: Vec<Vec<Value>>,
        transaction_id: Option<&Bytes>,
    ) -> Result<u64> {
        let kind = statement_kind(sql);
        if kind == StatementKind::Query {
            return Err(Error::InvalidRequest(
                "a query cannot be executed as an update; run it as a query".to_owned(),
            ));
        }
        let dialect = self.engine.store().dialect();
        let sql = store_placeholders(sql, dialect)?;
        let ddl = kind == StatementKind::Ddl;
        self.in_transaction(transaction_id, ddl, async move |tx| {
            let (changed, _) = tx.run_many(&sql, rows).await?;
            if ddl {
                tx.capture_new_tables().await?;
            }
            Ok(changed)
        })
        .await
    }

    /// Bulk-loads `batches` as `command` describes (create / append / replace).
    pub async fn ingest(
        &self,
        command: &CommandStatementIngest,
        schema: &Schema,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        if command.temporary {
            return Err(Error::InvalidRequest(
                "temporary tables are not supported for ingest".to_owned(),
            ));
        }
        let store = self.engine.store();
        let dialect = store.dialect();
        let schema_name = command
            .schema
            .clone()
            .unwrap_or_else(|| store.default_schema().to_owned());
        let table = command.table.clone();
        if table.is_empty() {
            return Err(Error::InvalidRequest(
                "ingest names no target table".to_owned(),
            ));
        }
        let options = command
            .table_definition_options
            .unwrap_or(TableDefinitionOptions {
                if_not_exist: TableNotExistOption::Create as i32,
                if_exists: TableExistsOption::Fail as i32,
            });
        let existing = self.engine.catalog().table(&schema_name, &table).cloned();
        let target = format!(
            "{}.{}",
            dialect.quote_identifier(&schema_name),
            dialect.quote_identifier(&table)
        );
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let create = create_table_sql(&target, schema, dialect)?;
        let mut steps = Vec::new();
        match (&existing, options.if_exists(), options.if_not_exist()) {
            (Some(_), TableExistsOption::Fail | TableExistsOption::Unspecified, _) => {
                return Err(Error::AlreadyExists(format!(
                    "table '{table}' already exists (ingest mode create)"
                )));
            }
            (Some(info), TableExistsOption::Append, _) => {
                for column in &columns {
                    if info.column(column).is_none() {
                        return Err(Error::InvalidRequest(format!(
                            "table '{table}' has no column '{column}'"
                        )));
                    }
                }
            }
            (Some(_), TableExistsOption::Replace, _) => {
                steps.push(format!("DROP TABLE {target}"));
                steps.push(create);
            }
            (None, _, TableNotExistOption::Create) => steps.push(create),
            (None, _, _) => {
                return Err(Error::NotFound(format!(
                    "table '{table}' does not exist (ingest mode append)"
                )));
            }
        }
        let replaced = existing.is_some() && !steps.is_empty();
        let log_name = match existing.as_ref() {
            Some(info) => quiver_storage::changelog::table_log_name(info, dialect),
            None => table.clone(),
        };
        let rows = batches
            .iter()
            .map(quiver_storage::value::rows_of_batch)
            .collect::<quiver_storage::Result<Vec<_>>>()?
            .concat();
        let ddl = !steps.is_empty();
        self.in_transaction(command.transaction_id.as_ref(), ddl, async move |tx| {
            for step in &steps {
                tx.execute_script(step).await?;
            }
            if replaced {
                tx.log_table_event(&log_name, "truncate").await?;
            }
            if ddl {
                tx.capture_new_tables().await?;
            }
            tx.bulk_insert(&schema_name, &table, &columns, rows).await
        })
        .await
    }

    /// Runs `work` in the Flight SQL transaction `transaction_id`, or in a transaction
    /// of its own committed right after.
    async fn in_transaction<T>(
        &self,
        transaction_id: Option<&Bytes>,
        changes_schema: bool,
        work: impl AsyncFnOnce(&mut Transaction) -> quiver_storage::Result<T>,
    ) -> Result<T> {
        let store = self.engine.store();
        let Some(id) = transaction_id.filter(|id| !id.is_empty()) else {
            let mut tx = store.begin().await?;
            let result = match work(&mut tx).await {
                Ok(result) => result,
                Err(err) => {
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "rollback after a failed write failed");
                    }
                    return Err(err.into());
                }
            };
            tx.commit(CommitOptions::default()).await?;
            if changes_schema {
                self.refresh_catalog().await?;
            }
            return Ok(result);
        };
        let slot = self.slot(id)?;
        let mut open = slot.state.lock().await;
        *slot.last_used.lock().expect("never poisoned") = Instant::now();
        if open.transaction.is_none() {
            open.transaction = Some(store.begin().await?);
        }
        let tx = open
            .transaction
            .as_mut()
            .expect("a transaction was just begun");
        let result = work(tx).await?;
        open.changed_schema |= changes_schema;
        *slot.last_used.lock().expect("never poisoned") = Instant::now();
        Ok(result)
    }

    fn slot(&self, id: &Bytes) -> Result<Arc<TransactionSlot>> {
        self.transactions
            .lock()
            .expect("never poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "transaction '{}' does not exist (it ended, timed out, or began on another replica)",
                    String::from_utf8_lossy(id)
                ))
            })
    }

    /// Checks that `transaction_id`, when given, names an open transaction.
    pub fn check_transaction(&self, transaction_id: Option<&Bytes>) -> Result<()> {
        match transaction_id.filter(|id| !id.is_empty()) {
            Some(id) => self.slot(id).map(drop),
            None => Ok(()),
        }
    }

    /// Opens a Flight SQL transaction and returns its id.
    pub fn begin(&self) -> Bytes {
        let sequence = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = Bytes::from(format!("qtx-{:016x}-{sequence}", self.id_seed));
        let slot = Arc::new(TransactionSlot {
            state: tokio::sync::Mutex::new(OpenTransaction::default()),
            last_used: Mutex::new(Instant::now()),
        });
        self.transactions
            .lock()
            .expect("never poisoned")
            .insert(id.clone(), slot);
        id
    }

    /// Commits or rolls back a Flight SQL transaction.
    pub async fn end(&self, id: &Bytes, commit: bool) -> Result<()> {
        let slot = self
            .transactions
            .lock()
            .expect("never poisoned")
            .remove(id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "transaction '{}' does not exist (it ended, timed out, or began on another replica)",
                    String::from_utf8_lossy(id)
                ))
            })?;
        let mut open = slot.state.lock().await;
        let Some(tx) = open.transaction.take() else {
            return Ok(());
        };
        if commit {
            tx.commit(CommitOptions::default()).await?;
            if open.changed_schema {
                self.refresh_catalog().await?;
            }
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// Open Flight SQL transactions.
    pub fn open_transactions(&self) -> usize {
        self.transactions.lock().expect("never poisoned").len()
    }

    /// Rolls back transactions idle longer than the configured timeout.
    pub async fn reap_idle_transactions(&self) -> usize {
        let timeout = self.config.transaction_idle_timeout;
        let idle: Vec<(Bytes, Arc<TransactionSlot>)> = {
            let mut transactions = self.transactions.lock().expect("never poisoned");
            let ids: Vec<Bytes> = transactions
                .iter()
                .filter(|(_, slot)| {
                    slot.last_used.lock().expect("never poisoned").elapsed() > timeout
                        && slot.state.try_lock().is_ok()
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| transactions.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in &idle {
            let mut open = slot.state.lock().await;
            if let Some(tx) = open.transaction.take()
                && let Err(err) = tx.rollback().await
            {
                tracing::warn!(error = %err, "cannot roll back an idle transaction");
            }
            tracing::info!(transaction = %String::from_utf8_lossy(id), ?timeout, "idle transaction rolled back");
        }
        idle.len()
    }

    async fn refresh_catalog(&self) -> Result<()> {
        self.engine.refresh_catalog().await?;
        Ok(())
    }

    /// Background upkeep until `shutdown`: rolls back idle transactions every second
    /// and prunes the change log and idempotency keys every minute.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reap_idle_transactions().await;
            seconds += 1;
            if seconds.is_multiple_of(60)
                && let Err(err) = self.prune().await
            {
                tracing::warn!(error = %err, "cannot prune the change log");
            }
        }
    }

    /// Deletes change-log commits and idempotency keys past their retention.
    pub async fn prune(&self) -> Result<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = |keep: Duration| {
            i64::try_from(now.saturating_sub(keep).as_micros()).unwrap_or(i64::MAX)
        };
        let pruned = self
            .engine
            .store()
            .prune_change_log(
                before(self.config.change_log_retention),
                before(self.config.idempotency_window),
            )
            .await?;
        if pruned > 0 {
            tracing::info!(commits = pruned, "change log pruned");
        }
        Ok(pruned)
    }
}

/// `CREATE TABLE` for an Arrow schema in the store's types.
fn create_table_sql(target: &str, schema: &Schema, dialect: Dialect) -> Result<String> {
    if schema.fields().is_empty() {
        return Err(Error::InvalidRequest(
            "cannot create a table without columns".to_owned(),
        ));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let declared = match dialect {
                Dialect::Sqlite => {
                    quiver_storage::sqlite::types::declared_type_for_arrow(field.data_type())
                        .map(str::to_owned)
                }
                Dialect::Postgres => {
                    quiver_storage::postgres::types::declared_type_for(field.data_type())
                }
            }
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "column '{}': Arrow type {} has no column type in the store",
                    field.name(),
                    field.data_type()
                ))
            })?;
            let null = if field.is_nullable() { "" } else { " NOT NULL" };
            Ok(format!(
                "{} {declared}{null}",
                dialect.quote_identifier(field.name())
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(format!("CREATE TABLE {target} ({})", columns.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_first_keyword() {
        assert_eq!(statement_kind("SELECT 1"), StatementKind::Query);
        assert_eq!(
            statement_kind("  -- note\n (SELECT 1)"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind("WITH x AS (SELECT 1) SELECT * FROM x"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind("update tasks set status = 'done'"),
            StatementKind::Update
        );
        assert_eq!(
            statement_kind("/* bulk */ INSERT INTO t VALUES (1)"),
            StatementKind::Update
        );
        assert_eq!(statement_kind("DELETE FROM t"), StatementKind::Update);
        assert_eq!(
            statement_kind("create index i on t (a)"),
            StatementKind::Ddl
        );
        assert_eq!(statement_kind("DROP TABLE t"), StatementKind::Ddl);
    }

    #[test]
    fn placeholders_follow_the_store() {
        let sql = "INSERT INTO t (a, b) VALUES (?, '?')";
        assert_eq!(
            store_placeholders(sql, Dialect::Postgres).unwrap(),
            "INSERT INTO t (a, b) VALUES ($1, '?')"
        );
        assert_eq!(store_placeholders(sql, Dialect::Sqlite).unwrap(), sql);
        assert_eq!(
            store_placeholders("DELETE FROM t", Dialect::Sqlite).unwrap(),
            "DELETE FROM t"
        );
    }
}
