//! The consent domain's types. Each parses its input once, at the edge;
//! inside the service a `SubjectId` or a `PurposeKey` is always valid.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::names::{Jurisdiction, PurposeKey, SubjectId, string_enum};

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
        CategoryExcluded = "DATA_CATEGORY_EXCLUDED",
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
    /// Data categories never used for the purpose (see `excludes`).
    pub excluded_categories: Vec<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub revision: i64,
    /// Every promise ever made for the purpose, lifted or not, oldest first.
    pub promises: Vec<Promise>,
}

/// The model in force in a jurisdiction: its most specific override, else
/// the default.
fn resolve(
    default: ConsentModel,
    overrides: &BTreeMap<String, ConsentModel>,
    jurisdiction: Option<&Jurisdiction>,
) -> ConsentModel {
    jurisdiction
        .into_iter()
        .flat_map(|j| j.lookup_chain())
        .find_map(|code| overrides.get(code).copied())
        .unwrap_or(default)
}

impl Purpose {
    /// Whether data of `category` is never used for this purpose.
    pub fn excludes(&self, category: &str) -> bool {
        self.excluded_categories.iter().any(|c| c == category)
    }

    /// The model in force in a jurisdiction (its most specific override),
    /// as the catalogue says now.
    pub fn model_in(&self, jurisdiction: Option<&Jurisdiction>) -> ConsentModel {
        resolve(self.consent_model, &self.jurisdiction_models, jurisdiction)
    }

    /// The model that governs a use at time `at`: PROHIBITED while a promise
    /// covering the jurisdiction is in force then (made, and not lifted
    /// with effect at or before `at`), whatever the catalogue says now; else
    /// the catalogue's model. A lift that takes effect later leaves the
    /// purpose PROHIBITED until then, with no write needed when it does.
    pub fn model_at(&self, jurisdiction: Option<&Jurisdiction>, at: DateTime<Utc>) -> ConsentModel {
        if self.promise_at(jurisdiction, at).is_some() {
            ConsentModel::Prohibited
        } else {
            self.model_in(jurisdiction)
        }
    }

    /// The promise in force at `at` that covers the jurisdiction, if any.
    pub fn promise_at(
        &self,
        jurisdiction: Option<&Jurisdiction>,
        at: DateTime<Utc>,
    ) -> Option<&Promise> {
        self.promises
            .iter()
            .find(|p| p.in_force_at(at) && p.covers(jurisdiction))
    }

    /// The promises not lifted (not even with a later effect).
    pub fn unlifted_promises(&self) -> impl Iterator<Item = &Promise> {
        self.promises.iter().filter(|p| p.lift.is_none())
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
    pub excluded_categories: Vec<String>,
}

impl PurposeFields {
    /// Whether these fields keep a promise of `scope` (None: the default
    /// model) with `exceptions`: the scope resolves to PROHIBITED, and so
    /// does every override under it that the promise covers.
    pub fn keep(&self, scope: Option<&str>, exceptions: &[String]) -> bool {
        let scope_model = match scope {
            None => self.consent_model,
            Some(code) => match Jurisdiction::parse(code) {
                Ok(j) => resolve(self.consent_model, &self.jurisdiction_models, Some(&j)),
                // A scope that does not parse was never written by this
                // service; keep it promised.
                Err(_) => return false,
            },
        };
        scope_model == ConsentModel::Prohibited
            && self.jurisdiction_models.iter().all(|(code, model)| {
                *model == ConsentModel::Prohibited
                    || !Jurisdiction::parse(code)
                        .is_ok_and(|j| Promise::scope_covers(scope, exceptions, &j))
            })
    }

    /// The scopes these fields make PROHIBITED (None: the default model),
    /// each with its exceptions: the overrides under it that are not.
    pub fn prohibited_scopes(&self) -> Vec<(Option<String>, Vec<String>)> {
        let mut scopes: Vec<Option<String>> = Vec::new();
        if self.consent_model == ConsentModel::Prohibited {
            scopes.push(None);
        }
        scopes.extend(
            self.jurisdiction_models
                .iter()
                .filter(|(_, m)| **m == ConsentModel::Prohibited)
                .map(|(code, _)| Some(code.clone())),
        );
        scopes
            .into_iter()
            .map(|scope| {
                let exceptions = self
                    .jurisdiction_models
                    .iter()
                    .filter(|(code, model)| {
                        **model != ConsentModel::Prohibited
                            && Some(code.as_str()) != scope.as_deref()
                            && Jurisdiction::parse(code)
                                .is_ok_and(|j| Promise::scope_covers(scope.as_deref(), &[], &j))
                    })
                    .map(|(code, _)| code.clone())
                    .collect();
                (scope, exceptions)
            })
            .collect()
    }
}

/// A promise never to use data for a purpose (a PROHIBITED model), as the
/// organisation's published policy made it. Only a published material
/// policy version lifts it, from that version's effective time.
#[derive(Debug, Clone, PartialEq)]
pub struct Promise {
    pub id: i64,
    /// None: the default model, in every jurisdiction (but the
    /// exceptions); else an override's code and the jurisdictions under it.
    pub jurisdiction: Option<String>,
    /// Overrides under the scope that were not PROHIBITED when the promise
    /// was made: outside it.
    pub exceptions: Vec<String>,
    /// None: from the start (the default catalogue's promises).
    pub make_time: Option<DateTime<Utc>>,
    /// When this service recorded it: a version that lifts it must have
    /// been published after this.
    pub record_time: DateTime<Utc>,
    pub made_by: String,
    pub lift: Option<Lift>,
}

/// How a promise was lifted.
#[derive(Debug, Clone, PartialEq)]
pub struct Lift {
    pub policy_version: String,
    /// From this time on the promise no longer holds.
    pub effective_time: DateTime<Utc>,
    /// When the lift was recorded.
    pub lift_time: DateTime<Utc>,
    pub lifted_by: String,
}

impl Promise {
    /// `purposes/{key}/promises/{id}`.
    pub fn name(&self, key: &PurposeKey) -> String {
        format!("{}/promises/{}", key.name(), self.id)
    }

    /// Made at or before `at`, and not lifted with effect at or before it.
    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        self.make_time.is_none_or(|t| t <= at)
            && self.lift.as_ref().is_none_or(|l| l.effective_time > at)
    }

    /// Whether a use in `jurisdiction` (None: none known) falls under it.
    pub fn covers(&self, jurisdiction: Option<&Jurisdiction>) -> bool {
        match jurisdiction {
            Some(j) => Self::scope_covers(self.jurisdiction.as_deref(), &self.exceptions, j),
            None => self.jurisdiction.is_none(),
        }
    }

    /// Whether a promise of `scope` with `exceptions` covers `j`: the scope
    /// is the default or on `j`'s lookup chain, and no exception is.
    fn scope_covers(scope: Option<&str>, exceptions: &[String], j: &Jurisdiction) -> bool {
        let chain = j.lookup_chain();
        scope.is_none_or(|s| chain.contains(&s))
            && !exceptions.iter().any(|e| chain.contains(&e.as_str()))
    }
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
    /// When its account was closed (the newest ACCOUNT_CLOSED lifecycle event).
    pub account_close_time: Option<DateTime<Utc>>,
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
