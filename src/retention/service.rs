//! The retention use cases. Writes run inside the caller's transaction: the
//! rule checks (the category and system must exist, a hold is released
//! once), the store call, and the audit and change events; the gRPC layer
//! runs them once per request id through `rpc::mutate`. Reads take a pool
//! (or `Reads`, when a replica may answer).
use chrono::Utc;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use super::model::{
    EntryRow, HoldRow, LifecycleEvent, NewLegalHold, NewOverride, PolicyRow, RecordOfProcessing,
    RetentionAction, RetentionPeriod, Schedule, Trigger, Write,
};
use super::store::{self, NewHold};
use super::sweeper::{self, SweepSettings, SweepTotals};
use crate::datasystems::model::DataSystemId;
use crate::error::{Error, Result};
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::names::SubjectId;
use crate::proto::ErrorReason;
use crate::reads::Reads;
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
#[tracing::instrument(skip_all, fields(category = %p.category))]
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
#[tracing::instrument(skip_all, fields(category = %o.category))]
pub async fn set_override(
    conn: &mut PgConnection,
    ctx: &Context,
    o: &NewOverride,
) -> Result<ConsistencyToken> {
    require_category(conn, &o.category).await?;
    let subject = o.subject_id.as_str();
    store::set_override(conn, subject, &o.category, o.period, &o.reason).await?;
    let name = format!("subjects/{subject}/retentionOverrides/{}", o.category);
    journal_change(
        conn,
        ctx,
        &name,
        Some(subject),
        json!({ "reason": o.reason }),
    )
    .await
}

/// Records a lifecycle event and returns the schedule entries it changed.
#[tracing::instrument(skip_all, fields(event = e.event.as_str(), data_system = e.data_system.as_ref().map(DataSystemId::as_str)))]
pub async fn record_event(
    conn: &mut PgConnection,
    ctx: &Context,
    e: &LifecycleEvent,
) -> Result<(Vec<EntryRow>, ConsistencyToken)> {
    let (subject, category) = (e.subject_id.as_str(), e.category.as_deref());
    let system = e.data_system.as_ref().map(DataSystemId::as_str);
    if let Some(c) = category {
        require_category(conn, c).await?;
    }
    let changed = store::record_event(conn, subject, category, system, e.event, e.at, None).await?;
    let name = format!("subjects/{subject}/retentionSchedule");
    let details = json!({ "event": e.event.as_str(), "category": category,
        "data_system": system, "entries_changed": changed.len() });
    let token = journal_change(conn, ctx, &name, Some(subject), details).await?;
    Ok((changed, token))
}

/// Places a legal hold; its category and data system, when named, must exist.
#[tracing::instrument(skip_all, fields(data_system = h.data_system.as_ref().map(DataSystemId::as_str)))]
pub async fn place_hold(
    conn: &mut PgConnection,
    ctx: &Context,
    h: &NewLegalHold,
) -> Result<(HoldRow, ConsistencyToken)> {
    let hold = NewHold {
        subject_id: h.subject_id.as_deref(),
        category: h.category.as_deref(),
        data_system_id: h.data_system.as_ref().map(DataSystemId::as_str),
        reason: &h.reason,
        end_time: h.end_time,
    };
    if let Some(c) = hold.category {
        require_category(conn, c).await?;
    }
    // An unknown system would break the foreign key (INTERNAL): NOT_FOUND.
    if let Some(id) = &h.data_system
        && !crate::datasystems::store::data_system_exists(conn, id).await?
    {
        return Err(Error::NotFound(id.name()));
    }
    let row = store::place_hold(conn, &hold, &ctx.actor).await?;
    let name = format!("legalHolds/{}", row.id);
    let details = json!({ "category": hold.category, "data_system": hold.data_system_id,
        "reason": hold.reason });
    let token = journal_change(conn, ctx, &name, hold.subject_id, details).await?;
    Ok((row, token))
}

/// Releases an active hold (FAILED_PRECONDITION if it already was).
#[tracing::instrument(skip_all, fields(hold_id = id))]
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

/// The data categories, with their descriptions.
#[tracing::instrument(skip_all)]
pub async fn categories(pool: &PgPool) -> Result<Vec<(String, String)>> {
    store::categories(pool).await
}

/// A category's policy (NOT_FOUND if it has none).
#[tracing::instrument(skip_all, fields(category = %category))]
pub async fn get_policy(pool: &PgPool, category: &str) -> Result<PolicyRow> {
    store::policies(pool, Some(category))
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("retentionPolicies/{category}")))
}

/// Every category's policy.
#[tracing::instrument(skip_all)]
pub async fn list_policies(reads: &Reads) -> Result<Vec<PolicyRow>> {
    reads.read(None, |pool| store::policies(pool, None)).await
}

/// The legal holds, active only unless `include_inactive`, on one subject
/// when given.
#[tracing::instrument(skip_all, fields(include_inactive = include_inactive))]
pub async fn list_holds(
    reads: &Reads,
    include_inactive: bool,
    subject_id: Option<&str>,
) -> Result<Vec<HoldRow>> {
    reads
        .read(None, |pool| {
            store::list_holds(pool, include_inactive, subject_id)
        })
        .await
}

/// Sweeps everything due now, batch after batch (each batch its own
/// transaction: a sweep may be long).
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub async fn sweep(pool: &PgPool, settings: &SweepSettings, ctx: &Context) -> Result<SweepTotals> {
    sweeper::sweep(pool, Utc::now(), settings, ctx).await
}

/// Every data system with its categories' policies, as of now.
#[tracing::instrument(skip_all)]
pub async fn record_of_processing(pool: &PgPool) -> Result<RecordOfProcessing> {
    let systems = store::processing(pool).await?;
    let policies = store::policies(pool, None).await?;
    Ok(RecordOfProcessing {
        generate_time: Utc::now(),
        systems,
        policies,
    })
}

/// A subject's schedule, the active holds on it, what the law keeps of
/// its data now, and the policies that name a legal reason.
#[tracing::instrument(skip_all)]
pub async fn schedule(pool: &PgPool, subject_id: &SubjectId) -> Result<Schedule> {
    let subject = subject_id.as_str();
    let entries = store::schedule(pool, subject).await?;
    let holds = store::list_holds(pool, false, Some(subject)).await?;
    let mut conn = pool.acquire().await?;
    let legal_keeps = store::legal_keeps(&mut conn, subject, &[], None, Utc::now()).await?;
    drop(conn);
    let kept_for_legal_reasons = store::policies(pool, None)
        .await?
        .into_iter()
        .filter(|p| !p.legal_reason.is_empty())
        .collect();
    Ok(Schedule {
        subject_id: subject_id.clone(),
        entries,
        holds,
        legal_keeps,
        kept_for_legal_reasons,
    })
}
