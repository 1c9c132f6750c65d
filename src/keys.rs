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
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};

use crate::error::{Error, Result};
use crate::identifiers::HashKey;

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

/// The keyring file: TOML, mode 0600.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    active: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lookup_key: Option<String>,
    master_keys: BTreeMap<String, String>,
}

fn decode_key(what: &str, b64: &str) -> std::result::Result<KeyBytes, String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))?;
    let arr: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{what} must be 32 bytes, is {}", b.len()))?;
    Ok(KeyBytes(arr))
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

    /// Parses `PRIVACY_RECORDS_MASTER_KEY`: `id:base64[,id:base64...]`, the
    /// first one active. The lookup key then comes from `identifier_hash_key`.
    pub fn from_env_value(value: &str, lookup: Option<&[u8]>) -> Result<Self, KeyError> {
        let mut masters = BTreeMap::new();
        let mut active = None;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, key) = part
                .split_once(':')
                .ok_or_else(|| KeyError::Env("expected id:base64[,id:base64...]".into()))?;
            let key = decode_key(&format!("master key {id:?}"), key).map_err(KeyError::Env)?;
            active.get_or_insert_with(|| id.to_owned());
            masters.insert(id.to_owned(), key);
        }
        let active = active.ok_or_else(|| KeyError::Env("names no master key".into()))?;
        let lookup = lookup.ok_or_else(|| {
            KeyError::Config(
                "a master key from the environment needs the identifier lookup key in \
                 identifier_hash_key (PRIVACY_RECORDS_IDENTIFIER_HASH_KEY)"
                    .into(),
            )
        })?;
        Self::build(masters, active, lookup.to_vec()).map_err(KeyError::Env)
    }

    /// Reads a keyring file. `lookup` (from `identifier_hash_key`) is used
    /// when the file has no `lookup_key`; both at once is refused.
    pub fn from_file(path: &Path, lookup: Option<&[u8]>) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        warn_if_readable_by_others(path);
        let file: KeyringFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut masters = BTreeMap::new();
        for (id, b64) in &file.master_keys {
            masters.insert(
                id.clone(),
                decode_key(&format!("master key {id:?}"), b64).map_err(err)?,
            );
        }
        let lookup = match (&file.lookup_key, lookup) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "has a lookup_key and identifier_hash_key is set too: keep one".into(),
                ));
            }
            (Some(b64), None) => B64
                .decode(b64.trim())
                .map_err(|e| err(format!("lookup_key is not base64: {e}")))?,
            (None, Some(l)) => l.to_vec(),
            (None, None) => {
                return Err(err(
                    "has no lookup_key (and identifier_hash_key is not set)".into(),
                ));
            }
        };
        Self::build(masters, file.active, lookup).map_err(err)
    }

    fn to_file(&self) -> Result<KeyringFile> {
        let i = self.inner()?;
        Ok(KeyringFile {
            active: i.active.clone(),
            lookup_key: (!i.lookup.is_empty()).then(|| B64.encode(&i.lookup)),
            master_keys: i
                .masters
                .iter()
                .map(|(id, k)| (id.clone(), B64.encode(k.0)))
                .collect(),
        })
    }

    /// A new keyring with one fresh master key, and `lookup` (or a fresh one).
    pub fn generate(lookup: Option<Vec<u8>>) -> Result<Self> {
        let id = new_key_id()?;
        let lookup = match lookup {
            Some(l) => l,
            None => KeyBytes::random()?.0.to_vec(),
        };
        let mut masters = BTreeMap::new();
        masters.insert(id.clone(), KeyBytes::random()?);
        Self::build(masters, id, lookup).map_err(Error::Internal)
    }

    /// This keyring with a fresh master key added and made active.
    pub fn with_new_master(&self) -> Result<Self> {
        let i = self.inner()?;
        let id = new_key_id()?;
        let mut masters = i.masters.clone();
        masters.insert(id.clone(), KeyBytes::random()?);
        Self::build(masters, id, i.lookup.clone()).map_err(Error::Internal)
    }

    /// Writes the keyring to `path` (mode 0600, written aside then renamed,
    /// so a crash leaves the old file or the new one). `create_new` refuses
    /// to replace an existing file.
    pub fn write_file(&self, path: &Path, create_new: bool) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |reason: String| KeyError::File {
            path: path.to_owned(),
            reason,
        };
        let text = format!(
            "# privacy-records keyring. Secret: keep it mode 0600 and back it up apart from\n\
             # the database. Without it, the encrypted personal data cannot be read.\n{}",
            toml::to_string(&self.to_file()?).map_err(|e| err(e.to_string()))?
        );
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        if create_new && path.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err("exists already".into()));
        }
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
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

    // ---- data keys ----------------------------------------------------------

    fn wrap_aad(subject: &str) -> Vec<u8> {
        [
            b"privacy-records/data-key/v1\0".as_slice(),
            subject.as_bytes(),
        ]
        .concat()
    }

    /// Wraps a data key for `subject` under the active master key.
    fn wrap(&self, subject: &str, key: &KeyBytes) -> Result<(String, Vec<u8>)> {
        let active = self.active_id()?.to_owned();
        let sealed = aead_seal(self.master(&active)?, &Self::wrap_aad(subject), &key.0)?;
        Ok((active, sealed))
    }

    fn unwrap(&self, subject: &str, master_id: &str, wrapped: &[u8]) -> Result<KeyBytes> {
        let plain = aead_open(self.master(master_id)?, &Self::wrap_aad(subject), wrapped)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "the data key of a subject does not unwrap under master key {master_id:?} \
                     (wrong key material for that id, or a tampered row)"
                ))
            })?;
        let arr: [u8; KEY_LEN] = plain
            .try_into()
            .map_err(|_| Error::Internal("an unwrapped data key has the wrong length".into()))?;
        Ok(KeyBytes(arr))
    }

    /// The subject's data key, created on first need in the caller's
    /// transaction (concurrent first writers agree on one key).
    pub async fn sealer(&self, conn: &mut PgConnection, subject: &str) -> Result<Sealer> {
        let fresh = KeyBytes::random()?;
        let (master_id, wrapped) = self.wrap(subject, &fresh)?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO subject_keys (subject_id, master_key_id, wrapped_key)
             VALUES ($1, $2, $3) ON CONFLICT (subject_id) DO NOTHING RETURNING id",
        )
        .bind(subject)
        .bind(&master_id)
        .bind(&wrapped)
        .fetch_optional(&mut *conn)
        .await?;
        let (id, key) = match inserted {
            Some(id) => (id, fresh),
            None => {
                let (id, master_id, wrapped): (i64, String, Vec<u8>) = sqlx::query_as(
                    "SELECT id, master_key_id, wrapped_key FROM subject_keys WHERE subject_id = $1",
                )
                .bind(subject)
                .fetch_optional(&mut *conn)
                .await?
                // Inserted by a transaction our snapshot cannot see: retry.
                .ok_or(Error::Conflict)?;
                (id, self.unwrap(subject, &master_id, &wrapped)?)
            }
        };
        Ok(Sealer {
            id,
            key,
            subject: subject.to_owned(),
        })
    }

    /// The data keys the subjects already have (in one query), as sealers;
    /// a subject without one (never given sealed data, or erased) gets
    /// none, and none is made for it.
    pub async fn existing_sealers(
        &self,
        conn: &mut PgConnection,
        subjects: &[&str],
    ) -> Result<HashMap<String, Sealer>> {
        if subjects.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, subject_id, master_key_id, wrapped_key FROM subject_keys
             WHERE subject_id = ANY ($1)",
        )
        .bind(subjects)
        .fetch_all(conn)
        .await?;
        let mut sealers = HashMap::with_capacity(rows.len());
        for (id, subject, master_id, wrapped) in rows {
            let key = self.unwrap(&subject, &master_id, &wrapped)?;
            sealers.insert(subject.clone(), Sealer { id, key, subject });
        }
        Ok(sealers)
    }

    /// Fetches (in one query) and unwraps the data keys the sealed values
    /// need. Keys that no longer exist (the subject was erased) open nothing.
    pub async fn opener<'a, 'b, E>(
        &self,
        db: E,
        sealed: impl IntoIterator<Item = &'b [u8]>,
    ) -> Result<Opener>
    where
        E: sqlx::PgExecutor<'a>,
    {
        let mut ids: Vec<i64> = sealed.into_iter().filter_map(key_id_of).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Opener::default());
        }
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, subject_id, master_key_id, wrapped_key FROM subject_keys WHERE id = ANY ($1)",
        )
        .bind(&ids)
        .fetch_all(db)
        .await?;
        let mut keys = HashMap::new();
        for (id, subject, master_id, wrapped) in rows {
            let key = self.unwrap(&subject, &master_id, &wrapped)?;
            keys.insert(id, (subject, key));
        }
        Ok(Opener { keys })
    }

    // ---- idempotency responses ----------------------------------------------

    /// The key of stored idempotency responses under master key `id`,
    /// derived (HMAC-SHA-256) so it needs no row: responses live a few days.
    fn response_key(&self, id: &str) -> Result<KeyBytes> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.master(id)?.0)
            .map_err(|e| Error::Internal(e.to_string()))?;
        mac.update(b"privacy-records/idempotency-response/v1");
        Ok(KeyBytes(mac.finalize().into_bytes().into()))
    }

    /// Seals a stored response: `[0][len][master key id][sealed]`. The
    /// leading zero (never the first byte of an encoded protobuf message,
    /// field number 0 being invalid) tells it from a response stored in
    /// clear by an earlier version.
    pub fn seal_response(&self, request_id: &str, response: &[u8]) -> Result<Vec<u8>> {
        let id = self.active_id()?;
        let sealed = aead_seal(&self.response_key(id)?, request_id.as_bytes(), response)?;
        let mut out = Vec::with_capacity(2 + id.len() + sealed.len());
        out.push(0);
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open_response(&self, request_id: &str, stored: &[u8]) -> Result<Vec<u8>> {
        let bad = || Error::Internal("a stored idempotency response does not open".into());
        let Some((&0, stored)) = stored.split_first() else {
            // Stored in clear before responses were sealed (or empty).
            return Ok(stored.to_vec());
        };
        let (&len, rest) = stored.split_first().ok_or_else(bad)?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(bad());
        }
        let id = std::str::from_utf8(&rest[..len]).map_err(|_| bad())?;
        aead_open(&self.response_key(id)?, request_id.as_bytes(), &rest[len..]).ok_or_else(bad)
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

/// Seals values of one subject under its data key.
pub struct Sealer {
    id: i64,
    key: KeyBytes,
    subject: String,
}

impl Sealer {
    pub fn seal(&self, column: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let sealed = aead_seal(&self.key, &value_aad(&self.subject, column), plaintext)?;
        let mut out = Vec::with_capacity(9 + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn seal_json<T: serde::Serialize>(&self, column: &str, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        self.seal(column, &bytes)
    }
}

/// Opens sealed values with the data keys fetched for them.
#[derive(Default)]
pub struct Opener {
    keys: HashMap<i64, (String, KeyBytes)>,
}

impl Opener {
    /// The value, or `None` when its data key was destroyed (the subject was
    /// erased). A value that does not authenticate (moved to another subject
    /// or column, or altered) is an error, never garbage.
    pub fn open(&self, subject: &str, column: &str, sealed: &[u8]) -> Result<Option<Vec<u8>>> {
        let id = key_id_of(sealed).ok_or_else(|| {
            Error::Internal(format!("a sealed {column} value has an unknown format"))
        })?;
        let Some((key_subject, key)) = self.keys.get(&id) else {
            return Ok(None);
        };
        if key_subject != subject {
            return Err(Error::Internal(format!(
                "a sealed {column} value names another subject's data key"
            )));
        }
        aead_open(key, &value_aad(subject, column), &sealed[9..])
            .map(Some)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "a sealed {column} value does not authenticate under data key {id}"
                ))
            })
    }

    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        subject: &str,
        column: &str,
        sealed: &[u8],
    ) -> Result<Option<T>> {
        self.open(subject, column, sealed)?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| Error::Internal(format!("a sealed {column} value: {e}")))
            })
            .transpose()
    }
}

fn key_id_of(sealed: &[u8]) -> Option<i64> {
    if sealed.len() < HEADER_LEN + 16 || sealed[0] != VERSION {
        return None;
    }
    Some(i64::from_be_bytes(sealed[1..9].try_into().ok()?))
}

fn value_aad(subject: &str, column: &str) -> Vec<u8> {
    [
        b"privacy-records/value/v1\0".as_slice(),
        subject.as_bytes(),
        b"\0",
        column.as_bytes(),
    ]
    .concat()
}

/// `nonce || ciphertext || tag` with a random 96-bit nonce.
fn aead_seal(key: &KeyBytes, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("no random source: {e}")))?;
    let ct = key
        .cipher()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Internal("encryption failed".into()))?;
    Ok([nonce.as_slice(), &ct].concat())
}

fn aead_open(key: &KeyBytes, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    key.cipher()
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .ok()
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the keyring file is readable by group or others; chmod 0600 it"
        );
    }
}

// ---- erasure and rotation -----------------------------------------------------

/// Destroys the subject's data key (crypto-shredding), in the caller's
/// transaction. Returns whether there was one.
pub async fn shred(conn: &mut PgConnection, subject: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM subject_keys WHERE subject_id = $1")
        .bind(subject)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Re-wraps every data key not under the active master key, `batch` keys
/// per transaction. Safe to rerun and to run beside the server: each batch
/// locks its rows (SKIP LOCKED) and commits on its own. Returns the number
/// of keys re-wrapped.
pub async fn rotate(pool: &PgPool, keyring: &Keyring, batch: i64) -> Result<u64> {
    let active = keyring.active_id()?.to_owned();
    let mut total = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, subject_id, master_key_id, wrapped_key FROM subject_keys
             WHERE master_key_id <> $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&active)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut wrapped = Vec::with_capacity(rows.len());
        for (id, subject, master_id, old) in &rows {
            let key = keyring.unwrap(subject, master_id, old)?;
            ids.push(*id);
            wrapped.push(keyring.wrap(subject, &key)?.1);
        }
        sqlx::query(
            "UPDATE subject_keys k SET master_key_id = $1, wrapped_key = t.w, wrap_time = now()
             FROM unnest($2::bigint[], $3::bytea[]) AS t (id, w) WHERE k.id = t.id",
        )
        .bind(&active)
        .bind(&ids)
        .bind(&wrapped)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += rows.len() as u64;
        tracing::info!(rewrapped = total, "data keys re-wrapped");
    }
}

// ---- where the keyring comes from --------------------------------------------

/// The keyring file `serve` generates in an embedded install's data directory.
pub fn default_file(data_dir: &Path) -> PathBuf {
    data_dir.join("keyring.toml")
}

/// Resolves the keyring: `master_key` (environment) first, then
/// `master_key_file`; without either, an embedded install (no database URL)
/// uses `keyring.toml` in its data directory, generated on first start; an
/// external database refuses to start. The generated keyring carries over the
/// identifier hash key an older version kept in `service_keys`, so old hashes
/// still match, and removes it from the database.
pub async fn resolve(
    settings: &crate::config::Settings,
    pool: &PgPool,
) -> Result<Keyring, KeyError> {
    let lookup = settings
        .requests
        .identifier_hash_key
        .as_ref()
        .map(|s| s.expose().as_bytes().to_vec());
    if let Some(value) = &settings.master_key {
        return Keyring::from_env_value(value.expose(), lookup.as_deref());
    }
    if let Some(path) = &settings.master_key_file {
        return Keyring::from_file(path, lookup.as_deref());
    }
    if settings.database_url.is_some() {
        return Err(KeyError::Config(
            "no master key configured: set master_key_file (PRIVACY_RECORDS_MASTER_KEY_FILE) \
             or PRIVACY_RECORDS_MASTER_KEY; an external database never holds the key"
                .into(),
        ));
    }
    let path = default_file(&settings.data_dir);
    if path.exists() {
        return Keyring::from_file(&path, lookup.as_deref());
    }
    let legacy = legacy_lookup_key(pool).await?;
    let keyring = match (&lookup, &legacy) {
        // The configured key keeps being used from configuration.
        (Some(l), _) => Keyring::generate(Some(l.clone()))?.without_lookup_in_file(),
        (None, Some(l)) => Keyring::generate(Some(l.clone()))?,
        (None, None) => Keyring::generate(None)?,
    };
    keyring.write_file(&path, true)?;
    tracing::info!(path = %path.display(), "generated a keyring for the embedded database");
    let keyring = Keyring::from_file(&path, lookup.as_deref())?;
    if legacy.is_some() {
        sqlx::query("DELETE FROM service_keys WHERE name = 'identifier_hash_key'")
            .execute(pool)
            .await?;
        tracing::info!("moved the identifier hash key from the database into the keyring");
    }
    Ok(keyring)
}

impl Keyring {
    /// Writes the keyring over `path`; the lookup key is left out when it
    /// lives in `identifier_hash_key` instead.
    pub fn write_file_keeping_lookup(
        &self,
        path: &Path,
        lookup_in_config: bool,
    ) -> Result<(), KeyError> {
        if lookup_in_config {
            self.clone()
                .without_lookup_in_file()
                .write_file(path, false)
        } else {
            self.write_file(path, false)
        }
    }

    /// Marks the keyring so `write_file` leaves the lookup key out (it stays
    /// in `identifier_hash_key`).
    fn without_lookup_in_file(self) -> Self {
        Keyring(self.0.map(|i| {
            Arc::new(Inner {
                lookup: Vec::new(),
                masters: i.masters.clone(),
                active: i.active.clone(),
            })
        }))
    }
}

/// The identifier hash key an earlier version generated into the database.
async fn legacy_lookup_key(pool: &PgPool) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('service_keys') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT key FROM service_keys WHERE name = 'identifier_hash_key'")
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Keyring {
        let masters: Vec<(&str, [u8; 32])> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (*id, [n as u8 + 1; 32]))
            .collect();
        Keyring::from_parts(&masters, b"lookup").unwrap()
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_subject_and_master() {
        let r = ring(&["mk-1"]);
        let k = KeyBytes::random().unwrap();
        let (id, w) = r.wrap("ann", &k).unwrap();
        assert_eq!(id, "mk-1");
        assert_eq!(r.unwrap("ann", "mk-1", &w).unwrap(), k);
        assert!(r.unwrap("bob", "mk-1", &w).is_err());
        let err = r.unwrap("ann", "mk-gone", &w).unwrap_err().to_string();
        assert!(err.contains("mk-gone"), "{err}");
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_subject_and_column() {
        let s = Sealer {
            id: 7,
            key: KeyBytes([9; 32]),
            subject: "ann".into(),
        };
        let sealed = s.seal(column::CONSENT_EVIDENCE, b"MSA clause 7").unwrap();
        let mut o = Opener::default();
        o.keys.insert(7, ("ann".into(), KeyBytes([9; 32])));
        assert_eq!(
            o.open("ann", column::CONSENT_EVIDENCE, &sealed)
                .unwrap()
                .unwrap(),
            b"MSA clause 7"
        );
        assert!(o.open("ann", column::TASK_EXPORT, &sealed).is_err());
        assert!(o.open("bob", column::CONSENT_EVIDENCE, &sealed).is_err());
        // Its data key destroyed: absent, not an error.
        assert!(
            Opener::default()
                .open("ann", column::CONSENT_EVIDENCE, &sealed)
                .unwrap()
                .is_none()
        );
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
                crate::requests::model::IdentifierKind::EmailAddress,
                "ann@example.com"
            ),
            r.hash_key().unwrap().hash(
                crate::requests::model::IdentifierKind::EmailAddress,
                "ann@example.com"
            )
        );
        assert!(r.write_file(&path, true).is_err(), "never overwrites");
        assert!(!format!("{back:?}").contains(&B64.encode(&back.inner().unwrap().lookup)));
    }
}
