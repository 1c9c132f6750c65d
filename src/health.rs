//! gRPC health (`grpc.health.v1`): the overall service "" and each
//! `privacy.v1` service are NOT_SERVING until the database answers and its
//! schema is at this binary's head, NOT_SERVING again while it is away, and
//! SERVING again when it returns, without a restart. While it is away, calls
//! are refused at once with UNAVAILABLE (see `monitor` and the middleware).
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The names health is reported under: the whole server and each service.
pub const SERVICES: &[&str] = &[
    "",
    "privacy.v1.ConsentService",
    "privacy.v1.PrivacyRequestService",
    "privacy.v1.DataSystemService",
    "privacy.v1.RetentionService",
    "privacy.v1.AuditService",
];

pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(*name, status).await;
    }
}

/// Probes the database every `interval` and reports the result, in health
/// and in `ready` (which the middleware reads to refuse calls at once while
/// the database is away, instead of letting each wait out the pool's acquire
/// timeout), until `shutdown` turns true. On shutdown it leaves health
/// NOT_SERVING but `ready` as it was: calls in flight are allowed to finish.
///
/// The probe uses a connection of its own, not the pool: a refused
/// connection is seen at once (the pool retries it until its acquire
/// timeout), and a saturated pool is not mistaken for an absent database.
pub async fn monitor(
    reporter: HealthReporter,
    pool: PgPool,
    interval: Duration,
    ready: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut serving = false;
    let mut probe: Option<PgConnection> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let ok = tokio::time::timeout(
            interval.max(Duration::from_secs(2)),
            probe_once(&pool, &mut probe),
        )
        .await
        .unwrap_or(false);
        if !ok {
            // A failed or timed-out probe leaves its connection suspect.
            probe = None;
        }
        if ok != serving {
            serving = ok;
            // Idle connections from before the change are likely dead (the
            // server they talked to went away), and the first calls after
            // the return would fail on them.
            discard_idle(&pool);
            let _ = ready.send(ok);
            if ok {
                tracing::info!("database ready; health SERVING");
                set_all(&reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable or not migrated; health NOT_SERVING");
                set_all(&reporter, ServingStatus::NotServing).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

async fn probe_once(pool: &PgPool, probe: &mut Option<PgConnection>) -> bool {
    let conn = match probe {
        Some(conn) => conn,
        None => match PgConnection::connect_with(&pool.connect_options()).await {
            Ok(conn) => probe.insert(conn),
            Err(_) => return false,
        },
    };
    crate::db::is_ready(conn).await
}

fn discard_idle(pool: &PgPool) {
    let mut idle = Vec::new();
    while let Some(conn) = pool.try_acquire() {
        idle.push(conn);
    }
    for conn in idle {
        // Closed in the background; the pool opens fresh ones on demand.
        drop(conn.detach());
    }
}
