//! Where reads go: an optional streaming replica (`read_database_url`) takes
//! checks and lists when it is fresh enough, the primary takes everything
//! else. Writes never come here; they use the primary pool directly.
//!
//! Fresh enough means both:
//! - the caller's consistency token is replayed: the replica's snapshot xmin
//!   is above the token's xid (every transaction up to it has finished
//!   there), and
//! - the replica is at most `max_lag` behind: every write the primary had
//!   acknowledged `max_lag` ago is visible on it.
//!
//! A background probe (every `max_lag / 4`, at most every 100 ms) reads the
//! primary's flushed WAL position, then the replica's replayed position and
//! snapshot xmin. "Every write acknowledged before time t is on the replica"
//! holds from the newest probe whose primary position the replica has
//! replayed: a commit is acknowledged only after its WAL is flushed. This
//! works on an idle primary too (its position stops moving, so the replica
//! stays current), unlike `pg_last_xact_replay_timestamp()`.
//!
//! Reads that return their own snapshot xmin (the check query does, in the
//! same statement) are verified exactly and redone on the primary when the
//! replica turned out too old. Other reads (lists) trust the probe's xmin,
//! which only lags the replica's real one. A replica that errors is left
//! alone until the next successful probe; its reads go to the primary.
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::tokens::ConsistencyToken;

/// The pools reads may use. Cheap to clone.
#[derive(Clone)]
pub struct Reads {
    primary: PgPool,
    replica: Option<Arc<Replica>>,
}

struct Replica {
    pool: PgPool,
    max_lag: Duration,
    /// The clock `current_ms` counts from.
    epoch: Instant,
    /// The replica's snapshot xmin at the last probe; -1 while unknown.
    xmin: AtomicI64,
    /// Milliseconds after `epoch` before which every write acknowledged by
    /// the primary is visible on the replica; 0 while unknown.
    current_ms: AtomicU64,
    /// Whether the replica answered its last probe or read (for logging
    /// state changes once, not every call).
    up: AtomicBool,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    replica: AtomicU64,
    primary: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
}

/// How reads were routed since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads the replica answered.
    pub replica: u64,
    /// Reads sent straight to the primary (no replica, or not fresh enough).
    pub primary: u64,
    /// Reads the replica answered too old, redone on the primary.
    pub stale: u64,
    /// Reads the replica failed, redone on the primary.
    pub errors: u64,
}

impl Reads {
    /// Reads from the primary only.
    pub fn primary_only(primary: PgPool) -> Self {
        Self {
            primary,
            replica: None,
        }
    }

    /// Reads from `replica` when fresh enough; start [`Reads::probe`] too,
    /// or the replica is never used.
    pub fn with_replica(primary: PgPool, replica: PgPool, max_lag: Duration) -> Self {
        Self {
            primary,
            replica: Some(Arc::new(Replica {
                pool: replica,
                max_lag,
                epoch: Instant::now(),
                xmin: AtomicI64::new(-1),
                current_ms: AtomicU64::new(0),
                up: AtomicBool::new(true),
                stats: Counters::default(),
            })),
        }
    }

    /// The primary pool (writes, and reads inside a write transaction).
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    pub fn stats(&self) -> ReadStats {
        match &self.replica {
            Some(r) => ReadStats {
                replica: r.stats.replica.load(Ordering::Relaxed),
                primary: r.stats.primary.load(Ordering::Relaxed),
                stale: r.stats.stale.load(Ordering::Relaxed),
                errors: r.stats.errors.load(Ordering::Relaxed),
            },
            None => ReadStats::default(),
        }
    }

    /// With a replica: how far behind it is (`None` while unknown: down,
    /// or not yet probed) and how far it may be. `None` without a replica.
    pub fn replica_lag(&self) -> Option<(Option<Duration>, Duration)> {
        let replica = self.replica.as_ref()?;
        let current_ms = replica.current_ms.load(Ordering::Relaxed);
        let lag = (current_ms != 0)
            .then(|| (replica.epoch + Duration::from_millis(current_ms)).elapsed());
        Some((lag, replica.max_lag))
    }

    /// Runs `read` on the replica when it is fresh enough for `token`, else
    /// on the primary. For reads that cannot tell their own snapshot.
    pub async fn read<'a, T, F, Fut>(
        &'a self,
        token: Option<ConsistencyToken>,
        read: F,
    ) -> Result<T>
    where
        F: Fn(&'a PgPool) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.read_checked(token, read, |_| None).await
    }

    /// Like [`Reads::read`], for reads that report the snapshot xmin they
    /// were taken at (`xmin_of`): a replica answer older than `token` is
    /// thrown away and the read redone on the primary.
    pub async fn read_checked<'a, T, F, Fut>(
        &'a self,
        token: Option<ConsistencyToken>,
        read: F,
        xmin_of: impl Fn(&T) -> Option<i64>,
    ) -> Result<T>
    where
        F: Fn(&'a PgPool) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Some(replica) = self.replica.as_deref() else {
            return read(&self.primary).await;
        };
        if replica.fresh_for(token) {
            match read(&replica.pool).await {
                Ok(value) => match (token, xmin_of(&value)) {
                    (Some(t), Some(xmin)) if xmin <= t.xid => {
                        replica.stats.stale.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(db = "primary", xmin, token = t.xid, "replica too old");
                    }
                    _ => {
                        replica.stats.replica.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(db = "replica", "read");
                        return Ok(value);
                    }
                },
                Err(e) if is_fault(&e) => {
                    replica.stats.errors.fetch_add(1, Ordering::Relaxed);
                    replica.set_down(&e.to_string());
                }
                Err(e) => return Err(e),
            }
        } else {
            replica.stats.primary.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(db = "primary", "replica not fresh enough");
        }
        read(&self.primary).await
    }

    /// Probes the replica until `stop` turns true (see the module comment).
    pub async fn probe(self, mut stop: watch::Receiver<bool>) {
        let Some(replica) = self.replica else {
            return;
        };
        let interval = (replica.max_lag / 4).clamp(Duration::from_millis(5), PROBE_INTERVAL);
        // (time read, primary flushed LSN), oldest first, LSNs increasing.
        let mut history: std::collections::VecDeque<(Instant, i64)> = Default::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let primary_lsn = tokio::time::timeout(PROBE_TIMEOUT, primary_position(&self.primary))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if let Ok(lsn) = primary_lsn {
                let now = Instant::now();
                match history.back_mut() {
                    Some(last) if last.1 == lsn => last.0 = now,
                    _ => history.push_back((now, lsn)),
                }
            }
            let horizon = replica.max_lag + interval;
            while history.len() > 1 && history.front().is_some_and(|(t, _)| t.elapsed() > horizon) {
                history.pop_front();
            }
            match tokio::time::timeout(PROBE_TIMEOUT, replica_position(&replica.pool)).await {
                Ok(Ok((Some(replayed), xmin))) => {
                    replica.xmin.store(xmin, Ordering::Relaxed);
                    if let Some((at, _)) = history.iter().rev().find(|(_, lsn)| *lsn <= replayed) {
                        let ms = at.duration_since(replica.epoch).as_millis() as u64;
                        replica.current_ms.fetch_max(ms.max(1), Ordering::Relaxed);
                    }
                    replica.set_up();
                }
                Ok(Ok((None, _))) => replica.set_down("read_database_url is not a standby"),
                Ok(Err(e)) => replica.set_down(&e.to_string()),
                Err(_) => replica.set_down("the replica probe timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.primary.close().await;
        if let Some(r) = &self.replica {
            r.pool.close().await;
        }
    }
}

const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Replica {
    fn fresh_for(&self, token: Option<ConsistencyToken>) -> bool {
        let current_ms = self.current_ms.load(Ordering::Relaxed);
        if current_ms == 0 {
            return false;
        }
        let current = self.epoch + Duration::from_millis(current_ms);
        if current.elapsed() > self.max_lag {
            return false;
        }
        match token {
            None => true,
            Some(t) => self.xmin.load(Ordering::Relaxed) > t.xid,
        }
    }

    /// Stops using the replica until a probe succeeds again.
    fn set_down(&self, cause: &str) {
        self.xmin.store(-1, Ordering::Relaxed);
        self.current_ms.store(0, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(cause, "read replica unusable; reads go to the primary");
        }
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("read replica answers again");
        }
    }
}

/// Errors that say the replica (not the request) is at fault.
fn is_fault(e: &Error) -> bool {
    // Conflict covers "canceling statement due to conflict with recovery";
    // Internal covers e.g. a replica still behind a migration.
    matches!(
        e,
        Error::Unavailable(_) | Error::Conflict | Error::Internal(_)
    )
}

async fn primary_position(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(pool)
        .await
}

/// The replayed WAL position (None when not a standby) and snapshot xmin.
async fn replica_position(pool: &PgPool) -> Result<(Option<i64>, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint,
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    )
    .fetch_one(pool)
    .await
}
