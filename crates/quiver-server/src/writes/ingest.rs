//! Flight SQL bulk ingest: create, append to or replace a table from Arrow batches.
//!
//! The batches stream into the store as they arrive, a slice of rows at a time, in
//! one transaction: memory stays bounded by one message, however large the ingest.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::{Stream, StreamExt};
use quiver_storage::{CommitOptions, Dialect};

use quiver_storage::dialect::is_internal_name;

use super::{Finish, Writer};
use crate::connection::ConnectionId;
use crate::error::{Error, Result};

/// Rows written at a time (bounds the store's buffers, such as a `COPY` message set).
const INGEST_SLICE_ROWS: usize = 8_192;

impl Writer {
    /// Bulk-loads `batches` (of `schema`) as `command` describes (create / append /
    /// replace), for the connection `owner`, as they arrive.
    pub async fn ingest(
        &self,
        command: &CommandStatementIngest,
        schema: &Schema,
        batches: impl Stream<Item = Result<RecordBatch>> + Send,
        owner: Option<ConnectionId>,
    ) -> Result<u64> {
        if command.temporary {
            return Err(Error::InvalidRequest(
                "temporary tables are not supported for ingest".to_owned(),
            ));
        }
        // Dictionary-encoded columns (pandas categoricals) are stored as their values.
        let stored = stored_schema(schema);
        let schema = &stored;
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
        if is_internal_name(&schema_name) || is_internal_name(&table) {
            return Err(Error::PermissionDenied(
                "ingest may not write Quiver's internal objects (names starting with _quiver)"
                    .to_owned(),
            ));
        }
        if !self
            .engine
            .catalog()
            .schemas
            .iter()
            .any(|s| s.name == schema_name)
        {
            return Err(Error::NotFound(format!(
                "schema '{}' does not exist",
                quiver_storage::value::shorten(&schema_name)
            )));
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
        let mut create = vec![create_table_sql(&target, schema, dialect)?];
        create.extend(recorded_types_sql(&target, schema, dialect));
        let mut steps = Vec::new();
        match (&existing, options.if_exists(), options.if_not_exist()) {
            (Some(_), TableExistsOption::Fail | TableExistsOption::Unspecified, _) => {
                return Err(Error::AlreadyExists(format!(
                    "table '{table}' already exists (ingest mode create)"
                )));
            }
            (Some(info), TableExistsOption::Append, _) => check_append(info, schema)?,
            (Some(_), TableExistsOption::Replace, _) => {
                steps.push(format!("DROP TABLE {target}"));
                steps.extend(create);
            }
            (None, _, TableNotExistOption::Create) => steps.extend(create),
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
        let ddl = !steps.is_empty();
        let expected = schema.fields().len();
        let decoded_limit = self.config.max_request_bytes;
        self.transact(command.transaction_id.as_ref(), owner, ddl, async move |tx| {
            for step in &steps {
                tx.execute_script(step).await?;
            }
            if replaced {
                tx.log_table_event(&log_name, "truncate").await?;
            }
            if ddl {
                tx.capture_new_tables().await?;
            }
            let mut written = 0u64;
            futures::pin_mut!(batches);
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                if batch.num_columns() != expected {
                    return Err(Error::InvalidRequest(format!(
                        "an ingest batch has {} columns where the stream's schema has {expected}",
                        batch.num_columns()
                    )));
                }
                check_rows_carried(&batch)?;
                let mut offset = 0;
                while offset < batch.num_rows() {
                    let length = INGEST_SLICE_ROWS.min(batch.num_rows() - offset);
                    // Dictionaries are decoded a slice at a time, within a bound: a
                    // small message can name one large value many times.
                    let slice = as_stored(&batch.slice(offset, length), &stored, decoded_limit)?;
                    written += tx
                        .bulk_insert_batch(&schema_name, &table, &columns, slice)
                        .await?;
                    offset += length;
                }
            }
            Ok(Finish::Commit(written, CommitOptions::default()))
        })
        .await
        .map(|written| written.value)
    }
}

/// Checks that batches of `schema` can be appended to `table`: every column of the
/// stream is a column of the table. Names every column that differs. (A column the
/// stream leaves out gets its default; the store refuses a missing required one.)
fn check_append(table: &quiver_storage::TableInfo, schema: &Schema) -> Result<()> {
    let quoted = |names: &mut dyn Iterator<Item = &str>| {
        names
            .map(|n| format!("'{}'", quiver_storage::value::shorten(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unknown = quoted(
        &mut schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| table.column(name).is_none()),
    );
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidRequest(format!(
        "cannot append to table '{}': it has no column {unknown}; its columns are {}",
        quiver_storage::value::shorten(&table.name),
        quoted(&mut table.columns.iter().map(|c| c.name.as_str()))
    )))
}

/// `schema` as it is stored: dictionary-encoded columns as their value type.
fn stored_schema(schema: &Schema) -> Schema {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Dictionary(_, values) => {
                field.as_ref().clone().with_data_type(*values.clone())
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// Most rows per byte an ingest batch may carry beyond its first slice: one bit a row
/// (a validity bitmap). A `Null` column costs nothing a row, so a message of a few
/// bytes could otherwise claim billions of rows, each written out.
const ROWS_PER_BYTE: usize = 8;

/// Refuses a batch that claims more rows than its bytes carry (see [`ROWS_PER_BYTE`]).
fn check_rows_carried(batch: &RecordBatch) -> Result<()> {
    let carried = batch
        .get_array_memory_size()
        .saturating_mul(ROWS_PER_BYTE)
        .max(INGEST_SLICE_ROWS);
    if batch.num_rows() > carried {
        return Err(Error::ResourceExhausted(format!(
            "an ingest batch claims {} rows in {} bytes; send at most {carried} rows a \
             batch (a row must carry a bit)",
            batch.num_rows(),
            batch.get_array_memory_size()
        )));
    }
    Ok(())
}

/// `batch` with its dictionary-encoded columns decoded, as `stored` says; refused
/// before anything is decoded or written when its dictionary and view columns would
/// expand to more than `limit` bytes (a small message can name one large value many
/// times, and every row is written out in full).
fn as_stored(batch: &RecordBatch, stored: &Schema, limit: usize) -> Result<RecordBatch> {
    let expanded: usize = batch.columns().iter().map(crate::ipc::expanded_bytes).sum();
    if expanded > limit {
        return Err(Error::ResourceExhausted(format!(
            "dictionary-encoded and view columns expand to {expanded} bytes in {} rows; at \
             most {limit} (max_mutation_size_mb) may be written at a time",
            batch.num_rows()
        )));
    }
    if batch
        .columns()
        .iter()
        .all(|c| !matches!(c.data_type(), DataType::Dictionary(..)))
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(stored.fields())
        .map(|(column, field)| match column.data_type() {
            DataType::Dictionary(..) => arrow::compute::cast(column, field.data_type()),
            _ => Ok(std::sync::Arc::clone(column)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            Error::InvalidRequest(format!("cannot decode a dictionary column: {err}"))
        })?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(std::sync::Arc::new(stored.clone()), columns, &options)
        .map_err(|err| {
            Error::InvalidRequest(format!("an ingest batch does not match its schema: {err}"))
        })
}

/// On PostgreSQL, a `COMMENT ON COLUMN` for each column whose type reads back as
/// another Arrow type than the client sent (`Int8` in a `smallint`): the comment
/// records the Arrow type, and the column reads back as it while its type stays.
/// (SQLite records it in the declared type.)
fn recorded_types_sql(target: &str, schema: &Schema, dialect: Dialect) -> Vec<String> {
    if dialect != Dialect::Postgres {
        return Vec::new();
    }
    schema
        .fields()
        .iter()
        .filter_map(|field| {
            let comment = quiver_storage::postgres::types::comment_for(field.data_type())?;
            Some(format!(
                "COMMENT ON COLUMN {target}.{} IS '{}'",
                dialect.quote_identifier(field.name()),
                comment.replace('\'', "''")
            ))
        })
        .collect()
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
