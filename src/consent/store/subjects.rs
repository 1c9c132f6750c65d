//! Subjects: the minor flag, erasure, and what is known of a subject.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::consent::model::Subject;
use crate::error::Result;
use crate::names::SubjectId;

fn subject_from_row(row: &PgRow) -> Result<Subject> {
    Ok(Subject {
        subject_id: row.try_get("subject_id")?,
        minor_since: row.try_get("minor_since")?,
        erased: {
            let time: Option<DateTime<Utc>> = row.try_get("erase_time")?;
            let by: Option<String> = row.try_get("erased_by")?;
            time.map(|t| (t, by.unwrap_or_default()))
        },
        account_close_time: row.try_get("account_close_time")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Whether the subject was erased.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn is_erased(conn: &mut PgConnection, subject: &SubjectId) -> Result<bool> {
    let erased: Option<bool> =
        sqlx::query_scalar("SELECT erase_time IS NOT NULL FROM subjects WHERE subject_id = $1")
            .bind(subject.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(erased.unwrap_or(false))
}

/// Whether the subject is flagged as a minor now (locks its row, if any).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn is_minor(conn: &mut PgConnection, subject: &SubjectId) -> Result<bool> {
    let minor: Option<bool> = sqlx::query_scalar(
        "SELECT minor_since IS NOT NULL FROM subjects WHERE subject_id = $1 FOR UPDATE",
    )
    .bind(subject.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(minor.unwrap_or(false))
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn set_minor(
    conn: &mut PgConnection,
    subject: &SubjectId,
    minor: bool,
) -> Result<Subject> {
    let row = sqlx::query(
        "INSERT INTO subjects (subject_id, minor_since)
         VALUES ($1, CASE WHEN $2 THEN now() END)
         ON CONFLICT (subject_id) DO UPDATE
         SET minor_since = CASE WHEN $2 THEN coalesce(subjects.minor_since, now()) END,
             update_time = now()
         RETURNING subject_id, minor_since, erase_time, erased_by, create_time, update_time,
                   (SELECT max(event_time) FROM lifecycle_events
                    WHERE subject_id = $1 AND event = 'ACCOUNT_CLOSED') AS account_close_time",
    )
    .bind(subject.as_str())
    .bind(minor)
    .fetch_one(conn)
    .await?;
    subject_from_row(&row)
}

/// The subject's row, or what the ledger or the lifecycle events imply
/// about a subject that has no row of its own, with its account's closure.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn get_subject(pool: &PgPool, subject: &SubjectId) -> Result<Option<Subject>> {
    let row = sqlx::query(
        "WITH known AS (
             SELECT subject_id, minor_since, erase_time, erased_by, create_time, update_time
             FROM subjects WHERE subject_id = $1
             UNION ALL
             SELECT $1, NULL::timestamptz, NULL::timestamptz, NULL::text, min(record_time),
                    max(record_time)
             FROM consent_records WHERE subject_id = $1
             HAVING count(*) > 0
             UNION ALL
             SELECT $1, NULL::timestamptz, NULL::timestamptz, NULL::text, min(record_time),
                    max(record_time)
             FROM lifecycle_events WHERE subject_id = $1
             HAVING count(*) > 0
             LIMIT 1
         )
         SELECT known.*,
                (SELECT max(event_time) FROM lifecycle_events
                 WHERE subject_id = $1 AND event = 'ACCOUNT_CLOSED') AS account_close_time
         FROM known",
    )
    .bind(subject.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(subject_from_row).transpose()
}
