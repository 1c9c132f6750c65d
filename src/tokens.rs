//! Opaque tokens handed to clients: consistency tokens (read-your-writes),
//! change-feed positions (resume tokens) and page tokens (AIP-158). All are
//! base64url text with a version prefix inside, so their format can change
//! without changing the API.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

fn encode(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn decode(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

/// "Everything committed by transaction `xid` (and before) is visible."
/// A write returns the token of its own transaction; a read returns the
/// token of its snapshot (every transaction below the snapshot's xmin has
/// finished). A cache or a replica is fresh enough for a token when it has
/// applied every transaction up to `xid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsistencyToken {
    pub xid: i64,
}

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        encode(&format!("c1:{}", self.xid))
    }

    pub fn parse(token: &str) -> Result<Self, String> {
        let text = decode(token).ok_or("not a consistency token")?;
        let xid = text
            .strip_prefix("c1:")
            .and_then(|x| x.parse::<i64>().ok())
            .filter(|x| *x >= 0)
            .ok_or("not a consistency token")?;
        Ok(Self { xid })
    }

    /// Parses an optional token from a request field (empty = none).
    pub fn parse_optional(token: &str) -> Result<Option<Self>, String> {
        if token.is_empty() {
            Ok(None)
        } else {
            Self::parse(token).map(Some)
        }
    }
}

/// A position in the change feed: the next event to deliver is the first
/// with `(xid, id) >= (xid, id)` in feed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition {
    pub xid: i64,
    pub id: i64,
}

impl FeedPosition {
    pub const BEGINNING: FeedPosition = FeedPosition { xid: 0, id: 0 };

    pub fn encode(&self) -> String {
        encode(&format!("w1:{}:{}", self.xid, self.id))
    }

    pub fn parse(token: &str) -> Result<Self, String> {
        let text = decode(token).ok_or("not a resume token")?;
        let mut parts = text
            .strip_prefix("w1:")
            .ok_or("not a resume token")?
            .split(':');
        let xid = parts.next().and_then(|x| x.parse::<i64>().ok());
        let id = parts.next().and_then(|x| x.parse::<i64>().ok());
        match (xid, id, parts.next()) {
            (Some(xid), Some(id), None) if xid >= 0 && id >= 0 => Ok(Self { xid, id }),
            _ => Err("not a resume token".into()),
        }
    }
}

/// A page token: the keyset position after the last item returned, bound
/// to a hash of the list's filters so a token cannot be reused with other
/// filters.
pub struct PageToken;

impl PageToken {
    /// Encodes the last key of a page for a list with the given filters.
    pub fn encode<K: Serialize>(filters: &str, last_key: &K) -> String {
        let key = serde_json::to_string(last_key).unwrap_or_default();
        encode(&format!("p1:{}:{}", filter_hash(filters), key))
    }

    /// Decodes a page token; empty means the first page.
    pub fn decode<K: DeserializeOwned>(filters: &str, token: &str) -> Result<Option<K>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let text = decode(token).ok_or("not a page token from this list")?;
        let rest = text
            .strip_prefix("p1:")
            .ok_or("not a page token from this list")?;
        let (hash, key) = rest
            .split_once(':')
            .ok_or("not a page token from this list")?;
        if hash != filter_hash(filters) {
            return Err("the page token was issued for different filters".into());
        }
        serde_json::from_str(key)
            .map(Some)
            .map_err(|_| "not a page token from this list".into())
    }
}

fn filter_hash(filters: &str) -> String {
    let digest = Sha256::digest(filters.as_bytes());
    hex::encode(&digest[..8])
}

/// Page sizes: 0 means the default; larger than the cap is capped (AIP-158).
pub fn page_size(requested: i32) -> Result<i64, String> {
    const DEFAULT: i64 = 50;
    const MAX: i64 = 1000;
    match requested {
        n if n < 0 => Err("must not be negative".into()),
        0 => Ok(DEFAULT),
        n => Ok(i64::from(n).min(MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let c = ConsistencyToken { xid: 12345 };
        assert_eq!(ConsistencyToken::parse(&c.encode()), Ok(c));
        let p = FeedPosition { xid: 7, id: 99 };
        assert_eq!(FeedPosition::parse(&p.encode()), Ok(p));
        let t = PageToken::encode("f", &("a", 3));
        assert_eq!(
            PageToken::decode::<(String, i64)>("f", &t),
            Ok(Some(("a".into(), 3)))
        );
    }

    #[test]
    fn a_page_token_is_refused_with_other_filters() {
        let t = PageToken::encode("subject=a", &1);
        assert!(PageToken::decode::<i64>("subject=b", &t).is_err());
    }

    #[test]
    fn garbage_tokens_are_refused() {
        assert!(ConsistencyToken::parse("nonsense!").is_err());
        assert!(FeedPosition::parse(&encode("w1:1")).is_err());
        assert!(FeedPosition::parse(&encode("w1:-1:2")).is_err());
        assert!(PageToken::decode::<i64>("", "zzz").is_err());
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), Ok(50));
        assert_eq!(page_size(5000), Ok(1000));
        assert!(page_size(-1).is_err());
    }
}
