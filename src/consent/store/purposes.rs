//! The purposes catalogue and the promises (PROHIBITED scopes) each purpose
//! holds.
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::{PURPOSE_COLUMNS, corrupt, filter};
use crate::consent::model::{
    ConsentModel, EvidenceKind, Lift, PolicyVersion, Promise, Purpose, PurposeFields,
};
use crate::error::{Error, Result};
use crate::names::PurposeKey;

// The statements on the hot paths (every check, every RecordConsent) are
// built once; the others are formatted per call.
static GET_PURPOSE: LazyLock<Arc<str>> =
    LazyLock::new(|| format!("SELECT {PURPOSE_COLUMNS} FROM purposes WHERE key = $1").into());
static GET_PURPOSE_FOR_UPDATE: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!("SELECT {PURPOSE_COLUMNS} FROM purposes WHERE key = $1 FOR UPDATE").into()
});

pub(super) fn purpose_from_row(row: &PgRow, prefix: &str) -> Result<Option<Purpose>> {
    let col = |c: &str| format!("{prefix}{c}");
    let Some(key): Option<String> = row.try_get(col("key").as_str())? else {
        return Ok(None);
    };
    let model: String = row.try_get(col("consent_model").as_str())?;
    let overrides: serde_json::Value = row.try_get(col("jurisdiction_models").as_str())?;
    let overrides: BTreeMap<String, String> = serde_json::from_value(overrides)
        .map_err(|e| corrupt("jurisdiction_models", &e.to_string()))?;
    let mut jurisdiction_models = BTreeMap::new();
    for (j, m) in overrides {
        let m = ConsentModel::from_db(&m).ok_or_else(|| corrupt("consent model", &m))?;
        jurisdiction_models.insert(j, m);
    }
    let evidence: Option<String> = row.try_get(col("required_evidence").as_str())?;
    let required_evidence = match evidence {
        Some(e) => Some(EvidenceKind::from_db(&e).ok_or_else(|| corrupt("evidence kind", &e))?),
        None => None,
    };
    Ok(Some(Purpose {
        key: PurposeKey::parse(&key).map_err(|_| corrupt("purpose key", &key))?,
        display_name: row.try_get(col("display_name").as_str())?,
        description: row.try_get(col("description").as_str())?,
        consent_model: ConsentModel::from_db(&model)
            .ok_or_else(|| corrupt("consent model", &model))?,
        jurisdiction_models,
        required_evidence,
        honors_gpc: row.try_get(col("honors_gpc").as_str())?,
        reconsent_on_material_change: row.try_get(col("reconsent_on_material_change").as_str())?,
        excluded_categories: row.try_get(col("excluded_categories").as_str())?,
        create_time: row.try_get(col("create_time").as_str())?,
        update_time: row.try_get(col("update_time").as_str())?,
        revision: row.try_get(col("revision").as_str())?,
        promises: promises_from_json(row.try_get(col("promises").as_str())?)?,
    }))
}

/// A promise as `purposes.promises` holds it (migration 0010's projection
/// of `purpose_promises`).
#[derive(serde::Deserialize)]
struct PromiseJson {
    id: i64,
    jurisdiction: Option<String>,
    exceptions: Vec<String>,
    make_time: Option<DateTime<Utc>>,
    record_time: DateTime<Utc>,
    made_by: String,
    lifted_by_version: Option<String>,
    lift_effective_time: Option<DateTime<Utc>>,
    lift_time: Option<DateTime<Utc>>,
    lifted_by: Option<String>,
}

fn promises_from_json(value: serde_json::Value) -> Result<Vec<Promise>> {
    let raw: Vec<PromiseJson> =
        serde_json::from_value(value).map_err(|e| corrupt("purpose promises", &e.to_string()))?;
    raw.into_iter()
        .map(|p| {
            let lift = match (p.lifted_by_version, p.lift_effective_time, p.lift_time) {
                (Some(policy_version), Some(effective_time), Some(lift_time)) => Some(Lift {
                    policy_version,
                    effective_time,
                    lift_time,
                    lifted_by: p.lifted_by.unwrap_or_default(),
                }),
                (None, None, None) => None,
                _ => return Err(corrupt("purpose promise lift", &p.id.to_string())),
            };
            Ok(Promise {
                id: p.id,
                jurisdiction: p.jurisdiction,
                exceptions: p.exceptions,
                make_time: p.make_time,
                record_time: p.record_time,
                made_by: p.made_by,
                lift,
            })
        })
        .collect()
}

fn overrides_json(fields: &PurposeFields) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .jurisdiction_models
            .iter()
            .map(|(j, m)| (j.clone(), serde_json::Value::from(m.as_str())))
            .collect(),
    )
}

#[tracing::instrument(level = "debug", skip_all, fields(purpose = %key.as_str()))]
pub async fn create_purpose(
    conn: &mut PgConnection,
    key: &PurposeKey,
    fields: &PurposeFields,
) -> Result<Purpose> {
    let sql = format!(
        "INSERT INTO purposes (key, display_name, description, consent_model, jurisdiction_models,
                               required_evidence, honors_gpc, reconsent_on_material_change,
                               excluded_categories)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (key) DO NOTHING
         RETURNING {PURPOSE_COLUMNS}"
    );
    write_purpose(conn, sql, key, fields)
        .await?
        .ok_or_else(|| Error::AlreadyExists(key.name()))
}

/// Runs an INSERT or UPDATE of a purpose whose parameters are `$1` the key
/// and `$2..$9` the fields, returning the row written (None: none was).
async fn write_purpose(
    conn: &mut PgConnection,
    sql: String,
    key: &PurposeKey,
    fields: &PurposeFields,
) -> Result<Option<Purpose>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key.as_str())
        .bind(&fields.display_name)
        .bind(&fields.description)
        .bind(fields.consent_model.as_str())
        .bind(overrides_json(fields))
        .bind(fields.required_evidence.map(|e| e.as_str()))
        .bind(fields.honors_gpc)
        .bind(fields.reconsent_on_material_change)
        .bind(&fields.excluded_categories)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => purpose_from_row(&row, "")?
            .map(Some)
            .ok_or_else(|| corrupt("purpose", key.as_str())),
        None => Ok(None),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(purpose = %key.as_str(), lock = lock))]
pub async fn get_purpose(
    conn: &mut PgConnection,
    key: &PurposeKey,
    lock: bool,
) -> Result<Option<Purpose>> {
    let sql = if lock {
        &GET_PURPOSE_FOR_UPDATE
    } else {
        &GET_PURPOSE
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(sql)))
        .bind(key.as_str())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => purpose_from_row(&row, ""),
        None => Ok(None),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
pub async fn list_purposes(pool: &PgPool, after: Option<&str>, limit: i64) -> Result<Vec<Purpose>> {
    let after_key = filter(after.is_some(), "key > $1", "$1::text IS NULL");
    let sql = format!(
        "SELECT {PURPOSE_COLUMNS} FROM purposes
         WHERE {after_key} ORDER BY key LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| purpose_from_row(r, "").and_then(|p| p.ok_or_else(|| corrupt("purpose", "null"))))
        .collect()
}

#[tracing::instrument(level = "debug", skip_all, fields(purpose = %key.as_str()))]
pub async fn update_purpose(
    conn: &mut PgConnection,
    key: &PurposeKey,
    fields: &PurposeFields,
) -> Result<Purpose> {
    let sql = format!(
        "UPDATE purposes SET display_name = $2, description = $3, consent_model = $4,
                jurisdiction_models = $5, required_evidence = $6, honors_gpc = $7,
                reconsent_on_material_change = $8, excluded_categories = $9, update_time = now(),
                revision = revision + 1
         WHERE key = $1
         RETURNING {PURPOSE_COLUMNS}"
    );
    write_purpose(conn, sql, key, fields)
        .await?
        .ok_or_else(|| Error::NotFound(key.name()))
}

// ---- promises -------------------------------------------------------------

/// Records a promise made now, for `scope` (None: the default model).
#[tracing::instrument(level = "debug", skip_all, fields(purpose = %key.as_str(), jurisdiction = scope))]
pub async fn make_promise(
    conn: &mut PgConnection,
    key: &PurposeKey,
    scope: Option<&str>,
    exceptions: &[String],
    actor: &str,
    request_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO purpose_promises (purpose_key, jurisdiction, exceptions, make_time,
                                       made_by, make_request_id)
         VALUES ($1, $2, $3, now(), $4, $5)",
    )
    .bind(key.as_str())
    .bind(scope)
    .bind(exceptions)
    .bind(actor)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lifts a promise under a policy version, with effect at the version's
/// effective time or now, whichever is later (never backwards). Returns
/// when it takes effect.
#[tracing::instrument(level = "debug", skip_all, fields(promise_id = promise_id, policy_version = %version.version_id))]
pub async fn lift_promise(
    conn: &mut PgConnection,
    promise_id: i64,
    version: &PolicyVersion,
    actor: &str,
    request_id: &str,
) -> Result<DateTime<Utc>> {
    let effective: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE purpose_promises
         SET lifted_by_version = $2, lift_effective_time = greatest($3, now()),
             lift_time = now(), lifted_by = $4, lift_request_id = $5
         WHERE id = $1 AND lifted_by_version IS NULL
         RETURNING lift_effective_time",
    )
    .bind(promise_id)
    .bind(&version.version_id)
    .bind(version.effective_time)
    .bind(actor)
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    // The purpose row is locked by the caller, so the promise cannot have
    // been lifted since it was read.
    effective.ok_or_else(|| Error::Internal(format!("promise {promise_id} was already lifted")))
}

/// Every purpose, for the decision cache's catalogue.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn all_purposes(pool: &PgPool) -> Result<Vec<Purpose>> {
    list_purposes(pool, None, i64::MAX).await
}

/// All purpose keys, for a subject's whole state, and the snapshot xmin
/// they were read at.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn all_purpose_keys(pool: &PgPool) -> Result<(Vec<PurposeKey>, i64)> {
    let (keys, xmin): (Vec<String>, i64) = sqlx::query_as(
        "SELECT array(SELECT key FROM purposes ORDER BY key),
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    )
    .fetch_one(pool)
    .await?;
    let keys = keys
        .iter()
        .map(|k| PurposeKey::parse(k).map_err(|_| corrupt("purpose key", k)))
        .collect::<Result<_>>()?;
    Ok((keys, xmin))
}

/// The keys in `keys` that name no data category (the catalogue the
/// retention schedule is kept by), in the order given.
pub async fn unknown_categories(conn: &mut PgConnection, keys: &[String]) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT k FROM unnest($1::text[]) WITH ORDINALITY AS t (k, n)
         WHERE NOT EXISTS (SELECT 1 FROM data_categories d WHERE d.key = t.k)
         ORDER BY n",
    )
    .bind(keys)
    .fetch_all(conn)
    .await?)
}
