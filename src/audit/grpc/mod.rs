//! `privacy.v1.AuditService`: read the trail, verify the chain. Each RPC
//! parses its request (`parse`), calls one use case (`super::service`) and
//! encodes the answer (`encode`).
mod encode;
mod parse;

use std::sync::Arc;

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::service;
use crate::keys::Keyring;
use crate::metrics::VerificationMetrics;
use crate::proto;
use crate::proto::audit_service_server::AuditService;
use crate::reads::Reads;

pub struct AuditApi {
    /// The primary: chain verification reads it.
    pool: PgPool,
    reads: Reads,
    /// Checks the checkpoints' MACs (master keys, never in the database).
    keys: Keyring,
    verifications: Arc<VerificationMetrics>,
}

impl AuditApi {
    pub fn new(reads: Reads, keys: Keyring, verifications: Arc<VerificationMetrics>) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            keys,
            verifications,
        }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let query = parse::list_audit_events(request.get_ref())?;
        let (events, next) = service::list_events(&self.reads, &query).await?;
        Ok(Response::new(encode::events_page(events, next)))
    }

    async fn verify_audit_log(
        &self,
        request: Request<proto::VerifyAuditLogRequest>,
    ) -> Result<Response<proto::VerifyAuditLogResponse>, Status> {
        let anchor = parse::verify_audit_log(request.get_ref())?;
        let found =
            service::verify(&self.pool, &self.keys, anchor.as_ref(), &self.verifications).await?;
        Ok(Response::new(found.into()))
    }
}
