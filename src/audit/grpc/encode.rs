//! From the audit domain's values to `privacy.v1.AuditService` messages.
use super::super::model::AuditEvent;
use super::super::sealer::Verification;
use crate::convert::timestamp;
use crate::proto;

impl From<AuditEvent> for proto::AuditEvent {
    fn from(e: AuditEvent) -> Self {
        proto::AuditEvent {
            name: format!("auditEvents/{}", e.id),
            actor: e.actor,
            method: e.method,
            target: e.target,
            subject_id: e.subject_id.unwrap_or_default(),
            request_id: e.request_id.unwrap_or_default(),
            details_json: e.details,
            occur_time: Some(timestamp(e.occur_time)),
            chain_seq: e.chain_seq.unwrap_or(0),
            hash: e.hash.map(hex::encode).unwrap_or_default(),
        }
    }
}

pub fn events_page(events: Vec<AuditEvent>, next: String) -> proto::ListAuditEventsResponse {
    proto::ListAuditEventsResponse {
        audit_events: events.into_iter().map(Into::into).collect(),
        next_page_token: next,
    }
}

impl From<Verification> for proto::VerifyAuditLogResponse {
    fn from(found: Verification) -> Self {
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
        proto::VerifyAuditLogResponse {
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
        }
    }
}
