//! What SQLite itself refuses on Quiver's connections: the authorizer that keeps
//! client statements away from Quiver's own objects, and the value checks that keep a
//! table readable.
//!
//! # The authorizer
//! SQLite asks the authorizer about every table, trigger and pragma a statement
//! touches while it prepares it. On the writer connection, statements of Quiver's own
//! (the change log, commits, capture triggers) run *trusted*; everything a client
//! sends — DML, DDL, bulk loads, Mutations — runs untrusted and may not read or
//! change a `_quiver…` object (except through Quiver's own `TEMP` triggers, which is
//! how its changes are captured), create temporary objects on the shared connection,
//! change pragmas, attach databases or end the transaction. On reader connections a
//! `_quiver…` table may be read only directly by Quiver, never through a view.
//!
//! # Value checks
//! SQLite stores any value in any column; Quiver reads each column as one Arrow type
//! and a value that does not convert would fail every later query of the table. So
//! the writer keeps `TEMP` triggers before every insert and update that call
//! `quiver_check(table, column, type, value, …)`, which applies the reader's own
//! conversion ([`ReadType::decode`]) and refuses, naming the column, what the reader
//! could not read back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;

use super::read::{ReadType, describe};
use crate::catalog::TableInfo;
use crate::dialect::{Dialect, is_internal_name};
use crate::error::Result;

/// Whether the statements running on the writer now are Quiver's own, and what the
/// authorizer has seen of the current call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust(Arc<TrustState>);

#[derive(Debug, Default)]
struct TrustState {
    trusted: AtomicBool,
    /// The table a client's `DROP TABLE` of this call drops: its `TEMP` triggers
    /// (Quiver's) are dropped with it.
    dropping: Mutex<Option<String>>,
}

impl Trust {
    /// Marks the writer's statements trusted (or not) until the returned guard drops;
    /// a new call starts with nothing seen.
    pub(crate) fn scope(&self, trusted: bool) -> TrustScope {
        let before = self.0.trusted.swap(trusted, Ordering::AcqRel);
        self.set_dropping(None);
        TrustScope {
            trust: self.clone(),
            before,
        }
    }

    fn trusted(&self) -> bool {
        self.0.trusted.load(Ordering::Acquire)
    }

    fn set_dropping(&self, table: Option<&str>) {
        if let Ok(mut dropping) = self.0.dropping.lock() {
            *dropping = table.map(str::to_owned);
        }
    }

    fn dropping(&self, table: &str) -> bool {
        self.0
            .dropping
            .lock()
            .is_ok_and(|dropping| dropping.as_deref() == Some(table))
    }
}

/// Restores the writer's trust when dropped.
pub(crate) struct TrustScope {
    trust: Trust,
    before: bool,
}

impl Drop for TrustScope {
    fn drop(&mut self) {
        self.trust.0.trusted.store(self.before, Ordering::Release);
    }
}

/// Whether the innermost trigger or view behind an access is one of Quiver's.
fn quiver_trigger(accessor: Option<&str>) -> bool {
    accessor.is_some_and(|name| {
        let name = name.to_ascii_lowercase();
        name.starts_with("_quiver_capture_") || name.starts_with("_quiver_check_")
    })
}

/// The writer's rule for one access by a client statement.
fn client_access(context: &AuthContext<'_>, trust: &Trust) -> Authorization {
    use AuthAction as A;
    if quiver_trigger(context.accessor) {
        return Authorization::Allow;
    }
    if let A::DropTable { table_name } = context.action {
        trust.set_dropping(Some(table_name));
    }
    let internal = |name: &str| is_internal_name(name);
    let temp = context.database_name == Some("temp");
    let refused = match context.action {
        A::Read { table_name, .. }
        | A::Insert { table_name }
        | A::Delete { table_name }
        | A::Update { table_name, .. } => {
            internal(table_name)
                || (temp
                    && !matches!(context.action, A::Read { .. } | A::Delete { .. })
                    && table_name != "sqlite_temp_master")
        }
        A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::Analyze { table_name } => internal(table_name),
        A::CreateIndex {
            index_name,
            table_name,
        }
        | A::DropIndex {
            index_name,
            table_name,
        } => internal(index_name) || internal(table_name),
        A::CreateTrigger {
            trigger_name,
            table_name,
        }
        | A::DropTrigger {
            trigger_name,
            table_name,
        } => internal(trigger_name) || internal(table_name),
        A::CreateView { view_name } | A::DropView { view_name } => internal(view_name),
        A::Reindex { index_name } => internal(index_name),
        // A client's temporary objects would live on a connection other clients share.
        A::CreateTempTable { .. }
        | A::CreateTempIndex { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. }
        | A::DropTempTable { .. }
        | A::DropTempIndex { .. }
        | A::DropTempView { .. } => true,
        // Dropping a table drops Quiver's TEMP triggers on it, but they are never
        // dropped alone.
        A::DropTempTrigger { table_name, .. } => !trust.dropping(table_name),
        A::Pragma { .. }
        | A::Attach { .. }
        | A::Detach { .. }
        | A::Transaction { .. }
        | A::Savepoint { .. }
        | A::CreateVtable { .. }
        | A::DropVtable { .. } => true,
        A::Function { function_name } => {
            function_name.eq_ignore_ascii_case("load_extension")
                || function_name.eq_ignore_ascii_case("quiver_check")
        }
        _ => false,
    };
    if refused {
        Authorization::Deny
    } else {
        Authorization::Allow
    }
}

/// Installs the writer's authorizer and value-check function on `conn`.
pub(crate) fn install_writer(conn: &mut Connection, trust: &Trust) -> Result<()> {
    let trust = trust.clone();
    conn.authorizer(Some(move |context: AuthContext<'_>| {
        if trust.trusted() {
            Authorization::Allow
        } else {
            client_access(&context, &trust)
        }
    }))?;
    conn.create_scalar_function(
        "quiver_check",
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |context| {
            // (table, then (column, type, value) per checked column)
            let table = context.get::<String>(0)?;
            let mut index = 1;
            while index + 2 < context.len() {
                let column = context.get::<String>(index)?;
                let tag = context.get::<String>(index + 1)?;
                let value = context.get_raw(index + 2);
                if let Some(problem) = unreadable(&tag, value) {
                    return Err(rusqlite::Error::UserFunctionError(
                        format!("table '{table}', column '{column}': {problem}").into(),
                    ));
                }
                index += 3;
            }
            Ok(rusqlite::types::Null)
        },
    )?;
    Ok(())
}

/// Why the reader could not read `value` back as the type `tag` names, if it could not.
fn unreadable(tag: &str, value: ValueRef<'_>) -> Option<String> {
    let read_type = ReadType::from_tag(tag)?;
    if let ValueRef::Real(v) = value
        && !v.is_finite()
    {
        return Some(format!(
            "{} cannot be stored (not a finite number)",
            describe(value)
        ));
    }
    match read_type.decode(value) {
        Some(_) => None,
        None => Some(format!(
            "{} cannot be read back as {}",
            describe(value),
            read_type.arrow_name()
        )),
    }
}

/// Installs the readers' authorizer: Quiver's tables are read only directly.
pub(crate) fn install_reader(conn: &mut Connection) -> Result<()> {
    conn.authorizer(Some(|context: AuthContext<'_>| match context.action {
        AuthAction::Read { table_name, .. }
            if is_internal_name(table_name) && context.accessor.is_some() =>
        {
            Authorization::Deny
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        _ => Authorization::Allow,
    }))?;
    Ok(())
}

/// The writer's `TEMP` value-check triggers of one table, dropped and recreated
/// (its columns may have changed); empty when no column needs a check.
pub(crate) fn check_triggers_sql(table: &TableInfo) -> String {
    let quote = |name: &str| Dialect::Sqlite.quote_identifier(name);
    let text = |value: &str| format!("'{}'", value.replace('\'', "''"));
    let checks: Vec<String> = table
        .columns
        .iter()
        .filter_map(|column| {
            let read_type = ReadType::of(&column.data_type)?;
            // Every value reads back as bytes.
            (read_type != ReadType::Binary).then(|| {
                format!(
                    "{}, {}, NEW.{}",
                    text(&column.name),
                    text(&read_type.tag()),
                    quote(&column.name)
                )
            })
        })
        .collect();
    let target = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let mut sql = String::new();
    for event in ["INSERT", "UPDATE"] {
        let trigger = quote(&format!(
            "_quiver_check_{}_{}",
            event.to_ascii_lowercase(),
            table.name
        ));
        sql.push_str(&format!("DROP TRIGGER IF EXISTS temp.{trigger};\n"));
        if checks.is_empty() {
            continue;
        }
        sql.push_str(&format!(
            "CREATE TEMP TRIGGER {trigger} BEFORE {event} ON {target} BEGIN
                 SELECT quiver_check({}, {});
             END;\n",
            text(&table.name),
            checks.join(", ")
        ));
    }
    sql
}
