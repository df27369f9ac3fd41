//! Catalog metadata in the shapes Flight SQL defines: SqlInfo, type info, tables, keys.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder, UInt8Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, Nullable,
    Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, XdbcDataType, XdbcDatetimeSubcode,
};
use quiver_storage::{Catalog, ForeignKeyAction, TableInfo};

use crate::error::Result;

/// Field metadata keys Flight SQL defines for result and table columns.
const TYPE_NAME_KEY: &str = "ARROW:FLIGHT:SQL:TYPE_NAME";
const CATALOG_NAME_KEY: &str = "ARROW:FLIGHT:SQL:CATALOG_NAME";
const SCHEMA_NAME_KEY: &str = "ARROW:FLIGHT:SQL:SCHEMA_NAME";
const TABLE_NAME_KEY: &str = "ARROW:FLIGHT:SQL:TABLE_NAME";

/// What this server supports, answered to `GetSqlInfo`. Only capabilities that work
/// are advertised.
pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Quiver");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    builder.append(SqlInfo::FlightSqlServerReadOnly, false);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::Transaction as i32,
    );
    builder.append(SqlInfo::FlightSqlServerCancel, true);
    builder.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    builder.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, true);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    builder.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, true);
    builder.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
    builder.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    builder.append(SqlInfo::SqlSearchStringEscape, "\\");
    builder.append(SqlInfo::SqlSupportsColumnAliasing, true);
    builder.append(SqlInfo::SqlNullPlusNullIsNull, true);
    builder.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    builder.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    builder.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    builder.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    builder.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    builder.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    builder.append(SqlInfo::SqlSchemaTerm, "schema");
    builder.append(SqlInfo::SqlCatalogTerm, "catalog");
    builder.append(SqlInfo::SqlProcedureTerm, "procedure");
    builder.append(SqlInfo::SqlCatalogAtStart, true);
    builder.append(SqlInfo::SqlSelectForUpdateSupported, false);
    builder.append(SqlInfo::SqlStoredProceduresSupported, false);
    // Bit mask: comparisons, EXISTS, IN (SqlSupportedSubqueries 0, 1, 2).
    builder.append(SqlInfo::SqlSupportedSubqueries, 0b111i32);
    builder.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    // Bit mask: UNION, UNION ALL.
    builder.append(SqlInfo::SqlSupportedUnions, 0b11i32);
    builder.append(SqlInfo::SqlTransactionsSupported, true);
    builder.append(SqlInfo::SqlBatchUpdatesSupported, false);
    builder.append(SqlInfo::SqlSavepointsSupported, false);
    builder.append(SqlInfo::SqlNamedParametersSupported, false);
    builder.build().expect("static SqlInfo values build")
});

/// One `GetXdbcTypeInfo` row: a type name DDL accepts, its XDBC type, and whether it
/// is unsigned.
fn type_info(name: &str, data_type: XdbcDataType, unsigned: bool) -> XdbcTypeInfo {
    use XdbcDataType as T;
    let decimal_radix = matches!(
        data_type,
        T::XdbcTinyint | T::XdbcSmallint | T::XdbcInteger | T::XdbcBigint | T::XdbcDecimal
    );
    let numeric = decimal_radix || matches!(data_type, T::XdbcReal | T::XdbcDouble);
    let quoted = !numeric && data_type != T::XdbcBit;
    let (sql_data_type, datetime_subcode) = match data_type {
        T::XdbcDate => (T::XdbcDatetime, Some(XdbcDatetimeSubcode::XdbcSubcodeYear)),
        T::XdbcTime => (T::XdbcDatetime, Some(XdbcDatetimeSubcode::XdbcSubcodeTime)),
        T::XdbcTimestamp => (
            T::XdbcDatetime,
            Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        ),
        other => (other, None),
    };
    let create_params = match data_type {
        T::XdbcDecimal => Some(vec!["precision".to_owned(), "scale".to_owned()]),
        T::XdbcBinary => Some(vec!["length".to_owned()]),
        T::XdbcTime | T::XdbcTimestamp | T::XdbcInterval => Some(vec!["precision".to_owned()]),
        _ => None,
    };
    XdbcTypeInfo {
        type_name: name.to_owned(),
        data_type,
        column_size: None,
        literal_prefix: quoted.then(|| "'".to_owned()),
        literal_suffix: quoted.then(|| "'".to_owned()),
        create_params,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(data_type, T::XdbcVarchar | T::XdbcLongvarchar),
        searchable: Searchable::Full,
        unsigned_attribute: numeric.then_some(unsigned),
        fixed_prec_scale: data_type == T::XdbcDecimal,
        auto_increment: numeric.then_some(false),
        local_type_name: Some(name.to_owned()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type,
        datetime_subcode,
        num_prec_radix: numeric.then_some(if decimal_radix { 10 } else { 2 }),
        interval_precision: None,
    }
}

/// `GetXdbcTypeInfo` for one store: the type names its DDL accepts, each read back as
/// the Arrow type docs/types.md lists, in XDBC type order.
fn type_infos(types: &[(&str, XdbcDataType, bool)]) -> XdbcTypeInfoData {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    for (name, data_type, unsigned) in types {
        builder.append(type_info(name, *data_type, *unsigned));
    }
    builder.build().expect("static type info builds")
}

/// The types of SQLite columns Quiver reads and creates.
static SQLITE_TYPE_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    use XdbcDataType as T;
    type_infos(&[
        ("BOOLEAN", T::XdbcBit, false),
        ("TINYINT", T::XdbcTinyint, false),
        ("UINT8", T::XdbcTinyint, true),
        ("SMALLINT", T::XdbcSmallint, false),
        ("UINT16", T::XdbcSmallint, true),
        ("INT32", T::XdbcInteger, false),
        ("UINT32", T::XdbcInteger, true),
        ("INTEGER", T::XdbcBigint, false),
        ("UINT64", T::XdbcBigint, true),
        ("FLOAT4", T::XdbcReal, false),
        ("REAL", T::XdbcDouble, false),
        ("DECIMAL", T::XdbcDecimal, false),
        ("TEXT", T::XdbcVarchar, false),
        ("LONGTEXT", T::XdbcLongvarchar, false),
        ("FIXED_BLOB", T::XdbcBinary, false),
        ("BLOB", T::XdbcVarbinary, false),
        ("LONGBLOB", T::XdbcLongvarbinary, false),
        ("DATE", T::XdbcDate, false),
        ("DATE64", T::XdbcDate, false),
        ("TIME", T::XdbcTime, false),
        ("TIMESTAMP", T::XdbcTimestamp, false),
        ("TIMESTAMPTZ", T::XdbcTimestamp, false),
        ("DURATION", T::XdbcInterval, false),
    ])
});

/// The types of PostgreSQL columns Quiver reads as Arrow types of their own.
static POSTGRES_TYPE_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    use XdbcDataType as T;
    type_infos(&[
        ("boolean", T::XdbcBit, false),
        ("smallint", T::XdbcSmallint, false),
        ("integer", T::XdbcInteger, false),
        ("bigint", T::XdbcBigint, false),
        ("real", T::XdbcReal, false),
        ("double precision", T::XdbcDouble, false),
        ("numeric", T::XdbcDecimal, false),
        ("text", T::XdbcVarchar, false),
        ("bytea", T::XdbcVarbinary, false),
        ("date", T::XdbcDate, false),
        ("time", T::XdbcTime, false),
        ("timestamp", T::XdbcTimestamp, false),
        ("timestamptz", T::XdbcTimestamp, false),
        ("interval", T::XdbcInterval, false),
    ])
});

/// The `GetXdbcTypeInfo` answer for a store of `dialect`.
pub fn xdbc_type_info(dialect: quiver_storage::Dialect) -> &'static XdbcTypeInfoData {
    match dialect {
        quiver_storage::Dialect::Sqlite => &SQLITE_TYPE_INFO,
        quiver_storage::Dialect::Postgres => &POSTGRES_TYPE_INFO,
    }
}

/// The `GetCatalogs` rows: the one catalog.
pub fn catalogs(query: CommandGetCatalogs, catalog_name: &str) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    builder.append(catalog_name);
    Ok(builder.build()?)
}

/// The `GetDbSchemas` rows matching the query's filters.
pub fn schemas(
    query: CommandGetDbSchemas,
    catalog_name: &str,
    catalog: &Catalog,
) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    for schema in &catalog.schemas {
        if schema.name != quiver_query::system::SYSTEM_SCHEMA {
            builder.append(catalog_name, &schema.name);
        }
    }
    builder.append(catalog_name, quiver_query::system::SYSTEM_SCHEMA);
    Ok(builder.build()?)
}

/// The `GetTables` rows matching the query's filters, with their schemas when asked.
pub fn tables(
    query: CommandGetTables,
    catalog_name: &str,
    catalog: &Catalog,
    system: &[(String, arrow::datatypes::SchemaRef)],
) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    for (name, schema) in system {
        builder.append(
            catalog_name,
            quiver_query::system::SYSTEM_SCHEMA,
            name,
            "SYSTEM TABLE",
            schema,
        )?;
    }
    for table in catalog.tables() {
        if table.schema == quiver_query::system::SYSTEM_SCHEMA {
            continue;
        }
        let schema = table_schema(catalog_name, table);
        builder.append(
            catalog_name,
            &table.schema,
            &table.name,
            table.kind.as_str(),
            &schema,
        )?;
    }
    Ok(builder.build()?)
}

/// The `GetTableTypes` rows.
pub fn table_types(query: CommandGetTableTypes) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    builder.append("SYSTEM TABLE");
    builder.append("TABLE");
    builder.append("VIEW");
    Ok(builder.build()?)
}

/// A table's Arrow schema with the Flight SQL column metadata (declared type names).
pub fn table_schema(catalog_name: &str, table: &TableInfo) -> Schema {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|column| {
            let metadata = [
                (TYPE_NAME_KEY, column.declared_type.as_str()),
                (CATALOG_NAME_KEY, catalog_name),
                (SCHEMA_NAME_KEY, table.schema.as_str()),
                (TABLE_NAME_KEY, table.name.as_str()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            Field::new(&column.name, column.data_type.clone(), column.nullable)
                .with_metadata(metadata)
        })
        .collect();
    Schema::new(fields)
}

/// Schema of the `GetPrimaryKeys` result.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The `GetPrimaryKeys` rows of the tables matching the filters.
pub fn primary_keys(
    catalog_name: &str,
    catalog: &Catalog,
    catalog_filter: Option<&str>,
    schema_filter: Option<&str>,
    table_name: &str,
) -> Result<RecordBatch> {
    let mut catalogs = StringBuilder::new();
    let mut schemas = StringBuilder::new();
    let mut tables = StringBuilder::new();
    let mut columns = StringBuilder::new();
    let mut key_names = StringBuilder::new();
    let mut sequences = Int32Builder::new();
    if catalog_filter.is_none_or(|c| c == catalog_name) {
        for table in catalog.tables() {
            if table.name != table_name || schema_filter.is_some_and(|s| s != table.schema) {
                continue;
            }
            for (position, column) in table.primary_key.iter().enumerate() {
                catalogs.append_value(catalog_name);
                schemas.append_value(&table.schema);
                tables.append_value(&table.name);
                columns.append_value(column);
                key_names.append_null();
                sequences.append_value(position as i32 + 1);
            }
        }
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(catalogs.finish()),
        Arc::new(schemas.finish()),
        Arc::new(tables.finish()),
        Arc::new(columns.finish()),
        Arc::new(key_names.finish()),
        Arc::new(sequences.finish()),
    ];
    Ok(RecordBatch::try_new(primary_keys_schema(), arrays)?)
}

/// Schema of the `GetImportedKeys`, `GetExportedKeys` and `GetCrossReference` results.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

fn rule(action: ForeignKeyAction) -> u8 {
    match action {
        ForeignKeyAction::Cascade => 0,
        ForeignKeyAction::Restrict => 1,
        ForeignKeyAction::SetNull => 2,
        ForeignKeyAction::NoAction => 3,
        ForeignKeyAction::SetDefault => 4,
    }
}

/// Selects which foreign keys a keys request returns.
#[derive(Debug, Clone, Copy)]
pub struct KeyFilter<'a> {
    /// Referencing (foreign key) table, schema.
    pub fk: Option<(Option<&'a str>, &'a str)>,
    /// Referenced (primary key) table, schema.
    pub pk: Option<(Option<&'a str>, &'a str)>,
}

/// Foreign key rows matching `filter`, ordered as Flight SQL asks (by the other side's
/// table, then key sequence).
pub fn foreign_keys(
    catalog_name: &str,
    catalog: &Catalog,
    catalog_filter: Option<&str>,
    filter: KeyFilter<'_>,
) -> Result<RecordBatch> {
    let matches = |wanted: Option<(Option<&str>, &str)>, schema: &str, table: &str| {
        wanted.is_none_or(|(wanted_schema, wanted_table)| {
            wanted_table == table && wanted_schema.is_none_or(|s| s == schema)
        })
    };
    let mut rows = Vec::new();
    if catalog_filter.is_none_or(|c| c == catalog_name) {
        for table in catalog.tables() {
            if !matches(filter.fk, &table.schema, &table.name) {
                continue;
            }
            for key in &table.foreign_keys {
                if !matches(filter.pk, &key.referenced_schema, &key.referenced_table) {
                    continue;
                }
                for (position, (fk_column, pk_column)) in
                    key.columns.iter().zip(&key.referenced_columns).enumerate()
                {
                    rows.push((table, key, position as i32 + 1, fk_column, pk_column));
                }
            }
        }
    }
    // Imported keys order by the referenced table, exported keys by the referencing one.
    rows.sort_by(|a, b| {
        let key_a = if filter.fk.is_some() {
            (&a.1.referenced_schema, &a.1.referenced_table)
        } else {
            (&a.0.schema, &a.0.name)
        };
        let key_b = if filter.fk.is_some() {
            (&b.1.referenced_schema, &b.1.referenced_table)
        } else {
            (&b.0.schema, &b.0.name)
        };
        key_a.cmp(&key_b).then(a.2.cmp(&b.2))
    });
    let mut builders: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
    let mut sequence = Int32Builder::new();
    let mut fk_names = StringBuilder::new();
    let mut pk_names = StringBuilder::new();
    let mut update_rules = UInt8Builder::new();
    let mut delete_rules = UInt8Builder::new();
    for (table, key, position, fk_column, pk_column) in rows {
        let values = [
            catalog_name,
            &key.referenced_schema,
            &key.referenced_table,
            pk_column,
            catalog_name,
            &table.schema,
            &table.name,
            fk_column,
        ];
        for (builder, value) in builders.iter_mut().zip(values) {
            builder.append_value(value);
        }
        sequence.append_value(position);
        fk_names.append_option(key.name.as_deref());
        pk_names.append_null();
        update_rules.append_value(rule(key.on_update));
        delete_rules.append_value(rule(key.on_delete));
    }
    let mut arrays: Vec<ArrayRef> = builders
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    arrays.push(Arc::new(sequence.finish()));
    arrays.push(Arc::new(fk_names.finish()));
    arrays.push(Arc::new(pk_names.finish()));
    arrays.push(Arc::new(update_rules.finish()));
    arrays.push(Arc::new(delete_rules.finish()));
    Ok(RecordBatch::try_new(foreign_keys_schema(), arrays)?)
}
