//! The chain's arithmetic: what a link's hash covers, in a canonical,
//! length-prefixed encoding, so no two different events hash alike; what a
//! checkpoint's MAC covers; and anchors, the positions callers keep.
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// The hash before the first link.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of an event the chain covers, as read back from the database
/// (`details` is PostgreSQL's own text of the jsonb, which is canonical).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventFields {
    pub id: i64,
    pub xid: i64,
    pub occur_time: DateTime<Utc>,
    pub actor: String,
    pub method: String,
    pub target: String,
    pub subject_id: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn optional(hasher: &mut Sha256, value: Option<&str>) {
    match value {
        None => hasher.update([0u8]),
        Some(v) => {
            hasher.update([1u8]);
            field(hasher, v.as_bytes());
        }
    }
}

/// The hash of link `seq`, chained to `prev`.
pub fn link(prev: &[u8], seq: i64, e: &EventFields) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"privacy-records audit v1\0");
    field(&mut h, prev);
    h.update(seq.to_be_bytes());
    h.update(e.id.to_be_bytes());
    h.update(e.xid.to_be_bytes());
    field(
        &mut h,
        e.occur_time
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
            .as_bytes(),
    );
    field(&mut h, e.actor.as_bytes());
    field(&mut h, e.method.as_bytes());
    field(&mut h, e.target.as_bytes());
    optional(&mut h, e.subject_id.as_deref());
    optional(&mut h, e.request_id.as_deref());
    field(&mut h, e.details.as_bytes());
    h.finalize().to_vec()
}

/// What a checkpoint's MAC covers: its chain position and the hash of the
/// link there. The hash covers every link before it, so one MAC vouches for
/// the whole chain up to that position.
pub fn checkpoint_message(seq: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + hash.len());
    m.extend_from_slice(b"privacy-records audit checkpoint v1\0");
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(hash.len() as u64).to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// A position of the chain a caller keeps outside the service:
/// `{chain_seq}:{hash in hex}`. The hash covers every link up to it, so a
/// log that still yields this hash at this position still holds everything
/// that was there when the anchor was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl Anchor {
    /// Parses `{chain_seq}:{64 hex digits}`, one spelling per anchor (no
    /// sign, no leading zeros), as VerifyAuditLog hands it out.
    pub fn parse(raw: &str) -> Result<Self, String> {
        const FORM: &str = "must be \"{chain_seq}:{hash}\" as VerifyAuditLog returns it \
                            (a positive position without leading zeros, then 64 hex digits)";
        let (seq, hash) = raw.split_once(':').ok_or_else(|| FORM.to_owned())?;
        let canonical = !seq.is_empty()
            && seq.len() <= 19
            && seq.bytes().all(|b| b.is_ascii_digit())
            && !seq.starts_with('0');
        let seq = canonical
            .then(|| seq.parse::<i64>().ok())
            .flatten()
            .ok_or_else(|| FORM.to_owned())?;
        let hash = (hash.len() == 64)
            .then(|| hex::decode(hash).ok())
            .flatten()
            .ok_or_else(|| FORM.to_owned())?;
        Ok(Self { seq, hash })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(&self.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventFields {
        EventFields {
            id: 7,
            xid: 900,
            occur_time: DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("time"),
            actor: "peer:127.0.0.1:5000".into(),
            method: "privacy.v1.ConsentService/RecordConsent".into(),
            target: "subjects/a/consentRecords/1".into(),
            subject_id: Some("a".into()),
            request_id: Some("r-1".into()),
            details: r#"{"decision": "GRANTED"}"#.into(),
        }
    }

    #[test]
    fn every_field_and_the_previous_link_count() {
        let base = link(&GENESIS, 1, &event());
        assert_eq!(base.len(), 32);
        assert_eq!(base, link(&GENESIS, 1, &event()));
        assert_ne!(base, link(&[1; 32], 1, &event()));
        assert_ne!(base, link(&GENESIS, 2, &event()));
        let mut e = event();
        e.details = r#"{"decision": "REFUSED"}"#.into();
        assert_ne!(base, link(&GENESIS, 1, &e));
        let mut e = event();
        e.subject_id = None;
        assert_ne!(base, link(&GENESIS, 1, &e));
        // Moving bytes between fields changes the hash (length prefixes).
        let mut e = event();
        e.actor = "peer:127.0.0.1:5000p".into();
        e.method = "rivacy.v1.ConsentService/RecordConsent".into();
        assert_ne!(base, link(&GENESIS, 1, &e));
    }

    #[test]
    fn an_anchor_has_one_spelling_and_reads_back() {
        let a = Anchor {
            seq: 42,
            hash: vec![0xab; 32],
        };
        let text = a.to_string();
        assert_eq!(text, format!("42:{}", "ab".repeat(32)));
        assert_eq!(Anchor::parse(&text), Ok(a));
        let hash = "ab".repeat(32);
        for bad in [
            String::new(),
            "42".into(),
            format!("042:{hash}"),
            format!("+42:{hash}"),
            format!("-42:{hash}"),
            format!("0:{hash}"),
            format!(" 42:{hash}"),
            format!("42:{}", "ab".repeat(31)),
            format!("42:{}", "zz".repeat(32)),
            format!("99999999999999999999:{hash}"),
        ] {
            assert!(Anchor::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_checkpoint_message_covers_its_position_and_hash() {
        let m = checkpoint_message(3, &[1; 32]);
        assert_ne!(m, checkpoint_message(4, &[1; 32]));
        assert_ne!(m, checkpoint_message(3, &[2; 32]));
    }
}
