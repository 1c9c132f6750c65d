//! `privacy.v1.PrivacyRequestService`: each RPC parses its message into
//! domain values (`parse`), calls one use case (a write in `super::service`,
//! inside one idempotent transaction through `rpc::mutate`; a read in
//! `super::queries`) and encodes the answer (`encode`). Nothing here reads
//! or writes the database itself.
use tonic::{Request, Response, Status};

use super::queries;
use super::service::{self, Change, Env, NewRequest};
use crate::caller::Caller;
use crate::config::RequestSettings;
use crate::error::Result as DomainResult;
use crate::idempotency::RequestId;
use crate::keys::Keyring;
use crate::proto;
use crate::proto::method::privacy_request_service as method;
use crate::proto::privacy_request_service_server::PrivacyRequestService;
use crate::reads::Reads;
use crate::rpc;
use crate::tokens::ConsistencyToken;

mod encode;
mod parse;

pub struct PrivacyRequestApi {
    /// The primary (writes, and reads that are not routed) and replicas.
    reads: Reads,
    settings: RequestSettings,
    keys: Keyring,
}

/// What a change's transaction is handed: the use cases' environment, the
/// request it changes and the change.
struct Changed {
    env: Env,
    id: i64,
    change: Change,
}

impl PrivacyRequestApi {
    pub fn new(reads: Reads, settings: RequestSettings, keys: Keyring) -> Self {
        Self {
            reads,
            settings,
            keys,
        }
    }

    fn env(&self) -> DomainResult<Env> {
        Ok(Env {
            settings: self.settings.clone(),
            key: self.keys.hash_key()?,
            keys: self.keys.clone(),
        })
    }

    /// Applies a parsed change once per request id, and answers with the
    /// request as it is after it.
    async fn change<Req: prost::Message>(
        &self,
        method: &'static str,
        caller: Caller,
        req: &Req,
        parsed: parse::Changing,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let parse::Changing {
            request_id,
            id,
            change,
        } = parsed;
        let input = Changed {
            env: self.env()?,
            id,
            change,
        };
        rpc::mutate(
            self.reads.primary(),
            &self.keys,
            method,
            caller,
            &request_id,
            req,
            input,
            |conn, ctx, input| {
                Box::pin(async move {
                    let token =
                        service::apply(conn, &ctx, &input.env, input.id, &input.change).await?;
                    let view = service::get(&input.env.keys, conn, input.id).await?;
                    Ok((written(&view, &input.env.settings, &token), token))
                })
            },
        )
        .await
    }
}

impl PrivacyRequestApi {
    /// Files a parsed request once per request id, and answers with it.
    async fn file(
        &self,
        caller: Caller,
        req: &proto::CreatePrivacyRequestRequest,
        (request_id, new): (RequestId, NewRequest),
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let input = (self.env()?, new);
        rpc::mutate(
            self.reads.primary(),
            &self.keys,
            method::CREATE_PRIVACY_REQUEST,
            caller,
            &request_id,
            req,
            input,
            |conn, ctx, input| {
                Box::pin(async move {
                    let (env, new) = &*input;
                    let (id, token) = service::create(conn, &ctx, env, new).await?;
                    let view = service::get(&env.keys, conn, id).await?;
                    Ok((written(&view, &env.settings, &token), token))
                })
            },
        )
        .await
    }
}

/// A request as a write that changed it returns it, with the write's token.
fn written(
    view: &service::RequestView,
    settings: &RequestSettings,
    token: &ConsistencyToken,
) -> proto::PrivacyRequest {
    let mut request = encode::request_to_proto(view, today(), settings);
    request.consistency_token = token.encode();
    request
}

/// Today's date (UTC), the date clocks are read against.
fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

#[tonic::async_trait]
impl PrivacyRequestService for PrivacyRequestApi {
    async fn get_jurisdiction_rules(
        &self,
        request: Request<proto::GetJurisdictionRulesRequest>,
    ) -> Result<Response<proto::JurisdictionRules>, Status> {
        let code = parse::rules_name(&request.get_ref().name)?;
        let found = queries::rules_for(code)?;
        Ok(Response::new(encode::rules_to_proto(
            found.rules,
            &found.requested,
            found.table,
            self.settings.voluntary_agents,
        )))
    }

    async fn list_jurisdiction_rules(
        &self,
        _request: Request<proto::ListJurisdictionRulesRequest>,
    ) -> Result<Response<proto::ListJurisdictionRulesResponse>, Status> {
        let table = queries::rules_table()?;
        Ok(Response::new(encode::rules_list(
            table,
            self.settings.voluntary_agents,
        )))
    }

    async fn create_privacy_request(
        &self,
        request: Request<proto::CreatePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::create(&req)?;
        self.file(caller, &req, parsed).await
    }

    async fn get_privacy_request(
        &self,
        request: Request<proto::GetPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let id = parse::request_name(&request.get_ref().name)?;
        let view = queries::read(&self.keys, self.reads.primary(), id).await?;
        Ok(Response::new(encode::request_to_proto(
            &view,
            today(),
            &self.settings,
        )))
    }

    async fn list_privacy_requests(
        &self,
        request: Request<proto::ListPrivacyRequestsRequest>,
    ) -> Result<Response<proto::ListPrivacyRequestsResponse>, Status> {
        let q = parse::list(request.get_ref())?;
        let listed = queries::list(&self.reads, &self.keys, &q.filter, q.after, q.limit).await?;
        let page = encode::page(&listed, &q.filters, today(), &self.settings);
        Ok(Response::new(page))
    }

    async fn verify_privacy_request_identity(
        &self,
        request: Request<proto::VerifyPrivacyRequestIdentityRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::verify(&req)?;
        self.change(
            method::VERIFY_PRIVACY_REQUEST_IDENTITY,
            caller,
            &req,
            parsed,
        )
        .await
    }

    async fn extend_privacy_request(
        &self,
        request: Request<proto::ExtendPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::extend(&req)?;
        self.change(method::EXTEND_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn hold_privacy_request(
        &self,
        request: Request<proto::HoldPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::hold(&req)?;
        self.change(method::HOLD_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn resume_privacy_request(
        &self,
        request: Request<proto::ResumePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::resume(&req)?;
        self.change(method::RESUME_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn deny_privacy_request(
        &self,
        request: Request<proto::DenyPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::deny(&req)?;
        self.change(method::DENY_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn cancel_privacy_request(
        &self,
        request: Request<proto::CancelPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::cancel(&req)?;
        self.change(method::CANCEL_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn complete_privacy_request(
        &self,
        request: Request<proto::CompletePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::complete(&req)?;
        self.change(method::COMPLETE_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn appeal_privacy_request(
        &self,
        request: Request<proto::AppealPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::appeal(&req)?;
        self.change(method::APPEAL_PRIVACY_REQUEST, caller, &req, parsed)
            .await
    }

    async fn decide_appeal(
        &self,
        request: Request<proto::DecideAppealRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let parsed = parse::decide_appeal(&req)?;
        self.change(method::DECIDE_APPEAL, caller, &req, parsed)
            .await
    }

    async fn get_access_package(
        &self,
        request: Request<proto::GetAccessPackageRequest>,
    ) -> Result<Response<proto::AccessPackage>, Status> {
        let id = parse::request_name(&request.get_ref().name)?;
        let package = queries::access_package(&self.keys, self.reads.primary(), id).await?;
        Ok(Response::new(encode::access_package(id, &package)?))
    }

    async fn get_request_metrics(
        &self,
        request: Request<proto::GetRequestMetricsRequest>,
    ) -> Result<Response<proto::RequestMetrics>, Status> {
        let year = parse::metrics_year(request.get_ref())?;
        let metrics = queries::year_metrics(self.reads.primary(), year).await?;
        Ok(Response::new(encode::metrics_to_proto(&metrics)))
    }

    async fn check_suppression(
        &self,
        request: Request<proto::CheckSuppressionRequest>,
    ) -> Result<Response<proto::CheckSuppressionResponse>, Status> {
        let identifiers = parse::suppression(request.get_ref())?;
        let key = self.keys.hash_key()?;
        let matched = queries::suppressed(self.reads.primary(), &key, &identifiers).await?;
        Ok(Response::new(encode::suppression(matched)))
    }
}
