//! The retention domain's values.
use chrono::{DateTime, Utc};

use crate::datasystems::model::DataSystemId;
use crate::names::{SubjectId, string_enum};

string_enum!(
    /// What starts a retention clock.
    Trigger {
        Created = "CREATED",
        LastActivity = "LAST_ACTIVITY",
        AccountClosed = "ACCOUNT_CLOSED",
        ContractEnded = "CONTRACT_ENDED",
        ConsentWithdrawn = "CONSENT_WITHDRAWN",
    }
);

string_enum!(
    /// What happens when the period is over.
    RetentionAction { Delete = "DELETE", Anonymize = "ANONYMIZE" }
);

string_enum!(
    /// A lifecycle event of a subject's data.
    EventKind {
        Created = "CREATED",
        Activity = "ACTIVITY",
        AccountClosed = "ACCOUNT_CLOSED",
        ContractEnded = "CONTRACT_ENDED",
        ConsentWithdrawn = "CONSENT_WITHDRAWN",
    }
);

impl EventKind {
    /// The policy triggers this event starts or moves: creation is also
    /// activity, so it moves "last activity" clocks too.
    pub fn triggers(self) -> &'static [Trigger] {
        match self {
            EventKind::Created => &[Trigger::Created, Trigger::LastActivity],
            EventKind::Activity => &[Trigger::LastActivity],
            EventKind::AccountClosed => &[Trigger::AccountClosed],
            EventKind::ContractEnded => &[Trigger::ContractEnded],
            EventKind::ConsentWithdrawn => &[Trigger::ConsentWithdrawn],
        }
    }
}

/// A retention period: calendar days or months (the units the policies use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPeriod {
    pub amount: i32,
    pub unit: crate::rules::Unit,
}

impl RetentionPeriod {
    pub fn parse(amount: u32, unit: crate::rules::Unit) -> Result<Self, String> {
        if unit == crate::rules::Unit::BusinessDays {
            return Err("must be in CALENDAR_DAYS or MONTHS".into());
        }
        if amount == 0 || amount > 1200 {
            return Err("amount must be 1 to 1200".into());
        }
        Ok(RetentionPeriod {
            amount: amount as i32,
            unit,
        })
    }
}

/// Whether `set_policy` may add a policy, replace one, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Create,
    Replace,
}

/// A policy as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyRow {
    pub category: String,
    pub trigger: String,
    pub period_amount: i32,
    pub period_unit: String,
    pub action: String,
    pub legal_reason: String,
    pub update_time: DateTime<Utc>,
}

/// A schedule entry as stored, with the holds that cover it now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    pub subject_id: String,
    pub category: String,
    pub data_system_id: String,
    pub trigger: String,
    pub anchor_time: DateTime<Utc>,
    pub due_time: DateTime<Utc>,
    pub action: String,
    pub overridden: bool,
    pub state: String,
    pub task_id: Option<i64>,
    pub held_by: Vec<String>,
}

/// A legal hold as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    pub id: i64,
    pub subject_id: Option<String>,
    pub category: Option<String>,
    pub data_system_id: Option<String>,
    pub reason: String,
    pub end_time: Option<DateTime<Utc>>,
    pub place_time: DateTime<Utc>,
    pub placed_by: String,
    pub release_time: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
    pub active: bool,
}

/// Data the law makes the organisation keep: one (system, category) whose
/// retention policy names a legal reason while the subject's clock for it
/// has not run out (SQL `kept_by_law`, the same rule `erasable` applies on
/// every erasure path).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct LegalKeep {
    pub category: String,
    pub data_system_id: String,
    /// The law, as the retention policy states it.
    pub legal_reason: String,
    /// When the keep ends and the data falls due under its policy; `None`
    /// while the policy's clock has not started for this subject.
    pub keep_until: Option<DateTime<Utc>>,
    pub period_amount: i32,
    pub period_unit: String,
    /// The policy's trigger ("ACCOUNT_CLOSED").
    pub trigger: String,
}

impl LegalKeep {
    /// The exemption as told to the subject: "dataSystems/x (category): kept
    /// by law until 2033-12-03: reason" (or "for 84 months after
    /// ACCOUNT_CLOSED" while the clock has not started).
    pub fn describe(&self) -> String {
        let until = match self.keep_until {
            Some(t) => format!("until {}", t.date_naive()),
            None => format!(
                "for {} {} after {}",
                self.period_amount,
                self.period_unit.replace('_', " "),
                self.trigger
            ),
        };
        format!(
            "dataSystems/{} ({}): kept by law {until}: {}",
            self.data_system_id, self.category, self.legal_reason
        )
    }
}

/// One system of the record of processing, with its categories' policies.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProcessingRow {
    pub id: String,
    pub display_name: String,
    pub kind: String,
    pub country: String,
    pub description: String,
    pub categories: Vec<String>,
}

/// A subject's own retention period for a category, as a caller sets it.
#[derive(Debug, Clone)]
pub struct NewOverride {
    pub subject_id: SubjectId,
    pub category: String,
    pub period: RetentionPeriod,
    pub reason: String,
}

/// A lifecycle event as reported: for one category and system, or all.
#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    pub subject_id: SubjectId,
    pub category: Option<String>,
    pub data_system: Option<DataSystemId>,
    pub event: EventKind,
    pub at: DateTime<Utc>,
}

/// A legal hold as a caller places it: scoped to at least one of a
/// subject, a category and a data system.
#[derive(Debug, Clone)]
pub struct NewLegalHold {
    pub subject_id: Option<String>,
    pub category: Option<String>,
    pub data_system: Option<DataSystemId>,
    pub reason: String,
    pub end_time: Option<DateTime<Utc>>,
}

/// What retention holds for one subject: its schedule, the holds on it,
/// and what the law keeps.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub subject_id: SubjectId,
    pub entries: Vec<EntryRow>,
    pub holds: Vec<HoldRow>,
    pub legal_keeps: Vec<LegalKeep>,
    /// The policies that name a legal reason.
    pub kept_for_legal_reasons: Vec<PolicyRow>,
}

/// The record of processing (GDPR Art. 30): every data system with the
/// policies of its categories.
#[derive(Debug, Clone)]
pub struct RecordOfProcessing {
    pub generate_time: DateTime<Utc>,
    pub systems: Vec<ProcessingRow>,
    pub policies: Vec<PolicyRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_is_activity_too() {
        assert!(
            EventKind::Created
                .triggers()
                .contains(&Trigger::LastActivity)
        );
        assert_eq!(
            EventKind::AccountClosed.triggers(),
            &[Trigger::AccountClosed]
        );
    }

    #[test]
    fn periods_are_days_or_months() {
        use crate::rules::Unit;
        assert!(RetentionPeriod::parse(30, Unit::CalendarDays).is_ok());
        assert!(RetentionPeriod::parse(0, Unit::Months).is_err());
        assert!(RetentionPeriod::parse(5, Unit::BusinessDays).is_err());
    }
}
