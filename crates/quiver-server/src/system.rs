//! The server's system tables, in the `system` schema of the `quiver` catalog:
//!
//! | table | rows |
//! |---|---|
//! | `queries` | the query history (running queries last, status `RUNNING`) |
//! | `slow_queries` | queries over the slow-query threshold |
//! | `transactions` | open Flight SQL transactions |
//! | `pool` | the store's connection pool |
//! | `subscriptions` | open subscriptions and how far behind each is |
//! | `tables` | the store's tables and views as the catalog read them |
//! | `settings` | the effective configuration, and which settings change live |
//!
//! A principal without the admin role sees only its own queries, no transactions or
//! subscriptions (they are not named by principal), no settings and not where the
//! store is. A scan without a viewer (no query path makes one) shows none of these.

use std::sync::{Arc, RwLock};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use quiver_query::QueryEngine;
use quiver_query::system::{SystemTable, Viewer};

use crate::history::{QueryLog, QueryRecord};
use crate::subscriptions::Hub;
use crate::writes::Writer;

type Rows = datafusion::error::Result<RecordBatch>;

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Rows {
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn text(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn int(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Whether `viewer` sees every principal's rows; a scan that names no viewer (none
/// of the query paths) sees none.
fn sees_all(viewer: Option<&Viewer>) -> bool {
    viewer.is_some_and(|v| v.sees_all)
}

/// The effective settings, as `system.settings` shows them (replaced on reload).
pub type Settings = Arc<RwLock<Vec<(String, String, bool)>>>;

/// Registers every system table on `engine`.
pub fn register(
    engine: &Arc<QueryEngine>,
    writer: &Arc<Writer>,
    hub: &Arc<Hub>,
    history: &Arc<QueryLog>,
    settings: &Settings,
) -> crate::Result<()> {
    let add = |name: &str, schema: SchemaRef, rows: quiver_query::system::Rows| {
        engine
            .register_system_table(name, SystemTable::new(schema, rows))
            .map_err(crate::Error::from)
    };
    let schema = query_schema();
    {
        let history = Arc::clone(history);
        let schema = Arc::clone(&schema);
        add(
            "queries",
            Arc::clone(&schema),
            Arc::new(move |viewer| query_rows(&schema, history.queries(), viewer)),
        )?;
    }
    {
        let history = Arc::clone(history);
        let schema = Arc::clone(&schema);
        add(
            "slow_queries",
            Arc::clone(&schema),
            Arc::new(move |viewer| query_rows(&schema, history.slow_queries(), viewer)),
        )?;
    }
    {
        let writer = Arc::clone(writer);
        let schema = Arc::new(Schema::new(vec![
            Field::new("connection", DataType::Utf8, false),
            Field::new("idle_ms", DataType::Int64, false),
            Field::new("in_use", DataType::Boolean, false),
        ]));
        add(
            "transactions",
            Arc::clone(&schema),
            Arc::new(move |viewer| {
                let open = if sees_all(viewer) {
                    writer.transactions()
                } else {
                    Vec::new()
                };
                batch(
                    &schema,
                    vec![
                        text(open.iter().map(|t| t.connection.clone())),
                        int(open.iter().map(|t| as_i64(t.idle.as_millis() as u64))),
                        Arc::new(BooleanArray::from(
                            open.iter().map(|t| t.in_use).collect::<Vec<_>>(),
                        )),
                    ],
                )
            }),
        )?;
    }
    {
        let engine_for_pool = Arc::clone(engine);
        let names = [
            "max_size",
            "connections",
            "idle",
            "in_use",
            "waiting",
            "acquired",
            "acquire_timeouts",
            "connections_created",
            "connections_broken",
            "connections_retired",
            "connect_errors",
            "leaks_detected",
            "acquire_wait_p50_us",
            "acquire_wait_p99_us",
            "acquire_wait_max_us",
        ];
        let mut fields = vec![
            Field::new("store", DataType::Utf8, false),
            Field::new("reachable", DataType::Boolean, false),
        ];
        fields.extend(names.iter().map(|n| Field::new(*n, DataType::Int64, false)));
        let schema = Arc::new(Schema::new(fields));
        add(
            "pool",
            Arc::clone(&schema),
            Arc::new(move |viewer| {
                let store = engine_for_pool.store();
                let p = store.pool_status();
                let w = &p.acquire_wait;
                let values = [
                    u64::from(p.max_size),
                    u64::from(p.connections),
                    u64::from(p.idle),
                    u64::from(p.in_use),
                    p.waiting,
                    p.acquired,
                    p.acquire_timeouts,
                    p.connections_created,
                    p.connections_broken,
                    p.connections_retired,
                    p.connect_errors,
                    p.leaks_detected,
                    w.quantile_micros(0.5),
                    w.quantile_micros(0.99),
                    w.max_micros,
                ];
                // Where the store is (a path, a host) is for operators.
                let described = if sees_all(viewer) {
                    store.describe()
                } else {
                    store.system_name().to_owned()
                };
                let mut columns = vec![
                    text([described]),
                    Arc::new(BooleanArray::from(vec![p.reachable])) as ArrayRef,
                ];
                columns.extend(values.into_iter().map(|v| int([as_i64(v)])));
                batch(&schema, columns)
            }),
        )?;
    }
    {
        let hub = Arc::clone(hub);
        let schema = Arc::new(Schema::new(vec![
            Field::new("subscription_id", DataType::Int64, false),
            Field::new("delivered_version", DataType::Int64, false),
            Field::new("lag_versions", DataType::Int64, false),
        ]));
        add(
            "subscriptions",
            Arc::clone(&schema),
            Arc::new(move |viewer| {
                let latest = hub.latest();
                // Subscriptions are not named by principal: operators see them.
                let open = if sees_all(viewer) {
                    hub.positions()
                } else {
                    Vec::new()
                };
                batch(
                    &schema,
                    vec![
                        int(open.iter().map(|(id, _)| as_i64(*id))),
                        int(open.iter().map(|(_, at)| as_i64(*at))),
                        int(open
                            .iter()
                            .map(|(_, at)| as_i64(latest.saturating_sub(*at)))),
                    ],
                )
            }),
        )?;
    }
    {
        let engine_for_tables = Arc::clone(engine);
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("table_name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("columns", DataType::Int64, false),
            Field::new("primary_key", DataType::Utf8, false),
            Field::new("indexes", DataType::Int64, false),
            Field::new("estimated_rows", DataType::Int64, true),
        ]));
        add(
            "tables",
            Arc::clone(&schema),
            Arc::new(move |_| {
                let catalog = engine_for_tables.catalog();
                let tables: Vec<_> = catalog.tables().collect();
                batch(
                    &schema,
                    vec![
                        text(tables.iter().map(|t| t.schema.clone())),
                        text(tables.iter().map(|t| t.name.clone())),
                        text(tables.iter().map(|t| t.kind.as_str().to_owned())),
                        int(tables.iter().map(|t| t.columns.len() as i64)),
                        text(tables.iter().map(|t| t.primary_key.join(", "))),
                        int(tables.iter().map(|t| t.indexes.len() as i64)),
                        Arc::new(Int64Array::from(
                            tables
                                .iter()
                                .map(|t| t.estimated_rows.map(as_i64))
                                .collect::<Vec<_>>(),
                        )),
                    ],
                )
            }),
        )?;
    }
    {
        let settings = Arc::clone(settings);
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("changes_live", DataType::Boolean, false),
        ]));
        add(
            "settings",
            Arc::clone(&schema),
            Arc::new(move |viewer| {
                // Paths and addresses are for operators.
                let settings = if sees_all(viewer) {
                    settings.read().expect("never poisoned").clone()
                } else {
                    Vec::new()
                };
                batch(
                    &schema,
                    vec![
                        text(settings.iter().map(|(name, _, _)| name.clone())),
                        text(settings.iter().map(|(_, value, _)| value.clone())),
                        Arc::new(BooleanArray::from(
                            settings
                                .iter()
                                .map(|(_, _, live)| *live)
                                .collect::<Vec<_>>(),
                        )),
                    ],
                )
            }),
        )?;
    }
    Ok(())
}

/// The columns of `system.queries` and `system.slow_queries`.
fn query_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Int64, false),
        Field::new(
            "started_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("surface", DataType::Utf8, false),
        Field::new("principal", DataType::Utf8, false),
        Field::new("client_address", DataType::Utf8, false),
        Field::new("sql", DataType::Utf8, false),
        Field::new("store_sql", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, true),
    ]))
}

fn query_rows(schema: &SchemaRef, records: Vec<Arc<QueryRecord>>, viewer: Option<&Viewer>) -> Rows {
    let shown: Vec<Arc<QueryRecord>> = match viewer {
        Some(viewer) if viewer.sees_all => records,
        Some(viewer) => records
            .into_iter()
            .filter(|r| r.principal == viewer.principal)
            .collect(),
        None => Vec::new(),
    };
    let columns: Vec<ArrayRef> = vec![
        int(shown.iter().map(|r| as_i64(r.id))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(shown.iter().map(|r| r.started_at_micros))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from(
            shown
                .iter()
                .map(|r| r.duration.map(|d| d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>(),
        )),
        text(shown.iter().map(|r| r.status.to_owned())),
        Arc::new(StringArray::from(
            shown.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
        )),
        int(shown.iter().map(|r| as_i64(r.rows))),
        int(shown.iter().map(|r| as_i64(r.bytes))),
        text(shown.iter().map(|r| r.surface.to_owned())),
        text(shown.iter().map(|r| r.principal.clone())),
        text(shown.iter().map(|r| r.client_address.clone())),
        text(shown.iter().map(|r| r.sql.clone())),
        text(shown.iter().map(|r| r.store_sql.join(";\n"))),
        Arc::new(StringArray::from(
            shown.iter().map(|r| r.trace_id.clone()).collect::<Vec<_>>(),
        )),
    ];
    batch(schema, columns)
}
