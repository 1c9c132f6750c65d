//! `privacy.v1.RetentionService`: decode, validate, run the write (in
//! `service`) once per request id in one transaction, encode.
use chrono::Utc;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::model::{EventKind, RetentionAction, RetentionPeriod, Trigger};
use super::service::{self, NewPolicy};
use super::store::{self, EntryRow, HoldRow, NewHold, PolicyRow, Write};
use super::sweeper::{self, SweepSettings};
use crate::caller::Caller;
use crate::convert::{opt_timestamp, parse_opt_timestamp, timestamp};
use crate::datasystems::model::{DataSystemId, parse_category};
use crate::error::{Error, Violations};
use crate::idempotency::RequestId;
use crate::names::{SubjectId, parse_required_text, parse_text};
use crate::proto;
use crate::proto::retention_service_server::RetentionService;
use crate::reads::Reads;
use crate::rpc::{self, not_in_future};
use crate::rules::Unit;

pub struct RetentionApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    sweep: SweepSettings,
    keys: crate::keys::Keyring,
}

impl RetentionApi {
    pub fn new(reads: Reads, sweep: SweepSettings, keys: crate::keys::Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            sweep,
            keys,
        }
    }
}

const MAX_TEXT: usize = 2000;

impl RetentionApi {
    /// Creates or replaces a policy, once per request id.
    async fn write_policy<Req: prost::Message>(
        &self,
        method: &'static str,
        write: Write,
        caller: Caller,
        request_id_raw: &str,
        policy: Option<proto::RetentionPolicy>,
        req: &Req,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let mut v = Violations::new();
        let rid = request_id(&mut v, request_id_raw);
        if policy.is_none() {
            v.add("retention_policy", "is required");
        }
        let p = policy.unwrap_or_default();
        let category = v.check("retention_policy.category", parse_category(&p.category));
        let trigger = v.check(
            "retention_policy.trigger",
            proto::retention_policy::Trigger::try_from(p.trigger)
                .ok()
                .and_then(|t| Trigger::from_db(t.as_str_name()))
                .ok_or_else(|| "must be CREATED, LAST_ACTIVITY, ACCOUNT_CLOSED, CONTRACT_ENDED or CONSENT_WITHDRAWN".to_owned()),
        );
        let period = v.check("retention_policy.period", parse_period(p.period.as_ref()));
        let action = v.check(
            "retention_policy.action",
            proto::retention_policy::Action::try_from(p.action)
                .ok()
                .and_then(|a| RetentionAction::from_db(a.as_str_name()))
                .ok_or_else(|| "must be DELETE or ANONYMIZE".to_owned()),
        );
        let legal_reason = v.check(
            "retention_policy.legal_reason",
            parse_text(&p.legal_reason, MAX_TEXT),
        );
        let (Some(rid), Some(category), Some(trigger), Some(period), Some(action), Some(reason)) =
            (rid, category, trigger, period, action, legal_reason)
        else {
            return Err(v.into_error().into());
        };
        let policy = NewPolicy {
            category,
            trigger,
            period,
            action,
            legal_reason: reason,
        };
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            method,
            caller,
            &rid,
            req,
            move |conn, ctx| {
                let policy = policy.clone();
                Box::pin(async move {
                    let (row, token) = service::write_policy(conn, &ctx, write, &policy).await?;
                    Ok((policy_to_proto(&row), token))
                })
            },
        )
        .await
    }
}

fn unit_to_proto(u: &str) -> i32 {
    match Unit::parse(u) {
        Some(Unit::Months) => proto::PeriodUnit::Months as i32,
        Some(Unit::BusinessDays) => proto::PeriodUnit::BusinessDays as i32,
        _ => proto::PeriodUnit::CalendarDays as i32,
    }
}

fn parse_period(p: Option<&proto::Period>) -> Result<RetentionPeriod, String> {
    let p = p.ok_or("is required")?;
    let unit = match proto::PeriodUnit::try_from(p.unit) {
        Ok(proto::PeriodUnit::CalendarDays) => Unit::CalendarDays,
        Ok(proto::PeriodUnit::Months) => Unit::Months,
        _ => return Err("unit must be CALENDAR_DAYS or MONTHS".into()),
    };
    RetentionPeriod::parse(p.amount, unit)
}

/// What the law keeps, as the API shows it (on a request and on a schedule).
pub fn legal_keep_to_proto(k: &store::LegalKeep) -> proto::LegalKeep {
    proto::LegalKeep {
        category: k.category.clone(),
        data_system: format!("dataSystems/{}", k.data_system_id),
        legal_reason: k.legal_reason.clone(),
        keep_until: opt_timestamp(k.keep_until),
        period: Some(proto::Period {
            amount: u32::try_from(k.period_amount).unwrap_or(0),
            unit: unit_to_proto(&k.period_unit),
        }),
        trigger: k.trigger.clone(),
    }
}

fn trigger_to_proto(t: &str) -> i32 {
    proto::retention_policy::Trigger::from_str_name(t).map_or(0, |v| v as i32)
}

fn action_to_proto(a: &str) -> i32 {
    proto::retention_policy::Action::from_str_name(a).map_or(0, |v| v as i32)
}

fn policy_to_proto(p: &PolicyRow) -> proto::RetentionPolicy {
    proto::RetentionPolicy {
        name: format!("retentionPolicies/{}", p.category),
        category: p.category.clone(),
        trigger: trigger_to_proto(&p.trigger),
        period: Some(proto::Period {
            amount: u32::try_from(p.period_amount).unwrap_or(0),
            unit: unit_to_proto(&p.period_unit),
        }),
        action: action_to_proto(&p.action),
        legal_reason: p.legal_reason.clone(),
        update_time: Some(timestamp(p.update_time)),
    }
}

fn entry_to_proto(e: &EntryRow) -> proto::ScheduleEntry {
    proto::ScheduleEntry {
        subject_id: e.subject_id.clone(),
        category: e.category.clone(),
        data_system: format!("dataSystems/{}", e.data_system_id),
        trigger: trigger_to_proto(&e.trigger),
        anchor_time: Some(timestamp(e.anchor_time)),
        due_time: Some(timestamp(e.due_time)),
        action: action_to_proto(&e.action),
        state: proto::schedule_entry::State::from_str_name(&e.state).map_or(0, |v| v as i32),
        task: e.task_id.map(|t| format!("tasks/{t}")).unwrap_or_default(),
        held_by: e.held_by.clone(),
        overridden: e.overridden,
    }
}

fn hold_to_proto(h: &HoldRow) -> proto::LegalHold {
    proto::LegalHold {
        name: format!("legalHolds/{}", h.id),
        subject_id: h.subject_id.clone().unwrap_or_default(),
        category: h.category.clone().unwrap_or_default(),
        data_system: h
            .data_system_id
            .as_ref()
            .map(|s| format!("dataSystems/{s}"))
            .unwrap_or_default(),
        reason: h.reason.clone(),
        end_time: opt_timestamp(h.end_time),
        place_time: Some(timestamp(h.place_time)),
        placed_by: h.placed_by.clone(),
        release_time: opt_timestamp(h.release_time),
        released_by: h.released_by.clone().unwrap_or_default(),
        active: h.active,
    }
}

fn parse_hold_name(name: &str) -> Result<i64, String> {
    crate::convert::parse_numbered_name(name, "legalHolds").ok_or_else(|| {
        "must be \"legalHolds/{id}\" with a positive numeric id, without a sign or leading zeros"
            .into()
    })
}

fn optional<T>(raw: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

fn request_id(v: &mut Violations, raw: &str) -> Option<RequestId> {
    v.check("request_id", RequestId::parse(raw))
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn list_data_categories(
        &self,
        _request: Request<proto::ListDataCategoriesRequest>,
    ) -> Result<Response<proto::ListDataCategoriesResponse>, Status> {
        let data_categories = store::categories(&self.pool)
            .await?
            .into_iter()
            .map(|(key, description)| proto::DataCategory { key, description })
            .collect();
        Ok(Response::new(proto::ListDataCategoriesResponse {
            data_categories,
        }))
    }

    async fn get_retention_policy(
        &self,
        request: Request<proto::GetRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        let name = &request.get_ref().name;
        let category = name
            .strip_prefix("retentionPolicies/")
            .ok_or_else(|| "must be \"retentionPolicies/{category}\"".to_owned())
            .and_then(parse_category)
            .map_err(|e| Error::invalid("name", e))?;
        let policy = store::policies(&self.pool, Some(&category))
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(name.clone()))?;
        Ok(Response::new(policy_to_proto(&policy)))
    }

    async fn list_retention_policies(
        &self,
        _request: Request<proto::ListRetentionPoliciesRequest>,
    ) -> Result<Response<proto::ListRetentionPoliciesResponse>, Status> {
        let retention_policies = self
            .reads
            .read(None, |pool| store::policies(pool, None))
            .await?
            .iter()
            .map(policy_to_proto)
            .collect();
        Ok(Response::new(proto::ListRetentionPoliciesResponse {
            retention_policies,
        }))
    }

    async fn create_retention_policy(
        &self,
        request: Request<proto::CreateRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/CreateRetentionPolicy";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (rid, policy) = (req.request_id.clone(), req.retention_policy.clone());
        self.write_policy(METHOD, Write::Create, caller, &rid, policy, &req)
            .await
    }

    async fn update_retention_policy(
        &self,
        request: Request<proto::UpdateRetentionPolicyRequest>,
    ) -> Result<Response<proto::RetentionPolicy>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/UpdateRetentionPolicy";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (rid, policy) = (req.request_id.clone(), req.retention_policy.clone());
        self.write_policy(METHOD, Write::Replace, caller, &rid, policy, &req)
            .await
    }

    async fn set_retention_override(
        &self,
        request: Request<proto::SetRetentionOverrideRequest>,
    ) -> Result<Response<proto::RetentionOverride>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/SetRetentionOverride";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let rid = request_id(&mut v, &req.request_id);
        let o = req.retention_override.clone().unwrap_or_default();
        if req.retention_override.is_none() {
            v.add("retention_override", "is required");
        }
        let subject = v.check(
            "retention_override.subject_id",
            SubjectId::parse(&o.subject_id),
        );
        let category = v.check("retention_override.category", parse_category(&o.category));
        let period = v.check("retention_override.period", parse_period(o.period.as_ref()));
        let reason = v.check(
            "retention_override.reason",
            parse_required_text(&o.reason, MAX_TEXT),
        );
        let (Some(rid), Some(subject), Some(category), Some(period), Some(reason)) =
            (rid, subject, category, period, reason)
        else {
            return Err(v.into_error().into());
        };
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &rid,
            &req,
            move |conn, ctx| {
                let (subject, category, reason, o) =
                    (subject.clone(), category.clone(), reason.clone(), o.clone());
                Box::pin(async move {
                    let token = service::set_override(
                        conn,
                        &ctx,
                        subject.as_str(),
                        &category,
                        period,
                        &reason,
                    )
                    .await?;
                    Ok((o, token))
                })
            },
        )
        .await
    }

    async fn record_lifecycle_event(
        &self,
        request: Request<proto::RecordLifecycleEventRequest>,
    ) -> Result<Response<proto::RecordLifecycleEventResponse>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/RecordLifecycleEvent";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let rid = request_id(&mut v, &req.request_id);
        let subject = v.check("subject_id", SubjectId::parse(&req.subject_id));
        let category = v.check("category", optional(&req.category, parse_category));
        let system = v.check(
            "data_system",
            optional(&req.data_system, DataSystemId::parse_name),
        );
        let event = v.check(
            "event",
            proto::lifecycle_event::Kind::try_from(req.event)
                .ok()
                .and_then(|k| EventKind::from_db(k.as_str_name()))
                .ok_or_else(|| {
                    "must be CREATED, ACTIVITY, ACCOUNT_CLOSED, CONTRACT_ENDED or CONSENT_WITHDRAWN"
                        .to_owned()
                }),
        );
        let at = v.check(
            "event_time",
            parse_opt_timestamp(req.event_time.as_ref())
                .and_then(|t| t.map(not_in_future).transpose()),
        );
        let (Some(rid), Some(subject), Some(category), Some(system), Some(event), Some(at)) =
            (rid, subject, category, system, event, at)
        else {
            return Err(v.into_error().into());
        };
        let at = at.unwrap_or_else(Utc::now);
        // A reporter limited to some data systems reports for one of them:
        // without a system the event would move every system's schedule.
        if caller.data_systems().is_some() {
            let scope = match &system {
                Some(id) => caller.check_system(id.as_str(), &id.name()),
                None => Err(Error::PermissionDenied {
                    caller: caller.as_str().to_owned(),
                    resource: "every data system's schedule (name a data_system)".to_owned(),
                }),
            };
            rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        }
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &rid,
            &req,
            move |conn, ctx| {
                let (subject, category, system) =
                    (subject.clone(), category.clone(), system.clone());
                Box::pin(async move {
                    let (changed, token) = service::record_event(
                        conn,
                        &ctx,
                        subject.as_str(),
                        category.as_deref(),
                        system.as_ref().map(DataSystemId::as_str),
                        event,
                        at,
                    )
                    .await?;
                    let response = proto::RecordLifecycleEventResponse {
                        changed: changed.iter().map(entry_to_proto).collect(),
                    };
                    Ok((response, token))
                })
            },
        )
        .await
    }

    async fn place_legal_hold(
        &self,
        request: Request<proto::PlaceLegalHoldRequest>,
    ) -> Result<Response<proto::LegalHold>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/PlaceLegalHold";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let rid = request_id(&mut v, &req.request_id);
        let h = req.legal_hold.clone().unwrap_or_default();
        let subject = v.check(
            "legal_hold.subject_id",
            optional(&h.subject_id, |s| {
                SubjectId::parse(s).map(|s| s.as_str().to_owned())
            }),
        );
        let category = v.check("legal_hold.category", optional(&h.category, parse_category));
        let system = v.check(
            "legal_hold.data_system",
            optional(&h.data_system, DataSystemId::parse_name),
        );
        let reason = v.check(
            "legal_hold.reason",
            parse_required_text(&h.reason, MAX_TEXT),
        );
        let end_time = v.check(
            "legal_hold.end_time",
            parse_opt_timestamp(h.end_time.as_ref()).and_then(|t| match t {
                Some(t) if t <= Utc::now() => Err("must be in the future".to_owned()),
                t => Ok(t),
            }),
        );
        if h.subject_id.is_empty() && h.category.is_empty() && h.data_system.is_empty() {
            v.add(
                "legal_hold",
                "needs a scope: at least one of subject_id, category, data_system",
            );
        }
        let (Some(rid), Some(subject), Some(category), Some(system), Some(reason), Some(end), true) = (
            rid,
            subject,
            category,
            system,
            reason,
            end_time,
            v.is_empty(),
        ) else {
            return Err(v.into_error().into());
        };
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &rid,
            &req,
            move |conn, ctx| {
                let (subject, category, system, reason) = (
                    subject.clone(),
                    category.clone(),
                    system.clone(),
                    reason.clone(),
                );
                Box::pin(async move {
                    let hold = NewHold {
                        subject_id: subject.as_deref(),
                        category: category.as_deref(),
                        data_system_id: system.as_ref().map(DataSystemId::as_str),
                        reason: &reason,
                        end_time: end,
                    };
                    let (row, token) =
                        service::place_hold(conn, &ctx, &hold, system.as_ref()).await?;
                    Ok((hold_to_proto(&row), token))
                })
            },
        )
        .await
    }

    async fn release_legal_hold(
        &self,
        request: Request<proto::ReleaseLegalHoldRequest>,
    ) -> Result<Response<proto::LegalHold>, Status> {
        const METHOD: &str = "privacy.v1.RetentionService/ReleaseLegalHold";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let rid = request_id(&mut v, &req.request_id);
        let id = v.check("name", parse_hold_name(&req.name));
        let reason = v.check("reason", parse_required_text(&req.reason, MAX_TEXT));
        let (Some(rid), Some(id), Some(reason)) = (rid, id, reason) else {
            return Err(v.into_error().into());
        };
        rpc::mutate_cloning(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &rid,
            &req,
            move |conn, ctx| {
                let reason = reason.clone();
                Box::pin(async move {
                    let (hold, token) = service::release_hold(conn, &ctx, id, &reason).await?;
                    Ok((hold_to_proto(&hold), token))
                })
            },
        )
        .await
    }

    async fn list_legal_holds(
        &self,
        request: Request<proto::ListLegalHoldsRequest>,
    ) -> Result<Response<proto::ListLegalHoldsResponse>, Status> {
        let req = request.into_inner();
        let subject = optional(&req.subject_id, |s| {
            SubjectId::parse(s).map(|s| s.as_str().to_owned())
        })
        .map_err(|e| Error::invalid("subject_id", e))?;
        let holds = self
            .reads
            .read(None, |pool| {
                store::list_holds(pool, req.include_inactive, subject.as_deref())
            })
            .await?;
        Ok(Response::new(proto::ListLegalHoldsResponse {
            legal_holds: holds.iter().map(hold_to_proto).collect(),
        }))
    }

    async fn run_retention_sweep(
        &self,
        request: Request<proto::RunRetentionSweepRequest>,
    ) -> Result<Response<proto::RunRetentionSweepResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let rid = RequestId::parse(&req.request_id).map_err(|e| Error::invalid("request_id", e))?;
        rpc::note_request_id(&rid);
        // Each batch commits on its own (a sweep may be long), so a retry with
        // the same request id sweeps again: harmless, it takes only what is
        // still due.
        let ctx = rpc::Context::internal(
            caller.as_str(),
            "privacy.v1.RetentionService/RunRetentionSweep",
            rid.as_str().to_owned(),
        );
        let totals = sweeper::sweep(&self.pool, Utc::now(), &self.sweep, &ctx).await?;
        Ok(Response::new(proto::RunRetentionSweepResponse {
            tasks_created: totals.tasks_created,
            entries_held: totals.entries_held,
            entries_released: totals.entries_released,
            requests_minimized: totals.requests_minimized,
            idempotency_keys_pruned: totals.idempotency_keys_pruned,
        }))
    }

    async fn get_record_of_processing(
        &self,
        _request: Request<proto::GetRecordOfProcessingRequest>,
    ) -> Result<Response<proto::RecordOfProcessing>, Status> {
        let systems = store::processing(&self.pool).await?;
        let policies = store::policies(&self.pool, None).await?;
        let entries = systems
            .into_iter()
            .map(|s| proto::ProcessingEntry {
                data_system: format!("dataSystems/{}", s.id),
                display_name: s.display_name,
                kind: s.kind,
                transfer_outside_eea: !crate::rules::gdpr_applies_in(&s.country),
                country: s.country,
                description: s.description,
                categories: s
                    .categories
                    .into_iter()
                    .map(|c| proto::ProcessedCategory {
                        retention_policy: policies
                            .iter()
                            .find(|p| p.category == c)
                            .map(policy_to_proto),
                        category: c,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(proto::RecordOfProcessing {
            generate_time: Some(timestamp(Utc::now())),
            entries,
        }))
    }

    async fn get_retention_schedule(
        &self,
        request: Request<proto::GetRetentionScheduleRequest>,
    ) -> Result<Response<proto::RetentionSchedule>, Status> {
        let subject = SubjectId::parse(&request.get_ref().subject_id)
            .map_err(|e| Error::invalid("subject_id", e))?;
        let entries = store::schedule(&self.pool, subject.as_str()).await?;
        let holds = store::list_holds(&self.pool, false, Some(subject.as_str())).await?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let keeps = store::legal_keeps(&mut conn, subject.as_str(), &[], None, Utc::now()).await?;
        drop(conn);
        let kept = store::policies(&self.pool, None)
            .await?
            .into_iter()
            .filter(|p| !p.legal_reason.is_empty())
            .map(|p| policy_to_proto(&p))
            .collect();
        Ok(Response::new(proto::RetentionSchedule {
            subject_id: subject.as_str().to_owned(),
            entries: entries.iter().map(entry_to_proto).collect(),
            legal_holds: holds.iter().map(hold_to_proto).collect(),
            kept_for_legal_reasons: kept,
            legal_keeps: keeps.iter().map(legal_keep_to_proto).collect(),
        }))
    }
}
