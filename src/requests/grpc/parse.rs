//! `privacy.v1` request messages to domain values, one function per RPC.
//! Every invalid field is reported at once, as a field violation named as
//! the client wrote it; nothing here touches the database.
use chrono::NaiveDate;

use super::super::model::{
    Agent, AppealState, Channel, DenialReason, HoldReason, ListFilter, State,
};
use super::super::service::{Change, NewRequest};
use crate::convert::parse_opt_timestamp;
use crate::datasystems::model::{FieldCorrection, parse_category};
use crate::error::{Error, Result, Violations};
use crate::idempotency::RequestId;
use crate::identifiers::IdentifierKind;
use crate::names::{
    Jurisdiction, RequestRef, SubjectId, parse_required_text, parse_text, refuse_control_characters,
};
use crate::proto::{self, privacy_request};
use crate::rpc::not_in_future;
use crate::rules;
use crate::tokens::{PageToken, page_size};

/// Longest free text (explanations, reasons, statements).
const MAX_TEXT: usize = 2000;
/// Most identifiers, corrections or categories in one request.
const MAX_ITEMS: usize = 100;

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

/// A parsed CreatePrivacyRequest.
pub(super) fn create(req: &proto::CreatePrivacyRequestRequest) -> Result<(RequestId, NewRequest)> {
    let mut v = Violations::new();
    let request_id = parse_request_id(&mut v, &req.request_id);
    let new = parse_new_request(&mut v, req);
    all_valid(v, request_id.zip(new))
}

/// The parsed value when no field was invalid, else every violation found.
fn all_valid<T>(v: Violations, parsed: Option<T>) -> Result<T> {
    match parsed {
        Some(parsed) if v.is_empty() => Ok(parsed),
        _ => Err(v.into_error()),
    }
}

/// A change to the request named `name`: the change's own fields are
/// checked first, then the request id, then the name (the order clients see
/// the violations in).
pub(super) struct Changing {
    pub request_id: RequestId,
    pub id: i64,
    pub change: Change,
}

fn changing(
    name: &str,
    request_id: &str,
    fields: impl FnOnce(&mut Violations) -> Option<Change>,
) -> Result<Changing> {
    let mut v = Violations::new();
    let change = fields(&mut v);
    let request_id = parse_request_id(&mut v, request_id);
    let id = parse_ref(&mut v, name);
    let parsed = (|| {
        Some(Changing {
            request_id: request_id?,
            id: id?,
            change: change?,
        })
    })();
    all_valid(v, parsed)
}

pub(super) fn verify(req: &proto::VerifyPrivacyRequestIdentityRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
        let method = v.check("method", parse_required_text(&req.method, MAX_TEXT));
        let evidence = v.check(
            "agent_evidence_reference",
            parse_text(&req.agent_evidence_reference, 500),
        );
        method.zip(evidence).map(|(method, e)| Change::Verify {
            method,
            agent_evidence: (!e.is_empty()).then_some(e),
        })
    })
}

pub(super) fn extend(req: &proto::ExtendPrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
        v.check("reason", parse_required_text(&req.reason, MAX_TEXT))
            .map(|reason| Change::Extend { reason })
    })
}

pub(super) fn hold(req: &proto::HoldPrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
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
        reason
            .zip(explanation)
            .map(|(reason, explanation)| Change::Hold {
                reason,
                explanation,
            })
    })
}

pub(super) fn resume(req: &proto::ResumePrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
        v.check("explanation", parse_text(&req.explanation, MAX_TEXT))
            .map(|explanation| Change::Resume { explanation })
    })
}

pub(super) fn deny(req: &proto::DenyPrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
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
        reason
            .zip(explanation)
            .map(|(reason, explanation)| Change::Deny {
                reason,
                explanation,
            })
    })
}

pub(super) fn cancel(req: &proto::CancelPrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
        v.check(
            "explanation",
            parse_required_text(&req.explanation, MAX_TEXT),
        )
        .map(|explanation| Change::Cancel { explanation })
    })
}

pub(super) fn complete(req: &proto::CompletePrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
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
        explanation.map(|explanation| Change::Complete {
            explanation,
            exemptions,
        })
    })
}

pub(super) fn appeal(req: &proto::AppealPrivacyRequestRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
        let statement = v.check("statement", parse_required_text(&req.statement, MAX_TEXT));
        let receive_time = v.check(
            "receive_time",
            parse_opt_timestamp(req.receive_time.as_ref())
                .and_then(|t| t.map(not_in_future).transpose()),
        );
        statement
            .zip(receive_time)
            .map(|(statement, receive_time)| Change::Appeal {
                statement,
                receive_time,
            })
    })
}

pub(super) fn decide_appeal(req: &proto::DecideAppealRequest) -> Result<Changing> {
    changing(&req.name, &req.request_id, |v| {
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
        decision
            .zip(explanation)
            .map(|(decision, explanation)| Change::DecideAppeal {
                decision,
                explanation,
                regulator_contact_provided: req.regulator_contact_provided,
            })
    })
}

/// The id of the request named `name` (a read names nothing else).
pub(super) fn request_name(name: &str) -> Result<i64> {
    let mut v = Violations::new();
    parse_ref(&mut v, name).ok_or_else(|| v.into_error())
}

/// The code of the rules named `name`.
pub(super) fn rules_name(name: &str) -> Result<String> {
    parse_name(name).map_err(|e| Error::invalid("name", e))
}

/// A parsed ListPrivacyRequests: the filter, where the page starts and its
/// size, and the filters as the page token binds them.
pub(super) struct ListQuery {
    pub filter: ListFilter,
    pub after: i64,
    pub limit: i64,
    pub filters: String,
}

pub(super) fn list(req: &proto::ListPrivacyRequestsRequest) -> Result<ListQuery> {
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
        Jurisdiction::parse_optional(&req.jurisdiction).map(|j| j.map(|j| j.as_str().to_owned())),
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
        req.subject_id, req.state, req.request_type, req.jurisdiction, req.overdue, req.due_before
    );
    let after = v.check(
        "page_token",
        PageToken::decode::<i64>(&filters, &req.page_token),
    );
    let parsed = (|| {
        Some(ListQuery {
            filter: ListFilter {
                subject_id: subject_id?,
                state: state?,
                request_type: request_type?,
                jurisdiction: jurisdiction?,
                overdue: req.overdue,
                due_before: due_before?,
            },
            after: after?.unwrap_or(0),
            limit: limit?,
            filters,
        })
    })();
    all_valid(v, parsed)
}

/// The year of GetRequestMetrics.
pub(super) fn metrics_year(req: &proto::GetRequestMetricsRequest) -> Result<i32> {
    if !(2000..=9998).contains(&req.year) {
        return Err(Error::invalid("year", "must be a year from 2000 to 9998"));
    }
    Ok(req.year)
}

/// The identifiers CheckSuppression asks about, the subject id last.
pub(super) fn suppression(
    req: &proto::CheckSuppressionRequest,
) -> Result<Vec<(IdentifierKind, String)>> {
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
    Ok(ids)
}
