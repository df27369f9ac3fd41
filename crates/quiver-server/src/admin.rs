//! Maintenance and live settings, for principals with the admin role: the
//! `quiver.v1.Admin` gRPC service ([`AdminService`], `proto/quiver/v1/admin.proto`),
//! and Flight actions `quiver.admin.<operation>` whose body is a JSON object of
//! arguments (or empty) and whose one result is a JSON object
//! `{"operation", "result", "duration_ms"}`.
//!
//! | operation | arguments | does |
//! |---|---|---|
//! | `analyze` | | refreshes the store's planner statistics |
//! | `vacuum` | | reclaims space (SQLite rewrites the file; PostgreSQL `VACUUM`) |
//! | `reindex` | | rebuilds every index |
//! | `checkpoint` | | SQLite: writes the WAL back into the database and truncates it |
//! | `backup` | `{"file": "name.db"}` | SQLite: online backup into `backup_dir`, checked |
//! | `prune_change_log` | | drops commits and idempotency keys past retention now |
//! | `config` | | the effective settings |
//! | `reload_config` | | re-reads the config file, applies what changes live |
//! | `set_log_filter` | `{"filter": "info,quiver_server=debug"}` | changes the log filter |
//! | `set_slow_query_ms` | `{"ms": 250}` | changes the slow-query threshold |
//!
//! Settings changed by a call last until the next reload or restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_proto::v1 as pb;
use quiver_storage::Dialect;
use serde_json::{Value as Json, json};
use tracing::Instrument;

use crate::Config;
use crate::error::{Error, Result};
use crate::history::QueryLog;
use crate::system::Settings;
use crate::writes::Writer;

/// The prefix of the admin Flight actions.
pub const ACTION_PREFIX: &str = "quiver.admin.";

/// The operations, with what each does (for `ListActions`).
pub const OPERATIONS: &[(&str, &str)] = &[
    (
        "analyze",
        "Refresh the store's planner statistics (ANALYZE)",
    ),
    ("vacuum", "Reclaim space (VACUUM)"),
    ("reindex", "Rebuild every index (REINDEX)"),
    (
        "checkpoint",
        "SQLite: checkpoint and truncate the write-ahead log",
    ),
    (
        "backup",
        "SQLite: online backup to {\"file\": NAME} in backup_dir, integrity-checked",
    ),
    (
        "prune_change_log",
        "Drop change-log commits and idempotency keys past retention now",
    ),
    ("config", "The effective settings"),
    (
        "reload_config",
        "Re-read the config file and apply the settings that change live",
    ),
    (
        "set_log_filter",
        "Change the log filter: {\"filter\": \"info\"}",
    ),
    (
        "set_slow_query_ms",
        "Change the slow-query threshold: {\"ms\": 1000}",
    ),
];

/// Maintenance and live settings of one server.
#[derive(Debug)]
pub struct Admin {
    writer: Arc<Writer>,
    auth: Arc<crate::auth::Auth>,
    tls: Option<Arc<crate::listen::Tls>>,
    history: Arc<QueryLog>,
    settings: Settings,
    config: Mutex<Config>,
}

impl Admin {
    /// The admin operations over `writer`'s store, with `config` in force.
    pub fn new(
        writer: Arc<Writer>,
        auth: Arc<crate::auth::Auth>,
        tls: Option<Arc<crate::listen::Tls>>,
        history: Arc<QueryLog>,
        settings: Settings,
        config: Config,
    ) -> Self {
        Self {
            writer,
            auth,
            tls,
            history,
            settings,
            config: Mutex::new(config),
        }
    }

    /// Runs `operation` with `args`; the JSON answer.
    pub async fn run(&self, operation: &str, args: &[u8]) -> Result<Json> {
        let args: Json = if args.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(args).map_err(|err| {
                Error::InvalidRequest(format!(
                    "the arguments of {operation} are not a JSON object: {err}"
                ))
            })?
        };
        let started = Instant::now();
        let result = self
            .operation(operation, &args)
            .instrument(tracing::info_span!("admin", operation = %operation))
            .await?;
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(operation, duration_ms, %result, "admin operation done");
        Ok(json!({"operation": operation, "result": result, "duration_ms": duration_ms}))
    }

    async fn operation(&self, operation: &str, args: &Json) -> Result<Json> {
        let store = self.writer.engine().store();
        let dialect = store.dialect();
        let script = |sql: String| async move {
            store.execute_script(sql.clone()).await?;
            Ok::<_, Error>(json!({"statements": sql}))
        };
        match operation {
            "analyze" => script("ANALYZE".to_owned()).await,
            "vacuum" => script("VACUUM".to_owned()).await,
            "reindex" => match dialect {
                Dialect::Sqlite => script("REINDEX".to_owned()).await,
                Dialect::Postgres => {
                    let catalog = self.writer.engine().catalog();
                    let mut schemas: Vec<String> =
                        catalog.schemas.iter().map(|s| s.name.clone()).collect();
                    schemas.push("_quiver".to_owned());
                    // One by one: REINDEX SCHEMA refuses to run inside the transaction
                    // PostgreSQL makes of several statements sent together.
                    let mut done = Vec::new();
                    for schema in schemas {
                        let sql = format!("REINDEX SCHEMA {}", dialect.quote_identifier(&schema));
                        store.execute_script(sql.clone()).await?;
                        done.push(sql);
                    }
                    Ok(json!({"statements": done.join(";\n")}))
                }
            },
            "checkpoint" => match dialect {
                Dialect::Sqlite => script("PRAGMA wal_checkpoint(TRUNCATE)".to_owned()).await,
                Dialect::Postgres => Err(Error::FailedPrecondition(
                    "checkpoint is for SQLite's write-ahead log; PostgreSQL checkpoints itself"
                        .to_owned(),
                )),
            },
            "backup" => self.backup(args).await,
            "prune_change_log" => {
                let pruned = self.writer.prune().await?;
                Ok(json!({"commits_pruned": pruned}))
            }
            "config" => Ok(self.settings_json()),
            "reload_config" => self.reload(),
            "set_log_filter" => {
                let filter = args["filter"].as_str().ok_or_else(|| {
                    Error::InvalidRequest("set_log_filter takes {\"filter\": \"…\"}".to_owned())
                })?;
                crate::telemetry::set_log_filter(filter).map_err(Error::InvalidRequest)?;
                let mut config = self.config.lock().expect("never poisoned");
                config.log = Some(filter.to_owned());
                *self.settings.write().expect("never poisoned") = config.settings();
                Ok(json!({"log": filter}))
            }
            "set_slow_query_ms" => {
                let ms = args["ms"].as_u64().ok_or_else(|| {
                    Error::InvalidRequest("set_slow_query_ms takes {\"ms\": N} (N ≥ 0)".to_owned())
                })?;
                let mut config = self.config.lock().expect("never poisoned");
                config.history.slow_threshold = Duration::from_millis(ms);
                self.history.set_config(config.history);
                *self.settings.write().expect("never poisoned") = config.settings();
                Ok(json!({"slow_query_ms": ms}))
            }
            other => Err(Error::InvalidRequest(format!(
                "unknown admin operation '{other}' (one of: {})",
                OPERATIONS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// `backup {"file": NAME}`: an online copy of the SQLite database into the backup
    /// directory, refused over an existing file, checked by `integrity_check`.
    async fn backup(&self, args: &Json) -> Result<Json> {
        let dir = self
            .config
            .lock()
            .expect("never poisoned")
            .backup_dir
            .clone()
            .ok_or_else(|| {
                Error::FailedPrecondition("backups are off: configure backup_dir".to_owned())
            })?;
        let name = args["file"].as_str().ok_or_else(|| {
            Error::InvalidRequest(
                "backup takes {\"file\": \"NAME\"}, a file name in backup_dir".to_owned(),
            )
        })?;
        let plain = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain {
            return Err(Error::InvalidRequest(format!(
                "backup file {name:?}: a plain name of letters, digits, '.', '_' and '-' (not starting with '.')"
            )));
        }
        if self.writer.engine().store().dialect() != Dialect::Sqlite {
            return Err(Error::FailedPrecondition(
                "backup is for SQLite; back PostgreSQL up with pg_dump or its own tools".to_owned(),
            ));
        }
        let path: PathBuf = dir.join(name);
        // Created here, new and private: an existing file or symlink is refused, and
        // two backups to one name cannot both write it.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
        match create.open(&path) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(format!(
                    "backup file {name} already exists in {}",
                    dir.display()
                )));
            }
            Err(err) => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot create {}: {err}",
                    path.display()
                )));
            }
        }
        let store = self.writer.engine().store();
        let outcome = store.backup_sqlite(path.clone()).await;
        let (check, pages) = match outcome {
            Ok(Some(checked)) => checked,
            Ok(None) => {
                let _ = std::fs::remove_file(&path);
                return Err(Error::FailedPrecondition(
                    "backup is for SQLite; back PostgreSQL up with pg_dump or its own tools"
                        .to_owned(),
                ));
            }
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                // The store answered; the copy could not be written (a full disk, a
                // directory gone or not writable): nothing a retry fixes.
                return Err(Error::FailedPrecondition(format!(
                    "the backup to {} failed: {err}",
                    path.display()
                )));
            }
        };
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if check != "ok" {
            return Err(Error::Internal(format!(
                "the backup at {} does not pass the integrity check: {check}",
                path.display()
            )));
        }
        Ok(
            json!({"path": path.display().to_string(), "integrity_check": check, "pages": pages, "bytes": bytes}),
        )
    }

    fn settings_json(&self) -> Json {
        let settings = self.settings.read().expect("never poisoned");
        Json::Array(
            settings
                .iter()
                .map(|(name, value, live)| json!({"name": name, "value": value, "changes_live": live}))
                .collect(),
        )
    }

    /// What SIGHUP does: the configuration (`reload_config`), then the auth file and the TLS
    /// certificate read again (each that does not load keeps the one in force).
    pub fn reload(&self) -> Result<Json> {
        // Each part on its own: a broken config file does not keep a new certificate out.
        let config = self.reload_config();
        let auth = match self.auth.reload() {
            Ok(()) => json!("reloaded"),
            Err(err) => {
                tracing::error!(error = %err, "the auth file does not load; keeping the previous one");
                json!(format!("kept the previous one: {err}"))
            }
        };
        let tls = self.tls.as_ref().map(|tls| match tls.reload() {
            Ok(()) => json!("reloaded"),
            Err(err) => {
                tracing::error!(error = %err, "the TLS certificate does not load; keeping the previous one");
                json!(format!("kept the previous one: {err}"))
            }
        });
        let mut outcome = config?;
        outcome["auth_file"] = auth;
        if let Some(tls) = tls {
            outcome["tls_certificate"] = tls;
        }
        Ok(outcome)
    }

    /// Re-reads the configuration (file under flags and environment) and applies what
    /// changes live; a configuration that does not load changes nothing.
    fn reload_config(&self) -> Result<Json> {
        let mut current = self.config.lock().expect("never poisoned");
        let new = current.reload()?;
        let before = current.settings();
        if let Some(filter) = &new.log
            && Some(filter) != current.log.as_ref()
        {
            crate::telemetry::set_log_filter(filter).map_err(Error::Config)?;
        }
        self.history.set_config(new.history);
        let after = new.settings();
        let mut changed = Vec::new();
        let mut at_restart = Vec::new();
        for ((name, old, live), (_, value, _)) in before.iter().zip(&after) {
            if old != value {
                if *live {
                    changed.push(name.clone());
                } else {
                    at_restart.push(name.clone());
                }
            }
        }
        if !at_restart.is_empty() {
            tracing::warn!(settings = ?at_restart, "changed in the configuration; they take effect at restart");
        }
        // What the server runs with: the new live values, the old others.
        let mut applied = current.clone();
        applied.log = new.log.clone().or(applied.log);
        applied.history = new.history;
        *self.settings.write().expect("never poisoned") = applied.settings();
        *current = applied;
        Ok(json!({"changed": changed, "take_effect_at_restart": at_restart}))
    }
}

/// The `quiver.v1.Admin` gRPC service over [`Admin`].
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Arc<Admin>,
}

impl AdminService {
    /// The service answering from `admin`.
    pub fn new(admin: Arc<Admin>) -> Self {
        Self { admin }
    }

    /// Runs `operation` for the caller of `request`, who must have the admin role.
    async fn call<T>(
        &self,
        request: &tonic::Request<T>,
        operation: &str,
        args: Json,
    ) -> std::result::Result<tonic::Response<pb::AdminResult>, tonic::Status> {
        crate::auth::principal_of(request)?
            .require(crate::auth::Role::Admin, "run admin operations")?;
        let answer = self
            .admin
            .run(operation, args.to_string().as_bytes())
            .await?;
        Ok(tonic::Response::new(pb::AdminResult {
            operation: operation.to_owned(),
            result_json: answer["result"].to_string(),
            duration_ms: answer["duration_ms"].as_f64().unwrap_or_default(),
        }))
    }
}

type Answer = std::result::Result<tonic::Response<pb::AdminResult>, tonic::Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn analyze(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "analyze", json!({})).await
    }

    async fn vacuum(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "vacuum", json!({})).await
    }

    async fn reindex(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "reindex", json!({})).await
    }

    async fn checkpoint(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "checkpoint", json!({})).await
    }

    async fn backup(&self, request: tonic::Request<pb::BackupRequest>) -> Answer {
        let file = request.get_ref().file.clone();
        self.call(&request, "backup", json!({"file": file})).await
    }

    async fn prune_change_log(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "prune_change_log", json!({})).await
    }

    async fn get_config(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "config", json!({})).await
    }

    async fn reload_config(&self, request: tonic::Request<pb::AdminRequest>) -> Answer {
        self.call(&request, "reload_config", json!({})).await
    }

    async fn set_log_filter(&self, request: tonic::Request<pb::SetLogFilterRequest>) -> Answer {
        let filter = request.get_ref().filter.clone();
        self.call(&request, "set_log_filter", json!({"filter": filter}))
            .await
    }

    async fn set_slow_query_threshold(
        &self,
        request: tonic::Request<pb::SetSlowQueryThresholdRequest>,
    ) -> Answer {
        let ms = request.get_ref().milliseconds;
        self.call(&request, "set_slow_query_ms", json!({"ms": ms}))
            .await
    }
}
