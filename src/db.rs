//! The database pool, the embedded migrations, and the small transaction
//! helpers every store uses.
use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::Settings;
use crate::error::{Error, Result};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A pool that connects lazily, so `serve` can start (NOT_SERVING) while the
/// database is still away, and that does not ping each connection before use
/// (a round trip on every call; a dead connection fails the call instead and
/// is replaced).
pub fn pool(database_url: &str, settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    // Generic plans: the hot statements are keyed lookups whose plan does not
    // depend on the values, and re-planning them on every call (PostgreSQL's
    // default custom plans) about halved CheckConsent throughput. Statements
    // whose best plan depends on which filters are set are written as
    // separate texts instead of `$1 IS NULL OR ...`.
    let options = options
        .application_name("privacy-records")
        .options([("plan_cache_mode", "force_generic_plan")]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .min_connections(0)
        .acquire_timeout(settings.db_acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// migrates, so replicas starting together migrate once and all come up.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The newest migration compiled into this binary.
pub fn head_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Whether the database answers and its schema is at this binary's head.
pub async fn is_ready<'c>(db: impl sqlx::PgExecutor<'c>) -> bool {
    let applied: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(db)
            .await;
    matches!(applied, Ok(Some(v)) if v >= head_version())
}

/// Runs `attempt` again when it fails with a serialization failure or a
/// deadlock, up to a bounded number of times, then reports the conflict.
pub async fn retry_on_conflict<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    const ATTEMPTS: u32 = 5;
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(e) if e.is_retryable_conflict() && n < ATTEMPTS => {
                tracing::debug!(attempt = n, "transaction conflict; retrying");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(n))).await;
            }
            other => return other,
        }
    }
}

/// Maps a unique violation to `on_unique`, everything else as usual.
pub fn unique_violation(err: sqlx::Error, on_unique: impl FnOnce() -> Error) -> Error {
    if crate::error::sqlstate(&err).as_deref() == Some("23505") {
        on_unique()
    } else {
        Error::from(err)
    }
}
