//! The consent domain's SQL. Writers take the transaction's connection;
//! readers take the pool. No gRPC types here.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::decision::MaterialChange;
use super::model::{
    ConsentModel, ConsentRecord, Decision, Evidence, EvidenceKind, Lift, NewConsent, PolicyVersion,
    Promise, Purpose, PurposeFields, Source, Subject,
};
use crate::error::{Error, Result};
use crate::keys::{Keyring, column};
use crate::names::{PurposeKey, SubjectId};

const PURPOSE_COLUMNS: &str = "key, display_name, description, consent_model, jurisdiction_models, \
     required_evidence, honors_gpc, reconsent_on_material_change, create_time, update_time, revision, \
     promises, excluded_categories";

const RECORD_COLUMNS: &str = "id, subject_id, purpose_key, decision, source, policy_version, jurisdiction, \
     evidence_kind, evidence_reference, evidence_description, effective_time, expire_time, \
     record_time, request_id, actor, evidence_sealed";

/// The audit event and change event of each ledger entry in CTE `r` (the
/// entries just inserted), in id order; `method` and `kind` are the
/// statement's parameters holding the method and the change kind.
fn entry_events(method: &str, kind: &str) -> String {
    format!(
        "a AS (
             INSERT INTO audit_events (actor, method, target, subject_id, request_id, details)
             SELECT r.actor, {method}, 'subjects/' || r.subject_id || '/consentRecords/' || r.id,
                    r.subject_id, r.request_id,
                    jsonb_build_object('purpose', r.purpose_key, 'decision', r.decision,
                                       'source', r.source)
             FROM r ORDER BY r.id),
         c AS (
             INSERT INTO change_events (kind, subject_id, purpose_key, consent_record_id)
             SELECT {kind}, r.subject_id, r.purpose_key, r.id FROM r ORDER BY r.id)"
    )
}

// The statements on the hot paths (every check, every RecordConsent) are
// built once; the others are formatted per call.
static GET_PURPOSE: LazyLock<Arc<str>> =
    LazyLock::new(|| format!("SELECT {PURPOSE_COLUMNS} FROM purposes WHERE key = $1").into());
static GET_PURPOSE_FOR_UPDATE: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!("SELECT {PURPOSE_COLUMNS} FROM purposes WHERE key = $1 FOR UPDATE").into()
});
/// RecordConsent's whole write in one statement, so one round trip and one
/// commit: the ledger entry, the idempotency key pointing at it (the entry
/// is the call's stored response; no key when $17 is NULL, for an entry a
/// larger transaction writes under its own key), the audit event and the
/// change event, all or nothing. The entry is written only while the
/// purpose is still at the revision the caller checked the grant against;
/// a key already used fails the statement on the key's primary key, after
/// waiting for a concurrent call with the same key to finish.
static RECORD_CONSENT: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!(
        "WITH p AS (SELECT key FROM purposes WHERE key = $2 AND revision = $15),
         r AS (
             INSERT INTO consent_records (subject_id, purpose_key, decision, source, policy_version,
                 jurisdiction, evidence_kind, evidence_reference, evidence_description,
                 effective_time, expire_time, request_id, actor, evidence_sealed)
             SELECT $1, p.key, $3, $4, $5, $6, $7, $8, $9, coalesce($10, now()), $11, $12, $13, $14
             FROM p
             RETURNING {RECORD_COLUMNS}),
         k AS (
             INSERT INTO idempotency_keys (caller, request_id, method, request_hash,
                                           consent_record_id)
             SELECT $19, r.request_id, $16, $17, r.id FROM r WHERE $17::bytea IS NOT NULL),
         {events}
         SELECT r.*, pg_current_xact_id()::text::bigint AS xid FROM r",
        events = entry_events("$16", "$18"),
    )
    .into()
});
/// `RECORD_CONSENT` for many entries without evidence at once (group
/// commit: one statement, one transaction, one durable commit for several
/// calls). Per entry, as in the one-entry statement: nothing unless the
/// purpose is still at the revision the rules were checked against, and
/// nothing if its request id was used. The ids are drawn first so that the
/// key, which must exist before the entry is written, can point at it.
/// Returns one row per entry, by `ord` (1-based).
static RECORD_CONSENTS: LazyLock<Arc<str>> = LazyLock::new(|| {
    format!(
        "WITH q AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                                  $10::text[], $11::int8[], $12::bytea[], $15::text[])
                 WITH ORDINALITY AS q(subject_id, purpose_key, decision, source, policy_version,
                                      jurisdiction, effective_time, expire_time, request_id,
                                      actor, purpose_revision, request_hash, caller, ord)),
         n AS MATERIALIZED (
             SELECT q.ord, nextval(pg_get_serial_sequence('consent_records', 'id')) AS id
             FROM q JOIN purposes p ON p.key = q.purpose_key AND p.revision = q.purpose_revision
             -- No grant for an erased subject (a refusal is still taken).
             WHERE NOT (q.decision = 'GRANTED' AND EXISTS (
                 SELECT 1 FROM subjects s
                 WHERE s.subject_id = q.subject_id AND s.erase_time IS NOT NULL))
             ORDER BY q.ord),
         k AS (
             INSERT INTO idempotency_keys (caller, request_id, method, request_hash,
                                           consent_record_id)
             SELECT q.caller, q.request_id, $13, q.request_hash, n.id FROM n JOIN q USING (ord)
             ORDER BY q.caller, q.request_id
             ON CONFLICT (caller, request_id) DO NOTHING
             RETURNING consent_record_id),
         r AS (
             INSERT INTO consent_records (id, subject_id, purpose_key, decision, source,
                 policy_version, jurisdiction, effective_time, expire_time, request_id, actor)
             OVERRIDING SYSTEM VALUE
             SELECT n.id, q.subject_id, q.purpose_key, q.decision, q.source, q.policy_version,
                    q.jurisdiction, coalesce(q.effective_time, now()), q.expire_time,
                    q.request_id, q.actor
             FROM k JOIN n ON n.id = k.consent_record_id JOIN q USING (ord)
             ORDER BY n.id
             RETURNING {RECORD_COLUMNS}),
         {events}
         SELECT q.ord, n.id IS NOT NULL AS purpose_current,
                (n.id IS NULL AND q.decision = 'GRANTED' AND EXISTS (
                    SELECT 1 FROM subjects s
                    WHERE s.subject_id = q.subject_id AND s.erase_time IS NOT NULL))
                    AS subject_erased,
                r.*,
                pg_current_xact_id()::text::bigint AS xid
         FROM q LEFT JOIN n USING (ord) LEFT JOIN r ON r.id = n.id
         ORDER BY q.ord",
        events = entry_events("$13", "$14"),
    )
    .into()
});
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

fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("unexpected {what} in the database: {value:?}"))
}

fn purpose_from_row(row: &PgRow, prefix: &str) -> Result<Option<Purpose>> {
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

fn record_from_row(row: &PgRow, prefix: &str) -> Result<Option<ConsentRecord>> {
    let col = |c: &str| format!("{prefix}{c}");
    let Some(id): Option<i64> = row.try_get(col("id").as_str())? else {
        return Ok(None);
    };
    let decision: String = row.try_get(col("decision").as_str())?;
    let source: String = row.try_get(col("source").as_str())?;
    let evidence_kind: Option<String> = row.try_get(col("evidence_kind").as_str())?;
    let evidence = match evidence_kind {
        Some(kind) => Some(Evidence {
            kind: EvidenceKind::from_db(&kind).ok_or_else(|| corrupt("evidence kind", &kind))?,
            reference: row
                .try_get::<Option<String>, _>(col("evidence_reference").as_str())?
                .unwrap_or_default(),
            description: row
                .try_get::<Option<String>, _>(col("evidence_description").as_str())?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Some(ConsentRecord {
        id,
        subject_id: row.try_get(col("subject_id").as_str())?,
        purpose: row.try_get(col("purpose_key").as_str())?,
        decision: Decision::from_db(&decision).ok_or_else(|| corrupt("decision", &decision))?,
        source: Source::from_db(&source).ok_or_else(|| corrupt("source", &source))?,
        policy_version: row.try_get(col("policy_version").as_str())?,
        jurisdiction: row.try_get(col("jurisdiction").as_str())?,
        evidence,
        effective_time: row.try_get(col("effective_time").as_str())?,
        expire_time: row.try_get(col("expire_time").as_str())?,
        record_time: row.try_get(col("record_time").as_str())?,
        request_id: row.try_get(col("request_id").as_str())?,
        actor: row.try_get(col("actor").as_str())?,
    }))
}

/// One of two SQL conditions, chosen by whether a filter is present: the
/// connections use generic plans (see `db::pool`), and `$1 IS NULL OR
/// col = $1` would plan as a scan.
fn filter(present: bool, when_present: &'static str, when_absent: &'static str) -> &'static str {
    if present { when_present } else { when_absent }
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

// ---- purposes -------------------------------------------------------------

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
        Some(row) => purpose_from_row(&row, "")?.ok_or_else(|| corrupt("purpose", key.as_str())),
        None => Err(Error::AlreadyExists(key.name())),
    }
}

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
        Some(row) => purpose_from_row(&row, "")?.ok_or_else(|| corrupt("purpose", key.as_str())),
        None => Err(Error::NotFound(key.name())),
    }
}

// ---- promises -------------------------------------------------------------

/// Records a promise made now, for `scope` (None: the default model).
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

// ---- the ledger -----------------------------------------------------------

/// The sealed form of evidence: its reference and description.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedEvidence {
    reference: String,
    description: String,
}

/// The sealed evidence column of a row read with `prefix`.
fn sealed_evidence(row: &PgRow, prefix: &str) -> Result<Option<Vec<u8>>> {
    Ok(row.try_get(format!("{prefix}evidence_sealed").as_str())?)
}

/// Puts the opened evidence into records read with sealed evidence (one
/// key query for all; none when nothing is sealed, as on most checks).
/// Evidence whose data key was destroyed reads as empty text.
async fn open_evidence<'e>(
    keys: &Keyring,
    db: impl sqlx::PgExecutor<'e>,
    records: Vec<(&mut ConsentRecord, Vec<u8>)>,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let opener = keys
        .opener(db, records.iter().map(|(_, s)| s.as_slice()))
        .await?;
    for (record, sealed) in records {
        let opened: Option<SealedEvidence> =
            opener.open_json(&record.subject_id, column::CONSENT_EVIDENCE, &sealed)?;
        if let (Some(e), Some(o)) = (record.evidence.as_mut(), opened) {
            e.reference = o.reference;
            e.description = o.description;
        }
    }
    Ok(())
}

/// Records read by `SELECT {RECORD_COLUMNS}`, with their evidence opened.
async fn records_from_rows(
    keys: &Keyring,
    pool: &PgPool,
    rows: &[PgRow],
) -> Result<Vec<ConsentRecord>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut sealed = Vec::new();
    for row in rows {
        out.push(record_from_row(row, "")?.ok_or_else(|| corrupt("record", "null"))?);
        sealed.push(sealed_evidence(row, "")?);
    }
    let pending = out
        .iter_mut()
        .zip(sealed)
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .collect();
    open_evidence(keys, pool, pending).await?;
    Ok(out)
}

/// The text of RecordConsent's statement, for the bench's measurement of
/// it alone (`privacy-records-bench --scenarios pgbench-record`).
pub fn record_consent_sql() -> &'static str {
    &RECORD_CONSENT
}

/// What `record_consent`'s statement did.
pub enum Appended {
    /// Written (and committed, unless inside a larger transaction): the
    /// entry and its transaction id.
    Written(Box<ConsentRecord>, i64),
    /// Nothing written: the request id was used before.
    RequestIdUsed,
    /// Nothing written: the purpose is gone or no longer at that revision.
    PurposeRevised,
    /// Nothing written: a grant for a subject that was erased.
    SubjectErased,
}

/// Who writes an entry, through which method, under which request.
pub struct Writer<'a> {
    pub actor: &'a str,
    /// Whose request id it is (see `Caller::request_id_scope`).
    pub scope: &'a str,
    pub method: &'a str,
    pub request_id: &'a str,
    /// The request's fingerprint when the entry writes the request's
    /// idempotency key; None when the enclosing transaction holds the key.
    pub fingerprint: Option<&'a [u8]>,
}

/// Writes one ledger entry with its idempotency key, audit event and change
/// event in one statement (`RECORD_CONSENT`), if the purpose is still at
/// `purpose_revision`, and commits. An entry with evidence first needs the
/// subject's data key, which may be created, so it writes in a transaction
/// of its own; otherwise the statement is its own transaction.
pub async fn record_consent(
    keys: &Keyring,
    pool: &PgPool,
    new: &NewConsent,
    purpose_revision: i64,
    writer: &Writer<'_>,
) -> Result<Appended> {
    if new.evidence.is_none() {
        let mut conn = pool.acquire().await?;
        return append(keys, &mut conn, new, purpose_revision, writer).await;
    }
    let mut tx = pool.begin().await?;
    let appended = append(keys, &mut tx, new, purpose_revision, writer).await?;
    if let Appended::Written(..) = appended {
        tx.commit().await?;
    }
    Ok(appended)
}

/// `record_consent`'s statement on `conn`, inside whatever transaction it
/// is in (none: the statement commits itself).
/// Evidence (free text about a person) is sealed under the subject's data
/// key, created then if need be; a decision without evidence never touches
/// the key table.
pub async fn append(
    keys: &Keyring,
    conn: &mut PgConnection,
    new: &NewConsent,
    purpose_revision: i64,
    writer: &Writer<'_>,
) -> Result<Appended> {
    // Before anything is sealed: an erased subject's key is gone, and must
    // not come back for a grant that will be refused.
    if new.decision == Decision::Granted && is_erased(&mut *conn, &new.subject_id).await? {
        return Ok(Appended::SubjectErased);
    }
    let evidence = new.evidence.as_ref();
    let evidence_sealed = match evidence {
        Some(e) => Some(
            keys.sealer(&mut *conn, new.subject_id.as_str())
                .await?
                .seal_json(
                    column::CONSENT_EVIDENCE,
                    &SealedEvidence {
                        reference: e.reference.clone(),
                        description: e.description.clone(),
                    },
                )?,
        ),
        None => None,
    };
    let result = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&RECORD_CONSENT)))
        .bind(new.subject_id.as_str())
        .bind(new.purpose.as_str())
        .bind(new.decision.as_str())
        .bind(new.source.as_str())
        .bind(new.policy_version.as_deref())
        .bind(new.jurisdiction.as_ref().map(|j| j.as_str()))
        .bind(evidence.map(|e| e.kind.as_str()))
        // The clear columns stay empty; the sealed one holds both.
        .bind(evidence.map(|_| ""))
        .bind(evidence.map(|_| ""))
        .bind(new.effective_time)
        .bind(new.expire_time)
        .bind(writer.request_id)
        .bind(writer.actor)
        .bind(evidence_sealed)
        .bind(purpose_revision)
        .bind(writer.method)
        .bind(writer.fingerprint)
        .bind(crate::journal::ChangeKind::ConsentRecorded.as_str())
        .bind(writer.scope)
        .fetch_optional(conn)
        .await;
    let row = match result {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(Appended::PurposeRevised),
        Err(e) => {
            let constraint = e
                .as_database_error()
                .and_then(|d| d.constraint())
                .unwrap_or_default();
            return Err(match crate::error::sqlstate(&e).as_deref() {
                Some("23505") if constraint == "idempotency_keys_pkey" => {
                    return Ok(Appended::RequestIdUsed);
                }
                // consent_records_policy_version_fkey: the version is unknown.
                Some("23503") => Error::precondition(
                    crate::proto::ErrorReason::PolicyVersionUnknown,
                    format!(
                        "policyVersions/{}",
                        new.policy_version.as_deref().unwrap_or("")
                    ),
                    "policy_version has not been published",
                ),
                // The CHECK constraints: an expiry at or before the effective time.
                Some("23514") => Error::invalid("expire_time", "must be after effective_time"),
                _ => Error::from(e),
            });
        }
    };
    let xid: i64 = row.try_get("xid")?;
    let mut record = record_from_row(&row, "")?.ok_or_else(|| corrupt("consent record", "null"))?;
    // What was just sealed is what the caller gave.
    record.evidence = new.evidence.clone();
    Ok(Appended::Written(Box::new(record), xid))
}

/// One entry for `append_many`: a decision without evidence, the purpose
/// revision its rules were checked against, and who writes it.
pub struct Pending {
    pub new: NewConsent,
    pub purpose_revision: i64,
    pub actor: String,
    /// Whose request id it is (see `Caller::request_id_scope`).
    pub scope: String,
    pub request_id: String,
    pub fingerprint: Vec<u8>,
}

/// Writes many entries without evidence, each with its idempotency key,
/// audit event and change event, in one statement (`RECORD_CONSENTS`) that
/// commits them together unless in a larger transaction. The outcomes are
/// in `entries`' order. An error (a constraint one entry breaks, say)
/// writes nothing for any of them.
pub async fn append_many(
    conn: &mut PgConnection,
    method: &str,
    entries: &[&Pending],
) -> Result<Vec<Appended>> {
    debug_assert!(entries.iter().all(|e| e.new.evidence.is_none()));
    let column = |f: fn(&Pending) -> Option<&str>| entries.iter().map(|e| f(e)).collect::<Vec<_>>();
    let rows = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&RECORD_CONSENTS)))
        .bind(column(|e| Some(e.new.subject_id.as_str())))
        .bind(column(|e| Some(e.new.purpose.as_str())))
        .bind(column(|e| Some(e.new.decision.as_str())))
        .bind(column(|e| Some(e.new.source.as_str())))
        .bind(column(|e| e.new.policy_version.as_deref()))
        .bind(column(|e| e.new.jurisdiction.as_ref().map(|j| j.as_str())))
        .bind(
            entries
                .iter()
                .map(|e| e.new.effective_time)
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.new.expire_time)
                .collect::<Vec<_>>(),
        )
        .bind(column(|e| Some(e.request_id.as_str())))
        .bind(column(|e| Some(e.actor.as_str())))
        .bind(
            entries
                .iter()
                .map(|e| e.purpose_revision)
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.fingerprint.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(method)
        .bind(crate::journal::ChangeKind::ConsentRecorded.as_str())
        .bind(column(|e| Some(e.scope.as_str())))
        .fetch_all(conn)
        .await?;
    if rows.len() != entries.len() {
        return Err(Error::Internal(format!(
            "{} entries written as {} rows",
            entries.len(),
            rows.len()
        )));
    }
    rows.iter()
        .map(|row| {
            if row.try_get::<bool, _>("subject_erased")? {
                return Ok(Appended::SubjectErased);
            }
            if !row.try_get::<bool, _>("purpose_current")? {
                return Ok(Appended::PurposeRevised);
            }
            Ok(match record_from_row(row, "")? {
                Some(record) => Appended::Written(Box::new(record), row.try_get("xid")?),
                None => Appended::RequestIdUsed,
            })
        })
        .collect()
}

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

/// Every purpose, for the decision cache's catalogue.
pub async fn all_purposes(pool: &PgPool) -> Result<Vec<Purpose>> {
    list_purposes(pool, None, i64::MAX).await
}

/// Every material policy version, oldest effective first.
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

/// All purpose keys, for a subject's whole state, and the snapshot xmin
/// they were read at.
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

/// A page of the ledger, oldest first.
pub async fn list_records(
    keys: &Keyring,
    pool: &PgPool,
    subject: Option<&SubjectId>,
    purpose: Option<&PurposeKey>,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<ConsentRecord>> {
    // Each combination of filters is its own statement text, so each gets
    // its own (generic) plan using the right index.
    let by_subject = filter(subject.is_some(), "subject_id = $1", "$1::text IS NULL");
    let by_purpose = filter(purpose.is_some(), "purpose_key = $2", "$2::text IS NULL");
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM consent_records
         WHERE {by_subject} AND {by_purpose} AND id > $3
         ORDER BY id LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(subject.map(|s| s.as_str()))
        .bind(purpose.map(|p| p.as_str()))
        .bind(after_id.unwrap_or(0))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    records_from_rows(keys, pool, &rows).await
}

/// Ledger entries by id (for the watch stream).
pub async fn records_by_id(
    keys: &Keyring,
    pool: &PgPool,
    ids: &[i64],
) -> Result<HashMap<i64, ConsentRecord>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("SELECT {RECORD_COLUMNS} FROM consent_records WHERE id = ANY($1)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(records_from_rows(keys, pool, &rows)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect())
}

// ---- policy versions ------------------------------------------------------

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

// ---- subjects -------------------------------------------------------------

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
pub async fn is_erased(conn: &mut PgConnection, subject: &SubjectId) -> Result<bool> {
    let erased: Option<bool> =
        sqlx::query_scalar("SELECT erase_time IS NOT NULL FROM subjects WHERE subject_id = $1")
            .bind(subject.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(erased.unwrap_or(false))
}

/// Whether the subject is flagged as a minor now (locks its row, if any).
pub async fn is_minor(conn: &mut PgConnection, subject: &SubjectId) -> Result<bool> {
    let minor: Option<bool> = sqlx::query_scalar(
        "SELECT minor_since IS NOT NULL FROM subjects WHERE subject_id = $1 FOR UPDATE",
    )
    .bind(subject.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(minor.unwrap_or(false))
}

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
