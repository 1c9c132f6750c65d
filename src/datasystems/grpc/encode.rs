//! From the data-system domain's values to `privacy.v1.DataSystemService`
//! messages.
use super::super::model::{
    DataAction, DataSystem, Disclosure, DisclosureBasis, DisclosureReport, Task, TaskResult,
    name_of_system,
};
use crate::convert::{opt_timestamp, timestamp};
use crate::proto;

/// A proto enum value from a domain enum, by their shared names.
fn to_proto<P: Into<i32>>(name: &str, from_str_name: fn(&str) -> Option<P>) -> i32 {
    from_str_name(name).map_or(0, Into::into)
}

fn action_to_proto(a: DataAction) -> i32 {
    to_proto(a.as_str(), proto::DataAction::from_str_name)
}

fn basis_to_proto(b: DisclosureBasis) -> i32 {
    to_proto(b.as_str(), proto::DisclosureBasis::from_str_name)
}

pub fn system_to_proto(s: &DataSystem) -> proto::DataSystem {
    proto::DataSystem {
        name: name_of_system(&s.id),
        id: s.id.clone(),
        display_name: s.display_name.clone(),
        kind: to_proto(s.kind.as_str(), proto::data_system::Kind::from_str_name),
        categories: s.categories.clone(),
        country: s.country.clone(),
        actions: s.actions.iter().copied().map(action_to_proto).collect(),
        description: s.description.clone(),
        create_time: Some(timestamp(s.create_time)),
        update_time: Some(timestamp(s.update_time)),
    }
}

pub fn systems_page(systems: &[DataSystem], next: String) -> proto::ListDataSystemsResponse {
    proto::ListDataSystemsResponse {
        data_systems: systems.iter().map(system_to_proto).collect(),
        next_page_token: next,
    }
}

fn result_to_proto(r: &TaskResult) -> proto::TaskResult {
    proto::TaskResult {
        records_affected: r.records_affected,
        content_sha256: r.content_sha256.clone().unwrap_or_default(),
        system_reference: r.system_reference.clone(),
        export_json: r.export_json.clone().unwrap_or_default(),
        exempt: r.exempt_reason.is_some(),
        exempt_reason: r.exempt_reason.clone().unwrap_or_default(),
    }
}

/// A task as anyone may read it: without its lease id.
pub fn task_to_proto(t: &Task) -> proto::Task {
    proto::Task {
        name: t.name(),
        id: t.id.to_string(),
        data_system: name_of_system(&t.data_system_id),
        privacy_request: t
            .privacy_request_id
            .map(|id| format!("privacyRequests/{id}"))
            .unwrap_or_default(),
        subject_id: t.subject_id.clone(),
        action: action_to_proto(t.action),
        categories: t.categories.clone(),
        corrections: t
            .corrections
            .iter()
            .map(|c| proto::FieldCorrection {
                field: c.field.clone(),
                current_value: c.current_value.clone(),
                corrected_value: c.corrected_value.clone(),
            })
            .collect(),
        state: to_proto(t.state.as_str(), proto::task::State::from_str_name),
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        worker: t.worker.clone().unwrap_or_default(),
        lease_id: String::new(),
        lease_expire_time: opt_timestamp(t.lease_expire_time),
        result: t.result.as_ref().map(result_to_proto),
        last_error: t.last_error.clone().unwrap_or_default(),
        create_time: Some(timestamp(t.create_time)),
        update_time: Some(timestamp(t.update_time)),
    }
}

/// A task as its claimer sees it: with the lease id.
pub fn leased_task_to_proto(t: &Task) -> proto::Task {
    proto::Task {
        lease_id: t.lease_id.map(|l| l.to_string()).unwrap_or_default(),
        ..task_to_proto(t)
    }
}

pub fn claimed(tasks: &[Task]) -> proto::ClaimTasksResponse {
    proto::ClaimTasksResponse {
        tasks: tasks.iter().map(leased_task_to_proto).collect(),
    }
}

pub fn tasks_page(tasks: &[Task], next: String) -> proto::ListTasksResponse {
    proto::ListTasksResponse {
        tasks: tasks.iter().map(task_to_proto).collect(),
        next_page_token: next,
    }
}

pub fn disclosure_to_proto(d: &Disclosure) -> proto::Disclosure {
    proto::Disclosure {
        name: format!("disclosures/{}", d.id),
        subject_id: d.subject_id.clone().unwrap_or_default(),
        recipient: d.recipient.clone(),
        categories: d.categories.clone(),
        basis: basis_to_proto(d.basis),
        purpose: d.purpose.clone().unwrap_or_default(),
        disclose_time: Some(timestamp(d.disclose_time)),
        contradicts_prohibited_purpose: d.contradicted_purpose.is_some(),
        contradicted_purpose: d.contradicted_purpose.clone().unwrap_or_default(),
    }
}

impl From<&DisclosureReport> for proto::DisclosureReport {
    fn from(report: &DisclosureReport) -> Self {
        let mut counts: Vec<proto::DisclosureCount> = report
            .counts
            .iter()
            .map(|(basis, n)| proto::DisclosureCount {
                basis: basis_to_proto(*basis),
                count: i32::try_from(*n).unwrap_or(i32::MAX),
            })
            .collect();
        counts.sort_by_key(|c| c.basis);
        proto::DisclosureReport {
            start_time: Some(timestamp(report.start_time)),
            end_time: Some(timestamp(report.end_time)),
            counts,
            sold: report.sold(),
            shared: report.shared(),
            flagged: report.flagged.iter().map(disclosure_to_proto).collect(),
        }
    }
}
