//! Published policy versions, and the grants a material one calls to be
//! given again.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::ledger::records_from_rows;
use super::{RECORD_COLUMNS, filter};
use crate::consent::decision::MaterialChange;
use crate::consent::model::{ConsentRecord, PolicyVersion};
use crate::error::{Error, Result};
use crate::keys::Keyring;

const POLICY_COLUMNS: &str =
    "version_id, effective_time, text_sha256, material, summary, publish_time";

fn policy_from_row(row: &PgRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        version_id: row.try_get("version_id")?,
        effective_time: row.try_get("effective_time")?,
        text_sha256: row.try_get("text_sha256")?,
        material: row.try_get("material")?,
        summary: row.try_get("summary")?,
        publish_time: row.try_get("publish_time")?,
    })
}

#[tracing::instrument(level = "debug", skip_all, fields(policy_version = version_id))]
pub async fn publish_policy_version(
    conn: &mut PgConnection,
    version_id: &str,
    effective_time: DateTime<Utc>,
    text_sha256: &str,
    material: bool,
    summary: &str,
) -> Result<PolicyVersion> {
    let sql = format!(
        "INSERT INTO policy_versions (version_id, effective_time, text_sha256, material, summary)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (version_id) DO NOTHING
         RETURNING {POLICY_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(version_id)
        .bind(effective_time)
        .bind(text_sha256)
        .bind(material)
        .bind(summary)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => policy_from_row(&row),
        None => Err(Error::AlreadyExists(format!("policyVersions/{version_id}"))),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(policy_version = version_id))]
pub async fn get_policy_version<'e>(
    db: impl sqlx::PgExecutor<'e>,
    version_id: &str,
) -> Result<Option<PolicyVersion>> {
    let sql = format!("SELECT {POLICY_COLUMNS} FROM policy_versions WHERE version_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(version_id)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(policy_from_row).transpose()
}

/// The latest material version already in effect.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn latest_material_version(pool: &PgPool) -> Result<Option<PolicyVersion>> {
    let sql = format!(
        "SELECT {POLICY_COLUMNS} FROM policy_versions
         WHERE material AND effective_time <= now()
         ORDER BY effective_time DESC, version_id DESC LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(policy_from_row).transpose()
}

/// Newest effective first; keyset on (effective_time, version_id).
#[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
pub async fn list_policy_versions(
    pool: &PgPool,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<PolicyVersion>> {
    let after_key = filter(
        after.is_some(),
        "(effective_time, version_id) < ($1, $2)",
        "$1::timestamptz IS NULL AND $2::text IS NULL",
    );
    let (after_time, after_id) = after.unzip();
    let sql = format!(
        "SELECT {POLICY_COLUMNS} FROM policy_versions
         WHERE {after_key}
         ORDER BY effective_time DESC, version_id DESC LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(policy_from_row).collect()
}

/// Current grants of re-consent purposes that predate `version`.
#[tracing::instrument(level = "debug", skip_all, fields(policy_version = %version.version_id, limit = limit))]
pub async fn grants_predating(
    keys: &Keyring,
    pool: &PgPool,
    version: &PolicyVersion,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<ConsentRecord>> {
    let after_key = filter(
        after.is_some(),
        "(c.subject_id, c.purpose_key) > ($3, $4)",
        "$3::text IS NULL AND $4::text IS NULL",
    );
    let (after_subject, after_purpose) = after.unzip();
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM (
             SELECT DISTINCT ON (c.subject_id, c.purpose_key) c.*
             FROM consent_records c
             JOIN purposes p ON p.key = c.purpose_key AND p.reconsent_on_material_change
             WHERE {after_key}
             ORDER BY c.subject_id, c.purpose_key, c.effective_time DESC, c.id DESC
         ) latest
         WHERE decision = 'GRANTED'
           AND effective_time < $1
           AND policy_version IS DISTINCT FROM $2
           AND (expire_time IS NULL OR expire_time > now())
           -- Nobody asks an erased person again.
           AND NOT EXISTS (SELECT 1 FROM subjects s
                           WHERE s.subject_id = latest.subject_id AND s.erase_time IS NOT NULL)
         ORDER BY subject_id, purpose_key
         LIMIT $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(version.effective_time)
        .bind(&version.version_id)
        .bind(after_subject)
        .bind(after_purpose)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    records_from_rows(keys, pool, &rows).await
}

/// Every material policy version, oldest effective first.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn material_versions(pool: &PgPool) -> Result<Vec<MaterialChange>> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version_id, effective_time FROM policy_versions
         WHERE material ORDER BY effective_time, version_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version_id, effective_time)| MaterialChange {
            version_id,
            effective_time,
        })
        .collect())
}
