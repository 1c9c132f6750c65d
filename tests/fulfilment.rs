//! A verified request fans out to the data systems that hold its data; the
//! systems' workers claim and complete the tasks; the request completes (in
//! part when a system was exempt). Deletion leaves suppression entries and a
//! lifecycle event; access requests yield a JSON package.
mod common;

use common::clients::{self, Clients, file_request, register_system};
use common::{PATIENCE, TestServer, error_reason, eventually, request_id};
use privacy_records::proto::privacy_request::State;
use privacy_records::proto::{
    self, CheckSuppressionRequest, ClaimTasksRequest, CompleteTaskRequest,
    CreatePrivacyRequestRequest, DataAction, GetAccessPackageRequest, GetPrivacyRequestRequest,
    Identifier, PrivacyRequest, RequestType, Task, TaskResult, identifier,
};
use tonic::Code;

/// Three systems: two hold account data and can delete and export; one holds
/// only payments and can only delete; one more can do nothing relevant.
async fn three_systems(c: &mut Clients) {
    use DataAction::*;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[Export, Delete],
    ))
    .await;
    c.register(register_system(
        "email-provider",
        &["account_information", "communication_records"],
        &[Export, Delete],
    ))
    .await;
    c.register(register_system("payments", &["payment_records"], &[Delete]))
        .await;
    c.register(register_system(
        "analytics",
        &["device_and_usage_data"],
        &[Suppress],
    ))
    .await;
}

async fn file_and_verify(
    c: &mut Clients,
    subject: &str,
    t: RequestType,
    categories: &[&str],
) -> PrivacyRequest {
    let created = c
        .requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            identifiers: vec![Identifier {
                kind: identifier::Kind::EmailAddress as i32,
                value: format!("{subject}@Example.com"),
            }],
            categories: categories.iter().map(|c| c.to_string()).collect(),
            ..file_request(subject, t)
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        created.tasks.expect("summary").total,
        0,
        "no tasks before verification"
    );
    c.verify(created.name).await
}

async fn claim(c: &mut Clients, system: &str, lease_seconds: i32) -> Vec<Task> {
    c.claim(ClaimTasksRequest {
        lease_seconds,
        ..clients::claim(system)
    })
    .await
}

async fn finish(c: &mut Clients, task: &Task, result: TaskResult) -> Result<Task, tonic::Status> {
    c.systems
        .complete_task(CompleteTaskRequest {
            name: task.name.clone(),
            request_id: request_id(),
            lease_id: task.lease_id.clone(),
            result: Some(result),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(c: &mut Clients, name: &str) -> PrivacyRequest {
    c.requests
        .get_privacy_request(GetPrivacyRequestRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
}

fn state(r: &PrivacyRequest) -> State {
    State::try_from(r.state).expect("state")
}

#[tokio::test]
async fn a_deletion_fans_out_completes_and_suppresses_the_person() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    let r = file_and_verify(&mut c, "dana", RequestType::Deletion, &[]).await;
    assert_eq!(state(&r), State::InProgress);
    let summary = r.tasks.expect("summary");
    assert_eq!(
        (summary.total, summary.open),
        (2, 2),
        "one per system that deletes, but payments: tax law keeps them (tests/legal_keeps.rs)"
    );
    assert!(claim(&mut c, "payments", 60).await.is_empty());

    // Each system's worker sees only its own task.
    for system in ["accounts-db", "email-provider"] {
        let tasks = claim(&mut c, system, 60).await;
        assert_eq!(tasks.len(), 1, "{system}");
        let task = &tasks[0];
        assert_eq!(task.data_system, format!("dataSystems/{system}"));
        assert_eq!(task.privacy_request, r.name);
        assert_eq!(task.action, DataAction::Delete as i32);
        assert_eq!(task.subject_id, "dana");
        assert!(!task.lease_id.is_empty());
        let before = get(&mut c, &r.name).await;
        assert_eq!(
            state(&before),
            State::InProgress,
            "not done before every task is"
        );
        finish(
            &mut c,
            task,
            TaskResult {
                records_affected: 4,
                content_sha256: "ab".repeat(32),
                system_reference: format!("{system}-job-1"),
                ..Default::default()
            },
        )
        .await
        .expect("complete");
    }
    assert!(claim(&mut c, "analytics", 60).await.is_empty());
    let done = get(&mut c, &r.name).await;
    assert_eq!(state(&done), State::PartiallyCompleted, "payments are kept");
    assert_eq!(done.tasks.expect("summary").succeeded, 2);
    assert_eq!(done.transitions.last().expect("last").action, "TasksDone");

    // The person is suppressed by email (any case) and by subject id.
    let suppressed = c
        .requests
        .check_suppression(CheckSuppressionRequest {
            identifiers: vec![Identifier {
                kind: identifier::Kind::EmailAddress as i32,
                value: " DANA@example.COM".into(),
            }],
            subject_id: String::new(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(suppressed.suppressed);
    assert_eq!(
        suppressed.matched_identifier_kinds,
        vec![identifier::Kind::EmailAddress as i32]
    );
    assert!(!suppressed.subject_id_matched, "no subject id was asked");
    #[allow(deprecated)]
    let strings = suppressed.matched_kinds;
    assert_eq!(strings, vec!["EMAIL_ADDRESS"], "the old field stays filled");
    let by_id = c
        .requests
        .check_suppression(CheckSuppressionRequest {
            identifiers: vec![],
            subject_id: "dana".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(by_id.suppressed);
    assert!(by_id.subject_id_matched);
    assert!(by_id.matched_identifier_kinds.is_empty());
    let other = c
        .requests
        .check_suppression(CheckSuppressionRequest {
            identifiers: vec![],
            subject_id: "someone-else".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!other.suppressed);

    // The account closure is recorded for retention, identifiers are gone,
    // and the only identifier-derived data left is the suppression hashes.
    let pool = server.db.pool().await;
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lifecycle_events WHERE subject_id = 'dana' AND event = 'ACCOUNT_CLOSED'",
    )
    .fetch_one(&pool)
    .await
    .expect("lifecycle");
    assert_eq!(closed, 1);
    let identifiers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM request_identifiers WHERE subject_id = 'dana'")
            .fetch_one(&pool)
            .await
            .expect("identifiers");
    assert_eq!(identifiers, 0);
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM privacy_requests WHERE row_to_json(privacy_requests)::text ILIKE '%example.com%'",
    )
    .fetch_one(&pool)
    .await
    .expect("scan");
    assert_eq!(leaked, 0, "no email in clear anywhere in the request");
    server.finish().await;
}

#[tokio::test]
async fn an_exempt_system_makes_the_completion_partial_with_its_reason() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    let r = file_and_verify(&mut c, "erin", RequestType::Deletion, &[]).await;
    for system in ["accounts-db"] {
        let task = claim(&mut c, system, 60).await.remove(0);
        finish(
            &mut c,
            &task,
            TaskResult {
                records_affected: 1,
                ..Default::default()
            },
        )
        .await
        .expect("complete");
    }
    let task = claim(&mut c, "email-provider", 60).await.remove(0);
    let err = finish(
        &mut c,
        &task,
        TaskResult {
            exempt: true,
            ..Default::default()
        },
    )
    .await
    .expect_err("exempt without a reason");
    assert_eq!(err.code(), Code::InvalidArgument);
    finish(
        &mut c,
        &task,
        TaskResult {
            exempt: true,
            exempt_reason: "messages kept for pending litigation".into(),
            ..Default::default()
        },
    )
    .await
    .expect("exempt");
    let done = get(&mut c, &r.name).await;
    assert_eq!(state(&done), State::PartiallyCompleted);
    // What the law keeps (payments, at fan-out), then the exempt task.
    assert_eq!(done.exemptions.len(), 2, "{:?}", done.exemptions);
    assert!(done.exemptions[0].starts_with("dataSystems/payments (payment_records): kept by law"));
    assert_eq!(
        done.exemptions[1],
        "dataSystems/email-provider: messages kept for pending litigation"
    );
    let summary = done.tasks.expect("summary");
    assert_eq!((summary.succeeded, summary.exempt), (1, 1));
    server.finish().await;
}

#[tokio::test]
async fn categories_limit_the_fan_out_and_an_expired_lease_is_claimed_again() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    // Only communication records: one system.
    let r = file_and_verify(
        &mut c,
        "finn",
        RequestType::Deletion,
        &["communication_records"],
    )
    .await;
    assert_eq!(r.tasks.expect("summary").total, 1);
    let first = claim(&mut c, "email-provider", 1).await.remove(0);
    assert_eq!(first.attempts, 1);
    assert_eq!(first.categories, vec!["communication_records"]);
    // Claims find nothing while the one-second lease holds; the first one
    // after it runs out gets the task back.
    let second = eventually(PATIENCE, "the one-second lease to run out", async || {
        claim(&mut c, "email-provider", 60).await.into_iter().next()
    })
    .await;
    assert_eq!(
        second.name, first.name,
        "the expired lease returned the task"
    );
    assert_eq!(second.attempts, 2);
    let err = finish(&mut c, &first, TaskResult::default())
        .await
        .expect_err("the first worker lost its lease");
    assert_eq!(error_reason(&err).0, "LEASE_NOT_HELD");
    finish(&mut c, &second, TaskResult::default())
        .await
        .expect("the second worker completes");
    assert_eq!(state(&get(&mut c, &r.name).await), State::Completed);
    server.finish().await;
}

#[tokio::test]
async fn an_access_package_holds_the_exports_and_our_own_records() {
    let mut server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    server
        .consent
        .record_consent(common::refuse("gail", "marketing_email"))
        .await
        .expect("refuse");
    let r = file_and_verify(&mut c, "gail", RequestType::Access, &[]).await;
    assert_eq!(r.tasks.expect("summary").total, 2, "two systems export");
    // Not before it is complete.
    let err = c
        .requests
        .get_access_package(GetAccessPackageRequest {
            name: r.name.clone(),
        })
        .await
        .expect_err("not complete");
    assert_eq!(err.code(), Code::FailedPrecondition);
    for (system, data) in [
        (
            "accounts-db",
            r#"{"email": "gail@example.com", "plan": "pro"}"#,
        ),
        ("email-provider", r#"{"messages": 12}"#),
    ] {
        let task = claim(&mut c, system, 60).await.remove(0);
        assert_eq!(task.action, DataAction::Export as i32);
        finish(
            &mut c,
            &task,
            TaskResult {
                records_affected: 1,
                export_json: data.into(),
                system_reference: format!("{system}-export"),
                ..Default::default()
            },
        )
        .await
        .expect("complete");
    }
    let package = c
        .requests
        .get_access_package(GetAccessPackageRequest {
            name: r.name.clone(),
        })
        .await
        .expect("package")
        .into_inner();
    assert_eq!(package.content_type, "application/json");
    assert_eq!(package.content_sha256.len(), 64);
    let json: serde_json::Value = serde_json::from_str(&package.content).expect("json");
    assert_eq!(json["subject_id"], "gail");
    let systems = json["data_systems"].as_array().expect("systems");
    assert_eq!(systems.len(), 2);
    assert_eq!(systems[0]["data_system"], "dataSystems/accounts-db");
    assert_eq!(systems[0]["data"]["plan"], "pro");
    assert_eq!(systems[1]["data"]["messages"], 12);
    let consent = json["consent_history"].as_array().expect("consent");
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0]["purpose"], "marketing_email");
    assert_eq!(consent[0]["decision"], "REFUSED");
    assert_eq!(json["privacy_requests"][0]["name"], r.name);

    // A deletion has no package.
    let del = file_and_verify(&mut c, "gail2", RequestType::Deletion, &[]).await;
    let err = c
        .requests
        .get_access_package(GetAccessPackageRequest { name: del.name })
        .await
        .expect_err("no package");
    assert_eq!(error_reason(&err).0, "ACTION_NOT_SUPPORTED");
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn a_denied_request_abandons_its_open_tasks() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    let r = file_and_verify(&mut c, "hal", RequestType::Deletion, &[]).await;
    c.requests
        .deny_privacy_request(proto::DenyPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            denial_reason: proto::DenialReason::LegalHold as i32,
            explanation: "litigation hold".into(),
        })
        .await
        .expect("deny");
    for system in ["accounts-db", "email-provider", "payments"] {
        assert!(claim(&mut c, system, 60).await.is_empty(), "{system}");
    }
    let denied = get(&mut c, &r.name).await;
    assert_eq!(denied.tasks.expect("summary").open, 0);
    server.finish().await;
}

#[tokio::test]
async fn a_task_that_fails_for_good_shows_on_its_request_until_an_operator_acts() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    three_systems(&mut c).await;
    let r = file_and_verify(
        &mut c,
        "ivy",
        RequestType::Deletion,
        &["communication_records"],
    )
    .await;
    let task = claim(&mut c, "email-provider", 60).await.remove(0);
    let failed = c
        .systems
        .fail_task(proto::FailTaskRequest {
            name: task.name.clone(),
            request_id: request_id(),
            lease_id: task.lease_id.clone(),
            retryable: false,
            error_message: "the archive is read-only".into(),
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(failed.state, proto::task::State::Failed as i32);
    let stuck = get(&mut c, &r.name).await;
    assert_eq!(
        state(&stuck),
        State::InProgress,
        "a failed task does not complete it"
    );
    let summary = stuck.tasks.expect("summary");
    assert_eq!((summary.failed, summary.open), (1, 0));
    // The operator completes it in part, saying why.
    let done = c
        .requests
        .complete_privacy_request(proto::CompletePrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            explanation: "messages erased except the read-only archive".into(),
            exemptions: vec![
                "dataSystems/email-provider: read-only archive, erased at next rotation".into(),
            ],
        })
        .await
        .expect("complete in part")
        .into_inner();
    assert_eq!(state(&done), State::PartiallyCompleted);
    server.finish().await;
}
