//! Subject identifiers (emails, phone numbers, device ids) are kept only as
//! keyed hashes: HMAC-SHA-256 under a key the database does not derive, so
//! a leaked table cannot be reversed by hashing a list of emails.
//!
//! The key is the keyring's lookup key (`crate::keys`), from configuration,
//! never from the database. The identifiers' values are sealed beside the
//! hashes (`request_identifiers.value_sealed`).
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::names::string_enum;

string_enum!(
    /// The kind of an identifier.
    IdentifierKind {
        EmailAddress = "EMAIL_ADDRESS",
        PhoneNumber = "PHONE_NUMBER",
        DeviceId = "DEVICE_ID",
        AccountId = "ACCOUNT_ID",
        SubjectId = "SUBJECT_ID",
    }
);

impl IdentifierKind {
    /// The form compared: emails case-insensitively, phone numbers by their
    /// digits, the rest as given (trimmed). `None` when nothing is left.
    pub fn normalize(self, raw: &str) -> Option<String> {
        let trimmed = raw.trim();
        let value = match self {
            IdentifierKind::EmailAddress => trimmed.to_lowercase(),
            IdentifierKind::PhoneNumber => trimmed.chars().filter(char::is_ascii_digit).collect(),
            _ => trimmed.to_owned(),
        };
        (!value.is_empty()).then_some(value)
    }
}

/// The HMAC key for identifiers.
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl HashKey {
    /// A key from the keyring (`crate::keys`).
    pub fn new(key: Vec<u8>) -> Self {
        HashKey(key)
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

    /// The keyed fingerprint of a request (`crate::idempotency`): its
    /// method and encoded body, under a label of its own so that it never
    /// equals an identifier's hash.
    pub fn fingerprint(&self, method: &str, body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts a key of any length");
        mac.update(b"privacy-records/request-fingerprint/v1\0");
        mac.update(method.as_bytes());
        mac.update(&[0]);
        mac.update(body);
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
