//! The SQL of retention. The schedule and the sweep are set-based: one
//! statement schedules every (category, system) an event concerns, and one
//! statement turns a batch of due entries into tasks.
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::model::{EventKind, RetentionAction, RetentionPeriod, Trigger};
// The values the store decodes live with the domain; their old paths stay.
pub use super::model::{EntryRow, HoldRow, LegalKeep, PolicyRow, ProcessingRow, Write};
use crate::error::Result;

#[tracing::instrument(skip_all)]
pub async fn categories(pool: &PgPool) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT key, description FROM data_categories ORDER BY key")
            .fetch_all(pool)
            .await?,
    )
}

pub async fn category_exists(conn: &mut PgConnection, key: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM data_categories WHERE key = $1)")
            .bind(key)
            .fetch_one(conn)
            .await?,
    )
}

#[tracing::instrument(skip_all)]
pub async fn policies(pool: &PgPool, category: Option<&str>) -> Result<Vec<PolicyRow>> {
    Ok(sqlx::query_as(
        "SELECT category, trigger, period_amount, period_unit, action, legal_reason, update_time
         FROM retention_policies WHERE $1::text IS NULL OR category = $1 ORDER BY category",
    )
    .bind(category)
    .fetch_all(pool)
    .await?)
}

/// Adds or replaces a category's policy; `None` when the write does not
/// apply (create of an existing policy, replace of a missing one).
pub async fn set_policy(
    conn: &mut PgConnection,
    write: Write,
    category: &str,
    trigger: Trigger,
    period: RetentionPeriod,
    action: RetentionAction,
    legal_reason: &str,
) -> Result<Option<PolicyRow>> {
    let sql = match write {
        Write::Create => {
            "INSERT INTO retention_policies (category, trigger, period_amount, period_unit, action, legal_reason)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (category) DO NOTHING
             RETURNING category, trigger, period_amount, period_unit, action, legal_reason, update_time"
        }
        Write::Replace => {
            "UPDATE retention_policies
             SET trigger = $2, period_amount = $3, period_unit = $4, action = $5,
                 legal_reason = $6, update_time = now()
             WHERE category = $1
             RETURNING category, trigger, period_amount, period_unit, action, legal_reason, update_time"
        }
    };
    Ok(sqlx::query_as(sql)
        .bind(category)
        .bind(trigger.as_str())
        .bind(period.amount)
        .bind(period.unit.as_str())
        .bind(action.as_str())
        .bind(legal_reason)
        .fetch_optional(conn)
        .await?)
}

pub async fn set_override(
    conn: &mut PgConnection,
    subject_id: &str,
    category: &str,
    period: RetentionPeriod,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO retention_overrides (subject_id, category, period_amount, period_unit, reason)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (subject_id, category) DO UPDATE
         SET period_amount = EXCLUDED.period_amount, period_unit = EXCLUDED.period_unit,
             reason = EXCLUDED.reason, update_time = now()",
    )
    .bind(subject_id)
    .bind(category)
    .bind(period.amount)
    .bind(period.unit.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a lifecycle event and (re)schedules every (category, system) it
/// concerns: the categories whose policy this event triggers (only
/// `category`, when given) on every system holding them (only `system`,
/// when given). A per-subject override replaces the policy's period. An
/// entry already turned into a task is left alone; otherwise a later anchor
/// moves the due time on (later activity), and an earlier one for the same
/// trigger does not move it back.
pub async fn record_event(
    conn: &mut PgConnection,
    subject_id: &str,
    category: Option<&str>,
    system: Option<&str>,
    event: EventKind,
    at: DateTime<Utc>,
    privacy_request_id: Option<i64>,
) -> Result<Vec<EntryRow>> {
    sqlx::query(
        "INSERT INTO lifecycle_events (subject_id, category, data_system_id, event, event_time,
                                       privacy_request_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(subject_id)
    .bind(category)
    .bind(system)
    .bind(event.as_str())
    .bind(at)
    .bind(privacy_request_id)
    .execute(&mut *conn)
    .await?;
    let triggers: Vec<&str> = event.triggers().iter().map(|t| t.as_str()).collect();
    Ok(sqlx::query_as(
        "WITH targets AS (
             SELECT p.category, d.id AS system, p.trigger, p.action,
                    coalesce(o.period_amount, p.period_amount) AS amount,
                    coalesce(o.period_unit, p.period_unit) AS unit,
                    o.subject_id IS NOT NULL AS overridden
             FROM retention_policies p
             JOIN data_systems d ON p.category = ANY (d.categories)
             LEFT JOIN retention_overrides o ON o.subject_id = $1 AND o.category = p.category
             WHERE ($2::text IS NULL OR p.category = $2)
               AND ($3::text IS NULL OR d.id = $3)
               AND p.trigger = ANY ($4::text[])
         ), changed AS (
             INSERT INTO retention_schedule AS s
                 (subject_id, category, data_system_id, trigger, anchor_time, due_time, action, overridden)
             SELECT $1, category, system, trigger, $5,
                    $5 + CASE unit WHEN 'months' THEN make_interval(months => amount)
                                   ELSE make_interval(days => amount) END,
                    action, overridden
             FROM targets
             ON CONFLICT (subject_id, category, data_system_id) DO UPDATE
             SET trigger = EXCLUDED.trigger, anchor_time = EXCLUDED.anchor_time,
                 due_time = EXCLUDED.due_time, action = EXCLUDED.action,
                 overridden = EXCLUDED.overridden, state = 'SCHEDULED', update_time = now()
             WHERE s.state <> 'TASKED'
               AND (s.trigger <> EXCLUDED.trigger OR EXCLUDED.anchor_time >= s.anchor_time)
             RETURNING s.*
         )
         SELECT subject_id, category, data_system_id, trigger, anchor_time, due_time, action,
                overridden, state, task_id, '{}'::text[] AS held_by
         FROM changed ORDER BY due_time, category, data_system_id",
    )
    .bind(subject_id)
    .bind(category)
    .bind(system)
    .bind(&triggers)
    .bind(at)
    .fetch_all(conn)
    .await?)
}

/// A subject's schedule, soonest first, with the holds covering each entry now.
#[tracing::instrument(skip_all)]
pub async fn schedule(pool: &PgPool, subject_id: &str) -> Result<Vec<EntryRow>> {
    Ok(sqlx::query_as(
        "SELECT s.subject_id, s.category, s.data_system_id, s.trigger, s.anchor_time, s.due_time,
                s.action, s.overridden, s.state, s.task_id,
                ARRAY(SELECT 'legalHolds/' || h.id || ': ' || h.reason FROM legal_holds h
                      WHERE h.id = ANY (held_by(s.subject_id, s.category, s.data_system_id, now()))
                      ORDER BY h.id) AS held_by
         FROM retention_schedule s WHERE s.subject_id = $1
         ORDER BY s.due_time, s.category, s.data_system_id",
    )
    .bind(subject_id)
    .fetch_all(pool)
    .await?)
}

const HOLD_COLUMNS: &str = "id, subject_id, category, data_system_id, reason, end_time, place_time, \
     placed_by, release_time, released_by, \
     (release_time IS NULL AND (end_time IS NULL OR end_time > now())) AS active";

/// The scope of a new hold.
pub struct NewHold<'a> {
    pub subject_id: Option<&'a str>,
    pub category: Option<&'a str>,
    pub data_system_id: Option<&'a str>,
    pub reason: &'a str,
    pub end_time: Option<DateTime<Utc>>,
}

pub async fn place_hold(conn: &mut PgConnection, h: &NewHold<'_>, by: &str) -> Result<HoldRow> {
    let sql = format!(
        "INSERT INTO legal_holds (subject_id, category, data_system_id, reason, end_time, placed_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {HOLD_COLUMNS}"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(h.subject_id)
        .bind(h.category)
        .bind(h.data_system_id)
        .bind(h.reason)
        .bind(h.end_time)
        .bind(by)
        .fetch_one(conn)
        .await?)
}

pub async fn get_hold(conn: &mut PgConnection, id: i64) -> Result<Option<HoldRow>> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM legal_holds WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn release_hold(
    conn: &mut PgConnection,
    id: i64,
    by: &str,
    reason: &str,
) -> Result<HoldRow> {
    let sql = format!(
        "UPDATE legal_holds SET release_time = now(), released_by = $2, release_reason = $3
         WHERE id = $1 RETURNING {HOLD_COLUMNS}"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(by)
        .bind(reason)
        .fetch_one(conn)
        .await?)
}

#[tracing::instrument(skip_all)]
pub async fn list_holds(
    pool: &PgPool,
    include_inactive: bool,
    subject_id: Option<&str>,
) -> Result<Vec<HoldRow>> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM legal_holds
         WHERE ($1 OR (release_time IS NULL AND (end_time IS NULL OR end_time > now())))
           AND ($2::text IS NULL OR subject_id IS NULL OR subject_id = $2)
         ORDER BY id DESC LIMIT 1000"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(include_inactive)
        .bind(subject_id)
        .fetch_all(pool)
        .await?)
}

/// The active holds covering (subject, category, system) now, as
/// "legalHolds/{id}: reason".
pub async fn holds_covering(
    conn: &mut PgConnection,
    subject_id: &str,
    category: &str,
    system: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT 'legalHolds/' || h.id || ': ' || h.reason FROM legal_holds h
         WHERE h.id = ANY (held_by($1, $2, $3, now())) ORDER BY h.id",
    )
    .bind(subject_id)
    .bind(category)
    .bind(system)
    .fetch_all(conn)
    .await?)
}

/// What one sweep batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Due entries taken in this batch (tasked + held).
    pub taken: i64,
    pub tasked: i64,
    pub held: i64,
}

/// Takes up to `batch` due entries (due by `now`, oldest first, skipping
/// rows another sweeper holds) and, in the caller's transaction, queues a
/// task for each one no hold covers and marks the others HELD.
pub async fn sweep_batch(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    batch: i64,
    max_attempts: i32,
) -> Result<Swept> {
    let (tasked, held): (i64, i64) = sqlx::query_as(
        "WITH due AS MATERIALIZED (
             SELECT id, subject_id, category, data_system_id, action
             FROM retention_schedule
             WHERE state = 'SCHEDULED' AND due_time <= $1
             ORDER BY due_time, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), judged AS MATERIALIZED (
             -- held_by() runs per entry only while some hold is active at all.
             SELECT due.*,
                    CASE WHEN (SELECT EXISTS (SELECT 1 FROM legal_holds WHERE release_time IS NULL))
                         THEN held_by(subject_id, category, data_system_id, $1)
                         ELSE '{}'::bigint[] END AS holds
             FROM due
         ), tasked AS (
             INSERT INTO tasks (data_system_id, subject_id, action, categories, max_attempts)
             SELECT data_system_id, subject_id, action, ARRAY[category], $3
             FROM judged WHERE cardinality(holds) = 0
             RETURNING id, data_system_id, subject_id, categories[1] AS category
         ), marked AS (
             UPDATE retention_schedule s
             SET state = 'TASKED', task_id = t.id, update_time = now()
             FROM tasked t
             WHERE s.subject_id = t.subject_id AND s.category = t.category
               AND s.data_system_id = t.data_system_id
             RETURNING s.id
         ), held AS (
             UPDATE retention_schedule s SET state = 'HELD', update_time = now()
             FROM judged j WHERE s.id = j.id AND cardinality(j.holds) > 0
             RETURNING s.id
         )
         SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM held)",
    )
    .bind(now)
    .bind(batch)
    .bind(max_attempts)
    .fetch_one(conn)
    .await?;
    Ok(Swept {
        taken: tasked + held,
        tasked,
        held,
    })
}

/// Returns HELD entries that no active hold covers any more to the
/// schedule (they are due, so the next sweep batch takes them).
pub async fn release_held(conn: &mut PgConnection, now: DateTime<Utc>, batch: i64) -> Result<i64> {
    let released = sqlx::query(
        "UPDATE retention_schedule s SET state = 'SCHEDULED', update_time = now()
         FROM (SELECT id FROM retention_schedule
               WHERE state = 'HELD'
                 AND cardinality(held_by(subject_id, category, data_system_id, $1)) = 0
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) free
         WHERE s.id = free.id",
    )
    .bind(now)
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(released.rows_affected() as i64)
}

/// What the law keeps of the subject's data at `at`, per (system, category):
/// only on systems that support `action` when given, and only `categories`
/// when not empty. The same rule (`kept_by_law`) that keeps erasure tasks
/// from being queued, so what is reported is what was not erased.
pub async fn legal_keeps(
    conn: &mut PgConnection,
    subject_id: &str,
    categories: &[String],
    action: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Vec<LegalKeep>> {
    Ok(sqlx::query_as(
        "SELECT c.category, d.id AS data_system_id, k.legal_reason, k.keep_until,
                k.period_amount, k.period_unit, k.trigger
         FROM data_systems d
         CROSS JOIN LATERAL unnest(d.categories) AS c (category)
         CROSS JOIN LATERAL kept_by_law($1, c.category, d.id, $4) AS k
         WHERE ($2::text IS NULL OR $2 = ANY (d.actions))
           AND (cardinality($3::text[]) = 0 OR c.category = ANY ($3::text[]))
         ORDER BY d.id, c.category",
    )
    .bind(subject_id)
    .bind(action)
    .bind(categories)
    .bind(at)
    .fetch_all(conn)
    .await?)
}

/// Erases a minor's data at once: one DELETE task per data system for every
/// category it holds that may be erased (SQL `erasable`: no legal hold
/// covers it and the law does not keep it, the rule a deletion request
/// follows too). Returns the tasks queued.
pub async fn erase_minor(conn: &mut PgConnection, subject_id: &str) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO tasks (data_system_id, subject_id, action, categories)
         SELECT d.id, $1, 'DELETE', cats.categories
         FROM data_systems d
         CROSS JOIN LATERAL (
             SELECT ARRAY(
                 SELECT c FROM unnest(d.categories) AS c
                 WHERE erasable($1, c, d.id, now())
                 ORDER BY 1) AS categories
         ) cats
         WHERE 'DELETE' = ANY (d.actions) AND cardinality(cats.categories) > 0
         ORDER BY d.id",
    )
    .bind(subject_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Minimises up to `batch` privacy-request records closed more than 24
/// months before `now` (CCPA 11 CCR 7101): the subject link, identifiers,
/// corrections, agent, texts and exports go; type, jurisdiction, state,
/// dates and denial reason stay for the metrics. Returns how many.
pub async fn minimize_request_records(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<i64> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "WITH old AS (
             SELECT id FROM privacy_requests
             WHERE close_time IS NOT NULL AND minimize_time IS NULL
               AND close_time < $1 - interval '24 months'
             ORDER BY close_time, id LIMIT $2 FOR UPDATE SKIP LOCKED
         )
         UPDATE privacy_requests r
         SET subject_id = 'minimized', corrections = '[]'::jsonb, agent = NULL,
             categories = '{}', explanation = '', exemptions = '{}', legal_keeps = '[]',
             appeal_statement = NULL,
             appeal_explanation = NULL, identifier_kinds = '{}', minimize_time = now(),
             agent_sealed = NULL, corrections_sealed = NULL, appeal_statement_sealed = NULL
         FROM old WHERE r.id = old.id
         RETURNING r.id",
    )
    .bind(now)
    .bind(batch)
    .fetch_all(&mut *conn)
    .await?;
    if !ids.is_empty() {
        sqlx::query("DELETE FROM request_identifiers WHERE privacy_request_id = ANY ($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE tasks SET export_json = NULL, corrections = '[]'::jsonb, export_sealed = NULL,
                              corrections_sealed = NULL
             WHERE privacy_request_id = ANY ($1)",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(ids.len() as i64)
}

/// Deletes up to `batch` idempotency keys older than `keep` before `now`:
/// a retry that late runs as a new request.
pub async fn prune_idempotency_keys(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    keep: std::time::Duration,
    batch: i64,
) -> Result<i64> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE (caller, request_id) IN (
             SELECT caller, request_id FROM idempotency_keys
             WHERE create_time < $1 - make_interval(secs => $2)
             ORDER BY create_time LIMIT $3 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .bind(keep.as_secs_f64())
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() as i64)
}

#[tracing::instrument(skip_all)]
pub async fn processing(pool: &PgPool) -> Result<Vec<ProcessingRow>> {
    Ok(sqlx::query_as(
        "SELECT id, display_name, kind, country, description, categories
         FROM data_systems ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}
