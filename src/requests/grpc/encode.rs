//! Domain values to `privacy.v1` messages: requests, jurisdiction rules,
//! metrics, access packages and suppression answers. No I/O.
use chrono::{NaiveDate, Utc};
use sha2::{Digest, Sha256};

use super::super::metrics;
use super::super::model::{DenialReason, State};
use super::super::queries::Listed;
use super::super::service::{self, RequestView};
use crate::config::RequestSettings;
use crate::convert::{opt_timestamp, timestamp};
use crate::error::Error;
use crate::identifiers::IdentifierKind;
use crate::names::RequestRef;
use crate::proto::{self, privacy_request};
use crate::rules::{self, Cite, Cited, JurisdictionRules, Period, RequestType, Unit};
use crate::tokens::PageToken;

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
pub(super) fn request_type(t: RequestType) -> i32 {
    proto::RequestType::from_str_name(&t.as_str().to_ascii_uppercase()).map_or(0, |v| v as i32)
}

fn date(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub(super) fn rules_to_proto(
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

fn state_to_proto(s: State) -> i32 {
    privacy_request::State::from_str_name(s.as_str()).map_or(0, |v| v as i32)
}

fn date_str(d: Option<NaiveDate>) -> String {
    d.map(date).unwrap_or_default()
}

pub(super) fn request_to_proto(
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

pub(super) fn metrics_to_proto(m: &metrics::YearMetrics) -> proto::RequestMetrics {
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

/// A page of requests; the next page's token (bound to the filters) when
/// more follow.
pub(super) fn page(
    listed: &Listed,
    filters: &str,
    today: NaiveDate,
    settings: &RequestSettings,
) -> proto::ListPrivacyRequestsResponse {
    let next_page_token = match listed.requests.last() {
        Some(last) if listed.more => PageToken::encode(filters, &last.request.id),
        _ => String::new(),
    };
    proto::ListPrivacyRequestsResponse {
        privacy_requests: listed
            .requests
            .iter()
            .map(|view| request_to_proto(view, today, settings))
            .collect(),
        next_page_token,
    }
}

/// The access package of request `id`: its JSON, pretty-printed, with the
/// content's digest so a recipient can check what it received.
pub(super) fn access_package(
    id: i64,
    package: &serde_json::Value,
) -> Result<proto::AccessPackage, Error> {
    let content =
        serde_json::to_string_pretty(package).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(proto::AccessPackage {
        privacy_request: RequestRef(id).name(),
        content_type: "application/json".into(),
        content_sha256: hex::encode(Sha256::digest(content.as_bytes())),
        content,
        generate_time: Some(timestamp(Utc::now())),
    })
}

/// Which of the identifiers asked about are suppressed, by kind.
pub(super) fn suppression(matched_kinds: Vec<String>) -> proto::CheckSuppressionResponse {
    let subject_id_matched = matched_kinds
        .iter()
        .any(|k| k == IdentifierKind::SubjectId.as_str());
    let mut matched_identifier_kinds: Vec<i32> = matched_kinds
        .iter()
        .filter_map(|k| proto::identifier::Kind::from_str_name(k).map(|v| v as i32))
        .collect();
    matched_identifier_kinds.sort_unstable();
    #[allow(deprecated)] // still filled for callers that read it
    proto::CheckSuppressionResponse {
        suppressed: !matched_kinds.is_empty(),
        matched_kinds,
        matched_identifier_kinds,
        subject_id_matched,
    }
}

/// Every jurisdiction's rules, then the defaults.
pub(super) fn rules_list(
    table: &rules::RulesTable,
    voluntary_agents: bool,
) -> proto::ListJurisdictionRulesResponse {
    proto::ListJurisdictionRulesResponse {
        jurisdiction_rules: table
            .entries()
            .chain(std::iter::once(table.defaults()))
            .map(|r| rules_to_proto(r, "", table, voluntary_agents))
            .collect(),
        table_version: table.version().to_owned(),
        table_checked_date: date(table.checked()),
    }
}
