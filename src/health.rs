//! gRPC health (`grpc.health.v1`): the overall service "" and each
//! `privacy.v1` service are NOT_SERVING until the database answers and its
//! schema is at this binary's head, NOT_SERVING again while it is away, and
//! SERVING again when it returns, without a restart.
use std::time::Duration;

use sqlx::PgPool;
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

/// Probes the database every `interval` and reports the result, until
/// `shutdown` turns true. On shutdown it leaves everything NOT_SERVING.
pub async fn monitor(
    reporter: HealthReporter,
    pool: PgPool,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut serving = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let ready = tokio::time::timeout(
            interval.max(Duration::from_secs(2)),
            crate::db::is_ready(&pool),
        )
        .await
        .unwrap_or(false);
        if ready != serving {
            serving = ready;
            if ready {
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
