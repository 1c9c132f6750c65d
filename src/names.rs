//! The names every domain shares, each parsed once at the edge: a
//! `SubjectId`, a `PurposeKey` or a `Jurisdiction` inside the service is
//! always valid. Also the text rules for free text and identifiers, and the
//! `string_enum!` macro behind the enums stored by name.
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

/// Free text with a length limit (in characters).
/// Required free text: not blank, at most `max` characters.
pub fn parse_required_text(raw: &str, max: usize) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    parse_text(raw, max)
}

/// An identifier someone chose (a worker's name, a system's reference, a
/// subject's email address): it is matched and printed as given, so any
/// control character (C0 with NUL, tab, CR and LF, DEL, C1) is refused, not
/// just the ones free text refuses: a NUL would make two spellings of one
/// value, a line break would forge lines wherever it is printed.
pub fn refuse_control_characters(raw: &str) -> Result<(), String> {
    if raw.chars().any(char::is_control) {
        return Err(
            "must not contain control characters (NUL, tab, CR, LF, ESC, DEL or C1 controls)"
                .into(),
        );
    }
    Ok(())
}

/// An identifier (see `refuse_control_characters`) of at most `max`
/// characters, possibly empty.
pub fn parse_identifier_text(raw: &str, max: usize) -> Result<String, String> {
    refuse_control_characters(raw)?;
    parse_text(raw, max)
}

/// A required identifier (see `refuse_control_characters`): not blank, at
/// most `max` characters.
pub fn parse_required_identifier(raw: &str, max: usize) -> Result<String, String> {
    refuse_control_characters(raw)?;
    parse_required_text(raw, max)
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

/// A privacy request's id, parsed from `privacyRequests/{id}`: requests
/// own it, and the data systems' tasks name the request they serve by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRef(pub i64);

impl RequestRef {
    pub fn parse_name(name: &str) -> Result<Self, String> {
        crate::convert::parse_numbered_name(name, "privacyRequests")
            .map(RequestRef)
            .ok_or_else(|| {
                "must be \"privacyRequests/{id}\" with a positive numeric id, without a sign or \
                 leading zeros"
                    .into()
            })
    }

    pub fn name(self) -> String {
        format!("privacyRequests/{}", self.0)
    }
}
