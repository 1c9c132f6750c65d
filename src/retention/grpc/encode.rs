//! From the retention domain's values to `privacy.v1.RetentionService`
//! messages.
use super::super::model::{EntryRow, HoldRow, LegalKeep, PolicyRow, RecordOfProcessing, Schedule};
use super::super::sweeper::SweepTotals;
use crate::convert::{opt_timestamp, timestamp};
use crate::proto;
use crate::rules::Unit;

fn unit_to_proto(u: &str) -> i32 {
    match Unit::parse(u) {
        Some(Unit::Months) => proto::PeriodUnit::Months as i32,
        Some(Unit::BusinessDays) => proto::PeriodUnit::BusinessDays as i32,
        _ => proto::PeriodUnit::CalendarDays as i32,
    }
}

fn trigger_to_proto(t: &str) -> i32 {
    proto::retention_policy::Trigger::from_str_name(t).map_or(0, |v| v as i32)
}

fn action_to_proto(a: &str) -> i32 {
    proto::retention_policy::Action::from_str_name(a).map_or(0, |v| v as i32)
}

/// What the law keeps, as the API shows it (on a request and on a schedule).
pub fn legal_keep_to_proto(k: &LegalKeep) -> proto::LegalKeep {
    proto::LegalKeep {
        category: k.category.clone(),
        data_system: format!("dataSystems/{}", k.data_system_id),
        legal_reason: k.legal_reason.clone(),
        keep_until: opt_timestamp(k.keep_until),
        period: Some(proto::Period {
            amount: u32::try_from(k.period_amount).unwrap_or(0),
            unit: unit_to_proto(&k.period_unit),
        }),
        trigger: k.trigger.clone(),
    }
}

pub fn policy_to_proto(p: &PolicyRow) -> proto::RetentionPolicy {
    proto::RetentionPolicy {
        name: format!("retentionPolicies/{}", p.category),
        category: p.category.clone(),
        trigger: trigger_to_proto(&p.trigger),
        period: Some(proto::Period {
            amount: u32::try_from(p.period_amount).unwrap_or(0),
            unit: unit_to_proto(&p.period_unit),
        }),
        action: action_to_proto(&p.action),
        legal_reason: p.legal_reason.clone(),
        update_time: Some(timestamp(p.update_time)),
    }
}

pub fn entry_to_proto(e: &EntryRow) -> proto::ScheduleEntry {
    proto::ScheduleEntry {
        subject_id: e.subject_id.clone(),
        category: e.category.clone(),
        data_system: format!("dataSystems/{}", e.data_system_id),
        trigger: trigger_to_proto(&e.trigger),
        anchor_time: Some(timestamp(e.anchor_time)),
        due_time: Some(timestamp(e.due_time)),
        action: action_to_proto(&e.action),
        state: proto::schedule_entry::State::from_str_name(&e.state).map_or(0, |v| v as i32),
        task: e.task_id.map(|t| format!("tasks/{t}")).unwrap_or_default(),
        held_by: e.held_by.clone(),
        overridden: e.overridden,
    }
}

pub fn hold_to_proto(h: &HoldRow) -> proto::LegalHold {
    proto::LegalHold {
        name: format!("legalHolds/{}", h.id),
        subject_id: h.subject_id.clone().unwrap_or_default(),
        category: h.category.clone().unwrap_or_default(),
        data_system: h
            .data_system_id
            .as_ref()
            .map(|s| format!("dataSystems/{s}"))
            .unwrap_or_default(),
        reason: h.reason.clone(),
        end_time: opt_timestamp(h.end_time),
        place_time: Some(timestamp(h.place_time)),
        placed_by: h.placed_by.clone(),
        release_time: opt_timestamp(h.release_time),
        released_by: h.released_by.clone().unwrap_or_default(),
        active: h.active,
    }
}

pub fn categories(categories: Vec<(String, String)>) -> proto::ListDataCategoriesResponse {
    proto::ListDataCategoriesResponse {
        data_categories: categories
            .into_iter()
            .map(|(key, description)| proto::DataCategory { key, description })
            .collect(),
    }
}

pub fn policies(policies: &[PolicyRow]) -> proto::ListRetentionPoliciesResponse {
    proto::ListRetentionPoliciesResponse {
        retention_policies: policies.iter().map(policy_to_proto).collect(),
    }
}

pub fn changed_entries(changed: &[EntryRow]) -> proto::RecordLifecycleEventResponse {
    proto::RecordLifecycleEventResponse {
        changed: changed.iter().map(entry_to_proto).collect(),
    }
}

pub fn holds(holds: &[HoldRow]) -> proto::ListLegalHoldsResponse {
    proto::ListLegalHoldsResponse {
        legal_holds: holds.iter().map(hold_to_proto).collect(),
    }
}

impl From<SweepTotals> for proto::RunRetentionSweepResponse {
    fn from(totals: SweepTotals) -> Self {
        proto::RunRetentionSweepResponse {
            tasks_created: totals.tasks_created,
            entries_held: totals.entries_held,
            entries_released: totals.entries_released,
            requests_minimized: totals.requests_minimized,
            idempotency_keys_pruned: totals.idempotency_keys_pruned,
        }
    }
}

impl From<RecordOfProcessing> for proto::RecordOfProcessing {
    fn from(record: RecordOfProcessing) -> Self {
        let policies = record.policies;
        let entries = record
            .systems
            .into_iter()
            .map(|s| proto::ProcessingEntry {
                data_system: format!("dataSystems/{}", s.id),
                display_name: s.display_name,
                kind: s.kind,
                transfer_outside_eea: !crate::rules::gdpr_applies_in(&s.country),
                country: s.country,
                description: s.description,
                categories: s
                    .categories
                    .into_iter()
                    .map(|c| proto::ProcessedCategory {
                        retention_policy: policies
                            .iter()
                            .find(|p| p.category == c)
                            .map(policy_to_proto),
                        category: c,
                    })
                    .collect(),
            })
            .collect();
        proto::RecordOfProcessing {
            generate_time: Some(timestamp(record.generate_time)),
            entries,
        }
    }
}

impl From<&Schedule> for proto::RetentionSchedule {
    fn from(s: &Schedule) -> Self {
        proto::RetentionSchedule {
            subject_id: s.subject_id.as_str().to_owned(),
            entries: s.entries.iter().map(entry_to_proto).collect(),
            legal_holds: s.holds.iter().map(hold_to_proto).collect(),
            kept_for_legal_reasons: s
                .kept_for_legal_reasons
                .iter()
                .map(policy_to_proto)
                .collect(),
            legal_keeps: s.legal_keeps.iter().map(legal_keep_to_proto).collect(),
        }
    }
}
