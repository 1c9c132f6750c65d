//! Reading the change feed in a stable order that never skips a committed
//! event.
//!
//! Events are ordered by (transaction id, event id). A reader only takes
//! events whose transaction id is below the xmin of its snapshot: every
//! transaction below xmin has finished, and any transaction that has not yet
//! written gets a larger id, so no event can later appear before a position
//! the reader has passed. A long transaction delays the feed; it never
//! reorders it. (The same idea as SpiceDB's Postgres datastore revisions.)
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::Result;
use crate::journal::ChangeKind;
use crate::tokens::FeedPosition;

#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub kind: ChangeKind,
    pub subject_id: Option<String>,
    pub purpose_key: Option<String>,
    pub consent_record_id: Option<i64>,
    pub policy_version: Option<String>,
    pub change_time: DateTime<Utc>,
}

/// A batch read from the feed and the position to read from next.
#[derive(Debug)]
pub struct FeedBatch {
    pub events: Vec<FeedEvent>,
    pub next: FeedPosition,
    /// The read's snapshot xmax: every transaction that had committed when
    /// the read began has a smaller id.
    pub xmax: i64,
}

type Row = (
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
);

/// The position of "now": events committed from here on are after it.
pub async fn head(pool: &PgPool) -> Result<FeedPosition> {
    let xmin: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    Ok(FeedPosition { xid: xmin, id: 0 })
}

/// Reads up to `limit` events at or after `from`, optionally only those
/// about one subject.
pub async fn read(
    pool: &PgPool,
    from: FeedPosition,
    subject_id: Option<&str>,
    limit: i64,
) -> Result<FeedBatch> {
    // One statement, so the events and the xmin come from the same snapshot.
    // Separate statement texts with and without the subject filter, so each
    // has its own generic plan on the right index.
    let by_subject = if subject_id.is_some() {
        "c.subject_id = $3"
    } else {
        "$3::text IS NULL"
    };
    let sql = format!(
        "WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(s) AS xmin, pg_snapshot_xmax(s) AS xmax
                                    FROM (SELECT pg_current_snapshot() AS s) cs)
         SELECT snap.xmin::text::bigint, snap.xmax::text::bigint, e.xid::text::bigint, e.id, e.kind, e.subject_id,
                e.purpose_key, e.consent_record_id, e.policy_version, e.change_time
         FROM snap
         LEFT JOIN LATERAL (
             SELECT c.* FROM change_events c
             WHERE (c.xid, c.id) >= ($1::text::xid8, $2)
               AND c.xid < snap.xmin
               AND {by_subject}
             ORDER BY c.xid, c.id
             LIMIT $4
         ) e ON true
         ORDER BY e.xid, e.id"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(from.xid.to_string())
        .bind(from.id)
        .bind(subject_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;

    let xmin = rows.first().map(|r| r.0).unwrap_or(from.xid);
    let xmax = rows.first().map(|r| r.1).unwrap_or(xmin);
    let mut events = Vec::with_capacity(rows.len());
    for (_, _, xid, id, kind, subject_id, purpose_key, record_id, policy_version, time) in rows {
        let (Some(xid), Some(id), Some(kind), Some(change_time)) = (xid, id, kind, time) else {
            continue;
        };
        let Some(kind) = ChangeKind::parse(&kind) else {
            tracing::warn!(kind, "unknown change kind in the feed; skipped");
            continue;
        };
        events.push(FeedEvent {
            position: FeedPosition { xid, id },
            kind,
            subject_id,
            purpose_key,
            consent_record_id: record_id,
            policy_version,
            change_time,
        });
    }
    let next = match events.last() {
        // A full batch: there may be more below xmin; continue right after it.
        Some(last) if events.len() as i64 >= limit => FeedPosition {
            xid: last.position.xid,
            id: last.position.id + 1,
        },
        // Everything below xmin has been read.
        _ => from.max(FeedPosition { xid: xmin, id: 0 }),
    };
    Ok(FeedBatch { events, next, xmax })
}
