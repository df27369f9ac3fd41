//! Subscription delivery: `quiver.v1.Subscriptions` against a running `quiver serve`,
//! per backend, beside the raw tonic streaming ceiling measured in the same run.
//!
//! 1. Throughput to one subscriber, events/s:
//!    - catch-up: `--events` inserts (commits of 1,000 rows into `epics`) already in
//!      the log, then one subscriber from the version before them, timed until the last
//!      event arrives (log read, decode, filter, stream);
//!    - live: one subscriber from `latest` while the same number of rows is inserted,
//!      timed from the first to the last event (bounded by the write path).
//! 2. Fan-out: 1, 100 and 1,000 subscribers (100 streams per HTTP/2 connection) follow
//!    `epics` while `--commits` single-row inserts are made one every 10 ms;
//!    commit→delivery latency is the receive time minus the event's commit time (both
//!    this machine's clock), over every delivery.
//! 3. The ceiling: an in-process tonic server implementing the same service streams
//!    events of the same shape — as fast as it can to one subscriber (throughput), and
//!    one every 10 ms stamped with the send time to 1/100/1,000 subscribers (latency) —
//!    read by the same client code. Quiver cannot beat it; the gap is Quiver's cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use futures::Stream;
use quiver_proto::v1::mutations_client::MutationsClient;
use quiver_proto::v1::subscriptions_client::SubscriptionsClient;
use quiver_proto::v1::subscriptions_server::{Subscriptions, SubscriptionsServer};
use quiver_proto::v1::{
    self as pb, SubscribeRequest, SubscribeResponse, subscribe_request, subscribe_response,
    value::Kind,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::queries::BenchDatabase;
use crate::server::{QuiverProcess, load_demo, sqlite_url};

/// Rows per commit while filling the log.
const COMMIT_ROWS: usize = 1_000;
/// Streams per HTTP/2 connection in the fan-out.
const STREAMS_PER_CONNECTION: usize = 100;
/// Pause between the single-row commits of the fan-out.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How long a measure may take before it is abandoned.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often long steps print progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The command line of `quiver-bench subscriptions`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Admin URL of a PostgreSQL server (a database is created and dropped on it).
    pub postgres: Option<String>,
    /// Events for the throughput measures.
    pub events: usize,
    /// Subscriber counts of the fan-out.
    pub subscribers: Vec<usize>,
    /// Single-row commits per fan-out measure.
    pub commits: usize,
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p95: Duration,
    p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Result<Self> {
        ensure!(!samples.is_empty(), "no latency samples");
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Ok(Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        })
    }
}

#[derive(Debug)]
struct FanOut {
    subscribers: usize,
    deliveries: usize,
    per_second: f64,
    latency: Latency,
}

#[derive(Debug)]
struct Report {
    name: &'static str,
    catch_up: f64,
    live: f64,
    fan_out: Vec<FanOut>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// An `epics` row (every NOT NULL column).
fn epic(key: String, now: i64) -> pb::Row {
    let values = BTreeMap::from([
        ("key".to_owned(), value(Kind::String(key.clone()))),
        (
            "title".to_owned(),
            value(Kind::String(format!("Bench epic {key}"))),
        ),
        (
            "status".to_owned(),
            value(Kind::String("planned".to_owned())),
        ),
        ("priority".to_owned(), value(Kind::Int64(3))),
        ("created_at".to_owned(), value(Kind::TimestampMicros(now))),
        ("updated_at".to_owned(), value(Kind::TimestampMicros(now))),
    ]);
    pb::Row { values }
}

/// Inserts `rows` epics in commits of `per_commit`, printing progress.
async fn insert_epics(
    client: &mut MutationsClient<Channel>,
    prefix: &str,
    rows: usize,
    per_commit: usize,
) -> Result<()> {
    let now = now_micros();
    let mut last_print = Instant::now();
    let mut done = 0;
    while done < rows {
        let count = per_commit.min(rows - done);
        let batch = (done..done + count)
            .map(|i| epic(format!("{prefix}-{i}"), now))
            .collect();
        client
            .insert(pb::InsertRequest {
                table: "epics".to_owned(),
                rows: Some(pb::Rows {
                    rows: batch,
                    arrow_ipc: Default::default(),
                }),
                idempotency_key: String::new(),
            })
            .await
            .context("Mutations.Insert into epics")?;
        done += count;
        if last_print.elapsed() >= PROGRESS_EVERY {
            eprintln!("  inserted {done}/{rows} rows");
            last_print = Instant::now();
        }
    }
    Ok(())
}

async fn connect(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Opens a subscription on `epics`; unless it starts from a version (its first
/// messages are then the catch-up), waits for its first progress message: it is then
/// following the tail.
async fn follow(
    channel: Channel,
    start: subscribe_request::Start,
) -> Result<tonic::Streaming<SubscribeResponse>> {
    let catching_up = matches!(start, subscribe_request::Start::FromVersion(_));
    let mut stream = SubscriptionsClient::new(channel)
        .subscribe(SubscribeRequest {
            tables: vec!["epics".to_owned()],
            filter: String::new(),
            start: Some(start),
            columns: Vec::new(),
        })
        .await?
        .into_inner();
    if catching_up {
        return Ok(stream);
    }
    loop {
        let message = stream.message().await?.context("the stream ended")?;
        if matches!(message.event, Some(subscribe_response::Event::Progress(_))) {
            return Ok(stream);
        }
    }
}

/// Reads `events` change events; returns the times the first and last arrived.
async fn drain(
    stream: &mut tonic::Streaming<SubscribeResponse>,
    events: usize,
) -> Result<(Instant, Instant)> {
    let mut seen = 0;
    let mut first = None;
    let mut last_print = Instant::now();
    while seen < events {
        let message = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .context("no event within the deadline")??
            .context("the stream ended")?;
        if let Some(subscribe_response::Event::Change(_)) = message.event {
            seen += 1;
            first.get_or_insert_with(Instant::now);
            if last_print.elapsed() >= PROGRESS_EVERY {
                eprintln!("  received {seen}/{events} events");
                last_print = Instant::now();
            }
        }
    }
    Ok((first.unwrap_or_else(Instant::now), Instant::now()))
}

/// Opens `count` subscriptions over `count / 100` connections.
async fn open_many(
    addr: &str,
    count: usize,
    start: subscribe_request::Start,
) -> Result<Vec<tonic::Streaming<SubscribeResponse>>> {
    let mut streams = Vec::with_capacity(count);
    let mut channel = connect(addr).await?;
    for i in 0..count {
        if i > 0 && i % STREAMS_PER_CONNECTION == 0 {
            channel = connect(addr).await?;
        }
        streams.push(follow(channel.clone(), start).await?);
    }
    Ok(streams)
}

/// Each stream reads `events` changes, recording receive time minus commit time.
fn collect_latencies(
    streams: Vec<tonic::Streaming<SubscribeResponse>>,
    events: usize,
) -> Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>> {
    streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(events);
                while samples.len() < events {
                    let message = tokio::time::timeout(DEADLINE, stream.message())
                        .await
                        .context("no event within the deadline")??
                        .context("the stream ended")?;
                    if let Some(subscribe_response::Event::Change(change)) = message.event {
                        let micros = (now_micros() - change.committed_at_micros).max(0);
                        samples.push(Duration::from_micros(micros as u64));
                    }
                }
                Ok(samples)
            })
        })
        .collect()
}

async fn gather(
    readers: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Vec<Duration>> {
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await??);
    }
    Ok(all)
}

async fn latest_version(channel: Channel) -> Result<u64> {
    let mut stream = SubscriptionsClient::new(channel)
        .subscribe(SubscribeRequest {
            tables: vec!["epics".to_owned()],
            start: Some(subscribe_request::Start::Latest(true)),
            ..Default::default()
        })
        .await?
        .into_inner();
    loop {
        let message = stream.message().await?.context("the stream ended")?;
        if let Some(subscribe_response::Event::Progress(progress)) = message.event {
            return Ok(progress.version);
        }
    }
}

/// Every measure against one server.
async fn measure(name: &'static str, quiver: &QuiverProcess, options: &Options) -> Result<Report> {
    let addr = quiver.grpc_addr.as_str();
    let channel = connect(addr).await?;
    let mut mutations = MutationsClient::new(channel.clone());

    eprintln!("{name}: filling the log with {} rows", options.events);
    let before = latest_version(channel.clone()).await?;
    insert_epics(&mut mutations, "CATCHUP", options.events, COMMIT_ROWS).await?;
    eprintln!("{name}: catch-up delivery to one subscriber");
    let started = Instant::now();
    let mut stream = follow(
        connect(addr).await?,
        subscribe_request::Start::FromVersion(before),
    )
    .await?;
    let (_, last) = drain(&mut stream, options.events).await?;
    let catch_up = options.events as f64 / (last - started).as_secs_f64();
    drop(stream);

    eprintln!("{name}: live delivery to one subscriber while writing");
    let mut stream = follow(connect(addr).await?, subscribe_request::Start::Latest(true)).await?;
    let reader = tokio::spawn({
        let events = options.events;
        async move { drain(&mut stream, events).await }
    });
    let write_started = Instant::now();
    insert_epics(&mut mutations, "LIVE", options.events, COMMIT_ROWS).await?;
    let (_, last) = reader.await??;
    let live = options.events as f64 / (last - write_started).as_secs_f64();

    let mut fan_out = Vec::new();
    for &subscribers in &options.subscribers {
        eprintln!("{name}: fan-out to {subscribers} subscribers");
        let streams = open_many(addr, subscribers, subscribe_request::Start::Latest(true)).await?;
        let readers = collect_latencies(streams, options.commits);
        let started = Instant::now();
        for i in 0..options.commits {
            insert_epics(&mut mutations, &format!("FAN{subscribers}-{i}"), 1, 1).await?;
            tokio::time::sleep(COMMIT_EVERY).await;
        }
        let samples = gather(readers).await?;
        let elapsed = started.elapsed();
        fan_out.push(FanOut {
            subscribers,
            deliveries: samples.len(),
            per_second: samples.len() as f64 / elapsed.as_secs_f64(),
            latency: Latency::of(samples)?,
        });
    }
    Ok(Report {
        name,
        catch_up,
        live,
        fan_out,
    })
}

/// Where the ceiling server sends a subscriber's messages.
type Outbox = mpsc::Sender<Result<SubscribeResponse, Status>>;

/// The ceiling: a tonic server of the same service that only streams.
#[derive(Clone, Default)]
struct Ceiling {
    subscribers: Arc<Mutex<Vec<Outbox>>>,
    burst: Arc<Mutex<usize>>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// A change event shaped like an `epics` insert.
fn ceiling_event(version: u64, committed_at: i64) -> SubscribeResponse {
    let mut after = epic(format!("CEILING-{version}"), committed_at);
    after
        .values
        .insert("id".to_owned(), value(Kind::Int64(version as i64)));
    after
        .values
        .insert("description".to_owned(), value(Kind::Null(0)));
    SubscribeResponse {
        event: Some(subscribe_response::Event::Change(pb::ChangeEvent {
            version,
            committed_at_micros: committed_at,
            table: "epics".to_owned(),
            op: pb::Op::Insert.into(),
            key: Some(pb::Row {
                values: BTreeMap::from([("id".to_owned(), value(Kind::Int64(version as i64)))]),
            }),
            after: Some(after),
            before: None,
            trace_parent: String::new(),
        })),
    }
}

fn progress() -> SubscribeResponse {
    SubscribeResponse {
        event: Some(subscribe_response::Event::Progress(pb::Progress::default())),
    }
}

#[tonic::async_trait]
impl Subscriptions for Ceiling {
    type SubscribeStream = ResponseStream;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (sender, receiver) = mpsc::channel(1024);
        let burst = std::mem::take(&mut *self.burst.lock().expect("lock"));
        sender.send(Ok(progress())).await.ok();
        if burst > 0 {
            tokio::spawn(async move {
                let now = now_micros();
                for version in 1..=burst as u64 {
                    if sender.send(Ok(ceiling_event(version, now))).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            self.subscribers.lock().expect("lock").push(sender);
        }
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn measure_ceiling(options: &Options) -> Result<Report> {
    let ceiling = Ceiling::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let service = SubscriptionsServer::new(ceiling.clone());
    tokio::spawn(async move {
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                stream
            });
            Some((accepted, listener))
        });
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });

    eprintln!("ceiling: burst to one subscriber");
    *ceiling.burst.lock().expect("lock") = options.events;
    let started = Instant::now();
    let mut stream = follow(
        connect(&addr).await?,
        subscribe_request::Start::Latest(true),
    )
    .await?;
    let (_, last) = drain(&mut stream, options.events).await?;
    let burst = options.events as f64 / (last - started).as_secs_f64();
    drop(stream);

    let mut fan_out = Vec::new();
    for &subscribers in &options.subscribers {
        eprintln!("ceiling: fan-out to {subscribers} subscribers");
        ceiling.subscribers.lock().expect("lock").clear();
        let streams = open_many(&addr, subscribers, subscribe_request::Start::Latest(true)).await?;
        let readers = collect_latencies(streams, options.commits);
        let started = Instant::now();
        for version in 1..=options.commits as u64 {
            let senders = ceiling.subscribers.lock().expect("lock").clone();
            let event = ceiling_event(version, now_micros());
            for sender in senders {
                sender.send(Ok(event.clone())).await.ok();
            }
            tokio::time::sleep(COMMIT_EVERY).await;
        }
        let samples = gather(readers).await?;
        let elapsed = started.elapsed();
        fan_out.push(FanOut {
            subscribers,
            deliveries: samples.len(),
            per_second: samples.len() as f64 / elapsed.as_secs_f64(),
            latency: Latency::of(samples)?,
        });
    }
    ceiling.subscribers.lock().expect("lock").clear();
    Ok(Report {
        name: "tonic ceiling",
        catch_up: burst,
        live: burst,
        fan_out,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print(reports: &[Report]) {
    println!("\n## Subscription delivery\n");
    println!("| path | catch-up to 1 subscriber, events/s | live to 1 subscriber, events/s |");
    println!("|---|---:|---:|");
    for report in reports {
        println!(
            "| {} | {:.0} | {:.0} |",
            report.name, report.catch_up, report.live
        );
    }
    println!(
        "\n| path | subscribers | deliveries | deliveries/s | commit→delivery p50 / p95 / p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    for report in reports {
        for fan in &report.fan_out {
            println!(
                "| {} | {} | {} | {:.0} | {} / {} / {} |",
                report.name,
                fan.subscribers,
                fan.deliveries,
                fan.per_second,
                ms(fan.latency.p50),
                ms(fan.latency.p95),
                ms(fan.latency.p99)
            );
        }
    }
}

pub(crate) async fn run(binary: &Path, data_dir: &Path, options: &Options) -> Result<()> {
    ensure!(options.events > 0, "--events must be at least 1");
    ensure!(options.commits > 0, "--commits must be at least 1");
    let server_flags = ["--max-subscribers", "5000"];
    let mut reports = Vec::new();

    let db = data_dir.join("subscriptions.db");
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if Path::new(&path).exists() {
            std::fs::remove_file(&path)?;
        }
    }
    load_demo(binary, &sqlite_url(&db), 1_000, &[])?;
    {
        let quiver = QuiverProcess::start(binary, &sqlite_url(&db), &server_flags)?;
        reports.push(measure("Quiver on SQLite", &quiver, options).await?);
    }
    if let Some(admin) = options.postgres.as_deref() {
        let database = BenchDatabase::create(admin, "subscriptions").await?;
        load_demo(binary, &database.url, 1_000, &[])?;
        {
            let quiver = QuiverProcess::start(binary, &database.url, &server_flags)?;
            reports.push(measure("Quiver on PostgreSQL", &quiver, options).await?);
        }
        database.drop().await?;
    } else {
        eprintln!("no --postgres URL: PostgreSQL skipped");
    }
    reports.push(measure_ceiling(options).await?);
    print(&reports);
    Ok(())
}
