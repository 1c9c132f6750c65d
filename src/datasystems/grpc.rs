//! `privacy.v1.DataSystemService`: decode, validate into domain types, call
//! the use case, encode. Nothing else happens here.
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::model::{
    Category, Claim, Country, DataAction, DataSystem, DataSystemFields, DataSystemId, Disclosure,
    DisclosureBasis, Kind, LeaseId, NewDisclosure, Task, TaskFilter, TaskId, TaskResult, TaskState,
    name_of_system, parse_lease_seconds, parse_max_tasks, parse_request_name, parse_sha256,
};
use super::{service, store};
use crate::caller::Caller;
use crate::convert::{opt_timestamp, parse_opt_timestamp, parse_timestamp, timestamp};
use crate::error::{Error, Result, Violations};
use crate::idempotency::RequestId;
use crate::names::{
    PurposeKey, SubjectId, parse_identifier_text, parse_required_identifier, parse_required_text,
    parse_text,
};
use crate::proto;
use crate::proto::data_system_service_server::DataSystemService;
use crate::reads::Reads;
use crate::rpc::{self, mutate_cloning as mutate, not_in_future, paginate};
use crate::tokens::{PageToken, page_size};

/// The largest export a task may return.
const MAX_EXPORT_BYTES: usize = 1024 * 1024;

pub struct DataSystemApi {
    /// The primary: writes, and reads that are not routed.
    pool: PgPool,
    reads: Reads,
    keys: crate::keys::Keyring,
}

impl DataSystemApi {
    pub fn new(reads: Reads, keys: crate::keys::Keyring) -> Self {
        Self {
            pool: reads.primary().clone(),
            reads,
            keys,
        }
    }
}

// ---- conversions ----------------------------------------------------------

/// A proto enum value from a domain enum, by their shared names.
fn to_proto<P: Into<i32>>(name: &str, from_str_name: fn(&str) -> Option<P>) -> i32 {
    from_str_name(name).map_or(0, Into::into)
}

/// A domain enum from a proto enum value, by their shared names (the
/// `*_UNSPECIFIED` values have none).
fn from_proto<P: TryFrom<i32>, D>(
    value: i32,
    name: fn(&P) -> &'static str,
    from_db: fn(&str) -> Option<D>,
) -> Option<D> {
    P::try_from(value).ok().and_then(|p| from_db(name(&p)))
}

fn action_to_proto(a: DataAction) -> i32 {
    to_proto(a.as_str(), proto::DataAction::from_str_name)
}

fn system_to_proto(s: &DataSystem) -> proto::DataSystem {
    proto::DataSystem {
        name: name_of_system(&s.id),
        id: s.id.clone(),
        display_name: s.display_name.clone(),
        kind: to_proto(s.kind.as_str(), proto::data_system::Kind::from_str_name),
        categories: s.categories.clone(),
        country: s.country.clone(),
        actions: s.actions.iter().copied().map(action_to_proto).collect(),
        description: s.description.clone(),
        create_time: Some(timestamp(s.create_time)),
        update_time: Some(timestamp(s.update_time)),
    }
}

fn result_to_proto(r: &TaskResult) -> proto::TaskResult {
    proto::TaskResult {
        records_affected: r.records_affected,
        content_sha256: r.content_sha256.clone().unwrap_or_default(),
        system_reference: r.system_reference.clone(),
        export_json: r.export_json.clone().unwrap_or_default(),
        exempt: r.exempt_reason.is_some(),
        exempt_reason: r.exempt_reason.clone().unwrap_or_default(),
    }
}

/// A task as anyone may read it: without its lease id.
fn task_to_proto(t: &Task) -> proto::Task {
    proto::Task {
        name: t.name(),
        id: t.id.to_string(),
        data_system: name_of_system(&t.data_system_id),
        privacy_request: t
            .privacy_request_id
            .map(|id| format!("privacyRequests/{id}"))
            .unwrap_or_default(),
        subject_id: t.subject_id.clone(),
        action: action_to_proto(t.action),
        categories: t.categories.clone(),
        corrections: t
            .corrections
            .iter()
            .map(|c| proto::FieldCorrection {
                field: c.field.clone(),
                current_value: c.current_value.clone(),
                corrected_value: c.corrected_value.clone(),
            })
            .collect(),
        state: to_proto(t.state.as_str(), proto::task::State::from_str_name),
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        worker: t.worker.clone().unwrap_or_default(),
        lease_id: String::new(),
        lease_expire_time: opt_timestamp(t.lease_expire_time),
        result: t.result.as_ref().map(result_to_proto),
        last_error: t.last_error.clone().unwrap_or_default(),
        create_time: Some(timestamp(t.create_time)),
        update_time: Some(timestamp(t.update_time)),
    }
}

/// A task as its claimer sees it: with the lease id.
fn leased_task_to_proto(t: &Task) -> proto::Task {
    proto::Task {
        lease_id: t.lease_id.map(|l| l.to_string()).unwrap_or_default(),
        ..task_to_proto(t)
    }
}

fn basis_to_proto(b: DisclosureBasis) -> i32 {
    to_proto(b.as_str(), proto::DisclosureBasis::from_str_name)
}

fn disclosure_to_proto(d: &Disclosure) -> proto::Disclosure {
    proto::Disclosure {
        name: format!("disclosures/{}", d.id),
        subject_id: d.subject_id.clone().unwrap_or_default(),
        recipient: d.recipient.clone(),
        categories: d.categories.clone(),
        basis: basis_to_proto(d.basis),
        purpose: d.purpose.clone().unwrap_or_default(),
        disclose_time: Some(timestamp(d.disclose_time)),
        contradicts_prohibited_purpose: d.contradicted_purpose.is_some(),
        contradicted_purpose: d.contradicted_purpose.clone().unwrap_or_default(),
    }
}

// ---- parsing --------------------------------------------------------------

/// 1-50 categories; repeats are dropped (the first place kept).
fn parse_categories(v: &mut Violations, field: &str, raw: &[String]) -> Option<Vec<Category>> {
    if raw.is_empty() {
        v.add(field, "needs at least one category");
        return None;
    }
    if raw.len() > 50 {
        v.add(field, "must have at most 50 entries");
        return None;
    }
    let mut out: Vec<Category> = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (i, c) in raw.iter().enumerate() {
        match Category::parse(c) {
            Ok(c) if !out.contains(&c) => out.push(c),
            Ok(_) => {}
            Err(e) => {
                v.add(format!("{field}[{i}]"), e);
                valid = false;
            }
        }
    }
    valid.then_some(out)
}

/// At least one action; repeats are dropped.
fn parse_actions(v: &mut Violations, field: &str, raw: &[i32]) -> Option<Vec<DataAction>> {
    if raw.is_empty() {
        v.add(field, "needs at least one action");
        return None;
    }
    if raw.len() > 50 {
        v.add(field, "must have at most 50 entries");
        return None;
    }
    let mut out = Vec::new();
    let mut valid = true;
    for (i, a) in raw.iter().enumerate() {
        match from_proto(*a, proto::DataAction::as_str_name, DataAction::from_db) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => {
                v.add(
                    format!("{field}[{i}]"),
                    "must be EXPORT, DELETE, CORRECT, SUPPRESS or RESTRICT",
                );
                valid = false;
            }
        }
    }
    valid.then_some(out)
}

fn parse_data_system(
    v: &mut Violations,
    s: Option<&proto::DataSystem>,
) -> Option<DataSystemFields> {
    let Some(s) = s else {
        v.add("data_system", "is required");
        return None;
    };
    let id = v.check("data_system.id", DataSystemId::parse(&s.id));
    let display_name = v.check(
        "data_system.display_name",
        parse_required_text(&s.display_name, 200),
    );
    let kind = v.check(
        "data_system.kind",
        from_proto(s.kind, proto::data_system::Kind::as_str_name, Kind::from_db)
            .ok_or_else(|| "must be INTERNAL or PROCESSOR".to_string()),
    );
    let categories = parse_categories(v, "data_system.categories", &s.categories);
    let country = v.check("data_system.country", Country::parse(&s.country));
    let actions = parse_actions(v, "data_system.actions", &s.actions);
    let description = v.check("data_system.description", parse_text(&s.description, 2000));
    Some(DataSystemFields {
        id: id?,
        display_name: display_name?,
        kind: kind?,
        categories: categories?,
        country: country?,
        actions: actions?,
        description: description?,
    })
}

fn parse_result(v: &mut Violations, r: Option<&proto::TaskResult>) -> Option<TaskResult> {
    let Some(r) = r else {
        v.add("result", "is required");
        return None;
    };
    let records_affected = if r.records_affected < 0 {
        v.add("result.records_affected", "must not be negative");
        None
    } else {
        Some(r.records_affected)
    };
    let content_sha256 = if r.content_sha256.is_empty() {
        Some(None)
    } else {
        v.check(
            "result.content_sha256",
            parse_sha256(&r.content_sha256).map(Some),
        )
    };
    let system_reference = v.check(
        "result.system_reference",
        parse_identifier_text(&r.system_reference, 500),
    );
    let export_json = v.check("result.export_json", parse_export(&r.export_json));
    let exempt_reason = match (r.exempt, r.exempt_reason.trim().is_empty()) {
        (true, true) => {
            v.add("result.exempt_reason", "is required when exempt");
            None
        }
        (true, false) => v.check(
            "result.exempt_reason",
            parse_text(&r.exempt_reason, 1000).map(Some),
        ),
        (false, _) if !r.exempt_reason.is_empty() => {
            v.add("result.exempt_reason", "must be empty unless exempt");
            None
        }
        (false, _) => Some(None),
    };
    Some(TaskResult {
        records_affected: records_affected?,
        content_sha256: content_sha256?,
        system_reference: system_reference?,
        export_json: export_json?,
        exempt_reason: exempt_reason?,
    })
}

/// Empty, or a JSON document of at most 1 MiB, kept as sent.
fn parse_export(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_EXPORT_BYTES {
        return Err("must be at most 1 MiB".into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(raw)
        .map(|_| Some(raw.to_owned()))
        .map_err(|e| format!("is not valid JSON: {e}"))
}

fn parse_task_state(value: i32) -> Result<Option<TaskState>, String> {
    if value == 0 {
        return Ok(None);
    }
    from_proto(value, proto::task::State::as_str_name, TaskState::from_db)
        .map(Some)
        .ok_or_else(|| "is not a task state".into())
}

fn parse_new_disclosure(
    v: &mut Violations,
    d: Option<&proto::Disclosure>,
) -> Option<NewDisclosure> {
    let Some(d) = d else {
        v.add("disclosure", "is required");
        return None;
    };
    let subject_id = if d.subject_id.is_empty() {
        Some(None)
    } else {
        v.check(
            "disclosure.subject_id",
            SubjectId::parse(&d.subject_id).map(Some),
        )
    };
    let recipient = v.check(
        "disclosure.recipient",
        parse_required_text(&d.recipient, 200),
    );
    let categories = parse_categories(v, "disclosure.categories", &d.categories);
    let basis = v.check(
        "disclosure.basis",
        from_proto(
            d.basis,
            proto::DisclosureBasis::as_str_name,
            DisclosureBasis::from_db,
        )
        .ok_or_else(|| {
            "must be SERVICE_PROVIDER, LEGAL_OBLIGATION, FRAUD_PREVENTION, SALE or SHARING"
                .to_string()
        }),
    );
    let purpose = if d.purpose.is_empty() {
        Some(None)
    } else {
        v.check(
            "disclosure.purpose",
            PurposeKey::parse(&d.purpose).map(Some),
        )
    };
    let disclose_time = v.check(
        "disclosure.disclose_time",
        // Like every other time in the contract, an unset time is now.
        d.disclose_time
            .as_ref()
            .map_or_else(|| Ok(chrono::Utc::now()), parse_timestamp)
            .and_then(not_in_future),
    );
    Some(NewDisclosure {
        subject_id: subject_id?,
        recipient: recipient?,
        categories: categories?,
        basis: basis?,
        purpose: purpose?,
        disclose_time: disclose_time?,
    })
}

/// The request id of a mutation and the rest of its parse, or every
/// violation found.
fn parsed<T>(
    request_id: &str,
    rest: impl FnOnce(&mut Violations) -> Option<T>,
) -> Result<(RequestId, T)> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", RequestId::parse(request_id));
    let rest = rest(&mut v);
    match (request_id, rest) {
        (Some(id), Some(rest)) if v.is_empty() => Ok((id, rest)),
        _ => Err(v.into_error()),
    }
}

// ---- the service ----------------------------------------------------------

#[tonic::async_trait]
impl DataSystemService for DataSystemApi {
    async fn register_data_system(
        &self,
        request: Request<proto::RegisterDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/RegisterDataSystem";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, fields) = parsed(&req.request_id, |v| {
            parse_data_system(v, req.data_system.as_ref())
        })?;
        // A worker limited to some systems must not rewrite another's
        // registration (fewer actions would make the next deletion skip it).
        let scope = caller.check_system(fields.id.as_str(), &fields.id.name());
        rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        rpc::mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            fields,
            |conn, ctx, fields| {
                Box::pin(async move {
                    let (system, token) = service::register(conn, &ctx, &fields).await?;
                    Ok((system_to_proto(&system), token))
                })
            },
        )
        .await
    }

    async fn get_data_system(
        &self,
        request: Request<proto::GetDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let id = DataSystemId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))?;
        // Checked before the lookup, so a limited caller learns nothing of
        // other systems, not even whether one exists.
        let scope = caller.check_system(id.as_str(), &id.name());
        rpc::audit_refusal(
            &self.pool,
            "privacy.v1.DataSystemService/GetDataSystem",
            scope,
        )
        .await?;
        let system = store::get_data_system(&self.pool, &id)
            .await?
            .ok_or_else(|| Error::NotFound(id.name()))?;
        Ok(Response::new(system_to_proto(&system)))
    }

    async fn list_data_systems(
        &self,
        request: Request<proto::ListDataSystemsRequest>,
    ) -> Result<Response<proto::ListDataSystemsResponse>, Status> {
        const FILTERS: &str = "data_systems";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check(
            "page_token",
            PageToken::decode::<String>(FILTERS, &req.page_token),
        );
        let (Some(limit), Some(after)) = (limit, after) else {
            return Err(v.into_error().into());
        };
        // A caller limited to some systems sees only those: a list has no
        // single system to refuse, and the rest of the registry is not its
        // business.
        let only = caller.data_systems().map(|s| s.as_ref());
        let systems =
            store::list_data_systems(&self.pool, only, after.as_deref(), limit + 1).await?;
        let (page, next) = paginate(systems, limit, |s| PageToken::encode(FILTERS, &s.id));
        Ok(Response::new(proto::ListDataSystemsResponse {
            data_systems: page.iter().map(system_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn claim_tasks(
        &self,
        request: Request<proto::ClaimTasksRequest>,
    ) -> Result<Response<proto::ClaimTasksResponse>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/ClaimTasks";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, claim) = parsed(&req.request_id, |v| {
            let data_system = v.check("data_system", DataSystemId::parse_name(&req.data_system));
            let worker = v.check("worker", parse_required_identifier(&req.worker, 200));
            let max_tasks = v.check("max_tasks", parse_max_tasks(req.max_tasks));
            let lease_seconds = v.check("lease_seconds", parse_lease_seconds(req.lease_seconds));
            Some(Claim {
                data_system: data_system?,
                worker: worker?,
                max_tasks: max_tasks?,
                lease_seconds: lease_seconds?,
            })
        })?;
        let scope = caller.check_system(claim.data_system.as_str(), &claim.data_system.name());
        rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        let keys = self.keys.clone();
        mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let keys = keys.clone();
                let claim = claim.clone();
                Box::pin(async move {
                    let (mut tasks, token) = service::claim(conn, &ctx, &claim).await?;
                    store::open_tasks(&keys, conn, &mut tasks).await?;
                    let tasks = tasks.iter().map(leased_task_to_proto).collect();
                    Ok((proto::ClaimTasksResponse { tasks }, token))
                })
            },
        )
        .await
    }

    async fn renew_task_lease(
        &self,
        request: Request<proto::RenewTaskLeaseRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/RenewTaskLease";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, (id, lease, seconds)) = parsed(&req.request_id, |v| {
            let id = v.check("name", TaskId::parse_name(&req.name));
            let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
            let seconds = v.check("lease_seconds", parse_lease_seconds(req.lease_seconds));
            Some((id?, lease?, seconds?))
        })?;
        let keys = self.keys.clone();
        mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let keys = keys.clone();
                Box::pin(async move {
                    let (mut task, token) = service::renew(conn, &ctx, id, lease, seconds).await?;
                    store::open_tasks(&keys, conn, std::slice::from_mut(&mut task)).await?;
                    Ok((leased_task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn complete_task(
        &self,
        request: Request<proto::CompleteTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/CompleteTask";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, (id, lease, result)) = parsed(&req.request_id, |v| {
            let id = v.check("name", TaskId::parse_name(&req.name));
            let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
            let result = parse_result(v, req.result.as_ref());
            Some((id?, lease?, result?))
        })?;
        let keys = self.keys.clone();
        mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let keys = keys.clone();
                let result = result.clone();
                Box::pin(async move {
                    let (mut task, token) =
                        service::complete(&keys, conn, &ctx, id, lease, &result).await?;
                    store::open_tasks(&keys, conn, std::slice::from_mut(&mut task)).await?;
                    Ok((task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn fail_task(
        &self,
        request: Request<proto::FailTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/FailTask";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, (id, lease, message)) = parsed(&req.request_id, |v| {
            let id = v.check("name", TaskId::parse_name(&req.name));
            let lease = v.check("lease_id", LeaseId::parse(&req.lease_id));
            let message = v.check(
                "error_message",
                parse_required_text(&req.error_message, 2000),
            );
            Some((id?, lease?, message?))
        })?;
        let retryable = req.retryable;
        let keys = self.keys.clone();
        mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let keys = keys.clone();
                let message = message.clone();
                Box::pin(async move {
                    let (task, token) =
                        service::fail(conn, &ctx, id, lease, retryable, &message).await?;
                    let mut task = task;
                    store::open_tasks(&keys, conn, std::slice::from_mut(&mut task)).await?;
                    Ok((task_to_proto(&task), token))
                })
            },
        )
        .await
    }

    async fn get_task(
        &self,
        request: Request<proto::GetTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let id = TaskId::parse_name(&req.name).map_err(|e| Error::invalid("name", e))?;
        const METHOD: &str = "privacy.v1.DataSystemService/GetTask";
        let found = store::get_task(&self.pool, id.0).await?;
        // A caller limited to some systems is refused a task that is not
        // theirs and one that does not exist alike: the answer must not
        // tell it whether another system's task id exists.
        let system = found.as_ref().map_or("", |t| t.data_system_id.as_str());
        let scope = caller.check_system(system, &id.name());
        rpc::audit_refusal(&self.pool, METHOD, scope).await?;
        let mut task = found.ok_or_else(|| Error::NotFound(id.name()))?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        store::open_tasks(&self.keys, &mut conn, std::slice::from_mut(&mut task)).await?;
        Ok(Response::new(task_to_proto(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        let data_system = if req.data_system.is_empty() {
            Some(None)
        } else {
            v.check(
                "data_system",
                DataSystemId::parse_name(&req.data_system).map(Some),
            )
        };
        let privacy_request_id = if req.privacy_request.is_empty() {
            Some(None)
        } else {
            v.check(
                "privacy_request",
                parse_request_name(&req.privacy_request).map(Some),
            )
        };
        let state = v.check("state", parse_task_state(req.state));
        let subject_id = if req.subject_id.is_empty() {
            Some(None)
        } else {
            v.check("subject_id", SubjectId::parse(&req.subject_id).map(Some))
        };
        let limit = v.check("page_size", page_size(req.page_size));
        let filters = format!(
            "tasks:{}:{}:{}:{}",
            req.data_system, req.privacy_request, req.state, req.subject_id
        );
        let after = v.check(
            "page_token",
            PageToken::decode::<i64>(&filters, &req.page_token),
        );
        let (
            Some(data_system),
            Some(privacy_request_id),
            Some(state),
            Some(subject_id),
            Some(limit),
            Some(after),
        ) = (
            data_system,
            privacy_request_id,
            state,
            subject_id,
            limit,
            after,
        )
        else {
            return Err(v.into_error().into());
        };
        // A caller limited to some data systems lists one of them at a time.
        if caller.data_systems().is_some() {
            let scope = match &data_system {
                Some(id) => caller.check_system(id.as_str(), &id.name()),
                None => Err(Error::PermissionDenied {
                    caller: caller.as_str().to_owned(),
                    resource: "every data system's tasks (name a data_system)".to_owned(),
                }),
            };
            rpc::audit_refusal(&self.pool, "privacy.v1.DataSystemService/ListTasks", scope).await?;
        }
        let filter = TaskFilter {
            data_system,
            privacy_request_id,
            state,
            subject_id,
        };
        let (filter, filters) = (&filter, &filters);
        let (page, next) = self
            .reads
            .read(None, |pool| async move {
                let tasks = store::list_tasks(pool, filter, after, limit + 1).await?;
                let (mut page, next) =
                    paginate(tasks, limit, |t| PageToken::encode(filters, &t.id));
                let mut conn = pool.acquire().await.map_err(Error::from)?;
                store::open_tasks(&self.keys, &mut conn, &mut page).await?;
                Ok((page, next))
            })
            .await?;
        Ok(Response::new(proto::ListTasksResponse {
            tasks: page.iter().map(task_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn record_disclosure(
        &self,
        request: Request<proto::RecordDisclosureRequest>,
    ) -> Result<Response<proto::Disclosure>, Status> {
        const METHOD: &str = "privacy.v1.DataSystemService/RecordDisclosure";
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let (request_id, new) = parsed(&req.request_id, |v| {
            parse_new_disclosure(v, req.disclosure.as_ref())
        })?;
        mutate(
            &self.pool,
            &self.keys,
            METHOD,
            caller,
            &request_id,
            &req,
            move |conn, ctx| {
                let new = new.clone();
                Box::pin(async move {
                    let (disclosure, token) = service::record_disclosure(conn, &ctx, &new).await?;
                    Ok((disclosure_to_proto(&disclosure), token))
                })
            },
        )
        .await
    }

    async fn get_disclosure_report(
        &self,
        request: Request<proto::GetDisclosureReportRequest>,
    ) -> Result<Response<proto::DisclosureReport>, Status> {
        let req = request.into_inner();
        let as_of =
            parse_opt_timestamp(req.as_of.as_ref()).map_err(|e| Error::invalid("as_of", e))?;
        let report = service::disclosure_report(&self.pool, as_of).await?;
        let mut counts: Vec<proto::DisclosureCount> = report
            .counts
            .iter()
            .map(|(basis, n)| proto::DisclosureCount {
                basis: basis_to_proto(*basis),
                count: i32::try_from(*n).unwrap_or(i32::MAX),
            })
            .collect();
        counts.sort_by_key(|c| c.basis);
        Ok(Response::new(proto::DisclosureReport {
            start_time: Some(timestamp(report.start_time)),
            end_time: Some(timestamp(report.end_time)),
            counts,
            sold: report.sold(),
            shared: report.shared(),
            flagged: report.flagged.iter().map(disclosure_to_proto).collect(),
        }))
    }
}
