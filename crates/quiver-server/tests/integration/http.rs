//! The HTTP port: health, readiness and SQL → JSON.

use quiver_server::test_utils::TestServer;
use serde_json::Value;

use crate::common::{sorted, sqlite_rows};

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::demo(10).await;
    let health = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(body["pool"]["connections"].as_u64().unwrap() >= 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_readiness_waits_for_the_database_and_shows_the_pool() {
    use quiver_storage::testing::{
        PostgresTestDb, TcpProxy, free_port, postgres_upstream, with_address,
    };

    let Some(db) = PostgresTestDb::create("readyz").await else {
        return;
    };
    // The database is behind a port nothing listens on yet: down at start.
    let listen = free_port().await;
    let args = quiver_server::config::ServeArgs {
        db: Some(with_address(db.url(), listen)),
        demo: Some(true),
        demo_tasks: Some(300),
        pool_max_backoff_ms: Some(300),
        ..quiver_server::config::ServeArgs::default()
    };
    let server = TestServer::start(args).await;
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    assert!(
        body["reason"].as_str().unwrap().contains("refused"),
        "{body}"
    );
    assert_eq!(body["pool"]["reachable"], false, "{body}");

    // The database comes up: ready within seconds, demo loaded, no restart.
    let _proxy = TcpProxy::start(listen, postgres_upstream(db.url())).await;
    let started = std::time::Instant::now();
    let body = loop {
        let response = reqwest::get(server.http_url("/readyz")).await.unwrap();
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "not ready: {}",
            response.text().await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let pool = &body["pool"];
    assert_eq!(pool["reachable"], true, "{body}");
    assert!(pool["connect_errors"].as_u64().unwrap() >= 1, "{body}");
    assert!(pool["acquired"].as_u64().unwrap() >= 1, "{body}");
    // Every connection goes back to the pool (the change-log tail borrows one briefly
    // for each of its reads, so a read may be in flight at any moment).
    let settled = std::time::Instant::now();
    loop {
        let body: Value = reqwest::get(server.http_url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["pool"]["in_use"] == 0 {
            break;
        }
        assert!(
            settled.elapsed() < std::time::Duration::from_secs(5),
            "a connection stays in use: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let count = crate::common::flight_rows(&server, "SELECT count(*) FROM tasks").await;
    assert_eq!(count, vec!["300".to_owned()]);
}

fn json_rows(rows: &[Value], columns: &[&str]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| match &row[*c] {
                    Value::Null => "NULL".to_owned(),
                    Value::String(s) => s.clone(),
                    Value::Number(n) if n.is_f64() => {
                        quiver_storage::testing::canonical_float(n.as_f64().unwrap())
                    }
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

#[tokio::test]
async fn query_returns_json_rows_equal_to_sqlite() {
    let server = TestServer::demo(20_000).await;
    let sql = "SELECT id, key, agent_type, estimate_hours FROM tasks WHERE priority <= 3";
    let client = reqwest::Client::new();
    let response = client
        .post(server.http_url("/v1/query"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let rows: Vec<Value> = response.json().await.unwrap();
    let ours = json_rows(&rows, &["id", "key", "agent_type", "estimate_hours"]);
    let truth = sqlite_rows(&server, sql);
    assert!(truth.len() > 8192, "spans several batches: {}", truth.len());
    assert_eq!(sorted(ours), sorted(truth));

    let lines = client
        .post(server.http_url("/v1/query"))
        .header("accept", "application/x-ndjson")
        .json(&serde_json::json!({ "sql": "SELECT id FROM tasks WHERE id <= 3 ORDER BY id" }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(lines, "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");

    let empty: Vec<Value> = client
        .post(server.http_url("/v1/query"))
        .json(&serde_json::json!({ "sql": "SELECT id FROM tasks WHERE id < 0" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn query_errors_are_json_with_the_grpc_code() {
    let server = TestServer::demo(10).await;
    let client = reqwest::Client::new();
    let response = client
        .post(server.http_url("/v1/query"))
        .json(&serde_json::json!({ "sql": "SELECT * FROM missing_table" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing_table"),
        "{body}"
    );

    let response = client
        .post(server.http_url("/v1/query"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
}
