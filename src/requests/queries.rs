//! The privacy-request reads: a request, a page of them, an access
//! package, suppression checks, the year's metrics and the rules table.
//! They write nothing and know no gRPC.
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;

use super::metrics;
use super::model::{ListFilter, State};
use super::service::{RequestView, get};
use super::store;
use crate::error::{Error, Result};
use crate::identifiers::HashKey;
use crate::identifiers::IdentifierKind;
use crate::keys::Keyring;
use crate::proto::ErrorReason;
use crate::reads::Reads;
use crate::rules::{self, JurisdictionRules};

/// The JSON export of a completed access or portability request: what each
/// data system exported, and this service's own records of the subject.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn access_package(keys: &Keyring, pool: &PgPool, id: i64) -> Result<serde_json::Value> {
    let mut conn = pool.acquire().await?;
    let conn = &mut *conn;
    let row = store::must_get(conn, id, false).await?;
    let t = row.request_type;
    if !t.is_access() {
        return Err(Error::precondition(
            ErrorReason::ActionNotSupported,
            row.name(),
            format!(
                "a {t} request has no access package; only access, portability and ADMT access do"
            ),
        ));
    }
    let state = row.state;
    if !matches!(state, State::Completed | State::PartiallyCompleted) {
        return Err(Error::InvalidTransition {
            resource: row.name(),
            state: state.as_str(),
            action: "GetAccessPackage",
            allowed_from: vec![
                State::Completed.as_str(),
                State::PartiallyCompleted.as_str(),
            ],
        });
    }
    let systems: Vec<_> = store::exports(keys, conn, id)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "task": format!("tasks/{}", e.id),
                "data_system": format!("dataSystems/{}", e.data_system_id),
                "state": e.state,
                "categories": e.categories,
                "records": e.records_affected,
                "content_sha256": e.content_sha256,
                "system_reference": e.system_reference,
                "exempt_reason": e.exempt_reason,
                "data": e.export_json,
            })
        })
        .collect();
    // What the law makes the organisation keep of the subject's data, and
    // why and until when: the same rule that keeps it from being erased.
    let kept: Vec<_> =
        crate::retention::store::legal_keeps(conn, row.subject_id.as_str(), &[], None, Utc::now())
            .await?
            .into_iter()
            .map(|k| {
                json!({
                    "category": k.category,
                    "data_system": format!("dataSystems/{}", k.data_system_id),
                    "legal_reason": k.legal_reason,
                    "keep_until": k.keep_until,
                    "period": { "amount": k.period_amount, "unit": k.period_unit },
                    "trigger": k.trigger,
                    "explanation": k.describe(),
                })
            })
            .collect();
    Ok(json!({
        "format": "privacy-records access package v1",
        "privacy_request": row.name(),
        "request_type": t.as_str(),
        "subject_id": row.subject_id.as_str(),
        "jurisdiction": row.jurisdiction,
        "received": row.receive_time,
        "data_systems": systems,
        "kept_by_law": kept,
        "consent_history": store::consent_history(conn, row.subject_id.as_str()).await?,
        "privacy_requests": store::request_history(conn, row.subject_id.as_str()).await?,
    }))
}

/// `get`, on a connection of its own from the primary.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn read(keys: &Keyring, pool: &PgPool, id: i64) -> Result<RequestView> {
    let mut conn = pool.acquire().await?;
    get(keys, &mut conn, id).await
}

/// A page of requests, and whether more follow it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub requests: Vec<RequestView>,
    pub more: bool,
}

/// The requests matching `filter` with ids above `after`, at most `limit`
/// of them, opened and with their task summaries (no history). Routed as
/// reads are (`crate::reads`).
#[tracing::instrument(skip_all, fields(after = after, limit = limit))]
pub async fn list(
    reads: &Reads,
    keys: &Keyring,
    filter: &ListFilter,
    after: i64,
    limit: i64,
) -> Result<Listed> {
    reads
        .read(None, |pool| async move {
            let mut page = store::list(pool, filter, after, limit + 1).await?;
            let more = page.len() > usize::try_from(limit).unwrap_or(usize::MAX);
            if more {
                page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            }
            let mut conn = pool.acquire().await?;
            store::open(keys, &mut conn, &mut page).await?;
            drop(conn);
            let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
            let counts = store::task_counts_of(pool, &ids).await?;
            let requests = page
                .into_iter()
                .map(|request| RequestView {
                    tasks: counts.get(&request.id).copied().unwrap_or_default(),
                    history: Vec::new(),
                    request,
                })
                .collect();
            Ok(Listed { requests, more })
        })
        .await
}

/// Which kinds of the given identifiers are suppressed (a deletion turned
/// them into suppression entries). Compared by keyed hash only.
#[tracing::instrument(skip_all, fields(identifiers = identifiers.len()))]
pub async fn suppressed(
    pool: &PgPool,
    key: &HashKey,
    identifiers: &[(IdentifierKind, String)],
) -> Result<Vec<String>> {
    let kinds: Vec<String> = identifiers
        .iter()
        .map(|(k, _)| k.as_str().to_owned())
        .collect();
    let hashes: Vec<Vec<u8>> = identifiers
        .iter()
        .map(|(k, val)| key.hash(*k, val))
        .collect();
    store::suppressed(pool, &kinds, &hashes).await
}

/// The year's request metrics, with what is overdue or due soon today.
#[tracing::instrument(skip_all, fields(year = year))]
pub async fn year_metrics(pool: &PgPool, year: i32) -> Result<metrics::YearMetrics> {
    let outcomes = store::year_outcomes(pool, year).await?;
    let (overdue, due_soon) = store::due_counts(pool).await?;
    Ok(metrics::of_year(year, &outcomes, overdue, due_soon))
}

/// The compiled-in rules table.
pub fn rules_table() -> Result<&'static rules::RulesTable> {
    rules::table().map_err(|e| Error::Internal(e.to_string()))
}

/// The rules that answer for a jurisdiction code, and the code asked for
/// when they are another's (an EU member state's, or the defaults).
#[derive(Debug, Clone)]
pub struct RulesFor {
    pub rules: &'static JurisdictionRules,
    /// Empty when the rules are the code's own.
    pub requested: String,
    pub table: &'static rules::RulesTable,
}

pub fn rules_for(code: String) -> Result<RulesFor> {
    let table = rules_table()?;
    let lookup = table.lookup(&code);
    let requested = match lookup.resolution {
        rules::Resolution::Exact => String::new(),
        rules::Resolution::MemberState | rules::Resolution::Default => code,
    };
    Ok(RulesFor {
        rules: lookup.rules,
        requested,
        table,
    })
}
