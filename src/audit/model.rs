//! The audit trail's values as the service reads them back.
use chrono::{DateTime, Utc};

/// One audit event, with its chain link when the sealer has linked it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: i64,
    pub actor: String,
    pub method: String,
    pub target: String,
    pub subject_id: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
    pub occur_time: DateTime<Utc>,
    pub chain_seq: Option<i64>,
    pub hash: Option<Vec<u8>>,
}

/// Which events a listing returns: each set field must match exactly; the
/// times bound `occur_time` (start inclusive, end exclusive).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub subject_id: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub method: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

/// A page of a listing: events after `after` (an event id), at most
/// `limit`, its next token bound to `token_filters` (the request's filters
/// as sent, so a token cannot be replayed under other filters).
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub filter: EventFilter,
    pub limit: i64,
    pub after: Option<i64>,
    pub token_filters: String,
}
