//! The data-system domain's SQL: the registry, the task queue and the
//! disclosure log. Writers take the transaction's connection; readers take
//! the pool. No gRPC types here.
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::model::{
    Claim, DataAction, DataSystem, DataSystemFields, DataSystemId, Disclosure, DisclosureBasis,
    FieldCorrection, Kind, NewDisclosure, SealedParts, Task, TaskFilter, TaskResult, TaskState,
};
use crate::error::{Error, Result};
use crate::keys::{Keyring, column};
use crate::names::PurposeKey;

macro_rules! system_columns {
    () => {
        "id, display_name, kind, categories, country, actions, description, create_time, update_time"
    };
}

/// The task columns; `$export` is what to read as `export_json` (lists
/// leave the exported documents out).
macro_rules! task_columns {
    () => {
        task_columns!("export_json::text", "export_sealed")
    };
    ($export:literal, $sealed:literal) => {
        concat!(
            "id, data_system_id, privacy_request_id, subject_id, action, categories, corrections, \
             state, attempts, max_attempts, worker, lease_id, lease_expire_time, records_affected, \
             content_sha256, system_reference, ",
            $export,
            " AS export_json, exempt_reason, last_error, create_time, update_time, \
             corrections_sealed, ",
            $sealed,
            " AS export_sealed"
        )
    };
}

macro_rules! disclosure_columns {
    () => {
        "id, subject_id, recipient, categories, basis, purpose_key, disclose_time, contradicted_purpose"
    };
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("unexpected {what} in the database: {value:?}"))
}

// ---- the registry ---------------------------------------------------------

fn system_from_row(row: &PgRow) -> Result<DataSystem> {
    let kind: String = row.try_get("kind")?;
    let actions: Vec<String> = row.try_get("actions")?;
    Ok(DataSystem {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        kind: Kind::from_db(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        categories: row.try_get("categories")?,
        country: row.try_get("country")?,
        actions: actions
            .iter()
            .map(|a| DataAction::from_db(a).ok_or_else(|| corrupt("action", a)))
            .collect::<Result<_>>()?,
        description: row.try_get("description")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Registers a system or replaces its description; says whether it was new.
pub async fn upsert_data_system(
    conn: &mut PgConnection,
    fields: &DataSystemFields,
) -> Result<(DataSystem, bool)> {
    let categories: Vec<&str> = fields.categories.iter().map(|c| c.as_str()).collect();
    let actions: Vec<&str> = fields.actions.iter().map(|a| a.as_str()).collect();
    let row = sqlx::query(concat!(
        "INSERT INTO data_systems (id, display_name, kind, categories, country, actions, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE
         SET display_name = excluded.display_name, kind = excluded.kind,
             categories = excluded.categories, country = excluded.country,
             actions = excluded.actions, description = excluded.description, update_time = now()
         RETURNING (xmax = 0) AS created, ",
        system_columns!()
    ))
    .bind(fields.id.as_str())
    .bind(&fields.display_name)
    .bind(fields.kind.as_str())
    .bind(&categories)
    .bind(fields.country.as_str())
    .bind(&actions)
    .bind(&fields.description)
    .fetch_one(conn)
    .await?;
    Ok((system_from_row(&row)?, row.try_get("created")?))
}

#[tracing::instrument(skip_all, fields(data_system = id.as_str()))]
pub async fn get_data_system(pool: &PgPool, id: &DataSystemId) -> Result<Option<DataSystem>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        system_columns!(),
        " FROM data_systems WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(system_from_row).transpose()
}

pub async fn data_system_exists(conn: &mut PgConnection, id: &DataSystemId) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM data_systems WHERE id = $1)")
            .bind(id.as_str())
            .fetch_one(conn)
            .await?,
    )
}

/// A page of the registry by id; `after` is the last id of the page before.
/// A page of the registry by id; only the systems in `only`, when given.
#[tracing::instrument(skip_all, fields(limit = limit))]
pub async fn list_data_systems(
    pool: &PgPool,
    only: Option<&[String]>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DataSystem>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        system_columns!(),
        " FROM data_systems WHERE id > $1 AND ($3::text[] IS NULL OR id = ANY($3))
          ORDER BY id LIMIT $2"
    ))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .bind(only)
    .fetch_all(pool)
    .await?;
    rows.iter().map(system_from_row).collect()
}

// ---- tasks ----------------------------------------------------------------

fn task_from_row(row: &PgRow) -> Result<Task> {
    let action: String = row.try_get("action")?;
    let state: String = row.try_get("state")?;
    let state = TaskState::from_db(&state).ok_or_else(|| corrupt("task state", &state))?;
    let corrections: serde_json::Value = row.try_get("corrections")?;
    let corrections: Vec<FieldCorrection> = serde_json::from_value(corrections)
        .map_err(|e| corrupt("task corrections", &e.to_string()))?;
    let result = match state {
        TaskState::Succeeded | TaskState::Exempted => Some(TaskResult {
            records_affected: row
                .try_get::<Option<i64>, _>("records_affected")?
                .unwrap_or(0),
            content_sha256: row.try_get("content_sha256")?,
            system_reference: row
                .try_get::<Option<String>, _>("system_reference")?
                .unwrap_or_default(),
            export_json: row.try_get("export_json")?,
            exempt_reason: row.try_get("exempt_reason")?,
        }),
        _ => None,
    };
    Ok(Task {
        id: row.try_get("id")?,
        data_system_id: row.try_get("data_system_id")?,
        privacy_request_id: row.try_get("privacy_request_id")?,
        subject_id: row.try_get("subject_id")?,
        action: DataAction::from_db(&action).ok_or_else(|| corrupt("action", &action))?,
        categories: row.try_get("categories")?,
        corrections,
        state,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        worker: row.try_get("worker")?,
        lease_id: row.try_get("lease_id")?,
        lease_expire_time: row.try_get("lease_expire_time")?,
        result,
        sealed: SealedParts {
            corrections: row.try_get("corrections_sealed")?,
            export: row.try_get("export_sealed")?,
        },
        last_error: row.try_get("last_error")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Opens the sealed corrections and exports of tasks read from the
/// database (one key query for all; none when nothing is sealed). Values
/// whose data key was destroyed read as absent.
#[tracing::instrument(skip_all, fields(tasks = tasks.len()))]
pub async fn open_tasks(keys: &Keyring, conn: &mut PgConnection, tasks: &mut [Task]) -> Result<()> {
    let opener = keys
        .opener(
            conn,
            tasks.iter().flat_map(|t| {
                [t.sealed.corrections.as_deref(), t.sealed.export.as_deref()]
                    .into_iter()
                    .flatten()
            }),
        )
        .await?;
    for t in tasks {
        let sealed = std::mem::take(&mut t.sealed);
        if let Some(s) = sealed.corrections {
            t.corrections = opener
                .open_json(&t.subject_id, column::CORRECTIONS, &s)?
                .unwrap_or_default();
        }
        if let (Some(s), Some(result)) = (sealed.export, t.result.as_mut()) {
            result.export_json = opener
                .open(&t.subject_id, column::TASK_EXPORT, &s)?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
        }
    }
    Ok(())
}

fn one_task(row: Option<PgRow>, id: i64) -> Result<Task> {
    match row {
        Some(row) => task_from_row(&row),
        None => Err(Error::NotFound(format!("tasks/{id}"))),
    }
}

/// Ends the system's expired leases: a task with attempts left goes back to
/// the queue, one without fails for good. Returns the tasks that failed
/// (id, request). Reads the `tasks_leased` index only.
pub async fn end_expired_leases(
    conn: &mut PgConnection,
    system: &DataSystemId,
) -> Result<Vec<(i64, Option<i64>)>> {
    let rows: Vec<(i64, Option<i64>, String)> = sqlx::query_as(
        "WITH expired AS MATERIALIZED (
             SELECT id FROM tasks
             WHERE data_system_id = $1 AND state = 'LEASED' AND lease_expire_time < now()
             ORDER BY id
             FOR UPDATE SKIP LOCKED)
         UPDATE tasks t
         SET state = CASE WHEN t.attempts >= t.max_attempts THEN 'FAILED' ELSE 'QUEUED' END,
             last_error = CASE WHEN t.attempts >= t.max_attempts
                               THEN 'lease expired after the last attempt'
                               ELSE t.last_error END,
             lease_id = NULL, lease_expire_time = NULL, update_time = now()
         FROM expired WHERE t.id = expired.id
         RETURNING t.id, t.privacy_request_id, t.state",
    )
    .bind(system.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, _, state)| state == "FAILED")
        .map(|(id, request, _)| (id, request))
        .collect())
}

/// Leases up to `max_tasks` queued tasks of a system, oldest first, in one
/// statement, walking the `tasks_queued` partial index (so finished tasks
/// never slow a claim down). SKIP LOCKED makes concurrent claimers pass over
/// the rows another claim is taking instead of waiting for (or sharing) them.
/// Expired leases are returned to the queue first (`end_expired_leases`).
pub async fn claim(conn: &mut PgConnection, claim: &Claim) -> Result<Vec<Task>> {
    let rows = sqlx::query(concat!(
        "WITH picked AS MATERIALIZED (
             SELECT id FROM tasks
             WHERE data_system_id = $1 AND state = 'QUEUED' AND available_time <= now()
             ORDER BY id
             LIMIT $2
             FOR UPDATE SKIP LOCKED),
         leased AS (
             UPDATE tasks t
             SET state = 'LEASED', attempts = t.attempts + 1, worker = $3,
                 lease_id = gen_random_uuid(),
                 lease_expire_time = now() + make_interval(secs => $4),
                 update_time = now()
             FROM picked WHERE t.id = picked.id
             RETURNING t.*)
         SELECT ",
        task_columns!(),
        " FROM leased ORDER BY id"
    ))
    .bind(claim.data_system.as_str())
    .bind(claim.max_tasks)
    .bind(&claim.worker)
    .bind(claim.lease_seconds)
    .fetch_all(conn)
    .await?;
    rows.iter().map(task_from_row).collect()
}

/// Locks one task for a change; also returns the database's time.
pub async fn lock_task(conn: &mut PgConnection, id: i64) -> Result<(Task, DateTime<Utc>)> {
    let row = sqlx::query(concat!(
        "SELECT now() AS db_now, ",
        task_columns!(),
        " FROM tasks WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let row = row.ok_or_else(|| Error::NotFound(format!("tasks/{id}")))?;
    Ok((task_from_row(&row)?, row.try_get("db_now")?))
}

pub async fn renew_lease(conn: &mut PgConnection, id: i64, lease_seconds: i32) -> Result<Task> {
    let row = sqlx::query(concat!(
        "UPDATE tasks
         SET lease_expire_time = now() + make_interval(secs => $2), update_time = now()
         WHERE id = $1
         RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(lease_seconds)
    .fetch_optional(conn)
    .await?;
    one_task(row, id)
}

/// Settles a task as SUCCEEDED or EXEMPTED with its result.
/// `export_sealed` is the export, sealed by the caller; the clear column
/// stays empty.
pub async fn complete(
    conn: &mut PgConnection,
    id: i64,
    state: TaskState,
    result: &TaskResult,
    export_sealed: Option<&[u8]>,
) -> Result<Task> {
    let row = sqlx::query(concat!(
        "UPDATE tasks
         SET state = $2, lease_id = NULL, lease_expire_time = NULL, records_affected = $3,
             content_sha256 = $4, system_reference = $5, export_json = NULL, export_sealed = $6,
             exempt_reason = $7, update_time = now()
         WHERE id = $1
         RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(state.as_str())
    .bind(result.records_affected)
    .bind(result.content_sha256.as_deref())
    .bind(&result.system_reference)
    .bind(export_sealed)
    .bind(result.exempt_reason.as_deref())
    .fetch_optional(conn)
    .await?;
    one_task(row, id)
}

/// Refuses JSON that serde accepts but jsonb does not (a \u0000, a number
/// beyond numeric's range), as when exports were stored as jsonb: the access
/// package must be able to hold them.
pub async fn check_jsonb(conn: &mut PgConnection, export: &str) -> Result<()> {
    match sqlx::query("SELECT $1::jsonb IS NULL")
        .bind(export)
        .execute(conn)
        .await
    {
        Ok(_) => Ok(()),
        // A data exception (class 22).
        Err(e) if crate::error::sqlstate(&e).is_some_and(|s| s.starts_with("22")) => Err(
            Error::invalid("result.export_json", "is JSON PostgreSQL cannot store"),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Records a failed attempt: back to the queue after `retry_after_seconds`,
/// or FAILED when that is `None`.
pub async fn fail(
    conn: &mut PgConnection,
    id: i64,
    error_message: &str,
    retry_after_seconds: Option<i32>,
) -> Result<Task> {
    let state = match retry_after_seconds {
        Some(_) => TaskState::Queued,
        None => TaskState::Failed,
    };
    let row = sqlx::query(concat!(
        "UPDATE tasks
         SET state = $2, lease_id = NULL, lease_expire_time = NULL, last_error = $3,
             available_time = coalesce(now() + make_interval(secs => $4), available_time),
             update_time = now()
         WHERE id = $1
         RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(state.as_str())
    .bind(error_message)
    .bind(retry_after_seconds)
    .fetch_optional(conn)
    .await?;
    one_task(row, id)
}

#[tracing::instrument(skip_all, fields(task_id = id))]
pub async fn get_task(pool: &PgPool, id: i64) -> Result<Option<Task>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// One of two SQL conditions, chosen by whether a filter is present: the
/// connections use generic plans (see `db::pool`), and `$1 IS NULL OR
/// col = $1` would plan as a scan.
fn filter(present: bool, when_present: &'static str, when_absent: &'static str) -> &'static str {
    if present { when_present } else { when_absent }
}

/// A page of tasks by id, without their exported documents (a page of
/// exports could exceed the message size limit; GetTask returns one).
#[tracing::instrument(skip_all, fields(limit = limit))]
pub async fn list_tasks(
    pool: &PgPool,
    f: &TaskFilter,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Task>> {
    let by_system = filter(
        f.data_system.is_some(),
        "data_system_id = $1",
        "$1::text IS NULL",
    );
    let by_request = filter(
        f.privacy_request_id.is_some(),
        "privacy_request_id = $2",
        "$2::bigint IS NULL",
    );
    let by_state = filter(f.state.is_some(), "state = $3", "$3::text IS NULL");
    let by_subject = filter(
        f.subject_id.is_some(),
        "subject_id = $6",
        "$6::text IS NULL",
    );
    let sql = format!(
        "SELECT {} FROM tasks
         WHERE {by_system} AND {by_request} AND {by_state} AND {by_subject} AND id > $4
         ORDER BY id LIMIT $5",
        task_columns!("NULL::text", "NULL::bytea")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(f.data_system.as_ref().map(|s| s.as_str()))
        .bind(f.privacy_request_id)
        .bind(f.state.map(|s| s.as_str()))
        .bind(after_id.unwrap_or(0))
        .bind(limit)
        .bind(f.subject_id.as_ref().map(|s| s.as_str()))
        .fetch_all(pool)
        .await?;
    rows.iter().map(task_from_row).collect()
}

// ---- disclosures ----------------------------------------------------------

fn disclosure_from_row(row: &PgRow) -> Result<Disclosure> {
    let basis: String = row.try_get("basis")?;
    Ok(Disclosure {
        id: row.try_get("id")?,
        subject_id: row.try_get("subject_id")?,
        recipient: row.try_get("recipient")?,
        categories: row.try_get("categories")?,
        basis: DisclosureBasis::from_db(&basis).ok_or_else(|| corrupt("basis", &basis))?,
        purpose: row.try_get("purpose_key")?,
        disclose_time: row.try_get("disclose_time")?,
        contradicted_purpose: row.try_get("contradicted_purpose")?,
    })
}

pub async fn insert_disclosure(
    conn: &mut PgConnection,
    new: &NewDisclosure,
    contradicted_purpose: Option<&PurposeKey>,
    actor: &str,
    request_id: &str,
) -> Result<Disclosure> {
    let categories: Vec<&str> = new.categories.iter().map(|c| c.as_str()).collect();
    let row = sqlx::query(concat!(
        "INSERT INTO disclosures (subject_id, recipient, categories, basis, purpose_key,
                                  disclose_time, contradicted_purpose, actor, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING ",
        disclosure_columns!()
    ))
    .bind(new.subject_id.as_ref().map(|s| s.as_str()))
    .bind(&new.recipient)
    .bind(&categories)
    .bind(new.basis.as_str())
    .bind(new.purpose.as_ref().map(|p| p.as_str()))
    .bind(new.disclose_time)
    .bind(contradicted_purpose.map(|p| p.as_str()))
    .bind(actor)
    .bind(request_id)
    .fetch_one(conn)
    .await?;
    disclosure_from_row(&row)
}

/// The counts per basis and the flagged disclosures (oldest first) in
/// `(start, end]`, read from one snapshot so the two agree.
pub async fn disclosures_between(
    pool: &PgPool,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    max_flagged: i64,
) -> Result<(Vec<(DisclosureBasis, i64)>, Vec<Disclosure>)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT basis, count(*) FROM disclosures
         WHERE disclose_time > $1 AND disclose_time <= $2
         GROUP BY basis",
    )
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?;
    let flagged = sqlx::query(concat!(
        "SELECT ",
        disclosure_columns!(),
        " FROM disclosures
         WHERE disclose_time > $1 AND disclose_time <= $2 AND contradicted_purpose IS NOT NULL
         ORDER BY disclose_time, id LIMIT $3"
    ))
    .bind(start)
    .bind(end)
    .bind(max_flagged)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let counts = counts
        .into_iter()
        .map(|(b, n)| {
            DisclosureBasis::from_db(&b)
                .map(|b| (b, n))
                .ok_or_else(|| corrupt("basis", &b))
        })
        .collect::<Result<_>>()?;
    let flagged = flagged
        .iter()
        .map(disclosure_from_row)
        .collect::<Result<_>>()?;
    Ok((counts, flagged))
}

/// The current transaction's id, as a consistency token's xid (for a write
/// that journals nothing).
pub async fn current_xid(conn: &mut PgConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(conn)
            .await?,
    )
}
