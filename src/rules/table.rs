//! The typed rules table: what `jurisdictions.toml` deserializes into, the
//! checks that make a table trustworthy, and the questions a request asks of
//! one jurisdiction's rules.
//!
//! Every rule carries its citation (`source`), the research's confidence tag,
//! and whether the value is a conservative choice made because the research
//! could not confirm it. Types a jurisdiction does not grant are handled
//! voluntarily, under the organisation's defaults, so every question about a
//! request type has an answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Deserialize;

use super::deadline::{Clock, Holidays, Period, Unit};
use super::request_type::RequestType;

/// The code under which the organisation's defaults are reported.
pub const DEFAULT_CODE: &str = "default";

/// A confidence tag, spelled as in the research's machine-readable summary:
/// `S` (statute read), `O` (official page), `2` (secondary source), joined by
/// `/` when a cell mixes them (`S/2`); `unconfirmed` (no source found); and
/// `policy` for the organisation's own voluntary defaults, which are not law.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Confidence(String);

impl Confidence {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_unconfirmed(&self) -> bool {
        self.0 == "unconfirmed"
    }

    pub fn is_policy(&self) -> bool {
        self.0 == "policy"
    }
}

impl TryFrom<String> for Confidence {
    type Error = String;

    fn try_from(tag: String) -> Result<Self, Self::Error> {
        if tag == "unconfirmed" || tag == "policy" {
            return Ok(Confidence(tag));
        }
        // S, O and 2 in that order, each at most once, joined by '/'.
        let order = ["S", "O", "2"];
        let mut last = None;
        for part in tag.split('/') {
            let rank = order.iter().position(|o| *o == part);
            match (rank, last) {
                (Some(r), Some(l)) if r <= l => return Err(bad_tag(&tag)),
                (Some(r), _) => last = Some(r),
                (None, _) => return Err(bad_tag(&tag)),
            }
        }
        Ok(Confidence(tag))
    }
}

fn bad_tag(tag: &str) -> String {
    format!(
        "unknown confidence tag {tag:?}: use S, O, 2 joined by '/' in that order, \
         \"unconfirmed\" or \"policy\""
    )
}

/// The citation of one rule, borrowed from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cite<'a> {
    pub source: &'a str,
    pub confidence: &'a Confidence,
    /// The research did not confirm the value; the table holds the
    /// conservative choice (the shorter deadline, the wider right).
    pub conservative: bool,
    pub note: Option<&'a str>,
}

/// A rule that carries a citation.
pub trait Cited {
    fn cite(&self) -> Cite<'_>;
}

/// Declares a rule struct with the citation fields every rule has.
macro_rules! cited {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// The citation, as given in the research.
            pub source: String,
            /// The research's confidence tag for this value.
            pub confidence: Confidence,
            /// True where the value is the conservative choice for something
            /// the research left unconfirmed.
            #[serde(default)]
            pub conservative: bool,
            /// Why, where the value needs explaining.
            #[serde(default)]
            pub note: Option<String>,
        }

        impl Cited for $name {
            fn cite(&self) -> Cite<'_> {
                Cite {
                    source: &self.source,
                    confidence: &self.confidence,
                    conservative: self.conservative,
                    note: self.note.as_deref(),
                }
            }
        }
    };
}

cited! {
    /// When the law took effect.
    pub struct Effective {
        pub date: NaiveDate,
    }
}

cited! {
    /// Rights the law grants, from `since` when they start later than the law.
    pub struct RightsGrant {
        pub types: Vec<RequestType>,
        #[serde(default)]
        pub since: Option<NaiveDate>,
    }
}

cited! {
    /// The response deadline, counted from receipt.
    pub struct ResponseRule {
        pub amount: u32,
        pub unit: Unit,
    }
}

cited! {
    /// The one extension the law allows, counted from the original due date.
    pub struct ExtensionRule {
        pub amount: u32,
        pub unit: Unit,
        /// The subject must be told, with the reason, before the original due date.
        pub notice_required: bool,
    }
}

cited! {
    /// A different clock for some types (e.g. California opt-outs: 15
    /// business days). Types listed here get this clock and only the
    /// extension given here (none when absent).
    pub struct DeadlineOverride {
        pub types: Vec<RequestType>,
        pub amount: u32,
        pub unit: Unit,
        #[serde(default)]
        pub extension: Option<ExtensionRule>,
    }
}

cited! {
    /// Acknowledge receipt within this period (California: 10 business days).
    pub struct AcknowledgeRule {
        pub amount: u32,
        pub unit: Unit,
    }
}

cited! {
    /// A set of request types (which need identity verification, which an
    /// authorized agent may file).
    pub struct TypeSetRule {
        pub types: Vec<RequestType>,
    }
}

cited! {
    /// The controller-side appeal of a decision.
    pub struct AppealRule {
        pub exists: bool,
        /// The controller's deadline to decide an appeal.
        #[serde(default)]
        pub deadline: Option<Period>,
        #[serde(default)]
        pub extension: Option<Period>,
        /// A denial or appeal decision must tell the subject how to reach the
        /// regulator (AG, supervisory authority).
        pub regulator_contact_required: bool,
    }
}

cited! {
    /// Who may file for the subject. `types` are the request types the
    /// statute lets an authorized agent file (with evidence of authority);
    /// `provision` says whether the statute provides for agents at all. Where
    /// it does not, accepting agents is the organisation's voluntary setting
    /// (`RequestSettings::voluntary_agents`), not the law. In the defaults,
    /// `types` is what the organisation accepts voluntarily.
    pub struct AgentRule {
        pub types: Vec<RequestType>,
        pub provision: bool,
    }
}

cited! {
    /// How many requests per 12 months are free; `None` means no numeric
    /// limit (the GDPR: free unless manifestly unfounded or excessive).
    /// `types`, when given, are the only request types the limit counts
    /// (California: requests to know only, Civ. Code 1798.130(b)); absent, it
    /// counts each type on its own.
    pub struct FreeLimit {
        #[serde(default)]
        pub requests_per_12_months: Option<u32>,
        #[serde(default)]
        pub types: Option<Vec<RequestType>>,
    }
}

cited! {
    /// The days, besides weekends, that are not business days in this
    /// jurisdiction (observed dates, Monday to Friday, ascending), up to
    /// `through`. Past `through` holidays count as business days, which can
    /// only make a deadline earlier.
    pub struct HolidayCalendar {
        pub dates: Vec<NaiveDate>,
        pub through: NaiveDate,
    }
}

cited! {
    /// Recognition of universal opt-out signals such as Global Privacy Control.
    pub struct UniversalOptOut {
        pub recognized: bool,
        #[serde(default)]
        pub since: Option<NaiveDate>,
    }
}

/// Why a legal clock may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Utah 13-61-203(2): the clock does not run while a request suspected
    /// of fraud awaits authentication.
    FraudSuspectedAuthenticationPending,
}

impl PauseReason {
    /// The key used in the rules table.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::FraudSuspectedAuthenticationPending => {
                "fraud_suspected_authentication_pending"
            }
        }
    }
}

cited! {
    /// A circumstance in which the rule stops the clock.
    pub struct ClockPause {
        pub reason: PauseReason,
    }
}

/// One jurisdiction's rules (or the organisation's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JurisdictionRules {
    /// `US-CA`, `EU`, or [`DEFAULT_CODE`]; filled in from the table's key.
    #[serde(skip)]
    code: String,
    /// The defaults, for types this jurisdiction does not grant; `None` on
    /// the defaults themselves. Filled in when the table is built.
    #[serde(skip)]
    voluntary: Option<Fallback>,
    pub name: String,
    pub law: String,
    pub effective: Effective,
    pub rights: Vec<RightsGrant>,
    pub response: ResponseRule,
    #[serde(default)]
    pub extension: Option<ExtensionRule>,
    #[serde(default)]
    pub deadline_overrides: Vec<DeadlineOverride>,
    #[serde(default)]
    pub acknowledge: Option<AcknowledgeRule>,
    pub verification: TypeSetRule,
    pub agents: AgentRule,
    pub appeal: AppealRule,
    pub free_requests: FreeLimit,
    pub universal_opt_out: UniversalOptOut,
    #[serde(default)]
    pub clock_pauses: Vec<ClockPause>,
    /// The holidays business days skip here; none when absent.
    #[serde(default)]
    pub holidays: Option<HolidayCalendar>,
    /// Scope limits and quirks that are not (yet) data.
    #[serde(default)]
    pub notes: Option<String>,
}

/// The shared defaults a jurisdiction falls back on. Its `Debug` names it
/// instead of printing the whole defaults again inside every jurisdiction.
#[derive(Clone, PartialEq, Eq)]
struct Fallback(Arc<JurisdictionRules>);

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("defaults")
    }
}

/// The clock that applies to one request type in one jurisdiction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineRule<'a> {
    pub period: Period,
    pub extension: Option<&'a ExtensionRule>,
    /// True when the jurisdiction grants the right; false when the request is
    /// handled voluntarily under the organisation's defaults.
    pub statutory: bool,
    pub cite: Cite<'a>,
    /// The holidays business days skip under this rule.
    pub holidays: Holidays<'a>,
}

impl<'a> DeadlineRule<'a> {
    pub fn extension_period(&self) -> Option<Period> {
        self.extension.map(|e| Period::new(e.amount, e.unit))
    }

    /// Start this rule's clock for a request received on `received`.
    pub fn start_clock(&self, received: NaiveDate) -> Clock<'a> {
        Clock::start(received, self.period, self.extension_period()).with_holidays(self.holidays)
    }
}

impl JurisdictionRules {
    /// `US-CA`, `EU`, or [`DEFAULT_CODE`].
    pub fn code(&self) -> &str {
        &self.code
    }

    /// True for the organisation's defaults (a jurisdiction not in the table).
    pub fn is_default(&self) -> bool {
        self.voluntary.is_none()
    }

    /// The grant of `t`, if the law grants it at all.
    pub fn right(&self, t: RequestType) -> Option<&RightsGrant> {
        self.rights.iter().find(|g| g.types.contains(&t))
    }

    /// Whether the law grants `t` at all (now or from a later date; see
    /// [`Self::grants_on`]). The defaults grant every type, voluntarily.
    pub fn grants(&self, t: RequestType) -> bool {
        self.right(t).is_some()
    }

    /// Whether the law grants `t` on `date`: the law is in effect and the
    /// right has started (Utah's correction right starts 1 July 2026).
    pub fn grants_on(&self, t: RequestType, date: NaiveDate) -> bool {
        let in_force = self.is_default() || self.effective.date <= date;
        in_force
            && self
                .right(t)
                .is_some_and(|g| g.since.is_none_or(|since| since <= date))
    }

    /// The rules that answer for `t`: these, when the law grants it; the
    /// organisation's defaults otherwise.
    fn answering(&self, t: RequestType) -> &JurisdictionRules {
        self.answering_if(self.grants(t))
    }

    /// The rules that answer for `t` received on `date`: these, when the law
    /// is in effect and grants it on that date; the defaults otherwise (a
    /// request received before a rule's date gets the rule before it).
    fn answering_on(&self, t: RequestType, date: NaiveDate) -> &JurisdictionRules {
        self.answering_if(self.grants_on(t, date))
    }

    fn answering_if(&self, granted: bool) -> &JurisdictionRules {
        match &self.voluntary {
            Some(Fallback(defaults)) if !granted => defaults,
            _ => self,
        }
    }

    /// The holidays business days skip here (none for most jurisdictions).
    pub fn holidays(&self) -> Holidays<'_> {
        self.holidays
            .as_ref()
            .map_or(Holidays::NONE, |h| Holidays::new(&h.dates))
    }

    /// The response clock for `t` (as the law stands once every dated rule
    /// has started; see [`Self::deadline_on`] for a given receipt date).
    pub fn deadline_for(&self, t: RequestType) -> DeadlineRule<'_> {
        self.deadline_from(t, self.grants(t))
    }

    /// The response clock for `t` received on `date`.
    pub fn deadline_on(&self, t: RequestType, date: NaiveDate) -> DeadlineRule<'_> {
        self.deadline_from(t, self.grants_on(t, date))
    }

    fn deadline_from(&self, t: RequestType, granted: bool) -> DeadlineRule<'_> {
        let rules = self.answering_if(granted);
        let statutory = !self.is_default() && granted;
        let holidays = rules.holidays();
        match rules
            .deadline_overrides
            .iter()
            .find(|o| o.types.contains(&t))
        {
            Some(o) => DeadlineRule {
                period: Period::new(o.amount, o.unit),
                extension: o.extension.as_ref(),
                statutory,
                cite: o.cite(),
                holidays,
            },
            None => DeadlineRule {
                period: Period::new(rules.response.amount, rules.response.unit),
                extension: rules.extension.as_ref(),
                statutory,
                cite: rules.response.cite(),
                holidays,
            },
        }
    }

    /// The defaults behind these rules (these rules, for the defaults).
    fn defaults_or_self(&self) -> &JurisdictionRules {
        match &self.voluntary {
            Some(Fallback(defaults)) => defaults,
            None => self,
        }
    }

    /// Whether a request of type `t` must wait for identity verification.
    pub fn verification_required(&self, t: RequestType) -> bool {
        self.answering(t).verification.types.contains(&t)
    }

    /// [`Self::verification_required`] for a request received on `date`.
    pub fn verification_required_on(&self, t: RequestType, date: NaiveDate) -> bool {
        self.answering_on(t, date).verification.types.contains(&t)
    }

    /// Whether the statute lets an authorized agent file `t` (with evidence
    /// of authority), on `date`.
    pub fn agent_statutory_on(&self, t: RequestType, date: NaiveDate) -> bool {
        !self.is_default() && self.grants_on(t, date) && self.agents.types.contains(&t)
    }

    /// Whether an authorized agent may file a request of type `t` (always
    /// with evidence of authority), with voluntary agents off.
    pub fn agent_may_file(&self, t: RequestType) -> bool {
        self.agent_may_file_if(t, self.grants(t), false)
    }

    /// Whether an authorized agent may file `t` received on `date`: where the
    /// statute lets one; for a type handled voluntarily, where the
    /// organisation's defaults accept one; and, where the statute has no
    /// agent provision at all, when `voluntary_agents` is set and the
    /// defaults accept one. A statute whose agent provision leaves `t` out is
    /// not overridden.
    pub fn agent_may_file_on(
        &self,
        t: RequestType,
        date: NaiveDate,
        voluntary_agents: bool,
    ) -> bool {
        self.agent_may_file_if(t, self.grants_on(t, date), voluntary_agents)
    }

    fn agent_may_file_if(&self, t: RequestType, granted: bool, voluntary_agents: bool) -> bool {
        let defaults = self.defaults_or_self();
        if self.is_default() || !granted {
            return defaults.agents.types.contains(&t);
        }
        if self.agents.types.contains(&t) {
            return true;
        }
        !self.agents.provision && voluntary_agents && defaults.agents.types.contains(&t)
    }

    /// Free requests of type `t` per 12 months; `None`: no numeric limit.
    pub fn free_limit_for(&self, t: RequestType) -> Option<u32> {
        Self::free_limit_of(self.answering(t), t)
    }

    /// [`Self::free_limit_for`] for a request received on `date`.
    pub fn free_limit_on(&self, t: RequestType, date: NaiveDate) -> Option<u32> {
        Self::free_limit_of(self.answering_on(t, date), t)
    }

    fn free_limit_of(rules: &JurisdictionRules, t: RequestType) -> Option<u32> {
        let limit = &rules.free_requests;
        match &limit.types {
            Some(types) if !types.contains(&t) => None,
            _ => limit.requests_per_12_months,
        }
    }

    /// The appeal rules for a request of type `t`.
    pub fn appeal_for(&self, t: RequestType) -> &AppealRule {
        &self.answering(t).appeal
    }

    /// The appeal rules for a request of type `t` received on `date` (the
    /// defaults' for a type not yet granted then).
    pub fn appeal_on(&self, t: RequestType, date: NaiveDate) -> &AppealRule {
        &self.answering_on(t, date).appeal
    }

    /// Whether universal opt-out signals (GPC) must be honoured on `date`.
    pub fn universal_opt_out_on(&self, date: NaiveDate) -> bool {
        self.universal_opt_out.recognized
            && self
                .universal_opt_out
                .since
                .is_none_or(|since| since <= date)
    }

    /// Whether the rule stops the clock for `reason`.
    pub fn pauses_clock_for(&self, reason: PauseReason) -> bool {
        self.clock_pauses.iter().any(|p| p.reason == reason)
    }

    /// Every rule with its citation, labelled by where it sits in the table.
    pub fn cites(&self) -> Vec<(String, Cite<'_>)> {
        let mut out = vec![
            ("effective".to_owned(), self.effective.cite()),
            ("response".to_owned(), self.response.cite()),
            ("verification".to_owned(), self.verification.cite()),
            ("agents".to_owned(), self.agents.cite()),
            ("appeal".to_owned(), self.appeal.cite()),
            ("free_requests".to_owned(), self.free_requests.cite()),
            (
                "universal_opt_out".to_owned(),
                self.universal_opt_out.cite(),
            ),
        ];
        for (i, g) in self.rights.iter().enumerate() {
            out.push((format!("rights[{i}]"), g.cite()));
        }
        if let Some(e) = &self.extension {
            out.push(("extension".to_owned(), e.cite()));
        }
        for (i, o) in self.deadline_overrides.iter().enumerate() {
            out.push((format!("deadline_overrides[{i}]"), o.cite()));
            if let Some(e) = &o.extension {
                out.push((format!("deadline_overrides[{i}].extension"), e.cite()));
            }
        }
        if let Some(a) = &self.acknowledge {
            out.push(("acknowledge".to_owned(), a.cite()));
        }
        for (i, p) in self.clock_pauses.iter().enumerate() {
            out.push((format!("clock_pauses[{i}]"), p.cite()));
        }
        if let Some(h) = &self.holidays {
            out.push(("holidays".to_owned(), h.cite()));
        }
        out
    }

    /// Every rule whose value is a conservative choice, labelled.
    pub fn conservative_values(&self) -> Vec<(String, Cite<'_>)> {
        self.cites()
            .into_iter()
            .filter(|(_, c)| c.conservative)
            .collect()
    }
}

/// How a code was resolved to rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The code is in the table.
    Exact,
    /// An EU/EEA member state code (`DE`, `FR-75`), answered by `EU`.
    MemberState,
    /// Not in the table: the organisation's defaults.
    Default,
}

/// The answer to "which rules apply to this code".
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub rules: &'a JurisdictionRules,
    pub resolution: Resolution,
}

impl Lookup<'_> {
    pub fn used_defaults(&self) -> bool {
        self.resolution == Resolution::Default
    }
}

/// EU member states (ISO 3166-1, plus `EL` as the EU spells Greece) and the
/// EEA states, where the GDPR applies through the EEA Agreement. The research
/// covers the GDPR only as "EU"; mapping the EEA to it rather than to the
/// defaults is the conservative choice (one month is shorter than 45 days).
const GDPR_STATES: [&str; 31] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "EL", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
];

/// Whether the GDPR applies in a country (ISO 3166-1 alpha-2, or `EL`): the
/// EU member states and the EEA states.
pub fn gdpr_applies_in(country: &str) -> bool {
    GDPR_STATES.contains(&country)
}

/// The whole table: its version, the defaults and the jurisdictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesTable {
    version: String,
    checked: NaiveDate,
    defaults: Arc<JurisdictionRules>,
    jurisdictions: BTreeMap<String, JurisdictionRules>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    /// The date the table was last checked against the statute texts.
    checked: NaiveDate,
    defaults: JurisdictionRules,
    jurisdictions: BTreeMap<String, JurisdictionRules>,
}

/// Why a rules table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rules table does not parse: {0}")]
    Parse(String),
    #[error("rules table is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl RulesTable {
    /// Parse and validate a table. All problems are reported, not just the first.
    pub fn parse(text: &str) -> Result<RulesTable, RulesError> {
        let raw: RawTable = toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        let mut problems = Vec::new();
        if raw.version.trim().is_empty() {
            problems.push("version: must not be empty".to_owned());
        }
        let mut defaults = raw.defaults;
        defaults.code = DEFAULT_CODE.to_owned();
        validate(&defaults, true, &mut problems);
        let defaults = Arc::new(defaults);
        let mut jurisdictions = BTreeMap::new();
        for (code, mut rules) in raw.jurisdictions {
            if !valid_code(&code) {
                problems.push(format!(
                    "{code}: code must be \"EU\" or \"US-\" and two capitals"
                ));
            }
            rules.code = code.clone();
            validate(&rules, false, &mut problems);
            rules.voluntary = Some(Fallback(Arc::clone(&defaults)));
            jurisdictions.insert(code, rules);
        }
        if !problems.is_empty() {
            return Err(RulesError::Invalid(problems));
        }
        Ok(RulesTable {
            version: raw.version,
            checked: raw.checked,
            defaults,
            jurisdictions,
        })
    }

    /// The table's version (a date), to record beside every decision made from it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The date the table was last checked against the statute texts.
    pub fn checked(&self) -> NaiveDate {
        self.checked
    }

    pub fn defaults(&self) -> &JurisdictionRules {
        &self.defaults
    }

    /// Every jurisdiction in the table, ordered by code (defaults excluded).
    pub fn entries(&self) -> impl Iterator<Item = &JurisdictionRules> {
        self.jurisdictions.values()
    }

    /// The rules for an exact code in the table.
    pub fn get(&self, code: &str) -> Option<&JurisdictionRules> {
        self.jurisdictions.get(code)
    }

    /// Resolve a jurisdiction code (ISO 3166-2 like `US-CA`, or `EU`; case and
    /// surrounding spaces ignored): exact match, then an EU/EEA member state
    /// (`DE`, `FR-75`) to `EU`, then the defaults.
    pub fn lookup(&self, code: &str) -> Lookup<'_> {
        let code = code.trim().to_ascii_uppercase();
        if let Some(rules) = self.jurisdictions.get(&code) {
            return Lookup {
                rules,
                resolution: Resolution::Exact,
            };
        }
        let country = code.split('-').next().unwrap_or_default();
        if gdpr_applies_in(country)
            && let Some(rules) = self.jurisdictions.get("EU")
        {
            return Lookup {
                rules,
                resolution: Resolution::MemberState,
            };
        }
        Lookup {
            rules: &self.defaults,
            resolution: Resolution::Default,
        }
    }

    /// The rules that apply to `code` (see [`Self::lookup`]);
    /// [`JurisdictionRules::is_default`] says whether defaults were used.
    pub fn rules_for(&self, code: &str) -> &JurisdictionRules {
        self.lookup(code).rules
    }
}

fn valid_code(code: &str) -> bool {
    code == "EU"
        || code
            .strip_prefix("US-")
            .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()))
}

fn validate(rules: &JurisdictionRules, is_defaults: bool, problems: &mut Vec<String>) {
    let code = rules.code.as_str();
    let mut problem = |what: String| problems.push(format!("{code}: {what}"));

    if rules.name.trim().is_empty() {
        problem("name: must not be empty".to_owned());
    }
    if rules.law.trim().is_empty() {
        problem("law: must not be empty".to_owned());
    }

    for (label, cite) in rules.cites() {
        if cite.source.trim().is_empty() {
            problem(format!("{label}: source must not be empty"));
        }
        if cite.confidence.is_policy() != is_defaults {
            problem(format!(
                "{label}: confidence \"policy\" is for the defaults, and only it is"
            ));
        }
        if cite.confidence.is_unconfirmed() && !cite.conservative {
            problem(format!(
                "{label}: an unconfirmed value must be the conservative choice (conservative = true)"
            ));
        }
        if cite.conservative && cite.note.is_none_or(|n| n.trim().is_empty()) {
            problem(format!(
                "{label}: a conservative value needs a note saying why"
            ));
        }
    }

    // Periods: zero would make a request due the day it arrives.
    let mut periods = vec![("response", rules.response.amount)];
    if let Some(e) = &rules.extension {
        periods.push(("extension", e.amount));
    }
    if let Some(a) = &rules.acknowledge {
        periods.push(("acknowledge", a.amount));
    }
    for o in &rules.deadline_overrides {
        periods.push(("deadline_overrides", o.amount));
        if let Some(e) = &o.extension {
            periods.push(("deadline_overrides.extension", e.amount));
        }
    }
    if let Some(p) = &rules.appeal.deadline {
        periods.push(("appeal.deadline", p.amount));
    }
    if let Some(p) = &rules.appeal.extension {
        periods.push(("appeal.extension", p.amount));
    }
    for (label, amount) in periods {
        if amount == 0 {
            problem(format!("{label}: amount must be at least 1"));
        }
    }

    let mut granted = BTreeSet::new();
    for g in &rules.rights {
        if g.types.is_empty() {
            problem("rights: a grant must list at least one type".to_owned());
        }
        for t in &g.types {
            if !granted.insert(*t) {
                problem(format!("rights: {t} is granted twice"));
            }
        }
    }
    if granted.is_empty() {
        problem("rights: at least one right must be granted".to_owned());
    }
    if is_defaults {
        for t in RequestType::ALL {
            if !granted.contains(&t) {
                problem(format!(
                    "rights: the defaults must cover every type, {t} is missing"
                ));
            }
        }
    }

    // Sets that only make sense for granted types: anything else is handled
    // under the defaults, so listing it here would be dead data.
    let mut overridden = BTreeSet::new();
    for o in &rules.deadline_overrides {
        if o.types.is_empty() {
            problem("deadline_overrides: must list at least one type".to_owned());
        }
        for t in &o.types {
            if !overridden.insert(*t) {
                problem(format!("deadline_overrides: {t} has two clocks"));
            }
        }
    }
    for (label, types) in [
        (
            "deadline_overrides",
            overridden.iter().copied().collect::<Vec<_>>(),
        ),
        ("verification", rules.verification.types.clone()),
        ("agents", rules.agents.types.clone()),
    ] {
        let mut seen = BTreeSet::new();
        for t in types {
            if !granted.contains(&t) {
                problem(format!("{label}: {t} is not a right granted here"));
            }
            if !seen.insert(t) {
                problem(format!("{label}: {t} is listed twice"));
            }
        }
    }

    if is_defaults && rules.agents.provision {
        problem("agents: the defaults are policy, not a statute's agent provision".to_owned());
    }
    if !is_defaults && !rules.agents.provision && !rules.agents.types.is_empty() {
        problem("agents: no agent provision, so no types an agent may file by statute".to_owned());
    }
    if let Some(limit) = &rules.free_requests.types {
        if limit.is_empty() {
            problem("free_requests: types, when given, must list at least one".to_owned());
        }
        if rules.free_requests.requests_per_12_months.is_none() {
            problem("free_requests: types without a limit".to_owned());
        }
    }
    if let Some(h) = &rules.holidays {
        if is_defaults {
            problem("holidays: the defaults have no holiday calendar".to_owned());
        }
        for pair in h.dates.windows(2) {
            if pair[0] >= pair[1] {
                problem(format!("holidays: {} is not after {}", pair[1], pair[0]));
            }
        }
        for date in &h.dates {
            if !super::deadline::is_business_day(*date) {
                problem(format!(
                    "holidays: {date} is a weekend day; list the observed weekday"
                ));
            }
            if *date > h.through {
                problem(format!("holidays: {date} is after through ({})", h.through));
            }
        }
    }

    let appeal = &rules.appeal;
    if appeal.exists && appeal.deadline.is_none() {
        problem("appeal: an appeal needs a deadline".to_owned());
    }
    if !appeal.exists && (appeal.deadline.is_some() || appeal.extension.is_some()) {
        problem("appeal: no appeal, so no deadline or extension".to_owned());
    }

    let uoom = &rules.universal_opt_out;
    if !is_defaults && uoom.recognized && uoom.since.is_none() {
        problem("universal_opt_out: recognized, so since is required".to_owned());
    }
    if !uoom.recognized && uoom.since.is_some() {
        problem("universal_opt_out: not recognized, so no since".to_owned());
    }
    if is_defaults && !rules.clock_pauses.is_empty() {
        problem("clock_pauses: the defaults stop no clock".to_owned());
    }
}
