//! `privacy.v1.RetentionService`. Each RPC parses its request (`parse`),
//! calls one use case (`super::service`; writes once per request id in one
//! transaction through `rpc::mutate`) and encodes the answer (`encode`).
mod encode;
mod parse;

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::model::{LifecycleEvent, Write};
use super::service;
use super::sweeper::SweepSettings;
use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::proto;
use crate::proto::method::retention_service as method;
use crate::proto::retention_service_server::RetentionService;
use crate::reads::Reads;
use crate::rpc;

pub use encode::legal_keep_to_proto;

pub struct RetentionApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    sweep: SweepSettings,
    keys: crate::keys::Keyring,
}

impl RetentionApi {
    pub fn new(reads: Reads, sweep: SweepSettings, keys: crate::keys::Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            sweep,
            keys,
        }
    }

    /// Creates or replaces a policy, once per request id.
    async fn write_policy<Req: prost::Message>(
        &self,
        method: &'static str,
        write: Write,
        caller: Caller,
        (request_id, policy): (&str, Option<&proto::RetentionPolicy>),
        req: &Req,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let (request_id, policy) = parse::policy(request_id, policy)?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            method,
            caller,
            &request_id,
            req,
            policy,
            move |conn, ctx, policy| {
                Box::pin(async move {
                    let (row, token) = service::write_policy(conn, &ctx, write, &policy).await?;
                    Ok((encode::policy_to_proto(&row), token))
                })
            },
        )
        .await
    }
}

/// A reporter limited to some data systems reports for one of them:
/// without a system the event would move every system's schedule.
fn event_scope(caller: &Caller, event: &LifecycleEvent) -> Result<()> {
    if caller.data_systems().is_none() {
        return Ok(());
    }
    match &event.data_system {
        Some(id) => caller.check_system(id.as_str(), &id.name()),
        None => Err(Error::PermissionDenied {
            caller: caller.as_str().to_owned(),
            resource: "every data system's schedule (name a data_system)".to_owned(),
        }),
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn list_data_categories(
        &self,
        _request: Request<proto::ListDataCategoriesRequest>,
    ) -> Result<Response<proto::ListDataCategoriesResponse>, Status> {
        let categories = service::categories(&self.pool).await?;
        Ok(Response::new(encode::categories(categories)))
    }

    async fn get_retention_policy(
        &self,
        request: Request<proto::GetRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let category = parse::get_retention_policy(request.get_ref())?;
        let policy = service::get_policy(&self.pool, &category).await?;
        Ok(Response::new(encode::policy_to_proto(&policy)))
    }

    async fn list_retention_policies(
        &self,
        _request: Request<proto::ListRetentionPoliciesRequest>,
    ) -> Result<Response<proto::ListRetentionPoliciesResponse>, Status> {
        let policies = service::list_policies(&self.reads).await?;
        Ok(Response::new(encode::policies(&policies)))
    }

    async fn create_retention_policy(
        &self,
        request: Request<proto::CreateRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let raw = (req.request_id.as_str(), req.retention_policy.as_ref());
        self.write_policy(
            method::CREATE_RETENTION_POLICY,
            Write::Create,
            caller,
            raw,
            &req,
        )
        .await
    }

    async fn update_retention_policy(
        &self,
        request: Request<proto::UpdateRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let raw = (req.request_id.as_str(), req.retention_policy.as_ref());
        self.write_policy(
            method::UPDATE_RETENTION_POLICY,
            Write::Replace,
            caller,
            raw,
            &req,
        )
        .await
    }

    async fn set_retention_override(
        &self,
        request: Request<proto::SetRetentionOverrideRequest>,
    ) -> Result<Response<proto::RetentionOverride>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parse::set_retention_override(&req)?;
        // The override is answered as it was sent.
        let echo = req.retention_override.clone().unwrap_or_default();
        rpc::mutate(
            &self.pool,
            &self.keys,
            method::SET_RETENTION_OVERRIDE,
            caller,
            &request_id,
            &req,
            (new, echo),
            |conn, ctx, input| {
                Box::pin(async move {
                    let token = service::set_override(conn, &ctx, &input.0).await?;
                    Ok((input.1.clone(), token))
                })
            },
        )
        .await
    }

    async fn record_lifecycle_event(
        &self,
        request: Request<proto::RecordLifecycleEventRequest>,
    ) -> Result<Response<proto::RecordLifecycleEventResponse>, Status> {
        const METHOD: &str = method::RECORD_LIFECYCLE_EVENT;
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, event) = parse::record_lifecycle_event(&req)?;
        rpc::audit_refusal(&self.pool, METHOD, event_scope(&caller, &event)).await?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            event,
            |conn, ctx, event| {
                Box::pin(async move {
                    let (changed, token) = service::record_event(conn, &ctx, &event).await?;
                    Ok((encode::changed_entries(&changed), token))
                })
            },
        )
        .await
    }

    async fn place_legal_hold(
        &self,
        request: Request<proto::PlaceLegalHoldRequest>,
    ) -> Result<Response<proto::LegalHold>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, hold) = parse::place_legal_hold(&req)?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            method::PLACE_LEGAL_HOLD,
            caller,
            &request_id,
            &req,
            hold,
            |conn, ctx, hold| {
                Box::pin(async move {
                    let (row, token) = service::place_hold(conn, &ctx, &hold).await?;
                    Ok((encode::hold_to_proto(&row), token))
                })
            },
        )
        .await
    }

    async fn release_legal_hold(
        &self,
        request: Request<proto::ReleaseLegalHoldRequest>,
    ) -> Result<Response<proto::LegalHold>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, release) = parse::release_legal_hold(&req)?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            method::RELEASE_LEGAL_HOLD,
            caller,
            &request_id,
            &req,
            release,
            |conn, ctx, release| {
                Box::pin(async move {
                    let (id, reason) = (release.0, &release.1);
                    let (hold, token) = service::release_hold(conn, &ctx, id, reason).await?;
                    Ok((encode::hold_to_proto(&hold), token))
                })
            },
        )
        .await
    }

    async fn list_legal_holds(
        &self,
        request: Request<proto::ListLegalHoldsRequest>,
    ) -> Result<Response<proto::ListLegalHoldsResponse>, Status> {
        let req = request.get_ref();
        let subject = parse::list_legal_holds(req)?;
        let holds =
            service::list_holds(&self.reads, req.include_inactive, subject.as_deref()).await?;
        Ok(Response::new(encode::holds(&holds)))
    }

    async fn run_retention_sweep(
        &self,
        request: Request<proto::RunRetentionSweepRequest>,
    ) -> Result<Response<proto::RunRetentionSweepResponse>, Status> {
        let caller = Caller::of(&request);
        let request_id = parse::run_retention_sweep(request.get_ref())?;
        rpc::note_request_id(&request_id);
        // Each batch commits on its own (a sweep may be long), so a retry with
        // the same request id sweeps again: harmless, it takes only what is
        // still due.
        let ctx = rpc::Context::internal(
            caller.as_str(),
            method::RUN_RETENTION_SWEEP,
            request_id.as_str().to_owned(),
        );
        let totals = service::sweep(&self.pool, &self.sweep, &ctx).await?;
        Ok(Response::new(totals.into()))
    }

    async fn get_record_of_processing(
        &self,
        _request: Request<proto::GetRecordOfProcessingRequest>,
    ) -> Result<Response<proto::RecordOfProcessing>, Status> {
        let record = service::record_of_processing(&self.pool).await?;
        Ok(Response::new(record.into()))
    }

    async fn get_retention_schedule(
        &self,
        request: Request<proto::GetRetentionScheduleRequest>,
    ) -> Result<Response<proto::RetentionSchedule>, Status> {
        let subject = parse::get_retention_schedule(request.get_ref())?;
        let schedule = service::schedule(&self.pool, &subject).await?;
        Ok(Response::new((&schedule).into()))
    }
}
