//! Domain values into ConsentService responses.
use super::parse::{CheckMask, Page};
use crate::consent::decision::Outcome;
use crate::consent::model::{
    ConsentModel, ConsentRecord, EvidenceKind, PolicyVersion, Purpose, Subject,
};
use crate::consent::service::{CheckAnswers, CheckQuery, Recorded};
use crate::consent::watch;
use crate::convert::{opt_timestamp, timestamp};
use crate::error::{Error, Result};
use crate::names::SubjectId;
use crate::proto;
use crate::rpc::paginate;
use crate::tokens::{ConsistencyToken, PageToken};

/// A read of `page.limit + 1` items cut to the page, and the token of the
/// next page (empty on the last), bound to the page's filters.
fn cut<T, K: serde::Serialize>(
    items: Vec<T>,
    page: &Page<impl Sized>,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, String) {
    paginate(items, page.limit, |item| {
        PageToken::encode(&page.filters, &key(item))
    })
}

pub fn list_purposes(purposes: Vec<Purpose>, page: &Page<String>) -> proto::ListPurposesResponse {
    let (purposes, next) = cut(purposes, page, |p| p.key.as_str().to_owned());
    proto::ListPurposesResponse {
        purposes: purposes.iter().map(purpose_to_proto).collect(),
        next_page_token: next,
    }
}

/// RecordConsent's response and the token of the write: the entry, or an
/// earlier call's sealed response as it was sent then.
pub fn recorded(recorded: Recorded) -> Result<(proto::RecordConsentResponse, ConsistencyToken)> {
    Ok(match recorded {
        Recorded::Entry(record, token) => (
            proto::RecordConsentResponse {
                record: Some(record_to_proto(&record)),
                consistency_token: token.encode(),
            },
            token,
        ),
        Recorded::Sealed(bytes, token) => (
            prost::Message::decode(bytes.as_slice())
                .map_err(|e| Error::Internal(format!("stored response does not decode: {e}")))?,
            token,
        ),
    })
}

/// CheckConsent's answer, with only the fields `mask` asks for.
pub fn check_consent(
    answers: &CheckAnswers,
    mask: &CheckMask,
) -> Result<proto::CheckConsentResponse> {
    let outcome = answers
        .outcomes
        .first()
        .ok_or_else(|| Error::Internal("a check returned no outcome".into()))?;
    Ok(proto::CheckConsentResponse {
        verdict: if mask.verdict { verdict(outcome) } else { 0 },
        reason: if mask.reason { reason(outcome) } else { 0 },
        deciding_record: if mask.deciding_record {
            outcome.record.as_ref().map(record_to_proto)
        } else {
            None
        },
        consent_model: if mask.consent_model {
            model_to_proto(outcome.model)
        } else {
            0
        },
        consistency_token: if mask.consistency_token {
            answers.token.encode()
        } else {
            String::new()
        },
    })
}

pub fn batch_check_consent(
    queries: &[CheckQuery],
    answers: &CheckAnswers,
) -> proto::BatchCheckConsentResponse {
    proto::BatchCheckConsentResponse {
        results: results(queries, answers),
        consistency_token: answers.token.encode(),
    }
}

pub fn consent_state(
    subject: &SubjectId,
    queries: &[CheckQuery],
    answers: &CheckAnswers,
) -> proto::ConsentState {
    proto::ConsentState {
        subject_id: subject.as_str().to_owned(),
        decisions: results(queries, answers),
        consistency_token: answers.token.encode(),
    }
}

fn results(queries: &[CheckQuery], answers: &CheckAnswers) -> Vec<proto::ConsentCheckResult> {
    queries
        .iter()
        .zip(&answers.outcomes)
        .map(|(q, o)| result_to_proto(q, o))
        .collect()
}

pub fn list_consent_records(
    records: Vec<ConsentRecord>,
    page: &Page<i64>,
) -> proto::ListConsentRecordsResponse {
    let (records, next) = cut(records, page, |r| r.id);
    proto::ListConsentRecordsResponse {
        records: records.iter().map(record_to_proto).collect(),
        next_page_token: next,
    }
}

pub fn list_policy_versions<K>(
    versions: Vec<PolicyVersion>,
    page: &Page<K>,
) -> proto::ListPolicyVersionsResponse {
    let (versions, next) = cut(versions, page, |p| (p.effective_time, p.version_id.clone()));
    proto::ListPolicyVersionsResponse {
        policy_versions: versions.iter().map(policy_to_proto).collect(),
        next_page_token: next,
    }
}

pub fn list_subjects_to_reconsent<K>(
    version: PolicyVersion,
    grants: Vec<ConsentRecord>,
    page: &Page<K>,
) -> proto::ListSubjectsToReconsentResponse {
    let (grants, next) = cut(grants, page, |r| (r.subject_id.clone(), r.purpose.clone()));
    proto::ListSubjectsToReconsentResponse {
        policy_version: version.version_id,
        subjects: grants
            .iter()
            .map(|r| proto::SubjectToReconsent {
                subject_id: r.subject_id.clone(),
                purpose: r.purpose.clone(),
                grant: Some(record_to_proto(r)),
            })
            .collect(),
        next_page_token: next,
    }
}

// ---- one resource at a time -------------------------------------------------

fn model_to_proto(v: ConsentModel) -> i32 {
    proto::ConsentModel::from_str_name(v.as_str()).map_or(0, |e| e as i32)
}

fn evidence_kind_to_proto(v: Option<EvidenceKind>) -> i32 {
    v.and_then(|k| proto::EvidenceKind::from_str_name(k.as_str()))
        .map_or(0, |e| e as i32)
}

fn enum_by_name<T>(name: &str, parse: fn(&str) -> Option<T>, into: fn(T) -> i32) -> i32 {
    parse(name).map_or(0, into)
}

pub fn purpose_to_proto(p: &Purpose) -> proto::Purpose {
    proto::Purpose {
        name: p.key.name(),
        key: p.key.as_str().to_owned(),
        display_name: p.display_name.clone(),
        description: p.description.clone(),
        consent_model: model_to_proto(p.consent_model),
        jurisdiction_models: p
            .jurisdiction_models
            .iter()
            .map(|(j, model)| proto::JurisdictionModel {
                jurisdiction: j.clone(),
                consent_model: model_to_proto(*model),
            })
            .collect(),
        required_evidence: evidence_kind_to_proto(p.required_evidence),
        honors_gpc: p.honors_gpc,
        reconsent_on_material_change: p.reconsent_on_material_change,
        excluded_categories: p.excluded_categories.clone(),
        create_time: Some(timestamp(p.create_time)),
        update_time: Some(timestamp(p.update_time)),
        etag: p.etag(),
        promises: p
            .promises
            .iter()
            .map(|promise| proto::PurposePromise {
                name: promise.name(&p.key),
                jurisdiction: promise.jurisdiction.clone().unwrap_or_default(),
                exceptions: promise.exceptions.clone(),
                make_time: opt_timestamp(promise.make_time),
                record_time: Some(timestamp(promise.record_time)),
                made_by: promise.made_by.clone(),
                lifted_by_policy_version: promise
                    .lift
                    .as_ref()
                    .map(|l| l.policy_version.clone())
                    .unwrap_or_default(),
                lift_effective_time: opt_timestamp(promise.lift.as_ref().map(|l| l.effective_time)),
                lift_time: opt_timestamp(promise.lift.as_ref().map(|l| l.lift_time)),
                lifted_by: promise
                    .lift
                    .as_ref()
                    .map(|l| l.lifted_by.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn record_to_proto(r: &ConsentRecord) -> proto::ConsentRecord {
    proto::ConsentRecord {
        name: format!("subjects/{}/consentRecords/{}", r.subject_id, r.id),
        id: r.id,
        subject_id: r.subject_id.clone(),
        purpose: r.purpose.clone(),
        decision: enum_by_name(
            r.decision.as_str(),
            proto::ConsentDecision::from_str_name,
            |e| e as i32,
        ),
        source: enum_by_name(
            r.source.as_str(),
            proto::ConsentSource::from_str_name,
            |e| e as i32,
        ),
        policy_version: r.policy_version.clone().unwrap_or_default(),
        jurisdiction: r.jurisdiction.clone().unwrap_or_default(),
        evidence: r.evidence.as_ref().map(|e| proto::Evidence {
            kind: evidence_kind_to_proto(Some(e.kind)),
            reference: e.reference.clone(),
            description: e.description.clone(),
        }),
        effective_time: Some(timestamp(r.effective_time)),
        expire_time: opt_timestamp(r.expire_time),
        record_time: Some(timestamp(r.record_time)),
        request_id: r.request_id.clone(),
        actor: r.actor.clone(),
    }
}

pub fn result_to_proto(q: &CheckQuery, o: &Outcome) -> proto::ConsentCheckResult {
    proto::ConsentCheckResult {
        subject_id: q.subject.as_str().to_owned(),
        purpose: q.purpose.as_str().to_owned(),
        verdict: verdict(o),
        reason: reason(o),
        deciding_record: o.record.as_ref().map(record_to_proto),
        consent_model: model_to_proto(o.model),
    }
}

fn verdict(o: &Outcome) -> i32 {
    if o.allowed {
        proto::Verdict::Allowed as i32
    } else {
        proto::Verdict::Denied as i32
    }
}

fn reason(o: &Outcome) -> i32 {
    enum_by_name(
        o.reason.as_str(),
        proto::DecisionReason::from_str_name,
        |e| e as i32,
    )
}

pub fn policy_to_proto(v: &PolicyVersion) -> proto::PolicyVersion {
    proto::PolicyVersion {
        name: format!("policyVersions/{}", v.version_id),
        version_id: v.version_id.clone(),
        effective_time: Some(timestamp(v.effective_time)),
        text_sha256: v.text_sha256.clone(),
        material: v.material,
        summary: v.summary.clone(),
        publish_time: Some(timestamp(v.publish_time)),
    }
}

pub fn watch_to_proto(b: &watch::Batch) -> proto::WatchConsentChangesResponse {
    proto::WatchConsentChangesResponse {
        changes: b.changes.iter().map(change_to_proto).collect(),
        resume_token: b.resume.encode(),
    }
}

fn change_to_proto(c: &watch::Change) -> proto::ConsentChange {
    let kind = match c.kind {
        watch::Kind::ConsentRecorded => proto::ConsentChangeKind::ConsentRecorded,
        watch::Kind::PurposeChanged => proto::ConsentChangeKind::PurposeChanged,
        watch::Kind::PolicyVersionPublished => proto::ConsentChangeKind::PolicyVersionPublished,
        watch::Kind::SubjectChanged => proto::ConsentChangeKind::SubjectChanged,
        watch::Kind::SubjectErased => proto::ConsentChangeKind::SubjectErasure,
    };
    proto::ConsentChange {
        kind: kind as i32,
        subject_id: c.subject_id.clone().unwrap_or_default(),
        purpose: c.purpose.clone().unwrap_or_default(),
        record: c.record.as_ref().map(record_to_proto),
        policy_version: c.policy_version.clone().unwrap_or_default(),
        change_time: Some(timestamp(c.change_time)),
    }
}

pub fn subject_to_proto(s: &Subject) -> proto::Subject {
    proto::Subject {
        name: format!("subjects/{}", s.subject_id),
        subject_id: s.subject_id.clone(),
        minor: s.minor_since.is_some(),
        minor_since: opt_timestamp(s.minor_since),
        create_time: Some(timestamp(s.create_time)),
        update_time: Some(timestamp(s.update_time)),
        erased: s.erased.is_some(),
        erase_time: s.erased.as_ref().map(|(t, _)| timestamp(*t)),
        erased_by: s
            .erased
            .as_ref()
            .map(|(_, by)| by.clone())
            .unwrap_or_default(),
        account_close_time: opt_timestamp(s.account_close_time),
    }
}
