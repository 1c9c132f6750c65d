//! The sealer: links committed audit events into the hash chain, in commit
//! order, in batches, and closes each batch with a checkpoint whose MAC is
//! made with a key derived from the active master key (outside the
//! database); and the verifier that recomputes the chain and holds it
//! against its checkpoints and, when asked, against an anchor.
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::chain::{self, Anchor, EventFields, GENESIS};
use crate::error::Result;
use crate::keys::Keyring;

/// One sealer at a time across replicas.
const SEALER_LOCK: i64 = 7_243_101;

/// Seals up to `batch` committed events; returns how many. With nothing to
/// seal, it still makes sure a checkpoint under a key the keyring holds
/// vouches for the head (after an upgrade, the head had only an unkeyed
/// one; after a master key was removed, only one nobody can check).
pub async fn seal_batch(pool: &PgPool, keys: &Keyring, batch: i64) -> Result<usize> {
    let key_id = keys.active_id()?.to_owned();
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
    // A checkpoint past the last link names links that are gone: someone
    // removed the tail behind the service's back. Sealing goes on after the
    // last link left (refusing would stop the trail for good); the old
    // checkpoints stay, so VerifyAuditLog keeps reporting the gap.
    let beyond: Option<i64> =
        sqlx::query_scalar("SELECT max(chain_seq) FROM audit_checkpoints WHERE chain_seq > $1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(named) = beyond {
        tracing::warn!(
            last_link = seq,
            checkpoint = named,
            "the audit chain ends before a checkpoint: links were removed behind the service's back"
        );
    }
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
        let vouched: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_checkpoints
                            WHERE chain_seq = $1 AND key_id = ANY ($2))",
        )
        .bind(seq)
        .bind(keys.master_ids())
        .fetch_one(&mut *tx)
        .await?;
        if seq > 0 && !vouched {
            checkpoint(&mut tx, keys, &key_id, seq, &prev).await?;
            tx.commit().await?;
        }
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
    checkpoint(&mut tx, keys, &key_id, seq, &prev).await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Records a checkpoint of link `seq`, MACed under master key `key_id`.
async fn checkpoint(
    conn: &mut PgConnection,
    keys: &Keyring,
    key_id: &str,
    seq: i64,
    hash: &[u8],
) -> Result<()> {
    let mac = keys.audit_mac(key_id, &chain::checkpoint_message(seq, hash))?;
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain_seq, hash, key_id, mac) VALUES ($1, $2, $3, $4)",
    )
    .bind(seq)
    .bind(hash)
    .bind(key_id)
    .bind(&mac)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seals until nothing committed is left unsealed.
pub async fn seal_all(pool: &PgPool, keys: &Keyring, batch: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let n = seal_batch(pool, keys, batch).await?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// The background loop: seal every `interval` until shutdown.
pub async fn run(
    pool: PgPool,
    keys: Keyring,
    interval: Duration,
    batch: i64,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(e) = seal_all(&pool, &keys, batch).await {
            tracing::debug!(error = %e, "audit sealing failed; retrying next interval");
        }
    }
}

/// The first thing wrong, at the lowest chain position found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    /// The event of the link at `seq`, when there is one.
    pub event_id: Option<i64>,
    pub problem: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Links checked before the first broken one (all of them when intact).
    pub verified: i64,
    pub broken: Option<Broken>,
    pub unsealed: i64,
    /// The hash of the last link checked.
    pub head_hash: Vec<u8>,
    /// Checkpoints whose MAC was checked (under a master key held).
    pub checkpoints_verified: i64,
    /// The anchor asked about is in the log (false when none was asked).
    pub anchor_held: bool,
}

impl Verification {
    /// The anchor of the verified head, to publish; `None` unless intact.
    pub fn anchor(&self) -> Option<Anchor> {
        (self.broken.is_none() && self.verified > 0).then(|| Anchor {
            seq: self.verified,
            hash: self.head_hash.clone(),
        })
    }
}

/// A sealed link as stored, with its event when the event is still there.
#[derive(Debug, Clone, sqlx::FromRow)]
struct LinkRow {
    chain_seq: i64,
    event_id: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    present: bool,
    xid: Option<i64>,
    occur_time: Option<DateTime<Utc>>,
    actor: Option<String>,
    method: Option<String>,
    target: Option<String>,
    subject_id: Option<String>,
    request_id: Option<String>,
    details: Option<String>,
}

impl LinkRow {
    fn fields(&self) -> Option<EventFields> {
        Some(EventFields {
            id: self.event_id,
            xid: self.xid?,
            occur_time: self.occur_time?,
            actor: self.actor.clone()?,
            method: self.method.clone()?,
            target: self.target.clone()?,
            subject_id: self.subject_id.clone(),
            request_id: self.request_id.clone(),
            details: self.details.clone()?,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct CheckpointRow {
    chain_seq: i64,
    hash: Vec<u8>,
    key_id: Option<String>,
    mac: Option<Vec<u8>>,
    checkpoint_time: DateTime<Utc>,
}

/// Recomputes the chain from the first link, page by page, up to the last
/// link there was when it began (links sealed meanwhile wait for the next
/// verification; bounding the walk keeps it consistent without one long
/// snapshot, which would hold sealing back across the cluster). Each link
/// must follow from the one before; each checkpoint at a link must hold its
/// hash and, under a master key the keyring holds, a valid MAC; the last
/// link must be vouched for by such a MAC (an attacker who can write to the
/// database can recompute plain SHA-256 links, not a MAC); no checkpoint
/// may name a link that is gone (a truncated tail); and `anchor`, when
/// given, must be in the log.
pub async fn verify(
    conn: &mut PgConnection,
    keys: &Keyring,
    anchor: Option<&Anchor>,
) -> Result<Verification> {
    const PAGE: i64 = 5000;
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(chain_seq), 0) FROM audit_chain")
        .fetch_one(&mut *conn)
        .await?;
    let mut out = Verification {
        head_hash: GENESIS.to_vec(),
        ..Verification::default()
    };
    // The last link a checkpoint's MAC vouches for, and its hash: links up
    // to it cannot have been rewritten without the key.
    let (mut vouched, mut vouched_hash) = (0i64, GENESIS.to_vec());
    let mut first_unvouched_event = None;
    let mut expected = 1;
    let mut problems: Vec<Broken> = Vec::new();
    let mut walk_broke = false;
    let mut anchor_reached = false;
    'walk: while expected <= last {
        let rows: Vec<LinkRow> = sqlx::query_as(
            "SELECT c.chain_seq, c.event_id, c.prev_hash, c.hash, e.id IS NOT NULL AS present,
                    e.xid::text::bigint AS xid, e.occur_time, e.actor, e.method, e.target,
                    e.subject_id, e.request_id, e.details::text AS details
             FROM audit_chain c LEFT JOIN audit_events e ON e.id = c.event_id
             WHERE c.chain_seq >= $1 AND c.chain_seq <= $2 ORDER BY c.chain_seq LIMIT $3",
        )
        .bind(expected)
        .bind(last)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(page_end) = rows.last().map(|r| r.chain_seq) else {
            problems.push(Broken {
                seq: expected,
                event_id: None,
                problem: format!("link {expected} is missing"),
            });
            walk_broke = true;
            break;
        };
        let checkpoints: Vec<CheckpointRow> = sqlx::query_as(
            "SELECT chain_seq, hash, key_id, mac, checkpoint_time FROM audit_checkpoints
             WHERE chain_seq >= $1 AND chain_seq <= $2 ORDER BY chain_seq, id",
        )
        .bind(expected)
        .bind(page_end)
        .fetch_all(&mut *conn)
        .await?;
        let mut checkpoints = checkpoints.into_iter().peekable();
        for row in rows {
            let seq = row.chain_seq;
            let link_problem = if seq != expected {
                Some(format!("link {expected} is missing"))
            } else if !row.present {
                Some(format!(
                    "its event auditEvents/{} is missing (deleted)",
                    row.event_id
                ))
            } else if row.prev_hash != out.head_hash {
                Some("its previous hash is not the hash of the link before it".to_owned())
            } else if row
                .fields()
                .is_none_or(|e| chain::link(&out.head_hash, seq, &e) != row.hash)
            {
                Some("its content does not match its hash (the event was altered)".to_owned())
            } else {
                None
            };
            if let Some(problem) = link_problem {
                problems.push(Broken {
                    seq: expected,
                    event_id: (seq == expected).then_some(row.event_id),
                    problem,
                });
                walk_broke = true;
                break 'walk;
            }
            if seq == vouched + 1 {
                first_unvouched_event = Some(row.event_id);
            }
            if let Some(a) = anchor.filter(|a| a.seq == seq) {
                anchor_reached = true;
                out.anchor_held = a.hash == row.hash;
            }
            if let Some(a) = anchor.filter(|a| a.seq == seq && !out.anchor_held) {
                problems.push(Broken {
                    seq,
                    event_id: Some(row.event_id),
                    problem: format!(
                        "link {seq} is not anchor {a}: the log up to it differs from when the \
                         anchor was taken"
                    ),
                });
                walk_broke = true;
                break 'walk;
            }
            while let Some(cp) = checkpoints.next_if(|cp| cp.chain_seq <= seq) {
                let when = cp.checkpoint_time.format("%Y-%m-%dT%H:%M:%SZ");
                let range = format!("{}..{seq}", vouched + 1);
                let problem = if cp.chain_seq != seq {
                    // Its link was missing: reported above.
                    continue;
                } else if cp.hash != row.hash {
                    Some(format!(
                        "link {seq} does not match the checkpoint recorded at {when}: links \
                         {range} were rewritten or removed"
                    ))
                } else {
                    match (&cp.key_id, &cp.mac) {
                        (Some(key_id), Some(mac)) => {
                            match keys.audit_mac_verifies(
                                key_id,
                                &chain::checkpoint_message(seq, &cp.hash),
                                mac,
                            ) {
                                Some(true) => {
                                    out.checkpoints_verified += 1;
                                    vouched = seq;
                                    vouched_hash = row.hash.clone();
                                    None
                                }
                                Some(false) => Some(format!(
                                    "the checkpoint of link {seq} recorded at {when} does not \
                                     authenticate under master key {key_id:?}: links {range} \
                                     were rewritten"
                                )),
                                // A master key no longer held: nothing to check it with.
                                None => None,
                            }
                        }
                        // Recorded before checkpoints carried a MAC.
                        _ => None,
                    }
                };
                if let Some(problem) = problem {
                    problems.push(Broken {
                        seq: vouched + 1,
                        event_id: first_unvouched_event,
                        problem,
                    });
                    out.verified = vouched;
                    out.head_hash = std::mem::take(&mut vouched_hash);
                    walk_broke = true;
                    break 'walk;
                }
            }
            out.head_hash = row.hash;
            out.verified += 1;
            expected += 1;
        }
    }
    if !walk_broke {
        let head = out.verified;
        if vouched < head {
            problems.push(Broken {
                seq: vouched + 1,
                event_id: first_unvouched_event,
                problem: format!(
                    "links {}..{head} are not covered by a checkpoint that authenticates under \
                     a master key this keyring holds",
                    vouched + 1
                ),
            });
        }
        // Checkpoints and their links commit together, so a checkpoint
        // without its link names a link that was removed.
        let orphan: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT k.chain_seq, k.checkpoint_time FROM audit_checkpoints k
             WHERE k.chain_seq > $1
               AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.chain_seq = k.chain_seq)
             ORDER BY k.chain_seq DESC LIMIT 1",
        )
        .bind(head)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((named, when)) = orphan {
            problems.push(Broken {
                seq: head + 1,
                event_id: None,
                problem: format!(
                    "links {}..{named} are missing: a checkpoint recorded at {} names link \
                     {named} (the log was truncated after link {head})",
                    head + 1,
                    when.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            });
        }
        if vouched < head {
            out.verified = vouched;
            out.head_hash = vouched_hash;
        }
    }
    // An anchor past the last link checked: past the end of the log, or
    // past a break the walk stopped at.
    if let Some(a) = anchor.filter(|_| !anchor_reached) {
        let end = expected - 1;
        problems.push(Broken {
            seq: end + 1,
            event_id: None,
            problem: if walk_broke {
                format!("anchor {a} cannot be confirmed: the chain breaks before it")
            } else {
                format!("the log does not hold anchor {a}: it ends at link {end}")
            },
        });
    }
    out.broken = first(problems);
    out.unsealed = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events e
         WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(out)
}

/// The problem at the lowest position, with every other one found after it
/// (a truncated tail also leaves the links before it unvouched for).
fn first(mut problems: Vec<Broken>) -> Option<Broken> {
    problems.sort_by_key(|p| p.seq);
    let mut it = problems.into_iter();
    let mut first = it.next()?;
    for p in it {
        first.problem = format!("{}; {}", first.problem, p.problem);
    }
    Some(first)
}
