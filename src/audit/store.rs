//! Reading the audit trail back (events are written by `journal`, linked by
//! the sealer).
use sqlx::PgPool;

use super::model::{AuditEvent, EventFilter};
use crate::error::Result;

/// Up to `limit` events after event id `after` that match `filter`, in id
/// order, each with its chain link when sealed.
#[tracing::instrument(skip_all, fields(limit = limit))]
pub async fn list_events(
    pool: &PgPool,
    filter: &EventFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEvent>> {
    let rows = sqlx::query_as::<_, AuditEvent>(
        "SELECT e.id, e.actor, e.method, e.target, e.subject_id, e.request_id,
                e.details::text AS details, e.occur_time, c.chain_seq, c.hash
         FROM audit_events e LEFT JOIN audit_chain c ON c.event_id = e.id
         WHERE e.id > $1
           AND ($2::text IS NULL OR e.subject_id = $2)
           AND ($3::text IS NULL OR e.target = $3)
           AND ($4::text IS NULL OR e.actor = $4)
           AND ($5::text IS NULL OR e.method = $5)
           AND ($6::timestamptz IS NULL OR e.occur_time >= $6)
           AND ($7::timestamptz IS NULL OR e.occur_time < $7)
         ORDER BY e.id LIMIT $8",
    )
    .bind(after)
    .bind(filter.subject_id.as_deref())
    .bind(filter.target.as_deref())
    .bind(filter.actor.as_deref())
    .bind(filter.method.as_deref())
    .bind(filter.start_time)
    .bind(filter.end_time)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
