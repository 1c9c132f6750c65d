//! The SQL of privacy requests.
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::metrics::Outcome;
use super::model::{
    Action, Agent, Appeal, AppealState, Channel, Citation, DenialReason, HistoryEntry, Hold,
    HoldReason, ListFilter, PrivacyRequest, Sealed, State, TaskCounts,
};
use crate::datasystems::model::{DataAction, FieldCorrection};
use crate::error::{Error, Result};
use crate::identifiers::IdentifierKind;
use crate::keys::{Keyring, column};
use crate::names::SubjectId;
use crate::retention::store::LegalKeep;
use crate::rpc::Context;
use crate::rules::{self, Clock, Period, RequestType, Unit};

/// A request's row as stored: strings and columns, private to this file.
/// `decode` turns it into the domain's `PrivacyRequest`, once.
#[derive(Debug, Clone, sqlx::FromRow)]
struct RequestRow {
    id: i64,
    subject_id: String,
    request_type: String,
    jurisdiction: String,
    rules_code: String,
    #[allow(dead_code)] // kept for the record; the rules answer by code
    rules_version: String,
    channel: String,
    identifier_kinds: Vec<String>,
    agent: Option<Value>,
    corrections: Value,
    categories: Vec<String>,
    state: String,
    held_from: Option<String>,
    hold_reason: Option<String>,
    hold_start: Option<NaiveDate>,
    hold_pauses_clock: bool,
    receive_time: DateTime<Utc>,
    received_date: NaiveDate,
    period_amount: i32,
    period_unit: String,
    extension_amount: Option<i32>,
    extension_unit: Option<String>,
    extended: bool,
    extension_reason: Option<String>,
    paused_days: i32,
    original_due_date: NaiveDate,
    due_date: NaiveDate,
    verification_required: bool,
    agent_may_file: bool,
    statutory: bool,
    free_limit_exceeded: bool,
    prior_requests_12_months: i32,
    deadline_citation: Value,
    denial_reason: Option<String>,
    explanation: String,
    exemptions: Vec<String>,
    appeal_state: Option<String>,
    appeal_statement: Option<String>,
    appeal_create_time: Option<DateTime<Utc>>,
    appeal_due_date: Option<NaiveDate>,
    appeal_explanation: Option<String>,
    appeal_regulator_contact_required: Option<bool>,
    appeal_regulator_contact_provided: Option<bool>,
    appeal_decide_time: Option<DateTime<Utc>>,
    appeal_voluntary: Option<bool>,
    legal_keeps: sqlx::types::Json<Vec<LegalKeep>>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    close_time: Option<DateTime<Utc>>,
    agent_sealed: Option<Vec<u8>>,
    corrections_sealed: Option<Vec<u8>>,
    appeal_statement_sealed: Option<Vec<u8>>,
}

/// A stored value that does not decode is a bug (every one was written
/// from a domain value): INTERNAL, naming the column, never the value
/// when it may be personal.
fn corrupt(what: &str, id: i64) -> Error {
    Error::Internal(format!(
        "privacyRequests/{id}: the stored {what} does not decode"
    ))
}

fn enum_of<T>(id: i64, what: &str, raw: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(raw).ok_or_else(|| corrupt(what, id))
}

fn opt_enum_of<T>(
    id: i64,
    what: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    raw.map(|r| enum_of(id, what, r, parse)).transpose()
}

impl RequestRow {
    /// The domain's request, with its clock restored under the rules it was
    /// filed with.
    fn decode(self) -> Result<PrivacyRequest> {
        let id = self.id;
        let table = rules::table().map_err(|e| Error::Internal(e.to_string()))?;
        let rules = table.get(&self.rules_code).unwrap_or(table.defaults());
        let unit = |u: &str| enum_of(id, "period unit", u, Unit::parse);
        let amount = |a: i32| u32::try_from(a).map_err(|_| corrupt("period", id));
        let period = Period::new(amount(self.period_amount)?, unit(&self.period_unit)?);
        let extension = match (self.extension_amount, self.extension_unit.as_deref()) {
            (Some(a), Some(u)) => Some(Period::new(amount(a)?, unit(u)?)),
            _ => None,
        };
        // A statutory clock counts business days without the jurisdiction's
        // holidays; a voluntary one follows the defaults, which have none.
        let holidays = if self.statutory {
            rules.holidays()
        } else {
            rules::Holidays::NONE
        };
        let clock = Clock::restore(
            self.received_date,
            period,
            extension,
            self.extended,
            amount(self.paused_days)?,
        )
        .with_holidays(holidays);
        let hold = opt_enum_of(
            id,
            "hold reason",
            self.hold_reason.as_deref(),
            HoldReason::from_db,
        )?
        .map(|reason| -> Result<Hold> {
            Ok(Hold {
                reason,
                from: opt_enum_of(
                    id,
                    "held-from state",
                    self.held_from.as_deref(),
                    State::from_db,
                )?,
                since: self.hold_start,
                pauses_clock: self.hold_pauses_clock,
            })
        })
        .transpose()?;
        let appeal = opt_enum_of(
            id,
            "appeal state",
            self.appeal_state.as_deref(),
            AppealState::from_db,
        )?
        .map(|state| Appeal {
            state,
            statement: self.appeal_statement.clone().unwrap_or_default(),
            create_time: self.appeal_create_time,
            due_date: self.appeal_due_date,
            explanation: self.appeal_explanation.clone(),
            regulator_contact_required: self.appeal_regulator_contact_required.unwrap_or(false),
            regulator_contact_provided: self.appeal_regulator_contact_provided.unwrap_or(false),
            decide_time: self.appeal_decide_time,
            voluntary: self.appeal_voluntary.unwrap_or(false),
        });
        let agent = self
            .agent
            .map(serde_json::from_value::<Agent>)
            .transpose()
            .map_err(|_| corrupt("agent", id))?;
        let corrections: Vec<FieldCorrection> =
            serde_json::from_value(self.corrections).map_err(|_| corrupt("corrections", id))?;
        let cite = &self.deadline_citation;
        let text = |k: &str| {
            cite.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let deadline_citation = Citation {
            source: text("source"),
            confidence: text("confidence"),
            conservative: cite
                .get("conservative")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            note: text("note"),
        };
        Ok(PrivacyRequest {
            id,
            subject_id: SubjectId::parse(&self.subject_id)
                .map_err(|_| corrupt("subject id", id))?,
            request_type: enum_of(id, "request type", &self.request_type, RequestType::parse)?,
            jurisdiction: self.jurisdiction,
            rules_code: self.rules_code,
            rules,
            channel: enum_of(id, "channel", &self.channel, Channel::from_db)?,
            identifier_kinds: self
                .identifier_kinds
                .iter()
                .map(|k| enum_of(id, "identifier kind", k, IdentifierKind::from_db))
                .collect::<Result<_>>()?,
            agent,
            corrections,
            categories: self.categories,
            state: enum_of(id, "state", &self.state, State::from_db)?,
            hold,
            receive_time: self.receive_time,
            clock,
            extension_reason: self.extension_reason,
            original_due_date: self.original_due_date,
            due_date: self.due_date,
            verification_required: self.verification_required,
            agent_may_file: self.agent_may_file,
            statutory: self.statutory,
            free_limit_exceeded: self.free_limit_exceeded,
            prior_requests_12_months: self.prior_requests_12_months,
            deadline_citation,
            denial_reason: opt_enum_of(
                id,
                "denial reason",
                self.denial_reason.as_deref(),
                DenialReason::from_db,
            )?,
            explanation: self.explanation,
            exemptions: self.exemptions,
            appeal,
            legal_keeps: self.legal_keeps.0,
            create_time: self.create_time,
            update_time: self.update_time,
            close_time: self.close_time,
            sealed: Sealed {
                agent: self.agent_sealed,
                corrections: self.corrections_sealed,
                appeal_statement: self.appeal_statement_sealed,
            },
        })
    }
}

fn decode_all(rows: Vec<RequestRow>) -> Result<Vec<PrivacyRequest>> {
    rows.into_iter().map(RequestRow::decode).collect()
}

/// A transition as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TransitionRow {
    id: i64,
    from_state: Option<String>,
    to_state: String,
    action: String,
    actor: String,
    reason: String,
    transition_time: DateTime<Utc>,
}

impl TransitionRow {
    fn decode(self) -> Result<HistoryEntry> {
        let state = |s: &str| {
            State::from_db(s).ok_or_else(|| {
                Error::Internal(format!("transition {}: unknown state {s:?}", self.id))
            })
        };
        Ok(HistoryEntry {
            from: self.from_state.as_deref().map(state).transpose()?,
            to: state(&self.to_state)?,
            action: self.action.clone(),
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            time: self.transition_time,
        })
    }
}

/// What a new request's row holds.
pub struct NewRow<'a> {
    pub subject_id: &'a str,
    pub request_type: &'a str,
    pub jurisdiction: &'a str,
    pub rules_code: &'a str,
    pub rules_version: &'a str,
    pub channel: &'a str,
    pub identifier_kinds: Vec<String>,
    pub agent: Option<Value>,
    pub corrections: Value,
    pub categories: &'a [String],
    pub receive_time: DateTime<Utc>,
    pub received_date: NaiveDate,
    pub period: (i32, &'a str),
    pub extension: Option<(i32, &'a str)>,
    pub original_due_date: NaiveDate,
    pub verification_required: bool,
    pub agent_may_file: bool,
    pub statutory: bool,
    pub free_limit_exceeded: bool,
    pub prior_requests_12_months: i32,
    pub deadline_citation: Value,
    pub agent_sealed: Option<Vec<u8>>,
    pub corrections_sealed: Option<Vec<u8>>,
}

/// Opens the sealed values of requests read from the database (one key
/// query for all of them); values whose data key was destroyed read as
/// absent (agent none, corrections empty, statement blank).
#[tracing::instrument(skip_all, fields(requests = requests.len()))]
pub async fn open(
    keys: &Keyring,
    conn: &mut PgConnection,
    requests: &mut [PrivacyRequest],
) -> Result<()> {
    let opener = keys
        .opener(
            conn,
            requests.iter().flat_map(|r| {
                [
                    r.sealed.agent.as_deref(),
                    r.sealed.corrections.as_deref(),
                    r.sealed.appeal_statement.as_deref(),
                ]
                .into_iter()
                .flatten()
            }),
        )
        .await?;
    for r in requests {
        let subject = r.subject_id.as_str();
        if let Some(s) = r.sealed.agent.take() {
            r.agent = opener
                .open_json::<Value>(subject, column::REQUEST_AGENT, &s)?
                .map(serde_json::from_value::<Agent>)
                .transpose()
                .map_err(|_| corrupt("agent", r.id))?;
        }
        if let Some(s) = &r.sealed.corrections {
            let opened: Option<Value> = opener.open_json(subject, column::CORRECTIONS, s)?;
            r.corrections = match opened {
                Some(v) => serde_json::from_value(v).map_err(|_| corrupt("corrections", r.id))?,
                None => Vec::new(),
            };
        }
        if let Some(s) = r.sealed.appeal_statement.take() {
            let statement = opener
                .open(subject, column::APPEAL_STATEMENT, &s)?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if let Some(appeal) = &mut r.appeal {
                appeal.statement = statement;
            }
        }
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn insert(conn: &mut PgConnection, r: &NewRow<'_>) -> Result<i64> {
    let id = sqlx::query_scalar(
        "INSERT INTO privacy_requests (
             subject_id, request_type, jurisdiction, rules_code, rules_version, channel,
             identifier_kinds, agent, corrections, categories, state, receive_time,
             received_date, period_amount, period_unit, extension_amount, extension_unit,
             original_due_date, due_date, verification_required, agent_may_file, statutory,
             free_limit_exceeded, prior_requests_12_months, deadline_citation,
             agent_sealed, corrections_sealed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'RECEIVED', $11, $12, $13, $14, $15,
                 $16, $17, $17, $18, $19, $20, $21, $22, $23, $24, $25)
         RETURNING id",
    )
    .bind(r.subject_id)
    .bind(r.request_type)
    .bind(r.jurisdiction)
    .bind(r.rules_code)
    .bind(r.rules_version)
    .bind(r.channel)
    .bind(&r.identifier_kinds)
    .bind(&r.agent)
    .bind(&r.corrections)
    .bind(r.categories)
    .bind(r.receive_time)
    .bind(r.received_date)
    .bind(r.period.0)
    .bind(r.period.1)
    .bind(r.extension.map(|e| e.0))
    .bind(r.extension.map(|e| e.1))
    .bind(r.original_due_date)
    .bind(r.verification_required)
    .bind(r.agent_may_file)
    .bind(r.statutory)
    .bind(r.free_limit_exceeded)
    .bind(r.prior_requests_12_months)
    .bind(&r.deadline_citation)
    .bind(&r.agent_sealed)
    .bind(&r.corrections_sealed)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Reads one request; `for_update` locks it for the rest of the transaction.
#[tracing::instrument(skip_all, fields(privacy_request = id, for_update = for_update))]
pub async fn get(
    conn: &mut PgConnection,
    id: i64,
    for_update: bool,
) -> Result<Option<PrivacyRequest>> {
    let sql = if for_update {
        "SELECT * FROM privacy_requests WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM privacy_requests WHERE id = $1"
    };
    let row: Option<RequestRow> = sqlx::query_as(sql).bind(id).fetch_optional(conn).await?;
    row.map(RequestRow::decode).transpose()
}

/// Reads one request or fails with NOT_FOUND.
#[tracing::instrument(skip_all, fields(privacy_request = id, for_update = for_update))]
pub async fn must_get(
    conn: &mut PgConnection,
    id: i64,
    for_update: bool,
) -> Result<PrivacyRequest> {
    get(conn, id, for_update)
        .await?
        .ok_or_else(|| Error::NotFound(format!("privacyRequests/{id}")))
}

/// Requests of `request_type` the subject filed in the 12 months before
/// `before` (canceled ones do not count).
#[tracing::instrument(skip_all, fields(request_type = request_type))]
pub async fn count_prior(
    conn: &mut PgConnection,
    subject_id: &str,
    request_type: &str,
    before: DateTime<Utc>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM privacy_requests
         WHERE subject_id = $1 AND request_type = $2 AND state <> 'CANCELED'
           AND receive_time > $3 - interval '12 months' AND receive_time <= $3",
    )
    .bind(subject_id)
    .bind(request_type)
    .bind(before)
    .fetch_one(conn)
    .await?)
}

#[tracing::instrument(skip_all, fields(privacy_request = id, identifiers = kinds.len()))]
pub async fn insert_identifiers(
    conn: &mut PgConnection,
    id: i64,
    subject_id: &str,
    kinds: &[String],
    hashes: &[Vec<u8>],
    sealed_values: &[Option<Vec<u8>>],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO request_identifiers (privacy_request_id, subject_id, kind, hash, value_sealed)
         SELECT $1, $2, k, h, v FROM unnest($3::text[], $4::bytea[], $5::bytea[]) AS t (k, h, v)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(subject_id)
    .bind(kinds)
    .bind(hashes)
    .bind(sealed_values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends a transition (or, with `from == to`, an event such as an
/// extension) to the request's history.
#[tracing::instrument(skip_all, fields(privacy_request = row.id, action = action.as_str(), to = to.as_str()))]
pub async fn record_transition(
    conn: &mut PgConnection,
    row: &PrivacyRequest,
    from: Option<State>,
    to: State,
    action: Action,
    ctx: &Context,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO request_transitions
             (privacy_request_id, subject_id, from_state, to_state, action, actor, reason, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.id)
    .bind(row.subject_id.as_str())
    .bind(from.map(|s| s.as_str()))
    .bind(to.as_str())
    .bind(action.as_str())
    .bind(&ctx.actor)
    .bind(reason)
    .bind(&ctx.request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The request's history, oldest first.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn transitions(conn: &mut PgConnection, id: i64) -> Result<Vec<HistoryEntry>> {
    let rows: Vec<TransitionRow> = sqlx::query_as(
        "SELECT id, from_state, to_state, action, actor, reason, transition_time
         FROM request_transitions WHERE privacy_request_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(TransitionRow::decode).collect()
}

/// One UPDATE of a request's row by id, with its parameters from $2 on.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn update(
    conn: &mut PgConnection,
    set: &'static str,
    id: i64,
    bind: impl FnOnce(
        sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<()> {
    let sql = format!("UPDATE privacy_requests SET {set}, update_time = now() WHERE id = $1");
    bind(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id))
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends exemptions (scopes a legal hold kept out).
pub async fn add_exemptions(conn: &mut PgConnection, id: i64, held: &[String]) -> Result<()> {
    update(conn, "exemptions = exemptions || $2", id, |q| q.bind(held)).await
}

pub async fn set_explanation(conn: &mut PgConnection, id: i64, explanation: &str) -> Result<()> {
    update(conn, "explanation = $2", id, |q| q.bind(explanation)).await
}

/// Replaces the agent with its sealed form (the clear column is emptied).
pub async fn set_agent(conn: &mut PgConnection, id: i64, agent_sealed: &[u8]) -> Result<()> {
    update(conn, "agent = NULL, agent_sealed = $2", id, |q| {
        q.bind(agent_sealed)
    })
    .await
}

pub async fn set_extended(
    conn: &mut PgConnection,
    id: i64,
    reason: &str,
    due: NaiveDate,
) -> Result<()> {
    update(
        conn,
        "extended = true, extension_reason = $2, due_date = $3",
        id,
        |q| q.bind(reason).bind(due),
    )
    .await
}

pub async fn set_hold(
    conn: &mut PgConnection,
    id: i64,
    from: State,
    reason: HoldReason,
    since: NaiveDate,
    pauses_clock: bool,
) -> Result<()> {
    update(
        conn,
        "held_from = $2, hold_reason = $3, hold_start = $4, hold_pauses_clock = $5",
        id,
        |q| {
            q.bind(from.as_str())
                .bind(reason.as_str())
                .bind(since)
                .bind(pauses_clock)
        },
    )
    .await
}

/// Clears the hold and stores the clock it leaves behind.
pub async fn end_hold(
    conn: &mut PgConnection,
    id: i64,
    paused_days: i32,
    due: NaiveDate,
    original_due: NaiveDate,
) -> Result<()> {
    update(
        conn,
        "held_from = NULL, hold_reason = NULL, hold_start = NULL, hold_pauses_clock = false,
         paused_days = $2, due_date = $3, original_due_date = $4",
        id,
        |q| q.bind(paused_days).bind(due).bind(original_due),
    )
    .await
}

pub async fn set_denial(
    conn: &mut PgConnection,
    id: i64,
    reason: DenialReason,
    explanation: &str,
) -> Result<()> {
    update(
        conn,
        "denial_reason = $2, explanation = $3, held_from = NULL, hold_reason = NULL",
        id,
        |q| q.bind(reason.as_str()).bind(explanation),
    )
    .await
}

pub async fn set_outcome(
    conn: &mut PgConnection,
    id: i64,
    explanation: &str,
    exemptions: &[String],
) -> Result<()> {
    update(conn, "explanation = $2, exemptions = $3", id, |q| {
        q.bind(explanation).bind(exemptions)
    })
    .await
}

/// Appends what the law kept (the structured form of those exemptions).
pub async fn add_legal_keeps(conn: &mut PgConnection, id: i64, kept: &[LegalKeep]) -> Result<()> {
    update(conn, "legal_keeps = legal_keeps || $2", id, |q| {
        q.bind(sqlx::types::Json(kept))
    })
    .await
}

/// Forgets a denial and its exemptions (an appeal reopened the request; it
/// takes effect again and finds what is held or kept anew).
pub async fn clear_outcome(conn: &mut PgConnection, id: i64) -> Result<()> {
    update(
        conn,
        "denial_reason = NULL, exemptions = '{}', legal_keeps = '[]'",
        id,
        |q| q,
    )
    .await
}

pub async fn open_appeal(
    conn: &mut PgConnection,
    id: i64,
    statement_sealed: &[u8],
    received: DateTime<Utc>,
    due: Option<NaiveDate>,
    regulator_contact_required: bool,
    voluntary: bool,
) -> Result<()> {
    update(
        conn,
        "appeal_state = 'PENDING', appeal_statement = '', appeal_statement_sealed = $2,
         appeal_create_time = $3,
         appeal_due_date = $4, appeal_regulator_contact_required = $5, appeal_voluntary = $6",
        id,
        |q| {
            q.bind(statement_sealed)
                .bind(received)
                .bind(due)
                .bind(regulator_contact_required)
                .bind(voluntary)
        },
    )
    .await
}

pub async fn decide_appeal(
    conn: &mut PgConnection,
    id: i64,
    decision: AppealState,
    explanation: &str,
    regulator_contact_provided: bool,
) -> Result<()> {
    update(
        conn,
        "appeal_state = $2, appeal_explanation = $3, appeal_regulator_contact_provided = $4,
         appeal_decide_time = now()",
        id,
        |q| {
            q.bind(decision.as_str())
                .bind(explanation)
                .bind(regulator_contact_provided)
        },
    )
    .await
}

/// Sets the state (and the close time when it closes).
#[tracing::instrument(skip_all, fields(privacy_request = id, state = state.as_str()))]
pub async fn set_state(conn: &mut PgConnection, id: i64, state: State) -> Result<()> {
    sqlx::query(
        "UPDATE privacy_requests
         SET state = $2, update_time = now(),
             close_time = CASE WHEN $3 THEN now() ELSE NULL END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(!state.is_open())
    .execute(conn)
    .await?;
    Ok(())
}

/// The counts' SQL, over the tasks of the requests in `$1`.
const TASK_COUNTS: &str = "
    SELECT privacy_request_id AS id, count(*) AS total,
           count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded,
           count(*) FILTER (WHERE state = 'EXEMPTED') AS exempt,
           count(*) FILTER (WHERE state = 'FAILED'
               OR (state = 'LEASED' AND lease_expire_time < now() AND attempts >= max_attempts))
               AS failed,
           count(*) FILTER (WHERE state = 'QUEUED'
               OR (state = 'LEASED' AND NOT (lease_expire_time < now() AND attempts >= max_attempts)))
               AS open
    FROM tasks WHERE privacy_request_id = ANY ($1) GROUP BY privacy_request_id";

#[derive(sqlx::FromRow)]
struct CountsRow {
    id: i64,
    #[sqlx(flatten)]
    counts: TaskCounts,
}

#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn task_counts(conn: &mut PgConnection, id: i64) -> Result<TaskCounts> {
    let row: Option<CountsRow> = sqlx::query_as(TASK_COUNTS)
        .bind(vec![id])
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.counts).unwrap_or_default())
}

/// The task counts of many requests in one query (requests without tasks
/// are absent).
#[tracing::instrument(skip_all, fields(requests = ids.len()))]
pub async fn task_counts_of(pool: &PgPool, ids: &[i64]) -> Result<HashMap<i64, TaskCounts>> {
    let rows: Vec<CountsRow> = sqlx::query_as(TASK_COUNTS)
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.counts)).collect())
}

/// The exemptions the request's exempted tasks gave, "dataSystems/x: why".
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn task_exemptions(conn: &mut PgConnection, id: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT 'dataSystems/' || data_system_id || ': ' || coalesce(exempt_reason, '')
         FROM tasks WHERE privacy_request_id = $1 AND state = 'EXEMPTED' ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// What a fan-out did: tasks queued, the scopes a legal hold kept out, and
/// what the law keeps.
#[derive(Debug, Clone, Default)]
pub struct FanOut {
    pub tasks: u64,
    /// "dataSystems/x (category): held by legalHolds/N: reason"
    pub held: Vec<String>,
    /// The (system, category) pairs a retention policy's legal reason keeps.
    pub kept: Vec<LegalKeep>,
}

/// Creates one task per data system that holds affected categories (all,
/// when the request names none) and supports `action`. For an erasure
/// (delete, anonymize), only what SQL `erasable` allows gets a task (the
/// rule every erasure path follows): the (system, category) pairs an active
/// legal hold covers or the law keeps are left out and reported instead; a
/// system with nothing left gets no task.
#[tracing::instrument(skip_all, fields(privacy_request = row.id, action = action.as_str()))]
pub async fn fan_out(
    conn: &mut PgConnection,
    row: &PrivacyRequest,
    action: DataAction,
    max_attempts: i32,
) -> Result<FanOut> {
    let respects_holds = matches!(action, DataAction::Delete | DataAction::Anonymize);
    // One instant for the three statements, so what is reported as held or
    // kept is exactly what the insert left out.
    let at = Utc::now();
    let held: Vec<String> = sqlx::query_scalar(
        "WITH scope AS (
             SELECT d.id AS system, c.category, held_by($1, c.category, d.id, $5) AS holds
             FROM data_systems d
             CROSS JOIN LATERAL unnest(d.categories) AS c (category)
             WHERE $2 = ANY (d.actions)
               AND (cardinality($3::text[]) = 0 OR c.category = ANY ($3::text[]))
         )
         SELECT 'dataSystems/' || s.system || ' (' || s.category || '): held by '
                || string_agg('legalHolds/' || h.id || ': ' || h.reason, '; ' ORDER BY h.id)
         FROM scope s JOIN legal_holds h ON h.id = ANY (s.holds)
         WHERE $4
         GROUP BY s.system, s.category
         ORDER BY s.system, s.category",
    )
    .bind(row.subject_id.as_str())
    .bind(action.as_str())
    .bind(&row.categories)
    .bind(respects_holds)
    .bind(at)
    .fetch_all(&mut *conn)
    .await?;
    let kept = if respects_holds {
        crate::retention::store::legal_keeps(
            conn,
            row.subject_id.as_str(),
            &row.categories,
            Some(action.as_str()),
            at,
        )
        .await?
    } else {
        Vec::new()
    };
    let done = sqlx::query(
        "INSERT INTO tasks (data_system_id, privacy_request_id, subject_id, action, categories,
                            corrections, max_attempts, corrections_sealed)
         SELECT d.id, $1, $2, $3, cats.categories, $5, $6, $8
         FROM data_systems d
         CROSS JOIN LATERAL (
             SELECT ARRAY(
                 SELECT c FROM unnest(d.categories) AS c
                 WHERE (cardinality($4::text[]) = 0 OR c = ANY ($4::text[]))
                   AND (NOT $7 OR erasable($2, c, d.id, $9))
                 ORDER BY 1) AS categories
         ) cats
         WHERE $3 = ANY (d.actions) AND cardinality(cats.categories) > 0
         ORDER BY d.id",
    )
    .bind(row.id)
    .bind(row.subject_id.as_str())
    .bind(action.as_str())
    .bind(&row.categories)
    // Sealed corrections travel sealed; only a request from before sealing
    // copies its clear ones.
    .bind(if row.sealed.corrections.is_some() {
        Value::Array(Vec::new())
    } else {
        serde_json::to_value(&row.corrections)
            .map_err(|e| Error::Internal(format!("corrections: {e}")))?
    })
    .bind(max_attempts)
    .bind(respects_holds)
    // The request's sealed corrections, as they are: same subject, same
    // column name, so the tasks need no key of their own.
    .bind(&row.sealed.corrections)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(FanOut {
        tasks: done.rows_affected(),
        held,
        kept,
    })
}

/// Gives up the request's tasks that have not run (it was denied or canceled).
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn abandon_open_tasks(conn: &mut PgConnection, id: i64) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = 'ABANDONED', lease_id = NULL, lease_expire_time = NULL,
                          update_time = now()
         WHERE privacy_request_id = $1 AND state IN ('QUEUED', 'LEASED')",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The purposes a request type refuses in the consent ledger.
#[tracing::instrument(skip_all, fields(request_type = request_type))]
pub async fn refused_purposes(conn: &mut PgConnection, request_type: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT purpose_key FROM request_type_refusals WHERE request_type = $1 ORDER BY purpose_key",
    )
    .bind(request_type)
    .fetch_all(conn)
    .await?)
}

/// After a deletion: the subject's identifiers (with the subject id's own
/// hash, stored with every request) become suppression entries, and this service's records about the
/// subject keep only what the law requires: the request metadata (CCPA
/// 11 CCR 7101: 24 months) and the consent ledger (the proof of refusals),
/// not correction values, agent contacts, exported data, workers' failure
/// messages or identifiers.
///
/// Crypto-shredding: the subject's data key is destroyed in this same
/// transaction, so every value sealed under it, here and in backups, is
/// unreadable from the commit on. That includes the parts of stored
/// responses (idempotent replays) that hold the subject's data: a replay
/// leaves them out, or is refused when the response was about the subject
/// alone (see `idempotency::open`), and never runs the request again. The
/// sealed columns are emptied too. Responses an earlier version stored
/// whole under the service's key are forgotten (deleted); `current`, the
/// request id of the call doing the erasure, keeps its response.
///
/// The subject is marked erased (when, and `erased_by`), for good: an
/// erasure repeated later keeps the first time. A minor's erasure has no
/// privacy request (`request_id` None) and so no suppression entries of
/// its own.
#[tracing::instrument(skip_all, fields(privacy_request = request_id))]
pub async fn erase_subject(
    conn: &mut PgConnection,
    subject_id: &str,
    request_id: Option<i64>,
    current: &str,
    erased_by: &str,
) -> Result<()> {
    crate::keys::shred(conn, subject_id).await?;
    // Responses stored since they are cut by subject went with the data
    // key; those stored whole before (first byte not 2) are forgotten here.
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE request_id IN (SELECT request_id FROM audit_events
                              WHERE subject_id = $1 AND request_id IS NOT NULL)
           AND request_id <> $2
           AND substring(response FROM 1 FOR 1) <> '\\x02'::bytea",
    )
    .bind(subject_id)
    .bind(current)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO suppression_entries (kind, hash, privacy_request_id)
         SELECT DISTINCT kind, hash, $2 FROM request_identifiers
         WHERE subject_id = $1 AND $2::bigint IS NOT NULL
         ON CONFLICT DO NOTHING",
    )
    .bind(subject_id)
    .bind(request_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM request_identifiers WHERE subject_id = $1")
        .bind(subject_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE privacy_requests
         SET corrections = '[]'::jsonb, corrections_sealed = NULL, agent_sealed = NULL,
             agent = CASE WHEN agent IS NULL THEN NULL ELSE agent - 'contact' END,
             appeal_statement = CASE WHEN appeal_statement IS NULL THEN NULL ELSE '' END,
             appeal_statement_sealed = NULL
         WHERE subject_id = $1",
    )
    .bind(subject_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        // A worker's failure message may name the person (it is kept off
        // the audit trail for that reason): it goes too; the state stays.
        "UPDATE tasks SET export_json = NULL, corrections = '[]'::jsonb, export_sealed = NULL,
                          corrections_sealed = NULL, last_error = NULL
         WHERE subject_id = $1",
    )
    .bind(subject_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO subjects (subject_id, erase_time, erased_by) VALUES ($1, now(), $2)
         ON CONFLICT (subject_id) DO UPDATE
         SET erase_time = coalesce(subjects.erase_time, now()),
             erased_by = coalesce(subjects.erased_by, $2),
             update_time = now()",
    )
    .bind(subject_id)
    .bind(erased_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which of the hashes are suppressed.
#[tracing::instrument(skip_all, fields(identifiers = kinds.len()))]
pub async fn suppressed(
    pool: &PgPool,
    kinds: &[String],
    hashes: &[Vec<u8>],
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT s.kind FROM suppression_entries s
         JOIN unnest($1::text[], $2::bytea[]) AS t (k, h) ON s.kind = t.k AND s.hash = t.h
         ORDER BY 1",
    )
    .bind(kinds)
    .bind(hashes)
    .fetch_all(pool)
    .await?)
}

#[tracing::instrument(skip_all, fields(after = after, limit = limit))]
pub async fn list(
    pool: &PgPool,
    f: &ListFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<PrivacyRequest>> {
    let rows: Vec<RequestRow> = sqlx::query_as(
        "SELECT * FROM privacy_requests
         WHERE id > $1
           AND ($2::text IS NULL OR subject_id = $2)
           AND ($3::text IS NULL OR state = $3)
           AND ($4::text IS NULL OR request_type = $4)
           AND ($5::text IS NULL OR jurisdiction = $5)
           AND (NOT $6 OR (state IN ('RECEIVED', 'AWAITING_VERIFICATION', 'IN_PROGRESS', 'ON_HOLD')
                           AND due_date < current_date))
           AND ($7::date IS NULL OR due_date <= $7)
         ORDER BY id
         LIMIT $8",
    )
    .bind(after)
    .bind(&f.subject_id)
    .bind(f.state.map(|s| s.as_str()))
    .bind(&f.request_type)
    .bind(&f.jurisdiction)
    .bind(f.overdue)
    .bind(f.due_before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    decode_all(rows)
}

/// One closed or open request of a year, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct MetricRow {
    request_type: String,
    state: String,
    denial_reason: Option<String>,
    days: Option<i32>,
}

/// The requests received in `year`, as the metrics count them.
#[tracing::instrument(skip_all, fields(year = year))]
pub async fn year_outcomes(pool: &PgPool, year: i32) -> Result<Vec<Outcome>> {
    let rows: Vec<MetricRow> = sqlx::query_as(
        "SELECT request_type, state, denial_reason,
                (close_time::date - receive_time::date) AS days
         FROM privacy_requests
         WHERE receive_time >= make_timestamptz($1, 1, 1, 0, 0, 0, 'UTC')
           AND receive_time < make_timestamptz($1 + 1, 1, 1, 0, 0, 0, 'UTC')",
    )
    .bind(year)
    .fetch_all(pool)
    .await?;
    let bad =
        |what: &str, raw: &str| Error::Internal(format!("a stored {what} {raw:?} is unknown"));
    rows.into_iter()
        .map(|r| {
            Ok(Outcome {
                request_type: RequestType::parse(&r.request_type)
                    .ok_or_else(|| bad("request type", &r.request_type))?,
                state: State::from_db(&r.state).ok_or_else(|| bad("state", &r.state))?,
                denial_reason: r
                    .denial_reason
                    .as_deref()
                    .map(|d| DenialReason::from_db(d).ok_or_else(|| bad("denial reason", d)))
                    .transpose()?,
                days: r.days,
            })
        })
        .collect()
}

/// Open requests overdue now, and due within the next 7 days.
#[tracing::instrument(skip_all)]
pub async fn due_counts(pool: &PgPool) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE due_date < current_date),
                count(*) FILTER (WHERE due_date >= current_date AND due_date <= current_date + 7)
         FROM privacy_requests
         WHERE state IN ('RECEIVED', 'AWAITING_VERIFICATION', 'IN_PROGRESS', 'ON_HOLD')",
    )
    .fetch_one(pool)
    .await?)
}

/// What the access package holds about one exporting task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub id: i64,
    pub data_system_id: String,
    pub state: String,
    pub categories: Vec<String>,
    pub records_affected: Option<i64>,
    pub content_sha256: Option<String>,
    pub system_reference: Option<String>,
    pub export_json: Option<Value>,
    pub exempt_reason: Option<String>,
    pub subject_id: String,
    pub export_sealed: Option<Vec<u8>>,
}

/// The request's tasks with their exports, opened (an export whose data
/// key was destroyed reads as absent).
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn exports(keys: &Keyring, conn: &mut PgConnection, id: i64) -> Result<Vec<ExportRow>> {
    let mut rows: Vec<ExportRow> = sqlx::query_as(
        "SELECT id, data_system_id, state, categories, records_affected, content_sha256,
                system_reference, export_json, exempt_reason, subject_id, export_sealed
         FROM tasks WHERE privacy_request_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let opener = keys
        .opener(conn, rows.iter().filter_map(|r| r.export_sealed.as_deref()))
        .await?;
    for r in &mut rows {
        if let Some(s) = r.export_sealed.take() {
            r.export_json = opener
                .open(&r.subject_id, column::TASK_EXPORT, &s)?
                .map(|b| serde_json::from_slice(&b))
                .transpose()
                .map_err(|e| Error::Internal(format!("a sealed export: {e}")))?;
        }
    }
    Ok(rows)
}

/// The subject's consent ledger, oldest first, as JSON objects.
#[tracing::instrument(skip_all)]
pub async fn consent_history(conn: &mut PgConnection, subject_id: &str) -> Result<Vec<Value>> {
    Ok(sqlx::query_scalar(
        "SELECT jsonb_build_object(
                    'purpose', purpose_key, 'decision', decision, 'source', source,
                    'jurisdiction', jurisdiction, 'policy_version', policy_version,
                    'effective_time', effective_time, 'expire_time', expire_time,
                    'record_time', record_time)
         FROM consent_records WHERE subject_id = $1 ORDER BY id",
    )
    .bind(subject_id)
    .fetch_all(conn)
    .await?)
}

/// The subject's requests, oldest first, as JSON objects.
#[tracing::instrument(skip_all)]
pub async fn request_history(conn: &mut PgConnection, subject_id: &str) -> Result<Vec<Value>> {
    Ok(sqlx::query_scalar(
        "SELECT jsonb_build_object(
                    'name', 'privacyRequests/' || id, 'request_type', request_type,
                    'jurisdiction', jurisdiction, 'state', state, 'receive_time', receive_time,
                    'due_date', due_date, 'close_time', close_time)
         FROM privacy_requests WHERE subject_id = $1 ORDER BY id",
    )
    .bind(subject_id)
    .fetch_all(conn)
    .await?)
}
