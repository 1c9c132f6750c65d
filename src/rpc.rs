//! What every gRPC service here shares: who is calling, the idempotent
//! mutation wrapper (AIP-155 request id → one transaction → response with
//! its consistency token), paging, and time checks at the edge.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tonic::{Response, Status};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::idempotency::{self, RequestId};
use crate::journal::AuditEntry;
use crate::tokens::ConsistencyToken;

/// The response header that carries a write's consistency token.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

/// Clock skew tolerated between a caller and this server for "not in the
/// future" checks.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Who is making a change, through which method, under which request id.
#[derive(Debug, Clone)]
pub struct Context {
    pub actor: String,
    pub method: &'static str,
    pub request_id: String,
    /// Whose request id it is (see `Caller::request_id_scope`).
    pub request_id_scope: String,
    /// The data systems the caller is limited to (`None`: all).
    pub data_systems: Option<Arc<[String]>>,
}

impl Context {
    /// The context of a call by `caller` through `method` under `request_id`.
    pub fn for_call(caller: &Caller, method: &'static str, request_id: &RequestId) -> Self {
        Context {
            actor: caller.as_str().to_owned(),
            method,
            request_id: request_id.as_str().to_owned(),
            request_id_scope: caller.request_id_scope().to_owned(),
            data_systems: caller.data_systems().cloned(),
        }
    }

    /// A context for work the service does on its own behalf (`actor` names
    /// the job), not limited to any data system.
    pub fn internal(actor: impl Into<String>, method: &'static str, request_id: String) -> Self {
        Context {
            actor: actor.into(),
            method,
            request_id,
            // The service's own jobs store no response under a request id.
            request_id_scope: String::new(),
            data_systems: None,
        }
    }

    /// PERMISSION_DENIED unless the caller may act for data system `system`.
    pub fn check_system(&self, system: &str, resource: &str) -> Result<()> {
        crate::caller::check_system(&self.actor, self.data_systems.as_ref(), system, resource)
    }

    /// The audit entry of this call for `target`.
    pub fn audit<'a>(
        &'a self,
        target: &'a str,
        subject: Option<&'a str>,
        details: serde_json::Value,
    ) -> AuditEntry<'a> {
        AuditEntry {
            actor: &self.actor,
            method: self.method,
            target,
            subject_id: subject,
            request_id: &self.request_id,
            details,
        }
    }
}

/// Runs a mutation once per request id (AIP-155) in one transaction, and
/// returns its response with the write's consistency token in the
/// `x-consistency-token` header.
///
/// `input` is the request already parsed into domain values; `work` gets it
/// (and the call's context) shared, so a retried transaction reuses them
/// rather than cloning what the closure captured.
#[allow(clippy::too_many_arguments)]
pub async fn mutate<Req, In, R, F>(
    pool: &PgPool,
    keys: &crate::keys::Keyring,
    method: &'static str,
    caller: Caller,
    request_id: &RequestId,
    request: &Req,
    input: In,
    work: F,
) -> Result<Response<R>, Status>
where
    Req: prost::Message,
    R: idempotency::Holds,
    F: for<'c> Fn(
        &'c mut PgConnection,
        Arc<Context>,
        Arc<In>,
    ) -> BoxFuture<'c, Result<(R, ConsistencyToken)>>,
{
    note_request_id(request_id);
    let ctx = Arc::new(Context::for_call(&caller, method, request_id));
    let input = Arc::new(input);
    let fingerprint = idempotency::fingerprint(keys, method, request)?;
    let key = idempotency::Key::new(caller.request_id_scope(), request_id);
    let outcome = idempotency::run(pool, keys, method, &key, &fingerprint, |conn| {
        work(conn, ctx.clone(), input.clone())
    })
    .await;
    let (response, token) = audit_refusal(pool, method, outcome).await?;
    Ok(with_token(response, token))
}

/// A response carrying a consistency token in its header.
pub fn with_token<T>(message: T, token: ConsistencyToken) -> Response<T> {
    let mut response = Response::new(message);
    if let Ok(value) = token.encode().parse() {
        response.metadata_mut().insert(CONSISTENCY_HEADER, value);
    }
    response
}

/// Puts the request id on the RPC's span.
pub fn note_request_id(request_id: &RequestId) {
    tracing::Span::current().record("request_id", request_id.as_str());
}

/// Splits a page read with `limit + 1` rows into the page and the next token.
pub fn paginate<T>(
    mut items: Vec<T>,
    limit: i64,
    token_of: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(&token_of).unwrap_or_default();
        (items, next)
    } else {
        (items, String::new())
    }
}

/// A time a caller reports must not be in the future (beyond clock skew).
pub fn not_in_future(t: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if t > Utc::now() + CLOCK_SKEW {
        Err("must not be in the future".into())
    } else {
        Ok(t)
    }
}

/// Audits a refusal to act on a resource (PERMISSION_DENIED: a caller
/// limited to some data systems reaching for another's) before returning
/// it; the refused change itself was rolled back.
pub async fn audit_refusal<T>(pool: &PgPool, method: &str, result: Result<T>) -> Result<T> {
    if let Err(Error::PermissionDenied { caller, resource }) = &result {
        crate::auth::audit_denial(
            pool,
            caller,
            method,
            "PERMISSION_DENIED",
            &format!("may not act on {resource}"),
            "",
            None,
        )
        .await;
    }
    result
}
