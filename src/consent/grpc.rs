//! `privacy.v1.ConsentService`: decode, validate into domain types, call the
//! use case, encode. Nothing else happens here.
use std::collections::BTreeMap;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

use super::cache::DecisionCache;
use super::decision::Outcome;
use super::group_commit::{Batching, GroupCommit};
use super::model::{
    self as m, ConsentModel, ConsentRecord, Decision, Evidence, EvidenceKind, NewConsent,
    PolicyVersion, Purpose, PurposeFields, Source, Subject,
};
use super::queries;
use super::service::{self, CheckQuery, PurposeMask, ReadAt, Recorded};
pub use super::watch::WatchSettings;
use super::watch::{self, Start};
use crate::caller::Caller;
use crate::convert::{opt_timestamp, parse_opt_timestamp, parse_timestamp, timestamp};
use crate::datasystems::model::parse_category;
use crate::error::{Error, Result, Violations};
use crate::idempotency::RequestId;
use crate::names::{Jurisdiction, PurposeKey, SubjectId};
use crate::proto;
use crate::proto::consent_service_server::ConsentService;
use crate::reads::Reads;
use crate::rpc::{Context, not_in_future, paginate};
use crate::tokens::{ConsistencyToken, FeedPosition, PageToken, page_size};

pub use crate::rpc::CONSISTENCY_HEADER;
const MAX_BATCH: usize = 1000;

pub struct ConsentApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    watch: WatchSettings,
    shutdown: signal::Receiver<bool>,
    keys: crate::keys::Keyring,
    cache: DecisionCache,
    /// RecordConsent's writes, grouped into shared commits.
    writes: GroupCommit,
}

const RECORD_CONSENT: &str = "privacy.v1.ConsentService/RecordConsent";

impl ConsentApi {
    pub fn new(
        reads: Reads,
        watch: WatchSettings,
        shutdown: signal::Receiver<bool>,
        keys: crate::keys::Keyring,
        cache: DecisionCache,
        batching: Batching,
    ) -> Self {
        let pool = reads.primary().clone();
        Self {
            writes: GroupCommit::start(pool.clone(), keys.clone(), RECORD_CONSENT, batching),
            pool,
            reads,
            watch,
            shutdown,
            keys,
            cache,
        }
    }
}

// ---- conversions ----------------------------------------------------------

fn model_to_proto(v: ConsentModel) -> i32 {
    proto::ConsentModel::from_str_name(v.as_str()).map_or(0, |e| e as i32)
}

fn parse_model(v: i32) -> Result<ConsentModel, String> {
    proto::ConsentModel::try_from(v)
        .ok()
        .and_then(|e| ConsentModel::from_db(e.as_str_name()))
        .ok_or_else(|| "must be one of OPT_IN, OPT_OUT, NOT_CONSENT_BASED, PROHIBITED".into())
}

fn evidence_kind_to_proto(v: Option<EvidenceKind>) -> i32 {
    v.and_then(|k| proto::EvidenceKind::from_str_name(k.as_str()))
        .map_or(0, |e| e as i32)
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

fn enum_by_name<T>(name: &str, parse: fn(&str) -> Option<T>, into: fn(T) -> i32) -> i32 {
    parse(name).map_or(0, into)
}

fn purpose_to_proto(p: &Purpose) -> proto::Purpose {
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

fn record_to_proto(r: &ConsentRecord) -> proto::ConsentRecord {
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

fn result_to_proto(q: &CheckQuery, o: &Outcome) -> proto::ConsentCheckResult {
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

fn policy_to_proto(v: &PolicyVersion) -> proto::PolicyVersion {
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

fn watch_to_proto(b: &watch::Batch) -> proto::WatchConsentChangesResponse {
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

fn subject_to_proto(s: &Subject) -> proto::Subject {
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

// ---- parsing --------------------------------------------------------------

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
struct CheckMask {
    verdict: bool,
    reason: bool,
    deciding_record: bool,
    consent_model: bool,
    consistency_token: bool,
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

fn parse_new_consent(req: &proto::RecordConsentRequest) -> Result<(RequestId, NewConsent)> {
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
    let (
        Some(request_id),
        Some(subject_id),
        Some(purpose),
        Some(decision),
        Some(source),
        Some(policy_version),
        Some(jurisdiction),
        Some(evidence),
        Some(effective_time),
        Some(expire_time),
    ) = (
        request_id,
        subject_id,
        purpose,
        decision,
        source,
        policy_version,
        jurisdiction,
        evidence,
        effective_time,
        expire_time,
    )
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((
        request_id,
        NewConsent {
            subject_id,
            purpose,
            decision,
            source,
            policy_version,
            jurisdiction,
            evidence,
            effective_time,
            expire_time,
        },
    ))
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

// ---- the service ----------------------------------------------------------

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchConsentChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn create_purpose(
        &self,
        request: Request<proto::CreatePurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        const METHOD: &str = "privacy.v1.ConsentService/CreatePurpose";
        let caller = Caller::of(&request);
        let req = request.into_inner();
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
        let (Some(request_id), Some((key, fields))) = (request_id, parsed) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        crate::rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let (key, fields) = (key.clone(), fields.clone());
                Box::pin(async move {
                    let (p, token) = service::create_purpose(conn, &ctx, &key, &fields).await?;
                    Ok((purpose_to_proto(&p), token))
                })
            },
        )
        .await
    }

    async fn get_purpose(
        &self,
        request: Request<proto::GetPurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        let req = request.into_inner();
        let key = PurposeKey::parse_name(&req.name).map_err(|e| Error::invalid("name", e))?;
        let purpose = queries::get_purpose(&self.pool, &key).await?;
        Ok(Response::new(purpose_to_proto(&purpose)))
    }

    async fn list_purposes(
        &self,
        request: Request<proto::ListPurposesRequest>,
    ) -> Result<Response<proto::ListPurposesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check(
            "page_token",
            PageToken::decode::<String>("purposes", &req.page_token),
        );
        let (Some(limit), Some(after)) = (limit, after) else {
            return Err(v.into_error().into());
        };
        let purposes = queries::list_purposes(&self.pool, after.as_deref(), limit + 1).await?;
        let (page, next) = paginate(purposes, limit, |p| {
            PageToken::encode("purposes", &p.key.as_str())
        });
        Ok(Response::new(proto::ListPurposesResponse {
            purposes: page.iter().map(purpose_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn update_purpose(
        &self,
        request: Request<proto::UpdatePurposeRequest>,
    ) -> Result<Response<proto::Purpose>, Status> {
        const METHOD: &str = "privacy.v1.ConsentService/UpdatePurpose";
        let caller = Caller::of(&request);
        let req = request.into_inner();
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
        let (Some(request_id), Some((key, fields, etag)), Some(lift_version)) =
            (request_id, parsed, lift_version)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        crate::rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let (key, fields, mask, etag, lift_version) = (
                    key.clone(),
                    fields.clone(),
                    mask.clone(),
                    etag.clone(),
                    lift_version.clone(),
                );
                Box::pin(async move {
                    let (p, token) = service::update_purpose(
                        conn,
                        &ctx,
                        &key,
                        &fields,
                        &mask,
                        etag.as_deref(),
                        lift_version.as_deref(),
                    )
                    .await?;
                    Ok((purpose_to_proto(&p), token))
                })
            },
        )
        .await
    }

    async fn record_consent(
        &self,
        request: Request<proto::RecordConsentRequest>,
    ) -> Result<Response<proto::RecordConsentResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parse_new_consent(&req)?;
        crate::rpc::note_request_id(&request_id);
        let ctx = Context::for_call(&caller, RECORD_CONSENT, &request_id);
        let fingerprint = crate::idempotency::fingerprint(&self.keys, RECORD_CONSENT, &req)?;
        let outcome = service::record_consent_retrying(
            &self.cache,
            &self.writes,
            &ctx,
            &fingerprint,
            &request_id,
            &new,
        )
        .await;
        // RecordConsent refuses nothing for want of permission on a
        // resource, so unlike `rpc::mutate` it has no refusal to audit.
        let (response, token) = match outcome? {
            Recorded::Entry(record, token) => (
                proto::RecordConsentResponse {
                    record: Some(record_to_proto(&record)),
                    consistency_token: token.encode(),
                },
                token,
            ),
            Recorded::Sealed(bytes, token) => (
                prost::Message::decode(bytes.as_slice()).map_err(|e| {
                    Error::Internal(format!("stored response does not decode: {e}"))
                })?,
                token,
            ),
        };
        Ok(crate::rpc::with_token(response, token))
    }

    async fn check_consent(
        &self,
        request: Request<proto::CheckConsentRequest>,
    ) -> Result<Response<proto::CheckConsentResponse>, Status> {
        let req = request.into_inner();
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
        let (Some(query), Some(as_of), Some(token), true) = (query, as_of, token, v.is_empty())
        else {
            return Err(v.into_error().into());
        };
        let answers = service::check_cached(
            &self.cache,
            &self.keys,
            &self.reads,
            std::slice::from_ref(&query),
            ReadAt { as_of, token },
        )
        .await?;
        let outcome = answers
            .outcomes
            .first()
            .ok_or_else(|| Error::Internal("a check returned no outcome".into()))?;
        Ok(Response::new(proto::CheckConsentResponse {
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
        }))
    }

    async fn batch_check_consent(
        &self,
        request: Request<proto::BatchCheckConsentRequest>,
    ) -> Result<Response<proto::BatchCheckConsentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.checks.is_empty() || req.checks.len() > MAX_BATCH {
            v.add("checks", format!("must have 1 to {MAX_BATCH} entries"));
            return Err(v.into_error().into());
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
        if !v.is_empty() {
            return Err(v.into_error().into());
        }
        let (Some(queries), Some(as_of), Some(token)) = (
            queries.into_iter().collect::<Option<Vec<_>>>(),
            as_of,
            token,
        ) else {
            return Err(v.into_error().into());
        };
        let answers = service::check_cached(
            &self.cache,
            &self.keys,
            &self.reads,
            &queries,
            ReadAt { as_of, token },
        )
        .await?;
        Ok(Response::new(proto::BatchCheckConsentResponse {
            results: queries
                .iter()
                .zip(&answers.outcomes)
                .map(|(q, o)| result_to_proto(q, o))
                .collect(),
            consistency_token: answers.token.encode(),
        }))
    }

    async fn get_consent_state(
        &self,
        request: Request<proto::GetConsentStateRequest>,
    ) -> Result<Response<proto::ConsentState>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
        let jurisdiction = v.check(
            "jurisdiction",
            Jurisdiction::parse_optional(&req.jurisdiction),
        );
        let as_of = parse_as_of(&mut v, req.as_of_time.as_ref());
        let token = parse_token(&mut v, &req.consistency_token);
        let (Some(subject), Some(jurisdiction), Some(as_of), Some(token)) =
            (subject, jurisdiction, as_of, token)
        else {
            return Err(v.into_error().into());
        };
        let (queries, answers) = service::consent_state(
            &self.cache,
            &self.keys,
            &self.reads,
            &subject,
            jurisdiction.as_ref(),
            req.gpc_signal,
            ReadAt { as_of, token },
        )
        .await?;
        Ok(Response::new(proto::ConsentState {
            subject_id: subject.as_str().to_owned(),
            decisions: queries
                .iter()
                .zip(&answers.outcomes)
                .map(|(q, o)| result_to_proto(q, o))
                .collect(),
            consistency_token: answers.token.encode(),
        }))
    }

    async fn list_consent_records(
        &self,
        request: Request<proto::ListConsentRecordsRequest>,
    ) -> Result<Response<proto::ListConsentRecordsResponse>, Status> {
        let req = request.into_inner();
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
        let limit = v.check("page_size", page_size(req.page_size));
        let filters = format!("records:{}:{}", req.subject_id, req.purpose);
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&filters, &req.page_token),
        );
        let token = parse_token(&mut v, &req.consistency_token);
        let (Some(subject), Some(purpose), Some(limit), Some(after), Some(token)) =
            (subject, purpose, limit, after, token)
        else {
            return Err(v.into_error().into());
        };
        let records = queries::list_records(
            &self.keys,
            &self.reads,
            token,
            subject.as_ref(),
            purpose.as_ref(),
            after,
            limit + 1,
        )
        .await?;
        let (page, next) = paginate(records, limit, |r| PageToken::encode(&filters, &r.id));
        Ok(Response::new(proto::ListConsentRecordsResponse {
            records: page.iter().map(record_to_proto).collect(),
            next_page_token: next,
        }))
    }

    type WatchConsentChangesStream = WatchStream;

    async fn watch_consent_changes(
        &self,
        request: Request<proto::WatchConsentChangesRequest>,
    ) -> Result<Response<Self::WatchConsentChangesStream>, Status> {
        let req = request.into_inner();
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
        let (Some(resume), Some(subject)) = (resume, subject) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let start = match resume {
            Some(position) => Start::At(position),
            None if req.start_from_beginning => Start::Beginning,
            None => Start::Head,
        };
        let changes = watch::changes(
            &self.pool,
            &self.keys,
            &self.watch,
            self.shutdown.clone(),
            start,
            subject,
        )
        .await?;
        Ok(Response::new(Box::pin(changes.map(|batch| {
            batch.map(|b| watch_to_proto(&b)).map_err(Status::from)
        }))))
    }

    async fn publish_policy_version(
        &self,
        request: Request<proto::PublishPolicyVersionRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        const METHOD: &str = "privacy.v1.ConsentService/PublishPolicyVersion";
        let caller = Caller::of(&request);
        let req = request.into_inner();
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
                match (id, effective, sha, summary) {
                    (Some(version_id), Some(effective_time), Some(text_sha256), Some(summary)) => {
                        Some(PolicyVersion {
                            version_id,
                            effective_time,
                            text_sha256,
                            material: p.material,
                            summary,
                            publish_time: Utc::now(),
                        })
                    }
                    _ => None,
                }
            }
        };
        let (Some(request_id), Some(version)) = (request_id, version) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        crate::rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let version = version.clone();
                Box::pin(async move {
                    let (p, token) = service::publish_policy_version(conn, &ctx, &version).await?;
                    Ok((policy_to_proto(&p), token))
                })
            },
        )
        .await
    }

    async fn list_policy_versions(
        &self,
        request: Request<proto::ListPolicyVersionsRequest>,
    ) -> Result<Response<proto::ListPolicyVersionsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check(
            "page_token",
            PageToken::decode::<(DateTime<Utc>, String)>("policy_versions", &req.page_token),
        );
        let (Some(limit), Some(after)) = (limit, after) else {
            return Err(v.into_error().into());
        };
        let versions = queries::list_policy_versions(&self.pool, after, limit + 1).await?;
        let (page, next) = paginate(versions, limit, |p| {
            PageToken::encode("policy_versions", &(p.effective_time, &p.version_id))
        });
        Ok(Response::new(proto::ListPolicyVersionsResponse {
            policy_versions: page.iter().map(policy_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn list_subjects_to_reconsent(
        &self,
        request: Request<proto::ListSubjectsToReconsentRequest>,
    ) -> Result<Response<proto::ListSubjectsToReconsentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let version_id = if req.policy_version.is_empty() {
            Some(None)
        } else {
            v.check(
                "policy_version",
                m::parse_version_id(&req.policy_version).map(Some),
            )
        };
        let limit = v.check("page_size", page_size(req.page_size));
        let filters = format!("reconsent:{}", req.policy_version);
        let after = v.check(
            "page_token",
            PageToken::decode::<(String, String)>(&filters, &req.page_token),
        );
        let (Some(version_id), Some(limit), Some(after)) = (version_id, limit, after) else {
            return Err(v.into_error().into());
        };
        let (version, grants) = queries::subjects_to_reconsent(
            &self.keys,
            &self.pool,
            version_id.as_deref(),
            after,
            limit + 1,
        )
        .await?;
        let (page, next) = paginate(grants, limit, |r| {
            PageToken::encode(&filters, &(&r.subject_id, &r.purpose))
        });
        Ok(Response::new(proto::ListSubjectsToReconsentResponse {
            policy_version: version.version_id,
            subjects: page
                .iter()
                .map(|r| proto::SubjectToReconsent {
                    subject_id: r.subject_id.clone(),
                    purpose: r.purpose.clone(),
                    grant: Some(record_to_proto(r)),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn get_subject(
        &self,
        request: Request<proto::GetSubjectRequest>,
    ) -> Result<Response<proto::Subject>, Status> {
        let req = request.into_inner();
        let subject = SubjectId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))?;
        let found = queries::get_subject(&self.pool, &subject).await?;
        Ok(Response::new(subject_to_proto(&found)))
    }

    async fn set_subject_minor_status(
        &self,
        request: Request<proto::SetSubjectMinorStatusRequest>,
    ) -> Result<Response<proto::Subject>, Status> {
        const METHOD: &str = "privacy.v1.ConsentService/SetSubjectMinorStatus";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let request_id = v.check("request_id", RequestId::parse(&req.request_id));
        let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
        let reason = v.check("reason", crate::names::parse_text(&req.reason, 2000));
        let (Some(request_id), Some(subject), Some(reason)) = (request_id, subject, reason) else {
            return Err(v.into_error().into());
        };
        let (minor, parental_consent) = (req.minor, req.parental_consent);
        crate::rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let (subject, reason) = (subject.clone(), reason.clone());
                Box::pin(async move {
                    let (s, token) = service::set_minor_status(
                        conn,
                        &ctx,
                        &subject,
                        minor,
                        parental_consent,
                        &reason,
                    )
                    .await?;
                    Ok((subject_to_proto(&s), token))
                })
            },
        )
        .await
    }
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
