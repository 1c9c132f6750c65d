//! Per-subject data keys, wrapped by a master key in `subject_keys` and
//! created on first need; AES-256-GCM sealing of values under them; and the
//! sealing of stored idempotency responses under a key derived from the
//! master key.
use std::collections::HashMap;

use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgConnection;

use super::{HEADER_LEN, KEY_LEN, KeyBytes, Keyring, NONCE_LEN, VERSION};
use crate::error::{Error, Result};

impl Keyring {
    // ---- data keys ----------------------------------------------------------

    fn wrap_aad(subject: &str) -> Vec<u8> {
        [
            b"privacy-records/data-key/v1\0".as_slice(),
            subject.as_bytes(),
        ]
        .concat()
    }

    /// Wraps a data key for `subject` under the active master key.
    pub(super) fn wrap(&self, subject: &str, key: &KeyBytes) -> Result<(String, Vec<u8>)> {
        let active = self.active_id()?.to_owned();
        let sealed = aead_seal(self.master(&active)?, &Self::wrap_aad(subject), &key.0)?;
        Ok((active, sealed))
    }

    pub(super) fn unwrap(
        &self,
        subject: &str,
        master_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyBytes> {
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

#[cfg(test)]
mod tests {
    use super::super::column;
    use super::super::tests::ring;
    use super::*;

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
}
