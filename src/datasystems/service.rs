//! The data-system use cases: the registry, the lease rules of the task
//! queue, and the disclosure log with its 12-month report. They know neither
//! gRPC nor SQL; writes run inside the caller's transaction and journal
//! there. Tasks leave here opened (their sealed personal parts decrypted),
//! ready to show.
use chrono::{DateTime, Months, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::model::{
    Claim, DataAction, DataSystem, DataSystemFields, DataSystemId, Disclosure, DisclosureBasis,
    DisclosureReport, LeaseId, NewDisclosure, Page, Task, TaskFilter, TaskId, TaskResult,
    TaskState,
};
use super::store;
use crate::caller::Caller;
use crate::consent::model::ConsentModel;
use crate::consent::store as consent_store;
use crate::error::{Error, Result};
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::keys::{Keyring, column};
use crate::names::PurposeKey;
use crate::proto::ErrorReason;
use crate::reads::Reads;
use crate::rpc::{Context, paginate};
use crate::tokens::{ConsistencyToken, PageToken};

/// The purposes a disclosure basis implies, when the catalogue makes them
/// PROHIBITED (the promise never to sell or share).
const SALE_PURPOSE: &str = "sale_of_personal_data";
const SHARING_PURPOSE: &str = "cross_context_sharing";

/// The longest a retryable failure waits before its next attempt.
const MAX_BACKOFF_SECONDS: i64 = 300;

#[tracing::instrument(skip_all, fields(data_system = fields.id.as_str()))]
pub async fn register(
    conn: &mut PgConnection,
    ctx: &Context,
    fields: &DataSystemFields,
) -> Result<(DataSystem, ConsistencyToken)> {
    let (system, created) = store::upsert_data_system(conn, fields).await?;
    let name = fields.id.name();
    let actions: Vec<&str> = system.actions.iter().map(|a| a.as_str()).collect();
    let token = journal::record(
        conn,
        ctx.audit(
            &name,
            None,
            json!({
                "created": created,
                "kind": system.kind.as_str(),
                "categories": system.categories,
                "actions": actions,
            }),
        ),
        ChangeEntry::resource(ChangeKind::DataSystemChanged, &name, None),
    )
    .await?;
    Ok((system, token))
}

/// Ends the system's expired leases (back to the queue, or failed for good
/// on their last attempt), then leases the next queued tasks.
#[tracing::instrument(skip_all, fields(data_system = claim.data_system.as_str()))]
pub async fn claim(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    claim: &Claim,
) -> Result<(Vec<Task>, ConsistencyToken, Settled)> {
    let (mut tasks, token, settled) = claim_sealed(conn, ctx, claim).await?;
    store::open_tasks(keys, conn, &mut tasks).await?;
    Ok((tasks, token, settled))
}

async fn claim_sealed(
    conn: &mut PgConnection,
    ctx: &Context,
    claim: &Claim,
) -> Result<(Vec<Task>, ConsistencyToken, Settled)> {
    let name = claim.data_system.name();
    if !store::data_system_exists(conn, &claim.data_system).await? {
        return Err(Error::NotFound(name));
    }
    let failed = store::end_expired_leases(conn, &claim.data_system).await?;
    let mut settled: Vec<i64> = failed.iter().filter_map(|(_, r)| *r).collect();
    settled.sort_unstable();
    settled.dedup();
    let tasks = store::claim(conn, claim).await?;
    if tasks.is_empty() && failed.is_empty() {
        // Nothing changed: an idle worker's poll writes no audit or change
        // event (workers poll often; the trail would drown in them).
        let xid = store::current_xid(conn).await?;
        return Ok((tasks, ConsistencyToken { xid }, Settled(settled)));
    }
    let claimed: Vec<i64> = tasks.iter().map(|t| t.id).collect();
    let failed: Vec<i64> = failed.iter().map(|(id, _)| *id).collect();
    let token = journal::record(
        conn,
        ctx.audit(
            &name,
            None,
            json!({
                "worker": claim.worker,
                "lease_seconds": claim.lease_seconds,
                "claimed_tasks": claimed,
                "failed_expired_tasks": failed,
            }),
        ),
        ChangeEntry::resource(ChangeKind::TaskChanged, &name, None),
    )
    .await?;
    Ok((tasks, token, Settled(settled)))
}

/// The privacy requests (ids) one of whose tasks just settled (SUCCEEDED,
/// EXEMPTED, or FAILED for good), in the same transaction: the caller
/// tells them (`requests::fulfilment`), which may complete them. This
/// domain does not know what a request does next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "the requests whose tasks settled must be told"]
pub struct Settled(pub Vec<i64>);

/// Whether an expired lease that nobody has claimed since still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Refused,
    Accepted,
}

/// The caller holds the lease when the task is LEASED under its lease id
/// (a new claim always draws a new id).
fn hold_lease(task: &Task, lease: LeaseId, now: DateTime<Utc>, expired: Expired) -> Result<()> {
    let why = match (task.state, task.lease_id, task.lease_expire_time) {
        (TaskState::Leased, Some(id), _) if id != lease.0 => format!(
            "it is LEASED under another lease (worker {:?})",
            task.worker.as_deref().unwrap_or_default()
        ),
        (TaskState::Leased, Some(_), Some(t)) if t < now && expired == Expired::Refused => {
            format!("it is LEASED, but the lease expired at {}", t.to_rfc3339())
        }
        (TaskState::Leased, Some(_), Some(_)) => return Ok(()),
        (state, ..) => format!("it is {}", state.as_str()),
    };
    let name = task.name();
    Err(Error::precondition(
        ErrorReason::LeaseNotHeld,
        &name,
        format!("the lease on {name} is not held: {why}"),
    ))
}

async fn journal_task(
    conn: &mut PgConnection,
    ctx: &Context,
    task: &Task,
    details: serde_json::Value,
) -> Result<ConsistencyToken> {
    let name = task.name();
    let subject = Some(task.subject_id.as_str());
    journal::record(
        conn,
        ctx.audit(&name, subject, details),
        ChangeEntry::resource(ChangeKind::TaskChanged, &name, subject),
    )
    .await
}

/// Locks a task for a change, refusing a caller limited to other data
/// systems (PERMISSION_DENIED, for a missing task too; nothing is written).
async fn lock_own_task(
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
) -> Result<(Task, DateTime<Utc>)> {
    let (task, now) = match store::lock_task(conn, id.0).await {
        // Refused alike whether another system's or none at all, so that a
        // caller limited to some systems learns nothing of other task ids.
        Err(Error::NotFound(what)) => {
            ctx.check_system("", &id.name())?;
            return Err(Error::NotFound(what));
        }
        locked => locked?,
    };
    ctx.check_system(&task.data_system_id, &id.name())?;
    Ok((task, now))
}

/// Extends a live lease; an expired one is refused, since another worker
/// may be about to claim the task.
#[tracing::instrument(skip_all, fields(task_id = id.0))]
pub async fn renew(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    lease_seconds: i32,
) -> Result<(Task, ConsistencyToken)> {
    let (mut task, token) = renew_sealed(conn, ctx, id, lease, lease_seconds).await?;
    store::open_tasks(keys, conn, std::slice::from_mut(&mut task)).await?;
    Ok((task, token))
}

async fn renew_sealed(
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    lease_seconds: i32,
) -> Result<(Task, ConsistencyToken)> {
    let (task, now) = lock_own_task(conn, ctx, id).await?;
    hold_lease(&task, lease, now, Expired::Refused)?;
    let task = store::renew_lease(conn, id.0, lease_seconds).await?;
    let token = journal_task(
        conn,
        ctx,
        &task,
        json!({ "lease_expire_time": task.lease_expire_time }),
    )
    .await?;
    Ok((task, token))
}

/// Records a task's result (EXEMPTED when it names an exemption).
#[tracing::instrument(skip_all, fields(task_id = id.0))]
pub async fn complete(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    result: &TaskResult,
) -> Result<(Task, ConsistencyToken, Settled)> {
    let (mut task, token) = complete_sealed(keys, conn, ctx, id, lease, result).await?;
    store::open_tasks(keys, conn, std::slice::from_mut(&mut task)).await?;
    let settled = Settled(task.privacy_request_id.into_iter().collect());
    Ok((task, token, settled))
}

async fn complete_sealed(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    result: &TaskResult,
) -> Result<(Task, ConsistencyToken)> {
    let (task, now) = lock_own_task(conn, ctx, id).await?;
    // An expired lease still completes while nobody has claimed the task
    // again (a claim replaces the lease id): the work is done, and refusing
    // it would only make another worker do it twice. Once reclaimed (or
    // failed by a claim after its last attempt), the old lease is refused.
    hold_lease(&task, lease, now, Expired::Accepted)?;
    if result.export_json.is_some() && task.action != DataAction::Export {
        return Err(Error::invalid(
            "result.export_json",
            format!(
                "is only for EXPORT tasks; this task is {}",
                task.action.as_str()
            ),
        ));
    }
    let state = match result.exempt_reason {
        Some(_) => TaskState::Exempted,
        None => TaskState::Succeeded,
    };
    // The export is personal data: sealed under the subject's data key.
    // It is still JSON the access package (and PostgreSQL) can hold.
    if let Some(export) = &result.export_json {
        store::check_jsonb(conn, export).await?;
    }
    let export_sealed = match &result.export_json {
        Some(export) => Some(
            keys.sealer(conn, &task.subject_id)
                .await?
                .seal(column::TASK_EXPORT, export.as_bytes())?,
        ),
        None => None,
    };
    let task = store::complete(conn, id.0, state, result, export_sealed.as_deref()).await?;
    // The proof, not the exported data: the audit trail is append-only and
    // must not keep a copy of personal data.
    let token = journal_task(
        conn,
        ctx,
        &task,
        json!({
            "state": state.as_str(),
            "records_affected": result.records_affected,
            "content_sha256": result.content_sha256,
            "system_reference": result.system_reference,
            "exempt_reason": result.exempt_reason,
        }),
    )
    .await?;
    Ok((task, token))
}

/// Seconds before a retryable failure may be claimed again: 2^attempts,
/// at most five minutes (2 s after the first attempt, 4 s, 8 s, ...).
pub fn backoff_seconds(attempts: i32) -> i32 {
    let exponent = u32::try_from(attempts).unwrap_or(0);
    // At most 300, so the conversion cannot fail.
    i32::try_from(2_i64.saturating_pow(exponent).min(MAX_BACKOFF_SECONDS)).unwrap_or(i32::MAX)
}

/// Records a failed attempt: queued again after a backoff when retryable
/// and attempts remain, else FAILED for good.
#[tracing::instrument(skip_all, fields(task_id = id.0))]
pub async fn fail(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    retryable: bool,
    error_message: &str,
) -> Result<(Task, ConsistencyToken, Settled)> {
    let (mut task, token) = fail_sealed(conn, ctx, id, lease, retryable, error_message).await?;
    store::open_tasks(keys, conn, std::slice::from_mut(&mut task)).await?;
    let settled = match task.state {
        TaskState::Failed => Settled(task.privacy_request_id.into_iter().collect()),
        _ => Settled::default(),
    };
    Ok((task, token, settled))
}

async fn fail_sealed(
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    retryable: bool,
    error_message: &str,
) -> Result<(Task, ConsistencyToken)> {
    let (task, now) = lock_own_task(conn, ctx, id).await?;
    // As for CompleteTask: an expired lease nobody has taken over still
    // reports its attempt.
    hold_lease(&task, lease, now, Expired::Accepted)?;
    let retry_after =
        (retryable && task.attempts < task.max_attempts).then(|| backoff_seconds(task.attempts));
    let task = store::fail(conn, id.0, error_message, retry_after).await?;
    // The message stays on the task (it may name personal data); the
    // append-only trail keeps the outcome.
    let token = journal_task(
        conn,
        ctx,
        &task,
        json!({
            "state": task.state.as_str(),
            "retryable": retryable,
            "attempts": task.attempts,
            "retry_after_seconds": retry_after,
        }),
    )
    .await?;
    Ok((task, token))
}

/// The prohibited purpose a disclosure contradicts: its own purpose when
/// that was PROHIBITED at the disclosure's time, else the purpose its basis
/// implies (a sale, sharing for cross-context advertising) when that was.
/// "PROHIBITED at the time" follows the promise: a promise in force then (a
/// lift not yet in effect) flags it, whatever the catalogue says now (see
/// `Purpose::model_at`). An unknown purpose is NOT_FOUND.
async fn contradicted_purpose(
    conn: &mut PgConnection,
    new: &NewDisclosure,
) -> Result<Option<PurposeKey>> {
    let at = new.disclose_time;
    if let Some(purpose) = &new.purpose {
        let found = consent_store::get_purpose(conn, purpose, false)
            .await?
            .ok_or_else(|| Error::NotFound(purpose.name()))?;
        if found.model_at(None, at) == ConsentModel::Prohibited {
            return Ok(Some(purpose.clone()));
        }
    }
    let implied = match new.basis {
        DisclosureBasis::Sale => SALE_PURPOSE,
        DisclosureBasis::Sharing => SHARING_PURPOSE,
        _ => return Ok(None),
    };
    let key = PurposeKey::parse(implied).map_err(Error::Internal)?;
    let found = consent_store::get_purpose(conn, &key, false).await?;
    Ok(found
        .is_some_and(|p| p.model_at(None, at) == ConsentModel::Prohibited)
        .then_some(key))
}

#[tracing::instrument(skip_all, fields(basis = new.basis.as_str()))]
pub async fn record_disclosure(
    conn: &mut PgConnection,
    ctx: &Context,
    new: &NewDisclosure,
) -> Result<(Disclosure, ConsistencyToken)> {
    let contradicted = contradicted_purpose(conn, new).await?;
    let disclosure = store::insert_disclosure(
        conn,
        new,
        contradicted.as_ref(),
        &ctx.actor,
        &ctx.request_id,
    )
    .await?;
    let name = format!("disclosures/{}", disclosure.id);
    let subject = disclosure.subject_id.as_deref();
    let token = journal::record(
        conn,
        ctx.audit(
            &name,
            subject,
            json!({
                "recipient": disclosure.recipient,
                "basis": disclosure.basis.as_str(),
                "purpose": disclosure.purpose,
                "contradicted_purpose": disclosure.contradicted_purpose,
            }),
        ),
        ChangeEntry::resource(ChangeKind::DisclosureRecorded, &name, subject),
    )
    .await?;
    Ok((disclosure, token))
}

/// The disclosures of the 12 calendar months (UTC) before `as_of` (default
/// now): after `as_of` minus 12 months, up to and including `as_of`.
#[tracing::instrument(skip_all)]
pub async fn disclosure_report(
    pool: &PgPool,
    as_of: Option<DateTime<Utc>>,
) -> Result<DisclosureReport> {
    let end_time = as_of.unwrap_or_else(Utc::now);
    let start_time = end_time
        .checked_sub_months(Months::new(12))
        .ok_or_else(|| Error::invalid("as_of", "is too early"))?;
    let (counts, flagged) =
        store::disclosures_between(pool, start_time, end_time, DisclosureReport::MAX_FLAGGED)
            .await?;
    Ok(DisclosureReport {
        start_time,
        end_time,
        counts,
        flagged,
    })
}

/// A registered data system. A caller limited to other systems is refused
/// before the lookup, so it learns nothing of them, not even whether one
/// exists.
#[tracing::instrument(skip_all, fields(data_system = id.as_str()))]
pub async fn get_data_system(
    pool: &PgPool,
    caller: &Caller,
    id: &DataSystemId,
) -> Result<DataSystem> {
    caller.check_system(id.as_str(), &id.name())?;
    store::get_data_system(pool, id)
        .await?
        .ok_or_else(|| Error::NotFound(id.name()))
}

/// A page of the registry, by id, and the next page's token. A caller
/// limited to some systems sees only those: a list has no single system to
/// refuse, and the rest of the registry is not its business.
#[tracing::instrument(skip_all, fields(limit = page.limit))]
pub async fn list_data_systems(
    pool: &PgPool,
    caller: &Caller,
    page: &Page<String>,
) -> Result<(Vec<DataSystem>, String)> {
    let only = caller.data_systems().map(|s| s.as_ref());
    let systems =
        store::list_data_systems(pool, only, page.after.as_deref(), page.limit + 1).await?;
    Ok(paginate(systems, page.limit, |s| {
        PageToken::encode(&page.token_filters, &s.id)
    }))
}

/// A task, opened. A caller limited to some systems is refused a task that
/// is not theirs and one that does not exist alike: the answer must not
/// tell it whether another system's task id exists.
#[tracing::instrument(skip_all, fields(task_id = id.0))]
pub async fn get_task(pool: &PgPool, keys: &Keyring, caller: &Caller, id: TaskId) -> Result<Task> {
    let found = store::get_task(pool, id.0).await?;
    let system = found.as_ref().map_or("", |t| t.data_system_id.as_str());
    caller.check_system(system, &id.name())?;
    let mut task = found.ok_or_else(|| Error::NotFound(id.name()))?;
    let mut conn = pool.acquire().await?;
    store::open_tasks(keys, &mut conn, std::slice::from_mut(&mut task)).await?;
    Ok(task)
}

/// A page of tasks matching `filter`, opened, and the next page's token
/// (from a replica when one is fresh enough). A caller limited to some
/// data systems lists one of them at a time.
#[tracing::instrument(
    skip_all,
    fields(data_system = filter.data_system.as_ref().map(DataSystemId::as_str))
)]
pub async fn list_tasks(
    reads: &Reads,
    keys: &Keyring,
    caller: &Caller,
    filter: &TaskFilter,
    page: &Page<i64>,
) -> Result<(Vec<Task>, String)> {
    if caller.data_systems().is_some() {
        match &filter.data_system {
            Some(id) => caller.check_system(id.as_str(), &id.name())?,
            None => {
                return Err(Error::PermissionDenied {
                    caller: caller.as_str().to_owned(),
                    resource: "every data system's tasks (name a data_system)".to_owned(),
                });
            }
        }
    }
    reads
        .read(None, |pool| async move {
            let tasks = store::list_tasks(pool, filter, page.after, page.limit + 1).await?;
            let (mut tasks, next) = paginate(tasks, page.limit, |t| {
                PageToken::encode(&page.token_filters, &t.id)
            });
            let mut conn = pool.acquire().await?;
            store::open_tasks(keys, &mut conn, &mut tasks).await?;
            Ok((tasks, next))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_up_to_five_minutes() {
        assert_eq!(backoff_seconds(1), 2);
        assert_eq!(backoff_seconds(2), 4);
        assert_eq!(backoff_seconds(8), 256);
        assert_eq!(backoff_seconds(9), 300);
        assert_eq!(backoff_seconds(i32::MAX), 300);
        assert_eq!(backoff_seconds(-1), 1);
    }
}
