//! From `privacy.v1.AuditService` requests to the audit domain's values;
//! every invalid field is reported, by its name in the request.
use super::super::chain::Anchor;
use super::super::model::{EventFilter, EventQuery};
use crate::convert::parse_opt_timestamp;
use crate::error::{Result, Violations};
use crate::proto;
use crate::tokens::{PageToken, page_size};

/// An optional exact-match filter: empty means any.
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

pub fn list_audit_events(req: &proto::ListAuditEventsRequest) -> Result<EventQuery> {
    Violations::collect(|v| {
        let subject_id = text_filter(v, "subject_id", &req.subject_id);
        let target = text_filter(v, "target", &req.target);
        let actor = text_filter(v, "actor", &req.actor);
        let method = text_filter(v, "method", &req.method);
        let start_time = v.check("start_time", parse_opt_timestamp(req.start_time.as_ref()));
        let end_time = v.check("end_time", parse_opt_timestamp(req.end_time.as_ref()));
        let limit = v.check("page_size", page_size(req.page_size));
        let token_filters = format!(
            "audit|{}|{}|{}|{}|{:?}|{:?}",
            req.subject_id, req.target, req.actor, req.method, req.start_time, req.end_time
        );
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&token_filters, &req.page_token),
        );
        Some(EventQuery {
            filter: EventFilter {
                subject_id: subject_id?,
                target: target?,
                actor: actor?,
                method: method?,
                start_time: start_time?,
                end_time: end_time?,
            },
            limit: limit?,
            after: after?,
            token_filters,
        })
    })
}

/// The anchor to hold the chain against, if one was given.
pub fn verify_audit_log(req: &proto::VerifyAuditLogRequest) -> Result<Option<Anchor>> {
    Violations::collect(|v| {
        v.check(
            "anchor",
            match req.anchor.as_str() {
                "" => Ok(None),
                raw => Anchor::parse(raw).map(Some),
            },
        )
    })
}
