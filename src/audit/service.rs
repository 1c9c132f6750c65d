//! The audit use cases: list the trail (from a replica when one is fresh
//! enough) and verify the chain (on the primary, where the sealer writes).
use sqlx::PgPool;

use super::chain::Anchor;
use super::model::{AuditEvent, EventQuery};
use super::sealer::{self, Verification};
use super::store;
use crate::error::Result;
use crate::keys::Keyring;
use crate::metrics::VerificationMetrics;
use crate::reads::Reads;
use crate::rpc::paginate;
use crate::tokens::PageToken;

/// One page of events matching the query, and the token of the next page
/// (empty on the last).
#[tracing::instrument(skip_all, fields(limit = query.limit))]
pub async fn list_events(reads: &Reads, query: &EventQuery) -> Result<(Vec<AuditEvent>, String)> {
    let after = query.after.unwrap_or(0);
    // One more than the page, to know whether another page follows.
    let rows = reads
        .read(None, |pool| {
            store::list_events(pool, &query.filter, after, query.limit + 1)
        })
        .await?;
    Ok(paginate(rows, query.limit, |e| {
        PageToken::encode(&query.token_filters, &e.id)
    }))
}

/// Verifies the chain against its checkpoints and, when given, `anchor`.
#[tracing::instrument(skip_all)]
pub async fn verify(
    pool: &PgPool,
    keys: &Keyring,
    anchor: Option<&Anchor>,
    metrics: &VerificationMetrics,
) -> Result<Verification> {
    let mut conn = pool.acquire().await?;
    let found = sealer::verify(&mut conn, keys, anchor).await?;
    metrics.verified(found.broken.is_none());
    Ok(found)
}
