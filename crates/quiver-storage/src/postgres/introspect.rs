//! Reading a PostgreSQL catalog: schemas, tables and views, columns, keys, indexes
//! and planner row estimates, from `pg_catalog` in four queries.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use super::types::{ColumnType, map_type};
use crate::catalog::{
    Catalog, ColumnInfo, ForeignKey, ForeignKeyAction, IndexInfo, SchemaInfo, TableInfo, TableKind,
};
use crate::dialect::is_internal_name;
use crate::error::Result;

/// Schemas every query leaves out: the system's own.
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

fn schemas_sql() -> String {
    format!(
        "SELECT n.nspname FROM pg_namespace n
         WHERE {SYSTEM_SCHEMAS} AND has_schema_privilege(n.oid, 'USAGE')
         ORDER BY n.nspname"
    )
}

fn columns_sql() -> String {
    format!(
        "SELECT n.nspname, c.relname, c.relkind::text, c.reltuples::float8,
                a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::int8,
                a.atttypmod, a.attnotnull, t.typtype::text,
                et.oid::int8, et.typtype::text, pg_get_expr(d.adbin, d.adrelid),
                col_description(c.oid, a.attnum)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMAS}
           AND has_table_privilege(c.oid, 'SELECT')
         ORDER BY n.nspname, c.relname, a.attnum"
    )
}

fn constraints_sql() -> String {
    format!(
        "SELECT n.nspname, c.relname, con.conname, con.contype::text,
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, ord)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
                      ORDER BY k.ord),
                fn.nspname, fc.relname,
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, ord)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
                      ORDER BY k.ord),
                con.confupdtype::text, con.confdeltype::text
         FROM pg_constraint con
         JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_class fc ON fc.oid = con.confrelid
         LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
         WHERE con.contype IN ('p', 'f') AND {SYSTEM_SCHEMAS}
         ORDER BY n.nspname, c.relname, con.conname"
    )
}

fn indexes_sql() -> String {
    format!(
        "SELECT n.nspname, t.relname, i.relname, ix.indisunique,
                ARRAY(SELECT pg_get_indexdef(ix.indexrelid, k + 1, true)
                      FROM generate_series(0, ix.indnkeyatts - 1) k ORDER BY k)
         FROM pg_index ix
         JOIN pg_class i ON i.oid = ix.indexrelid
         JOIN pg_class t ON t.oid = ix.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE {SYSTEM_SCHEMAS}
         ORDER BY n.nspname, t.relname, i.relname"
    )
}

/// The actions of `pg_constraint.confupdtype` / `confdeltype`.
fn action(code: &str) -> ForeignKeyAction {
    match code {
        "c" => ForeignKeyAction::Cascade,
        "r" => ForeignKeyAction::Restrict,
        "n" => ForeignKeyAction::SetNull,
        "d" => ForeignKeyAction::SetDefault,
        _ => ForeignKeyAction::NoAction,
    }
}

fn is_integer(declared: &str) -> bool {
    matches!(declared, "bigint" | "integer" | "smallint")
}

/// Reads the whole catalog.
pub(crate) async fn read_catalog(client: &Client) -> Result<Catalog> {
    let mut tables: BTreeMap<(String, String), TableInfo> = BTreeMap::new();
    for row in client.query(&columns_sql(), &[]).await? {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        if is_internal_name(&schema) || is_internal_name(&name) {
            continue;
        }
        let relkind: String = row.get(2);
        let reltuples: f64 = row.get(3);
        let typtype: String = row.get(9);
        let element_oid: Option<i64> = row.get(10);
        let element_typtype: Option<String> = row.get(11);
        let comment: Option<String> = row.get(13);
        let mapping = map_type(ColumnType {
            oid: row.get::<_, i64>(6) as u32,
            typmod: row.get(7),
            typtype: &typtype,
            element: element_oid.map(|oid| (oid as u32, element_typtype.as_deref().unwrap_or("b"))),
            comment: comment.as_deref(),
        });
        let column = ColumnInfo {
            name: row.get(4),
            declared_type: row.get(5),
            data_type: mapping.data_type,
            nullable: !row.get::<_, bool>(8),
            default: row.get(12),
            read_as_text: mapping.read_as_text,
        };
        tables
            .entry((schema.clone(), name.clone()))
            .or_insert_with(|| TableInfo {
                schema,
                name,
                kind: if matches!(relkind.as_str(), "v" | "m") {
                    TableKind::View
                } else {
                    TableKind::Table
                },
                columns: Vec::new(),
                primary_key: Vec::new(),
                foreign_keys: Vec::new(),
                indexes: Vec::new(),
                // -1 (PostgreSQL 14+) or 0: never analyzed.
                estimated_rows: (reltuples > 0.0).then_some(reltuples as u64),
                range_key: None,
            })
            .columns
            .push(column);
    }

    for row in client.query(&constraints_sql(), &[]).await? {
        let key = (row.get::<_, String>(0), row.get::<_, String>(1));
        let Some(table) = tables.get_mut(&key) else {
            continue;
        };
        let kind: String = row.get(3);
        let columns: Vec<String> = row.get(4);
        if kind == "p" {
            table.primary_key = columns;
        } else {
            let on_update: String = row.get(8);
            let on_delete: String = row.get(9);
            table.foreign_keys.push(ForeignKey {
                name: Some(row.get(2)),
                columns,
                referenced_schema: row.get::<_, Option<String>>(5).unwrap_or_default(),
                referenced_table: row.get::<_, Option<String>>(6).unwrap_or_default(),
                referenced_columns: row.get(7),
                on_update: action(&on_update),
                on_delete: action(&on_delete),
            });
        }
    }

    for row in client.query(&indexes_sql(), &[]).await? {
        let key = (row.get::<_, String>(0), row.get::<_, String>(1));
        if let Some(table) = tables.get_mut(&key) {
            table.indexes.push(IndexInfo {
                name: row.get(2),
                unique: row.get(3),
                columns: row.get(4),
            });
        }
    }

    // A single integer primary key splits large scans into key ranges.
    for table in tables.values_mut() {
        if let [key] = table.primary_key.as_slice()
            && table
                .column(key)
                .is_some_and(|c| is_integer(&c.declared_type))
        {
            table.range_key = Some(format!("\"{}\"", key.replace('"', "\"\"")));
        }
    }

    let mut schemas: HashMap<String, Vec<TableInfo>> = HashMap::new();
    for row in client.query(&schemas_sql(), &[]).await? {
        let name: String = row.get(0);
        if !is_internal_name(&name) {
            schemas.entry(name).or_default();
        }
    }
    for ((schema, _), table) in tables {
        schemas.entry(schema).or_default().push(table);
    }
    let mut schemas: Vec<SchemaInfo> = schemas
        .into_iter()
        .map(|(name, tables)| SchemaInfo { name, tables })
        .collect();
    schemas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Catalog { schemas })
}
