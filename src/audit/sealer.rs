//! The sealer: links committed audit events into the hash chain, in commit
//! order, in batches; and the verifier that recomputes it.
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::chain::{self, EventFields, GENESIS};
use crate::error::Result;

/// One sealer at a time across replicas.
const SEALER_LOCK: i64 = 7_243_101;

/// Seals up to `batch` committed events; returns how many.
pub async fn seal_batch(pool: &PgPool, batch: i64) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SEALER_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    // The last link, and the position of its event: every event before
    // that position is sealed.
    let head: Option<(i64, Vec<u8>, i64, i64)> = sqlx::query_as(
        "SELECT chain_seq, hash, event_xid::text::bigint, event_id FROM audit_chain
         ORDER BY chain_seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (mut seq, mut prev, after_xid, after_id) = head.unwrap_or((0, GENESIS.to_vec(), 0, 0));
    let events: Vec<EventFields> = sqlx::query_as(
        "SELECT id, xid::text::bigint AS xid, occur_time, actor, method, target, subject_id,
                request_id, details::text AS details
         FROM audit_events
         WHERE (xid, id) > ($2::text::xid8, $3)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, id
         LIMIT $1",
    )
    .bind(batch)
    .bind(after_xid.to_string())
    .bind(after_id)
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        return Ok(0);
    }
    let (mut ids, mut xids, mut seqs, mut prevs, mut hashes) =
        (vec![], vec![], vec![], vec![], vec![]);
    for e in &events {
        seq += 1;
        let hash = chain::link(&prev, seq, e);
        ids.push(e.id);
        xids.push(e.xid.to_string());
        seqs.push(seq);
        prevs.push(prev);
        prev = hash.clone();
        hashes.push(hash);
    }
    sqlx::query(
        "INSERT INTO audit_chain (chain_seq, event_id, event_xid, prev_hash, hash)
         SELECT u.seq, u.id, u.xid::xid8, u.prev, u.hash
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::bytea[])
              AS u (id, seq, xid, prev, hash)",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&xids)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO audit_checkpoints (chain_seq, hash) VALUES ($1, $2)")
        .bind(seq)
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Seals until nothing committed is left unsealed.
pub async fn seal_all(pool: &PgPool, batch: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let n = seal_batch(pool, batch).await?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// The background loop: seal every `interval` until shutdown.
pub async fn run(pool: PgPool, interval: Duration, batch: i64, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(e) = seal_all(&pool, batch).await {
            tracing::debug!(error = %e, "audit sealing failed; retrying next interval");
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub verified: i64,
    /// (chain_seq, event id, what is wrong) of the first broken link.
    pub broken: Option<(i64, i64, String)>,
    pub unsealed: i64,
    pub head_hash: Vec<u8>,
}

/// Recomputes the chain from the first link, page by page.
pub async fn verify(conn: &mut PgConnection) -> Result<Verification> {
    const PAGE: i64 = 5000;
    let mut out = Verification {
        head_hash: GENESIS.to_vec(),
        ..Verification::default()
    };
    let mut expected_seq = 1;
    loop {
        let rows: Vec<SealedRow> = sqlx::query_as(
            "SELECT c.chain_seq, c.prev_hash, c.hash, e.id, e.xid::text::bigint AS xid,
                    e.occur_time, e.actor, e.method, e.target, e.subject_id, e.request_id,
                    e.details::text AS details
             FROM audit_chain c JOIN audit_events e ON e.id = c.event_id
             WHERE c.chain_seq >= $1 ORDER BY c.chain_seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let n = rows.len();
        for SealedRow {
            chain_seq: seq,
            prev_hash: prev,
            hash,
            fields: e,
        } in rows
        {
            let problem = if seq != expected_seq {
                Some(format!("link {expected_seq} is missing"))
            } else if prev.as_deref() != Some(out.head_hash.as_slice()) {
                Some("its previous hash is not the hash of the link before it".to_owned())
            } else if hash.as_deref() != Some(chain::link(&out.head_hash, seq, &e).as_slice()) {
                Some("its content does not match its hash (the event was altered)".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                out.broken = Some((expected_seq, e.id, problem));
                break;
            }
            out.head_hash = hash.unwrap_or_default();
            out.verified += 1;
            expected_seq += 1;
        }
        if out.broken.is_some() || (n as i64) < PAGE {
            break;
        }
    }
    out.unsealed = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events e
         WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(out)
}

/// A sealed link as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct SealedRow {
    chain_seq: i64,
    prev_hash: Option<Vec<u8>>,
    hash: Option<Vec<u8>>,
    #[sqlx(flatten)]
    fields: EventFields,
}
