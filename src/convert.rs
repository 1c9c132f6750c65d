//! Conversions between protobuf well-known types and domain types, and the
//! one parser of numbered resource names.
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(timestamp)
}

/// A timestamp from a request: it must be a real instant between the years
/// 1 and 9999 (the protobuf rule).
pub fn parse_timestamp(t: &Timestamp) -> Result<DateTime<Utc>, String> {
    const MIN: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err("is not a valid timestamp".into());
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .ok_or_else(|| "is not a valid timestamp".into())
}

pub fn parse_opt_timestamp(t: Option<&Timestamp>) -> Result<Option<DateTime<Utc>>, String> {
    t.map(parse_timestamp).transpose()
}

/// The id of a numbered resource name, `{collection}/{id}`: a positive
/// decimal number written the one way it is printed (digits only, no sign,
/// no leading zero). One resource has one name: "tasks/01" or "tasks/+1"
/// must not reach "tasks/1", or a reader comparing names (an audit
/// reviewer, a cache, a caller's own bookkeeping) sees two resources where
/// there is one. `None` for anything else.
pub fn parse_numbered_name(name: &str, collection: &str) -> Option<i64> {
    let id = name.strip_prefix(collection)?.strip_prefix('/')?;
    let canonical =
        !id.is_empty() && !id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return None;
    }
    id.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_have_one_spelling() {
        assert_eq!(parse_numbered_name("tasks/1", "tasks"), Some(1));
        assert_eq!(parse_numbered_name("tasks/120", "tasks"), Some(120));
        assert_eq!(
            parse_numbered_name("tasks/9223372036854775807", "tasks"),
            Some(i64::MAX)
        );
        for bad in [
            "tasks/01",
            "tasks/001",
            "tasks/+1",
            "tasks/-1",
            "tasks/0",
            "tasks/",
            "tasks/1 ",
            "tasks/ 1",
            "tasks/1/",
            "tasks/１",
            "tasks/9223372036854775808",
            "tasks1",
            "privacyRequests/1",
        ] {
            assert_eq!(parse_numbered_name(bad, "tasks"), None, "{bad:?}");
        }
    }
}
