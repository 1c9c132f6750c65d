//! The retention domain's values.
use crate::names::string_enum;

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
