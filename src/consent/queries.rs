//! The consent reads behind the Get and List RPCs: what each reads, and
//! from which database. They know no gRPC; paging tokens stay at the edge
//! (each read takes the decoded position and returns up to `limit` rows,
//! the caller asking for one more to learn whether a next page exists).
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::model::{ConsentRecord, PolicyVersion, Purpose, Subject};
use super::store;
use crate::error::{Error, Result};
use crate::keys::Keyring;
use crate::names::{PurposeKey, SubjectId};
use crate::reads::Reads;
use crate::tokens::ConsistencyToken;

/// One purpose, or NOT_FOUND.
#[tracing::instrument(skip_all, fields(purpose = %key.as_str()))]
pub async fn get_purpose(pool: &PgPool, key: &PurposeKey) -> Result<Purpose> {
    let mut conn = pool.acquire().await.map_err(Error::from)?;
    store::purposes::get_purpose(&mut conn, key, false)
        .await?
        .ok_or_else(|| Error::NotFound(key.name()))
}

/// Purposes by key, after `after`.
#[tracing::instrument(skip_all, fields(limit = limit))]
pub async fn list_purposes(pool: &PgPool, after: Option<&str>, limit: i64) -> Result<Vec<Purpose>> {
    store::purposes::list_purposes(pool, after, limit).await
}

/// A page of the ledger, oldest first, optionally of one subject and one
/// purpose; on the replica when it is fresh enough for `token`.
#[tracing::instrument(skip_all, fields(purpose = purpose.map(|p| p.as_str()), limit = limit))]
pub async fn list_records(
    keys: &Keyring,
    reads: &Reads,
    token: Option<ConsistencyToken>,
    subject: Option<&SubjectId>,
    purpose: Option<&PurposeKey>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<ConsentRecord>> {
    reads
        .read(token, |pool| {
            store::ledger::list_records(keys, pool, subject, purpose, after, limit)
        })
        .await
}

/// Policy versions, newest effective first, after `after`.
#[tracing::instrument(skip_all, fields(limit = limit))]
pub async fn list_policy_versions(
    pool: &PgPool,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<PolicyVersion>> {
    store::policy_versions::list_policy_versions(pool, after, limit).await
}

/// The material version to list re-consent for: the named one (which must
/// be material), or the latest material one in effect.
#[tracing::instrument(skip_all, fields(policy_version = version_id))]
pub async fn reconsent_version(pool: &PgPool, version_id: Option<&str>) -> Result<PolicyVersion> {
    match version_id {
        Some(id) => {
            let version = store::policy_versions::get_policy_version(pool, id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("policyVersions/{id}")))?;
            if !version.material {
                return Err(Error::invalid(
                    "policy_version",
                    "is not a material version",
                ));
            }
            Ok(version)
        }
        None => store::policy_versions::latest_material_version(pool)
            .await?
            .ok_or_else(|| Error::NotFound("a material policy version in effect".into())),
    }
}

/// The material version (see `reconsent_version`) and the current grants
/// of re-consent purposes that predate it, after `after` (subject,
/// purpose).
#[tracing::instrument(skip_all, fields(policy_version = version_id, limit = limit))]
pub async fn subjects_to_reconsent(
    keys: &Keyring,
    pool: &PgPool,
    version_id: Option<&str>,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<(PolicyVersion, Vec<ConsentRecord>)> {
    let version = reconsent_version(pool, version_id).await?;
    let grants =
        store::policy_versions::grants_predating(keys, pool, &version, after, limit).await?;
    Ok((version, grants))
}

/// One subject, or NOT_FOUND.
#[tracing::instrument(skip_all)]
pub async fn get_subject(pool: &PgPool, subject: &SubjectId) -> Result<Subject> {
    store::subjects::get_subject(pool, subject)
        .await?
        .ok_or_else(|| Error::NotFound(format!("subjects/{}", subject.as_str())))
}
