//! `privacy.v1.ConsentService`: each RPC parses its request into domain
//! values (`parse`), calls one use case (`consent::service`, `queries`,
//! `watch`), and encodes the result (`encode`). Nothing else happens here.
mod encode;
mod parse;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

use super::cache::DecisionCache;
use super::group_commit::{Batching, GroupCommit};
use super::service::{self, Context};
use super::{queries, watch};
use crate::caller::Caller;
use crate::keys::Keyring;
use crate::metrics::DecisionMetrics;
use crate::proto;
use crate::proto::consent_service_server::ConsentService;
use crate::proto::method::consent_service as method;
use crate::reads::Reads;
use crate::requests::erasure;
use crate::rpc;

pub use super::watch::WatchSettings;
pub use crate::rpc::CONSISTENCY_HEADER;

pub struct ConsentApi {
    /// The primary (`reads.primary()`) takes writes and the reads that are
    /// not routed.
    reads: Reads,
    watch: WatchSettings,
    shutdown: signal::Receiver<bool>,
    keys: Keyring,
    cache: DecisionCache,
    /// RecordConsent's writes, grouped into shared commits.
    writes: GroupCommit,
    decisions: Arc<DecisionMetrics>,
}

impl ConsentApi {
    pub fn new(
        reads: Reads,
        watch: WatchSettings,
        shutdown: signal::Receiver<bool>,
        keys: Keyring,
        cache: DecisionCache,
        batching: Batching,
        decisions: Arc<DecisionMetrics>,
    ) -> Self {
        let primary = reads.primary().clone();
        Self {
            writes: GroupCommit::start(primary, keys.clone(), method::RECORD_CONSENT, batching),
            reads,
            watch,
            shutdown,
            keys,
            cache,
            decisions,
        }
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchConsentChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn create_purpose(
        &self,
        request: Request<proto::CreatePurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parse::create_purpose(&req)?;
        let primary = self.reads.primary();
        rpc::mutate(
            primary,
            &self.keys,
            method::CREATE_PURPOSE,
            caller,
            &request_id,
            &req,
            new,
            |conn, ctx, new| {
                Box::pin(async move {
                    let (p, token) =
                        service::create_purpose(conn, &ctx, &new.key, &new.fields).await?;
                    Ok((encode::purpose_to_proto(&p), token))
                })
            },
        )
        .await
    }

    async fn get_purpose(
        &self,
        request: Request<proto::GetPurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        let key = parse::get_purpose(request.get_ref())?;
        let purpose = queries::get_purpose(self.reads.primary(), &key).await?;
        Ok(Response::new(encode::purpose_to_proto(&purpose)))
    }

    async fn list_purposes(
        &self,
        request: Request<proto::ListPurposesRequest>,
    ) -> Result<Response<proto::ListPurposesResponse>, Status> {
        let page = parse::list_purposes(request.get_ref())?;
        let purposes =
            queries::list_purposes(self.reads.primary(), page.after.as_deref(), page.limit + 1)
                .await?;
        Ok(Response::new(encode::list_purposes(purposes, &page)))
    }

    async fn update_purpose(
        &self,
        request: Request<proto::UpdatePurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, update) = parse::update_purpose(&req)?;
        let primary = self.reads.primary();
        rpc::mutate(
            primary,
            &self.keys,
            method::UPDATE_PURPOSE,
            caller,
            &request_id,
            &req,
            update,
            |conn, ctx, u| {
                Box::pin(async move {
                    let (p, token) = service::update_purpose(
                        conn,
                        &ctx,
                        &u.key,
                        &u.fields,
                        &u.mask,
                        u.etag.as_deref(),
                        u.lift_version.as_deref(),
                    )
                    .await?;
                    Ok((encode::purpose_to_proto(&p), token))
                })
            },
        )
        .await
    }

    /// Not through `rpc::mutate`: RecordConsent's writes share commits
    /// (group commit), and a replay may return an earlier call's sealed
    /// response (see `service::record_consent`).
    async fn record_consent(
        &self,
        request: Request<proto::RecordConsentRequest>,
    ) -> Result<Response<proto::RecordConsentResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parse::record_consent(&req)?;
        rpc::note_request_id(&request_id);
        let ctx = Context::for_call(&caller, method::RECORD_CONSENT, &request_id);
        let fingerprint =
            crate::idempotency::fingerprint(&self.keys, method::RECORD_CONSENT, &req)?;
        let recorded = service::record_consent_retrying(
            &self.cache,
            &self.writes,
            &ctx,
            &fingerprint,
            &request_id,
            &new,
        )
        .await?;
        let (response, token) = encode::recorded(recorded)?;
        Ok(rpc::with_token(response, token))
    }

    async fn check_consent(
        &self,
        request: Request<proto::CheckConsentRequest>,
    ) -> Result<Response<proto::CheckConsentResponse>, Status> {
        let (query, read, mask) = parse::check_consent(request.get_ref())?;
        let queries = std::slice::from_ref(&query);
        let answers = service::check_cached(
            &self.cache,
            &self.keys,
            &self.reads,
            queries,
            read,
            &self.decisions,
        )
        .await?;
        Ok(Response::new(encode::check_consent(&answers, &mask)?))
    }

    async fn batch_check_consent(
        &self,
        request: Request<proto::BatchCheckConsentRequest>,
    ) -> Result<Response<proto::BatchCheckConsentResponse>, Status> {
        let (queries, read) = parse::batch_check_consent(request.get_ref())?;
        let answers = service::check_cached(
            &self.cache,
            &self.keys,
            &self.reads,
            &queries,
            read,
            &self.decisions,
        )
        .await?;
        Ok(Response::new(encode::batch_check_consent(
            &queries, &answers,
        )))
    }

    async fn get_consent_state(
        &self,
        request: Request<proto::GetConsentStateRequest>,
    ) -> Result<Response<proto::ConsentState>, Status> {
        let q = parse::get_consent_state(request.get_ref())?;
        let (queries, answers) = service::consent_state(
            &self.cache,
            &self.keys,
            &self.reads,
            &q.subject,
            q.jurisdiction.as_ref(),
            q.gpc_signal,
            q.read,
        )
        .await?;
        Ok(Response::new(encode::consent_state(
            &q.subject, &queries, &answers,
        )))
    }

    async fn list_consent_records(
        &self,
        request: Request<proto::ListConsentRecordsRequest>,
    ) -> Result<Response<proto::ListConsentRecordsResponse>, Status> {
        let q = parse::list_consent_records(request.get_ref())?;
        let records = queries::list_records(
            &self.keys,
            &self.reads,
            q.token,
            q.subject.as_ref(),
            q.purpose.as_ref(),
            q.page.after,
            q.page.limit + 1,
        )
        .await?;
        Ok(Response::new(encode::list_consent_records(
            records, &q.page,
        )))
    }

    type WatchConsentChangesStream = WatchStream;

    async fn watch_consent_changes(
        &self,
        request: Request<proto::WatchConsentChangesRequest>,
    ) -> Result<Response<Self::WatchConsentChangesStream>, Status> {
        let (start, subject) = parse::watch_consent_changes(request.get_ref())?;
        let shutdown = self.shutdown.clone();
        let primary = self.reads.primary();
        let changes =
            watch::changes(primary, &self.keys, &self.watch, shutdown, start, subject).await?;
        let responses = changes.map(|batch| match batch {
            Ok(batch) => Ok(encode::watch_to_proto(&batch)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn publish_policy_version(
        &self,
        request: Request<proto::PublishPolicyVersionRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, version) = parse::publish_policy_version(&req)?;
        let primary = self.reads.primary();
        rpc::mutate(
            primary,
            &self.keys,
            method::PUBLISH_POLICY_VERSION,
            caller,
            &request_id,
            &req,
            version,
            |conn, ctx, version| {
                Box::pin(async move {
                    let (p, token) = service::publish_policy_version(conn, &ctx, &version).await?;
                    Ok((encode::policy_to_proto(&p), token))
                })
            },
        )
        .await
    }

    async fn list_policy_versions(
        &self,
        request: Request<proto::ListPolicyVersionsRequest>,
    ) -> Result<Response<proto::ListPolicyVersionsResponse>, Status> {
        let page = parse::list_policy_versions(request.get_ref())?;
        let primary = self.reads.primary();
        let versions =
            queries::list_policy_versions(primary, page.after.clone(), page.limit + 1).await?;
        Ok(Response::new(encode::list_policy_versions(versions, &page)))
    }

    async fn list_subjects_to_reconsent(
        &self,
        request: Request<proto::ListSubjectsToReconsentRequest>,
    ) -> Result<Response<proto::ListSubjectsToReconsentResponse>, Status> {
        let q = parse::list_subjects_to_reconsent(request.get_ref())?;
        let (version, grants) = queries::subjects_to_reconsent(
            &self.keys,
            self.reads.primary(),
            q.version_id.as_deref(),
            q.page.after.clone(),
            q.page.limit + 1,
        )
        .await?;
        Ok(Response::new(encode::list_subjects_to_reconsent(
            version, grants, &q.page,
        )))
    }

    async fn get_subject(
        &self,
        request: Request<proto::GetSubjectRequest>,
    ) -> Result<Response<proto::Subject>, Status> {
        let subject = parse::get_subject(request.get_ref())?;
        let found = queries::get_subject(self.reads.primary(), &subject).await?;
        Ok(Response::new(encode::subject_to_proto(&found)))
    }

    async fn set_subject_minor_status(
        &self,
        request: Request<proto::SetSubjectMinorStatusRequest>,
    ) -> Result<Response<proto::Subject>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, status) = parse::set_subject_minor_status(&req)?;
        let primary = self.reads.primary();
        rpc::mutate(
            primary,
            &self.keys,
            method::SET_SUBJECT_MINOR_STATUS,
            caller,
            &request_id,
            &req,
            status,
            |conn, ctx, s| {
                Box::pin(async move {
                    let (subject, token) = erasure::set_minor_status(
                        conn,
                        &ctx,
                        &s.subject,
                        s.minor,
                        s.parental_consent,
                        &s.reason,
                    )
                    .await?;
                    Ok((encode::subject_to_proto(&subject), token))
                })
            },
        )
        .await
    }
}
