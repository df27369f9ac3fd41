//! The `quiver.v1.Subscriptions` gRPC service.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use quiver_proto::v1::subscribe_request::Start as ProtoStart;
use quiver_proto::v1::subscriptions_server::Subscriptions;
use quiver_proto::v1::{self as pb, SubscribeRequest, SubscribeResponse, subscribe_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status};

use super::decode::{Page, proto_row};
use super::delivery::{Closed, Sink, run};
use super::hub::Hub;
use super::spec::{Follow, Request, Spec, Start};
use crate::error::Result;

/// Serves `Subscribe` from the shared [`Hub`].
#[derive(Debug, Clone)]
pub struct SubscriptionService {
    hub: Arc<Hub>,
}

impl SubscriptionService {
    /// A service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

/// The request as both surfaces take it.
pub(crate) fn request_of(request: SubscribeRequest) -> Request {
    let start = match request.start {
        Some(ProtoStart::FromVersion(version)) => Start::After(version),
        Some(ProtoStart::Snapshot(true)) => Start::Snapshot,
        Some(ProtoStart::Latest(_) | ProtoStart::Snapshot(false)) | None => Start::Latest,
    };
    Request {
        tables: request.tables,
        filter: Some(request.filter).filter(|f| !f.is_empty()),
        start,
        columns: request.columns,
    }
}

#[tonic::async_trait]
impl Subscriptions for SubscriptionService {
    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    #[tracing::instrument(name = "subscriptions.subscribe", skip_all, fields(tables = ?request.get_ref().tables))]
    async fn subscribe(
        &self,
        request: GrpcRequest<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request_of(request.into_inner());
        let spec = self.hub.compile(&request)?;
        let opened = self.hub.open(spec).await?;
        let (sender, receiver) = mpsc::channel(self.hub.config().buffer);
        tokio::spawn(run(Arc::clone(&self.hub), opened, GrpcSink { sender }));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

struct GrpcSink {
    sender: mpsc::Sender<Result<SubscribeResponse, Status>>,
}

impl GrpcSink {
    async fn send(&self, event: subscribe_response::Event) -> Result<(), Closed> {
        self.sender
            .send(Ok(SubscribeResponse { event: Some(event) }))
            .await
            .map_err(|_| Closed)
    }
}

/// Keeps only the projected columns of a row image.
fn project(row: &mut Option<pb::Row>, follow: &Follow) {
    let (Some(row), Some(columns)) = (row.as_mut(), follow.columns.as_ref()) else {
        return;
    };
    row.values.retain(|name, _| {
        columns
            .iter()
            .any(|&position| follow.table.columns[position].name == *name)
    });
}

impl Sink for GrpcSink {
    async fn deliver(
        &mut self,
        spec: &Spec,
        page: &Page,
        selected: &[usize],
        _position: u64,
    ) -> Result<(), Closed> {
        for &index in selected {
            let event = &page.events[index];
            let mut message = event.message.clone();
            if let Some(follow) = spec.follows.get(&event.table) {
                project(&mut message.after, follow);
                project(&mut message.before, follow);
            }
            self.send(subscribe_response::Event::Change(message))
                .await?;
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        follow: &Follow,
        version: u64,
        rows: RecordBatch,
    ) -> Result<(), Closed> {
        for row in 0..rows.num_rows() {
            let values: Vec<ScalarValue> = rows
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, row).unwrap_or(ScalarValue::Null))
                .collect();
            let mut after = Some(proto_row(&follow.table, &values, false));
            project(&mut after, follow);
            let message = pb::ChangeEvent {
                version,
                committed_at_micros: 0,
                table: follow.name.to_string(),
                op: pb::Op::Snapshot.into(),
                key: Some(proto_row(&follow.table, &values, true)),
                after,
                before: None,
                trace_parent: String::new(),
            };
            self.send(subscribe_response::Event::Change(message))
                .await?;
        }
        Ok(())
    }

    async fn progress(&mut self, version: u64, latest: u64) -> Result<(), Closed> {
        self.send(subscribe_response::Event::Progress(pb::Progress {
            version,
            latest_version: latest,
        }))
        .await
    }

    async fn fail(&mut self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }

    async fn closed(&self) {
        self.sender.closed().await;
    }
}
