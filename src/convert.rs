//! Conversions between protobuf well-known types and domain types.
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
