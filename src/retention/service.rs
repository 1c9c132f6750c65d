//! The retention writes, each inside the caller's transaction: the rule
//! checks (the category and system must exist, a hold is released once),
//! the store call, and the audit and change events. The gRPC layer parses
//! and converts; it runs these once per request id through `rpc::mutate`.
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::model::{EventKind, RetentionAction, RetentionPeriod, Trigger};
use super::store::{self, EntryRow, HoldRow, NewHold, PolicyRow, Write};
use crate::datasystems::model::DataSystemId;
use crate::error::{Error, Result};
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::proto::ErrorReason;
use crate::rpc::Context;
use crate::tokens::ConsistencyToken;

/// A policy as a caller states it.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub category: String,
    pub trigger: Trigger,
    pub period: RetentionPeriod,
    pub action: RetentionAction,
    pub legal_reason: String,
}

/// The audit event and the change event of a retention write to `name`.
async fn journal_change(
    conn: &mut PgConnection,
    ctx: &Context,
    name: &str,
    subject: Option<&str>,
    details: Value,
) -> Result<ConsistencyToken> {
    journal::record(
        conn,
        ctx.audit(name, subject, details),
        ChangeEntry::resource(ChangeKind::RetentionChanged, name, subject),
    )
    .await
}

/// NOT_FOUND unless the data category exists.
async fn require_category(conn: &mut PgConnection, category: &str) -> Result<()> {
    if store::category_exists(conn, category).await? {
        Ok(())
    } else {
        Err(Error::NotFound(format!("dataCategories/{category}")))
    }
}

/// Creates (ALREADY_EXISTS if there is one) or replaces (NOT_FOUND if there
/// is none) a category's policy.
pub async fn write_policy(
    conn: &mut PgConnection,
    ctx: &Context,
    write: Write,
    p: &NewPolicy,
) -> Result<(PolicyRow, ConsistencyToken)> {
    require_category(conn, &p.category).await?;
    let name = format!("retentionPolicies/{}", p.category);
    let row = store::set_policy(
        conn,
        write,
        &p.category,
        p.trigger,
        p.period,
        p.action,
        &p.legal_reason,
    )
    .await?
    .ok_or_else(|| match write {
        Write::Create => Error::AlreadyExists(name.clone()),
        Write::Replace => Error::NotFound(name.clone()),
    })?;
    let details = json!({
        "trigger": row.trigger, "period_amount": row.period_amount,
        "period_unit": row.period_unit, "action": row.action,
    });
    let token = journal_change(conn, ctx, &name, None, details).await?;
    Ok((row, token))
}

/// Sets a subject's own retention period for a category.
pub async fn set_override(
    conn: &mut PgConnection,
    ctx: &Context,
    subject: &str,
    category: &str,
    period: RetentionPeriod,
    reason: &str,
) -> Result<ConsistencyToken> {
    require_category(conn, category).await?;
    store::set_override(conn, subject, category, period, reason).await?;
    let name = format!("subjects/{subject}/retentionOverrides/{category}");
    journal_change(conn, ctx, &name, Some(subject), json!({ "reason": reason })).await
}

/// Records a lifecycle event and returns the schedule entries it changed.
pub async fn record_event(
    conn: &mut PgConnection,
    ctx: &Context,
    subject: &str,
    category: Option<&str>,
    system: Option<&str>,
    event: EventKind,
    at: DateTime<Utc>,
) -> Result<(Vec<EntryRow>, ConsistencyToken)> {
    if let Some(c) = category {
        require_category(conn, c).await?;
    }
    let changed = store::record_event(conn, subject, category, system, event, at, None).await?;
    let name = format!("subjects/{subject}/retentionSchedule");
    let details = json!({ "event": event.as_str(), "category": category,
        "data_system": system, "entries_changed": changed.len() });
    let token = journal_change(conn, ctx, &name, Some(subject), details).await?;
    Ok((changed, token))
}

/// Places a legal hold; its category and data system, when named, must exist.
pub async fn place_hold(
    conn: &mut PgConnection,
    ctx: &Context,
    hold: &NewHold<'_>,
    system: Option<&DataSystemId>,
) -> Result<(HoldRow, ConsistencyToken)> {
    if let Some(c) = hold.category {
        require_category(conn, c).await?;
    }
    // An unknown system would break the foreign key (INTERNAL): NOT_FOUND.
    if let Some(id) = system
        && !crate::datasystems::store::data_system_exists(conn, id).await?
    {
        return Err(Error::NotFound(id.name()));
    }
    let row = store::place_hold(conn, hold, &ctx.actor).await?;
    let name = format!("legalHolds/{}", row.id);
    let details = json!({ "category": hold.category, "data_system": hold.data_system_id,
        "reason": hold.reason });
    let token = journal_change(conn, ctx, &name, hold.subject_id, details).await?;
    Ok((row, token))
}

/// Releases an active hold (FAILED_PRECONDITION if it already was).
pub async fn release_hold(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    reason: &str,
) -> Result<(HoldRow, ConsistencyToken)> {
    let name = format!("legalHolds/{id}");
    let hold = store::get_hold(conn, id)
        .await?
        .ok_or_else(|| Error::NotFound(name.clone()))?;
    if hold.release_time.is_some() {
        return Err(Error::precondition(
            ErrorReason::InvalidStateTransition,
            &name,
            format!("{name} is already released"),
        ));
    }
    let hold = store::release_hold(conn, id, &ctx.actor, reason).await?;
    let subject = hold.subject_id.clone();
    let token = journal_change(
        conn,
        ctx,
        &name,
        subject.as_deref(),
        json!({ "reason": reason }),
    )
    .await?;
    Ok((hold, token))
}
