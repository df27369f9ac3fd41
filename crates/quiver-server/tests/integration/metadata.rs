//! Catalog metadata over Flight SQL, checked against SQLite's own catalog.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, UInt8Type};
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use quiver_server::test_utils::TestServer;
use quiver_storage::testing::canonical_batch;

use crate::common::{fetch, sqlite_rows};

async fn rows_of(batches: Vec<RecordBatch>) -> Vec<String> {
    batches.iter().flat_map(canonical_batch).collect()
}

#[tokio::test]
async fn catalogs_schemas_and_table_types() {
    let server = TestServer::demo(50).await;
    let mut client = server.flight_sql_client().await;
    let info = client.get_catalogs().await.unwrap();
    assert_eq!(
        rows_of(fetch(&mut client, info).await).await,
        vec!["quiver".to_owned()]
    );

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("quiver".into()),
            db_schema_filter_pattern: Some("ma%".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        rows_of(fetch(&mut client, info).await).await,
        vec!["quiver | main".to_owned()]
    );

    let info = client.get_table_types().await.unwrap();
    assert_eq!(
        rows_of(fetch(&mut client, info).await).await,
        vec![
            "SYSTEM TABLE".to_owned(),
            "TABLE".to_owned(),
            "VIEW".to_owned()
        ]
    );

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("quiver".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    assert_eq!(
        rows_of(fetch(&mut client, info).await).await,
        vec!["quiver | main".to_owned(), "quiver | system".to_owned()]
    );
}

#[tokio::test]
async fn tables_with_schemas_match_sqlite() {
    let server = TestServer::demo(50).await;
    let mut client = server.flight_sql_client().await;
    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("%task%".into()),
            table_types: vec!["TABLE".into()],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    let batch = &batches[0];
    let names: Vec<&str> = batch
        .column(2)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(names, vec!["task_history", "tasks"]);

    // The schema of `tasks` lists SQLite's columns, in order, with declared types.
    let schema_bytes = batch.column(4).as_binary::<i32>().value(1);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    let ours: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{} | {} | {}",
                f.name(),
                f.metadata()["ARROW:FLIGHT:SQL:TYPE_NAME"],
                i64::from(!f.is_nullable())
            )
        })
        .collect();
    let truth = sqlite_rows(
        &server,
        "SELECT name, type, \"notnull\" OR pk FROM pragma_table_info('tasks') ORDER BY cid",
    );
    assert_eq!(ours, truth);
    assert_eq!(
        schema.field_with_name("created_at").unwrap().data_type(),
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
    );
}

#[tokio::test]
async fn primary_and_foreign_keys_match_sqlite() {
    let server = TestServer::demo(50).await;
    let mut client = server.flight_sql_client().await;

    let info = client
        .get_primary_keys(arrow_flight::sql::CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "tasks".into(),
        })
        .await
        .unwrap();
    let rows = rows_of(fetch(&mut client, info).await).await;
    assert_eq!(
        rows,
        vec!["quiver | main | tasks | id | NULL | 1".to_owned()]
    );

    let info = client
        .get_imported_keys(arrow_flight::sql::CommandGetImportedKeys {
            catalog: None,
            db_schema: None,
            table: "tasks".into(),
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    let batch = &batches[0];
    let pk_tables: Vec<&str> = batch
        .column(2)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    let truth: Vec<String> = sqlite_rows(
        &server,
        "SELECT \"table\" FROM pragma_foreign_key_list('tasks')",
    );
    assert_eq!(
        pk_tables,
        truth.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // ON DELETE CASCADE is rule 0.
    assert_eq!(batch.column(12).as_primitive::<UInt8Type>().value(0), 0);

    // Exported keys of `features`: tasks.feature_id refers to it.
    let info = client
        .get_exported_keys(arrow_flight::sql::CommandGetExportedKeys {
            catalog: None,
            db_schema: None,
            table: "features".into(),
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    let fk: Vec<String> = batches[0]
        .column(6)
        .as_string::<i32>()
        .iter()
        .zip(batches[0].column(7).as_string::<i32>().iter())
        .map(|(t, c)| format!("{}.{}", t.unwrap(), c.unwrap()))
        .collect();
    assert_eq!(fk, vec!["tasks.feature_id".to_owned()]);
}

#[tokio::test]
async fn sql_info_is_truthful_and_type_info_is_listed() {
    let server = TestServer::demo(10).await;
    let mut client = server.flight_sql_client().await;
    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
            SqlInfo::FlightSqlServerTransaction,
        ])
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(batches[0].num_rows(), 3);

    let info = client
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    let names: Vec<&str> = batches[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    // SQLite's declared-type names (the Python client tests create a column of each,
    // on both stores, and check the type it reads back as).
    for expected in [
        "BOOLEAN",
        "TINYINT",
        "SMALLINT",
        "INT32",
        "INTEGER",
        "UINT64",
        "FLOAT4",
        "REAL",
        "DECIMAL",
        "TEXT",
        "BLOB",
        "FIXED_BLOB",
        "DATE",
        "TIME",
        "TIMESTAMP",
        "DURATION",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    // The answer lists the server name and says it is read-only, with no transactions.
    let sql_info = client
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .unwrap();
    let batches = fetch(&mut client, sql_info).await;
    let value = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::UnionArray>()
        .unwrap();
    assert_eq!(value.value(0).as_string::<i32>().value(0), "Quiver");
}
