//! The privacy-request use cases. Each runs inside the caller's
//! transaction, checks the lifecycle table before it changes a request,
//! records the transition (who, when, why) and writes its audit and change
//! events there. They know no gRPC.
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::model::{self, Action, Agent, AppealState, Channel, DenialReason, HoldReason, State};
use super::model::{HistoryEntry, PrivacyRequest, TaskCounts};
use super::store::{self, NewRow};
use crate::config::RequestSettings;
use crate::consent::model::{Decision, NewConsent, Source};
use crate::consent::service as consent;
use crate::datasystems::model::FieldCorrection;
use crate::error::{Error, Result};
use crate::identifiers::HashKey;
use crate::identifiers::IdentifierKind;
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::keys::{Keyring, column};
use crate::names::{Jurisdiction, PurposeKey, SubjectId};
use crate::proto::ErrorReason;
use crate::rpc::Context;
use crate::rules::{self, Period, RequestType};
use crate::tokens::ConsistencyToken;

/// What the use cases need beyond the transaction.
#[derive(Debug, Clone)]
pub struct Env {
    pub settings: RequestSettings,
    pub key: HashKey,
    /// Seals the personal data a request carries (`crate::keys`).
    pub keys: Keyring,
}

/// A request as filed, validated at the edge.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub subject: SubjectId,
    pub request_type: RequestType,
    pub jurisdiction: Jurisdiction,
    pub channel: Channel,
    /// (kind, normalised value)
    pub identifiers: Vec<(IdentifierKind, String)>,
    pub agent: Option<Agent>,
    pub corrections: Vec<FieldCorrection>,
    pub categories: Vec<String>,
    /// None: now.
    pub receive_time: Option<DateTime<Utc>>,
}

fn table() -> Result<&'static rules::RulesTable> {
    rules::table().map_err(|e| Error::Internal(e.to_string()))
}

/// The appeal a request may have: the law's, or the organisation's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AppealTerms {
    /// Time to decide it, from its receipt.
    pub deadline: Option<Period>,
    /// Whether an upheld decision must tell the subject how to reach the
    /// regulator: only where the jurisdiction's law says so.
    pub regulator_contact_required: bool,
    /// True when the law gives no appeal and the organisation offers one.
    pub voluntary: bool,
}

/// The appeal the request may have, or why it has none. The law's appeal
/// where the jurisdiction gives one; where it gives none, the organisation's
/// voluntary appeal when `settings.offer_voluntary_appeals` (the seed policy
/// offers an appeal of any decision in every state it names), with the
/// organisation's deadline (the rules table's defaults) and a regulator
/// notice only where the jurisdiction's law requires one.
pub(super) fn appeal_terms(
    row: &PrivacyRequest,
    settings: &RequestSettings,
) -> Result<std::result::Result<AppealTerms, String>> {
    let rules = row.rules;
    let t = row.request_type;
    let received = row.received_date();
    // The rules as they stood the day the request was received.
    let appeal = rules.appeal_on(t, received);
    // The rules answering for a type the jurisdiction did not grant then are
    // the organisation's defaults: their appeal is the organisation's too.
    let by_law = !rules.is_default() && rules.grants_on(t, received);
    if appeal.exists {
        return Ok(Ok(AppealTerms {
            deadline: appeal.deadline,
            regulator_contact_required: appeal.regulator_contact_required,
            voluntary: !by_law,
        }));
    }
    let refusal = format!("{} gives no appeal ({})", rules.code(), appeal.source);
    if !settings.offer_voluntary_appeals {
        return Ok(Err(format!(
            "{refusal} and this organisation does not offer one voluntarily"
        )));
    }
    let own = &table()?.defaults().appeal;
    Ok(Ok(AppealTerms {
        deadline: own.deadline,
        regulator_contact_required: appeal.regulator_contact_required,
        voluntary: true,
    }))
}

/// Whether the request may be appealed (the law's appeal or the
/// organisation's voluntary one), and whether that appeal is voluntary.
pub(super) fn appeal_available(row: &PrivacyRequest, settings: &RequestSettings) -> (bool, bool) {
    match appeal_terms(row, settings) {
        Ok(Ok(terms)) => (true, terms.voluntary),
        _ => (false, false),
    }
}

fn deadline_error(name: &str, e: rules::DeadlineError) -> Error {
    Error::precondition(ErrorReason::ExtensionNotAllowed, name, e.to_string())
}

/// Writes the audit and change events of a change to `row`.
async fn journal(
    conn: &mut PgConnection,
    ctx: &Context,
    row: &PrivacyRequest,
    details: serde_json::Value,
) -> Result<ConsistencyToken> {
    let name = row.name();
    let subject = row.subject_id.as_str();
    journal::record(
        conn,
        ctx.audit(&name, Some(subject), details),
        ChangeEntry::resource(ChangeKind::PrivacyRequestChanged, &name, Some(subject)),
    )
    .await
}

/// Moves `row` to `to` after the lifecycle table allows it, and records the
/// transition.
#[tracing::instrument(skip_all, fields(privacy_request = row.id, action = action.as_str(), to = to.as_str()))]
async fn transition(
    conn: &mut PgConnection,
    ctx: &Context,
    row: &mut PrivacyRequest,
    action: Action,
    to: State,
    reason: &str,
) -> Result<()> {
    let from = row.state;
    model::check(&row.name(), action, from, Some(to))?;
    if from != to {
        store::set_state(conn, row.id, to).await?;
    }
    store::record_transition(conn, row, Some(from), to, action, ctx, reason).await?;
    row.state = to;
    Ok(())
}

/// Files a request and starts its clock; an opt-out that needs no
/// verification takes effect in the same transaction.
#[tracing::instrument(skip_all, fields(request_type = new.request_type.as_str(), jurisdiction = new.jurisdiction.as_str()))]
pub async fn create(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    new: &NewRequest,
) -> Result<(i64, ConsistencyToken)> {
    let table = table()?;
    let lookup = table.lookup(new.jurisdiction.as_str());
    let rules = lookup.rules;
    let t = new.request_type;
    let receive_time = new.receive_time.unwrap_or_else(Utc::now);
    let received_date = receive_time.date_naive();

    let statutory = !rules.is_default() && rules.grants_on(t, received_date);
    if !statutory && env.settings.refuse_voluntary {
        return Err(Error::precondition(
            ErrorReason::RightNotAvailable,
            "request_type",
            format!(
                "{} does not grant {t} requests and this organisation does not honour them voluntarily",
                new.jurisdiction.as_str()
            ),
        ));
    }
    let agent_may_file = rules.agent_may_file_on(t, received_date, env.settings.voluntary_agents);
    if new.agent.is_some() && !agent_may_file {
        return Err(Error::precondition(
            ErrorReason::AgentNotPermitted,
            "agent",
            format!(
                "an authorized agent may not file {t} requests under {} ({})",
                rules.code(),
                rules.agents.source
            ),
        ));
    }
    // Every rule is read as it stood on the day of receipt: a right or a law
    // that starts later does not apply to this request.
    let deadline = rules.deadline_on(t, received_date);
    let clock = deadline.start_clock(received_date);
    let due = clock
        .due()
        .map_err(|e| Error::invalid("receive_time", e.to_string()))?;
    let prior = store::count_prior(conn, new.subject.as_str(), t.as_str(), receive_time).await?;
    let free_limit_exceeded = rules
        .free_limit_on(t, received_date)
        .is_some_and(|limit| prior >= i64::from(limit));
    let cite = deadline.cite;
    let period_unit = deadline.period.unit.as_str();
    let extension = deadline.extension_period();
    let mut kinds: Vec<String> = new
        .identifiers
        .iter()
        .map(|(k, _)| k.as_str().to_owned())
        .collect();
    kinds.dedup();
    // Personal data is sealed under the subject's data key; a request that
    // carries none never touches the key table.
    let carries_personal_data =
        new.agent.is_some() || !new.corrections.is_empty() || !new.identifiers.is_empty();
    let sealer = if carries_personal_data {
        Some(env.keys.sealer(conn, new.subject.as_str()).await?)
    } else {
        None
    };
    let agent_sealed = match (&sealer, &new.agent) {
        (Some(s), Some(a)) => Some(s.seal_json(column::REQUEST_AGENT, a)?),
        _ => None,
    };
    let corrections_sealed = match &sealer {
        Some(s) if !new.corrections.is_empty() => {
            Some(s.seal_json(column::CORRECTIONS, &new.corrections)?)
        }
        _ => None,
    };
    let id = store::insert(
        conn,
        &NewRow {
            subject_id: new.subject.as_str(),
            request_type: t.as_str(),
            jurisdiction: new.jurisdiction.as_str(),
            rules_code: rules.code(),
            rules_version: table.version(),
            channel: new.channel.as_str(),
            identifier_kinds: kinds,
            agent: None,
            corrections: json!([]),
            agent_sealed,
            corrections_sealed,
            categories: &new.categories,
            receive_time,
            received_date,
            period: (deadline.period.amount as i32, period_unit),
            extension: extension.map(|e| (e.amount as i32, e.unit.as_str())),
            original_due_date: due,
            verification_required: rules.verification_required_on(t, received_date),
            agent_may_file,
            statutory,
            free_limit_exceeded,
            prior_requests_12_months: i32::try_from(prior).unwrap_or(i32::MAX),
            deadline_citation: json!({
                "source": cite.source,
                "confidence": cite.confidence.as_str(),
                "conservative": cite.conservative,
                "note": cite.note.unwrap_or_default(),
            }),
        },
    )
    .await?;
    let mut row = store::must_get(conn, id, true).await?;
    store::open(&env.keys, conn, std::slice::from_mut(&mut row)).await?;
    store::record_transition(
        conn,
        &row,
        None,
        State::Received,
        Action::Accept,
        ctx,
        "filed",
    )
    .await?;

    // Identifiers are kept only as keyed hashes; the subject id's own hash
    // joins them so a deletion can suppress it too.
    // The values themselves are sealed beside their hashes.
    let mut kinds = vec![IdentifierKind::SubjectId.as_str().to_owned()];
    let mut hashes = vec![
        env.key
            .hash(IdentifierKind::SubjectId, new.subject.as_str()),
    ];
    let mut values = vec![None];
    for (kind, value) in &new.identifiers {
        kinds.push(kind.as_str().to_owned());
        hashes.push(env.key.hash(*kind, value));
        values.push(match &sealer {
            Some(s) => Some(s.seal(column::IDENTIFIER_VALUE, value.as_bytes())?),
            None => None,
        });
    }
    store::insert_identifiers(conn, id, new.subject.as_str(), &kinds, &hashes, &values).await?;

    let waiting_for = match &new.agent {
        Some(agent) if !agent.has_evidence() => {
            Some("waiting for the agent's evidence of authority")
        }
        _ if row.verification_required => Some("waiting for identity verification"),
        _ => None,
    };
    match waiting_for {
        Some(reason) => {
            transition(
                conn,
                ctx,
                &mut row,
                Action::Accept,
                State::AwaitingVerification,
                reason,
            )
            .await?
        }
        None => {
            transition(
                conn,
                ctx,
                &mut row,
                Action::Accept,
                State::InProgress,
                "no verification required",
            )
            .await?;
            take_effect(conn, ctx, env, &mut row).await?;
        }
    }
    let token = journal(
        conn,
        ctx,
        &row,
        json!({
            "request_type": t.as_str(),
            "jurisdiction": new.jurisdiction.as_str(),
            "rules_code": rules.code(),
            "due_date": due.to_string(),
            "state": row.state.as_str(),
            "agent": new.agent.is_some(),
        }),
    )
    .await?;
    Ok((id, token))
}

/// A request that is IN_PROGRESS takes effect: the consent ledger records
/// the refusals its type implies (opt-outs, limits, objections), a deletion
/// closes the account, and one task per concerned data system is queued.
/// A request whose fulfilment was only the ledger completes at once.
#[tracing::instrument(skip_all, fields(privacy_request = row.id))]
async fn take_effect(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    row: &mut PrivacyRequest,
) -> Result<()> {
    let t = row.request_type;
    let refused = refuse_purposes(&env.keys, conn, ctx, row, t).await?;
    if t == RequestType::Deletion {
        // Deletion closes the account: the retention schedule's
        // account-closure clocks start (the same path data systems report on).
        crate::retention::store::record_event(
            conn,
            row.subject_id.as_str(),
            None,
            None,
            crate::retention::model::EventKind::AccountClosed,
            Utc::now(),
            Some(row.id),
        )
        .await?;
    }
    let fan_out = match model::action_for(t) {
        Some(action) => {
            let max = i32::try_from(env.settings.task_max_attempts).unwrap_or(i32::MAX);
            store::fan_out(conn, row, action, max).await?
        }
        None => store::FanOut::default(),
    };
    // What a legal hold or the law keeps is an exemption the subject is
    // told about: the scope, the hold or the law, and until when.
    let mut kept = fan_out.held.clone();
    kept.extend(fan_out.kept.iter().map(|k| k.describe()));
    if !kept.is_empty() {
        store::add_exemptions(conn, row.id, &kept).await?;
        row.exemptions.extend(kept);
        if !fan_out.kept.is_empty() {
            store::add_legal_keeps(conn, row.id, &fan_out.kept).await?;
            row.legal_keeps.extend(fan_out.kept.iter().cloned());
        }
        if fan_out.tasks == 0 {
            let explanation = "everything in scope is kept, under a legal hold or by law";
            let exemptions = row.exemptions.clone();
            return finish(conn, ctx, row, Action::TasksDone, explanation, &exemptions).await;
        }
    }
    let tasks = fan_out.tasks;
    if tasks == 0 && !refused.is_empty() {
        let explanation = format!(
            "recorded refusals in the consent ledger for {}",
            refused.join(", ")
        );
        store::set_explanation(conn, row.id, &explanation).await?;
        transition(
            conn,
            ctx,
            row,
            Action::TasksDone,
            State::Completed,
            &explanation,
        )
        .await?;
    }
    Ok(())
}

/// Appends a refusal for each purpose the request type refuses (skipping
/// purposes not based on consent in the jurisdiction). Returns the purposes.
#[tracing::instrument(skip_all, fields(privacy_request = row.id, request_type = t.as_str()))]
async fn refuse_purposes(
    keyring: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    row: &PrivacyRequest,
    t: RequestType,
) -> Result<Vec<String>> {
    let keys = store::refused_purposes(conn, t.as_str()).await?;
    if keys.is_empty() {
        return Ok(keys);
    }
    let subject = row.subject_id.clone();
    let jurisdiction = Jurisdiction::parse(&row.jurisdiction).ok();
    let source = if row.channel == Channel::GlobalPrivacyControl {
        Source::GpcSignal
    } else {
        Source::PrivacyRequest
    };
    let mut refused = Vec::with_capacity(keys.len());
    for key in keys {
        let purpose = PurposeKey::parse(&key).map_err(Error::Internal)?;
        let new = NewConsent {
            subject_id: subject.clone(),
            purpose,
            decision: Decision::Refused,
            source,
            policy_version: None,
            jurisdiction: jurisdiction.clone(),
            evidence: None,
            effective_time: None,
            expire_time: None,
        };
        match consent::append_decision(keyring, conn, ctx, &new).await {
            Ok(_) => refused.push(key),
            // A purpose not based on consent here takes no decisions.
            Err(Error::FailedPrecondition {
                reason: ErrorReason::PurposeNotConsentBased,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Identity (and an agent's authority) verified: the request proceeds.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn verify(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    id: i64,
    method: &str,
    agent_evidence: Option<&str>,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    model::check(
        &row.name(),
        Action::Verify,
        row.state,
        Some(State::InProgress),
    )?;
    store::open(&env.keys, conn, std::slice::from_mut(&mut row)).await?;
    if let Some(mut agent) = row.agent.clone() {
        if let Some(evidence) = agent_evidence {
            agent.evidence_reference = evidence.to_owned();
            let sealer = env.keys.sealer(conn, row.subject_id.as_str()).await?;
            store::set_agent(conn, id, &sealer.seal_json(column::REQUEST_AGENT, &agent)?).await?;
        }
        if !agent.has_evidence() {
            return Err(Error::precondition(
                ErrorReason::AgentNotPermitted,
                "agent_evidence_reference",
                "an authorized agent filed this request without evidence of authority: \
                 give agent_evidence_reference, or deny it with AGENT_NOT_AUTHORIZED",
            ));
        }
    }
    let reason = format!("identity verified by {method}");
    transition(
        conn,
        ctx,
        &mut row,
        Action::Verify,
        State::InProgress,
        &reason,
    )
    .await?;
    take_effect(conn, ctx, env, &mut row).await?;
    journal(conn, ctx, &row, json!({ "verified_by": method })).await
}

/// Uses the one extension, before the original due date, with a reason.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn extend(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    reason: &str,
    today: NaiveDate,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    let state = row.state;
    model::check(&row.name(), Action::Extend, state, None)?;
    let mut clock = row.clock;
    let due = clock
        .extend(today)
        .map_err(|e| deadline_error(&row.name(), e))?;
    store::set_extended(conn, id, reason, due).await?;
    transition(conn, ctx, &mut row, Action::Extend, state, reason).await?;
    journal(
        conn,
        ctx,
        &row,
        json!({ "due_date": due.to_string(), "reason": reason }),
    )
    .await
}

/// Puts the request on hold; where the rules stop the clock for the
/// reason, it stops until the request resumes.
#[tracing::instrument(skip_all, fields(privacy_request = id, hold_reason = reason.as_str()))]
async fn hold(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    reason: HoldReason,
    explanation: &str,
    today: NaiveDate,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    let from = row.state;
    model::check(&row.name(), Action::Hold, from, Some(State::OnHold))?;
    let pauses = reason
        .pause_reason()
        .is_some_and(|p| row.rules.pauses_clock_for(p));
    store::set_hold(conn, id, from, reason, today, pauses).await?;
    transition(
        conn,
        ctx,
        &mut row,
        Action::Hold,
        State::OnHold,
        explanation,
    )
    .await?;
    journal(
        conn,
        ctx,
        &row,
        json!({ "hold_reason": reason.as_str(), "clock_stopped": pauses }),
    )
    .await
}

/// Resumes a held request in the state it was held from; a stopped clock
/// moves the due date by the time it was stopped.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn resume(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    explanation: &str,
    today: NaiveDate,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    let to = row.hold.and_then(|h| h.from).unwrap_or(State::InProgress);
    model::check(&row.name(), Action::Resume, row.state, Some(to))?;
    let mut clock = row.clock;
    if let Some(hold) = row.hold
        && hold.pauses_clock
        && let Some(start) = hold.since
    {
        clock
            .pause(start, today)
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    let due = clock.due().map_err(|e| Error::Internal(e.to_string()))?;
    let original_due = clock
        .original_due()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let paused_days = i32::try_from(clock.paused_days()).unwrap_or(i32::MAX);
    store::end_hold(conn, id, paused_days, due, original_due).await?;
    transition(conn, ctx, &mut row, Action::Resume, to, explanation).await?;
    if to == State::InProgress {
        // Tasks may have finished while it was held.
        complete_if_done(conn, ctx, &mut row).await?;
    }
    journal(conn, ctx, &row, json!({ "due_date": due.to_string() })).await
}

/// Denies the request with a typed reason; tasks not yet run are abandoned.
#[tracing::instrument(skip_all, fields(privacy_request = id, denial_reason = reason.as_str()))]
async fn deny(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    reason: DenialReason,
    explanation: &str,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    model::check(&row.name(), Action::Deny, row.state, Some(State::Denied))?;
    store::set_denial(conn, id, reason, explanation).await?;
    store::abandon_open_tasks(conn, id).await?;
    let why = format!("{}: {explanation}", reason.as_str());
    transition(conn, ctx, &mut row, Action::Deny, State::Denied, &why).await?;
    journal(conn, ctx, &row, json!({ "denial_reason": reason.as_str() })).await
}

/// Cancels the request; tasks not yet run are abandoned.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn cancel(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    explanation: &str,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    model::check(
        &row.name(),
        Action::Cancel,
        row.state,
        Some(State::Canceled),
    )?;
    store::set_explanation(conn, id, explanation).await?;
    store::abandon_open_tasks(conn, id).await?;
    transition(
        conn,
        ctx,
        &mut row,
        Action::Cancel,
        State::Canceled,
        explanation,
    )
    .await?;
    journal(conn, ctx, &row, json!({})).await
}

/// Completes an in-progress request by hand: allowed once no task is
/// queued or running. Exemptions (given, or from exempted tasks) make it
/// PARTIALLY_COMPLETED.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn complete(
    conn: &mut PgConnection,
    ctx: &Context,
    id: i64,
    explanation: &str,
    exemptions: &[String],
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    model::check(
        &row.name(),
        Action::Complete,
        row.state,
        Some(State::Completed),
    )?;
    let counts = store::task_counts(conn, id).await?;
    if counts.open > 0 {
        return Err(Error::precondition(
            ErrorReason::InvalidStateTransition,
            row.name(),
            format!(
                "{} of its tasks are still queued or running; it completes by itself when they finish",
                counts.open
            ),
        ));
    }
    let mut all = row.exemptions.clone();
    all.extend(store::task_exemptions(conn, id).await?);
    all.extend(exemptions.iter().cloned());
    finish(conn, ctx, &mut row, Action::Complete, explanation, &all).await?;
    journal(conn, ctx, &row, json!({ "exemptions": all })).await
}

/// Moves an in-progress request to COMPLETED (or PARTIALLY_COMPLETED with
/// exemptions); a deletion then erases what this service holds.
#[tracing::instrument(skip_all, fields(privacy_request = row.id, action = action.as_str()))]
async fn finish(
    conn: &mut PgConnection,
    ctx: &Context,
    row: &mut PrivacyRequest,
    action: Action,
    explanation: &str,
    exemptions: &[String],
) -> Result<()> {
    let to = if exemptions.is_empty() {
        State::Completed
    } else {
        State::PartiallyCompleted
    };
    store::set_outcome(conn, row.id, explanation, exemptions).await?;
    transition(conn, ctx, row, action, to, explanation).await?;
    if row.request_type == RequestType::Deletion {
        let subject = row.subject_id.as_str();
        super::erasure::erase_subject(conn, ctx, subject, Some(row.id), &row.name()).await?;
    }
    Ok(())
}

/// When every task of an in-progress request has settled and none failed,
/// the request completes (in part when some were exempt).
#[tracing::instrument(skip_all, fields(privacy_request = row.id))]
pub(super) async fn complete_if_done(
    conn: &mut PgConnection,
    ctx: &Context,
    row: &mut PrivacyRequest,
) -> Result<bool> {
    if row.state != State::InProgress {
        return Ok(false);
    }
    let counts = store::task_counts(conn, row.id).await?;
    if counts.total == 0 || counts.open > 0 || counts.failed > 0 {
        return Ok(false);
    }
    let mut exemptions = row.exemptions.clone();
    exemptions.extend(store::task_exemptions(conn, row.id).await?);
    let explanation = format!(
        "{} data system task(s) done, {} exempt",
        counts.succeeded, counts.exempt
    );
    finish(conn, ctx, row, Action::TasksDone, &explanation, &exemptions).await?;
    Ok(true)
}

/// Appeals a denied or partly completed request where the rules give an
/// appeal or the organisation offers one (`appeal_terms`).
#[tracing::instrument(skip_all, fields(privacy_request = id))]
async fn appeal(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    id: i64,
    statement: &str,
    receive_time: DateTime<Utc>,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    let state = row.state;
    model::check(&row.name(), Action::Appeal, state, None)?;
    let terms = appeal_terms(&row, &env.settings)?
        .map_err(|why| Error::precondition(ErrorReason::AppealNotAllowed, row.name(), why))?;
    if row.appeal.is_some() {
        return Err(Error::precondition(
            ErrorReason::AppealNotAllowed,
            row.name(),
            "the request has already been appealed",
        ));
    }
    let due = terms
        .deadline
        .map(|p| p.after(receive_time.date_naive()))
        .transpose()
        .map_err(|e| Error::invalid("receive_time", e.to_string()))?;
    // The subject's own words: sealed.
    let sealed = env
        .keys
        .sealer(conn, row.subject_id.as_str())
        .await?
        .seal(column::APPEAL_STATEMENT, statement.as_bytes())?;
    store::open_appeal(
        conn,
        id,
        &sealed,
        receive_time,
        due,
        terms.regulator_contact_required,
        terms.voluntary,
    )
    .await?;
    let why = if terms.voluntary {
        "appealed (the organisation's voluntary appeal)"
    } else {
        "appealed"
    };
    transition(conn, ctx, &mut row, Action::Appeal, state, why).await?;
    journal(
        conn,
        ctx,
        &row,
        json!({
            "appeal_due_date": due.map(|d| d.to_string()),
            "appeal_voluntary": terms.voluntary,
        }),
    )
    .await
}

/// Decides a pending appeal. GRANTED reopens the request (it takes effect
/// again); UPHELD keeps the outcome and, where the law says so, must record
/// that the subject was told how to contact the regulator.
#[tracing::instrument(skip_all, fields(privacy_request = id, decision = decision.as_str()))]
async fn decide_appeal(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    id: i64,
    decision: AppealState,
    explanation: &str,
    regulator_contact_provided: bool,
) -> Result<ConsistencyToken> {
    let mut row = store::must_get(conn, id, true).await?;
    let state = row.state;
    model::check(&row.name(), Action::DecideAppeal, state, None)?;
    let Some(pending) = row
        .appeal
        .as_ref()
        .filter(|a| a.state == AppealState::Pending)
    else {
        return Err(Error::precondition(
            ErrorReason::AppealNotAllowed,
            row.name(),
            "the request has no pending appeal",
        ));
    };
    let required = pending.regulator_contact_required;
    if decision == AppealState::Upheld && required && !regulator_contact_provided {
        return Err(Error::invalid(
            "regulator_contact_provided",
            format!(
                "must be true: {} requires telling the subject how to contact the regulator when an appeal is denied",
                row.rules_code
            ),
        ));
    }
    store::decide_appeal(conn, id, decision, explanation, regulator_contact_provided).await?;
    match decision {
        AppealState::Granted => {
            store::clear_outcome(conn, id).await?;
            row.denial_reason = None;
            row.exemptions.clear();
            let why = format!("appeal granted: {explanation}");
            transition(
                conn,
                ctx,
                &mut row,
                Action::DecideAppeal,
                State::InProgress,
                &why,
            )
            .await?;
            take_effect(conn, ctx, env, &mut row).await?;
        }
        _ => {
            let why = format!("appeal upheld: {explanation}");
            transition(conn, ctx, &mut row, Action::DecideAppeal, state, &why).await?;
        }
    }
    journal(
        conn,
        ctx,
        &row,
        json!({ "decision": decision.as_str(), "regulator_contact_provided": regulator_contact_provided }),
    )
    .await
}

/// A change to an existing request: one per mutating RPC.
#[derive(Debug, Clone)]
pub enum Change {
    Verify {
        method: String,
        agent_evidence: Option<String>,
    },
    Extend {
        reason: String,
    },
    Hold {
        reason: HoldReason,
        explanation: String,
    },
    Resume {
        explanation: String,
    },
    Deny {
        reason: DenialReason,
        explanation: String,
    },
    Cancel {
        explanation: String,
    },
    Complete {
        explanation: String,
        exemptions: Vec<String>,
    },
    Appeal {
        statement: String,
        receive_time: Option<DateTime<Utc>>,
    },
    DecideAppeal {
        decision: AppealState,
        explanation: String,
        regulator_contact_provided: bool,
    },
}

/// Applies `change` to request `id` in the caller's transaction.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn apply(
    conn: &mut PgConnection,
    ctx: &Context,
    env: &Env,
    id: i64,
    change: &Change,
) -> Result<ConsistencyToken> {
    let today = Utc::now().date_naive();
    match change {
        Change::Verify {
            method,
            agent_evidence,
        } => verify(conn, ctx, env, id, method, agent_evidence.as_deref()).await,
        Change::Extend { reason } => extend(conn, ctx, id, reason, today).await,
        Change::Hold {
            reason,
            explanation,
        } => hold(conn, ctx, id, *reason, explanation, today).await,
        Change::Resume { explanation } => resume(conn, ctx, id, explanation, today).await,
        Change::Deny {
            reason,
            explanation,
        } => deny(conn, ctx, id, *reason, explanation).await,
        Change::Cancel { explanation } => cancel(conn, ctx, id, explanation).await,
        Change::Complete {
            explanation,
            exemptions,
        } => complete(conn, ctx, id, explanation, exemptions).await,
        Change::Appeal {
            statement,
            receive_time,
        } => {
            appeal(
                conn,
                ctx,
                env,
                id,
                statement,
                receive_time.unwrap_or_else(Utc::now),
            )
            .await
        }
        Change::DecideAppeal {
            decision,
            explanation,
            regulator_contact_provided,
        } => {
            decide_appeal(
                conn,
                ctx,
                env,
                id,
                *decision,
                explanation,
                *regulator_contact_provided,
            )
            .await
        }
    }
}

/// A request as the API shows it: opened, with its history (empty in a
/// listing) and its task summary.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub request: PrivacyRequest,
    pub history: Vec<HistoryEntry>,
    pub tasks: TaskCounts,
}

/// Reads a request with its history and task summary, in the caller's
/// transaction: what a read returns and what every write answers with.
#[tracing::instrument(skip_all, fields(privacy_request = id))]
pub async fn get(keys: &Keyring, conn: &mut PgConnection, id: i64) -> Result<RequestView> {
    let mut request = store::must_get(conn, id, false).await?;
    store::open(keys, conn, std::slice::from_mut(&mut request)).await?;
    let history = store::transitions(conn, id).await?;
    let tasks = store::task_counts(conn, id).await?;
    Ok(RequestView {
        request,
        history,
        tasks,
    })
}
