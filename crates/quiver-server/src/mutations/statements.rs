//! The SQL a mutation runs, for one table in the store's dialect.

use arrow::datatypes::DataType;
use quiver_storage::{ColumnInfo, Dialect, TableInfo};

/// Builds statement text for one table in the store's dialect.
pub(super) struct Statements<'a> {
    pub(super) table: &'a TableInfo,
    pub(super) dialect: Dialect,
}

impl Statements<'_> {
    pub(super) fn quote(&self, name: &str) -> String {
        self.dialect.quote_identifier(name)
    }

    pub(super) fn target(&self) -> String {
        format!(
            "{}.{}",
            self.quote(&self.table.schema),
            self.quote(&self.table.name)
        )
    }

    /// The `n`th parameter (1-based): untyped, so the store types it by its column.
    pub(super) fn param(&self, n: usize) -> String {
        self.dialect.parameter(n)
    }

    /// ` RETURNING <primary key>` (text casts for keys read back as text), or nothing
    /// for tables without one.
    pub(super) fn returning(&self) -> String {
        if self.table.primary_key.is_empty() {
            return String::new();
        }
        let keys: Vec<String> = self
            .key_columns()
            .map(|column| match (self.dialect, &column.data_type) {
                (Dialect::Postgres, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
                    format!("CAST({} AS TEXT)", self.quote(&column.name))
                }
                _ => self.dialect.select_column(column),
            })
            .collect();
        format!(" RETURNING {}", keys.join(", "))
    }

    fn key_columns(&self) -> impl Iterator<Item = &ColumnInfo> {
        self.table
            .primary_key
            .iter()
            .filter_map(|key| self.table.column(key))
    }

    pub(super) fn insert(&self, columns: &[String], upsert: bool) -> String {
        let target = self.target();
        let returning = self.returning();
        if columns.is_empty() {
            return format!("INSERT INTO {target} DEFAULT VALUES{returning}");
        }
        let names: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        let params: Vec<String> = (1..=columns.len()).map(|n| self.param(n)).collect();
        let mut sql = format!(
            "INSERT INTO {target} ({}) VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        if upsert {
            let keys: Vec<String> = self
                .table
                .primary_key
                .iter()
                .map(|k| self.quote(k))
                .collect();
            let mut sets: Vec<String> = columns
                .iter()
                .filter(|c| !self.table.primary_key.contains(c))
                .map(|c| format!("{0} = excluded.{0}", self.quote(c)))
                .collect();
            if sets.is_empty() {
                // Still an update, so the existing row's key is returned.
                sets = keys.iter().map(|k| format!("{k} = excluded.{k}")).collect();
            }
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                keys.join(", "),
                sets.join(", ")
            ));
        }
        sql.push_str(&returning);
        sql
    }

    /// `WHERE k1 = $n AND …` over the primary key, parameters from `first`.
    pub(super) fn key_condition(&self, first: usize) -> String {
        let conditions: Vec<String> = self
            .table
            .primary_key
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{} = {}", self.quote(key), self.param(first + i)))
            .collect();
        conditions.join(" AND ")
    }
}
