//! AIP-155 request ids: a mutating RPC runs at most once per `request_id`.
//!
//! The key is inserted first, in the RPC's own transaction, so a concurrent
//! retry with the same id waits on the key's unique index until the first
//! attempt commits (then it replays the stored response) or rolls back (then
//! it runs itself). The response is stored in the same transaction as the
//! change, so "acknowledged" and "remembered" are one commit.
use futures::future::BoxFuture;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::db::retry_on_conflict;
use crate::error::{Error, Result, Violations};
use crate::keys::Keyring;
use crate::tokens::ConsistencyToken;

/// A client-chosen idempotency key: 1-128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A mutation's request id (reported first) and the rest of its parse,
    /// every invalid field named at once.
    pub fn parse_with<T>(
        request_id: &str,
        rest: impl FnOnce(&mut Violations) -> Option<T>,
    ) -> Result<(RequestId, T)> {
        Violations::collect(|v| {
            let request_id = v.check("request_id", RequestId::parse(request_id));
            let rest = rest(v);
            Some((request_id?, rest?))
        })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err(
                "is required: a client-chosen id (a UUID is best) that makes retries safe".into(),
            );
        }
        if raw.len() > 128 {
            return Err("must be at most 128 characters".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fingerprint of a request: its method and its encoded bytes (prost
/// encodes a message deterministically), so "the same request" means the
/// same method with the same fields. Keyed (HMAC-SHA-256 under the
/// keyring's lookup key, which never enters the database), because a
/// request may carry a person's data (corrections, identifiers): a plain
/// hash kept beside its request id could be tested against guesses.
pub struct Fingerprint {
    keyed: Vec<u8>,
    /// The plain SHA-256 that keys stored before fingerprints were keyed
    /// hold; matched only against those (they expire with
    /// `idempotency_key_ttl_secs`, after which this can go).
    legacy: Vec<u8>,
}

impl Fingerprint {
    /// What is stored with a new key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.keyed
    }

    /// Whether a stored fingerprint is this request's.
    fn matches(&self, stored: &[u8]) -> bool {
        stored == self.keyed.as_slice() || stored == self.legacy.as_slice()
    }
}

pub fn fingerprint<M: Message>(keys: &Keyring, method: &str, request: &M) -> Result<Fingerprint> {
    let body = request.encode_to_vec();
    let mut legacy = Sha256::new();
    legacy.update(method.as_bytes());
    legacy.update([0u8]);
    legacy.update(&body);
    Ok(Fingerprint {
        keyed: keys.hash_key()?.fingerprint(method, &body),
        legacy: legacy.finalize().to_vec(),
    })
}

/// A request id as its caller's: the same id from another caller is
/// another key (see `Caller::request_id_scope`), so a stored response is
/// served only to the caller whose call left it.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    scope: &'a str,
    request_id: &'a RequestId,
}

impl<'a> Key<'a> {
    pub fn new(scope: &'a str, request_id: &'a RequestId) -> Self {
        Key { scope, request_id }
    }

    pub fn scope(&self) -> &'a str {
        self.scope
    }

    pub fn request_id(&self) -> &'a str {
        self.request_id.as_str()
    }

    /// What a stored part's seal is bound to, so a part moved to another
    /// key (another caller's, another id) does not open.
    fn binding(&self) -> String {
        format!(
            "{RESPONSE_COLUMN}\0{}\0{}",
            self.scope,
            self.request_id.as_str()
        )
    }
}

/// The column stored response parts are sealed for (their associated data).
const RESPONSE_COLUMN: &str = "idempotency_keys.response";

/// The first byte of a stored response cut into parts by subject. Never
/// the first byte of an encoded message (field number 0 is invalid) nor of
/// a response sealed whole (0).
const PARTS_FORMAT: u8 = 2;

/// A stored response's hold on personal data: which subjects' data each
/// part of it holds. A part that holds a subject's data is sealed under
/// that subject's data key, so erasing the subject (which destroys the
/// key) takes the part with it, in the live table and in backups alike;
/// a part that holds no one's is sealed under the service's response key.
pub trait Holds: Message + Default {
    /// Whether a replay may answer with the parts that remain when some
    /// went with an erased subject (a batch of many subjects' items, each
    /// whole on its own), or must be refused (one resource: without its
    /// subject's part there is no answer).
    const PARTIAL: bool = false;

    /// The response in parts, each with the subject whose data it holds
    /// (None: no one's). The parts' encodings, concatenated, decode as the
    /// response (protobuf merges concatenated messages and appends their
    /// repeated fields).
    fn parts(&self) -> Vec<(Option<&str>, Vec<u8>)> {
        vec![(None, self.encode_to_vec())]
    }
}

/// A subject id field: empty means none.
fn subject(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

/// Responses that hold no subject's data.
macro_rules! holds_nobody {
    ($($t:ty),* $(,)?) => { $(impl Holds for $t {})* };
}

/// Responses about one subject, named by their `subject_id`.
macro_rules! holds_its_subject {
    ($($t:ty),* $(,)?) => {
        $(impl Holds for $t {
            fn parts(&self) -> Vec<(Option<&str>, Vec<u8>)> {
                vec![(subject(&self.subject_id), self.encode_to_vec())]
            }
        })*
    };
}

holds_nobody!(
    crate::proto::Purpose,
    crate::proto::PolicyVersion,
    crate::proto::DataSystem,
    crate::proto::RetentionPolicy,
    crate::proto::RunRetentionSweepResponse,
);

holds_its_subject!(
    crate::proto::Subject,
    crate::proto::Task,
    crate::proto::PrivacyRequest,
    crate::proto::Disclosure,
    crate::proto::RetentionOverride,
    crate::proto::LegalHold,
);

impl Holds for crate::proto::RecordConsentResponse {
    fn parts(&self) -> Vec<(Option<&str>, Vec<u8>)> {
        let who = self.record.as_ref().and_then(|r| subject(&r.subject_id));
        vec![(who, self.encode_to_vec())]
    }
}

/// A claim leases tasks of many subjects: one part per task, so a replay
/// after one subject's erasure still returns the others' tasks.
impl Holds for crate::proto::ClaimTasksResponse {
    const PARTIAL: bool = true;

    fn parts(&self) -> Vec<(Option<&str>, Vec<u8>)> {
        self.tasks
            .iter()
            .map(|t| {
                let one = crate::proto::ClaimTasksResponse {
                    tasks: vec![t.clone()],
                };
                (subject(&t.subject_id), one.encode_to_vec())
            })
            .collect()
    }
}

/// A lifecycle event reschedules entries of one subject or of many.
impl Holds for crate::proto::RecordLifecycleEventResponse {
    const PARTIAL: bool = true;

    fn parts(&self) -> Vec<(Option<&str>, Vec<u8>)> {
        self.changed
            .iter()
            .map(|e| {
                let one = crate::proto::RecordLifecycleEventResponse {
                    changed: vec![e.clone()],
                };
                (subject(&e.subject_id), one.encode_to_vec())
            })
            .collect()
    }
}

/// Seals a response for storage under `key`: `[2][partial][count: u32]`
/// then per part `[0][len: u32][sealed]` (under the service's response
/// key) or `[1][subject len: u16][subject][len: u32][sealed]` (under the
/// subject's data key). A subject without a data key has nothing sealed
/// anywhere, so none of its data the erasure removes can be in the
/// response; nor can an erased one's (the response is built after the
/// erasure in the same transaction): their parts take the response key,
/// and no data key is made for them.
async fn seal<R: Holds>(
    conn: &mut PgConnection,
    keys: &Keyring,
    key: Key<'_>,
    response: &R,
) -> Result<Vec<u8>> {
    let parts = response.parts();
    let mut subjects: Vec<&str> = parts.iter().filter_map(|(s, _)| *s).collect();
    subjects.sort_unstable();
    subjects.dedup();
    let sealers = keys.existing_sealers(conn, &subjects).await?;
    let binding = key.binding();
    let count = u32::try_from(parts.len())
        .map_err(|_| Error::Internal("a response of too many parts".into()))?;
    let mut out = vec![PARTS_FORMAT, u8::from(R::PARTIAL)];
    out.extend_from_slice(&count.to_be_bytes());
    for (who, bytes) in &parts {
        let sealer = who.and_then(|w| sealers.get(w).map(|s| (w, s)));
        let sealed = match sealer {
            Some((who, sealer)) => {
                let len = u16::try_from(who.len())
                    .map_err(|_| Error::Internal("a subject id too long to store".into()))?;
                out.push(1);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(who.as_bytes());
                sealer.seal(&binding, bytes)?
            }
            None => {
                out.push(0);
                keys.seal_response(&binding, bytes)?
            }
        };
        let len = u32::try_from(sealed.len())
            .map_err(|_| Error::Internal("a response part too long to store".into()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// One stored part: the subject whose data key sealed it (None: the
/// response key) and the sealed bytes.
type Part<'a> = (Option<&'a str>, &'a [u8]);

fn split(stored: &[u8]) -> Option<(bool, Vec<Part<'_>>)> {
    fn take<'b>(rest: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    let mut rest = stored;
    let head = take(&mut rest, 6)?;
    let partial = head[1] == 1;
    let count = u32::from_be_bytes(head[2..6].try_into().ok()?);
    let mut parts = Vec::new();
    for _ in 0..count {
        let who = match take(&mut rest, 1)?[0] {
            0 => None,
            1 => {
                let len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?);
                Some(std::str::from_utf8(take(&mut rest, usize::from(len))?).ok()?)
            }
            _ => return None,
        };
        let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
        parts.push((who, take(&mut rest, usize::try_from(len).ok()?)?));
    }
    rest.is_empty().then_some((partial, parts))
}

/// Opens a stored response: the encoded message, without the parts whose
/// subject was erased since (their data keys are gone). A response that
/// lost a part and cannot be answered in part is refused with
/// STORED_RESPONSE_ERASED: the request is not run again, and nothing of the
/// erased subject comes back.
pub async fn open(
    conn: &mut PgConnection,
    keys: &Keyring,
    key: Key<'_>,
    stored: &[u8],
) -> Result<Vec<u8>> {
    if stored.first() != Some(&PARTS_FORMAT) {
        // Stored whole by an earlier version, under the response key and
        // bound to the request id alone.
        return keys.open_response(key.request_id(), stored);
    }
    let (partial, parts) = split(stored)
        .ok_or_else(|| Error::Internal("a stored idempotency response is malformed".into()))?;
    let opener = keys
        .opener(
            &mut *conn,
            parts.iter().filter(|(w, _)| w.is_some()).map(|(_, b)| *b),
        )
        .await?;
    let binding = key.binding();
    let mut out = Vec::new();
    let mut lost = 0usize;
    for (who, sealed) in parts {
        let bytes = match who {
            None => Some(keys.open_response(&binding, sealed)?),
            Some(who) => opener.open(who, &binding, sealed)?,
        };
        match bytes {
            Some(b) => out.extend_from_slice(&b),
            None => lost += 1,
        }
    }
    if lost > 0 && !partial {
        return Err(Error::precondition(
            crate::proto::ErrorReason::StoredResponseErased,
            "request_id",
            format!(
                "request_id {:?} was used before; its response held data of a subject erased \
                 since and went with it. The request is not run again: read the resource instead",
                key.request_id()
            ),
        ));
    }
    if lost > 0 {
        tracing::info!(
            request_id = key.request_id(),
            parts_erased = lost,
            "replayed a response without the parts of erased subjects"
        );
    }
    Ok(out)
}

/// What a used request id left behind.
pub enum Stored {
    /// The stored (sealed) response and the write's consistency token.
    Response(Vec<u8>, ConsistencyToken),
    /// The ledger entry a RecordConsent wrote (its response is built from
    /// the entry, see `consent::store::record_consent`) and its token.
    ConsentRecord(i64, ConsistencyToken),
}

/// method, request hash, response, consistency token, ledger entry, xid.
type StoredKey = (
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// What an earlier call under `key` left, when it was this same request
/// (`method` and `fingerprint`); None when no call has finished under the
/// key (none was made, or one is in flight in a transaction this one cannot
/// see yet). A finished call with another request under the key is refused
/// (AIP-155).
pub async fn stored(
    conn: &mut PgConnection,
    key: Key<'_>,
    method: &str,
    fingerprint: &Fingerprint,
) -> Result<Option<Stored>> {
    let row: Option<StoredKey> = sqlx::query_as(
        "SELECT method, request_hash, response, consistency_token, consent_record_id,
                xid::text::bigint
         FROM idempotency_keys WHERE caller = $1 AND request_id = $2",
    )
    .bind(key.scope())
    .bind(key.request_id())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((m, hash, response, token, record, xid)) = row else {
        return Ok(None);
    };
    let token = match (token, xid) {
        (Some(token), _) => ConsistencyToken::parse(&token).map_err(Error::Internal)?,
        (None, Some(xid)) => ConsistencyToken { xid },
        (None, None) => ConsistencyToken { xid: 0 },
    };
    let stored = match (response, record) {
        (Some(response), _) => Stored::Response(response, token),
        (None, Some(id)) => Stored::ConsentRecord(id, token),
        // Not finished: a call with the id is still in flight.
        (None, None) => return Ok(None),
    };
    if m != method || !fingerprint.matches(&hash) {
        return Err(Error::RequestIdReused(key.request_id().to_owned()));
    }
    Ok(Some(stored))
}

/// What `begin` found for a request id.
enum Begun {
    /// The id is new; it is now reserved by this transaction.
    Fresh,
    /// The id was used before for this same request: its response.
    Replay(Vec<u8>, ConsistencyToken),
}

async fn begin(
    conn: &mut PgConnection,
    key: Key<'_>,
    method: &str,
    fingerprint: &Fingerprint,
) -> Result<Begun> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (caller, request_id, method, request_hash)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (caller, request_id) DO NOTHING
         RETURNING true",
    )
    .bind(key.scope())
    .bind(key.request_id())
    .bind(method)
    .bind(fingerprint.as_bytes())
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Begun::Fresh);
    }
    match stored(conn, key, method, fingerprint).await? {
        Some(Stored::Response(response, token)) => Ok(Begun::Replay(response, token)),
        // Only RecordConsent stores a ledger entry, and it does not come
        // here; with this method and request it cannot match.
        Some(Stored::ConsentRecord(..)) => Err(Error::RequestIdReused(key.request_id().to_owned())),
        // The key vanished or is not yet complete between our two statements:
        // a concurrent attempt is in flight; try again.
        None => Err(Error::Conflict),
    }
}

async fn finish(
    conn: &mut PgConnection,
    key: Key<'_>,
    response: &[u8],
    token: &ConsistencyToken,
) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response = $3, consistency_token = $4
         WHERE caller = $1 AND request_id = $2",
    )
    .bind(key.scope())
    .bind(key.request_id())
    .bind(response)
    .bind(token.encode())
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `work` in one transaction at most once per key and returns its
/// response and consistency token; a retry returns the stored ones (less
/// what went with an erased subject, see `open`). `work` may run more than
/// once when a transaction conflicts (each time in a fresh transaction),
/// so it must do all its writes through `conn`.
pub async fn run<R, F>(
    pool: &PgPool,
    keys: &Keyring,
    method: &'static str,
    key: &Key<'_>,
    fingerprint: &Fingerprint,
    work: F,
) -> Result<(R, ConsistencyToken)>
where
    R: Holds,
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<(R, ConsistencyToken)>>,
{
    let key = *key;
    retry_on_conflict(|| async {
        let mut tx = pool.begin().await?;
        match begin(&mut tx, key, method, fingerprint).await? {
            Begun::Replay(stored, token) => {
                let bytes = open(&mut tx, keys, key, &stored).await;
                tx.rollback().await?;
                let response = R::decode(bytes?.as_slice()).map_err(|e| {
                    Error::Internal(format!("stored response does not decode: {e}"))
                })?;
                tracing::info!(
                    request_id = key.request_id(),
                    "replayed an earlier response"
                );
                Ok((response, token))
            }
            Begun::Fresh => {
                let (response, token) = work(&mut tx).await?;
                // Responses echo personal data (evidence, corrections,
                // exports): stored sealed, each subject's under its key.
                let sealed = seal(&mut tx, keys, key, &response).await?;
                finish(&mut tx, key, &sealed, &token).await?;
                tx.commit().await?;
                crate::journal::LOCAL_WRITES.committed();
                Ok((response, token))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_printable_ascii() {
        assert!(RequestId::parse("9f1c2b7e-4f4a-4e43-9a67-2b0c1d1c7b11").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse("é").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn a_stored_response_splits_into_its_parts_or_not_at_all() {
        let mut framed = vec![PARTS_FORMAT, 1, 0, 0, 0, 2];
        framed.extend_from_slice(&[0, 0, 0, 0, 2, b'a', b'b']);
        framed.extend_from_slice(&[1, 0, 3, b'a', b'n', b'n', 0, 0, 0, 1, b'c']);
        let (partial, parts) = split(&framed).expect("well formed");
        assert!(partial);
        assert_eq!(
            parts,
            vec![(None, b"ab".as_slice()), (Some("ann"), b"c".as_slice())]
        );
        // Cut short, or with bytes after the last part: malformed.
        assert!(split(&framed[..framed.len() - 1]).is_none());
        assert!(split(&[framed.as_slice(), &[0]].concat()).is_none());
        assert!(split(&[PARTS_FORMAT, 0, 0, 0, 0, 1, 7]).is_none());
    }
}
