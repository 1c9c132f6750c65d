//! From `privacy.v1.DataSystemService` requests to the data-system domain's
//! values; every invalid field is reported, by its path in the request.
use chrono::{DateTime, Utc};

use super::super::model::{
    Category, Claim, Country, DataAction, DataSystemFields, DataSystemId, DisclosureBasis, Kind,
    LeaseId, NewDisclosure, Page, TaskFilter, TaskId, TaskResult, TaskState, parse_lease_seconds,
    parse_max_tasks, parse_request_name, parse_sha256,
};
use crate::convert::{parse_opt_timestamp, parse_timestamp};
use crate::error::{Error, Result, Violations};
use crate::idempotency::RequestId;
use crate::names::{
    PurposeKey, SubjectId, parse_identifier_text, parse_required_identifier, parse_required_text,
    parse_text,
};
use crate::proto;
use crate::rpc::not_in_future;
use crate::tokens::{PageToken, page_size};

/// The largest export a task may return.
const MAX_EXPORT_BYTES: usize = 1024 * 1024;

/// A domain enum from a proto enum value, by their shared names (the
/// `*_UNSPECIFIED` values have none).
fn from_proto<P: TryFrom<i32>, D>(
    value: i32,
    name: fn(&P) -> &'static str,
    from_db: fn(&str) -> Option<D>,
) -> Option<D> {
    P::try_from(value).ok().and_then(|p| from_db(name(&p)))
}

/// An optional field: empty means none.
fn optional<T>(
    v: &mut Violations,
    field: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    if raw.is_empty() {
        Some(None)
    } else {
        v.check(field, parse(raw).map(Some))
    }
}

/// 1-50 categories; repeats are dropped (the first place kept).
fn parse_categories(v: &mut Violations, field: &str, raw: &[String]) -> Option<Vec<Category>> {
    if raw.is_empty() {
        v.add(field, "needs at least one category");
        return None;
    }
    if raw.len() > 50 {
        v.add(field, "must have at most 50 entries");
        return None;
    }
    let mut out: Vec<Category> = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (i, c) in raw.iter().enumerate() {
        match Category::parse(c) {
            Ok(c) if !out.contains(&c) => out.push(c),
            Ok(_) => {}
            Err(e) => {
                v.add(format!("{field}[{i}]"), e);
                valid = false;
            }
        }
    }
    valid.then_some(out)
}

/// At least one action; repeats are dropped.
fn parse_actions(v: &mut Violations, field: &str, raw: &[i32]) -> Option<Vec<DataAction>> {
    if raw.is_empty() {
        v.add(field, "needs at least one action");
        return None;
    }
    if raw.len() > 50 {
        v.add(field, "must have at most 50 entries");
        return None;
    }
    let mut out = Vec::new();
    let mut valid = true;
    for (i, a) in raw.iter().enumerate() {
        match from_proto(*a, proto::DataAction::as_str_name, DataAction::from_db) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => {
                v.add(
                    format!("{field}[{i}]"),
                    "must be EXPORT, DELETE, CORRECT, SUPPRESS or RESTRICT",
                );
                valid = false;
            }
        }
    }
    valid.then_some(out)
}

fn parse_data_system(
    v: &mut Violations,
    s: Option<&proto::DataSystem>,
) -> Option<DataSystemFields> {
    let Some(s) = s else {
        v.add("data_system", "is required");
        return None;
    };
    let id = v.check("data_system.id", DataSystemId::parse(&s.id));
    let display_name = v.check(
        "data_system.display_name",
        parse_required_text(&s.display_name, 200),
    );
    let kind = v.check(
        "data_system.kind",
        from_proto(s.kind, proto::data_system::Kind::as_str_name, Kind::from_db)
            .ok_or_else(|| "must be INTERNAL or PROCESSOR".to_string()),
    );
    let categories = parse_categories(v, "data_system.categories", &s.categories);
    let country = v.check("data_system.country", Country::parse(&s.country));
    let actions = parse_actions(v, "data_system.actions", &s.actions);
    let description = v.check("data_system.description", parse_text(&s.description, 2000));
    Some(DataSystemFields {
        id: id?,
        display_name: display_name?,
        kind: kind?,
        categories: categories?,
        country: country?,
        actions: actions?,
        description: description?,
    })
}

fn parse_result(v: &mut Violations, r: Option<&proto::TaskResult>) -> Option<TaskResult> {
    let Some(r) = r else {
        v.add("result", "is required");
        return None;
    };
    let records_affected = if r.records_affected < 0 {
        v.add("result.records_affected", "must not be negative");
        None
    } else {
        Some(r.records_affected)
    };
    let content_sha256 = optional(v, "result.content_sha256", &r.content_sha256, parse_sha256);
    let system_reference = v.check(
        "result.system_reference",
        parse_identifier_text(&r.system_reference, 500),
    );
    let export_json = v.check("result.export_json", parse_export(&r.export_json));
    let exempt_reason = match (r.exempt, r.exempt_reason.trim().is_empty()) {
        (true, true) => {
            v.add("result.exempt_reason", "is required when exempt");
            None
        }
        (true, false) => v.check(
            "result.exempt_reason",
            parse_text(&r.exempt_reason, 1000).map(Some),
        ),
        (false, _) if !r.exempt_reason.is_empty() => {
            v.add("result.exempt_reason", "must be empty unless exempt");
            None
        }
        (false, _) => Some(None),
    };
    Some(TaskResult {
        records_affected: records_affected?,
        content_sha256: content_sha256?,
        system_reference: system_reference?,
        export_json: export_json?,
        exempt_reason: exempt_reason?,
    })
}

/// Empty, or a JSON document of at most 1 MiB, kept as sent.
fn parse_export(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_EXPORT_BYTES {
        return Err("must be at most 1 MiB".into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(raw)
        .map(|_| Some(raw.to_owned()))
        .map_err(|e| format!("is not valid JSON: {e}"))
}

fn parse_task_state(value: i32) -> Result<Option<TaskState>, String> {
    if value == 0 {
        return Ok(None);
    }
    from_proto(value, proto::task::State::as_str_name, TaskState::from_db)
        .map(Some)
        .ok_or_else(|| "is not a task state".into())
}

fn parse_new_disclosure(
    v: &mut Violations,
    d: Option<&proto::Disclosure>,
) -> Option<NewDisclosure> {
    let Some(d) = d else {
        v.add("disclosure", "is required");
        return None;
    };
    let subject_id = optional(v, "disclosure.subject_id", &d.subject_id, SubjectId::parse);
    let recipient = v.check(
        "disclosure.recipient",
        parse_required_text(&d.recipient, 200),
    );
    let categories = parse_categories(v, "disclosure.categories", &d.categories);
    let basis = v.check(
        "disclosure.basis",
        from_proto(
            d.basis,
            proto::DisclosureBasis::as_str_name,
            DisclosureBasis::from_db,
        )
        .ok_or_else(|| {
            "must be SERVICE_PROVIDER, LEGAL_OBLIGATION, FRAUD_PREVENTION, SALE or SHARING"
                .to_string()
        }),
    );
    let purpose = optional(v, "disclosure.purpose", &d.purpose, PurposeKey::parse);
    let disclose_time = v.check(
        "disclosure.disclose_time",
        // Like every other time in the contract, an unset time is now.
        d.disclose_time
            .as_ref()
            .map_or_else(|| Ok(Utc::now()), parse_timestamp)
            .and_then(not_in_future),
    );
    Some(NewDisclosure {
        subject_id: subject_id?,
        recipient: recipient?,
        categories: categories?,
        basis: basis?,
        purpose: purpose?,
        disclose_time: disclose_time?,
    })
}

pub fn register_data_system(
    req: &proto::RegisterDataSystemRequest,
) -> Result<(RequestId, DataSystemFields)> {
    RequestId::parse_with(&req.request_id, |v| {
        parse_data_system(v, req.data_system.as_ref())
    })
}

pub fn get_data_system(req: &proto::GetDataSystemRequest) -> Result<DataSystemId> {
    DataSystemId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))
}

pub fn list_data_systems(req: &proto::ListDataSystemsRequest) -> Result<Page<String>> {
    const FILTERS: &str = "data_systems";
    Violations::collect(|v| {
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check(
            "page_token",
            PageToken::decode::<String>(FILTERS, &req.page_token),
        );
        Some(Page {
            limit: limit?,
            after: after?,
            token_filters: FILTERS.to_owned(),
        })
    })
}

pub fn claim_tasks(req: &proto::ClaimTasksRequest) -> Result<(RequestId, Claim)> {
    RequestId::parse_with(&req.request_id, |v| {
        let data_system = v.check("data_system", DataSystemId::parse_name(&req.data_system));
        let worker = v.check("worker", parse_required_identifier(&req.worker, 200));
        let max_tasks = v.check("max_tasks", parse_max_tasks(req.max_tasks));
        let lease_seconds = v.check("lease_seconds", parse_lease_seconds(req.lease_seconds));
        Some(Claim {
            data_system: data_system?,
            worker: worker?,
            max_tasks: max_tasks?,
            lease_seconds: lease_seconds?,
        })
    })
}

/// The task, the lease held on it, and the seconds to extend it by.
pub fn renew_task_lease(
    req: &proto::RenewTaskLeaseRequest,
) -> Result<(RequestId, (TaskId, LeaseId, i32))> {
    RequestId::parse_with(&req.request_id, |v| {
        let id = v.check("name", TaskId::parse_name(&req.name));
        let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
        let seconds = v.check("lease_seconds", parse_lease_seconds(req.lease_seconds));
        Some((id?, lease?, seconds?))
    })
}

/// The task, the lease held on it, and what the work came to.
pub fn complete_task(
    req: &proto::CompleteTaskRequest,
) -> Result<(RequestId, (TaskId, LeaseId, TaskResult))> {
    RequestId::parse_with(&req.request_id, |v| {
        let id = v.check("name", TaskId::parse_name(&req.name));
        let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
        let result = parse_result(v, req.result.as_ref());
        Some((id?, lease?, result?))
    })
}

/// The task, the lease held on it, whether a retry may help, and why it
/// failed.
pub fn fail_task(
    req: &proto::FailTaskRequest,
) -> Result<(RequestId, (TaskId, LeaseId, bool, String))> {
    RequestId::parse_with(&req.request_id, |v| {
        let id = v.check("name", TaskId::parse_name(&req.name));
        let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
        let message = v.check(
            "error_message",
            parse_required_text(&req.error_message, 2000),
        );
        Some((id?, lease?, req.retryable, message?))
    })
}

pub fn get_task(req: &proto::GetTaskRequest) -> Result<TaskId> {
    TaskId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))
}

pub fn list_tasks(req: &proto::ListTasksRequest) -> Result<(TaskFilter, Page<i64>)> {
    Violations::collect(|v| {
        let data_system = optional(v, "data_system", &req.data_system, DataSystemId::parse_name);
        let privacy_request_id = optional(
            v,
            "privacy_request",
            &req.privacy_request,
            parse_request_name,
        );
        let state = v.check("state", parse_task_state(req.state));
        let subject_id = optional(v, "subject_id", &req.subject_id, SubjectId::parse);
        let limit = v.check("page_size", page_size(req.page_size));
        let token_filters = format!(
            "tasks:{}:{}:{}:{}",
            req.data_system, req.privacy_request, req.state, req.subject_id
        );
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&token_filters, &req.page_token),
        );
        let filter = TaskFilter {
            data_system: data_system?,
            privacy_request_id: privacy_request_id?,
            state: state?,
            subject_id: subject_id?,
        };
        Some((
            filter,
            Page {
                limit: limit?,
                after: after?,
                token_filters,
            },
        ))
    })
}

pub fn record_disclosure(
    req: &proto::RecordDisclosureRequest,
) -> Result<(RequestId, NewDisclosure)> {
    RequestId::parse_with(&req.request_id, |v| {
        parse_new_disclosure(v, req.disclosure.as_ref())
    })
}

/// The end of the report's 12 months, if not now.
pub fn get_disclosure_report(
    req: &proto::GetDisclosureReportRequest,
) -> Result<Option<DateTime<Utc>>> {
    parse_opt_timestamp(req.as_of.as_ref()).map_err(|e| Error::invalid("as_of", e))
}
