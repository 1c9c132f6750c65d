//! Erasure: what this service holds about a subject goes, everywhere, in
//! the caller's transaction. A completed deletion request erases its
//! subject (`service::finish`); a subject newly flagged a minor without
//! parental consent is erased at once (SetSubjectMinorStatus). Both are
//! here, above the consent, retention and data-system domains they reach
//! into, so that none of those has to know about privacy requests.
use serde_json::json;
use sqlx::PgConnection;

use super::store;
use crate::consent::model::Subject;
use crate::consent::store as consent_store;
use crate::error::Result;
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::names::SubjectId;
use crate::retention::store as retention_store;
use crate::rpc::Context;
use crate::tokens::ConsistencyToken;

/// Flags (or clears) a subject as a minor. A subject newly flagged without
/// parental consent is erased at once (the policy: "if we discover personal
/// information from a child under 18 without parental consent, we will
/// delete it"): deletion tasks go out in this same transaction.
pub async fn set_minor_status(
    conn: &mut PgConnection,
    ctx: &Context,
    subject: &SubjectId,
    minor: bool,
    parental_consent: bool,
    reason: &str,
) -> Result<(Subject, ConsistencyToken)> {
    let was_minor = consent_store::subjects::is_minor(conn, subject).await?;
    let updated = consent_store::subjects::set_minor(conn, subject, minor).await?;
    let target = format!("subjects/{}", subject.as_str());
    let erasure_tasks = if minor && !was_minor && !parental_consent {
        let tasks = retention_store::erase_minor(conn, subject.as_str()).await?;
        erase_subject(
            conn,
            ctx,
            subject.as_str(),
            None,
            &format!("{target}/minorStatus"),
        )
        .await?;
        tasks
    } else {
        0
    };
    let token = journal::record(
        conn,
        ctx.audit(
            &target,
            Some(subject.as_str()),
            json!({
                "minor": minor,
                "parental_consent": parental_consent,
                "reason": reason,
                "erasure_tasks": erasure_tasks,
            }),
        ),
        ChangeEntry {
            kind: ChangeKind::SubjectChanged,
            subject_id: Some(subject.as_str()),
            purpose_key: None,
            consent_record_id: None,
            policy_version: None,
            resource: None,
        },
    )
    .await?;
    Ok((updated, token))
}

/// Erases what this service holds about a subject (see
/// `store::erase_subject`) and marks it erased, in the caller's
/// transaction: from its commit on, every check of the subject is DENIED
/// with SUBJECT_ERASED and grants are refused. The change feed carries a
/// SUBJECT_ERASED event, so watchers and every decision cache see it.
/// `erased_by` names what erased it (a deletion request, a minor status).
pub async fn erase_subject(
    conn: &mut PgConnection,
    ctx: &Context,
    subject_id: &str,
    request_id: Option<i64>,
    erased_by: &str,
) -> Result<ConsistencyToken> {
    store::erase_subject(conn, subject_id, request_id, &ctx.request_id, erased_by).await?;
    journal::record(
        conn,
        ctx.audit(
            &format!("subjects/{subject_id}"),
            Some(subject_id),
            json!({ "erased_by": erased_by }),
        ),
        ChangeEntry {
            kind: ChangeKind::SubjectErased,
            subject_id: Some(subject_id),
            purpose_key: None,
            consent_record_id: None,
            policy_version: None,
            resource: None,
        },
    )
    .await
}
