//! The privacy-request domain: states, the lifecycle as a table of allowed
//! transitions, and the typed values a request carries.
use chrono::{DateTime, NaiveDate, Utc};

use crate::datasystems::model::{DataAction, FieldCorrection};
use crate::error::Error;
use crate::identifiers::IdentifierKind;
use crate::names::{RequestRef, SubjectId, string_enum};
use crate::retention::store::LegalKeep;
use crate::rules::{Clock, JurisdictionRules, RequestType};

string_enum!(
    /// Where a request is in its life.
    State {
        Received = "RECEIVED",
        AwaitingVerification = "AWAITING_VERIFICATION",
        InProgress = "IN_PROGRESS",
        OnHold = "ON_HOLD",
        Completed = "COMPLETED",
        PartiallyCompleted = "PARTIALLY_COMPLETED",
        Denied = "DENIED",
        Canceled = "CANCELED",
    }
);

impl State {
    pub const ALL: [State; 8] = [
        State::Received,
        State::AwaitingVerification,
        State::InProgress,
        State::OnHold,
        State::Completed,
        State::PartiallyCompleted,
        State::Denied,
        State::Canceled,
    ];

    /// The states in which the clock runs and work remains.
    pub const OPEN: [State; 4] = [
        State::Received,
        State::AwaitingVerification,
        State::InProgress,
        State::OnHold,
    ];

    pub fn is_open(self) -> bool {
        State::OPEN.contains(&self)
    }
}

/// What can happen to a request. Each RPC that changes a request is one
/// action; `TasksDone` is the data systems finishing their tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Creation moves a RECEIVED request on at once.
    Accept,
    Verify,
    Extend,
    Hold,
    Resume,
    Deny,
    Cancel,
    Complete,
    TasksDone,
    Appeal,
    DecideAppeal,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "CreatePrivacyRequest",
            Action::Verify => "VerifyPrivacyRequestIdentity",
            Action::Extend => "ExtendPrivacyRequest",
            Action::Hold => "HoldPrivacyRequest",
            Action::Resume => "ResumePrivacyRequest",
            Action::Deny => "DenyPrivacyRequest",
            Action::Cancel => "CancelPrivacyRequest",
            Action::Complete => "CompletePrivacyRequest",
            Action::TasksDone => "TasksDone",
            Action::Appeal => "AppealPrivacyRequest",
            Action::DecideAppeal => "DecideAppeal",
        }
    }
}

/// One row of the lifecycle: an action, the states it is allowed from, and
/// the states it may lead to besides staying where it is.
pub struct Transition {
    pub action: Action,
    pub from: &'static [State],
    pub to: &'static [State],
}

use State::*;

const LIVE: &[State] = &[AwaitingVerification, InProgress, OnHold];
const APPEALABLE: &[State] = &[Denied, PartiallyCompleted];

/// The lifecycle of a privacy request, as data. Anything not listed is refused with
/// FAILED_PRECONDITION / INVALID_STATE_TRANSITION naming the current state.
pub const TRANSITIONS: &[Transition] = &[
    Transition {
        action: Action::Accept,
        from: &[Received],
        to: &[AwaitingVerification, InProgress],
    },
    Transition {
        action: Action::Verify,
        from: &[AwaitingVerification],
        to: &[InProgress],
    },
    Transition {
        action: Action::Extend,
        from: LIVE,
        to: &[],
    },
    Transition {
        action: Action::Hold,
        from: &[AwaitingVerification, InProgress],
        to: &[OnHold],
    },
    Transition {
        action: Action::Resume,
        from: &[OnHold],
        to: &[AwaitingVerification, InProgress],
    },
    Transition {
        action: Action::Deny,
        from: LIVE,
        to: &[Denied],
    },
    Transition {
        action: Action::Cancel,
        from: LIVE,
        to: &[Canceled],
    },
    Transition {
        action: Action::Complete,
        from: &[InProgress],
        to: &[Completed, PartiallyCompleted],
    },
    Transition {
        action: Action::TasksDone,
        from: &[InProgress],
        to: &[Completed, PartiallyCompleted],
    },
    Transition {
        action: Action::Appeal,
        from: APPEALABLE,
        to: &[],
    },
    // A granted appeal reopens the request; an upheld one leaves it.
    Transition {
        action: Action::DecideAppeal,
        from: APPEALABLE,
        to: &[InProgress],
    },
];

fn row(action: Action) -> Option<&'static Transition> {
    TRANSITIONS.iter().find(|t| t.action == action)
}

/// Checks that `action` may take `resource` from `from` to `to` (`None`:
/// the state stays).
pub fn check(resource: &str, action: Action, from: State, to: Option<State>) -> Result<(), Error> {
    // Every action has a row (a unit test holds the table to it).
    let Some(t) = row(action) else {
        return Err(Error::Internal(format!("no lifecycle row for {action:?}")));
    };
    let target_ok = match to {
        None => true,
        // Staying put (an extension, an upheld appeal) is always a target.
        Some(to) => to == from || t.to.contains(&to),
    };
    if t.from.contains(&from) && target_ok {
        return Ok(());
    }
    Err(Error::InvalidTransition {
        resource: resource.to_owned(),
        state: from.as_str(),
        action: action.as_str(),
        allowed_from: t.from.iter().map(|s| s.as_str()).collect(),
    })
}

string_enum!(
    /// Why a request was denied.
    DenialReason {
        IdentityNotVerified = "IDENTITY_NOT_VERIFIED",
        AgentNotAuthorized = "AGENT_NOT_AUTHORIZED",
        ExemptLegalObligation = "EXEMPT_LEGAL_OBLIGATION",
        LegalHold = "LEGAL_HOLD",
        ManifestlyUnfoundedOrExcessive = "MANIFESTLY_UNFOUNDED_OR_EXCESSIVE",
        RightNotGranted = "RIGHT_NOT_GRANTED",
        NoData = "NO_DATA",
        Other = "OTHER",
    }
);

string_enum!(
    /// Why a request is on hold.
    HoldReason {
        FraudSuspectedAuthenticationPending = "FRAUD_SUSPECTED_AUTHENTICATION_PENDING",
        AwaitingSubject = "AWAITING_SUBJECT",
        Other = "OTHER_HOLD",
    }
);

impl HoldReason {
    /// The rules table's clock-pause reason this hold is, if any.
    pub fn pause_reason(self) -> Option<crate::rules::PauseReason> {
        match self {
            HoldReason::FraudSuspectedAuthenticationPending => {
                Some(crate::rules::PauseReason::FraudSuspectedAuthenticationPending)
            }
            _ => None,
        }
    }
}

string_enum!(
    /// How a request arrived.
    Channel {
        WebForm = "WEB_FORM",
        Email = "EMAIL",
        Phone = "PHONE",
        Mail = "MAIL",
        InApp = "IN_APP",
        GlobalPrivacyControl = "GLOBAL_PRIVACY_CONTROL",
    }
);

string_enum!(
    /// Where an appeal stands.
    AppealState {
        Pending = "PENDING",
        Granted = "GRANTED",
        Upheld = "UPHELD",
    }
);

/// The task action that fulfils a request type at the data systems; `None`
/// for a confirmation, which needs no data system.
pub fn action_for(t: RequestType) -> Option<DataAction> {
    Some(match t {
        RequestType::Access | RequestType::Portability | RequestType::AccessAdmt => {
            DataAction::Export
        }
        RequestType::ConfirmProcessing => return None,
        RequestType::Deletion => DataAction::Delete,
        RequestType::Correction => DataAction::Correct,
        RequestType::OptOutSale
        | RequestType::OptOutTargetedAdvertising
        | RequestType::OptOutProfiling
        | RequestType::OptOutAdmt
        | RequestType::LimitSensitiveData => DataAction::Suppress,
        RequestType::Restriction | RequestType::Objection => DataAction::Restrict,
    })
}

/// An authorized agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    pub display_name: String,
    #[serde(default)]
    pub contact: String,
    #[serde(default)]
    pub evidence_reference: String,
    #[serde(default)]
    pub evidence_description: String,
}

impl Agent {
    pub fn has_evidence(&self) -> bool {
        !self.evidence_reference.is_empty()
    }
}

/// A privacy request as the domain knows it: decoded once, from its stored
/// row, by `super::store`. Its personal parts (agent, corrections, appeal
/// statement) are sealed at rest and read as absent until `store::open`.
#[derive(Debug, Clone)]
pub struct PrivacyRequest {
    pub id: i64,
    pub subject_id: SubjectId,
    pub request_type: RequestType,
    pub jurisdiction: String,
    /// The rules the request was filed under ("EU", "default", ...), as
    /// stored, and the rules that answer for it today.
    pub rules_code: String,
    pub rules: &'static JurisdictionRules,
    pub channel: Channel,
    pub identifier_kinds: Vec<IdentifierKind>,
    pub agent: Option<Agent>,
    pub corrections: Vec<FieldCorrection>,
    pub categories: Vec<String>,
    pub state: State,
    pub hold: Option<Hold>,
    pub receive_time: DateTime<Utc>,
    /// The legal clock, restored from the stored period, extension and
    /// pauses.
    pub clock: Clock<'static>,
    pub extension_reason: Option<String>,
    pub original_due_date: NaiveDate,
    pub due_date: NaiveDate,
    pub verification_required: bool,
    pub agent_may_file: bool,
    pub statutory: bool,
    pub free_limit_exceeded: bool,
    pub prior_requests_12_months: i32,
    pub deadline_citation: Citation,
    pub denial_reason: Option<DenialReason>,
    pub explanation: String,
    pub exemptions: Vec<String>,
    pub appeal: Option<Appeal>,
    /// What the law made this request keep (a deletion), structured; each
    /// is in `exemptions` as text too.
    pub legal_keeps: Vec<LegalKeep>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub close_time: Option<DateTime<Utc>>,
    /// The sealed forms of the personal parts, as stored (`crate::keys`).
    pub sealed: Sealed,
}

impl PrivacyRequest {
    pub fn name(&self) -> String {
        RequestRef(self.id).name()
    }

    pub fn received_date(&self) -> NaiveDate {
        self.clock.received()
    }
}

/// The sealed personal parts of a request. `store::open` opens the agent
/// and the statement into the request and forgets their sealed form; the
/// corrections stay sealed too, since its tasks receive them as they are.
#[derive(Debug, Clone, Default)]
pub struct Sealed {
    pub agent: Option<Vec<u8>>,
    pub corrections: Option<Vec<u8>>,
    pub appeal_statement: Option<Vec<u8>>,
}

/// Why and since when a request is on hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    /// The state it resumes in.
    pub from: Option<State>,
    pub since: Option<NaiveDate>,
    /// Whether the rules stop the clock for this reason.
    pub pauses_clock: bool,
}

/// An appeal of a request's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appeal {
    pub state: AppealState,
    /// The subject's words; blank until opened, or once erased.
    pub statement: String,
    pub create_time: Option<DateTime<Utc>>,
    pub due_date: Option<NaiveDate>,
    pub explanation: Option<String>,
    pub regulator_contact_required: bool,
    pub regulator_contact_provided: bool,
    pub decide_time: Option<DateTime<Utc>>,
    /// True when the appeal is the organisation's voluntary offer.
    pub voluntary: bool,
}

/// The source the request's deadline was taken from, as it was cited on
/// the day of receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Citation {
    pub source: String,
    pub confidence: String,
    pub conservative: bool,
    pub note: String,
}

/// One step in a request's history: a transition, or an event that kept
/// the state (an extension, an appeal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub from: Option<State>,
    pub to: State,
    pub action: String,
    pub actor: String,
    pub reason: String,
    pub time: DateTime<Utc>,
}

/// Counts of a request's tasks by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskCounts {
    pub total: i64,
    pub succeeded: i64,
    pub exempt: i64,
    pub failed: i64,
    pub open: i64,
}

/// Filters of ListPrivacyRequests.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub subject_id: Option<String>,
    pub state: Option<State>,
    pub request_type: Option<String>,
    pub jurisdiction: Option<String>,
    pub overdue: bool,
    pub due_before: Option<NaiveDate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_one_row() {
        for action in [
            Action::Accept,
            Action::Verify,
            Action::Extend,
            Action::Hold,
            Action::Resume,
            Action::Deny,
            Action::Cancel,
            Action::Complete,
            Action::TasksDone,
            Action::Appeal,
            Action::DecideAppeal,
        ] {
            let rows = TRANSITIONS.iter().filter(|t| t.action == action).count();
            assert_eq!(rows, 1, "{action:?}");
        }
    }

    #[test]
    fn terminal_states_allow_nothing_but_appeals() {
        for t in TRANSITIONS {
            assert!(!t.from.contains(&Completed), "{:?}", t.action);
            assert!(!t.from.contains(&Canceled), "{:?}", t.action);
        }
    }

    #[test]
    fn a_refused_transition_names_the_current_state() {
        let err = check(
            "privacyRequests/1",
            Action::Verify,
            InProgress,
            Some(InProgress),
        );
        let Err(Error::InvalidTransition { state, .. }) = err else {
            panic!("expected InvalidTransition, got {err:?}");
        };
        assert_eq!(state, "IN_PROGRESS");
    }

    #[test]
    fn identifiers_normalise() {
        assert_eq!(
            IdentifierKind::EmailAddress.normalize(" Ann@Example.COM "),
            Some("ann@example.com".into())
        );
        assert_eq!(
            IdentifierKind::PhoneNumber.normalize("+1 (555) 010-0199"),
            Some("15550100199".into())
        );
        assert_eq!(IdentifierKind::PhoneNumber.normalize("n/a"), None);
    }

    #[test]
    fn request_names_parse() {
        assert_eq!(
            RequestRef::parse_name("privacyRequests/42"),
            Ok(RequestRef(42))
        );
        assert!(RequestRef::parse_name("privacyRequests/x").is_err());
        assert!(RequestRef::parse_name("privacyRequests/0").is_err());
        assert!(RequestRef::parse_name("42").is_err());
    }
}
