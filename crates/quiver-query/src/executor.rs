//! Where queries run: a runtime of their own, admitted a few at a time, each bounded
//! in time and stopped when its consumer goes away.
//!
//! Planning and execution are CPU work. On the runtime that serves gRPC and HTTP they
//! would delay everything else — health checks first — so they run on a dedicated
//! multi-threaded runtime (threads `quiver-query`, with large stacks for deep
//! expression trees). A query's batches travel to its consumer through a channel of
//! two: when the consumer drops the stream (the client disconnected, its deadline
//! passed, the call was cancelled) the producing task sees the channel close and
//! drops the DataFusion stream, which stops every operator and store read under it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Stack of each query thread: deep (but admitted) expression trees recurse once
/// per level in planning and evaluation.
const QUERY_THREAD_STACK: usize = 32 << 20;

/// Batches produced ahead of the consumer.
const CHANNEL_BATCHES: usize = 2;

/// How queries are admitted and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Threads of the query runtime.
    pub threads: usize,
    /// Queries running at once; more wait in line.
    pub max_concurrent: usize,
    /// How long a query waits in line before it is refused.
    pub queue_timeout: Duration,
    /// How long a query may compute, and how long it may wait for its consumer to
    /// take a batch (`None`: no limit).
    pub timeout: Option<Duration>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            threads: cpus,
            max_concurrent: 4 * cpus,
            queue_timeout: Duration::from_secs(30),
            timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// What a caller can do to one running query.
#[derive(Debug, Clone, Default)]
pub struct QueryControl {
    /// Cancels the query (Flight SQL `CancelFlightInfo`).
    pub cancel: CancellationToken,
    /// Who runs it (what system tables show).
    pub viewer: Option<Arc<crate::system::Viewer>>,
    /// Collects the statements the query sends to the store.
    pub store_sql: StoreSql,
}

/// The statements a query sent to the store, as its scans started them (at most
/// [`StoreSql::MAX`], each cut to [`StoreSql::MAX_LEN`] bytes).
#[derive(Debug, Clone, Default)]
pub struct StoreSql(Arc<std::sync::Mutex<Vec<String>>>);

impl StoreSql {
    /// Most statements kept.
    pub const MAX: usize = 16;
    /// Most bytes kept of one statement.
    pub const MAX_LEN: usize = 2048;

    /// Records a statement sent.
    pub fn push(&self, sql: &str) {
        let mut end = sql.len().min(Self::MAX_LEN);
        while !sql.is_char_boundary(end) {
            end -= 1;
        }
        let cut = &sql[..end];
        let mut kept = self.0.lock().expect("never poisoned");
        if kept.len() < Self::MAX && !kept.iter().any(|k| k == cut) {
            kept.push(cut.to_owned());
        }
    }

    /// The statements recorded so far.
    pub fn statements(&self) -> Vec<String> {
        self.0.lock().expect("never poisoned").clone()
    }
}

/// The query runtime and its admission gate.
pub struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    admission: Arc<Semaphore>,
    config: ExecutorConfig,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.config)
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Never blocks, even when dropped inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task on the query runtime, aborted when dropped.
pub struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.map_err(|err| Error::Runtime(err.to_string())))
    }
}

impl Executor {
    /// Starts the query runtime.
    pub fn new(config: ExecutorConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .max_blocking_threads(64)
            .thread_name("quiver-query")
            .thread_stack_size(QUERY_THREAD_STACK)
            .enable_all()
            .build()
            .map_err(|err| Error::Runtime(format!("cannot start the query runtime: {err}")))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            admission: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.config
            .max_concurrent
            .max(1)
            .saturating_sub(self.admission.available_permits())
    }

    /// Runs `future` on the query runtime; aborted when the returned task is dropped.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        Task(self.handle.spawn(future))
    }

    /// Runs `future` on the query runtime to its end on its own.
    pub fn spawn_detached(&self, future: impl Future<Output = ()> + Send + 'static) {
        drop(self.handle.spawn(future));
    }

    /// Waits for a place among the running queries, up to the queue timeout.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit> {
        let waited = tokio::time::timeout(
            self.config.queue_timeout,
            Arc::clone(&self.admission).acquire_owned(),
        )
        .await;
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Error::Runtime("the query runtime is shut down".to_owned())),
            Err(_) => Err(Error::Limit(format!(
                "{} queries are running and none finished within {:?} (max_concurrent_queries, \
                 query_queue_timeout_ms)",
                self.config.max_concurrent, self.config.queue_timeout
            ))),
        }
    }

    /// Runs `start` (which builds the query's stream) and then the stream on the query
    /// runtime, holding `permit` until it ends; the returned stream hands its batches
    /// over. Errors found before the first batch come back from this call. The query
    /// stops when the returned stream is dropped, when `control` cancels it, or when
    /// it runs out of time.
    pub async fn run<F>(
        &self,
        permit: OwnedSemaphorePermit,
        control: QueryControl,
        start: F,
    ) -> Result<SendableRecordBatchStream>
    where
        F: Future<Output = Result<SendableRecordBatchStream>> + Send + 'static,
    {
        let (ready, started) = oneshot::channel::<Result<SchemaRef>>();
        let (sender, receiver) = mpsc::channel(CHANNEL_BATCHES);
        let ending = Arc::new(std::sync::Mutex::new(Ending::Running));
        let producer_ending = Arc::clone(&ending);
        let timeout = self.config.timeout;
        let span = tracing::Span::current();
        let producer = async move {
            let _permit = permit;
            let cancelled = control.cancel;
            let deadline = timeout.map(|t| Instant::now() + t);
            let stream = tokio::select! {
                stream = start => stream,
                () = cancelled.cancelled() => Err(Error::Cancelled("the query was cancelled".to_owned())),
                () = sleep_until(deadline) => Err(timed_out(timeout)),
            };
            let mut stream = match stream {
                Ok(stream) => {
                    let _ = ready.send(Ok(stream.schema()));
                    stream
                }
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let end = |how: Ending| {
                if let Ok(mut ending) = producer_ending.lock() {
                    *ending = how;
                }
            };
            // Time computing counts against the timeout; time waiting for the consumer
            // is bounded separately, by the same setting.
            let mut budget = timeout;
            loop {
                let began = Instant::now();
                let next = tokio::select! {
                    biased;
                    () = sender.closed() => return,
                    () = cancelled.cancelled() => Some(Err(DataFusionError::External(Box::new(
                        Error::Cancelled("the query was cancelled".to_owned()),
                    )))),
                    () = sleep_for(budget) => Some(Err(DataFusionError::External(Box::new(timed_out(timeout))))),
                    next = stream.next() => next,
                };
                budget = budget.map(|b| b.saturating_sub(began.elapsed()));
                let Some(item) = next else {
                    end(Ending::Complete);
                    return;
                };
                let failed = item.is_err();
                let sent = match timeout {
                    Some(limit) => match tokio::time::timeout(limit, sender.send(item)).await {
                        Ok(sent) => sent.is_ok(),
                        Err(_) => {
                            end(Ending::Failed(format!(
                                "the client took no batch for {limit:?} (query_timeout_s)"
                            )));
                            false
                        }
                    },
                    None => sender.send(item).await.is_ok(),
                };
                if failed {
                    end(Ending::Reported);
                }
                if !sent || failed {
                    return;
                }
            }
        };
        // The handle is dropped: the producer runs on its own and stops as described.
        drop(
            self.handle
                .spawn(tracing::Instrument::instrument(producer, span)),
        );
        let schema = started
            .await
            .map_err(|_| Error::Runtime("the query task ended before it started".to_owned()))??;
        // A stream that ends without its producer saying so was cut short: say why.
        let batches = ReceiverStream::new(receiver)
            .map(Some)
            .chain(futures::stream::once(async move {
                let ending = ending
                    .lock()
                    .map(|ending| ending.clone())
                    .unwrap_or(Ending::Running);
                match ending {
                    Ending::Complete | Ending::Reported => None,
                    Ending::Failed(message) => Some(Err(DataFusionError::External(Box::new(
                        Error::Timeout(message),
                    )))),
                    Ending::Running => Some(Err(DataFusionError::External(Box::new(
                        Error::Runtime("the query ended unexpectedly".to_owned()),
                    )))),
                }
            }));
        let batches = batches.filter_map(std::future::ready);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// How a query's production ended, as its consumer learns after the last batch.
#[derive(Debug, Clone)]
enum Ending {
    /// Still producing, or stopped without saying.
    Running,
    /// Every batch was produced.
    Complete,
    /// An error was sent as the last item.
    Reported,
    /// Stopped for the reason given.
    Failed(String),
}

/// Makes every operator of a plan yield to the runtime regularly.
///
/// DataFusion yields where data arrives (its leaves), but an operator that produces
/// much from little — a cross join, an aggregate over it — can compute for seconds in
/// one poll, and a query whose client left would run to its end. Putting a cooperative
/// boundary above every operator spends a unit of the task's budget per batch passed
/// up, so the query's task yields every so many batches and notices it was cancelled.
#[derive(Debug, Default)]
pub struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.is::<CooperativeExec>() || node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> = node
                .children()
                .into_iter()
                .map(|child| {
                    if child.is::<CooperativeExec>() {
                        Arc::clone(child)
                    } else {
                        Arc::new(CooperativeExec::new(Arc::clone(child))) as Arc<dyn ExecutionPlan>
                    }
                })
                .collect();
            Ok(Transformed::yes(replace_children_if_necessary(
                node, children,
            )?))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "YieldEverywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn timed_out(timeout: Option<Duration>) -> Error {
    Error::Timeout(format!(
        "the query ran longer than {:?} (query_timeout_s)",
        timeout.unwrap_or_default()
    ))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn sleep_for(budget: Option<Duration>) {
    match budget {
        Some(budget) => tokio::time::sleep(budget).await,
        None => std::future::pending().await,
    }
}
