//! Where the keyring comes from: `PRIVACY_RECORDS_MASTER_KEY`, a keyring
//! file (TOML, mode 0600, written aside and renamed), or one generated for an
//! embedded install on first start.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sqlx::PgPool;

use super::{Inner, KEY_LEN, KeyBytes, KeyError, Keyring, new_key_id};
use crate::error::{Error, Result};

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

impl Keyring {
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
