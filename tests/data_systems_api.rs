//! The DataSystem API end to end: the registry, the task queue under
//! concurrent claimers and expiring leases, and the disclosure report, on a
//! real server and a real PostgreSQL database per test. Tasks are inserted
//! with SQL (the fan-out from privacy requests is tested with requests).
mod common;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use common::{PATIENCE, TestServer, error_reason, eventually, request_id, ts};
use privacy_records::proto::data_system::Kind;
use privacy_records::proto::data_system_service_client::DataSystemServiceClient;
use privacy_records::proto::{
    ClaimTasksRequest, CompleteTaskRequest, DataAction, DataSystem, Disclosure, DisclosureBasis,
    DisclosureCount, FailTaskRequest, GetDataSystemRequest, GetDisclosureReportRequest,
    GetTaskRequest, ListDataSystemsRequest, ListTasksRequest, RecordDisclosureRequest,
    RegisterDataSystemRequest, RenewTaskLeaseRequest, Task, TaskResult, task,
};
use prost_types::Timestamp;
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

type Client = DataSystemServiceClient<Channel>;

fn client(server: &TestServer) -> Client {
    let channel = server.channel();
    DataSystemServiceClient::new(channel)
}

fn system(id: &str) -> DataSystem {
    DataSystem {
        id: id.into(),
        display_name: format!("The {id} database"),
        kind: Kind::Internal as i32,
        categories: vec!["account_information".into(), "payment_records".into()],
        country: "US".into(),
        actions: vec![DataAction::Export as i32, DataAction::Delete as i32],
        description: "Accounts and billing.".into(),
        ..Default::default()
    }
}

async fn register(c: &mut Client, id: &str) -> DataSystem {
    c.register_data_system(RegisterDataSystemRequest {
        request_id: request_id(),
        data_system: Some(system(id)),
    })
    .await
    .expect("register")
    .into_inner()
}

/// Queues `n` tasks for a system, as the fan-out will; returns their ids.
async fn insert_tasks(pool: &PgPool, system: &str, action: &str, n: i32) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO tasks (data_system_id, subject_id, action, categories)
         SELECT $1, 'subject-' || g, $2, ARRAY['account_information'] FROM generate_series(1, $3) g
         RETURNING id",
    )
    .bind(system)
    .bind(action)
    .bind(n)
    .fetch_all(pool)
    .await
    .expect("insert tasks")
}

async fn exec(pool: &PgPool, sql: &str, id: i64) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .execute(pool)
        .await
        .expect("sql");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("count")
}

fn claim_request(
    system: &str,
    worker: &str,
    max_tasks: i32,
    lease_seconds: i32,
) -> ClaimTasksRequest {
    ClaimTasksRequest {
        request_id: request_id(),
        data_system: format!("dataSystems/{system}"),
        worker: worker.into(),
        max_tasks,
        lease_seconds,
    }
}

async fn claim(c: &mut Client, system: &str, worker: &str, max: i32, lease: i32) -> Vec<Task> {
    c.claim_tasks(claim_request(system, worker, max, lease))
        .await
        .expect("claim")
        .into_inner()
        .tasks
}

fn proof(records: i64) -> TaskResult {
    TaskResult {
        records_affected: records,
        content_sha256: "ab".repeat(32),
        system_reference: "job-42".into(),
        ..Default::default()
    }
}

fn complete_request(t: &Task, lease_id: &str, result: TaskResult) -> CompleteTaskRequest {
    CompleteTaskRequest {
        name: t.name.clone(),
        request_id: request_id(),
        lease_id: lease_id.into(),
        result: Some(result),
    }
}

fn fail_request(t: &Task, retryable: bool) -> FailTaskRequest {
    FailTaskRequest {
        name: t.name.clone(),
        request_id: request_id(),
        lease_id: t.lease_id.clone(),
        retryable,
        error_message: "connection reset".into(),
    }
}

async fn get_task(c: &mut Client, name: &str) -> Task {
    c.get_task(GetTaskRequest { name: name.into() })
        .await
        .expect("get task")
        .into_inner()
}

/// The status's code, ErrorInfo reason and BadRequest fields.
fn failure(status: tonic::Status) -> (Code, String, Vec<String>) {
    let (reason, fields) = error_reason(&status);
    (status.code(), reason, fields)
}

fn lease_not_held() -> (Code, String, Vec<String>) {
    (Code::FailedPrecondition, "LEASE_NOT_HELD".into(), vec![])
}

fn invalid(fields: &[&str]) -> (Code, String, Vec<String>) {
    (
        Code::InvalidArgument,
        "FIELD_VIOLATION".into(),
        fields.iter().map(|f| f.to_string()).collect(),
    )
}

// ---- the registry ---------------------------------------------------------

#[tokio::test]
async fn registered_systems_can_be_read_listed_and_replaced() {
    let server = TestServer::start().await;
    let mut c = client(&server);

    let billing = register(&mut c, "billing-db").await;
    assert_eq!(billing.name, "dataSystems/billing-db");
    assert_eq!(billing.kind, Kind::Internal as i32);
    assert_eq!(
        billing.categories,
        ["account_information", "payment_records"]
    );
    let read = c
        .get_data_system(GetDataSystemRequest {
            name: "dataSystems/billing-db".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read, billing);

    // The same id again replaces the description (register or replace);
    // repeated categories and actions are kept once.
    let replaced = c
        .register_data_system(RegisterDataSystemRequest {
            request_id: request_id(),
            data_system: Some(DataSystem {
                kind: Kind::Processor as i32,
                categories: vec!["payment_records".into(), "payment_records".into()],
                country: "DE".into(),
                actions: vec![DataAction::Delete as i32, DataAction::Delete as i32],
                ..system("billing-db")
            }),
        })
        .await
        .expect("replace")
        .into_inner();
    assert_eq!(replaced.kind, Kind::Processor as i32);
    assert_eq!(replaced.categories, ["payment_records"]);
    assert_eq!(replaced.actions, [DataAction::Delete as i32]);
    assert_eq!(replaced.country, "DE");
    assert_eq!(replaced.create_time, billing.create_time);
    let time = |t: Option<Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(time(replaced.update_time) > time(billing.update_time));

    for id in ["crm", "analytics", "email-provider"] {
        register(&mut c, id).await;
    }
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_data_systems(ListDataSystemsRequest {
                page_size: 3,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        ids.extend(page.data_systems.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids, ["analytics", "billing-db", "crm", "email-provider"]);

    let pool = server.db.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM change_events WHERE kind = 'DATA_SYSTEM_CHANGED'"
        )
        .await,
        5
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_events
             WHERE method = 'privacy.v1.DataSystemService/RegisterDataSystem'"
        )
        .await,
        5
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn registration_names_every_invalid_field() {
    let server = TestServer::start().await;
    let mut c = client(&server);

    let err = c
        .register_data_system(RegisterDataSystemRequest {
            request_id: String::new(),
            data_system: Some(DataSystem {
                id: "Billing DB".into(),
                display_name: "  ".into(),
                kind: Kind::Unspecified as i32,
                categories: vec!["ok".into(), "Not-OK".into()],
                country: "usa".into(),
                actions: vec![DataAction::Export as i32, DataAction::Unspecified as i32],
                description: "x".repeat(2001),
                ..Default::default()
            }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        failure(err),
        invalid(&[
            "request_id",
            "data_system.id",
            "data_system.display_name",
            "data_system.kind",
            "data_system.categories[1]",
            "data_system.country",
            "data_system.actions[1]",
            "data_system.description",
        ])
    );

    let err = c
        .register_data_system(RegisterDataSystemRequest {
            request_id: request_id(),
            data_system: Some(DataSystem {
                categories: vec![],
                actions: vec![],
                ..system("crm")
            }),
        })
        .await
        .expect_err("empty lists");
    assert_eq!(
        failure(err),
        invalid(&["data_system.categories", "data_system.actions"])
    );

    let err = c
        .register_data_system(RegisterDataSystemRequest {
            request_id: request_id(),
            data_system: None,
        })
        .await
        .expect_err("missing");
    assert_eq!(failure(err), invalid(&["data_system"]));

    let err = c
        .get_data_system(GetDataSystemRequest { name: "crm".into() })
        .await
        .expect_err("bad name");
    assert_eq!(failure(err), invalid(&["name"]));
    server.finish().await;
}

#[tokio::test]
async fn unknown_systems_and_tasks_are_not_found() {
    let server = TestServer::start().await;
    let mut c = client(&server);

    let err = c
        .get_data_system(GetDataSystemRequest {
            name: "dataSystems/nowhere".into(),
        })
        .await
        .expect_err("unknown system");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_reason(&err).0, "RESOURCE_NOT_FOUND");

    let err = c
        .claim_tasks(claim_request("nowhere", "w1", 0, 0))
        .await
        .expect_err("claim on unknown system");
    assert_eq!(err.code(), Code::NotFound);

    let err = c
        .get_task(GetTaskRequest {
            name: "tasks/999".into(),
        })
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), Code::NotFound);

    let err = c
        .complete_task(CompleteTaskRequest {
            name: "tasks/999".into(),
            request_id: request_id(),
            lease_id: uuid::Uuid::new_v4().to_string(),
            result: Some(proof(1)),
        })
        .await
        .expect_err("complete unknown task");
    assert_eq!(err.code(), Code::NotFound);
    server.finish().await;
}

// ---- claiming -------------------------------------------------------------

#[tokio::test]
async fn a_claim_with_nothing_queued_returns_no_tasks_and_writes_no_event() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;

    let response = c
        .claim_tasks(claim_request("crm", "w1", 0, 0))
        .await
        .expect("claim");
    assert!(response.metadata().get("x-consistency-token").is_some());
    assert!(response.into_inner().tasks.is_empty());

    let pool = server.db.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM change_events WHERE kind = 'TASK_CHANGED'"
        )
        .await,
        0
    );

    let err = c
        .claim_tasks(ClaimTasksRequest {
            worker: String::new(),
            max_tasks: 101,
            lease_seconds: -1,
            ..claim_request("crm", "w1", 0, 0)
        })
        .await
        .expect_err("invalid claim");
    assert_eq!(
        failure(err),
        invalid(&["worker", "max_tasks", "lease_seconds"])
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_task_and_together_take_all() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;

    for round in 0..5 {
        let mut queued: HashSet<i64> = insert_tasks(&pool, "crm", "DELETE", 20)
            .await
            .into_iter()
            .collect();
        queued.extend(insert_tasks(&pool, "crm", "EXPORT", 20).await);
        let mut seen = HashSet::new();
        let (mut a, mut b) = (c.clone(), c.clone());
        loop {
            let (first, second) = tokio::join!(
                claim(&mut a, "crm", "worker-a", 15, 60),
                claim(&mut b, "crm", "worker-b", 15, 60),
            );
            if first.is_empty() && second.is_empty() {
                break;
            }
            for t in first.iter().chain(&second) {
                assert!(seen.insert(t.id.clone()), "round {round}: {} twice", t.name);
                assert_eq!(t.state, task::State::Leased as i32);
                assert_eq!(t.attempts, 1);
                assert!(!t.lease_id.is_empty());
            }
            for batch in [&first, &second] {
                let ids: Vec<i64> = batch.iter().map(|t| t.id.parse().expect("id")).collect();
                assert!(ids.is_sorted(), "a claim returns its tasks by id");
            }
        }
        let seen: HashSet<i64> = seen.iter().map(|id| id.parse().expect("id")).collect();
        assert_eq!(seen, queued, "round {round}: together they take every task");
        sqlx::query("UPDATE tasks SET state = 'SUCCEEDED', lease_id = NULL")
            .execute(&pool)
            .await
            .expect("settle");
    }
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn an_expired_lease_returns_the_task_to_the_queue_and_the_old_lease_is_refused() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "DELETE", 1).await;

    let first = claim(&mut c, "crm", "worker-a", 1, 1).await;
    assert_eq!(first.len(), 1);
    let first = &first[0];

    // Worker b polls until the one-second lease has run out.
    let second = eventually(PATIENCE, "the lease to expire", async || {
        claim(&mut c, "crm", "worker-b", 1, 60)
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(second.name, first.name);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.worker, "worker-b");
    assert_ne!(second.lease_id, first.lease_id);

    let err = c
        .complete_task(complete_request(first, &first.lease_id, proof(1)))
        .await
        .expect_err("the old lease");
    let message = err.message().to_owned();
    assert_eq!(failure(err), lease_not_held());
    assert!(message.contains("another lease"), "{message}");
    let err = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: first.name.clone(),
            request_id: request_id(),
            lease_id: first.lease_id.clone(),
            lease_seconds: 60,
        })
        .await
        .expect_err("renew the old lease");
    assert_eq!(failure(err), lease_not_held());

    let done = c
        .complete_task(complete_request(&second, &second.lease_id, proof(3)))
        .await
        .expect("the new lease completes")
        .into_inner();
    assert_eq!(done.state, task::State::Succeeded as i32);
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_held_lease_can_be_renewed_but_not_a_wrong_or_expired_one() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "DELETE", 1).await;
    let t = claim(&mut c, "crm", "w1", 1, 10).await.remove(0);

    let renewed = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: t.name.clone(),
            request_id: request_id(),
            lease_id: t.lease_id.clone(),
            lease_seconds: 3600,
        })
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(renewed.lease_id, t.lease_id);
    let before = t.lease_expire_time.expect("expiry").seconds;
    let after = renewed.lease_expire_time.expect("expiry").seconds;
    assert!(after >= before + 3500, "{before} → {after}");

    let err = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: t.name.clone(),
            request_id: request_id(),
            lease_id: uuid::Uuid::new_v4().to_string(),
            lease_seconds: 60,
        })
        .await
        .expect_err("a wrong lease");
    assert_eq!(failure(err), lease_not_held());
    let err = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: t.name.clone(),
            request_id: request_id(),
            lease_id: "not-a-lease".into(),
            lease_seconds: 0,
        })
        .await
        .expect_err("a malformed lease");
    assert_eq!(failure(err), invalid(&["lease_id"]));

    // An expired lease cannot be renewed (another worker may be claiming
    // the task), but until someone does, it can still complete.
    let id: i64 = t.id.parse().expect("id");
    exec(
        &pool,
        "UPDATE tasks SET lease_expire_time = now() - interval '1 second' WHERE id = $1",
        id,
    )
    .await;
    let err = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: t.name.clone(),
            request_id: request_id(),
            lease_id: t.lease_id.clone(),
            lease_seconds: 60,
        })
        .await
        .expect_err("an expired lease");
    let message = err.message().to_owned();
    assert_eq!(failure(err), lease_not_held());
    assert!(message.contains("expired"), "{message}");
    let done = c
        .complete_task(complete_request(&t, &t.lease_id, proof(1)))
        .await
        .expect("an expired, unclaimed lease completes")
        .into_inner();
    assert_eq!(done.state, task::State::Succeeded as i32);

    let err = c
        .renew_task_lease(RenewTaskLeaseRequest {
            name: t.name.clone(),
            request_id: request_id(),
            lease_id: t.lease_id.clone(),
            lease_seconds: 60,
        })
        .await
        .expect_err("a finished task");
    let message = err.message().to_owned();
    assert_eq!(failure(err), lease_not_held());
    assert!(message.contains("SUCCEEDED"), "{message}");
    pool.close().await;
    server.finish().await;
}

// ---- completing and failing -----------------------------------------------

#[tokio::test]
async fn completing_stores_the_proof_and_never_shows_the_lease_again() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "EXPORT", 1).await;
    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);
    assert_eq!(t.action, DataAction::Export as i32);
    assert_eq!(get_task(&mut c, &t.name).await.lease_id, "");

    let export = r#"{"email": "alice@example.com", "orders": [1, 2]}"#;
    let done = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                export_json: export.into(),
                content_sha256: "AB".repeat(32),
                ..proof(2)
            },
        ))
        .await
        .expect("complete")
        .into_inner();
    assert_eq!(done.state, task::State::Succeeded as i32);
    assert_eq!(done.lease_id, "");
    assert_eq!(done.lease_expire_time, None);
    let result = done.result.clone().expect("result");
    assert_eq!(result.records_affected, 2);
    assert_eq!(result.content_sha256, "ab".repeat(32));
    assert_eq!(result.system_reference, "job-42");
    assert!(!result.exempt);
    let exported: serde_json::Value = serde_json::from_str(&result.export_json).expect("json");
    assert_eq!(exported["orders"][1], 2);

    let read = get_task(&mut c, &t.name).await;
    assert_eq!(read, done);
    // Lists leave the exported documents out.
    let listed = c
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].result.as_ref().map(|r| r.export_json.as_str()),
        Some("")
    );
    assert_eq!(listed[0].lease_id, "");

    let err = c
        .complete_task(complete_request(&t, &t.lease_id, proof(2)))
        .await
        .expect_err("twice");
    assert_eq!(failure(err), lease_not_held());

    // The claim and the completion each wrote an audit and a change event.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM change_events WHERE kind = 'TASK_CHANGED'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_events
             WHERE method = 'privacy.v1.DataSystemService/CompleteTask'
               AND target = 'tasks/1' AND subject_id = 'subject-1'
               AND NOT details ? 'export_json'"
        )
        .await,
        1
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn an_exemption_needs_a_reason() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "DELETE", 1).await;
    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);

    let err = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                exempt: true,
                ..proof(0)
            },
        ))
        .await
        .expect_err("no reason");
    assert_eq!(failure(err), invalid(&["result.exempt_reason"]));

    let reason = "invoices kept 10 years (tax law)";
    let done = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                exempt: true,
                exempt_reason: reason.into(),
                ..proof(0)
            },
        ))
        .await
        .expect("exempt")
        .into_inner();
    assert_eq!(done.state, task::State::Exempted as i32);
    let result = done.result.expect("result");
    assert!(result.exempt);
    assert_eq!(result.exempt_reason, reason);
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_result_is_validated_field_by_field() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "DELETE", 1).await;
    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);

    let err = c
        .complete_task(CompleteTaskRequest {
            name: "tasks/x".into(),
            request_id: request_id(),
            lease_id: t.lease_id.clone(),
            result: Some(TaskResult {
                records_affected: -1,
                content_sha256: "abc".into(),
                system_reference: "r".repeat(501),
                export_json: "{not json".into(),
                exempt: false,
                exempt_reason: "why not".into(),
            }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        failure(err),
        invalid(&[
            "name",
            "result.records_affected",
            "result.content_sha256",
            "result.system_reference",
            "result.export_json",
            "result.exempt_reason",
        ])
    );

    let err = c
        .complete_task(CompleteTaskRequest {
            result: None,
            ..complete_request(&t, &t.lease_id, proof(1))
        })
        .await
        .expect_err("no result");
    assert_eq!(failure(err), invalid(&["result"]));

    let err = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                export_json: format!("\"{}\"", "x".repeat(1024 * 1024)),
                ..proof(1)
            },
        ))
        .await
        .expect_err("too large");
    assert_eq!(failure(err), invalid(&["result.export_json"]));

    // An export belongs to EXPORT tasks only; this one deletes.
    let err = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                export_json: "{}".into(),
                ..proof(1)
            },
        ))
        .await
        .expect_err("export on a DELETE task");
    assert_eq!(failure(err), invalid(&["result.export_json"]));

    let err = c
        .fail_task(FailTaskRequest {
            error_message: String::new(),
            ..fail_request(&t, true)
        })
        .await
        .expect_err("no message");
    assert_eq!(failure(err), invalid(&["error_message"]));
    // Nothing above changed the task.
    assert_eq!(
        get_task(&mut c, &t.name).await.state,
        task::State::Leased as i32
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn json_that_postgresql_cannot_store_is_refused_as_invalid() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "EXPORT", 1).await;
    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);

    let err = c
        .complete_task(complete_request(
            &t,
            &t.lease_id,
            TaskResult {
                export_json: r#"{"name": "a\u0000b"}"#.into(),
                ..proof(1)
            },
        ))
        .await
        .expect_err("NUL in jsonb");
    assert_eq!(failure(err), invalid(&["result.export_json"]));
    assert_eq!(
        get_task(&mut c, &t.name).await.state,
        task::State::Leased as i32
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_retryable_failure_requeues_the_task_until_its_attempt_limit() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    let ids = insert_tasks(&pool, "crm", "DELETE", 2).await;
    exec(
        &pool,
        "UPDATE tasks SET max_attempts = 2 WHERE id = $1",
        ids[0],
    )
    .await;

    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);
    assert_eq!(t.id, ids[0].to_string());
    let failed = c
        .fail_task(fail_request(&t, true))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(failed.state, task::State::Queued as i32);
    assert_eq!(failed.last_error, "connection reset");
    assert_eq!(failed.lease_id, "");
    // It waits out its backoff (2 s after the first attempt): the next claim
    // takes the other task.
    let next = claim(&mut c, "crm", "w1", 1, 60).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[1].to_string());
    let waiting = count(
        &pool,
        &format!(
            "SELECT count(*) FROM tasks WHERE id = {} AND available_time > now() + interval '1 second'",
            ids[0]
        ),
    )
    .await;
    assert_eq!(waiting, 1);

    exec(
        &pool,
        "UPDATE tasks SET available_time = now() - interval '1 second' WHERE id = $1",
        ids[0],
    )
    .await;
    let again = claim(&mut c, "crm", "w2", 1, 60).await.remove(0);
    assert_eq!(again.id, t.id);
    assert_eq!(again.attempts, 2);
    // The last attempt failed: even a retryable failure is final now.
    let failed = c
        .fail_task(fail_request(&again, true))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(failed.state, task::State::Failed as i32);
    assert_eq!(failed.attempts, 2);
    assert!(claim(&mut c, "crm", "w2", 10, 60).await.is_empty());

    // A failure that is not retryable is final at once.
    let failed = c
        .fail_task(fail_request(&next[0], false))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(failed.state, task::State::Failed as i32);
    assert_eq!(failed.attempts, 1);
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_attempt_fails_the_task() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    let id = insert_tasks(&pool, "crm", "DELETE", 1).await[0];
    exec(&pool, "UPDATE tasks SET max_attempts = 1 WHERE id = $1", id).await;
    let t = claim(&mut c, "crm", "w1", 1, 60).await.remove(0);
    exec(
        &pool,
        "UPDATE tasks SET lease_expire_time = now() - interval '1 second' WHERE id = $1",
        id,
    )
    .await;

    assert!(claim(&mut c, "crm", "w2", 10, 60).await.is_empty());
    let failed = get_task(&mut c, &t.name).await;
    assert_eq!(failed.state, task::State::Failed as i32);
    assert_eq!(failed.last_error, "lease expired after the last attempt");
    assert_eq!(failed.lease_expire_time, None);
    // The claim that failed it is in the trail.
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM audit_events
                 WHERE method = 'privacy.v1.DataSystemService/ClaimTasks'
                   AND details -> 'failed_expired_tasks' @> '[{id}]'"
            )
        )
        .await,
        1
    );
    let err = c
        .complete_task(complete_request(&t, &t.lease_id, proof(1)))
        .await
        .expect_err("too late");
    assert_eq!(failure(err), lease_not_held());
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_retried_claim_returns_the_same_tasks() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let pool = server.db.pool().await;
    insert_tasks(&pool, "crm", "DELETE", 5).await;

    let request = claim_request("crm", "w1", 3, 60);
    let first = c
        .claim_tasks(request.clone())
        .await
        .expect("claim")
        .into_inner();
    let retry = c
        .claim_tasks(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.tasks.len(), 3);
    assert_eq!(retry, first);
    // The retry leased nothing more.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tasks WHERE state = 'LEASED'").await,
        3
    );
    let err = c
        .claim_tasks(ClaimTasksRequest {
            max_tasks: 5,
            ..request
        })
        .await
        .expect_err("same id, other request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).0, "REQUEST_ID_REUSED");
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn tasks_are_listed_by_filter_with_page_tokens_bound_to_the_filters() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    register(&mut c, "billing").await;
    let pool = server.db.pool().await;
    let request: i64 = sqlx::query_scalar(
        "INSERT INTO privacy_requests (subject_id, request_type, jurisdiction, rules_code,
             rules_version, channel, state, receive_time, received_date, period_amount,
             period_unit, original_due_date, due_date, verification_required, agent_may_file,
             statutory, free_limit_exceeded, prior_requests_12_months, deadline_citation)
         VALUES ('alice', 'deletion', 'US-CA', 'US-CA', 'test', 'WEB_FORM', 'RECEIVED', now(),
             current_date, 45, 'calendar_days', current_date + 45, current_date + 45,
             true, true, true, false, 0, '{}')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("request");
    insert_tasks(&pool, "crm", "DELETE", 5).await;
    insert_tasks(&pool, "billing", "DELETE", 3).await;
    let corrected: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (data_system_id, privacy_request_id, subject_id, action, categories,
                            corrections)
         VALUES ('billing', $1, 'alice', 'CORRECT', ARRAY['account_information'],
                 '[{\"field\": \"email\", \"corrected_value\": \"a@example.com\"}]')
         RETURNING id",
    )
    .bind(request)
    .fetch_one(&pool)
    .await
    .expect("task of a request");
    claim(&mut c, "crm", "w1", 2, 60).await;

    let list = |data_system: &str, privacy_request: &str, state: task::State, page_token: &str| {
        ListTasksRequest {
            data_system: data_system.into(),
            privacy_request: privacy_request.into(),
            state: state as i32,
            page_size: 2,
            page_token: page_token.into(),
            ..Default::default()
        }
    };
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_tasks(list("dataSystems/crm", "", task::State::Queued, &token))
            .await
            .expect("list")
            .into_inner();
        names.extend(page.tasks.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // A token is bound to the filters it was issued for.
        let err = c
            .list_tasks(list("dataSystems/billing", "", task::State::Queued, &token))
            .await
            .expect_err("other filters");
        assert_eq!(failure(err), invalid(&["page_token"]));
    }
    assert_eq!(names, ["tasks/3", "tasks/4", "tasks/5"]);

    let of_request = c
        .list_tasks(list(
            "",
            &format!("privacyRequests/{request}"),
            task::State::Unspecified,
            "",
        ))
        .await
        .expect("by request")
        .into_inner()
        .tasks;
    assert_eq!(of_request.len(), 1);
    let t = &of_request[0];
    assert_eq!(t.id, corrected.to_string());
    assert_eq!(t.data_system, "dataSystems/billing");
    assert_eq!(t.privacy_request, format!("privacyRequests/{request}"));
    assert_eq!(t.action, DataAction::Correct as i32);
    assert_eq!(t.corrections.len(), 1);
    assert_eq!(t.corrections[0].field, "email");
    assert_eq!(t.corrections[0].corrected_value, "a@example.com");
    assert_eq!(t.result, None);

    // One person's tasks, whatever system or request they came from.
    let of_alice = c
        .list_tasks(ListTasksRequest {
            subject_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("by subject")
        .into_inner()
        .tasks;
    let ids: Vec<&str> = of_alice.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [corrected.to_string().as_str()]);
    let err = c
        .list_tasks(ListTasksRequest {
            subject_id: "has space".into(),
            ..Default::default()
        })
        .await
        .expect_err("an invalid subject");
    assert_eq!(failure(err), invalid(&["subject_id"]));

    // Completing a request's task tells the request (privacy-request side).
    let leased = claim(&mut c, "billing", "w1", 10, 60).await;
    let mine = leased
        .iter()
        .find(|t| t.id == corrected.to_string())
        .expect("claimed");
    c.complete_task(complete_request(mine, &mine.lease_id, proof(1)))
        .await
        .expect("complete a request's task");

    let err = c
        .list_tasks(ListTasksRequest {
            data_system: "crm".into(),
            privacy_request: "privacyRequests/x".into(),
            state: 99,
            page_size: -1,
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        failure(err),
        invalid(&[
            "data_system",
            "privacy_request",
            "state",
            "page_size",
            "page_token"
        ])
    );
    pool.close().await;
    server.finish().await;
}

// ---- disclosures ----------------------------------------------------------

fn disclosure(basis: DisclosureBasis, purpose: &str, at: DateTime<Utc>) -> RecordDisclosureRequest {
    RecordDisclosureRequest {
        request_id: request_id(),
        disclosure: Some(Disclosure {
            subject_id: "alice".into(),
            recipient: "Ad Network Inc.".into(),
            categories: vec!["device_and_usage_data".into()],
            basis: basis as i32,
            purpose: purpose.into(),
            disclose_time: Some(ts(at)),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_sale_is_flagged_as_contradicting_the_prohibited_purpose() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let as_of: DateTime<Utc> = "2025-06-30T12:00:00Z".parse().expect("time");
    let start = as_of - chrono::Months::new(12);
    let second = chrono::Duration::seconds(1);

    let mut record = async |basis, purpose: &str, at| {
        c.record_disclosure(disclosure(basis, purpose, at))
            .await
            .expect("record")
            .into_inner()
    };
    let sale = record(DisclosureBasis::Sale, "", start + second).await;
    assert_eq!(sale.name, "disclosures/1");
    assert!(sale.contradicts_prohibited_purpose);
    assert_eq!(sale.contradicted_purpose, "sale_of_personal_data");
    let sharing = record(DisclosureBasis::Sharing, "", as_of).await;
    assert_eq!(sharing.contradicted_purpose, "cross_context_sharing");
    // A prohibited purpose named on any basis is contradicted.
    let profiling = record(
        DisclosureBasis::ServiceProvider,
        "profiling",
        as_of - second,
    )
    .await;
    assert_eq!(profiling.contradicted_purpose, "profiling");
    let processor = record(DisclosureBasis::ServiceProvider, "service_messages", as_of).await;
    assert!(!processor.contradicts_prohibited_purpose);
    assert_eq!(processor.contradicted_purpose, "");
    record(DisclosureBasis::LegalObligation, "", start + second).await;
    // Outside the window: at its (exclusive) start, and after its end.
    record(DisclosureBasis::Sale, "", start).await;
    record(DisclosureBasis::FraudPrevention, "", as_of + second).await;

    let report = c
        .get_disclosure_report(GetDisclosureReportRequest {
            as_of: Some(ts(as_of)),
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(report.start_time, Some(ts(start)));
    assert_eq!(report.end_time, Some(ts(as_of)));
    let count = |basis: DisclosureBasis, count| DisclosureCount {
        basis: basis as i32,
        count,
    };
    assert_eq!(
        report.counts,
        [
            count(DisclosureBasis::ServiceProvider, 2),
            count(DisclosureBasis::LegalObligation, 1),
            count(DisclosureBasis::Sale, 1),
            count(DisclosureBasis::Sharing, 1),
        ]
    );
    assert!(report.sold);
    assert!(report.shared);
    let flagged: Vec<&str> = report.flagged.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(flagged, ["disclosures/1", "disclosures/3", "disclosures/2"]);

    // A year later with nothing new: nothing sold or shared.
    let later = c
        .get_disclosure_report(GetDisclosureReportRequest {
            as_of: Some(ts(as_of + chrono::Months::new(13))),
        })
        .await
        .expect("report")
        .into_inner();
    assert!(!later.sold && !later.shared);
    assert!(later.counts.is_empty() && later.flagged.is_empty());

    let pool = server.db.pool().await;
    assert_eq!(
        count_events(&pool).await,
        7,
        "every disclosure wrote a change event"
    );
    pool.close().await;
    server.finish().await;
}

async fn count_events(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM change_events WHERE kind = 'DISCLOSURE_RECORDED'",
    )
    .await
}

#[tokio::test]
async fn a_disclosure_is_validated_and_its_purpose_must_exist() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let now = Utc::now();

    let err = c
        .record_disclosure(RecordDisclosureRequest {
            request_id: request_id(),
            disclosure: Some(Disclosure {
                subject_id: "has space".into(),
                recipient: String::new(),
                categories: vec![],
                basis: DisclosureBasis::Unspecified as i32,
                purpose: "Not A Key".into(),
                disclose_time: Some(ts(now + chrono::Duration::hours(1))),
                ..Default::default()
            }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        failure(err),
        invalid(&[
            "disclosure.subject_id",
            "disclosure.recipient",
            "disclosure.categories",
            "disclosure.basis",
            "disclosure.purpose",
            "disclosure.disclose_time",
        ])
    );
    let recorded = c
        .record_disclosure(RecordDisclosureRequest {
            disclosure: Some(Disclosure {
                disclose_time: None,
                ..disclosure(DisclosureBasis::LegalObligation, "", now)
                    .disclosure
                    .expect("d")
            }),
            ..disclosure(DisclosureBasis::LegalObligation, "", now)
        })
        .await
        .expect("a disclosure without a time happened now, as every other time defaults")
        .into_inner();
    let t = recorded.disclose_time.expect("the time it was given");
    assert!(
        (t.seconds - now.timestamp()).abs() < 60,
        "disclose_time defaults to now: {t:?}"
    );

    let err = c
        .record_disclosure(disclosure(DisclosureBasis::Sale, "no_such_purpose", now))
        .await
        .expect_err("unknown purpose");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("purposes/no_such_purpose"));

    // Without a subject, it is a disclosure about no one in particular.
    let anonymous = c
        .record_disclosure(RecordDisclosureRequest {
            disclosure: Some(Disclosure {
                subject_id: String::new(),
                ..disclosure(DisclosureBasis::LegalObligation, "", now)
                    .disclosure
                    .expect("d")
            }),
            ..disclosure(DisclosureBasis::LegalObligation, "", now)
        })
        .await
        .expect("no subject")
        .into_inner();
    assert_eq!(anonymous.subject_id, "");
    let report = c
        .get_disclosure_report(GetDisclosureReportRequest::default())
        .await
        .expect("report of now")
        .into_inner();
    assert_eq!(report.counts.len(), 1);
    assert!(!report.sold);
    server.finish().await;
}

// ---- names and identifiers ------------------------------------------------

/// One task has one name: "tasks/01" and "tasks/+1" would otherwise reach
/// "tasks/1". Every method that takes a task or request name refuses them,
/// naming the field.
#[tokio::test]
async fn a_task_answers_only_to_its_canonical_name() {
    let server = TestServer::start().await;
    let pool = server.db.pool().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    let id = insert_tasks(&pool, "crm", "DELETE", 1).await[0];
    for bad in [
        format!("tasks/0{id}"),
        format!("tasks/+{id}"),
        format!("tasks/00{id}"),
    ] {
        let err = c
            .get_task(GetTaskRequest { name: bad.clone() })
            .await
            .expect_err(&bad);
        assert_eq!(failure(err), invalid(&["name"]), "{bad}");
        let err = c
            .renew_task_lease(RenewTaskLeaseRequest {
                name: bad.clone(),
                request_id: request_id(),
                lease_id: uuid::Uuid::new_v4().to_string(),
                lease_seconds: 60,
            })
            .await
            .expect_err(&bad);
        assert_eq!(failure(err), invalid(&["name"]), "{bad}");
    }
    let err = c
        .list_tasks(ListTasksRequest {
            privacy_request: "privacyRequests/01".into(),
            ..Default::default()
        })
        .await
        .expect_err("a request's name with a leading zero");
    assert_eq!(failure(err), invalid(&["privacy_request"]));
    get_task(&mut c, &format!("tasks/{id}")).await;
    server.finish().await;
}

/// A worker's name and a system's reference are identifiers an operator
/// reads and searches for: a control character (NUL, CR, LF, ESC, DEL, C1)
/// in them is refused, naming the field.
#[tokio::test]
async fn control_characters_in_worker_identifiers_are_refused() {
    let server = TestServer::start().await;
    let pool = server.db.pool().await;
    let mut c = client(&server);
    register(&mut c, "crm").await;
    insert_tasks(&pool, "crm", "DELETE", 1).await;
    for bad in [
        "w1\0",
        "w1\r\nforged",
        "w\u{1b}1",
        "w1\u{7f}",
        "w1\u{9b}",
        "w1\t",
    ] {
        let err = c
            .claim_tasks(claim_request("crm", bad, 1, 60))
            .await
            .expect_err(bad);
        assert_eq!(failure(err), invalid(&["worker"]), "{bad:?}");
    }
    let tasks = claim(&mut c, "crm", "w1", 1, 60).await;
    let err = c
        .complete_task(complete_request(
            &tasks[0],
            &tasks[0].lease_id,
            TaskResult {
                system_reference: "job-42\nforged".into(),
                ..proof(1)
            },
        ))
        .await
        .expect_err("a reference with a line break");
    assert_eq!(failure(err), invalid(&["result.system_reference"]));
    server.finish().await;
}
