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
use crate::error::{Error, Result};
use crate::keys::Keyring;
use crate::tokens::ConsistencyToken;

/// A client-chosen idempotency key: 1-128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
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
/// same method with the same fields.
pub fn fingerprint<M: Message>(method: &str, request: &M) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0u8]);
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

/// What a used request id left behind.
pub enum Stored {
    /// The sealed, encoded response and the write's consistency token.
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

/// What an earlier call with `request_id` left, when it was this same
/// request (`method` and `fingerprint`); None when no call has finished
/// with the id (none was made, or one is in flight in a transaction this
/// one cannot see yet). A finished call with another request under the
/// id is refused (AIP-155).
pub async fn stored(
    conn: &mut PgConnection,
    request_id: &RequestId,
    method: &str,
    fingerprint: &[u8],
) -> Result<Option<Stored>> {
    let row: Option<StoredKey> = sqlx::query_as(
        "SELECT method, request_hash, response, consistency_token, consent_record_id,
                xid::text::bigint
         FROM idempotency_keys WHERE request_id = $1",
    )
    .bind(request_id.as_str())
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
    if m != method || hash != fingerprint {
        return Err(Error::RequestIdReused(request_id.as_str().to_owned()));
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
    request_id: &RequestId,
    method: &str,
    fingerprint: &[u8],
) -> Result<Begun> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (request_id, method, request_hash)
         VALUES ($1, $2, $3)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING true",
    )
    .bind(request_id.as_str())
    .bind(method)
    .bind(fingerprint)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Begun::Fresh);
    }
    match stored(conn, request_id, method, fingerprint).await? {
        Some(Stored::Response(response, token)) => Ok(Begun::Replay(response, token)),
        // Only RecordConsent stores a ledger entry, and it does not come
        // here; with this method and request it cannot match.
        Some(Stored::ConsentRecord(..)) => {
            Err(Error::RequestIdReused(request_id.as_str().to_owned()))
        }
        // The key vanished or is not yet complete between our two statements:
        // a concurrent attempt is in flight; try again.
        None => Err(Error::Conflict),
    }
}

async fn finish(
    conn: &mut PgConnection,
    request_id: &RequestId,
    response: &[u8],
    token: &ConsistencyToken,
) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response = $2, consistency_token = $3 WHERE request_id = $1",
    )
    .bind(request_id.as_str())
    .bind(response)
    .bind(token.encode())
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `work` in one transaction at most once per request id and returns
/// its response and consistency token; a retry returns the stored ones.
/// `work` may run more than once when a transaction conflicts (each time in
/// a fresh transaction), so it must do all its writes through `conn`.
pub async fn run<R, F>(
    pool: &PgPool,
    keys: &Keyring,
    method: &'static str,
    request_id: &RequestId,
    fingerprint: &[u8],
    work: F,
) -> Result<(R, ConsistencyToken)>
where
    R: Message + Default,
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<(R, ConsistencyToken)>>,
{
    retry_on_conflict(|| async {
        let mut tx = pool.begin().await?;
        match begin(&mut tx, request_id, method, fingerprint).await? {
            Begun::Replay(bytes, token) => {
                tx.rollback().await?;
                let bytes = keys.open_response(request_id.as_str(), &bytes)?;
                let response = R::decode(bytes.as_slice()).map_err(|e| {
                    Error::Internal(format!("stored response does not decode: {e}"))
                })?;
                tracing::info!(
                    request_id = request_id.as_str(),
                    "replayed an earlier response"
                );
                Ok((response, token))
            }
            Begun::Fresh => {
                let (response, token) = work(&mut tx).await?;
                // Responses echo personal data (evidence, corrections,
                // exports): stored sealed.
                let sealed = keys.seal_response(request_id.as_str(), &response.encode_to_vec())?;
                finish(&mut tx, request_id, &sealed, &token).await?;
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
}
