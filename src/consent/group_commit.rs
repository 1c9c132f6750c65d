//! Group commit for RecordConsent: calls that arrive while earlier writes
//! are committing are written together, in one statement and one durable
//! commit (`ledger::append_many`), instead of one commit each.
//!
//! What each caller still gets:
//! - its entry, key, audit event and change event in one transaction, all
//!   or nothing, acknowledged only after that transaction committed
//!   (`synchronous_commit` stays on);
//! - its own outcome: when the shared statement fails (one entry breaks a
//!   constraint, say), every entry is written again on its own, so one bad
//!   call never fails another;
//! - its deadline honoured: a caller that has gone away (deadline passed,
//!   cancelled) when its batch is about to commit gets nothing written; the
//!   batch is written again without it;
//! - no wait for company: a worker takes what is queued when it is free,
//!   so a call that finds a worker idle is written at once, and batches
//!   grow only while every worker is busy.
//!
//! Entries with evidence are not grouped: their subject's data key may have
//! to be created first, in the same transaction.
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::model::NewConsent;
use super::store::ledger::{self, Appended, Pending, Writer};
use crate::error::{Error, Result};
use crate::keys::Keyring;

/// Calls waiting for a worker before callers wait to queue.
const QUEUE: usize = 4096;

/// How calls are grouped (`write_batch_*` in the settings).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// The most entries in one statement; 1 writes each call alone.
    pub max: usize,
    /// Statements writing at once. Few: on a small machine more concurrent
    /// commits only add switching, and while every worker is busy the next
    /// batch grows.
    pub workers: usize,
}

struct Call {
    entry: Pending,
    reply: oneshot::Sender<Result<Appended>>,
}

/// The RecordConsent write path: the pool and keys it writes with, and the
/// queue its workers take batches from. Cloning shares the workers, which
/// stop once every clone is dropped and the queue is empty.
#[derive(Clone)]
pub struct GroupCommit {
    pool: PgPool,
    keys: Keyring,
    method: &'static str,
    queue: mpsc::Sender<Call>,
}

impl GroupCommit {
    /// Starts the workers (on the current tokio runtime) for writes through
    /// `method`.
    pub fn start(pool: PgPool, keys: Keyring, method: &'static str, batching: Batching) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..batching.workers.max(1) {
            let (pool, keys, rx) = (pool.clone(), keys.clone(), Arc::clone(&rx));
            tokio::spawn(work(pool, keys, method, batching.max.max(1), rx));
        }
        Self {
            pool,
            keys,
            method,
            queue,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Writes `new` (see `ledger::record_consent`), grouped with other calls
    /// unless it carries evidence.
    pub async fn record(
        &self,
        new: &NewConsent,
        purpose_revision: i64,
        writer: &Writer<'_>,
    ) -> Result<Appended> {
        let fingerprint = match writer.fingerprint {
            Some(f) if new.evidence.is_none() && writer.method == self.method => f,
            _ => {
                return ledger::record_consent(
                    &self.keys,
                    &self.pool,
                    new,
                    purpose_revision,
                    writer,
                )
                .await;
            }
        };
        let (reply, outcome) = oneshot::channel();
        let call = Call {
            entry: Pending {
                new: new.clone(),
                purpose_revision,
                actor: writer.actor.to_owned(),
                scope: writer.scope.to_owned(),
                request_id: writer.request_id.to_owned(),
                fingerprint: fingerprint.to_vec(),
            },
            reply,
        };
        // The workers are gone only when the runtime is going down.
        self.queue
            .send(call)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        outcome.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn work(
    pool: PgPool,
    keys: Keyring,
    method: &'static str,
    max: usize,
    queue: Arc<Mutex<mpsc::Receiver<Call>>>,
) {
    loop {
        let batch = {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(call) => batch.push(call),
                    Err(_) => break,
                }
            }
            batch
        };
        write(&pool, &keys, method, batch).await;
    }
}

/// Writes a batch together, or each call on its own when the shared
/// statement fails, and answers every caller. A caller that went away (its
/// deadline passed, it was cancelled) before its entry committed gets
/// nothing written: the transaction is rolled back and written again
/// without it.
async fn write(pool: &PgPool, keys: &Keyring, method: &str, mut batch: Vec<Call>) {
    loop {
        batch.retain(|c| !c.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        match together(pool, method, &batch).await {
            Ok(Some(outcomes)) => {
                for (call, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = call.reply.send(Ok(outcome));
                }
                return;
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(
                    error = %e,
                    entries = batch.len(),
                    "a grouped write failed; writing each entry on its own"
                );
                break;
            }
        }
    }
    for call in batch {
        match alone(pool, keys, method, &call).await {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                let _ = call.reply.send(Ok(outcome));
            }
            Err(e) => {
                let _ = call.reply.send(Err(e));
            }
        }
    }
}

/// The batch in one transaction, committed if every caller is still
/// waiting; None (rolled back) if one went away meanwhile.
async fn together(pool: &PgPool, method: &str, batch: &[Call]) -> Result<Option<Vec<Appended>>> {
    let entries: Vec<&Pending> = batch.iter().map(|c| &c.entry).collect();
    let mut tx = pool.begin().await?;
    let outcomes = ledger::append_many(&mut tx, method, &entries).await?;
    if batch.iter().any(|c| c.reply.is_closed()) {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(outcomes))
}

/// One call in a transaction of its own (`ledger::append`, which maps each
/// constraint to its error), committed if the caller is still waiting.
async fn alone(
    pool: &PgPool,
    keys: &Keyring,
    method: &str,
    call: &Call,
) -> Result<Option<Appended>> {
    let e = &call.entry;
    let writer = Writer {
        actor: &e.actor,
        scope: &e.scope,
        method,
        request_id: &e.request_id,
        fingerprint: Some(&e.fingerprint),
    };
    let mut tx = pool.begin().await?;
    let appended = ledger::append(keys, &mut tx, &e.new, e.purpose_revision, &writer).await?;
    if let Appended::Written(..) = appended {
        if call.reply.is_closed() {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
    }
    Ok(Some(appended))
}
