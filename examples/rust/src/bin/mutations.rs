//! A tonic client of `quiver.v1.Mutations`: an insert with an idempotency key and its
//! safe retry, an update by predicate and a delete by primary key, each answered with
//! the commit version it produced.
//!
//! ```sh
//! cargo run -p quiver-server -- serve --demo        # in one shell
//! cargo run -p quiver-examples --bin mutations      # in another
//! ```
//!
//! `QUIVER_GRPC=host:port` points it at another server (default `127.0.0.1:50051`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use quiver_proto::v1::mutations_client::MutationsClient;
use quiver_proto::v1::{
    DeleteRequest, InsertRequest, KeyList, MutateResponse, Row, Rows, Selector, UpdateRequest,
    Value, selector, value::Kind,
};

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn text(s: &str) -> Value {
    value(Kind::String(s.to_owned()))
}

fn row(values: impl IntoIterator<Item = (&'static str, Value)>) -> Row {
    Row {
        values: values
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The generated `id` of every inserted row, in order.
fn ids(response: &MutateResponse) -> Vec<i64> {
    response
        .generated_keys
        .iter()
        .filter_map(|key| match key.values.get("id")?.kind {
            Some(Kind::Int64(id)) => Some(id),
            _ => None,
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let address = std::env::var("QUIVER_GRPC").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = MutationsClient::new(channel);

    // Unique per run, so the example can be run again.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let run = now.as_micros();
    let now_micros = i64::try_from(run)?;
    let key = format!("EX-RS-{run}");
    let epic = row([
        ("key", text(&key)),
        ("title", text("Written from Rust")),
        ("status", text("planned")),
        ("priority", value(Kind::Int64(2))),
        ("created_at", value(Kind::TimestampMicros(now_micros))),
        ("updated_at", value(Kind::TimestampMicros(now_micros))),
    ]);
    let insert = InsertRequest {
        table: "epics".to_owned(),
        rows: Some(Rows {
            rows: vec![epic],
            arrow_ipc: Vec::new(),
        }),
        idempotency_key: format!("insert-{key}"),
    };

    // The first call writes; a retry with the same key is answered from the first.
    let first = client.insert(insert.clone()).await?.into_inner();
    let id = *ids(&first).first().context("the insert returned no key")?;
    println!(
        "insert: commit_version={} id={id} replayed={}",
        first.commit_version, first.replayed
    );
    let retry = client.insert(insert).await?.into_inner();
    println!(
        "retry:  commit_version={} id={} replayed={}",
        retry.commit_version,
        ids(&retry).first().copied().unwrap_or_default(),
        retry.replayed
    );
    if !retry.replayed || retry.commit_version != first.commit_version {
        bail!("the retry was not answered from the first call");
    }

    // Rows chosen by a predicate over the table's columns.
    let update = client
        .update(UpdateRequest {
            table: "epics".to_owned(),
            r#where: Some(Selector {
                target: Some(selector::Target::Predicate(format!("key = '{key}'"))),
            }),
            set: Some(row([("status", text("active"))])),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "update: commit_version={} affected_rows={}",
        update.commit_version, update.affected_rows
    );

    // Rows chosen by primary key.
    let delete = client
        .delete(DeleteRequest {
            table: "epics".to_owned(),
            r#where: Some(Selector {
                target: Some(selector::Target::Keys(KeyList {
                    keys: vec![row([("id", value(Kind::Int64(id)))])],
                })),
            }),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "delete: commit_version={} affected_rows={}",
        delete.commit_version, delete.affected_rows
    );
    if update.affected_rows != 1 || delete.affected_rows != 1 {
        bail!("expected one row updated and one deleted");
    }
    if !(first.commit_version < update.commit_version
        && update.commit_version < delete.commit_version)
    {
        bail!("commit versions did not grow");
    }
    Ok(())
}
