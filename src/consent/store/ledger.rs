//! The append-only ledger of consent decisions: RecordConsent's one-statement
//! writes (one entry, or many in a group commit) and the reads of entries.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::subjects::is_erased;
use super::{RECORD_COLUMNS, corrupt, filter};
use crate::consent::model::{ConsentRecord, Decision, Evidence, EvidenceKind, NewConsent, Source};
use crate::error::{Error, Result};
use crate::keys::{Keyring, column};
use crate::names::{PurposeKey, SubjectId};

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

pub(super) fn record_from_row(row: &PgRow, prefix: &str) -> Result<Option<ConsentRecord>> {
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

/// The sealed form of evidence: its reference and description.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedEvidence {
    reference: String,
    description: String,
}

/// The sealed evidence column of a row read with `prefix`.
pub(super) fn sealed_evidence(row: &PgRow, prefix: &str) -> Result<Option<Vec<u8>>> {
    Ok(row.try_get(format!("{prefix}evidence_sealed").as_str())?)
}

/// Puts the opened evidence into records read with sealed evidence (one
/// key query for all; none when nothing is sealed, as on most checks).
/// Evidence whose data key was destroyed reads as empty text.
pub(super) async fn open_evidence<'e>(
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
pub(super) async fn records_from_rows(
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
#[tracing::instrument(level = "debug", skip_all, fields(purpose = %new.purpose.as_str()))]
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
#[tracing::instrument(level = "debug", skip_all, fields(purpose = %new.purpose.as_str()))]
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
#[tracing::instrument(level = "debug", skip_all, fields(entries = entries.len()))]
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

/// A page of the ledger, oldest first.
#[tracing::instrument(level = "debug", skip_all, fields(purpose = purpose.map(|p| p.as_str()), limit = limit))]
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
#[tracing::instrument(level = "debug", skip_all, fields(records = ids.len()))]
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
