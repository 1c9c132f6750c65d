//! The consent decision: a pure function of the purpose, the subject's
//! latest ledger entry at the time asked about, and the context of the
//! check. Kept free of I/O so that a cache (or a replica) can call it with
//! the same inputs and give the same answer.
use chrono::{DateTime, Utc};

use super::model::{ConsentModel, ConsentRecord, Decision, Purpose, Reason, Source};
use crate::names::Jurisdiction;

/// The latest material policy version in effect at the time asked about.
#[derive(Debug, Clone)]
pub struct MaterialChange {
    pub version_id: String,
    pub effective_time: DateTime<Utc>,
}

/// Everything a decision depends on.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub purpose: &'a Purpose,
    /// The jurisdiction of the check, if the caller gave one.
    pub jurisdiction: Option<&'a Jurisdiction>,
    pub gpc_signal: bool,
    /// The data category the caller means to use, if it named one.
    pub category: Option<&'a str>,
    /// Whether the subject was flagged a minor at `at`.
    pub minor: bool,
    /// Whether the subject had been erased at `at`: every purpose is then
    /// denied, whatever its model (there is no account left to serve).
    pub erased: bool,
    /// The subject's latest entry for the purpose effective at or before `at`.
    pub latest: Option<&'a ConsentRecord>,
    pub material_change: Option<&'a MaterialChange>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    pub reason: Reason,
    pub model: ConsentModel,
    /// The ledger entry that decided, when one did.
    pub record: Option<ConsentRecord>,
}

pub fn decide(input: &Inputs<'_>) -> Outcome {
    // The caller's jurisdiction wins; else where the subject last decided.
    let recorded = input
        .latest
        .and_then(|r| r.jurisdiction.as_deref())
        .and_then(|j| Jurisdiction::parse(j).ok());
    let jurisdiction = input.jurisdiction.or(recorded.as_ref());
    // A promise in force at `at` wins over the catalogue's model now.
    let model = input.purpose.model_at(jurisdiction, input.at);
    let outcome = |allowed, reason, record: Option<&ConsentRecord>| Outcome {
        allowed,
        reason,
        model,
        record: record.cloned(),
    };

    if input.erased {
        return outcome(false, Reason::SubjectErased, None);
    }
    if model == ConsentModel::Prohibited {
        return outcome(false, Reason::Prohibited, None);
    }
    // Never used for the purpose, on whatever basis, whatever was agreed.
    if input.category.is_some_and(|c| input.purpose.excludes(c)) {
        return outcome(false, Reason::CategoryExcluded, None);
    }
    if model == ConsentModel::NotConsentBased {
        return outcome(true, Reason::NotConsentBased, None);
    }
    if input.minor {
        return outcome(false, Reason::SubjectIsMinor, None);
    }
    if input.gpc_signal && input.purpose.honors_gpc {
        return outcome(false, Reason::Gpc, None);
    }
    match input.latest {
        Some(r) if r.decision == Decision::Refused => {
            let reason = if r.source == Source::GpcSignal {
                Reason::Gpc
            } else {
                Reason::ExplicitRefusal
            };
            outcome(false, reason, Some(r))
        }
        Some(r) => {
            if r.expire_time.is_some_and(|t| t <= input.at) {
                return outcome(false, Reason::GrantExpired, Some(r));
            }
            if input.purpose.reconsent_on_material_change
                && let Some(change) = input.material_change
                && r.effective_time < change.effective_time
                && r.policy_version.as_deref() != Some(change.version_id.as_str())
            {
                return outcome(false, Reason::ConsentPredatesPolicyChange, Some(r));
            }
            outcome(true, Reason::ExplicitGrant, Some(r))
        }
        None => match model {
            ConsentModel::OptOut => outcome(true, Reason::DefaultOptOut, None),
            _ => outcome(false, Reason::DefaultOptIn, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::model::{Lift, Promise};
    use crate::names::PurposeKey;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap()
    }

    fn purpose(model: ConsentModel) -> Purpose {
        Purpose {
            key: PurposeKey::parse("p").unwrap(),
            display_name: "P".into(),
            description: String::new(),
            consent_model: model,
            jurisdiction_models: BTreeMap::from([("EU".to_string(), ConsentModel::OptIn)]),
            required_evidence: None,
            honors_gpc: true,
            reconsent_on_material_change: true,
            excluded_categories: vec!["contact_form_inquiries".into()],
            create_time: t(1),
            update_time: t(1),
            revision: 1,
            promises: vec![],
        }
    }

    fn record(decision: Decision, day: u32) -> ConsentRecord {
        ConsentRecord {
            id: 1,
            subject_id: "s".into(),
            purpose: "p".into(),
            decision,
            source: Source::WebForm,
            policy_version: None,
            jurisdiction: None,
            evidence: None,
            effective_time: t(day),
            expire_time: None,
            record_time: t(day),
            request_id: "r".into(),
            actor: "a".into(),
        }
    }

    fn inputs<'a>(p: &'a Purpose, latest: Option<&'a ConsentRecord>) -> Inputs<'a> {
        Inputs {
            purpose: p,
            jurisdiction: None,
            gpc_signal: false,
            category: None,
            minor: false,
            erased: false,
            latest,
            material_change: None,
            at: t(20),
        }
    }

    #[test]
    fn an_excluded_category_is_denied_whatever_the_basis_after_erasure_and_prohibition() {
        let grant = record(Decision::Granted, 5);
        for model in [ConsentModel::OptIn, ConsentModel::NotConsentBased] {
            let p = purpose(model);
            let category = |c| Inputs {
                category: Some(c),
                ..inputs(&p, Some(&grant))
            };
            let excluded = decide(&category("contact_form_inquiries"));
            assert_eq!(
                (excluded.allowed, excluded.reason),
                (false, Reason::CategoryExcluded)
            );
            assert!(decide(&category("account_information")).allowed);
            let erased = Inputs {
                erased: true,
                ..category("contact_form_inquiries")
            };
            assert_eq!(decide(&erased).reason, Reason::SubjectErased);
        }
        let prohibited = purpose(ConsentModel::Prohibited);
        let input = Inputs {
            category: Some("contact_form_inquiries"),
            ..inputs(&prohibited, None)
        };
        assert_eq!(decide(&input).reason, Reason::Prohibited);
    }

    #[test]
    fn defaults_follow_the_model() {
        let out = purpose(ConsentModel::OptOut);
        assert_eq!(decide(&inputs(&out, None)).reason, Reason::DefaultOptOut);
        assert!(decide(&inputs(&out, None)).allowed);
        let opt_in = purpose(ConsentModel::OptIn);
        assert_eq!(decide(&inputs(&opt_in, None)).reason, Reason::DefaultOptIn);
        assert!(!decide(&inputs(&opt_in, None)).allowed);
    }

    #[test]
    fn the_eu_override_makes_an_opt_out_purpose_opt_in() {
        let p = purpose(ConsentModel::OptOut);
        let de = Jurisdiction::parse("DE").unwrap();
        let mut i = inputs(&p, None);
        i.jurisdiction = Some(&de);
        let o = decide(&i);
        assert_eq!(
            (o.allowed, o.reason, o.model),
            (false, Reason::DefaultOptIn, ConsentModel::OptIn)
        );
    }

    #[test]
    fn a_prohibited_purpose_denies_even_a_grant() {
        let p = purpose(ConsentModel::Prohibited);
        let g = record(Decision::Granted, 2);
        let o = decide(&inputs(&p, Some(&g)));
        assert_eq!((o.allowed, o.reason), (false, Reason::Prohibited));
    }

    #[test]
    fn minors_gpc_refusal_and_expiry_deny() {
        let p = purpose(ConsentModel::OptOut);
        let mut i = inputs(&p, None);
        i.minor = true;
        assert_eq!(decide(&i).reason, Reason::SubjectIsMinor);
        let mut i = inputs(&p, None);
        i.gpc_signal = true;
        assert_eq!(decide(&i).reason, Reason::Gpc);
        let r = record(Decision::Refused, 2);
        assert_eq!(
            decide(&inputs(&p, Some(&r))).reason,
            Reason::ExplicitRefusal
        );
        let mut g = record(Decision::Granted, 2);
        g.expire_time = Some(t(10));
        assert_eq!(decide(&inputs(&p, Some(&g))).reason, Reason::GrantExpired);
    }

    #[test]
    fn an_erased_subject_is_denied_every_model_without_a_deciding_entry() {
        let g = record(Decision::Granted, 2);
        for model in [
            ConsentModel::OptIn,
            ConsentModel::OptOut,
            ConsentModel::NotConsentBased,
            ConsentModel::Prohibited,
        ] {
            let p = purpose(model);
            let mut i = inputs(&p, Some(&g));
            i.erased = true;
            let o = decide(&i);
            assert_eq!(
                (o.allowed, o.reason, o.record),
                (false, Reason::SubjectErased, None)
            );
        }
    }

    #[test]
    fn a_grant_before_a_material_change_needs_fresh_consent() {
        let p = purpose(ConsentModel::OptIn);
        let change = MaterialChange {
            version_id: "v2".into(),
            effective_time: t(10),
        };
        let old = record(Decision::Granted, 5);
        let mut i = inputs(&p, Some(&old));
        i.material_change = Some(&change);
        assert_eq!(decide(&i).reason, Reason::ConsentPredatesPolicyChange);
        let fresh = record(Decision::Granted, 12);
        let mut i = inputs(&p, Some(&fresh));
        i.material_change = Some(&change);
        assert_eq!(decide(&i).reason, Reason::ExplicitGrant);
    }

    fn promise(jurisdiction: Option<&str>, lift_at: Option<u32>) -> Promise {
        Promise {
            id: 1,
            jurisdiction: jurisdiction.map(str::to_owned),
            exceptions: vec![],
            make_time: None,
            record_time: t(1),
            made_by: "seed".into(),
            lift: lift_at.map(|day| Lift {
                policy_version: "v2".into(),
                effective_time: t(day),
                lift_time: t(1),
                lifted_by: "ops".into(),
            }),
        }
    }

    #[test]
    fn a_promise_prohibits_until_its_lift_takes_effect() {
        let mut p = purpose(ConsentModel::OptOut);
        p.jurisdiction_models.clear();
        p.promises = vec![promise(None, Some(20))];
        let mut i = inputs(&p, None);
        i.at = t(19);
        let o = decide(&i);
        assert_eq!(
            (o.allowed, o.reason, o.model),
            (false, Reason::Prohibited, ConsentModel::Prohibited)
        );
        i.at = t(20);
        assert_eq!(decide(&i).reason, Reason::DefaultOptOut);
    }

    #[test]
    fn a_jurisdiction_promise_covers_only_the_jurisdictions_under_it() {
        let mut p = purpose(ConsentModel::OptOut);
        p.jurisdiction_models.clear();
        p.promises = vec![promise(Some("US"), Some(25))];
        let ca = Jurisdiction::parse("US-CA").unwrap();
        let de = Jurisdiction::parse("DE").unwrap();
        let mut i = inputs(&p, None);
        assert_eq!(decide(&i).reason, Reason::DefaultOptOut, "no jurisdiction");
        i.jurisdiction = Some(&ca);
        assert_eq!(decide(&i).reason, Reason::Prohibited);
        i.jurisdiction = Some(&de);
        assert_eq!(decide(&i).reason, Reason::DefaultOptOut);
        p.promises[0].exceptions = vec!["US-CA".into()];
        let mut i = inputs(&p, None);
        i.jurisdiction = Some(&ca);
        assert_eq!(decide(&i).reason, Reason::DefaultOptOut, "an exception");
    }
}
