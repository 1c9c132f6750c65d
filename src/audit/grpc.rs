//! `privacy.v1.AuditService`: read the trail, verify the chain.
use futures::TryFutureExt;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::chain::Anchor;
use super::sealer;
use crate::convert::{parse_opt_timestamp, timestamp};
use crate::error::{Error, Violations};
use crate::keys::Keyring;
use crate::proto;
use crate::proto::audit_service_server::AuditService;
use crate::reads::Reads;
use crate::rpc::paginate;
use crate::tokens::{PageToken, page_size};

pub struct AuditApi {
    /// The primary: chain verification reads it.
    pool: PgPool,
    reads: Reads,
    /// Checks the checkpoints' MACs (master keys, never in the database).
    keys: Keyring,
}

impl AuditApi {
    pub fn new(reads: Reads, keys: Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            keys,
        }
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    actor: String,
    method: String,
    target: String,
    subject_id: Option<String>,
    request_id: Option<String>,
    details: String,
    occur_time: chrono::DateTime<chrono::Utc>,
    chain_seq: Option<i64>,
    hash: Option<Vec<u8>>,
}

fn text_filter(v: &mut Violations, field: &str, raw: &str) -> Option<Option<String>> {
    v.check(
        field,
        if raw.len() > 512 {
            Err("must be at most 512 characters".to_owned())
        } else if raw.contains('\0') {
            // PostgreSQL text cannot hold NUL: the query would fail.
            Err("must not contain NUL characters".to_owned())
        } else {
            Ok((!raw.is_empty()).then(|| raw.to_owned()))
        },
    )
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let subject = text_filter(&mut v, "subject_id", &req.subject_id);
        let target = text_filter(&mut v, "target", &req.target);
        let actor = text_filter(&mut v, "actor", &req.actor);
        let method = text_filter(&mut v, "method", &req.method);
        let start = v.check("start_time", parse_opt_timestamp(req.start_time.as_ref()));
        let end = v.check("end_time", parse_opt_timestamp(req.end_time.as_ref()));
        let limit = v.check("page_size", page_size(req.page_size));
        let filters = format!(
            "audit|{}|{}|{}|{}|{:?}|{:?}",
            req.subject_id, req.target, req.actor, req.method, req.start_time, req.end_time
        );
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&filters, &req.page_token),
        );
        let (
            Some(subject),
            Some(target),
            Some(actor),
            Some(method),
            Some(start),
            Some(end),
            Some(limit),
            Some(after),
        ) = (subject, target, actor, method, start, end, limit, after)
        else {
            return Err(v.into_error().into());
        };
        let list = |pool| {
            sqlx::query_as::<_, EventRow>(
                "SELECT e.id, e.actor, e.method, e.target, e.subject_id, e.request_id,
                    e.details::text AS details, e.occur_time, c.chain_seq, c.hash
             FROM audit_events e LEFT JOIN audit_chain c ON c.event_id = e.id
             WHERE e.id > $1
               AND ($2::text IS NULL OR e.subject_id = $2)
               AND ($3::text IS NULL OR e.target = $3)
               AND ($4::text IS NULL OR e.actor = $4)
               AND ($5::text IS NULL OR e.method = $5)
               AND ($6::timestamptz IS NULL OR e.occur_time >= $6)
               AND ($7::timestamptz IS NULL OR e.occur_time < $7)
             ORDER BY e.id LIMIT $8",
            )
            .bind(after.unwrap_or(0))
            .bind(subject.as_deref())
            .bind(target.as_deref())
            .bind(actor.as_deref())
            .bind(method.as_deref())
            .bind(start)
            .bind(end)
            .bind(limit + 1)
            .fetch_all(pool)
            .map_err(Error::from)
        };
        let rows = self.reads.read(None, list).await?;
        let (page, next) = paginate(rows, limit, |r| PageToken::encode(&filters, &r.id));
        Ok(Response::new(proto::ListAuditEventsResponse {
            audit_events: page
                .into_iter()
                .map(|r| proto::AuditEvent {
                    name: format!("auditEvents/{}", r.id),
                    actor: r.actor,
                    method: r.method,
                    target: r.target,
                    subject_id: r.subject_id.unwrap_or_default(),
                    request_id: r.request_id.unwrap_or_default(),
                    details_json: r.details,
                    occur_time: Some(timestamp(r.occur_time)),
                    chain_seq: r.chain_seq.unwrap_or(0),
                    hash: r.hash.map(hex::encode).unwrap_or_default(),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn verify_audit_log(
        &self,
        request: Request<proto::VerifyAuditLogRequest>,
    ) -> Result<Response<proto::VerifyAuditLogResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let anchor = v.check(
            "anchor",
            match req.anchor.as_str() {
                "" => Ok(None),
                raw => Anchor::parse(raw).map(Some),
            },
        );
        let Some(anchor) = anchor else {
            return Err(v.into_error().into());
        };
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let found = sealer::verify(&mut conn, &self.keys, anchor.as_ref()).await?;
        let published = found.anchor().map(|a| a.to_string()).unwrap_or_default();
        let (seq, event, problem) = match found.broken {
            Some(b) => (
                b.seq,
                b.event_id
                    .map(|id| format!("auditEvents/{id}"))
                    .unwrap_or_default(),
                b.problem,
            ),
            None => (0, String::new(), String::new()),
        };
        Ok(Response::new(proto::VerifyAuditLogResponse {
            intact: seq == 0,
            events_verified: found.verified,
            first_broken_seq: seq,
            first_broken_event: event,
            problem,
            unsealed_events: found.unsealed,
            head_hash: hex::encode(found.head_hash),
            anchor: published,
            anchor_held: found.anchor_held,
            checkpoints_verified: found.checkpoints_verified,
        }))
    }
}
