//! `privacy.v1.PrivacyRequestService`: decode, validate into domain types,
//! call the use case (`super::service`) inside one idempotent transaction,
//! encode. The jurisdiction rules are read from the compiled-in table.
use chrono::{NaiveDate, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};

use super::metrics;
use super::model::ListFilter;
use super::model::{
    Agent, AppealState, Channel, DenialReason, HoldReason, IdentifierKind, RequestRef, State,
};
use super::service::{self, Change, Env, NewRequest, RequestView};
use crate::caller::Caller;
use crate::config::RequestSettings;
use crate::convert::{opt_timestamp, parse_opt_timestamp, timestamp};
use crate::datasystems::model::FieldCorrection;
use crate::datasystems::model::parse_category;
use crate::error::{Result as DomainResult, Violations};
use crate::idempotency::RequestId;
use crate::identifiers::HashKey;
use crate::keys::Keyring;
use crate::names::{
    Jurisdiction, SubjectId, parse_required_text, parse_text, refuse_control_characters,
};
use crate::proto::privacy_request;
use crate::rpc::{self, not_in_future};
use crate::tokens::{ConsistencyToken, PageToken, page_size};

use crate::error::Error;
use crate::proto;
use crate::proto::privacy_request_service_server::PrivacyRequestService;
use crate::reads::Reads;
use crate::rules::{self, Cite, Cited, JurisdictionRules, Period, RequestType, Resolution, Unit};

pub struct PrivacyRequestApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    settings: RequestSettings,
    keys: Keyring,
}

impl PrivacyRequestApi {
    pub fn new(reads: Reads, settings: RequestSettings, keys: Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            settings,
            keys,
        }
    }

    /// The identifier hash key.
    fn key(&self) -> DomainResult<HashKey> {
        self.keys.hash_key()
    }
}

impl PrivacyRequestApi {
    async fn env(&self) -> DomainResult<Env> {
        Ok(Env {
            settings: self.settings.clone(),
            key: self.key()?,
            keys: self.keys.clone(),
        })
    }

    /// Applies a validated change to the request named `name`, once per
    /// request id, and answers with the request as it is after it.
    #[allow(clippy::too_many_arguments)]
    async fn change<Req: prost::Message>(
        &self,
        method: &'static str,
        caller: Caller,
        req: &Req,
        name: &str,
        request_id: &str,
        mut v: Violations,
        change: Option<Change>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let request_id = parse_request_id(&mut v, request_id);
        let id = parse_ref(&mut v, name);
        let (Some(request_id), Some(id), Some(change), true) =
            (request_id, id, change, v.is_empty())
        else {
            return Err(v.into_error().into());
        };
        let env = self.env().await?;
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            method,
            caller,
            &request_id,
            req,
            move |conn, ctx| {
                let (env, change) = (env.clone(), change.clone());
                Box::pin(async move {
                    let token = service::apply(conn, &ctx, &env, id, &change).await?;
                    Ok((written(&env, conn, id, &token).await?, token))
                })
            },
        )
        .await
    }
}

/// Longest free text (explanations, reasons, statements).
const MAX_TEXT: usize = 2000;
/// Most identifiers, corrections or categories in one request.
const MAX_ITEMS: usize = 100;

fn period(p: Period) -> proto::Period {
    proto::Period {
        amount: p.amount,
        unit: match p.unit {
            Unit::CalendarDays => proto::PeriodUnit::CalendarDays,
            Unit::BusinessDays => proto::PeriodUnit::BusinessDays,
            Unit::Months => proto::PeriodUnit::Months,
        } as i32,
    }
}

fn citation(c: Cite<'_>) -> proto::Citation {
    proto::Citation {
        source: c.source.to_owned(),
        confidence: c.confidence.as_str().to_owned(),
        conservative: c.conservative,
        note: c.note.unwrap_or_default().to_owned(),
    }
}

/// The proto enum value of a request type: its table key in upper case.
fn request_type(t: RequestType) -> i32 {
    proto::RequestType::from_str_name(&t.as_str().to_ascii_uppercase()).map_or(0, |v| v as i32)
}

fn date(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn rules_to_proto(
    r: &JurisdictionRules,
    requested: &str,
    table: &rules::RulesTable,
    voluntary_agents: bool,
) -> proto::JurisdictionRules {
    let request_types = RequestType::ALL
        .iter()
        .map(|&t| {
            let deadline = r.deadline_for(t);
            // As the law stands once every dated rule has started (right_since).
            let granted = r.grants(t);
            proto::RequestTypeRules {
                request_type: request_type(t),
                statutory: deadline.statutory,
                right_since: r
                    .right(t)
                    .and_then(|g| g.since)
                    .map(date)
                    .unwrap_or_default(),
                response_deadline: Some(period(deadline.period)),
                extension: deadline.extension_period().map(period),
                extension_notice_required: deadline.extension.is_some_and(|e| e.notice_required),
                verification_required: r.verification_required(t),
                agent_may_file: r.agent_may_file_on(t, chrono::NaiveDate::MAX, voluntary_agents),
                deadline_citation: Some(citation(deadline.cite)),
                agent_statutory: !r.is_default() && granted && r.agents.types.contains(&t),
                free_requests_per_12_months: r.free_limit_for(t).unwrap_or(0),
            }
        })
        .collect();
    let appeal = &r.appeal;
    let holidays = r.holidays.as_ref();
    proto::JurisdictionRules {
        name: format!("jurisdictionRules/{}", r.code()),
        code: r.code().to_owned(),
        requested_code: requested.to_owned(),
        display_name: r.name.clone(),
        law: r.law.clone(),
        effective_date: date(r.effective.date),
        request_types,
        appeal: Some(proto::AppealRules {
            exists: appeal.exists,
            deadline: appeal.deadline.map(period),
            regulator_contact_required: appeal.regulator_contact_required,
            citation: Some(citation(appeal.cite())),
        }),
        free_requests_per_12_months: r.free_requests.requests_per_12_months.unwrap_or(0),
        universal_opt_out_recognized: r.universal_opt_out.recognized,
        universal_opt_out_since: r.universal_opt_out.since.map(date).unwrap_or_default(),
        clock_pauses: r
            .clock_pauses
            .iter()
            .map(|p| p.reason.as_str().to_owned())
            .collect(),
        notes: r.notes.clone().unwrap_or_default(),
        table_version: table.version().to_owned(),
        agent_provision: r.agents.provision,
        agent_citation: Some(citation(r.agents.cite())),
        holidays: holidays
            .map(|h| h.dates.iter().copied().map(date).collect())
            .unwrap_or_default(),
        holidays_through: holidays.map(|h| date(h.through)).unwrap_or_default(),
        holidays_citation: holidays.map(|h| citation(h.cite())),
        table_checked_date: date(table.checked()),
    }
}

/// Parses `jurisdictionRules/{code}`: a code of 2-10 letters, digits and '-'.
fn parse_name(name: &str) -> Result<String, String> {
    let code = name
        .strip_prefix("jurisdictionRules/")
        .ok_or("must be \"jurisdictionRules/{code}\", e.g. \"jurisdictionRules/US-CA\"")?;
    let valid = (2..=10).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err("the code must be 2-10 letters, digits or '-', like US-CA or EU".into());
    }
    // Codes are upper case, as the rules print them ("default" excepted):
    // "us-ca" would be a second name of the rules "jurisdictionRules/US-CA".
    if code != rules::DEFAULT_CODE && code.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("the code is written in upper case, like US-CA or EU (or \"default\")".into());
    }
    Ok(code.to_ascii_uppercase())
}

// ---- requests: conversions ------------------------------------------------

fn state_to_proto(s: State) -> i32 {
    privacy_request::State::from_str_name(s.as_str()).map_or(0, |v| v as i32)
}

fn parse_enum<P: Copy, D>(
    value: i32,
    from: fn(i32) -> Option<P>,
    name: fn(P) -> &'static str,
    domain: fn(&str) -> Option<D>,
    expected: &str,
) -> Result<D, String> {
    from(value)
        .and_then(|p| domain(name(p)))
        .ok_or_else(|| format!("must be one of {expected}"))
}

fn parse_request_type(v: i32) -> Result<rules::RequestType, String> {
    proto::RequestType::try_from(v)
        .ok()
        .and_then(|t| rules::RequestType::parse(&t.as_str_name().to_ascii_lowercase()))
        .ok_or_else(|| "must be a request type (ACCESS, DELETION, OPT_OUT_SALE, ...)".into())
}

fn date_str(d: Option<NaiveDate>) -> String {
    d.map(date).unwrap_or_default()
}

fn request_to_proto(
    view: &RequestView,
    today: NaiveDate,
    settings: &RequestSettings,
) -> proto::PrivacyRequest {
    let row = &view.request;
    let tasks = view.tasks;
    let (appeal_available, appeal_voluntary) = service::appeal_available(row, settings);
    let state = row.state;
    // The due date the one extension would give, while it is unused.
    let extended_due = Some(row.clock)
        .filter(|clock| !clock.is_extended())
        .and_then(|clock| clock.extended_due().ok().flatten());
    let agent = row.agent.clone().map(|a| proto::Agent {
        display_name: a.display_name,
        contact: a.contact,
        evidence_reference: a.evidence_reference,
        evidence_description: a.evidence_description,
    });
    let cite = &row.deadline_citation;
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    proto::PrivacyRequest {
        name: row.name(),
        id: row.id.to_string(),
        subject_id: row.subject_id.as_str().to_owned(),
        request_type: request_type(row.request_type),
        jurisdiction: row.jurisdiction.clone(),
        rules_code: row.rules_code.clone(),
        channel: privacy_request::Channel::from_str_name(row.channel.as_str())
            .map_or(0, |v| v as i32),
        identifier_kinds: row
            .identifier_kinds
            .iter()
            .filter_map(|k| proto::identifier::Kind::from_str_name(k.as_str()).map(|v| v as i32))
            .collect(),
        agent,
        corrections: row
            .corrections
            .iter()
            .map(|c| proto::FieldCorrection {
                field: c.field.clone(),
                current_value: c.current_value.clone(),
                corrected_value: c.corrected_value.clone(),
            })
            .collect(),
        categories: row.categories.clone(),
        state: state_to_proto(state),
        receive_time: Some(timestamp(row.receive_time)),
        received_date: date(row.received_date()),
        due_date: date(row.due_date),
        original_due_date: date(row.original_due_date),
        extension_allowed: extended_due.is_some()
            && state.is_open()
            && today <= row.original_due_date,
        extended_due_date: date_str(extended_due),
        extended: row.clock.is_extended(),
        extension_reason: row.extension_reason.clone().unwrap_or_default(),
        verification_required: row.verification_required,
        agent_may_file: row.agent_may_file,
        statutory: row.statutory,
        free_limit_exceeded: row.free_limit_exceeded,
        prior_requests_12_months: row.prior_requests_12_months,
        paused_days: i32::try_from(row.clock.paused_days()).unwrap_or(i32::MAX),
        hold_reason: row
            .hold
            .and_then(|h| proto::HoldReason::from_str_name(h.reason.as_str()))
            .map_or(0, |v| v as i32),
        denial_reason: denial_reason_to_proto(row.denial_reason),
        explanation: row.explanation.clone(),
        exemptions: row.exemptions.clone(),
        appeal: row.appeal.as_ref().map(|a| proto::Appeal {
            state: proto::appeal::State::from_str_name(a.state.as_str()).map_or(0, |v| v as i32),
            statement: a.statement.clone(),
            create_time: opt_timestamp(a.create_time),
            due_date: date_str(a.due_date),
            explanation: a.explanation.clone().unwrap_or_default(),
            regulator_contact_provided: a.regulator_contact_provided,
            regulator_contact_required: a.regulator_contact_required,
            decide_time: opt_timestamp(a.decide_time),
            voluntary: a.voluntary,
        }),
        appeal_available,
        appeal_voluntary,
        consistency_token: String::new(),
        legal_keeps: row
            .legal_keeps
            .iter()
            .map(crate::retention::grpc::legal_keep_to_proto)
            .collect(),
        tasks: Some(proto::TaskSummary {
            total: count(tasks.total),
            succeeded: count(tasks.succeeded),
            exempt: count(tasks.exempt),
            failed: count(tasks.failed),
            open: count(tasks.open),
        }),
        transitions: view
            .history
            .iter()
            .map(|t| proto::StateTransition {
                from_state: t.from.map_or(0, state_to_proto),
                to_state: state_to_proto(t.to),
                action: t.action.clone(),
                actor: t.actor.clone(),
                reason: t.reason.clone(),
                transition_time: Some(timestamp(t.time)),
            })
            .collect(),
        overdue: state.is_open() && row.due_date < today,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        close_time: opt_timestamp(row.close_time),
        deadline_citation: Some(proto::Citation {
            source: cite.source.clone(),
            confidence: cite.confidence.clone(),
            conservative: cite.conservative,
            note: cite.note.clone(),
        }),
    }
}

fn denial_reason_to_proto(r: Option<DenialReason>) -> i32 {
    r.and_then(|r| proto::DenialReason::from_str_name(r.as_str()))
        .map_or(0, |v| v as i32)
}

/// A request as a write that changed it returns it, with the write's token.
async fn written(
    env: &Env,
    conn: &mut PgConnection,
    id: i64,
    token: &ConsistencyToken,
) -> DomainResult<proto::PrivacyRequest> {
    let view = service::get(&env.keys, conn, id).await?;
    let mut request = request_to_proto(&view, today(), &env.settings);
    request.consistency_token = token.encode();
    Ok(request)
}

/// Today's date (UTC), the date clocks are read against.
fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn parse_ref(v: &mut Violations, name: &str) -> Option<i64> {
    v.check("name", RequestRef::parse_name(name)).map(|r| r.0)
}

fn parse_identifier(id: &proto::Identifier) -> Result<(IdentifierKind, String), String> {
    let kind = parse_enum(
        id.kind,
        |v| proto::identifier::Kind::try_from(v).ok(),
        |k| k.as_str_name(),
        IdentifierKind::from_db,
        "EMAIL_ADDRESS, PHONE_NUMBER, DEVICE_ID, ACCOUNT_ID",
    )?;
    if id.value.chars().count() > 320 {
        return Err("value must be at most 320 characters".into());
    }
    let value = kind
        .normalize(&id.value)
        .ok_or("value is required (and a phone number needs digits)")?;
    Ok((kind, value))
}

/// The `i`th identifier of a request. Control characters are refused
/// before normalising (which trims), so one anywhere in the value is
/// refused, naming the value.
fn check_identifier(
    v: &mut Violations,
    i: usize,
    id: &proto::Identifier,
) -> Option<(IdentifierKind, String)> {
    if let Err(e) = refuse_control_characters(&id.value) {
        v.add(format!("identifiers[{i}].value"), e);
        return None;
    }
    v.check(&format!("identifiers[{i}]"), parse_identifier(id))
}

/// The whole CreatePrivacyRequest, validated.
fn parse_new_request(
    v: &mut Violations,
    req: &proto::CreatePrivacyRequestRequest,
) -> Option<NewRequest> {
    let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
    let request_type = v.check("request_type", parse_request_type(req.request_type));
    let jurisdiction = v.check(
        "jurisdiction",
        if req.jurisdiction.is_empty() {
            Err("is required: \"US-CA\", a country code or \"EU\"".into())
        } else {
            Jurisdiction::parse(&req.jurisdiction)
        },
    );
    let channel = v.check(
        "channel",
        parse_enum(
            req.channel,
            |c| privacy_request::Channel::try_from(c).ok(),
            |c| c.as_str_name(),
            Channel::from_db,
            "WEB_FORM, EMAIL, PHONE, MAIL, IN_APP, GLOBAL_PRIVACY_CONTROL",
        ),
    );
    if req.identifiers.len() > MAX_ITEMS {
        v.add("identifiers", format!("at most {MAX_ITEMS}"));
    }
    let identifiers: Vec<_> = req
        .identifiers
        .iter()
        .enumerate()
        .filter_map(|(i, id)| check_identifier(v, i, id))
        .collect();
    let agent = req.agent.as_ref().and_then(|a| {
        let display_name = v.check(
            "agent.display_name",
            parse_required_text(&a.display_name, MAX_TEXT),
        );
        let contact = v.check("agent.contact", parse_text(&a.contact, 500));
        let evidence_reference = v.check(
            "agent.evidence_reference",
            parse_text(&a.evidence_reference, 500),
        );
        let evidence_description = v.check(
            "agent.evidence_description",
            parse_text(&a.evidence_description, MAX_TEXT),
        );
        Some(Agent {
            display_name: display_name?,
            contact: contact?,
            evidence_reference: evidence_reference?,
            evidence_description: evidence_description?,
        })
    });
    if req.corrections.len() > MAX_ITEMS {
        v.add("corrections", format!("at most {MAX_ITEMS}"));
    }
    let corrections: Vec<_> = req
        .corrections
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let field = v.check(
                &format!("corrections[{i}].field"),
                parse_required_text(&c.field, MAX_TEXT),
            );
            let current = v.check(
                &format!("corrections[{i}].current_value"),
                parse_text(&c.current_value, MAX_TEXT),
            );
            let corrected = v.check(
                &format!("corrections[{i}].corrected_value"),
                parse_required_text(&c.corrected_value, MAX_TEXT),
            );
            Some(FieldCorrection {
                field: field?,
                current_value: current?,
                corrected_value: corrected?,
            })
        })
        .collect();
    match request_type {
        Some(rules::RequestType::Correction) if req.corrections.is_empty() => v.add(
            "corrections",
            "a CORRECTION request needs at least one field to correct",
        ),
        Some(t) if t != rules::RequestType::Correction && !req.corrections.is_empty() => v.add(
            "corrections",
            "only a CORRECTION request carries corrections",
        ),
        _ => {}
    }
    if req.categories.len() > MAX_ITEMS {
        v.add("categories", format!("at most {MAX_ITEMS}"));
    }
    let mut categories: Vec<String> = req
        .categories
        .iter()
        .enumerate()
        .filter_map(|(i, c)| v.check(&format!("categories[{i}]"), parse_category(c)))
        .collect();
    categories.sort();
    categories.dedup();
    let receive_time = v.check(
        "receive_time",
        parse_opt_timestamp(req.receive_time.as_ref())
            .and_then(|t| t.map(not_in_future).transpose()),
    );
    Some(NewRequest {
        subject: subject?,
        request_type: request_type?,
        jurisdiction: jurisdiction?,
        channel: channel?,
        identifiers,
        agent,
        corrections,
        categories,
        receive_time: receive_time?,
    })
}

fn parse_request_id(v: &mut Violations, raw: &str) -> Option<RequestId> {
    v.check("request_id", RequestId::parse(raw))
}

fn metrics_to_proto(m: &metrics::YearMetrics) -> proto::RequestMetrics {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let request_types = m
        .request_types
        .iter()
        .map(|t| {
            let mut denied_by_reason: Vec<proto::DenialCount> = t
                .denied_by_reason
                .iter()
                .map(|&(reason, n)| proto::DenialCount {
                    denial_reason: denial_reason_to_proto(reason),
                    count: count(n),
                })
                .collect();
            // In the wire enum's order, as clients have always read them.
            denied_by_reason.sort_by_key(|c| c.denial_reason);
            proto::RequestTypeMetrics {
                request_type: request_type(t.request_type),
                received: count(t.received),
                complied_in_whole: count(t.complied_in_whole),
                complied_in_part: count(t.complied_in_part),
                denied: count(t.denied),
                denied_by_reason,
                median_days_to_respond: t.median_days_to_respond,
                mean_days_to_respond: t.mean_days_to_respond,
            }
        })
        .collect();
    proto::RequestMetrics {
        year: m.year,
        request_types,
        overdue: i32::try_from(m.overdue).unwrap_or(i32::MAX),
        due_within_7_days: i32::try_from(m.due_within_7_days).unwrap_or(i32::MAX),
    }
}

#[tonic::async_trait]
impl PrivacyRequestService for PrivacyRequestApi {
    async fn get_jurisdiction_rules(
        &self,
        request: Request<proto::GetJurisdictionRulesRequest>,
    ) -> Result<Response<proto::JurisdictionRules>, Status> {
        let code = parse_name(&request.get_ref().name).map_err(|e| Error::invalid("name", e))?;
        let table = rules::table().map_err(|e| Error::Internal(e.to_string()))?;
        let lookup = table.lookup(&code);
        let requested = match lookup.resolution {
            Resolution::Exact => String::new(),
            Resolution::MemberState | Resolution::Default => code,
        };
        Ok(Response::new(rules_to_proto(
            lookup.rules,
            &requested,
            table,
            self.settings.voluntary_agents,
        )))
    }

    async fn list_jurisdiction_rules(
        &self,
        _request: Request<proto::ListJurisdictionRulesRequest>,
    ) -> Result<Response<proto::ListJurisdictionRulesResponse>, Status> {
        let table = rules::table().map_err(|e| Error::Internal(e.to_string()))?;
        let voluntary_agents = self.settings.voluntary_agents;
        let jurisdiction_rules = table
            .entries()
            .chain(std::iter::once(table.defaults()))
            .map(|r| rules_to_proto(r, "", table, voluntary_agents))
            .collect();
        Ok(Response::new(proto::ListJurisdictionRulesResponse {
            jurisdiction_rules,
            table_version: table.version().to_owned(),
            table_checked_date: date(table.checked()),
        }))
    }

    async fn create_privacy_request(
        &self,
        request: Request<proto::CreatePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/CreatePrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let request_id = parse_request_id(&mut v, &req.request_id);
        let new = parse_new_request(&mut v, &req);
        let (Some(request_id), Some(new), true) = (request_id, new, v.is_empty()) else {
            return Err(v.into_error().into());
        };
        let env = self.env().await?;
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let (env, new) = (env.clone(), new.clone());
                Box::pin(async move {
                    let (id, token) = service::create(conn, &ctx, &env, &new).await?;
                    Ok((written(&env, conn, id, &token).await?, token))
                })
            },
        )
        .await
    }

    async fn get_privacy_request(
        &self,
        request: Request<proto::GetPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        let mut v = Violations::new();
        let Some(id) = parse_ref(&mut v, &request.get_ref().name) else {
            return Err(v.into_error().into());
        };
        let view = service::read(&self.keys, &self.pool, id).await?;
        Ok(Response::new(request_to_proto(
            &view,
            today(),
            &self.settings,
        )))
    }

    async fn list_privacy_requests(
        &self,
        request: Request<proto::ListPrivacyRequestsRequest>,
    ) -> Result<Response<proto::ListPrivacyRequestsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let subject_id = v.check(
            "subject_id",
            if req.subject_id.is_empty() {
                Ok(None)
            } else {
                SubjectId::parse(&req.subject_id).map(|s| Some(s.as_str().to_owned()))
            },
        );
        let state = v.check(
            "state",
            match req.state {
                0 => Ok(None),
                s => parse_enum(
                    s,
                    |x| privacy_request::State::try_from(x).ok(),
                    |x| x.as_str_name(),
                    State::from_db,
                    "a request state (IN_PROGRESS, DENIED, ...)",
                )
                .map(Some),
            },
        );
        let request_type = v.check(
            "request_type",
            match req.request_type {
                0 => Ok(None),
                t => parse_request_type(t).map(|t| Some(t.as_str().to_owned())),
            },
        );
        let jurisdiction = v.check(
            "jurisdiction",
            Jurisdiction::parse_optional(&req.jurisdiction)
                .map(|j| j.map(|j| j.as_str().to_owned())),
        );
        let due_before = v.check(
            "due_before",
            if req.due_before.is_empty() {
                Ok(None)
            } else {
                NaiveDate::parse_from_str(&req.due_before, "%Y-%m-%d")
                    .map(Some)
                    .map_err(|_| "must be a date, YYYY-MM-DD".to_owned())
            },
        );
        let limit = v.check("page_size", page_size(req.page_size));
        let filters = format!(
            "requests|{}|{}|{}|{}|{}|{}",
            req.subject_id,
            req.state,
            req.request_type,
            req.jurisdiction,
            req.overdue,
            req.due_before
        );
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&filters, &req.page_token),
        );
        let (
            Some(subject_id),
            Some(state),
            Some(request_type),
            Some(jurisdiction),
            Some(due_before),
            Some(limit),
            Some(after),
        ) = (
            subject_id,
            state,
            request_type,
            jurisdiction,
            due_before,
            limit,
            after,
        )
        else {
            return Err(v.into_error().into());
        };
        let filter = ListFilter {
            subject_id,
            state,
            request_type,
            jurisdiction,
            overdue: req.overdue,
            due_before,
        };
        let listed =
            service::list(&self.reads, &self.keys, &filter, after.unwrap_or(0), limit).await?;
        let next = match listed.requests.last() {
            Some(last) if listed.more => PageToken::encode(&filters, &last.request.id),
            _ => String::new(),
        };
        let today = today();
        let out = listed
            .requests
            .iter()
            .map(|view| request_to_proto(view, today, &self.settings))
            .collect();
        Ok(Response::new(proto::ListPrivacyRequestsResponse {
            privacy_requests: out,
            next_page_token: next,
        }))
    }

    async fn verify_privacy_request_identity(
        &self,
        request: Request<proto::VerifyPrivacyRequestIdentityRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/VerifyPrivacyRequestIdentity";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let method = v.check("method", parse_required_text(&req.method, MAX_TEXT));
        let evidence = v.check(
            "agent_evidence_reference",
            parse_text(&req.agent_evidence_reference, 500),
        );
        let change = method.zip(evidence).map(|(method, e)| Change::Verify {
            method,
            agent_evidence: (!e.is_empty()).then_some(e),
        });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn extend_privacy_request(
        &self,
        request: Request<proto::ExtendPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/ExtendPrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let change = v
            .check("reason", parse_required_text(&req.reason, MAX_TEXT))
            .map(|reason| Change::Extend { reason });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn hold_privacy_request(
        &self,
        request: Request<proto::HoldPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/HoldPrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let reason = v.check(
            "hold_reason",
            parse_enum(
                req.hold_reason,
                |x| proto::HoldReason::try_from(x).ok(),
                |x| x.as_str_name(),
                HoldReason::from_db,
                "FRAUD_SUSPECTED_AUTHENTICATION_PENDING, AWAITING_SUBJECT, OTHER_HOLD",
            ),
        );
        let explanation = v.check(
            "explanation",
            parse_required_text(&req.explanation, MAX_TEXT),
        );
        let change = reason
            .zip(explanation)
            .map(|(reason, explanation)| Change::Hold {
                reason,
                explanation,
            });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn resume_privacy_request(
        &self,
        request: Request<proto::ResumePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/ResumePrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let change = v
            .check("explanation", parse_text(&req.explanation, MAX_TEXT))
            .map(|explanation| Change::Resume { explanation });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn deny_privacy_request(
        &self,
        request: Request<proto::DenyPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/DenyPrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let reason = v.check(
            "denial_reason",
            parse_enum(
                req.denial_reason,
                |x| proto::DenialReason::try_from(x).ok(),
                |x| x.as_str_name(),
                DenialReason::from_db,
                "a denial reason (IDENTITY_NOT_VERIFIED, AGENT_NOT_AUTHORIZED, ...)",
            ),
        );
        let explanation = v.check(
            "explanation",
            parse_required_text(&req.explanation, MAX_TEXT),
        );
        let change = reason
            .zip(explanation)
            .map(|(reason, explanation)| Change::Deny {
                reason,
                explanation,
            });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn cancel_privacy_request(
        &self,
        request: Request<proto::CancelPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/CancelPrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let change = v
            .check(
                "explanation",
                parse_required_text(&req.explanation, MAX_TEXT),
            )
            .map(|explanation| Change::Cancel { explanation });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn complete_privacy_request(
        &self,
        request: Request<proto::CompletePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/CompletePrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let explanation = v.check(
            "explanation",
            parse_required_text(&req.explanation, MAX_TEXT),
        );
        if req.exemptions.len() > MAX_ITEMS {
            v.add("exemptions", format!("at most {MAX_ITEMS}"));
        }
        let exemptions: Vec<String> = req
            .exemptions
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                v.check(
                    &format!("exemptions[{i}]"),
                    parse_required_text(e, MAX_TEXT),
                )
            })
            .collect();
        let change = explanation.map(|explanation| Change::Complete {
            explanation,
            exemptions,
        });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn appeal_privacy_request(
        &self,
        request: Request<proto::AppealPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/AppealPrivacyRequest";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let statement = v.check("statement", parse_required_text(&req.statement, MAX_TEXT));
        let receive_time = v.check(
            "receive_time",
            parse_opt_timestamp(req.receive_time.as_ref())
                .and_then(|t| t.map(not_in_future).transpose()),
        );
        let change = statement
            .zip(receive_time)
            .map(|(statement, receive_time)| Change::Appeal {
                statement,
                receive_time,
            });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn decide_appeal(
        &self,
        request: Request<proto::DecideAppealRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        const METHOD: &str = "privacy.v1.PrivacyRequestService/DecideAppeal";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let decision = v.check(
            "decision",
            match proto::appeal::State::try_from(req.decision) {
                Ok(proto::appeal::State::Granted) => Ok(AppealState::Granted),
                Ok(proto::appeal::State::Upheld) => Ok(AppealState::Upheld),
                _ => Err("must be GRANTED or UPHELD".to_owned()),
            },
        );
        let explanation = v.check(
            "explanation",
            parse_required_text(&req.explanation, MAX_TEXT),
        );
        let change =
            decision
                .zip(explanation)
                .map(|(decision, explanation)| Change::DecideAppeal {
                    decision,
                    explanation,
                    regulator_contact_provided: req.regulator_contact_provided,
                });
        self.change(METHOD, caller, &req, &req.name, &req.request_id, v, change)
            .await
    }

    async fn get_access_package(
        &self,
        request: Request<proto::GetAccessPackageRequest>,
    ) -> Result<Response<proto::AccessPackage>, Status> {
        let mut v = Violations::new();
        let Some(id) = parse_ref(&mut v, &request.get_ref().name) else {
            return Err(v.into_error().into());
        };
        let package = service::access_package(&self.keys, &self.pool, id).await?;
        let content = serde_json::to_string_pretty(&package)
            .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        Ok(Response::new(proto::AccessPackage {
            privacy_request: RequestRef(id).name(),
            content_type: "application/json".into(),
            content_sha256: hex::encode(Sha256::digest(content.as_bytes())),
            content,
            generate_time: Some(timestamp(Utc::now())),
        }))
    }

    async fn get_request_metrics(
        &self,
        request: Request<proto::GetRequestMetricsRequest>,
    ) -> Result<Response<proto::RequestMetrics>, Status> {
        let year = request.get_ref().year;
        if !(2000..=9998).contains(&year) {
            return Err(
                crate::error::Error::invalid("year", "must be a year from 2000 to 9998").into(),
            );
        }
        let m = service::year_metrics(&self.pool, year).await?;
        Ok(Response::new(metrics_to_proto(&m)))
    }

    async fn check_suppression(
        &self,
        request: Request<proto::CheckSuppressionRequest>,
    ) -> Result<Response<proto::CheckSuppressionResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.identifiers.len() > MAX_ITEMS {
            v.add("identifiers", format!("at most {MAX_ITEMS}"));
        }
        let mut ids: Vec<(IdentifierKind, String)> = req
            .identifiers
            .iter()
            .enumerate()
            .filter_map(|(i, id)| check_identifier(&mut v, i, id))
            .collect();
        if !req.subject_id.is_empty()
            && let Some(s) = v.check("subject_id", SubjectId::parse(&req.subject_id))
        {
            ids.push((IdentifierKind::SubjectId, s.as_str().to_owned()));
        }
        if ids.is_empty() {
            v.add(
                "identifiers",
                "give at least one identifier or a subject_id",
            );
        }
        v.finish()?;
        let key = self.key()?;
        let matched_kinds = service::suppressed(&self.pool, &key, &ids).await?;
        let subject_id_matched = matched_kinds
            .iter()
            .any(|k| k == IdentifierKind::SubjectId.as_str());
        let mut matched_identifier_kinds: Vec<i32> = matched_kinds
            .iter()
            .filter_map(|k| proto::identifier::Kind::from_str_name(k).map(|v| v as i32))
            .collect();
        matched_identifier_kinds.sort_unstable();
        #[allow(deprecated)] // still filled for callers that read it
        Ok(Response::new(proto::CheckSuppressionResponse {
            suppressed: !matched_kinds.is_empty(),
            matched_kinds,
            matched_identifier_kinds,
            subject_id_matched,
        }))
    }
}
