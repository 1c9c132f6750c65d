//! From `privacy.v1.RetentionService` requests to the retention domain's
//! values; every invalid field is reported, by its path in the request.
use chrono::Utc;

use super::super::model::{
    EventKind, LifecycleEvent, NewLegalHold, NewOverride, RetentionAction, RetentionPeriod, Trigger,
};
use super::super::service::NewPolicy;
use crate::convert::parse_opt_timestamp;
use crate::datasystems::model::{DataSystemId, parse_category};
use crate::error::{Error, Result};
use crate::idempotency::RequestId;
use crate::names::{SubjectId, parse_required_text, parse_text};
use crate::proto;
use crate::rpc::not_in_future;
use crate::rules::Unit;

const MAX_TEXT: usize = 2000;

fn optional<T>(raw: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

fn subject_text(raw: &str) -> Result<String, String> {
    SubjectId::parse(raw).map(|s| s.as_str().to_owned())
}

fn parse_period(p: Option<&proto::Period>) -> Result<RetentionPeriod, String> {
    let p = p.ok_or("is required")?;
    let unit = match proto::PeriodUnit::try_from(p.unit) {
        Ok(proto::PeriodUnit::CalendarDays) => Unit::CalendarDays,
        Ok(proto::PeriodUnit::Months) => Unit::Months,
        _ => return Err("unit must be CALENDAR_DAYS or MONTHS".into()),
    };
    RetentionPeriod::parse(p.amount, unit)
}

fn parse_hold_name(name: &str) -> Result<i64, String> {
    crate::convert::parse_numbered_name(name, "legalHolds").ok_or_else(|| {
        "must be \"legalHolds/{id}\" with a positive numeric id, without a sign or leading zeros"
            .into()
    })
}

/// The policy of CreateRetentionPolicy and UpdateRetentionPolicy.
pub fn policy(
    request_id: &str,
    policy: Option<&proto::RetentionPolicy>,
) -> Result<(RequestId, NewPolicy)> {
    RequestId::parse_with(request_id, |v| {
        if policy.is_none() {
            v.add("retention_policy", "is required");
        }
        let default = proto::RetentionPolicy::default();
        let p = policy.unwrap_or(&default);
        let category = v.check("retention_policy.category", parse_category(&p.category));
        let trigger = v.check(
            "retention_policy.trigger",
            proto::retention_policy::Trigger::try_from(p.trigger)
                .ok()
                .and_then(|t| Trigger::from_db(t.as_str_name()))
                .ok_or_else(|| "must be CREATED, LAST_ACTIVITY, ACCOUNT_CLOSED, CONTRACT_ENDED or CONSENT_WITHDRAWN".to_owned()),
        );
        let period = v.check("retention_policy.period", parse_period(p.period.as_ref()));
        let action = v.check(
            "retention_policy.action",
            proto::retention_policy::Action::try_from(p.action)
                .ok()
                .and_then(|a| RetentionAction::from_db(a.as_str_name()))
                .ok_or_else(|| "must be DELETE or ANONYMIZE".to_owned()),
        );
        let legal_reason = v.check(
            "retention_policy.legal_reason",
            parse_text(&p.legal_reason, MAX_TEXT),
        );
        Some(NewPolicy {
            category: category?,
            trigger: trigger?,
            period: period?,
            action: action?,
            legal_reason: legal_reason?,
        })
    })
}

pub fn get_retention_policy(req: &proto::GetRetentionPolicyRequest) -> Result<String> {
    req.name
        .strip_prefix("retentionPolicies/")
        .ok_or_else(|| "must be \"retentionPolicies/{category}\"".to_owned())
        .and_then(parse_category)
        .map_err(|e| Error::invalid("name", e))
}

pub fn set_retention_override(
    req: &proto::SetRetentionOverrideRequest,
) -> Result<(RequestId, NewOverride)> {
    RequestId::parse_with(&req.request_id, |v| {
        if req.retention_override.is_none() {
            v.add("retention_override", "is required");
        }
        let default = proto::RetentionOverride::default();
        let o = req.retention_override.as_ref().unwrap_or(&default);
        let subject_id = v.check(
            "retention_override.subject_id",
            SubjectId::parse(&o.subject_id),
        );
        let category = v.check("retention_override.category", parse_category(&o.category));
        let period = v.check("retention_override.period", parse_period(o.period.as_ref()));
        let reason = v.check(
            "retention_override.reason",
            parse_required_text(&o.reason, MAX_TEXT),
        );
        Some(NewOverride {
            subject_id: subject_id?,
            category: category?,
            period: period?,
            reason: reason?,
        })
    })
}

pub fn record_lifecycle_event(
    req: &proto::RecordLifecycleEventRequest,
) -> Result<(RequestId, LifecycleEvent)> {
    RequestId::parse_with(&req.request_id, |v| {
        let subject_id = v.check("subject_id", SubjectId::parse(&req.subject_id));
        let category = v.check("category", optional(&req.category, parse_category));
        let data_system = v.check(
            "data_system",
            optional(&req.data_system, DataSystemId::parse_name),
        );
        let event = v.check(
            "event",
            proto::lifecycle_event::Kind::try_from(req.event)
                .ok()
                .and_then(|k| EventKind::from_db(k.as_str_name()))
                .ok_or_else(|| {
                    "must be CREATED, ACTIVITY, ACCOUNT_CLOSED, CONTRACT_ENDED or CONSENT_WITHDRAWN"
                        .to_owned()
                }),
        );
        let at = v.check(
            "event_time",
            parse_opt_timestamp(req.event_time.as_ref())
                .and_then(|t| t.map(not_in_future).transpose()),
        );
        Some(LifecycleEvent {
            subject_id: subject_id?,
            category: category?,
            data_system: data_system?,
            event: event?,
            at: at?.unwrap_or_else(Utc::now),
        })
    })
}

pub fn place_legal_hold(req: &proto::PlaceLegalHoldRequest) -> Result<(RequestId, NewLegalHold)> {
    RequestId::parse_with(&req.request_id, |v| {
        let default = proto::LegalHold::default();
        let h = req.legal_hold.as_ref().unwrap_or(&default);
        let subject_id = v.check(
            "legal_hold.subject_id",
            optional(&h.subject_id, subject_text),
        );
        let category = v.check("legal_hold.category", optional(&h.category, parse_category));
        let data_system = v.check(
            "legal_hold.data_system",
            optional(&h.data_system, DataSystemId::parse_name),
        );
        let reason = v.check(
            "legal_hold.reason",
            parse_required_text(&h.reason, MAX_TEXT),
        );
        let end_time = v.check(
            "legal_hold.end_time",
            parse_opt_timestamp(h.end_time.as_ref()).and_then(|t| match t {
                Some(t) if t <= Utc::now() => Err("must be in the future".to_owned()),
                t => Ok(t),
            }),
        );
        if h.subject_id.is_empty() && h.category.is_empty() && h.data_system.is_empty() {
            v.add(
                "legal_hold",
                "needs a scope: at least one of subject_id, category, data_system",
            );
        }
        Some(NewLegalHold {
            subject_id: subject_id?,
            category: category?,
            data_system: data_system?,
            reason: reason?,
            end_time: end_time?,
        })
    })
}

/// The hold's id and the reason for releasing it.
pub fn release_legal_hold(
    req: &proto::ReleaseLegalHoldRequest,
) -> Result<(RequestId, (i64, String))> {
    RequestId::parse_with(&req.request_id, |v| {
        let id = v.check("name", parse_hold_name(&req.name));
        let reason = v.check("reason", parse_required_text(&req.reason, MAX_TEXT));
        Some((id?, reason?))
    })
}

/// The subject whose holds to list, if one is named.
pub fn list_legal_holds(req: &proto::ListLegalHoldsRequest) -> Result<Option<String>> {
    optional(&req.subject_id, subject_text).map_err(|e| Error::invalid("subject_id", e))
}

pub fn run_retention_sweep(req: &proto::RunRetentionSweepRequest) -> Result<RequestId> {
    RequestId::parse(&req.request_id).map_err(|e| Error::invalid("request_id", e))
}

pub fn get_retention_schedule(req: &proto::GetRetentionScheduleRequest) -> Result<SubjectId> {
    SubjectId::parse(&req.subject_id).map_err(|e| Error::invalid("subject_id", e))
}
