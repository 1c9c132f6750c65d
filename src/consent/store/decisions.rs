//! What a decision reads: per (subject, purpose) pair the purpose, the minor
//! flag and the latest entry, in one statement, for checks and for the
//! decision cache.
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::ledger::{open_evidence, record_from_row, sealed_evidence};
use super::purposes::purpose_from_row;
use super::{PURPOSE_COLUMNS, RECORD_COLUMNS};
use crate::consent::decision::MaterialChange;
use crate::consent::model::{ConsentRecord, Purpose};
use crate::error::{Error, Result};
use crate::keys::Keyring;
use crate::names::{PurposeKey, SubjectId};

/// Everything `decide` needs for many (subject, purpose) pairs, in one
/// statement: the snapshot's time and xmin, the material policy change in
/// effect, and per pair the purpose, the minor flag and the latest entry.
static DECISION_INPUTS: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!(
        "WITH snap AS MATERIALIZED (
             SELECT coalesce($3::timestamptz, now()) AS at,
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin),
         mv AS MATERIALIZED (
             SELECT v.version_id, v.effective_time FROM policy_versions v, snap
             WHERE v.material AND v.effective_time <= snap.at
             ORDER BY v.effective_time DESC, v.version_id DESC LIMIT 1),
         q AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(subject_id, purpose_key, ord))
         SELECT q.ord, snap.at AS snap_at, snap.xmin AS snap_xmin,
                mv.version_id AS mv_version_id, mv.effective_time AS mv_effective_time,
                (s.minor_since IS NOT NULL AND s.minor_since <= snap.at) AS minor,
                (s.erase_time IS NOT NULL AND s.erase_time <= snap.at) AS erased,
                {p}, {r}
         FROM q CROSS JOIN snap
         LEFT JOIN mv ON true
         LEFT JOIN purposes p ON p.key = q.purpose_key
         LEFT JOIN subjects s ON s.subject_id = q.subject_id
         LEFT JOIN LATERAL (
             SELECT * FROM consent_records c
             WHERE c.subject_id = q.subject_id AND c.purpose_key = q.purpose_key
               AND c.effective_time <= snap.at
             ORDER BY c.effective_time DESC, c.id DESC
             LIMIT 1
         ) r ON true
         ORDER BY q.ord",
        p = prefixed("p", "p_", PURPOSE_COLUMNS),
        r = prefixed("r", "r_", RECORD_COLUMNS),
    )
    .into()
});

/// Every purpose's latest entry for each subject in `$1` at the snapshot's
/// time (the decision cache's load), the subject's minor flag, and whether
/// an entry takes effect later. One row per entry, or one with no entry.
static SUBJECT_STATES: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!(
        "WITH snap AS MATERIALIZED (
             SELECT now() AS at,
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin),
         q AS (SELECT DISTINCT unnest($1::text[]) AS subject_id)
         SELECT q.subject_id AS q_subject, snap.at AS snap_at, snap.xmin AS snap_xmin,
                s.minor_since, s.erase_time,
                EXISTS (SELECT 1 FROM consent_records f
                        WHERE f.subject_id = q.subject_id AND f.effective_time > snap.at)
                    AS has_future,
                {r}
         FROM q CROSS JOIN snap
         LEFT JOIN subjects s ON s.subject_id = q.subject_id
         LEFT JOIN LATERAL (
             SELECT DISTINCT ON (c.purpose_key) c.* FROM consent_records c
             WHERE c.subject_id = q.subject_id AND c.effective_time <= snap.at
             ORDER BY c.purpose_key, c.effective_time DESC, c.id DESC
         ) r ON true
         ORDER BY q.subject_id",
        r = prefixed("r", "r_", RECORD_COLUMNS),
    )
    .into()
});

/// One (subject, purpose) question and what the database says about it.
#[derive(Debug)]
pub struct DecisionRow {
    pub purpose: Option<Purpose>,
    pub minor: bool,
    /// Erased at or before the time asked about.
    pub erased: bool,
    pub latest: Option<ConsentRecord>,
}

/// What a batch of decisions was read at.
#[derive(Debug)]
pub struct Snapshot {
    /// The time the decisions are for (the database's now, or the as-of time).
    pub at: DateTime<Utc>,
    /// Every transaction below this id had finished when the read was taken.
    pub xmin: i64,
    pub material_change: Option<MaterialChange>,
}

/// Reads everything `decide` needs for many pairs in one statement.
#[tracing::instrument(level = "debug", skip_all, fields(pairs = pairs.len()))]
pub async fn decision_inputs(
    keys: &Keyring,
    pool: &PgPool,
    pairs: &[(SubjectId, PurposeKey)],
    as_of: Option<DateTime<Utc>>,
) -> Result<(Vec<DecisionRow>, Snapshot)> {
    let subjects: Vec<&str> = pairs.iter().map(|(s, _)| s.as_str()).collect();
    let purposes: Vec<&str> = pairs.iter().map(|(_, p)| p.as_str()).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&DECISION_INPUTS)))
        .bind(&subjects)
        .bind(&purposes)
        .bind(as_of)
        .fetch_all(pool)
        .await?;
    let snapshot = match rows.first() {
        Some(row) => {
            let version: Option<String> = row.try_get("mv_version_id")?;
            let effective: Option<DateTime<Utc>> = row.try_get("mv_effective_time")?;
            Snapshot {
                at: row.try_get("snap_at")?,
                xmin: row.try_get("snap_xmin")?,
                material_change: version.zip(effective).map(|(version_id, effective_time)| {
                    MaterialChange {
                        version_id,
                        effective_time,
                    }
                }),
            }
        }
        None => return Err(Error::Internal("a decision read returned no rows".into())),
    };
    let mut decisions = Vec::with_capacity(rows.len());
    let mut sealed = Vec::new();
    for row in &rows {
        decisions.push(DecisionRow {
            purpose: purpose_from_row(row, "p_")?,
            minor: row.try_get("minor")?,
            erased: row.try_get("erased")?,
            latest: record_from_row(row, "r_")?,
        });
        sealed.push(sealed_evidence(row, "r_")?);
    }
    let pending = decisions
        .iter_mut()
        .zip(sealed)
        .filter_map(|(d, s)| d.latest.as_mut().zip(s))
        .collect();
    open_evidence(keys, pool, pending).await?;
    Ok((decisions, snapshot))
}

/// What the decision cache keeps of one subject: the minor flag and the
/// latest entry per purpose in effect now.
#[derive(Debug)]
pub struct SubjectState {
    pub subject_id: String,
    pub minor_since: Option<DateTime<Utc>>,
    pub erase_time: Option<DateTime<Utc>>,
    /// The latest entry per purpose effective at the snapshot's time.
    pub latest: Vec<ConsentRecord>,
    /// Whether the subject has an entry that takes effect after the
    /// snapshot's time (its state will change without a new write).
    pub has_future_entry: bool,
}

/// Every purpose's latest entry for many subjects, in one statement, and
/// the snapshot it was read at. Evidence stays sealed (the records carry
/// the kind only): the cache does not keep opened evidence.
#[tracing::instrument(level = "debug", skip_all, fields(subjects = subjects.len()))]
pub async fn subject_states(
    pool: &PgPool,
    subjects: &[&str],
) -> Result<(Vec<SubjectState>, Snapshot)> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&SUBJECT_STATES)))
        .bind(subjects)
        .fetch_all(pool)
        .await?;
    let snapshot = match rows.first() {
        Some(row) => Snapshot {
            at: row.try_get("snap_at")?,
            xmin: row.try_get("snap_xmin")?,
            material_change: None,
        },
        None => return Err(Error::Internal("a subject read returned no rows".into())),
    };
    let mut states: Vec<SubjectState> = Vec::new();
    for row in &rows {
        let subject_id: String = row.try_get("q_subject")?;
        if states.last().is_none_or(|s| s.subject_id != subject_id) {
            states.push(SubjectState {
                subject_id,
                minor_since: row.try_get("minor_since")?,
                erase_time: row.try_get("erase_time")?,
                latest: Vec::new(),
                has_future_entry: row.try_get("has_future")?,
            });
        }
        if let (Some(record), Some(state)) = (record_from_row(row, "r_")?, states.last_mut()) {
            state.latest.push(record);
        }
    }
    Ok((states, snapshot))
}

/// `p.key AS p_key, p.display_name AS p_display_name, ...`
fn prefixed(table: &str, prefix: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| {
            let c = c.trim();
            format!("{table}.{c} AS {prefix}{c}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
