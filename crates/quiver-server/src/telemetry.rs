//! Logging and tracing set-up.
//!
//! Spans are named after what they cover (`flight.do_get.statement`, `query.plan`,
//! `query.execute`, `storage.sqlite.read`, …) and carry OpenTelemetry-style fields
//! (`db.system.name`, `db.query.text`), so an OpenTelemetry exporter can be attached to
//! the same subscriber. Verbosity comes from `QUIVER_LOG` (or `RUST_LOG`), e.g.
//! `QUIVER_LOG=quiver=debug`; the default is `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: human-readable lines on stderr (colored on a
/// terminal only).
pub fn init() {
    let filter = std::env::var("QUIVER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Most bytes of a client's SQL recorded in a span: enough to recognise a statement,
/// never the megabytes a client may send.
const SHOWN_SQL: usize = 2048;

/// The start of `sql`, as spans record it.
pub fn shown_sql(sql: &str) -> &str {
    if sql.len() <= SHOWN_SQL {
        return sql;
    }
    let mut end = SHOWN_SQL;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}
