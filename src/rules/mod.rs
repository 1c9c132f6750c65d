//! Legal rules as data: the versioned, cited table of what each jurisdiction
//! requires of a privacy request (rights, deadlines, extensions, verification,
//! agents, appeals, free-of-charge limits, universal opt-out), and the deadline
//! arithmetic to apply it.
//!
//! The table is `jurisdictions.toml`, compiled in and parsed once. Handlers
//! never branch on a jurisdiction: they ask [`rules_for`] and use the answer.
//! Call [`table`] at startup so a bad table stops the server before it serves.

pub mod deadline;
pub mod request_type;
pub mod table;

use std::sync::LazyLock;

pub use deadline::{Clock, DeadlineError, Holidays, Period, Unit};
pub use request_type::RequestType;
pub use table::{
    AgentRule, Cite, Cited, Confidence, DEFAULT_CODE, DeadlineRule, HolidayCalendar,
    JurisdictionRules, Lookup, PauseReason, Resolution, RulesError, RulesTable, gdpr_applies_in,
};

/// The embedded table's text, as shipped with this build.
pub const EMBEDDED_TABLE: &str = include_str!("jurisdictions.toml");

static TABLE: LazyLock<Result<RulesTable, RulesError>> =
    LazyLock::new(|| RulesTable::parse(EMBEDDED_TABLE));

/// The embedded table, parsed and validated once. An error means the build
/// shipped a broken table (a unit test guards against it); report it and stop.
pub fn table() -> Result<&'static RulesTable, RulesError> {
    TABLE.as_ref().map_err(Clone::clone)
}

/// The rules that apply to a jurisdiction code in the embedded table: exact
/// match (`US-CA`), EU/EEA member states to `EU`, anything else to the
/// defaults ([`JurisdictionRules::is_default`] then says so).
pub fn rules_for(code: &str) -> Result<&'static JurisdictionRules, RulesError> {
    Ok(table()?.rules_for(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_and_validates() {
        let table = table().expect("embedded rules table is valid");
        assert!(!table.version().is_empty());
    }

    #[test]
    fn the_embedded_table_covers_the_named_states_the_later_laws_and_the_eu() {
        let table = table().expect("embedded rules table is valid");
        let codes: Vec<&str> = table.entries().map(|r| r.code()).collect();
        let expected = [
            // Named in the DeepInfra policy.
            "US-CA", "US-CO", "US-CT", "US-DE", "US-FL", "US-IN", "US-IA", "US-MT", "US-OR",
            "US-TN", "US-TX", "US-UT", "US-VA", // The seven more in the research.
            "US-NH", "US-NJ", "US-KY", "US-NE", "US-MD", "US-MN", "US-RI",
            // The laws enacted for 2027.
            "US-OK", "US-LA", "US-AL", // And the GDPR.
            "EU",
        ];
        for code in expected {
            assert!(codes.contains(&code), "{code} missing from the table");
        }
        assert_eq!(codes.len(), expected.len());
    }

    #[test]
    fn a_table_with_an_unknown_request_type_is_refused() {
        let text = EMBEDDED_TABLE.replacen("\"access\"", "\"acess\"", 1);
        assert!(matches!(
            RulesTable::parse(&text),
            Err(RulesError::Parse(_))
        ));
    }

    #[test]
    fn a_table_with_a_bad_unit_is_refused() {
        let text = EMBEDDED_TABLE.replacen("\"calendar_days\"", "\"weeks\"", 1);
        assert!(matches!(
            RulesTable::parse(&text),
            Err(RulesError::Parse(_))
        ));
    }

    #[test]
    fn a_table_with_a_missing_field_is_refused() {
        let text = EMBEDDED_TABLE.replacen("regulator_contact_required = false\n", "", 1);
        assert!(matches!(
            RulesTable::parse(&text),
            Err(RulesError::Parse(_))
        ));
    }

    #[test]
    fn a_table_with_an_unknown_field_is_refused() {
        let text = EMBEDDED_TABLE.replacen("notice_required = true", "notice_requird = true", 1);
        assert!(matches!(
            RulesTable::parse(&text),
            Err(RulesError::Parse(_))
        ));
    }

    #[test]
    fn a_table_with_a_bad_confidence_tag_is_refused() {
        let text = EMBEDDED_TABLE.replacen("confidence = \"S\"", "confidence = \"2/S\"", 1);
        assert!(matches!(
            RulesTable::parse(&text),
            Err(RulesError::Parse(_))
        ));
    }

    #[test]
    fn an_unconfirmed_value_not_marked_conservative_is_refused() {
        let text = EMBEDDED_TABLE.replacen(
            "confidence = \"unconfirmed\"\nconservative = true",
            "confidence = \"unconfirmed\"\nconservative = false",
            1,
        );
        assert_ne!(text, EMBEDDED_TABLE);
        let err = RulesTable::parse(&text).err();
        assert!(
            matches!(&err, Some(RulesError::Invalid(p)) if p.len() == 1 && p[0].contains("unconfirmed")),
            "{err:?}"
        );
    }
}
