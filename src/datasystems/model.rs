//! The data-system domain's types. Each parses its input once, at the edge;
//! inside, a `DataSystemId` or a `LeaseId` is always valid.
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::names::{PurposeKey, SubjectId, string_enum};

string_enum!(
    /// Whether a system is the organisation's own or a processor's.
    Kind { Internal = "INTERNAL", Processor = "PROCESSOR" }
);

string_enum!(
    /// What a data system can do for a privacy request.
    DataAction {
        Export = "EXPORT",
        Delete = "DELETE",
        Correct = "CORRECT",
        Suppress = "SUPPRESS",
        Restrict = "RESTRICT",
        Anonymize = "ANONYMIZE",
    }
);

string_enum!(
    /// Where a task is.
    TaskState {
        Queued = "QUEUED",
        Leased = "LEASED",
        Succeeded = "SUCCEEDED",
        Exempted = "EXEMPTED",
        Failed = "FAILED",
        Abandoned = "ABANDONED",
    }
);

string_enum!(
    /// The legal basis of a disclosure.
    DisclosureBasis {
        ServiceProvider = "SERVICE_PROVIDER",
        LegalObligation = "LEGAL_OBLIGATION",
        FraudPrevention = "FRAUD_PREVENTION",
        Sale = "SALE",
        Sharing = "SHARING",
    }
);

/// A data system's id: 1-63 characters of `[a-z0-9_-]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSystemId(String);

impl DataSystemId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        let valid = raw.len() <= 63
            && raw.as_bytes()[0].is_ascii_lowercase()
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(
                "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter".into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses `dataSystems/{id}`.
    pub fn parse_name(name: &str) -> Result<Self, String> {
        let id = name
            .strip_prefix("dataSystems/")
            .ok_or("must be a data system name, \"dataSystems/{id}\"")?;
        Self::parse(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn name(&self) -> String {
        name_of_system(&self.0)
    }
}

pub fn name_of_system(id: &str) -> String {
    format!("dataSystems/{id}")
}

/// A data category ("account_information"): 1-63 characters of `[a-z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category(String);

impl Category {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid = (1..=63).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err("must be 1-63 characters of a-z, 0-9 and _".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A category key as a plain string (for callers that store it as is).
pub fn parse_category(raw: &str) -> Result<String, String> {
    Category::parse(raw).map(|c| c.0)
}

/// An ISO 3166-1 alpha-2 country code ("DE").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country(String);

impl Country {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be an ISO 3166-1 alpha-2 country code (two upper-case letters)".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registration, validated.
#[derive(Debug, Clone)]
pub struct DataSystemFields {
    pub id: DataSystemId,
    pub display_name: String,
    pub kind: Kind,
    pub categories: Vec<Category>,
    pub country: Country,
    pub actions: Vec<DataAction>,
    pub description: String,
}

/// A registered data system.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSystem {
    pub id: String,
    pub display_name: String,
    pub kind: Kind,
    pub categories: Vec<String>,
    pub country: String,
    pub actions: Vec<DataAction>,
    pub description: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

// ---- tasks ----------------------------------------------------------------

/// A task's id, parsed from `tasks/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskId(pub i64);

impl TaskId {
    pub fn parse_name(name: &str) -> Result<Self, String> {
        crate::convert::parse_numbered_name(name, "tasks")
            .map(TaskId)
            .ok_or_else(|| {
                "must be \"tasks/{id}\" with a positive numeric id, without a sign or leading zeros"
                    .into()
            })
    }

    pub fn name(self) -> String {
        format!("tasks/{}", self.0)
    }
}

/// A privacy request's id, parsed from `privacyRequests/{id}`.
pub fn parse_request_name(name: &str) -> Result<i64, String> {
    crate::names::RequestRef::parse_name(name).map(|r| r.0)
}

/// The lease a claim hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub Uuid);

impl LeaseId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required: the lease_id ClaimTasks returned".into());
        }
        Uuid::parse_str(raw)
            .map(LeaseId)
            .map_err(|_| "is not a lease id from ClaimTasks".into())
    }
}

/// A lease length in seconds: 1-3600, 0 meaning the default of 300.
pub fn parse_lease_seconds(raw: i32) -> Result<i32, String> {
    match raw {
        0 => Ok(300),
        1..=3600 => Ok(raw),
        _ => Err("must be between 1 and 3600 (0 for the default, 300)".into()),
    }
}

/// How many tasks one claim may take: 1-100, 0 meaning the default of 10.
pub fn parse_max_tasks(raw: i32) -> Result<i64, String> {
    match raw {
        0 => Ok(10),
        1..=100 => Ok(i64::from(raw)),
        _ => Err("must be between 1 and 100 (0 for the default, 10)".into()),
    }
}

/// A claim, validated.
#[derive(Debug, Clone)]
pub struct Claim {
    pub data_system: DataSystemId,
    pub worker: String,
    pub max_tasks: i64,
    pub lease_seconds: i32,
}

/// A hex SHA-256 (either case; kept in lower case).
pub fn parse_sha256(raw: &str) -> Result<String, String> {
    if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err("must be 64 hex characters (a SHA-256)".into())
    }
}

/// What a system did with a task: its proof, or why it kept the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub records_affected: i64,
    pub content_sha256: Option<String>,
    pub system_reference: String,
    /// For EXPORT tasks: the exported JSON document, as sent.
    pub export_json: Option<String>,
    /// Set when the system kept the data for a stated reason.
    pub exempt_reason: Option<String>,
}

/// One field a CORRECT task changes (the jsonb `corrections` column).
/// One field a correction changes (a correction request carries them; its
/// tasks hand them to the data systems).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldCorrection {
    pub field: String,
    #[serde(default)]
    pub current_value: String,
    #[serde(default)]
    pub corrected_value: String,
}

/// The sealed values of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedParts {
    pub corrections: Option<Vec<u8>>,
    pub export: Option<Vec<u8>>,
}

/// A task as stored. `lease_id` is only ever shown to the claimer.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: i64,
    pub data_system_id: String,
    pub privacy_request_id: Option<i64>,
    pub subject_id: String,
    pub action: DataAction,
    pub categories: Vec<String>,
    pub corrections: Vec<FieldCorrection>,
    pub state: TaskState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub worker: Option<String>,
    pub lease_id: Option<Uuid>,
    pub lease_expire_time: Option<DateTime<Utc>>,
    /// Present once SUCCEEDED or EXEMPTED.
    pub result: Option<TaskResult>,
    /// The sealed corrections and export as read (`crate::keys`), until
    /// `store::open_tasks` puts them in clear into `corrections` and
    /// `result.export_json`.
    pub sealed: SealedParts,
    pub last_error: Option<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Task {
    pub fn name(&self) -> String {
        TaskId(self.id).name()
    }
}

/// One page of a listing: at most `limit` items after the key `after`; the
/// next page's token is bound to `token_filters` (the request's filters as
/// sent), so a token cannot be replayed under other filters.
#[derive(Debug, Clone)]
pub struct Page<K> {
    pub limit: i64,
    pub after: Option<K>,
    pub token_filters: String,
}

/// Which tasks ListTasks returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub data_system: Option<DataSystemId>,
    pub privacy_request_id: Option<i64>,
    pub state: Option<TaskState>,
    pub subject_id: Option<SubjectId>,
}

// ---- disclosures ----------------------------------------------------------

/// A disclosure to record, validated.
#[derive(Debug, Clone)]
pub struct NewDisclosure {
    pub subject_id: Option<SubjectId>,
    pub recipient: String,
    pub categories: Vec<Category>,
    pub basis: DisclosureBasis,
    pub purpose: Option<PurposeKey>,
    pub disclose_time: DateTime<Utc>,
}

/// A logged disclosure.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    pub id: i64,
    pub subject_id: Option<String>,
    pub recipient: String,
    pub categories: Vec<String>,
    pub basis: DisclosureBasis,
    pub purpose: Option<String>,
    pub disclose_time: DateTime<Utc>,
    pub contradicted_purpose: Option<String>,
}

/// The disclosures of a 12-month window.
#[derive(Debug, Clone)]
pub struct DisclosureReport {
    /// Exclusive.
    pub start_time: DateTime<Utc>,
    /// Inclusive.
    pub end_time: DateTime<Utc>,
    pub counts: Vec<(DisclosureBasis, i64)>,
    /// Oldest first, at most `MAX_FLAGGED`.
    pub flagged: Vec<Disclosure>,
}

impl DisclosureReport {
    pub const MAX_FLAGGED: i64 = 1000;

    fn any(&self, basis: DisclosureBasis) -> bool {
        self.counts.iter().any(|(b, n)| *b == basis && *n > 0)
    }

    pub fn sold(&self) -> bool {
        self.any(DisclosureBasis::Sale)
    }

    pub fn shared(&self) -> bool {
        self.any(DisclosureBasis::Sharing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_system_ids_are_lower_case_and_start_with_a_letter() {
        assert!(DataSystemId::parse("billing-db_2").is_ok());
        assert!(DataSystemId::parse("").is_err());
        assert!(DataSystemId::parse("2db").is_err());
        assert!(DataSystemId::parse("Billing").is_err());
        assert!(DataSystemId::parse(&"a".repeat(64)).is_err());
        assert_eq!(
            DataSystemId::parse_name("dataSystems/crm")
                .map(|id| id.name())
                .as_deref(),
            Ok("dataSystems/crm")
        );
        assert!(DataSystemId::parse_name("crm").is_err());
    }

    #[test]
    fn task_names_and_leases_parse_strictly() {
        assert_eq!(TaskId::parse_name("tasks/12"), Ok(TaskId(12)));
        assert!(TaskId::parse_name("tasks/0").is_err());
        assert!(TaskId::parse_name("tasks/x").is_err());
        assert_eq!(parse_request_name("privacyRequests/3"), Ok(3));
        assert!(LeaseId::parse("").is_err());
        assert!(LeaseId::parse("nope").is_err());
        assert_eq!(parse_lease_seconds(0), Ok(300));
        assert!(parse_lease_seconds(3601).is_err());
        assert_eq!(parse_max_tasks(0), Ok(10));
        assert!(parse_max_tasks(-1).is_err());
        assert_eq!(parse_sha256(&"AB".repeat(32)), Ok("ab".repeat(32)));
        assert!(parse_sha256("abc").is_err());
    }
}
