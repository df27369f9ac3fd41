//! A real server on ephemeral ports, for tests and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{Config, ServeArgs};
use crate::{Listeners, Server, run};

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server of `QUIVER_TEST_POSTGRES_URL`.
    Postgres,
}

/// A server bound to `127.0.0.1:0` over a fresh database; shut down when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where Flight SQL answers.
    pub grpc_addr: SocketAddr,
    /// Where HTTP answers.
    pub http_addr: SocketAddr,
    /// A SQLite file holding what the server serves: the server's own database, or,
    /// for a PostgreSQL-backed demo server, the same demo data loaded into SQLite as
    /// the truth to compare with.
    pub db_path: PathBuf,
    /// The running server's state.
    pub server: Server,
    shutdown: CancellationToken,
    task: Option<JoinHandle<crate::Result<()>>>,
    _postgres: Option<quiver_storage::testing::PostgresTestDb>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A demo server with `tasks` tasks on `store`; `None` when that store is
    /// PostgreSQL and no test server is configured (a warning was printed).
    pub async fn demo_on(store: TestStore, tasks: u64) -> Option<Self> {
        match store {
            TestStore::Sqlite => Some(Self::demo(tasks).await),
            TestStore::Postgres => {
                let db = quiver_storage::testing::PostgresTestDb::create("server").await?;
                let args = ServeArgs {
                    db: Some(db.url().to_owned()),
                    demo: Some(true),
                    demo_tasks: Some(tasks),
                    ..ServeArgs::default()
                };
                let mut server = Self::start(args).await;
                let truth = quiver_storage::Store::open(
                    &format!("sqlite://{}", server.db_path.display()),
                    &quiver_storage::StoreOptions::default(),
                )
                .await
                .expect("truth database opens");
                quiver_storage::demo::load(&truth, tasks, false, Arc::new(|_| {}))
                    .await
                    .expect("truth demo loads");
                server._postgres = Some(db);
                Some(server)
            }
        }
    }

    /// A server over a fresh database holding the demo data with `tasks` tasks.
    pub async fn demo(tasks: u64) -> Self {
        let args = ServeArgs {
            demo: Some(true),
            demo_tasks: Some(tasks),
            ..ServeArgs::default()
        };
        Self::start(args).await
    }

    /// A server configured by `args` (`db` defaults to a fresh file in a temporary
    /// directory; the addresses are always ephemeral).
    pub async fn start(mut args: ServeArgs) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db_path = match &args.db {
            Some(url) => {
                match quiver_storage::StoreLocation::parse(url).expect("test database URL") {
                    quiver_storage::StoreLocation::Sqlite(path) => path,
                    quiver_storage::StoreLocation::Postgres(_) => dir.path().join("truth.db"),
                }
            }
            None => {
                let path = dir.path().join("quiver.db");
                args.db = Some(format!("sqlite://{}", path.display()));
                path
            }
        };
        args.grpc_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.http_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let config: Config = args.resolve().expect("test configuration");
        let server = Server::open(config, Arc::new(|_| {}))
            .await
            .expect("server opens");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let grpc_addr = grpc.local_addr().expect("gRPC address");
        let http_addr = http.local_addr().expect("HTTP address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            Listeners { grpc, http },
            server.clone(),
            shutdown.clone(),
        ));
        Self {
            grpc_addr,
            http_addr,
            db_path,
            server,
            shutdown,
            task: Some(task),
            _postgres: None,
            _dir: Some(dir),
        }
    }

    /// The gRPC endpoint URL.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A URL on the HTTP port.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// A connected gRPC channel.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .expect("valid URL")
            .connect()
            .await
            .expect("server accepts connections")
    }

    /// A Flight SQL client connected to the server.
    pub async fn flight_sql_client(&self) -> FlightSqlServiceClient<Channel> {
        let inner =
            FlightServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20);
        FlightSqlServiceClient::new_from_inner(inner)
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
