//! Subject identifiers (emails, phone numbers, device ids) are kept only as
//! keyed hashes: HMAC-SHA-256 under a key the database does not derive, so
//! a leaked table cannot be reversed by hashing a list of emails.
//!
//! The key comes from configuration (`identifier_hash_key`). Without one, a
//! random key is generated once and kept in `service_keys` — an interim
//! measure until keys move out of the database with the security work.
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;

use crate::config::Secret;
use crate::error::{Error, Result};
use crate::requests::model::IdentifierKind;

const KEY_NAME: &str = "identifier_hash_key";

/// The HMAC key for identifiers.
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl HashKey {
    /// The configured key, or the one kept in the database (created on first use).
    pub async fn load(pool: &PgPool, configured: Option<&Secret>) -> Result<Self> {
        if let Some(secret) = configured {
            return Ok(HashKey(secret.expose().as_bytes().to_vec()));
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh)
            .map_err(|e| Error::Internal(format!("no random source for a key: {e}")))?;
        sqlx::query("INSERT INTO service_keys (name, key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(KEY_NAME)
            .bind(&fresh[..])
            .execute(pool)
            .await?;
        let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM service_keys WHERE name = $1")
            .bind(KEY_NAME)
            .fetch_one(pool)
            .await?;
        Ok(HashKey(key))
    }

    /// The keyed hash of an already normalised identifier of `kind`.
    pub fn hash(&self, kind: IdentifierKind, normalized: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts a key of any length");
        mac.update(kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(normalized.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_key_kind_and_value() {
        let a = HashKey(b"key-a".to_vec());
        let b = HashKey(b"key-b".to_vec());
        let h = a.hash(IdentifierKind::EmailAddress, "ann@example.com");
        assert_eq!(h.len(), 32);
        assert_eq!(h, a.hash(IdentifierKind::EmailAddress, "ann@example.com"));
        assert_ne!(h, b.hash(IdentifierKind::EmailAddress, "ann@example.com"));
        assert_ne!(h, a.hash(IdentifierKind::AccountId, "ann@example.com"));
        assert_ne!(h, a.hash(IdentifierKind::EmailAddress, "bob@example.com"));
    }
}
