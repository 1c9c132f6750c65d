//! The kinds of privacy request the service knows, with the keys the rules
//! table (and later the API) spells them with.

use serde::Deserialize;

/// A kind of privacy request. The keys are those of the rules table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestType {
    /// Right to know / access a copy.
    Access,
    /// Confirm whether personal data is processed at all.
    ConfirmProcessing,
    Deletion,
    Correction,
    Portability,
    /// Opt out of sale (and, in California, "sharing").
    OptOutSale,
    OptOutTargetedAdvertising,
    /// Opt out of profiling in furtherance of decisions with legal or
    /// similarly significant effects (GDPR Art. 22).
    OptOutProfiling,
    /// Limit the use of sensitive data (CCPA 1798.121), or withdraw the
    /// consent or opt out where the law frames it that way.
    LimitSensitiveData,
    /// GDPR Art. 18.
    Restriction,
    /// GDPR Art. 21.
    Objection,
    /// Opt out of a business's use of automated decisionmaking technology
    /// (ADMT) for significant decisions (California: 11 CCR 7221, from
    /// 1 January 2027). Handled like the other opt-outs.
    OptOutAdmt,
    /// Access information about a business's use of ADMT for a significant
    /// decision about the consumer (California: 11 CCR 7222, from 1 January
    /// 2027). Handled like access.
    AccessAdmt,
}

impl RequestType {
    /// Every request type, in the order above.
    pub const ALL: [RequestType; 13] = [
        RequestType::Access,
        RequestType::ConfirmProcessing,
        RequestType::Deletion,
        RequestType::Correction,
        RequestType::Portability,
        RequestType::OptOutSale,
        RequestType::OptOutTargetedAdvertising,
        RequestType::OptOutProfiling,
        RequestType::LimitSensitiveData,
        RequestType::Restriction,
        RequestType::Objection,
        RequestType::OptOutAdmt,
        RequestType::AccessAdmt,
    ];

    /// The table's key for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Access => "access",
            RequestType::ConfirmProcessing => "confirm_processing",
            RequestType::Deletion => "deletion",
            RequestType::Correction => "correction",
            RequestType::Portability => "portability",
            RequestType::OptOutSale => "opt_out_sale",
            RequestType::OptOutTargetedAdvertising => "opt_out_targeted_advertising",
            RequestType::OptOutProfiling => "opt_out_profiling",
            RequestType::LimitSensitiveData => "limit_sensitive_data",
            RequestType::Restriction => "restriction",
            RequestType::Objection => "objection",
            RequestType::OptOutAdmt => "opt_out_admt",
            RequestType::AccessAdmt => "access_admt",
        }
    }

    /// Parse a table key; `None` for anything else (exact, lower case).
    pub fn parse(key: &str) -> Option<RequestType> {
        RequestType::ALL.into_iter().find(|t| t.as_str() == key)
    }

    /// The opt-outs, which take effect at once and, in most US states,
    /// need no authentication.
    pub fn is_opt_out(self) -> bool {
        matches!(
            self,
            RequestType::OptOutSale
                | RequestType::OptOutTargetedAdvertising
                | RequestType::OptOutProfiling
                | RequestType::OptOutAdmt
        )
    }

    /// The types answered with an access package (a copy of what is held).
    pub fn is_access(self) -> bool {
        matches!(
            self,
            RequestType::Access | RequestType::Portability | RequestType::AccessAdmt
        )
    }
}

impl std::fmt::Display for RequestType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_key() {
        for t in RequestType::ALL {
            assert_eq!(RequestType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn unknown_or_differently_cased_keys_do_not_parse() {
        assert_eq!(RequestType::parse("erasure"), None);
        assert_eq!(RequestType::parse("Access"), None);
        assert_eq!(RequestType::parse(""), None);
    }
}
