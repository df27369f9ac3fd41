//! What the store holds: schemas, tables, columns, keys and indexes.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// A snapshot of the store's catalog, taken by introspection.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Schemas in name order.
    pub schemas: Vec<SchemaInfo>,
}

impl Catalog {
    /// Finds a table by schema and name.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableInfo> {
        self.schemas
            .iter()
            .find(|s| s.name == schema)
            .and_then(|s| s.tables.iter().find(|t| t.name == name))
    }

    /// Every table of every schema.
    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.schemas.iter().flat_map(|s| s.tables.iter())
    }
}

/// One schema (namespace) of the store.
#[derive(Debug, Clone)]
pub struct SchemaInfo {
    /// Schema name (`main` for SQLite).
    pub name: String,
    /// Tables and views in name order.
    pub tables: Vec<TableInfo>,
}

/// Whether a relation is a base table or a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A base table.
    Table,
    /// A view.
    View,
}

impl TableKind {
    /// The name Flight SQL and JDBC use for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Table => "TABLE",
            TableKind::View => "VIEW",
        }
    }
}

/// A table or view with everything clients ask about it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema the table lives in.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Table or view.
    pub kind: TableKind,
    /// Columns in declaration order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key columns in key order (empty when there is none).
    pub primary_key: Vec<String>,
    /// Foreign keys declared on this table.
    pub foreign_keys: Vec<ForeignKey>,
    /// Indexes on this table.
    pub indexes: Vec<IndexInfo>,
    /// Row count from the store's planner statistics, when it has any.
    pub estimated_rows: Option<u64>,
    /// An integer key the store scans in ranges cheaply (SQLite's `rowid`), used to
    /// split large scans into parallel partitions; `None` when there is none.
    pub range_key: Option<String>,
}

impl TableInfo {
    /// The Arrow schema rows of this table are read into.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// Finds a column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column of a table.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The type as the store declares it (`INTEGER`, `varchar(20)`, …).
    pub declared_type: String,
    /// The Arrow type values are read as.
    pub data_type: DataType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The default expression, as SQL text.
    pub default: Option<String>,
    /// Whether the store has no direct Arrow form for the type, so values are read
    /// through a cast to text (and never compared in the store).
    pub read_as_text: bool,
}

/// What happens to referencing rows when the referenced key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKeyAction {
    /// `CASCADE`.
    Cascade,
    /// `RESTRICT`.
    Restrict,
    /// `SET NULL`.
    SetNull,
    /// `NO ACTION`.
    NoAction,
    /// `SET DEFAULT`.
    SetDefault,
}

impl ForeignKeyAction {
    /// Parses the action as SQLite's `pragma foreign_key_list` and Postgres spell it.
    pub fn parse(text: &str) -> Self {
        match text.to_ascii_uppercase().as_str() {
            "CASCADE" => ForeignKeyAction::Cascade,
            "RESTRICT" => ForeignKeyAction::Restrict,
            "SET NULL" => ForeignKeyAction::SetNull,
            "SET DEFAULT" => ForeignKeyAction::SetDefault,
            _ => ForeignKeyAction::NoAction,
        }
    }
}

/// A foreign key constraint.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    /// Constraint name, when the store keeps one.
    pub name: Option<String>,
    /// Referencing columns, in key order.
    pub columns: Vec<String>,
    /// Schema of the referenced table.
    pub referenced_schema: String,
    /// The referenced table.
    pub referenced_table: String,
    /// Referenced columns, in key order.
    pub referenced_columns: Vec<String>,
    /// Action on update of the referenced key.
    pub on_update: ForeignKeyAction,
    /// Action on delete of the referenced row.
    pub on_delete: ForeignKeyAction,
}

/// An index on a table.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    /// Index name.
    pub name: String,
    /// Indexed columns in order (expressions are listed as their text).
    pub columns: Vec<String>,
    /// Whether the index enforces uniqueness.
    pub unique: bool,
}
