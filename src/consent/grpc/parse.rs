//! ConsentService requests into domain values: one function per RPC, each
//! reporting every invalid field at once (INVALID_ARGUMENT with the fields
//! named as the proto names them), or the parsed request.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::consent::model::{
    self as m, ConsentModel, Decision, Evidence, EvidenceKind, NewConsent, PolicyVersion,
    PurposeFields, Source,
};
use crate::consent::service::{CheckQuery, PurposeMask, ReadAt};
use crate::consent::watch::Start;
use crate::convert::{parse_opt_timestamp, parse_timestamp};
use crate::datasystems::model::parse_category;
use crate::error::{Error, Result, Violations};
use crate::idempotency::RequestId;
use crate::names::{Jurisdiction, PurposeKey, SubjectId};
use crate::proto;
use crate::rpc::not_in_future;
use crate::tokens::{ConsistencyToken, FeedPosition, PageToken, page_size};

/// Most questions one BatchCheckConsent asks.
const MAX_BATCH: usize = 1000;

/// The value `build` makes of the fields parsed, when every field parsed and
/// nothing else was found invalid; else every violation, in the order found.
fn complete<T>(v: Violations, build: impl FnOnce() -> Option<T>) -> Result<T> {
    match build() {
        Some(parsed) if v.is_empty() => Ok(parsed),
        _ => Err(v.into_error()),
    }
}

/// A page asked for: its size, the key after which it starts, and the
/// filters its tokens are bound to (a token is only valid with the same
/// filters).
#[derive(Debug, Clone)]
pub struct Page<K> {
    pub limit: i64,
    pub after: Option<K>,
    pub filters: String,
}

fn page<K: serde::de::DeserializeOwned>(
    v: &mut Violations,
    size: i32,
    filters: String,
    token: &str,
) -> Option<Page<K>> {
    let limit = v.check("page_size", page_size(size));
    let after = v.check("page_token", PageToken::decode::<K>(&filters, token));
    Some(Page {
        limit: limit?,
        after: after?,
        filters,
    })
}

// ---- one function per RPC ---------------------------------------------------

pub fn create_purpose(req: &proto::CreatePurposeRequest) -> Result<(RequestId, NewPurpose)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(&req.request_id));
    let parsed = match req.purpose.as_ref() {
        None => {
            v.add("purpose", "is required");
            None
        }
        Some(p) => {
            let key = v.check("purpose.key", PurposeKey::parse(&p.key));
            let fields = parse_purpose_fields(&mut v, p, &PurposeMask::all());
            key.zip(fields)
        }
    };
    complete(v, || {
        let (key, fields) = parsed?;
        Some((request_id?, NewPurpose { key, fields }))
    })
}

/// A purpose to add.
#[derive(Debug)]
pub struct NewPurpose {
    pub key: PurposeKey,
    pub fields: PurposeFields,
}

pub fn get_purpose(req: &proto::GetPurposeRequest) -> Result<PurposeKey> {
    PurposeKey::parse_name(&req.name).map_err(|e| Error::invalid("name", e))
}

pub fn list_purposes(req: &proto::ListPurposesRequest) -> Result<Page<String>> {
    let mut v = Violations::new();
    let page = page(&mut v, req.page_size, "purposes".into(), &req.page_token);
    complete(v, || page)
}

/// A change of a purpose's masked fields.
#[derive(Debug)]
pub struct PurposeUpdate {
    pub key: PurposeKey,
    pub fields: PurposeFields,
    pub mask: PurposeMask,
    pub etag: Option<String>,
    /// The policy version that lifts the promises the change weakens.
    pub lift_version: Option<String>,
}

pub fn update_purpose(req: &proto::UpdatePurposeRequest) -> Result<(RequestId, PurposeUpdate)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(&req.request_id));
    let mask = parse_mask(&mut v, req.update_mask.as_ref());
    let parsed = match req.purpose.as_ref() {
        None => {
            v.add("purpose", "is required");
            None
        }
        Some(p) => {
            let key = v.check("purpose.name", PurposeKey::parse_name(&p.name));
            let fields = parse_purpose_fields(&mut v, p, &mask);
            let etag = (!p.etag.is_empty()).then(|| p.etag.clone());
            key.zip(fields).map(|(k, f)| (k, f, etag))
        }
    };
    let lift_version = if req.lift_promise_policy_version.is_empty() {
        Some(None)
    } else {
        v.check(
            "lift_promise_policy_version",
            m::parse_version_id(&req.lift_promise_policy_version).map(Some),
        )
    };
    complete(v, || {
        let (key, fields, etag) = parsed?;
        let update = PurposeUpdate {
            key,
            fields,
            mask,
            etag,
            lift_version: lift_version?,
        };
        Some((request_id?, update))
    })
}

pub fn record_consent(req: &proto::RecordConsentRequest) -> Result<(RequestId, NewConsent)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(&req.request_id));
    let subject_id = v.check("subject_id", SubjectId::parse(&req.subject_id));
    let purpose = v.check("purpose", PurposeKey::parse(&req.purpose));
    let decision = v.check("decision", parse_decision(req.decision));
    let source = v.check("source", parse_source(req.source));
    let policy_version = if req.policy_version.is_empty() {
        Some(None)
    } else {
        v.check(
            "policy_version",
            m::parse_version_id(&req.policy_version).map(Some),
        )
    };
    let jurisdiction = v.check(
        "jurisdiction",
        Jurisdiction::parse_optional(&req.jurisdiction),
    );
    let evidence = parse_evidence(&mut v, req.evidence.as_ref());
    let effective_time = v.check(
        "effective_time",
        parse_opt_timestamp(req.effective_time.as_ref())
            .and_then(|t| t.map(not_in_future).transpose()),
    );
    let expire_time = v.check("expire_time", parse_opt_timestamp(req.expire_time.as_ref()));
    if source == Some(Source::GpcSignal) && decision == Some(Decision::Granted) {
        v.add("source", "GPC_SIGNAL is always a refusal");
    }
    if let (Some(Some(expire)), Some(decision)) = (expire_time, decision) {
        if decision == Decision::Refused {
            v.add("expire_time", "only grants expire");
        }
        let from = effective_time.flatten().unwrap_or_else(Utc::now);
        if expire <= from {
            v.add("expire_time", "must be after effective_time");
        }
    }
    complete(v, || {
        let new = NewConsent {
            subject_id: subject_id?,
            purpose: purpose?,
            decision: decision?,
            source: source?,
            policy_version: policy_version?,
            jurisdiction: jurisdiction?,
            evidence: evidence?,
            effective_time: effective_time?,
            expire_time: expire_time?,
        };
        Some((request_id?, new))
    })
}

/// One consent question, what the read must reflect, and which fields of
/// the answer to fill.
pub fn check_consent(req: &proto::CheckConsentRequest) -> Result<(CheckQuery, ReadAt, CheckMask)> {
    let mut v = Violations::new();
    let query = parse_check(
        &mut v,
        None,
        CheckFields {
            subject_id: &req.subject_id,
            purpose: &req.purpose,
            jurisdiction: &req.jurisdiction,
            gpc_signal: req.gpc_signal,
            data_category: &req.data_category,
        },
    );
    let as_of = parse_as_of(&mut v, req.as_of_time.as_ref());
    let token = parse_token(&mut v, &req.consistency_token);
    let mask = parse_read_mask(&mut v, req.read_mask.as_ref());
    complete(v, || {
        let read = ReadAt {
            as_of: as_of?,
            token: token?,
        };
        Some((query?, read, mask))
    })
}

pub fn batch_check_consent(
    req: &proto::BatchCheckConsentRequest,
) -> Result<(Vec<CheckQuery>, ReadAt)> {
    let mut v = Violations::new();
    if req.checks.is_empty() || req.checks.len() > MAX_BATCH {
        v.add("checks", format!("must have 1 to {MAX_BATCH} entries"));
        return Err(v.into_error());
    }
    let queries: Vec<Option<CheckQuery>> = req
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let fields = CheckFields {
                subject_id: &c.subject_id,
                purpose: &c.purpose,
                jurisdiction: &c.jurisdiction,
                gpc_signal: c.gpc_signal,
                data_category: &c.data_category,
            };
            parse_check(&mut v, Some(i), fields)
        })
        .collect();
    let as_of = parse_as_of(&mut v, req.as_of_time.as_ref());
    let token = parse_token(&mut v, &req.consistency_token);
    complete(v, || {
        let read = ReadAt {
            as_of: as_of?,
            token: token?,
        };
        Some((queries.into_iter().collect::<Option<Vec<_>>>()?, read))
    })
}

/// The question of GetConsentState: every purpose's decision for a subject.
#[derive(Debug)]
pub struct StateQuery {
    pub subject: SubjectId,
    pub jurisdiction: Option<Jurisdiction>,
    pub gpc_signal: bool,
    pub read: ReadAt,
}

pub fn get_consent_state(req: &proto::GetConsentStateRequest) -> Result<StateQuery> {
    let mut v = Violations::new();
    let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
    let jurisdiction = v.check(
        "jurisdiction",
        Jurisdiction::parse_optional(&req.jurisdiction),
    );
    let as_of = parse_as_of(&mut v, req.as_of_time.as_ref());
    let token = parse_token(&mut v, &req.consistency_token);
    complete(v, || {
        Some(StateQuery {
            subject: subject?,
            jurisdiction: jurisdiction?,
            gpc_signal: req.gpc_signal,
            read: ReadAt {
                as_of: as_of?,
                token: token?,
            },
        })
    })
}

/// A page of the ledger, optionally of one subject and one purpose.
#[derive(Debug)]
pub struct RecordsQuery {
    pub subject: Option<SubjectId>,
    pub purpose: Option<PurposeKey>,
    pub token: Option<ConsistencyToken>,
    pub page: Page<i64>,
}

pub fn list_consent_records(req: &proto::ListConsentRecordsRequest) -> Result<RecordsQuery> {
    let mut v = Violations::new();
    let subject = if req.subject_id.is_empty() {
        Some(None)
    } else {
        v.check("subject_id", SubjectId::parse(&req.subject_id).map(Some))
    };
    let purpose = if req.purpose.is_empty() {
        Some(None)
    } else {
        v.check("purpose", PurposeKey::parse(&req.purpose).map(Some))
    };
    let filters = format!("records:{}:{}", req.subject_id, req.purpose);
    let page = page(&mut v, req.page_size, filters, &req.page_token);
    let token = parse_token(&mut v, &req.consistency_token);
    complete(v, || {
        Some(RecordsQuery {
            subject: subject?,
            purpose: purpose?,
            token: token?,
            page: page?,
        })
    })
}

/// Where a watch starts, and the subject it is limited to, if any.
pub fn watch_consent_changes(
    req: &proto::WatchConsentChangesRequest,
) -> Result<(Start, Option<SubjectId>)> {
    let mut v = Violations::new();
    let resume = if req.resume_token.is_empty() {
        Some(None)
    } else {
        v.check(
            "resume_token",
            FeedPosition::parse(&req.resume_token).map(Some),
        )
    };
    let subject = if req.subject_id.is_empty() {
        Some(None)
    } else {
        v.check("subject_id", SubjectId::parse(&req.subject_id).map(Some))
    };
    if !req.resume_token.is_empty() && req.start_from_beginning {
        v.add(
            "start_from_beginning",
            "must not be set together with resume_token",
        );
    }
    complete(v, || {
        let start = match resume? {
            Some(position) => Start::At(position),
            None if req.start_from_beginning => Start::Beginning,
            None => Start::Head,
        };
        Some((start, subject?))
    })
}

pub fn publish_policy_version(
    req: &proto::PublishPolicyVersionRequest,
) -> Result<(RequestId, PolicyVersion)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(&req.request_id));
    let version = match req.policy_version.as_ref() {
        None => {
            v.add("policy_version", "is required");
            None
        }
        Some(p) => {
            let id = v.check(
                "policy_version.version_id",
                m::parse_version_id(&p.version_id),
            );
            let effective = v.check(
                "policy_version.effective_time",
                p.effective_time
                    .as_ref()
                    .ok_or_else(|| "is required".to_string())
                    .and_then(parse_timestamp),
            );
            let sha = v.check("policy_version.text_sha256", parse_sha256(&p.text_sha256));
            let summary = v.check(
                "policy_version.summary",
                crate::names::parse_text(&p.summary, 2000),
            );
            (|| {
                Some(PolicyVersion {
                    version_id: id?,
                    effective_time: effective?,
                    text_sha256: sha?,
                    material: p.material,
                    summary: summary?,
                    publish_time: Utc::now(),
                })
            })()
        }
    };
    complete(v, || Some((request_id?, version?)))
}

pub fn list_policy_versions(
    req: &proto::ListPolicyVersionsRequest,
) -> Result<Page<(DateTime<Utc>, String)>> {
    let mut v = Violations::new();
    let page = page(
        &mut v,
        req.page_size,
        "policy_versions".into(),
        &req.page_token,
    );
    complete(v, || page)
}

/// The policy version named (none: the latest material one in effect) and
/// the page of its re-consent list asked for, after (subject, purpose).
#[derive(Debug)]
pub struct ReconsentQuery {
    pub version_id: Option<String>,
    pub page: Page<(String, String)>,
}

pub fn list_subjects_to_reconsent(
    req: &proto::ListSubjectsToReconsentRequest,
) -> Result<ReconsentQuery> {
    let mut v = Violations::new();
    let version_id = if req.policy_version.is_empty() {
        Some(None)
    } else {
        v.check(
            "policy_version",
            m::parse_version_id(&req.policy_version).map(Some),
        )
    };
    let filters = format!("reconsent:{}", req.policy_version);
    let page = page(&mut v, req.page_size, filters, &req.page_token);
    complete(v, || {
        Some(ReconsentQuery {
            version_id: version_id?,
            page: page?,
        })
    })
}

pub fn get_subject(req: &proto::GetSubjectRequest) -> Result<SubjectId> {
    SubjectId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))
}

/// A subject's minor flag to set, and why.
#[derive(Debug)]
pub struct MinorStatus {
    pub subject: SubjectId,
    pub minor: bool,
    pub parental_consent: bool,
    pub reason: String,
}

pub fn set_subject_minor_status(
    req: &proto::SetSubjectMinorStatusRequest,
) -> Result<(RequestId, MinorStatus)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(&req.request_id));
    let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
    let reason = v.check("reason", crate::names::parse_text(&req.reason, 2000));
    complete(v, || {
        let status = MinorStatus {
            subject: subject?,
            minor: req.minor,
            parental_consent: req.parental_consent,
            reason: reason?,
        };
        Some((request_id?, status))
    })
}

// ---- the pieces requests share ----------------------------------------------

fn parse_model(v: i32) -> Result<ConsentModel, String> {
    proto::ConsentModel::try_from(v)
        .ok()
        .and_then(|e| ConsentModel::from_db(e.as_str_name()))
        .ok_or_else(|| "must be one of OPT_IN, OPT_OUT, NOT_CONSENT_BASED, PROHIBITED".into())
}

/// EVIDENCE_KIND_UNSPECIFIED means none.
fn parse_evidence_kind(v: i32) -> Result<Option<EvidenceKind>, String> {
    match proto::EvidenceKind::try_from(v) {
        Ok(proto::EvidenceKind::Unspecified) => Ok(None),
        Ok(e) => Ok(EvidenceKind::from_db(e.as_str_name())),
        Err(_) => Err("is not a known evidence kind".into()),
    }
}

fn parse_decision(v: i32) -> Result<Decision, String> {
    proto::ConsentDecision::try_from(v)
        .ok()
        .and_then(|e| Decision::from_db(e.as_str_name()))
        .ok_or_else(|| "must be GRANTED or REFUSED".into())
}

fn parse_source(v: i32) -> Result<Source, String> {
    proto::ConsentSource::try_from(v)
        .ok()
        .and_then(|e| Source::from_db(e.as_str_name()))
        .ok_or_else(|| "must be a known consent source (WEB_FORM, API, ...)".into())
}

fn parse_purpose_fields(
    v: &mut Violations,
    p: &proto::Purpose,
    mask: &PurposeMask,
) -> Option<PurposeFields> {
    let display_name = if mask.display_name {
        v.check(
            "purpose.display_name",
            crate::names::parse_text(&p.display_name, 200).and_then(|s| {
                if s.trim().is_empty() {
                    Err("is required".into())
                } else {
                    Ok(s)
                }
            }),
        )
    } else {
        Some(String::new())
    };
    let description = if mask.description {
        v.check(
            "purpose.description",
            crate::names::parse_text(&p.description, 2000),
        )
    } else {
        Some(String::new())
    };
    let consent_model = if mask.consent_model {
        v.check("purpose.consent_model", parse_model(p.consent_model))
    } else {
        Some(ConsentModel::OptIn)
    };
    let mut jurisdiction_models = BTreeMap::new();
    if mask.jurisdiction_models {
        if p.jurisdiction_models.len() > 300 {
            v.add(
                "purpose.jurisdiction_models",
                "must have at most 300 entries",
            );
        }
        for (i, jm) in p.jurisdiction_models.iter().enumerate() {
            let field = format!("purpose.jurisdiction_models[{i}]");
            let j = v.check(
                &format!("{field}.jurisdiction"),
                Jurisdiction::parse(&jm.jurisdiction),
            );
            let model = v.check(
                &format!("{field}.consent_model"),
                parse_model(jm.consent_model),
            );
            if let (Some(j), Some(model)) = (j, model)
                && jurisdiction_models
                    .insert(j.as_str().to_owned(), model)
                    .is_some()
            {
                v.add(format!("{field}.jurisdiction"), "appears more than once");
            }
        }
    }
    let required_evidence = if mask.required_evidence {
        v.check(
            "purpose.required_evidence",
            parse_evidence_kind(p.required_evidence),
        )
    } else {
        Some(None)
    };
    let mut excluded_categories: Vec<String> = Vec::new();
    if mask.excluded_categories {
        if p.excluded_categories.len() > MAX_EXCLUDED_CATEGORIES {
            v.add(
                "purpose.excluded_categories",
                format!("must have at most {MAX_EXCLUDED_CATEGORIES} entries"),
            );
        }
        for (i, raw) in p.excluded_categories.iter().enumerate() {
            let field = format!("purpose.excluded_categories[{i}]");
            if let Some(category) = v.check(&field, parse_category(raw)) {
                if excluded_categories.contains(&category) {
                    v.add(field, "appears more than once");
                } else {
                    excluded_categories.push(category);
                }
            }
        }
    }
    Some(PurposeFields {
        display_name: display_name?,
        description: description?,
        consent_model: consent_model?,
        jurisdiction_models,
        required_evidence: required_evidence?,
        honors_gpc: p.honors_gpc,
        reconsent_on_material_change: p.reconsent_on_material_change,
        excluded_categories,
    })
}

/// Most data categories one purpose excludes.
const MAX_EXCLUDED_CATEGORIES: usize = 100;

fn parse_mask(v: &mut Violations, mask: Option<&prost_types::FieldMask>) -> PurposeMask {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() || paths.iter().any(|p| p == "*") {
        return PurposeMask::all();
    }
    let mut out = PurposeMask::default();
    for path in paths {
        match path.as_str() {
            "display_name" => out.display_name = true,
            "description" => out.description = true,
            "consent_model" => out.consent_model = true,
            "jurisdiction_models" => out.jurisdiction_models = true,
            "required_evidence" => out.required_evidence = true,
            "honors_gpc" => out.honors_gpc = true,
            "reconsent_on_material_change" => out.reconsent_on_material_change = true,
            "excluded_categories" => out.excluded_categories = true,
            other => v.add(
                "update_mask",
                format!("{other:?} is not an updatable field"),
            ),
        }
    }
    out
}

/// Which fields of a CheckConsentResponse to fill (its `read_mask`).
#[derive(Debug, Clone, Copy)]
pub struct CheckMask {
    pub verdict: bool,
    pub reason: bool,
    pub deciding_record: bool,
    pub consent_model: bool,
    pub consistency_token: bool,
}

fn parse_read_mask(v: &mut Violations, mask: Option<&prost_types::FieldMask>) -> CheckMask {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    let all = paths.is_empty() || paths.iter().any(|p| p == "*");
    let mut out = CheckMask {
        verdict: all,
        reason: all,
        deciding_record: all,
        consent_model: all,
        consistency_token: all,
    };
    for path in paths {
        match path.as_str() {
            "*" => {}
            "verdict" => out.verdict = true,
            "reason" => out.reason = true,
            "deciding_record" => out.deciding_record = true,
            "consent_model" => out.consent_model = true,
            "consistency_token" => out.consistency_token = true,
            other => v.add(
                "read_mask",
                format!(
                    "{other:?} is not a field of CheckConsentResponse (verdict, reason, \
                     deciding_record, consent_model, consistency_token)"
                ),
            ),
        }
    }
    out
}

fn parse_evidence(v: &mut Violations, e: Option<&proto::Evidence>) -> Option<Option<Evidence>> {
    let Some(e) = e else { return Some(None) };
    let kind = v.check(
        "evidence.kind",
        parse_evidence_kind(e.kind)
            .and_then(|k| k.ok_or_else(|| "is required when evidence is given".into())),
    );
    let reference = v.check(
        "evidence.reference",
        crate::names::parse_text(&e.reference, 512),
    );
    let description = v.check(
        "evidence.description",
        crate::names::parse_text(&e.description, 2000),
    );
    Some(Some(Evidence {
        kind: kind?,
        reference: reference?,
        description: description?,
    }))
}

/// The fields of one consent question, wherever it sits in a request.
struct CheckFields<'a> {
    subject_id: &'a str,
    purpose: &'a str,
    jurisdiction: &'a str,
    gpc_signal: bool,
    data_category: &'a str,
}

/// Parses one question; field names (`checks[3].purpose`) are only built
/// for a violation, since batches run this per pair on the hot path.
/// `index` is the question's place in a batch (`checks[index]`), if any.
fn parse_check(v: &mut Violations, index: Option<usize>, c: CheckFields<'_>) -> Option<CheckQuery> {
    let mut field = |name: &str, e: String| match index {
        Some(i) => v.add(format!("checks[{i}].{name}"), e),
        None => v.add(name, e),
    };
    let subject = SubjectId::parse(c.subject_id)
        .map_err(|e| field("subject_id", e))
        .ok();
    let purpose = PurposeKey::parse(c.purpose)
        .map_err(|e| field("purpose", e))
        .ok();
    let jurisdiction = Jurisdiction::parse_optional(c.jurisdiction)
        .map_err(|e| field("jurisdiction", e))
        .ok();
    let category = if c.data_category.is_empty() {
        Some(None)
    } else {
        parse_category(c.data_category)
            .map(Some)
            .map_err(|e| field("data_category", e))
            .ok()
    };
    Some(CheckQuery {
        subject: subject?,
        purpose: purpose?,
        jurisdiction: jurisdiction?,
        gpc_signal: c.gpc_signal,
        category: category?,
    })
}

fn parse_as_of(
    v: &mut Violations,
    t: Option<&prost_types::Timestamp>,
) -> Option<Option<DateTime<Utc>>> {
    v.check(
        "as_of_time",
        parse_opt_timestamp(t).and_then(|t| t.map(not_in_future).transpose()),
    )
}

fn parse_token(v: &mut Violations, token: &str) -> Option<Option<ConsistencyToken>> {
    v.check("consistency_token", ConsistencyToken::parse_optional(token))
}

fn parse_sha256(raw: &str) -> Result<String, String> {
    if raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(raw.to_owned())
    } else {
        Err("must be 64 lowercase hex characters (the SHA-256 of the policy text)".into())
    }
}
