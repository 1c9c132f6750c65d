//! The consent domain's types. Each parses its input once, at the edge;
//! inside the service a `SubjectId` or a `PurposeKey` is always valid.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// The opaque id callers agree on for a person: 1-256 printable ASCII
/// characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectId(String);

impl SubjectId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        if raw.len() > 256 {
            return Err("must be at most 256 characters".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses `subjects/{subject_id}`.
    pub fn parse_name(name: &str) -> Result<Self, String> {
        let id = name
            .strip_prefix("subjects/")
            .ok_or("must be a subject name, \"subjects/{subject_id}\"")?;
        Self::parse(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A purpose's key: 1-63 characters of `[a-z0-9_]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PurposeKey(String);

impl PurposeKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        let valid = raw.len() <= 63
            && raw.as_bytes()[0].is_ascii_lowercase()
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err("must be 1-63 characters of a-z, 0-9 and _, starting with a letter".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses `purposes/{key}`.
    pub fn parse_name(name: &str) -> Result<Self, String> {
        let key = name
            .strip_prefix("purposes/")
            .ok_or("must be a purpose name, \"purposes/{key}\"")?;
        Self::parse(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn name(&self) -> String {
        format!("purposes/{}", self.0)
    }
}

/// "EU", an ISO 3166-1 alpha-2 country ("US") or an ISO 3166-2
/// subdivision ("US-CA").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Jurisdiction(String);

impl Jurisdiction {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let upper = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase());
        let ok = match raw.split_once('-') {
            None => raw.len() == 2 && upper(raw),
            Some((country, sub)) => {
                country.len() == 2
                    && upper(country)
                    && (1..=3).contains(&sub.len())
                    && sub
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            }
        };
        if !ok {
            return Err(
                "must be \"EU\", a country code (\"US\") or a subdivision code (\"US-CA\")".into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses an optional field (empty = unset).
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, String> {
        if raw.is_empty() {
            Ok(None)
        } else {
            Self::parse(raw).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The codes to look up, most specific first: "US-CA" → US-CA, US;
    /// "DE" → DE, EU (where the GDPR applies, as the rules table resolves it).
    pub fn lookup_chain(&self) -> Vec<&str> {
        let mut chain = vec![self.0.as_str()];
        let country = self.0.split('-').next().unwrap_or(&self.0);
        if country != self.0 {
            chain.push(country);
        }
        if crate::rules::gdpr_applies_in(country) {
            chain.push("EU");
        }
        chain
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The name stored in the database (the proto enum value's name).
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn from_db(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

pub(crate) use string_enum;

string_enum!(
    /// How consent governs a purpose.
    ConsentModel {
        OptIn = "OPT_IN",
        OptOut = "OPT_OUT",
        NotConsentBased = "NOT_CONSENT_BASED",
        Prohibited = "PROHIBITED",
    }
);

string_enum!(
    /// A grant or a refusal.
    Decision { Granted = "GRANTED", Refused = "REFUSED" }
);

string_enum!(
    /// Where a decision came from.
    Source {
        WebForm = "WEB_FORM",
        Api = "API",
        EmailUnsubscribeLink = "EMAIL_UNSUBSCRIBE_LINK",
        GpcSignal = "GPC_SIGNAL",
        WrittenAgreement = "WRITTEN_AGREEMENT_SOURCE",
        Support = "SUPPORT",
        AuthorizedAgent = "AUTHORIZED_AGENT",
        Import = "IMPORT",
        PrivacyRequest = "PRIVACY_REQUEST",
    }
);

string_enum!(
    /// A kind of evidence.
    EvidenceKind {
        WrittenAgreement = "WRITTEN_AGREEMENT",
        FormSubmission = "FORM_SUBMISSION",
        Email = "EMAIL",
        SupportRecord = "SUPPORT_RECORD",
        AgentAuthorization = "AGENT_AUTHORIZATION",
    }
);

string_enum!(
    /// Why a check came out the way it did.
    Reason {
        ExplicitGrant = "EXPLICIT_GRANT",
        ExplicitRefusal = "EXPLICIT_REFUSAL",
        DefaultOptOut = "DEFAULT_OPT_OUT",
        DefaultOptIn = "DEFAULT_OPT_IN",
        NotConsentBased = "NOT_CONSENT_BASED_PURPOSE",
        Prohibited = "PURPOSE_IS_PROHIBITED",
        Gpc = "GPC",
        GrantExpired = "GRANT_EXPIRED",
        SubjectIsMinor = "SUBJECT_IS_MINOR",
        SubjectErased = "SUBJECT_ERASED",
        ConsentPredatesPolicyChange = "CONSENT_PREDATES_POLICY_CHANGE",
    }
);

/// A purpose in the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Purpose {
    pub key: PurposeKey,
    pub display_name: String,
    pub description: String,
    pub consent_model: ConsentModel,
    pub jurisdiction_models: BTreeMap<String, ConsentModel>,
    pub required_evidence: Option<EvidenceKind>,
    pub honors_gpc: bool,
    pub reconsent_on_material_change: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub revision: i64,
}

impl Purpose {
    /// The model in force in a jurisdiction (its most specific override).
    pub fn model_in(&self, jurisdiction: Option<&Jurisdiction>) -> ConsentModel {
        jurisdiction
            .into_iter()
            .flat_map(|j| j.lookup_chain())
            .find_map(|code| self.jurisdiction_models.get(code).copied())
            .unwrap_or(self.consent_model)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }
}

/// The editable fields of a purpose (create and update).
#[derive(Debug, Clone)]
pub struct PurposeFields {
    pub display_name: String,
    pub description: String,
    pub consent_model: ConsentModel,
    pub jurisdiction_models: BTreeMap<String, ConsentModel>,
    pub required_evidence: Option<EvidenceKind>,
    pub honors_gpc: bool,
    pub reconsent_on_material_change: bool,
}

/// Evidence behind a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub reference: String,
    pub description: String,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRecord {
    pub id: i64,
    pub subject_id: String,
    pub purpose: String,
    pub decision: Decision,
    pub source: Source,
    pub policy_version: Option<String>,
    pub jurisdiction: Option<String>,
    pub evidence: Option<Evidence>,
    pub effective_time: DateTime<Utc>,
    pub expire_time: Option<DateTime<Utc>>,
    pub record_time: DateTime<Utc>,
    pub request_id: String,
    pub actor: String,
}

/// A decision to append, already validated.
#[derive(Debug, Clone)]
pub struct NewConsent {
    pub subject_id: SubjectId,
    pub purpose: PurposeKey,
    pub decision: Decision,
    pub source: Source,
    pub policy_version: Option<String>,
    pub jurisdiction: Option<Jurisdiction>,
    pub evidence: Option<Evidence>,
    /// None: now (the database's clock).
    pub effective_time: Option<DateTime<Utc>>,
    pub expire_time: Option<DateTime<Utc>>,
}

/// A published privacy policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyVersion {
    pub version_id: String,
    pub effective_time: DateTime<Utc>,
    pub text_sha256: String,
    pub material: bool,
    pub summary: String,
    pub publish_time: DateTime<Utc>,
}

/// What the service knows about a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub subject_id: String,
    pub minor_since: Option<DateTime<Utc>>,
    /// When the subject was erased, and what erased it (a privacy
    /// request's name, or the minor status that erased a minor).
    pub erased: Option<(DateTime<Utc>, String)>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A policy version id: 1-64 characters of `[A-Za-z0-9._-]`.
pub fn parse_version_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("is required".into());
    }
    if raw.len() > 64
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'".into());
    }
    Ok(raw.to_owned())
}

/// Free text with a length limit (in characters).
/// Required free text: not blank, at most `max` characters.
pub fn parse_required_text(raw: &str, max: usize) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    parse_text(raw, max)
}

pub fn parse_text(raw: &str, max: usize) -> Result<String, String> {
    if raw.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids_are_bounded_printable_ascii() {
        assert!(SubjectId::parse("acct_123").is_ok());
        assert!(SubjectId::parse("").is_err());
        assert!(SubjectId::parse("a b").is_err());
        assert!(SubjectId::parse(&"a".repeat(257)).is_err());
        assert_eq!(SubjectId::parse_name("subjects/x").unwrap().as_str(), "x");
        assert!(SubjectId::parse_name("x").is_err());
    }

    #[test]
    fn purpose_keys_are_snake_case() {
        assert!(PurposeKey::parse("marketing_email").is_ok());
        assert!(PurposeKey::parse("Marketing").is_err());
        assert!(PurposeKey::parse("1abc").is_err());
        assert!(PurposeKey::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn jurisdictions_fall_back_to_country_then_eu() {
        assert!(Jurisdiction::parse("us-ca").is_err());
        assert!(Jurisdiction::parse("USA").is_err());
        let ca = Jurisdiction::parse("US-CA").unwrap();
        assert_eq!(ca.lookup_chain(), vec!["US-CA", "US"]);
        let de = Jurisdiction::parse("DE").unwrap();
        assert_eq!(de.lookup_chain(), vec!["DE", "EU"]);
        let eu = Jurisdiction::parse("EU").unwrap();
        assert_eq!(eu.lookup_chain(), vec!["EU"]);
    }
}
