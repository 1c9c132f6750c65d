//! Retention over a real server and PostgreSQL: lifecycle events set when
//! data falls due, the sweeper (driven with an injected clock, never sleeps)
//! turns due entries into tasks exactly once, legal holds block and release.
mod common;

use chrono::{DateTime, Duration, Months, Utc};
use common::clients::{Clients, register_system};
use common::{TestServer, request_id};
use privacy_records::proto::{
    self, ClaimTasksRequest, CompleteTaskRequest, CreatePrivacyRequestRequest, DataAction,
    DataSystem, GetRetentionScheduleRequest, LegalHold, Period, PeriodUnit, PlaceLegalHoldRequest,
    RecordLifecycleEventRequest, RegisterDataSystemRequest, ReleaseLegalHoldRequest, RequestType,
    RetentionOverride, ScheduleEntry, SetRetentionOverrideRequest, TaskResult,
    VerifyPrivacyRequestIdentityRequest, data_system, lifecycle_event, schedule_entry,
};
use privacy_records::retention::sweeper::{self, SweepSettings, SweepTotals};
use privacy_records::rpc::Context;
use prost_types::Timestamp;
use sqlx::PgPool;

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn time_of(t: &Option<Timestamp>) -> DateTime<Utc> {
    let t = t.as_ref().expect("time");
    DateTime::from_timestamp(t.seconds, 0).expect("valid")
}

async fn event(
    c: &mut Clients,
    subject: &str,
    kind: lifecycle_event::Kind,
    category: &str,
    at: DateTime<Utc>,
) -> Vec<ScheduleEntry> {
    c.retention
        .record_lifecycle_event(RecordLifecycleEventRequest {
            request_id: request_id(),
            subject_id: subject.into(),
            category: category.into(),
            data_system: String::new(),
            event: kind as i32,
            event_time: Some(ts(at)),
        })
        .await
        .expect("event")
        .into_inner()
        .changed
}

fn settings(batch: i64) -> SweepSettings {
    SweepSettings {
        interval: std::time::Duration::from_secs(3600),
        batch,
        task_max_attempts: 5,
        idempotency_key_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
    }
}

fn ctx() -> Context {
    Context::internal("test-sweeper", "RetentionSweeper", request_id())
}

async fn sweep_at(pool: &PgPool, now: DateTime<Utc>) -> SweepTotals {
    sweeper::sweep(pool, now, &settings(100), &ctx())
        .await
        .expect("sweep")
}

async fn tasks_of(pool: &PgPool, subject: &str) -> Vec<(String, Vec<String>, String)> {
    sqlx::query_as(
        "SELECT data_system_id, categories, action FROM tasks WHERE subject_id = $1 ORDER BY id",
    )
    .bind(subject)
    .fetch_all(pool)
    .await
    .expect("tasks")
}

async fn schedule(c: &mut Clients, subject: &str) -> Vec<ScheduleEntry> {
    c.retention
        .get_retention_schedule(GetRetentionScheduleRequest {
            subject_id: subject.into(),
        })
        .await
        .expect("schedule")
        .into_inner()
        .entries
}

fn state(e: &ScheduleEntry) -> schedule_entry::State {
    schedule_entry::State::try_from(e.state).expect("state")
}

#[tokio::test]
async fn an_account_closure_queues_deletion_exactly_thirty_days_later() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    c.register(register_system(
        "accounts-db",
        &["account_information", "payment_records"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let closed = Utc::now() - Duration::days(10);
    let changed = event(
        &mut c,
        "ann",
        lifecycle_event::Kind::AccountClosed,
        "",
        closed,
    )
    .await;
    // Account data at +30 days; payment records kept 84 months for tax law.
    assert_eq!(changed.len(), 2);
    let account = changed
        .iter()
        .find(|e| e.category == "account_information")
        .expect("account entry");
    let due = closed + Duration::days(30);
    assert_eq!(time_of(&account.due_time).timestamp(), due.timestamp());
    let payments = changed
        .iter()
        .find(|e| e.category == "payment_records")
        .expect("payments entry");
    assert_eq!(
        time_of(&payments.due_time).timestamp(),
        (closed + Months::new(84)).timestamp()
    );

    // One second before: nothing. At the due time: one task, once.
    let before = sweep_at(&pool, due - Duration::seconds(1)).await;
    assert_eq!(before.tasks_created, 0);
    assert!(tasks_of(&pool, "ann").await.is_empty());
    let at_due = sweep_at(&pool, due).await;
    assert_eq!(at_due.tasks_created, 1);
    let again = sweep_at(&pool, due + Duration::days(1)).await;
    assert_eq!(again.tasks_created, 0, "never twice");
    assert_eq!(
        tasks_of(&pool, "ann").await,
        vec![(
            "accounts-db".to_owned(),
            vec!["account_information".to_owned()],
            "DELETE".to_owned()
        )]
    );
    let entries = schedule(&mut c, "ann").await;
    let account = entries
        .iter()
        .find(|e| e.category == "account_information")
        .expect("entry");
    assert_eq!(state(account), schedule_entry::State::Tasked);
    assert!(account.task.starts_with("tasks/"));
    // The worker sees it in its queue.
    let claimed = c
        .systems
        .claim_tasks(ClaimTasksRequest {
            request_id: request_id(),
            data_system: "dataSystems/accounts-db".into(),
            worker: "w".into(),
            max_tasks: 10,
            lease_seconds: 60,
        })
        .await
        .expect("claim")
        .into_inner()
        .tasks;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].privacy_request, "");
    server.finish().await;
}

#[tokio::test]
async fn later_activity_moves_the_due_date_and_an_override_replaces_the_period() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "crm",
        &["contact_form_inquiries", "customer_deployment_data"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let t1 = Utc::now() - Duration::days(100);
    let created = event(
        &mut c,
        "bo",
        lifecycle_event::Kind::Created,
        "contact_form_inquiries",
        t1,
    )
    .await;
    assert_eq!(
        time_of(&created[0].due_time).timestamp(),
        (t1 + Months::new(12)).timestamp()
    );
    let t2 = t1 + Duration::days(40);
    let moved = event(
        &mut c,
        "bo",
        lifecycle_event::Kind::Activity,
        "contact_form_inquiries",
        t2,
    )
    .await;
    assert_eq!(
        time_of(&moved[0].due_time).timestamp(),
        (t2 + Months::new(12)).timestamp()
    );
    // A late report of older activity does not move it back.
    let stale = event(
        &mut c,
        "bo",
        lifecycle_event::Kind::Activity,
        "contact_form_inquiries",
        t1 + Duration::days(1),
    )
    .await;
    assert!(stale.is_empty());
    let entries = schedule(&mut c, "bo").await;
    assert_eq!(
        time_of(&entries[0].due_time).timestamp(),
        (t2 + Months::new(12)).timestamp()
    );

    // Deployment data: 30 days after the contract ends, unless the
    // customer's agreement says otherwise.
    c.retention
        .set_retention_override(SetRetentionOverrideRequest {
            request_id: request_id(),
            retention_override: Some(RetentionOverride {
                subject_id: "acme".into(),
                category: "customer_deployment_data".into(),
                period: Some(Period {
                    amount: 180,
                    unit: PeriodUnit::CalendarDays as i32,
                }),
                reason: "MSA 2026-14, clause 9.2".into(),
            }),
        })
        .await
        .expect("override");
    let ended = Utc::now() - Duration::days(1);
    let acme = event(
        &mut c,
        "acme",
        lifecycle_event::Kind::ContractEnded,
        "customer_deployment_data",
        ended,
    )
    .await;
    assert!(acme[0].overridden);
    assert_eq!(
        time_of(&acme[0].due_time).timestamp(),
        (ended + Duration::days(180)).timestamp()
    );
    let other = event(
        &mut c,
        "globex",
        lifecycle_event::Kind::ContractEnded,
        "customer_deployment_data",
        ended,
    )
    .await;
    assert!(!other[0].overridden);
    assert_eq!(
        time_of(&other[0].due_time).timestamp(),
        (ended + Duration::days(30)).timestamp()
    );
    server.finish().await;
}

#[tokio::test]
async fn a_legal_hold_blocks_the_sweep_until_released() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let closed = Utc::now() - Duration::days(31);
    event(
        &mut c,
        "cy",
        lifecycle_event::Kind::AccountClosed,
        "",
        closed,
    )
    .await;
    let hold = c
        .retention
        .place_legal_hold(PlaceLegalHoldRequest {
            request_id: request_id(),
            legal_hold: Some(LegalHold {
                subject_id: "cy".into(),
                reason: "Litigation 2026-CV-118".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("hold")
        .into_inner();
    assert!(hold.active);
    let swept = sweep_at(&pool, Utc::now()).await;
    assert_eq!((swept.tasks_created, swept.entries_held), (0, 1));
    let entries = schedule(&mut c, "cy").await;
    assert_eq!(state(&entries[0]), schedule_entry::State::Held);
    assert_eq!(
        entries[0].held_by,
        vec![format!("{}: Litigation 2026-CV-118", hold.name)]
    );
    // Sweeping again keeps it held and queues nothing.
    assert_eq!(sweep_at(&pool, Utc::now()).await.tasks_created, 0);

    let released = c
        .retention
        .release_legal_hold(ReleaseLegalHoldRequest {
            name: hold.name.clone(),
            request_id: request_id(),
            reason: "case settled".into(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(!released.active);
    let swept = sweep_at(&pool, Utc::now()).await;
    assert_eq!((swept.entries_released, swept.tasks_created), (1, 1));
    assert_eq!(tasks_of(&pool, "cy").await.len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn a_hold_during_a_deletion_request_completes_it_in_part_naming_the_held_scope() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    c.register(register_system(
        "billing",
        &["payment_records"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let hold = c
        .retention
        .place_legal_hold(PlaceLegalHoldRequest {
            request_id: request_id(),
            legal_hold: Some(LegalHold {
                subject_id: "dee".into(),
                category: "payment_records".into(),
                reason: "Tax audit 2025".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("hold")
        .into_inner();
    let r = c
        .requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: "dee".into(),
            request_type: RequestType::Deletion as i32,
            jurisdiction: "US-CA".into(),
            channel: proto::privacy_request::Channel::WebForm as i32,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let verified = c
        .requests
        .verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
            name: r.name.clone(),
            request_id: request_id(),
            method: "login".into(),
            agent_evidence_reference: String::new(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(verified.tasks.expect("summary").total, 1, "billing is held");
    let held = format!(
        "dataSystems/billing (payment_records): held by {}: Tax audit 2025",
        hold.name
    );
    // Payment records are also what tax law keeps: both reasons are given.
    assert_eq!(verified.exemptions.len(), 2, "{:?}", verified.exemptions);
    assert_eq!(verified.exemptions[0], held);
    assert!(
        verified.exemptions[1].starts_with("dataSystems/billing (payment_records): kept by law"),
        "{}",
        verified.exemptions[1]
    );
    let task = c
        .systems
        .claim_tasks(ClaimTasksRequest {
            request_id: request_id(),
            data_system: "dataSystems/accounts-db".into(),
            worker: "w".into(),
            max_tasks: 1,
            lease_seconds: 60,
        })
        .await
        .expect("claim")
        .into_inner()
        .tasks
        .remove(0);
    c.systems
        .complete_task(CompleteTaskRequest {
            name: task.name,
            request_id: request_id(),
            lease_id: task.lease_id,
            result: Some(TaskResult::default()),
        })
        .await
        .expect("complete");
    let finished = c
        .requests
        .get_privacy_request(proto::GetPrivacyRequestRequest { name: r.name })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        finished.state,
        proto::privacy_request::State::PartiallyCompleted as i32
    );
    assert_eq!(finished.exemptions, verified.exemptions);
    // The deletion also closed the account on the retention schedule.
    let entries = schedule(&mut c, "dee").await;
    assert!(entries.iter().any(|e| e.category == "account_information"));
    server.finish().await;
}

#[tokio::test]
async fn concurrent_sweepers_queue_each_due_entry_exactly_once() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    c.register(register_system(
        "mailer",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let closed = Utc::now() - Duration::days(40);
    for i in 0..100 {
        event(
            &mut c,
            &format!("s{i}"),
            lifecycle_event::Kind::AccountClosed,
            "account_information",
            closed,
        )
        .await;
    }
    // A sweeper that dies mid-batch: its transaction rolls back.
    {
        let mut tx = pool.begin().await.expect("begin");
        let swept = privacy_records::retention::store::sweep_batch(&mut tx, Utc::now(), 50, 5)
            .await
            .expect("batch");
        assert_eq!(swept.tasked, 50);
        drop(tx);
    }
    // Three sweepers at once, with small batches.
    let now = Utc::now();
    let small = settings(7);
    let (ca, cb, cd) = (ctx(), ctx(), ctx());
    let (a, b, d) = tokio::join!(
        sweeper::sweep(&pool, now, &small, &ca),
        sweeper::sweep(&pool, now, &small, &cb),
        sweeper::sweep(&pool, now, &small, &cd),
    );
    let total: i64 = [a, b, d]
        .into_iter()
        .map(|r| r.expect("sweep").tasks_created)
        .sum();
    assert_eq!(total, 200, "100 subjects x 2 systems");
    let (tasks, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (subject_id, data_system_id)) FROM tasks")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((tasks, distinct), (200, 200));
    let untasked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM retention_schedule WHERE state <> 'TASKED' OR task_id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(untasked, 0);
    server.finish().await;
}

#[tokio::test]
async fn a_minor_without_parental_consent_is_erased_at_once_but_for_what_the_law_keeps() {
    let mut server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    c.register(register_system(
        "accounts-db",
        &["account_information", "payment_records"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    c.register(register_system(
        "mailer",
        &["communication_records"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let flag = |subject: &str, parental_consent: bool| proto::SetSubjectMinorStatusRequest {
        request_id: request_id(),
        subject_id: subject.into(),
        minor: true,
        reason: "age stated in support ticket 77".into(),
        parental_consent,
    };
    server
        .consent
        .set_subject_minor_status(flag("kid", false))
        .await
        .expect("flag");
    let mut tasks = tasks_of(&pool, "kid").await;
    tasks.sort();
    assert_eq!(
        tasks,
        vec![
            (
                "accounts-db".to_owned(),
                vec!["account_information".to_owned()],
                "DELETE".to_owned()
            ),
            (
                "mailer".to_owned(),
                vec!["communication_records".to_owned()],
                "DELETE".to_owned()
            ),
        ],
        "payment records are kept for tax law"
    );
    // Every consent-based purpose is denied.
    let check = server
        .consent
        .check_consent(proto::CheckConsentRequest {
            subject_id: "kid".into(),
            purpose: "marketing_email".into(),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(check.verdict, proto::Verdict::Denied as i32);
    // Reporting it again erases nothing twice.
    server
        .consent
        .set_subject_minor_status(flag("kid", false))
        .await
        .expect("flag again");
    assert_eq!(tasks_of(&pool, "kid").await.len(), 2);
    // With a parent's consent nothing is erased.
    server
        .consent
        .set_subject_minor_status(flag("teen", true))
        .await
        .expect("flag with consent");
    assert!(tasks_of(&pool, "teen").await.is_empty());
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn own_records_follow_retention_too() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    let r = c
        .requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: "old-timer".into(),
            request_type: RequestType::Access as i32,
            jurisdiction: "US-CA".into(),
            channel: proto::privacy_request::Channel::Email as i32,
            identifiers: vec![proto::Identifier {
                kind: proto::identifier::Kind::EmailAddress as i32,
                value: "old@example.com".into(),
            }],
            // Sealed under the subject's data key; minimising drops it too.
            agent: Some(proto::Agent {
                display_name: "Agent".into(),
                contact: "agent@example.org".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    c.requests
        .cancel_privacy_request(proto::CancelPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            explanation: "withdrawn by the subject".into(),
        })
        .await
        .expect("cancel");
    // Closed 23 months ago: kept. 25 months ago: minimised.
    sqlx::query("UPDATE privacy_requests SET close_time = now() - interval '23 months'")
        .execute(&pool)
        .await
        .expect("age");
    assert_eq!(sweep_at(&pool, Utc::now()).await.requests_minimized, 0);
    sqlx::query("UPDATE privacy_requests SET close_time = now() - interval '25 months'")
        .execute(&pool)
        .await
        .expect("age");
    // Idempotency keys older than their week go too.
    sqlx::query("UPDATE idempotency_keys SET create_time = now() - interval '8 days'")
        .execute(&pool)
        .await
        .expect("age keys");
    let swept = sweep_at(&pool, Utc::now()).await;
    assert_eq!(swept.requests_minimized, 1);
    assert_eq!(swept.idempotency_keys_pruned, 2, "create and cancel");
    let kept = c
        .requests
        .get_privacy_request(proto::GetPrivacyRequestRequest { name: r.name })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(kept.subject_id, "minimized");
    assert_eq!(kept.explanation, "");
    assert!(kept.agent.is_none());
    assert_eq!(kept.request_type, RequestType::Access as i32);
    assert_eq!(kept.state, proto::privacy_request::State::Canceled as i32);
    let identifiers: i64 = sqlx::query_scalar("SELECT count(*) FROM request_identifiers")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(identifiers, 0);
    server.finish().await;
}

#[tokio::test]
async fn the_record_of_processing_comes_from_the_registry_and_the_policies() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "accounts-db",
        &["account_information", "payment_records"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    c.systems
        .register_data_system(RegisterDataSystemRequest {
            request_id: request_id(),
            data_system: Some(DataSystem {
                id: "email-provider".into(),
                display_name: "Email delivery".into(),
                kind: data_system::Kind::Processor as i32,
                categories: vec!["communication_records".into()],
                country: "DE".into(),
                actions: vec![DataAction::Delete as i32],
                ..Default::default()
            }),
        })
        .await
        .expect("register");
    let record = c
        .retention
        .get_record_of_processing(proto::GetRecordOfProcessingRequest {})
        .await
        .expect("record")
        .into_inner();
    assert_eq!(record.entries.len(), 2);
    let accounts = &record.entries[0];
    assert_eq!(accounts.data_system, "dataSystems/accounts-db");
    assert!(accounts.transfer_outside_eea, "US");
    let payments = accounts
        .categories
        .iter()
        .find(|c| c.category == "payment_records")
        .expect("payments");
    let policy = payments.retention_policy.as_ref().expect("policy");
    assert!(!policy.legal_reason.is_empty());
    let mailer = &record.entries[1];
    assert_eq!(mailer.kind, "PROCESSOR");
    assert!(!mailer.transfer_outside_eea, "DE is in the EU");
    server.finish().await;
}

/// Two servers on one database, each with its background sweeper running
/// every 20 ms: every due entry becomes exactly one task.
#[tokio::test]
async fn two_servers_sweeping_one_database_queue_each_entry_once() {
    let mut fast = common::test_settings();
    fast.retention_sweeper = true;
    fast.retention_sweep_interval = std::time::Duration::from_millis(20);
    fast.retention_sweep_batch = 13;
    let first = TestServer::start_with(fast.clone()).await;
    let same_db = first.db.alias();
    let mut second = TestServer::start_on(same_db, fast).await;
    let mut c = first.clients();
    let pool = first.db.pool().await;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let closed = Utc::now() - Duration::days(31);
    for i in 0..150 {
        event(
            &mut c,
            &format!("p{i}"),
            lifecycle_event::Kind::AccountClosed,
            "account_information",
            closed,
        )
        .await;
    }
    common::wait_until("every due entry to be tasked", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM retention_schedule WHERE state <> 'TASKED'")
                .fetch_one(&pool)
                .await
                .expect("count");
        left == 0
    })
    .await;
    let (tasks, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT subject_id) FROM tasks")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((tasks, distinct), (150, 150));
    let sweepers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT request_id FROM audit_events WHERE method = 'RetentionSweeper'",
    )
    .fetch_all(&pool)
    .await
    .expect("audit");
    assert!(!sweepers.is_empty(), "the sweeps are audited");
    second.shutdown().await;
    first.finish().await;
}

#[tokio::test]
async fn policies_are_installed_by_default_and_editable() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let policies = c
        .retention
        .list_retention_policies(proto::ListRetentionPoliciesRequest {})
        .await
        .expect("list")
        .into_inner()
        .retention_policies;
    let account = policies
        .iter()
        .find(|p| p.category == "account_information")
        .expect("default policy");
    assert_eq!(
        account.trigger,
        proto::retention_policy::Trigger::AccountClosed as i32
    );
    assert_eq!(account.period.as_ref().expect("period").amount, 30);
    let policy = |amount: u32| proto::RetentionPolicy {
        category: "api_debug_io".into(),
        trigger: proto::retention_policy::Trigger::Created as i32,
        period: Some(Period {
            amount,
            unit: PeriodUnit::CalendarDays as i32,
        }),
        action: proto::retention_policy::Action::Delete as i32,
        ..Default::default()
    };
    let err = c
        .retention
        .create_retention_policy(proto::CreateRetentionPolicyRequest {
            request_id: request_id(),
            retention_policy: Some(policy(7)),
        })
        .await
        .expect_err("exists");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let updated = c
        .retention
        .update_retention_policy(proto::UpdateRetentionPolicyRequest {
            request_id: request_id(),
            retention_policy: Some(policy(7)),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.period.expect("period").amount, 7);
    let err = c
        .retention
        .update_retention_policy(proto::UpdateRetentionPolicyRequest {
            request_id: request_id(),
            retention_policy: Some(proto::RetentionPolicy {
                period: Some(Period {
                    amount: 3,
                    unit: PeriodUnit::BusinessDays as i32,
                }),
                ..policy(7)
            }),
        })
        .await
        .expect_err("business days");
    assert_eq!(
        common::error_reason(&err).1,
        vec!["retention_policy.period"]
    );
    server.finish().await;
}

#[tokio::test]
async fn get_subject_shows_when_the_account_was_closed() {
    use privacy_records::proto::GetSubjectRequest;
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "crm",
        &["account_information"],
        &[DataAction::Delete, DataAction::Anonymize],
    ))
    .await;
    let subject = |id: &str| GetSubjectRequest {
        name: format!("subjects/{id}"),
    };
    let open = server.consent.clone().get_subject(subject("ana")).await;
    assert_eq!(
        open.expect_err("nothing known of ana yet").code(),
        tonic::Code::NotFound
    );

    let active = Utc::now() - Duration::days(40);
    event(&mut c, "ana", lifecycle_event::Kind::Activity, "", active).await;
    let got = server
        .consent
        .clone()
        .get_subject(subject("ana"))
        .await
        .expect("a subject known from its lifecycle events")
        .into_inner();
    assert_eq!(got.account_close_time, None, "the account is open");

    let closed = Utc::now() - Duration::days(3);
    event(
        &mut c,
        "ana",
        lifecycle_event::Kind::AccountClosed,
        "",
        closed,
    )
    .await;
    let got = server
        .consent
        .clone()
        .get_subject(subject("ana"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.account_close_time, Some(ts(closed)));
    assert!(!got.erased, "a closed account is not an erased one");
    server.finish().await;
}
