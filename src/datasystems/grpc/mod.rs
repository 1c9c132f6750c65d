//! `privacy.v1.DataSystemService`. Each RPC parses its request (`parse`),
//! calls one use case (`super::service`; writes once per request id in one
//! transaction through `rpc::mutate`) and encodes the answer (`encode`).
//! A caller limited to some data systems is refused (and the refusal
//! audited) before anything of another system is read or written.
mod encode;
mod parse;

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::service;
use crate::caller::Caller;
use crate::proto;
use crate::proto::data_system_service_server::DataSystemService;
use crate::proto::method::data_system_service as method;
use crate::reads::Reads;
use crate::requests::fulfilment;
use crate::rpc;

pub struct DataSystemApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    keys: crate::keys::Keyring,
}

impl DataSystemApi {
    pub fn new(reads: Reads, keys: crate::keys::Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            keys,
        }
    }
}

#[tonic::async_trait]
impl DataSystemService for DataSystemApi {
    async fn register_data_system(
        &self,
        request: Request<proto::RegisterDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        const METHOD: &str = method::REGISTER_DATA_SYSTEM;
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, fields) = parse::register_data_system(&req)?;
        // A worker limited to some systems must not rewrite another's
        // registration (fewer actions would make the next deletion skip it).
        let scope = caller.check_system(fields.id.as_str(), &fields.id.name());
        rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            fields,
            |conn, ctx, fields| {
                Box::pin(async move {
                    let (system, token) = service::register(conn, &ctx, &fields).await?;
                    Ok((encode::system_to_proto(&system), token))
                })
            },
        )
        .await
    }

    async fn get_data_system(
        &self,
        request: Request<proto::GetDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        let caller = Caller::of(&request);
        let id = parse::get_data_system(request.get_ref())?;
        let found = service::get_data_system(&self.pool, &caller, &id).await;
        let system = rpc::audit_refusal(&self.pool, method::GET_DATA_SYSTEM, found).await?;
        Ok(Response::new(encode::system_to_proto(&system)))
    }

    async fn list_data_systems(
        &self,
        request: Request<proto::ListDataSystemsRequest>,
    ) -> Result<Response<proto::ListDataSystemsResponse>, Status> {
        let caller = Caller::of(&request);
        let page = parse::list_data_systems(request.get_ref())?;
        let (systems, next) = service::list_data_systems(&self.pool, &caller, &page).await?;
        Ok(Response::new(encode::systems_page(&systems, next)))
    }

    async fn claim_tasks(
        &self,
        request: Request<proto::ClaimTasksRequest>,
    ) -> Result<Response<proto::ClaimTasksResponse>, Status> {
        const METHOD: &str = method::CLAIM_TASKS;
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, claim) = parse::claim_tasks(&req)?;
        let scope = caller.check_system(claim.data_system.as_str(), &claim.data_system.name());
        rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        let keys = &self.keys;
        rpc::mutate(
            &self.pool,
            keys,
            METHOD,
            caller,
            &request_id,
            &req,
            (keys.clone(), claim),
            |conn, ctx, input| {
                Box::pin(async move {
                    let (keys, claim) = (&input.0, &input.1);
                    let (tasks, token) = fulfilment::claim(keys, conn, &ctx, claim).await?;
                    Ok((encode::claimed(&tasks), token))
                })
            },
        )
        .await
    }

    async fn renew_task_lease(
        &self,
        request: Request<proto::RenewTaskLeaseRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, renewal) = parse::renew_task_lease(&req)?;
        let keys = &self.keys;
        rpc::mutate(
            &self.pool,
            keys,
            method::RENEW_TASK_LEASE,
            caller,
            &request_id,
            &req,
            (keys.clone(), renewal),
            |conn, ctx, input| {
                Box::pin(async move {
                    let (keys, (id, lease, seconds)) = (&input.0, input.1);
                    let (task, token) =
                        service::renew(keys, conn, &ctx, id, lease, seconds).await?;
                    Ok((encode::leased_task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn complete_task(
        &self,
        request: Request<proto::CompleteTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, completion) = parse::complete_task(&req)?;
        let keys = &self.keys;
        rpc::mutate(
            &self.pool,
            keys,
            method::COMPLETE_TASK,
            caller,
            &request_id,
            &req,
            (keys.clone(), completion),
            |conn, ctx, input| {
                Box::pin(async move {
                    let (keys, (id, lease, result)) = (&input.0, &input.1);
                    let (task, token) =
                        fulfilment::complete(keys, conn, &ctx, *id, *lease, result).await?;
                    Ok((encode::task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn fail_task(
        &self,
        request: Request<proto::FailTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, failure) = parse::fail_task(&req)?;
        let keys = &self.keys;
        rpc::mutate(
            &self.pool,
            keys,
            method::FAIL_TASK,
            caller,
            &request_id,
            &req,
            (keys.clone(), failure),
            |conn, ctx, input| {
                Box::pin(async move {
                    let (keys, (id, lease, retryable, message)) = (&input.0, &input.1);
                    let (task, token) =
                        fulfilment::fail(keys, conn, &ctx, *id, *lease, *retryable, message)
                            .await?;
                    Ok((encode::task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn get_task(
        &self,
        request: Request<proto::GetTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        let caller = Caller::of(&request);
        let id = parse::get_task(request.get_ref())?;
        let found = service::get_task(&self.pool, &self.keys, &caller, id).await;
        let task = rpc::audit_refusal(&self.pool, method::GET_TASK, found).await?;
        Ok(Response::new(encode::task_to_proto(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let caller = Caller::of(&request);
        let (filter, page) = parse::list_tasks(request.get_ref())?;
        let found = service::list_tasks(&self.reads, &self.keys, &caller, &filter, &page).await;
        let (tasks, next) = rpc::audit_refusal(&self.pool, method::LIST_TASKS, found).await?;
        Ok(Response::new(encode::tasks_page(&tasks, next)))
    }

    async fn record_disclosure(
        &self,
        request: Request<proto::RecordDisclosureRequest>,
    ) -> Result<Response<proto::Disclosure>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parse::record_disclosure(&req)?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            method::RECORD_DISCLOSURE,
            caller,
            &request_id,
            &req,
            new,
            |conn, ctx, new| {
                Box::pin(async move {
                    let (disclosure, token) = service::record_disclosure(conn, &ctx, &new).await?;
                    Ok((encode::disclosure_to_proto(&disclosure), token))
                })
            },
        )
        .await
    }

    async fn get_disclosure_report(
        &self,
        request: Request<proto::GetDisclosureReportRequest>,
    ) -> Result<Response<proto::DisclosureReport>, Status> {
        let as_of = parse::get_disclosure_report(request.get_ref())?;
        let report = service::disclosure_report(&self.pool, as_of).await?;
        Ok(Response::new((&report).into()))
    }
}
