//! Running a planned request in one transaction of the write path: idempotent
//! replays answered from the stored response, the commit version returned.

use std::collections::BTreeMap;

use prost::Message;
use quiver_proto::v1::{self as pb, MutateResponse, OperationResult};
use quiver_storage::{ColumnInfo, CommitOptions, IdempotencyRecord, StoredResponse, Transaction};

use super::convert::proto_value;
use super::plan::{Execution, Plan, Planned};
use crate::error::{Error, Result};
use crate::writes::{Finish, Writer};

/// What the transaction found or did.
enum Attempt {
    /// The idempotency key was used before: its stored response.
    Replay(StoredResponse),
    /// The operations ran.
    Written(MutateResponse),
}

/// Runs a validated plan in one transaction of `writer`: answers a replay of an
/// idempotent request from its stored response, or writes and commits.
pub(super) async fn run(writer: &Writer, plan: Plan) -> Result<MutateResponse> {
    let Plan {
        operations,
        idempotency_key,
        request_hash,
    } = plan;
    let attempt = writer
        .transact(None, None, false, async |tx| {
            if let Some(key) = &idempotency_key
                && let Some(stored) = tx.stored_response(key).await?
            {
                return Ok(Finish::Nothing(Attempt::Replay(stored)));
            }
            let results = run_operations(tx, &operations).await?;
            let response = MutateResponse {
                commit_version: 0,
                affected_rows: results.iter().map(|r| r.affected_rows).sum(),
                generated_keys: results
                    .iter()
                    .flat_map(|r| r.generated_keys.iter().cloned())
                    .collect(),
                results,
                replayed: false,
            };
            let idempotency = idempotency_key.clone().map(|key| {
                let stored = response.clone();
                IdempotencyRecord {
                    key,
                    request_hash: request_hash.clone(),
                    response: Box::new(move |version| {
                        MutateResponse {
                            commit_version: version,
                            ..stored
                        }
                        .encode_to_vec()
                    }),
                }
            });
            // The trace context is the writer's to fill in.
            let options = CommitOptions {
                trace_context: None,
                idempotency,
            };
            Ok(Finish::Commit(Attempt::Written(response), options))
        })
        .await;
    match attempt {
        Ok(written) => match (written.value, written.commit) {
            (Attempt::Replay(stored), _) => replay(stored, &request_hash),
            (Attempt::Written(response), Some(commit)) => Ok(MutateResponse {
                commit_version: commit.version,
                ..response
            }),
            (Attempt::Written(_), None) => Err(Error::Internal(
                "a mutation outside a transaction was not committed".to_owned(),
            )),
        },
        // The same key committed concurrently (PostgreSQL): this attempt rolled back;
        // answer with the one that won.
        Err(Error::Storage(err)) if idempotency_key.is_some() && err.is_idempotency_conflict() => {
            let key = idempotency_key.as_deref().unwrap_or_default();
            let stored = writer
                .transact(None, None, false, async |tx| {
                    Ok(Finish::Nothing(tx.stored_response(key).await?))
                })
                .await?
                .value;
            match stored {
                Some(stored) => replay(stored, &request_hash),
                None => Err(Error::Storage(err)),
            }
        }
        Err(err) => Err(err),
    }
}

fn replay(stored: StoredResponse, request_hash: &str) -> Result<MutateResponse> {
    if stored.request_hash != request_hash {
        return Err(Error::FailedPrecondition(
            "the idempotency key was already used for a different request".to_owned(),
        ));
    }
    let mut response = MutateResponse::decode(stored.response.as_slice())
        .map_err(|err| Error::Internal(format!("stored idempotent response is corrupt: {err}")))?;
    response.replayed = true;
    Ok(response)
}

async fn run_operations(
    tx: &mut Transaction,
    operations: &[Planned],
) -> Result<Vec<OperationResult>> {
    let mut results = Vec::with_capacity(operations.len());
    for planned in operations {
        let key_columns: Vec<&ColumnInfo> = planned
            .table
            .primary_key
            .iter()
            .filter_map(|k| planned.table.column(k))
            .collect();
        let mut result = OperationResult::default();
        for step in &planned.steps {
            match step {
                Execution::Rows {
                    sql,
                    rows,
                    returns_keys,
                } => {
                    let (changed, returned) = tx.run_many(sql, rows.clone()).await?;
                    result.affected_rows += changed;
                    if *returns_keys {
                        result
                            .generated_keys
                            .extend(returned.into_iter().map(|row| {
                                pb::Row {
                                    values: key_columns
                                        .iter()
                                        .zip(row)
                                        .map(|(column, value)| {
                                            (column.name.clone(), proto_value(column, value))
                                        })
                                        .collect::<BTreeMap<_, _>>(),
                                }
                            }));
                    }
                }
                Execution::Bulk {
                    schema,
                    table,
                    columns,
                    rows,
                } => {
                    result.affected_rows +=
                        tx.bulk_insert(schema, table, columns, rows.clone()).await?;
                }
            }
        }
        results.push(result);
    }
    Ok(results)
}
