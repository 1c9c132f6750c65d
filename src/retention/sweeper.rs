//! The retention sweeper: a background job inside `serve` that turns what
//! has fallen due into deletion (or anonymization) tasks for the owning data
//! systems. Safe with any number of replicas: each batch takes its entries
//! with `FOR UPDATE SKIP LOCKED` and queues their tasks in the same
//! transaction, so no entry is taken twice and none is skipped; a sweeper
//! that dies mid-batch rolls back and the next sweep takes the batch again.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use super::store;
use crate::error::Result;
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::metrics::SweepMetrics;
use crate::rpc::Context;

/// How the sweeper runs.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Pause between sweeps.
    pub interval: Duration,
    /// Entries per transaction.
    pub batch: i64,
    /// Attempts each task it queues gets.
    pub task_max_attempts: i32,
    /// How long idempotency keys are kept.
    pub idempotency_key_ttl: Duration,
}

/// What a sweep did, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepTotals {
    pub tasks_created: i64,
    pub entries_held: i64,
    pub entries_released: i64,
    pub requests_minimized: i64,
    pub idempotency_keys_pruned: i64,
}

/// Sweeps everything due by `now`, batch after batch, until a batch comes
/// back short. Each batch is one transaction with its audit event.
pub async fn sweep(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &SweepSettings,
    ctx: &Context,
) -> Result<SweepTotals> {
    let mut totals = SweepTotals::default();
    loop {
        let mut tx = pool.begin().await?;
        let released = store::release_held(&mut tx, now, settings.batch).await?;
        let swept =
            store::sweep_batch(&mut tx, now, settings.batch, settings.task_max_attempts).await?;
        // This service's own records follow retention too.
        let minimized = store::minimize_request_records(&mut tx, now, settings.batch).await?;
        let pruned = store::prune_idempotency_keys(
            &mut tx,
            now,
            settings.idempotency_key_ttl,
            settings.batch,
        )
        .await?;
        if released > 0 || swept.taken > 0 || minimized > 0 || pruned > 0 {
            journal::record(
                &mut tx,
                ctx.audit(
                    "retentionSchedule",
                    None,
                    json!({
                        "tasks_created": swept.tasked,
                        "entries_held": swept.held,
                        "entries_released": released,
                        "requests_minimized": minimized,
                        "idempotency_keys_pruned": pruned,
                        "as_of": now,
                    }),
                ),
                ChangeEntry::resource(ChangeKind::TaskChanged, "retentionSchedule", None),
            )
            .await?;
        }
        tx.commit().await?;
        totals.tasks_created += swept.tasked;
        totals.entries_held += swept.held;
        totals.entries_released += released;
        totals.requests_minimized += minimized;
        totals.idempotency_keys_pruned += pruned;
        if [released, swept.taken, minimized, pruned]
            .iter()
            .all(|n| *n < settings.batch)
        {
            return Ok(totals);
        }
    }
}

/// The background loop: a sweep every interval until shutdown. Failures
/// (the database away, the schema not yet migrated) are logged and retried
/// at the next interval.
pub async fn run(
    pool: PgPool,
    settings: SweepSettings,
    metrics: Arc<SweepMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    metrics.started(settings.interval);
    let ctx = Context::internal(
        "privacy-records/retention-sweeper",
        "RetentionSweeper",
        String::new(),
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let ctx = Context {
            request_id: format!("sweep-{}", uuid::Uuid::new_v4()),
            ..ctx.clone()
        };
        let began = std::time::Instant::now();
        let sweeping = sweep(&pool, Utc::now(), &settings, &ctx);
        tokio::select! {
            outcome = sweeping => match outcome {
                Ok(t) if t == SweepTotals::default() => metrics.swept(began.elapsed(), 0),
                Ok(t) => {
                    metrics.swept(began.elapsed(), t.tasks_created);
                    tracing::info!(
                    tasks_created = t.tasks_created,
                    entries_held = t.entries_held,
                    entries_released = t.entries_released,
                    requests_minimized = t.requests_minimized,
                    idempotency_keys_pruned = t.idempotency_keys_pruned,
                    "retention sweep"
                    )
                }
                Err(e) => {
                    metrics.failed();
                    tracing::warn!(error = %e, "retention sweep failed; retrying next interval");
                }
            },
            // Dropping the sweep mid-batch rolls its transaction back.
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
