//! The audit event and the change event every mutation writes, in the same
//! transaction as the change itself, in one statement. It returns the
//! transaction's consistency token.
use serde_json::Value;
use sqlx::PgConnection;

use crate::error::Result;
use crate::tokens::ConsistencyToken;

/// Who did what to which resource (the audit trail).
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub subject_id: Option<&'a str>,
    pub request_id: &'a str,
    pub details: Value,
}

/// What the change feed says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    ConsentRecorded,
    PurposeChanged,
    PolicyVersionPublished,
    SubjectChanged,
    PrivacyRequestChanged,
    DataSystemChanged,
    TaskChanged,
    DisclosureRecorded,
    RetentionChanged,
}

impl ChangeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::ConsentRecorded => "CONSENT_RECORDED",
            ChangeKind::PurposeChanged => "PURPOSE_CHANGED",
            ChangeKind::PolicyVersionPublished => "POLICY_VERSION_PUBLISHED",
            ChangeKind::SubjectChanged => "SUBJECT_CHANGED",
            ChangeKind::PrivacyRequestChanged => "PRIVACY_REQUEST_CHANGED",
            ChangeKind::DataSystemChanged => "DATA_SYSTEM_CHANGED",
            ChangeKind::TaskChanged => "TASK_CHANGED",
            ChangeKind::DisclosureRecorded => "DISCLOSURE_RECORDED",
            ChangeKind::RetentionChanged => "RETENTION_CHANGED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CONSENT_RECORDED" => ChangeKind::ConsentRecorded,
            "PURPOSE_CHANGED" => ChangeKind::PurposeChanged,
            "POLICY_VERSION_PUBLISHED" => ChangeKind::PolicyVersionPublished,
            "SUBJECT_CHANGED" => ChangeKind::SubjectChanged,
            "PRIVACY_REQUEST_CHANGED" => ChangeKind::PrivacyRequestChanged,
            "DATA_SYSTEM_CHANGED" => ChangeKind::DataSystemChanged,
            "TASK_CHANGED" => ChangeKind::TaskChanged,
            "DISCLOSURE_RECORDED" => ChangeKind::DisclosureRecorded,
            "RETENTION_CHANGED" => ChangeKind::RetentionChanged,
            _ => return None,
        })
    }
}

pub struct ChangeEntry<'a> {
    pub kind: ChangeKind,
    pub subject_id: Option<&'a str>,
    pub purpose_key: Option<&'a str>,
    pub consent_record_id: Option<i64>,
    pub policy_version: Option<&'a str>,
    /// The resource changed, for the kinds that are not about consent.
    pub resource: Option<&'a str>,
}

impl<'a> ChangeEntry<'a> {
    /// A change to one resource (a request, a task, a data system).
    pub fn resource(kind: ChangeKind, resource: &'a str, subject_id: Option<&'a str>) -> Self {
        ChangeEntry {
            kind,
            subject_id,
            purpose_key: None,
            consent_record_id: None,
            policy_version: None,
            resource: Some(resource),
        }
    }
}

/// Writes both events; returns the token of this transaction.
pub async fn record(
    conn: &mut PgConnection,
    audit: AuditEntry<'_>,
    change: ChangeEntry<'_>,
) -> Result<ConsistencyToken> {
    let xid: i64 = sqlx::query_scalar(
        "WITH audit AS (
             INSERT INTO audit_events (actor, method, target, subject_id, request_id, details)
             VALUES ($1, $2, $3, $4, $5, $6)
         )
         INSERT INTO change_events (kind, subject_id, purpose_key, consent_record_id, policy_version, resource)
         VALUES ($7, $8, $9, $10, $11, $12)
         RETURNING xid::text::bigint",
    )
    .bind(audit.actor)
    .bind(audit.method)
    .bind(audit.target)
    .bind(audit.subject_id)
    .bind(audit.request_id)
    .bind(audit.details)
    .bind(change.kind.as_str())
    .bind(change.subject_id)
    .bind(change.purpose_key)
    .bind(change.consent_record_id)
    .bind(change.policy_version)
    .bind(change.resource)
    .fetch_one(conn)
    .await?;
    Ok(ConsistencyToken { xid })
}
