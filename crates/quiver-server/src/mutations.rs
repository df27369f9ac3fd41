//! `quiver.v1.Mutations`: typed row writes, atomic and idempotent, answering with the
//! commit version.
//!
//! A request is checked against the catalog completely — tables, columns, value types,
//! keys, predicates, row limits — before a transaction begins, so a bad request never
//! holds the writer. The statements then run in one transaction of the write path
//! ([`Writer::transact`]); any failure rolls it back. Constraint violations come from
//! the store and name the constraint.
//!
//! # Layout
//! - `convert`: protobuf and Arrow values in, store values out.
//! - `statements`: the SQL each operation runs.
//! - `plan`: validation and planning, before any transaction.
//! - `execute`: one transaction per request, idempotent replays.

mod convert;
mod execute;
mod plan;
mod statements;

use std::sync::Arc;

use prost::Message;
use quiver_proto::v1::mutations_server::Mutations;
use quiver_proto::v1::{
    ApplyRequest, DeleteRequest, InsertRequest, MutateResponse, UpdateRequest, UpsertRequest,
    operation,
};
use tonic::{Request, Response, Status};

use self::plan::Planner;
use crate::auth::{self, Principal, Role};
use crate::writes::Writer;

/// The Mutations service.
#[derive(Debug, Clone)]
pub struct MutationService {
    writer: Arc<Writer>,
}

impl MutationService {
    /// A service writing through `writer`.
    pub fn new(writer: Arc<Writer>) -> Self {
        Self { writer }
    }

    /// Validates, plans and runs one request of `principal`.
    async fn handle(
        &self,
        principal: &Principal,
        operations: Vec<operation::Op>,
        idempotency_key: &str,
        encoded: Vec<u8>,
    ) -> Result<Response<MutateResponse>, Status> {
        let planner = Planner {
            engine: self.writer.engine(),
            limits: self.writer.config(),
        };
        let idempotency_key = scoped_key(principal, idempotency_key);
        let plan = tracing::debug_span!("mutations.validate")
            .in_scope(|| planner.plan(operations, &idempotency_key, &encoded))?;
        let response = execute::run(&self.writer, plan).await?;
        tracing::Span::current().record("commit_version", response.commit_version as i64);
        Ok(Response::new(response))
    }

    /// Serves a one-operation request: `key` reads its idempotency key, `op` wraps it.
    async fn single<R: Message>(
        &self,
        request: Request<R>,
        key: impl Fn(&R) -> &String,
        op: impl FnOnce(R) -> operation::Op,
    ) -> Result<Response<MutateResponse>, Status> {
        let principal = writer_of(&request)?;
        let request = request.into_inner();
        let encoded = request.encode_to_vec();
        let key = key(&request).clone();
        self.handle(&principal, vec![op(request)], &key, encoded)
            .await
    }
}

/// The principal of a request, which must have the `write` role.
fn writer_of<T>(request: &Request<T>) -> Result<Principal, Status> {
    let principal = auth::principal_of(request)?;
    principal.require(Role::Write, "write rows")?;
    Ok(principal.clone())
}

/// An idempotency key as stored: scoped to the principal that sent it, so two
/// principals' keys never meet (the key as sent when authentication is off).
fn scoped_key(principal: &Principal, key: &str) -> String {
    if key.is_empty() || principal.is_anonymous() {
        return key.to_owned();
    }
    let scope = principal.scope();
    format!("{}:{scope}/{key}", scope.len())
}

#[tonic::async_trait]
impl Mutations for MutationService {
    #[tracing::instrument(name = "mutations.insert", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Insert)
            .await
    }

    #[tracing::instrument(name = "mutations.update", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Update)
            .await
    }

    #[tracing::instrument(name = "mutations.delete", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Delete)
            .await
    }

    #[tracing::instrument(name = "mutations.upsert", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn upsert(
        &self,
        request: Request<UpsertRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Upsert)
            .await
    }

    #[tracing::instrument(name = "mutations.apply", skip_all, fields(operations = request.get_ref().operations.len(), commit_version = tracing::field::Empty))]
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        let principal = writer_of(&request)?;
        let request = request.into_inner();
        let encoded = request.encode_to_vec();
        let operations = request
            .operations
            .into_iter()
            .enumerate()
            .map(|(index, op)| {
                op.op.ok_or_else(|| {
                    Status::invalid_argument(format!("operation {}: no operation set", index + 1))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        if operations.is_empty() {
            return Err(Status::invalid_argument("apply has no operations"));
        }
        self.handle(&principal, operations, &request.idempotency_key, encoded)
            .await
    }
}
