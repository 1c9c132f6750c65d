//! The consent use cases: the rules of what may be recorded and how a check
//! is decided. They know neither gRPC nor SQL; writes run inside the
//! caller's transaction and write their audit and change events there.
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::cache::DecisionCache;
use super::decision::{self, Inputs, Outcome};
use super::group_commit::GroupCommit;
use super::model::{
    ConsentModel, ConsentRecord, Decision, NewConsent, PolicyVersion, Promise, Purpose,
    PurposeFields,
};
use super::store;
use crate::error::{Error, FieldViolation, Result};
use crate::idempotency::{self, RequestId, Stored};
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::keys::Keyring;
use crate::metrics::DecisionMetrics;
use crate::names::{Jurisdiction, PurposeKey, SubjectId};
use crate::proto::ErrorReason;
use crate::reads::Reads;
use crate::tokens::ConsistencyToken;

pub use crate::rpc::Context;

/// Adds a purpose. A PROHIBITED model or override in it is a promise from
/// now on.
pub async fn create_purpose(
    conn: &mut PgConnection,
    ctx: &Context,
    key: &PurposeKey,
    fields: &PurposeFields,
) -> Result<(Purpose, ConsistencyToken)> {
    require_categories(conn, &fields.excluded_categories).await?;
    store::purposes::create_purpose(conn, key, fields).await?;
    let made = make_promises(conn, ctx, key, fields, &[]).await?;
    let purpose = store::purposes::get_purpose(conn, key, false)
        .await?
        .ok_or_else(|| Error::Internal(format!("{} vanished", key.name())))?;
    let name = key.name();
    let token = journal::record(
        conn,
        ctx.audit(
            &name,
            None,
            json!({
                "consent_model": fields.consent_model.as_str(),
                "promises_made": made,
            }),
        ),
        ChangeEntry {
            kind: ChangeKind::PurposeChanged,
            subject_id: None,
            purpose_key: Some(key.as_str()),
            consent_record_id: None,
            policy_version: None,
            resource: None,
        },
    )
    .await?;
    Ok((purpose, token))
}

/// Records a promise for each scope `fields` make PROHIBITED that has no
/// unlifted promise yet (`unlifted`: the scopes that have one). Returns the
/// scopes ("" for the default model), for the audit event.
async fn make_promises(
    conn: &mut PgConnection,
    ctx: &Context,
    key: &PurposeKey,
    fields: &PurposeFields,
    unlifted: &[Option<String>],
) -> Result<Vec<String>> {
    let mut made = Vec::new();
    for (scope, exceptions) in fields.prohibited_scopes() {
        if unlifted.contains(&scope) {
            continue;
        }
        store::purposes::make_promise(
            conn,
            key,
            scope.as_deref(),
            &exceptions,
            &ctx.actor,
            &ctx.request_id,
        )
        .await?;
        made.push(scope.unwrap_or_default());
    }
    Ok(made)
}

/// Refuses excluded categories the data categories catalogue lacks, naming
/// each by its place in the purpose.
async fn require_categories(conn: &mut PgConnection, categories: &[String]) -> Result<()> {
    if categories.is_empty() {
        return Ok(());
    }
    let unknown = store::purposes::unknown_categories(conn, categories).await?;
    let violations: Vec<FieldViolation> = categories
        .iter()
        .enumerate()
        .filter(|(_, c)| unknown.contains(c))
        .map(|(i, c)| {
            FieldViolation::new(
                format!("purpose.excluded_categories[{i}]"),
                format!(
                    "{c:?} is not a data category (RetentionService ListDataCategories lists them)"
                ),
            )
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// Which fields of a purpose an update changes.
#[derive(Debug, Clone, Default)]
pub struct PurposeMask {
    pub display_name: bool,
    pub description: bool,
    pub consent_model: bool,
    pub jurisdiction_models: bool,
    pub required_evidence: bool,
    pub honors_gpc: bool,
    pub reconsent_on_material_change: bool,
    pub excluded_categories: bool,
}

impl PurposeMask {
    pub fn all() -> Self {
        Self {
            display_name: true,
            description: true,
            consent_model: true,
            jurisdiction_models: true,
            required_evidence: true,
            honors_gpc: true,
            reconsent_on_material_change: true,
            excluded_categories: true,
        }
    }
}

/// Changes a purpose's masked fields. A promise in force (a PROHIBITED
/// model or override) that the change would weaken is refused, unless
/// `lift_version` names a published material policy version, published
/// after the promise was made, that lifts it: then the promise is lifted
/// with effect at that version's effective time (or now, if later). A
/// PROHIBITED model or override the change sets is a promise from now on.
pub async fn update_purpose(
    conn: &mut PgConnection,
    ctx: &Context,
    key: &PurposeKey,
    new: &PurposeFields,
    mask: &PurposeMask,
    etag: Option<&str>,
    lift_version: Option<&str>,
) -> Result<(Purpose, ConsistencyToken)> {
    let current = store::purposes::get_purpose(conn, key, true)
        .await?
        .ok_or_else(|| Error::NotFound(key.name()))?;
    if let Some(etag) = etag
        && etag != current.etag()
    {
        return Err(Error::EtagMismatch(key.name()));
    }
    let fields = PurposeFields {
        display_name: if mask.display_name {
            new.display_name.clone()
        } else {
            current.display_name.clone()
        },
        description: if mask.description {
            new.description.clone()
        } else {
            current.description.clone()
        },
        consent_model: if mask.consent_model {
            new.consent_model
        } else {
            current.consent_model
        },
        jurisdiction_models: if mask.jurisdiction_models {
            new.jurisdiction_models.clone()
        } else {
            current.jurisdiction_models.clone()
        },
        required_evidence: if mask.required_evidence {
            new.required_evidence
        } else {
            current.required_evidence
        },
        honors_gpc: if mask.honors_gpc {
            new.honors_gpc
        } else {
            current.honors_gpc
        },
        reconsent_on_material_change: if mask.reconsent_on_material_change {
            new.reconsent_on_material_change
        } else {
            current.reconsent_on_material_change
        },
        excluded_categories: if mask.excluded_categories {
            new.excluded_categories.clone()
        } else {
            current.excluded_categories.clone()
        },
    };
    if mask.excluded_categories {
        require_categories(conn, &fields.excluded_categories).await?;
    }
    let weakened: Vec<&Promise> = current
        .unlifted_promises()
        .filter(|p| !fields.keep(p.jurisdiction.as_deref(), &p.exceptions))
        .collect();
    let version = lifting_version(conn, key, &weakened, lift_version).await?;
    let purpose = store::purposes::update_purpose(conn, key, &fields).await?;
    let mut lifted = Vec::with_capacity(weakened.len());
    if let Some(version) = &version {
        for promise in &weakened {
            let effective = store::purposes::lift_promise(
                conn,
                promise.id,
                version,
                &ctx.actor,
                &ctx.request_id,
            )
            .await?;
            lifted.push(json!({
                "promise": promise.name(key),
                "jurisdiction": promise.jurisdiction.as_deref().unwrap_or_default(),
                "policy_version": version.version_id,
                "lift_effective_time": effective.to_rfc3339(),
            }));
        }
    }
    let unlifted: Vec<Option<String>> = current
        .unlifted_promises()
        .filter(|p| !weakened.iter().any(|w| w.id == p.id))
        .map(|p| p.jurisdiction.clone())
        .collect();
    let made = make_promises(conn, ctx, key, &fields, &unlifted).await?;
    let purpose = if lifted.is_empty() && made.is_empty() {
        purpose
    } else {
        store::purposes::get_purpose(conn, key, false)
            .await?
            .ok_or_else(|| Error::Internal(format!("{} vanished", key.name())))?
    };
    let name = key.name();
    let token = journal::record(
        conn,
        ctx.audit(
            &name,
            None,
            json!({
                "consent_model": { "from": current.consent_model.as_str(), "to": fields.consent_model.as_str() },
                "revision": purpose.revision,
                "promises_lifted": lifted,
                "promises_made": made,
            }),
        ),
        ChangeEntry {
            kind: ChangeKind::PurposeChanged,
            subject_id: None,
            purpose_key: Some(key.as_str()),
            consent_record_id: None,
            policy_version: None,
            resource: None,
        },
    )
    .await?;
    Ok((purpose, token))
}

/// The policy version that lifts the `weakened` promises: none needed when
/// nothing is weakened (and none may be named then); else the named one,
/// which must be published, material, and published after every promise it
/// lifts was recorded (a version the promise already stood in, e.g. the one
/// in force when the default catalogue's promises were recorded, cannot
/// lift it).
async fn lifting_version(
    conn: &mut PgConnection,
    key: &PurposeKey,
    weakened: &[&Promise],
    lift_version: Option<&str>,
) -> Result<Option<PolicyVersion>> {
    let version_id = match (weakened.first(), lift_version) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::invalid(
                "lift_promise_policy_version",
                format!(
                    "the update weakens no promise of {}: leave it empty",
                    key.name()
                ),
            ));
        }
        (Some(first), None) => {
            let scope = first
                .jurisdiction
                .as_deref()
                .map_or("in every jurisdiction".to_owned(), |j| format!("in {j}"));
            return Err(Error::precondition(
                ErrorReason::PurposePromiseInForce,
                first.name(key),
                format!(
                    "{} is PROHIBITED {scope}: a promise of the published policy, which an edit of the catalogue cannot weaken; name the published material policy version that lifts it in lift_promise_policy_version",
                    key.as_str()
                ),
            ));
        }
        (Some(_), Some(id)) => id,
    };
    let version = store::policy_versions::get_policy_version(&mut *conn, version_id)
        .await?
        .ok_or_else(|| {
            Error::precondition(
                ErrorReason::PolicyVersionUnknown,
                format!("policyVersions/{version_id}"),
                format!("policy version {version_id:?} has not been published"),
            )
        })?;
    if !version.material {
        return Err(Error::precondition(
            ErrorReason::PolicyVersionCannotLiftPromise,
            format!("policyVersions/{version_id}"),
            format!(
                "policy version {version_id:?} is not material: only a material change of the policy lifts a promise"
            ),
        ));
    }
    if let Some(older) = weakened
        .iter()
        .find(|p| version.publish_time <= p.record_time)
    {
        return Err(Error::precondition(
            ErrorReason::PolicyVersionCannotLiftPromise,
            older.name(key),
            format!(
                "policy version {version_id:?} was published before the promise {} was made, so it cannot lift it",
                older.name(key)
            ),
        ));
    }
    Ok(Some(version))
}

/// What a RecordConsent call produced.
pub enum Recorded {
    /// The entry, written by this call or by an earlier one with the same
    /// request, and the token of the transaction that wrote it.
    Entry(Box<ConsentRecord>, ConsistencyToken),
    /// An earlier call's sealed response: the keys RecordConsent wrote
    /// before it wrote in one statement (migration 0008) hold it.
    Sealed(Vec<u8>, ConsistencyToken),
}

/// How often a write re-reads a purpose that changed under it before
/// giving up with ABORTED.
const PURPOSE_ATTEMPTS: usize = 3;

/// Appends a decision at most once per request id (AIP-155), after the
/// rules: a PROHIBITED purpose cannot be granted, a NOT_CONSENT_BASED one
/// takes no decisions, and a purpose that requires evidence for a grant gets
/// it. The rules are checked against the purpose in the decision cache's
/// catalogue when it has one and it allows the write (no round trip), and
/// the write happens only if the purpose is still at that revision; else
/// against the purpose read from PostgreSQL. A call whose request id was used returns what that call wrote.
pub async fn record_consent(
    cache: &DecisionCache,
    writes: &GroupCommit,
    ctx: &Context,
    fingerprint: &idempotency::Fingerprint,
    request_id: &RequestId,
    new: &NewConsent,
) -> Result<Recorded> {
    let writer = store::ledger::Writer {
        actor: &ctx.actor,
        scope: &ctx.request_id_scope,
        method: ctx.method,
        request_id: request_id.as_str(),
        fingerprint: Some(fingerprint.as_bytes()),
    };
    let mut cached = cache.purpose(&new.purpose);
    for _ in 0..PURPOSE_ATTEMPTS {
        // The catalogue may lag this process's own UpdatePurpose (or a
        // token's): a write it allows is still checked against the revision
        // in PostgreSQL, and a refusal is only ever given against the purpose
        // as PostgreSQL has it now.
        let purpose = match cached.take().filter(|p| check_recordable(p, new).is_ok()) {
            Some(purpose) => purpose,
            None => {
                let mut conn = writes.pool().acquire().await?;
                let purpose = store::purposes::get_purpose(&mut conn, &new.purpose, false)
                    .await?
                    .ok_or_else(|| Error::NotFound(new.purpose.name()))?;
                check_recordable(&purpose, new)?;
                purpose
            }
        };
        match writes.record(new, purpose.revision, &writer).await? {
            store::ledger::Appended::Written(record, xid) => {
                let token = journal::recorded(
                    ChangeKind::ConsentRecorded,
                    Some(new.subject_id.as_str()),
                    xid,
                );
                journal::LOCAL_WRITES.committed();
                return Ok(Recorded::Entry(record, token));
            }
            store::ledger::Appended::RequestIdUsed => {
                let (keys, pool) = (writes.keys(), writes.pool());
                let key = idempotency::Key::new(&ctx.request_id_scope, request_id);
                return earlier_call(keys, pool, key, ctx.method, fingerprint).await;
            }
            store::ledger::Appended::PurposeRevised => continue,
            store::ledger::Appended::SubjectErased => return Err(subject_erased(&new.subject_id)),
        }
    }
    Err(Error::Conflict)
}

/// RecordConsent's use case: `record_consent`, run again (a bounded number
/// of times) when its write hits a serialization failure or a deadlock.
/// Unlike a mutation through `rpc::mutate` it refuses nothing for want of
/// permission on a resource, so it has no refusal to audit.
#[tracing::instrument(skip_all, fields(purpose = %new.purpose.as_str()))]
pub async fn record_consent_retrying(
    cache: &DecisionCache,
    writes: &GroupCommit,
    ctx: &Context,
    fingerprint: &idempotency::Fingerprint,
    request_id: &RequestId,
    new: &NewConsent,
) -> Result<Recorded> {
    crate::db::retry_on_conflict(|| {
        record_consent(cache, writes, ctx, fingerprint, request_id, new)
    })
    .await
}

/// A grant refused because its subject was erased.
fn subject_erased(subject: &SubjectId) -> Error {
    Error::precondition(
        ErrorReason::SubjectWasErased,
        format!("subjects/{}", subject.as_str()),
        format!(
            "subject {} was erased: a grant cannot be recorded for it (a refusal can); a person who comes back opens a new account, a new subject",
            subject.as_str()
        ),
    )
}

/// Appends a decision inside the caller's transaction, which holds the
/// call's idempotency key (a privacy request refusing purposes), after the
/// same rules as `record_consent`, checked against the purpose as this
/// transaction reads it.
pub async fn append_decision(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    new: &NewConsent,
) -> Result<(ConsentRecord, ConsistencyToken)> {
    let writer = store::ledger::Writer {
        actor: &ctx.actor,
        scope: &ctx.request_id_scope,
        method: ctx.method,
        request_id: &ctx.request_id,
        fingerprint: None,
    };
    for _ in 0..PURPOSE_ATTEMPTS {
        let purpose = store::purposes::get_purpose(conn, &new.purpose, false)
            .await?
            .ok_or_else(|| Error::NotFound(new.purpose.name()))?;
        check_recordable(&purpose, new)?;
        match store::ledger::append(keys, conn, new, purpose.revision, &writer).await? {
            store::ledger::Appended::Written(record, xid) => {
                let subject = Some(new.subject_id.as_str());
                let token = journal::recorded(ChangeKind::ConsentRecorded, subject, xid);
                return Ok((*record, token));
            }
            store::ledger::Appended::PurposeRevised => continue,
            store::ledger::Appended::SubjectErased => return Err(subject_erased(&new.subject_id)),
            store::ledger::Appended::RequestIdUsed => {
                return Err(Error::Internal(
                    "an entry without an idempotency key hit one".into(),
                ));
            }
        }
    }
    Err(Error::Conflict)
}

/// What the earlier call with a used request id wrote.
async fn earlier_call(
    keys: &Keyring,
    pool: &PgPool,
    key: idempotency::Key<'_>,
    method: &str,
    fingerprint: &idempotency::Fingerprint,
) -> Result<Recorded> {
    // The connection goes back to the pool before the entry is read (on
    // another one): many replays at once must not hold the pool empty.
    let stored = idempotency::stored(&mut *pool.acquire().await?, key, method, fingerprint)
        .await?
        // Used, but the key is gone again (pruned, or its subject erased)
        // between the two statements: let the caller retry.
        .ok_or(Error::Conflict)?;
    tracing::info!(
        request_id = key.request_id(),
        "replayed an earlier response"
    );
    match stored {
        Stored::ConsentRecord(id, token) => {
            let record = store::ledger::records_by_id(keys, pool, &[id])
                .await?
                .remove(&id)
                .ok_or_else(|| Error::Internal(format!("consent record {id} is missing")))?;
            Ok(Recorded::Entry(Box::new(record), token))
        }
        Stored::Response(sealed, token) => Ok(Recorded::Sealed(
            idempotency::open(&mut *pool.acquire().await?, keys, key, &sealed).await?,
            token,
        )),
    }
}

/// The rules a decision must meet to be recorded for `purpose`.
fn check_recordable(purpose: &Purpose, new: &NewConsent) -> Result<()> {
    // As of the entry's effective time: a grant made while a promise holds
    // (a lift not yet in effect) is refused; one taking effect after, not.
    let at = new.effective_time.unwrap_or_else(Utc::now);
    match purpose.model_at(new.jurisdiction.as_ref(), at) {
        ConsentModel::Prohibited if new.decision == Decision::Granted => {
            return Err(Error::precondition(
                ErrorReason::PurposeProhibited,
                new.purpose.name(),
                format!(
                    "purpose {} is PROHIBITED: the organisation never does it, so it cannot be granted",
                    new.purpose.as_str()
                ),
            ));
        }
        ConsentModel::NotConsentBased => {
            return Err(Error::precondition(
                ErrorReason::PurposeNotConsentBased,
                new.purpose.name(),
                format!(
                    "purpose {} is NOT_CONSENT_BASED: it rests on another legal basis, so consent is not recorded for it",
                    new.purpose.as_str()
                ),
            ));
        }
        _ => {}
    }
    if new.decision == Decision::Granted
        && let Some(required) = purpose.required_evidence
        && new.evidence.as_ref().map(|e| e.kind) != Some(required)
    {
        return Err(Error::precondition(
            ErrorReason::EvidenceRequired,
            "evidence",
            format!(
                "a grant of {} requires evidence of kind {}",
                new.purpose.as_str(),
                required.as_str()
            ),
        ));
    }
    Ok(())
}

/// One question of a check.
#[derive(Debug, Clone)]
pub struct CheckQuery {
    pub subject: SubjectId,
    pub purpose: PurposeKey,
    pub jurisdiction: Option<Jurisdiction>,
    pub gpc_signal: bool,
    /// The data category the caller means to use, if it named one.
    pub category: Option<String>,
}

/// The answers, in the order asked, and the token of the state read.
#[derive(Debug)]
pub struct CheckAnswers {
    pub outcomes: Vec<Outcome>,
    pub token: ConsistencyToken,
}

/// Decides many questions in one read, on the replica when it is fresh
/// enough for `token`, else on the primary (see crate::reads). An unknown
/// purpose is NOT_FOUND.
pub async fn check(
    keys: &Keyring,
    reads: &Reads,
    queries: &[CheckQuery],
    as_of: Option<DateTime<Utc>>,
    token: Option<ConsistencyToken>,
) -> Result<CheckAnswers> {
    let pairs: Vec<(SubjectId, PurposeKey)> = queries
        .iter()
        .map(|q| (q.subject.clone(), q.purpose.clone()))
        .collect();
    let (rows, snapshot) = reads
        .read_checked(
            token,
            |pool| store::decisions::decision_inputs(keys, pool, &pairs, as_of),
            |(_, snapshot)| Some(snapshot.xmin),
        )
        .await?;
    decide_all(queries, &rows, &snapshot)
}

/// The decisions for the rows read, and the token of the snapshot read.
fn decide_all(
    queries: &[CheckQuery],
    rows: &[store::decisions::DecisionRow],
    snapshot: &store::decisions::Snapshot,
) -> Result<CheckAnswers> {
    let mut outcomes = Vec::with_capacity(rows.len());
    for (query, row) in queries.iter().zip(rows) {
        let purpose = row
            .purpose
            .as_ref()
            .ok_or_else(|| Error::NotFound(query.purpose.name()))?;
        outcomes.push(decision::decide(&Inputs {
            purpose,
            jurisdiction: query.jurisdiction.as_ref(),
            gpc_signal: query.gpc_signal,
            category: query.category.as_deref(),
            minor: row.minor,
            erased: row.erased,
            latest: row.latest.as_ref(),
            material_change: snapshot.material_change.as_ref(),
            at: snapshot.at,
        }));
    }
    Ok(CheckAnswers {
        outcomes,
        token: ConsistencyToken {
            xid: (snapshot.xmin - 1).max(0),
        },
    })
}

/// What a read must reflect: the state at a past time, or now and at least
/// a write's consistency token.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadAt {
    pub as_of: Option<DateTime<Utc>>,
    pub token: Option<ConsistencyToken>,
}

/// Decides from the decision cache when it may answer (see
/// `consent::cache`), else from PostgreSQL (a replica when fresh enough). A
/// check as of a past time always reads PostgreSQL.
#[tracing::instrument(level = "debug", skip_all, fields(queries = queries.len()))]
pub async fn check_cached(
    cache: &DecisionCache,
    keys: &Keyring,
    reads: &Reads,
    queries: &[CheckQuery],
    read: ReadAt,
    decisions: &DecisionMetrics,
) -> Result<CheckAnswers> {
    let answers = if read.as_of.is_none()
        && let Some(answers) = cache.check(reads.primary(), queries, read.token).await?
    {
        answers
    } else {
        check(keys, reads, queries, read.as_of, read.token).await?
    };
    for outcome in &answers.outcomes {
        decisions.decided(outcome.allowed, outcome.reason.as_str());
    }
    Ok(answers)
}

fn state_queries(
    subject: &SubjectId,
    purposes: Vec<PurposeKey>,
    jurisdiction: Option<&Jurisdiction>,
    gpc_signal: bool,
) -> Vec<CheckQuery> {
    purposes
        .into_iter()
        .map(|purpose| CheckQuery {
            subject: subject.clone(),
            purpose,
            jurisdiction: jurisdiction.cloned(),
            gpc_signal,
            category: None,
        })
        .collect()
}

/// Every purpose's decision for one subject: from the decision cache when
/// it may answer, else read like `check`.
pub async fn consent_state(
    cache: &DecisionCache,
    keys: &Keyring,
    reads: &Reads,
    subject: &SubjectId,
    jurisdiction: Option<&Jurisdiction>,
    gpc_signal: bool,
    read: ReadAt,
) -> Result<(Vec<CheckQuery>, CheckAnswers)> {
    if read.as_of.is_none()
        && let Some(purposes) = cache.purpose_keys()
    {
        let purposes = purposes
            .iter()
            .map(|k| PurposeKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::Internal("a cached purpose key does not parse".into()))?;
        let queries = state_queries(subject, purposes, jurisdiction, gpc_signal);
        if !queries.is_empty()
            && let Some(answers) = cache.check(reads.primary(), &queries, read.token).await?
        {
            return Ok((queries, answers));
        }
    }
    let (queries, answers, _) = reads
        .read_checked(
            read.token,
            |pool| consent_state_on(keys, pool, subject, jurisdiction, gpc_signal, read.as_of),
            |(_, _, xmin)| Some(*xmin),
        )
        .await?;
    Ok((queries, answers))
}

/// `consent_state` on one database, with the oldest snapshot xmin of its
/// two statements (the purpose list and the decisions).
async fn consent_state_on(
    keys: &Keyring,
    pool: &PgPool,
    subject: &SubjectId,
    jurisdiction: Option<&Jurisdiction>,
    gpc_signal: bool,
    as_of: Option<DateTime<Utc>>,
) -> Result<(Vec<CheckQuery>, CheckAnswers, i64)> {
    let (purposes, purposes_xmin) = store::purposes::all_purpose_keys(pool).await?;
    let queries = state_queries(subject, purposes, jurisdiction, gpc_signal);
    if queries.is_empty() {
        let answers = CheckAnswers {
            outcomes: vec![],
            token: ConsistencyToken {
                xid: (purposes_xmin - 1).max(0),
            },
        };
        return Ok((queries, answers, purposes_xmin));
    }
    let pairs: Vec<(SubjectId, PurposeKey)> = queries
        .iter()
        .map(|q| (q.subject.clone(), q.purpose.clone()))
        .collect();
    let (rows, snapshot) = store::decisions::decision_inputs(keys, pool, &pairs, as_of).await?;
    let xmin = purposes_xmin.min(snapshot.xmin);
    let answers = decide_all(&queries, &rows, &snapshot)?;
    Ok((queries, answers, xmin))
}

pub async fn publish_policy_version(
    conn: &mut PgConnection,
    ctx: &Context,
    version: &PolicyVersion,
) -> Result<(PolicyVersion, ConsistencyToken)> {
    let published = store::policy_versions::publish_policy_version(
        conn,
        &version.version_id,
        version.effective_time,
        &version.text_sha256,
        version.material,
        &version.summary,
    )
    .await?;
    let target = format!("policyVersions/{}", version.version_id);
    let token = journal::record(
        conn,
        ctx.audit(&target, None, json!({ "material": version.material })),
        ChangeEntry {
            kind: ChangeKind::PolicyVersionPublished,
            subject_id: None,
            purpose_key: None,
            consent_record_id: None,
            policy_version: Some(&version.version_id),
            resource: None,
        },
    )
    .await?;
    Ok((published, token))
}
