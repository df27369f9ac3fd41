//! Reading SQLite's catalog through its pragmas.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::types::{ObservedClasses, arrow_type_for_declared};
use crate::catalog::{
    Catalog, ColumnInfo, ForeignKey, ForeignKeyAction, IndexInfo, SchemaInfo, TableInfo, TableKind,
};
use crate::dialect::{SQLITE_SCHEMA, is_internal_name};
use crate::error::Result;

/// Rows sampled to infer the type of a column that has no declared type.
const INFERENCE_SAMPLE_ROWS: usize = 100;

/// Reads the catalog of the `main` database. Blocking.
pub(crate) fn read_catalog(conn: &Connection) -> Result<Catalog> {
    let has_stats: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_stat1'",
        [],
        |row| row.get(0),
    )?;
    let mut tables = Vec::new();
    for (name, kind) in relations(conn)? {
        let mut table = read_table(conn, &name, kind)?;
        if has_stats {
            table.estimated_rows = estimated_rows(conn, &name)?;
        }
        tables.push(table);
    }
    Ok(Catalog {
        schemas: vec![SchemaInfo {
            name: SQLITE_SCHEMA.to_owned(),
            tables,
        }],
    })
}

/// The base tables of the `main` database as `conn` sees them (its own uncommitted
/// DDL included), without planner estimates. Blocking.
pub(crate) fn base_tables(conn: &Connection) -> Result<Vec<TableInfo>> {
    relations(conn)?
        .into_iter()
        .filter(|(_, kind)| *kind == TableKind::Table)
        .map(|(name, kind)| read_table(conn, &name, kind))
        .collect()
}

/// The user's tables and views of `main`, by name: SQLite's own and Quiver's left out.
fn relations(conn: &Connection) -> Result<Vec<(String, TableKind)>> {
    let mut statement = conn.prepare_cached(
        "SELECT name, type FROM main.sqlite_schema
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY name",
    )?;
    let relations = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(relations
        .into_iter()
        .filter(|(name, _)| !is_internal_name(name))
        .map(|(name, kind)| {
            let kind = if kind == "view" {
                TableKind::View
            } else {
                TableKind::Table
            };
            (name, kind)
        })
        .collect())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn read_table(conn: &Connection, name: &str, kind: TableKind) -> Result<TableInfo> {
    struct RawColumn {
        name: String,
        declared: String,
        not_null: bool,
        default: Option<String>,
        pk_position: i64,
    }
    let mut statement =
        conn.prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")?;
    let raw = statement
        .query_map([name], |row| {
            Ok(RawColumn {
                name: row.get(0)?,
                declared: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                not_null: row.get(2)?,
                default: row.get(3)?,
                pk_position: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;

    let mut primary_key: Vec<(i64, String)> = raw
        .iter()
        .filter(|c| c.pk_position > 0)
        .map(|c| (c.pk_position, c.name.clone()))
        .collect();
    primary_key.sort();
    let primary_key: Vec<String> = primary_key.into_iter().map(|(_, name)| name).collect();
    // `INTEGER PRIMARY KEY` aliases the rowid, which is never NULL.
    let rowid_alias = match raw
        .iter()
        .filter(|c| c.pk_position > 0)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [only] if only.declared.eq_ignore_ascii_case("INTEGER") => Some(only.name.clone()),
        _ => None,
    };

    let untyped: Vec<usize> = raw
        .iter()
        .enumerate()
        .filter(|(_, c)| arrow_type_for_declared(&c.declared).is_none())
        .map(|(i, _)| i)
        .collect();
    let inferred = if untyped.is_empty() {
        Vec::new()
    } else {
        infer_types(
            conn,
            name,
            &raw.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            &untyped,
        )?
    };

    let column_names: Vec<String> = raw.iter().map(|c| c.name.clone()).collect();
    let columns = raw
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let data_type = arrow_type_for_declared(&c.declared).unwrap_or_else(|| {
                inferred
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, classes)| classes.arrow_type())
                    .unwrap_or(arrow::datatypes::DataType::Utf8)
            });
            let nullable = !c.not_null && rowid_alias.as_deref() != Some(c.name.as_str());
            ColumnInfo {
                name: c.name,
                declared_type: c.declared,
                data_type,
                nullable,
                default: c.default,
                read_as_text: false,
            }
        })
        .collect();

    Ok(TableInfo {
        schema: SQLITE_SCHEMA.to_owned(),
        name: name.to_owned(),
        kind,
        columns,
        foreign_keys: read_foreign_keys(conn, name)?,
        primary_key,
        indexes: if kind == TableKind::Table {
            read_indexes(conn, name)?
        } else {
            Vec::new()
        },
        estimated_rows: None,
        range_key: if kind == TableKind::Table {
            rowid_name(conn, name, &column_names)?
        } else {
            None
        },
    })
}

/// How to name the rowid of `table`: the first of SQLite's three spellings no column
/// shadows, or `None` for `WITHOUT ROWID` tables.
fn rowid_name(conn: &Connection, table: &str, columns: &[String]) -> Result<Option<String>> {
    let Some(name) = ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|candidate| !columns.iter().any(|c| c.eq_ignore_ascii_case(candidate)))
    else {
        return Ok(None);
    };
    match conn.prepare(&format!("SELECT {name} FROM {} LIMIT 0", quote(table))) {
        Ok(_) => Ok(Some(name.to_owned())),
        Err(rusqlite::Error::SqliteFailure(_, _)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// The row count `ANALYZE` recorded in `sqlite_stat1` (the first number of a stat row).
fn estimated_rows(conn: &Connection, table: &str) -> Result<Option<u64>> {
    let mut statement =
        conn.prepare_cached("SELECT stat FROM sqlite_stat1 WHERE tbl = ?1 LIMIT 1")?;
    let stat: Option<String> = statement
        .query_row([table], |row| row.get(0))
        .map(Some)
        .or_else(|err| match err {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            err => Err(err),
        })?;
    Ok(stat.and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok())))
}

/// Samples stored values of the untyped columns to pick their Arrow types.
fn infer_types(
    conn: &Connection,
    table: &str,
    columns: &[&str],
    untyped: &[usize],
) -> Result<Vec<(usize, ObservedClasses)>> {
    let select = untyped
        .iter()
        .map(|&i| quote(columns[i]))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {select} FROM {} LIMIT {INFERENCE_SAMPLE_ROWS}",
        quote(table)
    );
    let mut observed = vec![ObservedClasses::default(); untyped.len()];
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        for (slot, classes) in observed.iter_mut().enumerate() {
            classes.observe(row.get_ref(slot)?);
        }
    }
    Ok(untyped.iter().copied().zip(observed).collect())
}

fn read_foreign_keys(conn: &Connection, table: &str) -> Result<Vec<ForeignKey>> {
    let mut statement = conn.prepare(
        "SELECT id, seq, \"table\", \"from\", \"to\", on_update, on_delete
         FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
    )?;
    let mut grouped: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    let mut missing_targets: Vec<i64> = Vec::new();
    let mut rows = statement.query([table])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let referenced_table: String = row.get(2)?;
        let from: String = row.get(3)?;
        let to: Option<String> = row.get(4)?;
        let on_update: String = row.get(5)?;
        let on_delete: String = row.get(6)?;
        let key = grouped.entry(id).or_insert_with(|| ForeignKey {
            name: None,
            columns: Vec::new(),
            referenced_schema: SQLITE_SCHEMA.to_owned(),
            referenced_table,
            referenced_columns: Vec::new(),
            on_update: ForeignKeyAction::parse(&on_update),
            on_delete: ForeignKeyAction::parse(&on_delete),
        });
        key.columns.push(from);
        match to {
            Some(to) => key.referenced_columns.push(to),
            None => missing_targets.push(id),
        }
    }
    // `REFERENCES parent` without columns refers to the parent's primary key.
    for id in missing_targets {
        let Some(key) = grouped.get_mut(&id) else {
            continue;
        };
        if key.referenced_columns.len() == key.columns.len() {
            continue;
        }
        let mut parent_key =
            conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
        key.referenced_columns = parent_key
            .query_map([&key.referenced_table], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
    }
    Ok(grouped.into_values().collect())
}

fn read_indexes(conn: &Connection, table: &str) -> Result<Vec<IndexInfo>> {
    let mut list =
        conn.prepare("SELECT name, \"unique\" FROM pragma_index_list(?1) ORDER BY name")?;
    let indexes = list
        .query_map([table], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut info = conn.prepare(
        "SELECT coalesce(name, '<expression>') FROM pragma_index_info(?1) ORDER BY seqno",
    )?;
    indexes
        .into_iter()
        .map(|(name, unique)| {
            let columns = info
                .query_map([&name], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(IndexInfo {
                name,
                columns,
                unique,
            })
        })
        .collect()
}
