//! Watching consent change: a stream of the consent changes committed to the
//! change feed, in feed order, each batch with the position to resume from
//! (the shape of SpiceDB's `ds.Watch()`). It knows no gRPC: the handler
//! only maps what it yields.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::model::ConsentRecord;
use super::store;
use crate::changefeed;
use crate::error::{Error, Result};
use crate::journal::ChangeKind;
use crate::keys::Keyring;
use crate::names::SubjectId;
use crate::tokens::FeedPosition;

/// How watch streams behave.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub poll_interval: Duration,
    pub heartbeat: Duration,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Where an earlier watch left off (its resume token).
    At(FeedPosition),
    /// The feed's first event.
    Beginning,
    /// Now: only changes committed from here on.
    Head,
}

/// What kind of consent change happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConsentRecorded,
    PurposeChanged,
    PolicyVersionPublished,
    SubjectChanged,
    SubjectErased,
}

impl Kind {
    /// The consent change an event of the feed is, if it is one.
    fn of(kind: ChangeKind) -> Option<Self> {
        Some(match kind {
            ChangeKind::ConsentRecorded => Kind::ConsentRecorded,
            ChangeKind::PurposeChanged => Kind::PurposeChanged,
            ChangeKind::PolicyVersionPublished => Kind::PolicyVersionPublished,
            ChangeKind::SubjectChanged => Kind::SubjectChanged,
            ChangeKind::SubjectErased => Kind::SubjectErased,
            // Not a consent change: the stream's position moves past it.
            _ => return None,
        })
    }
}

/// One consent change.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub subject_id: Option<String>,
    pub purpose: Option<String>,
    /// The ledger entry a CONSENT_RECORDED change wrote.
    pub record: Option<ConsentRecord>,
    pub policy_version: Option<String>,
    pub change_time: DateTime<Utc>,
}

/// What a watch yields: changes (none for the first batch, which confirms
/// the stream, and for a heartbeat) and the position after them.
#[derive(Debug, Clone)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub resume: FeedPosition,
}

/// The consent changes from `start` on, optionally of one subject, until
/// the consumer goes away, the server shuts down (the stream then ends with
/// `Error::ShuttingDown`), or the database fails (it ends with that error,
/// and the client resumes from its last position). Reading the head, for
/// `Start::Head`, happens before the stream begins, and its failure is
/// this call's.
pub async fn changes(
    pool: &PgPool,
    keys: &Keyring,
    settings: &WatchSettings,
    shutdown: watch::Receiver<bool>,
    start: Start,
    subject: Option<SubjectId>,
) -> Result<impl Stream<Item = Result<Batch>> + Send + 'static> {
    let start = match start {
        Start::At(position) => position,
        Start::Beginning => FeedPosition::BEGINNING,
        Start::Head => changefeed::head(pool).await?,
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(feed(
        pool.clone(),
        keys.clone(),
        settings.clone(),
        shutdown,
        start,
        subject,
        tx,
    ));
    Ok(ReceiverStream::new(rx))
}

/// Feeds one watch stream until the consumer goes away, the server shuts
/// down, or the database fails.
async fn feed(
    pool: PgPool,
    keys: Keyring,
    settings: WatchSettings,
    mut shutdown: watch::Receiver<bool>,
    start: FeedPosition,
    subject: Option<SubjectId>,
    tx: mpsc::Sender<Result<Batch>>,
) {
    const BATCH: i64 = 500;
    let mut position = start;
    // The first batch confirms the stream and hands out its start position.
    let first = Batch {
        changes: vec![],
        resume: position,
    };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut last_sent = Instant::now();
    loop {
        if *shutdown.borrow() {
            let _ = tx.send(Err(Error::ShuttingDown)).await;
            return;
        }
        let batch =
            match changefeed::read(&pool, position, subject.as_ref().map(|s| s.as_str()), BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
        let full = batch.events.len() as i64 >= BATCH;
        if !batch.events.is_empty() {
            let ids: Vec<i64> = batch
                .events
                .iter()
                .filter_map(|e| e.consent_record_id)
                .collect();
            let records = match store::ledger::records_by_id(&keys, &pool, &ids).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let changes = batch
                .events
                .into_iter()
                .filter_map(|e| {
                    let kind = Kind::of(e.kind)?;
                    Some(Change {
                        kind,
                        subject_id: e.subject_id,
                        purpose: e.purpose_key,
                        record: e.consent_record_id.and_then(|id| records.get(&id).cloned()),
                        policy_version: e.policy_version,
                        change_time: e.change_time,
                    })
                })
                .collect::<Vec<_>>();
            let changes = Batch {
                changes,
                resume: batch.next,
            };
            if tx.send(Ok(changes)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        } else if last_sent.elapsed() >= settings.heartbeat {
            let heartbeat = Batch {
                changes: vec![],
                resume: batch.next,
            };
            if tx.send(Ok(heartbeat)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        position = batch.next;
        if full {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.poll_interval) => {}
            _ = shutdown.changed() => {}
            _ = tx.closed() => return,
        }
    }
}
