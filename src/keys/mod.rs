//! Personal data at rest: the keyring (master keys and the identifier lookup
//! key, from configuration, never from the database), per-subject data keys
//! wrapped by a master key (`subject_keys`), and AES-256-GCM sealing of
//! values under them. Erasing a subject deletes its data key, so every value
//! sealed under it, in the live tables and in backups, becomes unreadable
//! (crypto-shredding). `privacy-records rotate-key` re-wraps data keys under
//! the active master key.
//!
//! A sealed value is `[1][data key id: i64 big-endian][nonce: 12][ciphertext
//! and tag]`; its associated data names the subject and the column it
//! belongs to, so a value moved to another subject or column fails to open.
//!
//! Here: the keyring itself and the keys derived from it (identifier
//! lookup, audit checkpoint MACs); `file` where it comes from (the keyring
//! file, the environment, generation for an embedded install); `seal` data
//! keys and sealing; `rotate` shredding and re-wrapping in the database.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::identifiers::HashKey;

mod file;
mod rotate;
mod seal;

pub use file::{default_file, resolve};
pub use rotate::{rotate, shred};
pub use seal::{Opener, Sealer};

/// The columns a sealed value can belong to (part of its associated data).
pub mod column {
    pub const CONSENT_EVIDENCE: &str = "consent_records.evidence";
    pub const IDENTIFIER_VALUE: &str = "request_identifiers.value";
    pub const REQUEST_AGENT: &str = "privacy_requests.agent";
    /// Shared by a request and its tasks: fan-out copies the sealed value.
    pub const CORRECTIONS: &str = "corrections";
    pub const TASK_EXPORT: &str = "tasks.export";
    pub const APPEAL_STATEMENT: &str = "privacy_requests.appeal_statement";
}

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;
const KEY_LEN: usize = 32;

// ---- the keyring ------------------------------------------------------------

/// A 256-bit key that never prints.
#[derive(Clone, PartialEq, Eq)]
struct KeyBytes([u8; KEY_LEN]);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl KeyBytes {
    fn random() -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k)
            .map_err(|e| Error::Internal(format!("no random source for a key: {e}")))?;
        Ok(Self(k))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

/// Why a keyring could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keyring {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("PRIVACY_RECORDS_MASTER_KEY: {0}")]
    Env(String),
    #[error("{0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(#[from] Error),
}

struct Inner {
    /// Master keys by id; `active` wraps new data keys.
    masters: BTreeMap<String, KeyBytes>,
    active: String,
    /// The HMAC-SHA-256 key of identifiers (lookup and suppression).
    lookup: Vec<u8>,
}

/// Master keys (one active) and the identifier lookup key. Cheap to clone.
/// `Keyring::default()` holds no keys: every use fails with a clear error
/// (settings before `serve` resolved them).
#[derive(Clone, Default)]
pub struct Keyring(Option<Arc<Inner>>);

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Keyring(none)"),
            Some(i) => f
                .debug_struct("Keyring")
                .field("active", &i.active)
                .field("master_key_ids", &i.masters.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A fresh master key id: `mk-YYYYMMDD-<8 hex>`.
fn new_key_id() -> Result<String> {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_err(|e| Error::Internal(format!("no random source: {e}")))?;
    Ok(format!(
        "mk-{}-{}",
        chrono::Utc::now().format("%Y%m%d"),
        hex::encode(r)
    ))
}

impl Keyring {
    fn inner(&self) -> Result<&Inner> {
        self.0.as_deref().ok_or_else(|| {
            Error::Internal("no keyring configured (master_key_file or master_key)".into())
        })
    }

    fn build(
        masters: BTreeMap<String, KeyBytes>,
        active: String,
        lookup: Vec<u8>,
    ) -> std::result::Result<Self, String> {
        if let Some(bad) = masters.keys().find(|id| !valid_key_id(id)) {
            return Err(format!(
                "master key id {bad:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."
            ));
        }
        if !masters.contains_key(&active) {
            return Err(format!(
                "the active master key {active:?} is not in the keyring"
            ));
        }
        if lookup.is_empty() {
            return Err("the lookup key is empty".into());
        }
        Ok(Self(Some(Arc::new(Inner {
            masters,
            active,
            lookup,
        }))))
    }

    /// A keyring from its parts: `(id, 32-byte key)` master keys, the first
    /// active, and the lookup key. For tests and tools.
    pub fn from_parts(masters: &[(&str, [u8; 32])], lookup: &[u8]) -> Result<Self> {
        let active = masters
            .first()
            .map(|(id, _)| id.to_string())
            .ok_or_else(|| Error::Internal("a keyring needs a master key".into()))?;
        let map = masters
            .iter()
            .map(|(id, k)| (id.to_string(), KeyBytes(*k)))
            .collect();
        Self::build(map, active, lookup.to_vec()).map_err(Error::Internal)
    }

    /// The id of the master key that wraps new data keys.
    pub fn active_id(&self) -> Result<&str> {
        Ok(&self.inner()?.active)
    }

    /// The ids of all master keys held.
    pub fn master_ids(&self) -> Vec<String> {
        self.0
            .as_ref()
            .map(|i| i.masters.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The keyed hash of identifiers.
    pub fn hash_key(&self) -> Result<HashKey> {
        Ok(HashKey::new(self.inner()?.lookup.clone()))
    }

    fn master(&self, id: &str) -> Result<&KeyBytes> {
        self.inner()?.masters.get(id).ok_or_else(|| {
            Error::Internal(format!(
                "master key {id:?} is not in the keyring: restore it (or run rotate-key \
                 while it is still present)"
            ))
        })
    }
}

// ---- the audit chain's checkpoints --------------------------------------------

impl Keyring {
    /// The key of audit checkpoint MACs under master key `id`, derived
    /// (HMAC-SHA-256) so that the database, which holds the chain, holds
    /// nothing that can make a MAC. `None` when the keyring does not hold
    /// `id` (a master key removed after rotation).
    fn audit_key(&self, id: &str) -> Option<Hmac<Sha256>> {
        let master = self.0.as_ref()?.masters.get(id)?;
        let mut derive = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&master.0).ok()?;
        derive.update(b"privacy-records/audit-checkpoint/v1");
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&derive.finalize().into_bytes()).ok()
    }

    /// The MAC of an audit checkpoint's `message` under master key `id`.
    pub fn audit_mac(&self, id: &str, message: &[u8]) -> Result<Vec<u8>> {
        let mut mac = self
            .audit_key(id)
            .ok_or_else(|| Error::Internal(format!("master key {id:?} is not in the keyring")))?;
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// Whether `tag` is the MAC of `message` under master key `id`
    /// (compared in constant time); `None` when the keyring does not hold
    /// `id`, so nothing can be said.
    pub fn audit_mac_verifies(&self, id: &str, message: &[u8], tag: &[u8]) -> Option<bool> {
        let mut mac = self.audit_key(id)?;
        mac.update(message);
        Some(mac.verify_slice(tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    /// A keyring of the given master ids (first active), for the tests of
    /// `keys` and its parts.
    pub(in crate::keys) fn ring(ids: &[&str]) -> Keyring {
        let masters: Vec<(&str, [u8; 32])> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (*id, [n as u8 + 1; 32]))
            .collect();
        Keyring::from_parts(&masters, b"lookup").unwrap()
    }

    #[test]
    fn responses_open_after_rotation_while_the_old_key_is_kept() {
        let old = ring(&["mk-1"]);
        let sealed = old.seal_response("req-1", b"response").unwrap();
        let new = old.with_new_master().unwrap();
        assert_ne!(new.active_id().unwrap(), "mk-1");
        assert_eq!(new.open_response("req-1", &sealed).unwrap(), b"response");
        assert!(new.open_response("req-2", &sealed).is_err());
        // A response an earlier version stored in clear replays as it is.
        assert_eq!(
            new.open_response("req-1", b"\x08\x01").unwrap(),
            b"\x08\x01"
        );
    }

    #[test]
    fn the_environment_format_names_the_active_key_first() {
        let k = B64.encode([3u8; 32]);
        let r = Keyring::from_env_value(&format!("mk-b:{k},mk-a:{k}"), Some(b"l")).unwrap();
        assert_eq!(r.active_id().unwrap(), "mk-b");
        assert!(Keyring::from_env_value(&format!("mk-b:{k}"), None).is_err());
        assert!(Keyring::from_env_value("mk-b:short", Some(b"l")).is_err());
    }

    #[test]
    fn a_generated_keyring_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = default_file(dir.path());
        let r = Keyring::generate(None).unwrap();
        r.write_file(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Keyring::from_file(&path, None).unwrap();
        assert_eq!(back.active_id().unwrap(), r.active_id().unwrap());
        assert_eq!(
            back.hash_key().unwrap().hash(
                crate::identifiers::IdentifierKind::EmailAddress,
                "ann@example.com"
            ),
            r.hash_key().unwrap().hash(
                crate::identifiers::IdentifierKind::EmailAddress,
                "ann@example.com"
            )
        );
        assert!(r.write_file(&path, true).is_err(), "never overwrites");
        assert!(!format!("{back:?}").contains(&B64.encode(&back.inner().unwrap().lookup)));
    }
}
