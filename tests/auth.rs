//! Callers and permissions over real gRPC and PostgreSQL: every method of
//! the contract (read from the descriptor set, so new RPCs are covered
//! without editing this file) refuses a call without credentials and a
//! caller without permission; mutual TLS names callers by certificate;
//! workers touch only their own data system's tasks; refusals are audited
//! without the secret; and a server beyond loopback will not start open.
mod common;

use std::path::Path;
use std::time::Duration;

use common::clients::register_system;
use common::raw::RawCodec;
use common::tls::{client_identity, new_ca, server_pair, sha, tls_channel, with_token, write};
use common::{TestDb, TestServer, error_reason, grant, request_id, test_settings};
use privacy_records::config::Settings;
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::data_system_service_client::DataSystemServiceClient;
use privacy_records::proto::{
    CheckConsentRequest, ClaimTasksRequest, DataAction, RegisterDataSystemRequest,
    VerifyAuditLogRequest,
};
use privacy_records::server::{Application, ServeError};
use prost::Message;
use tonic::transport::{Channel, Identity};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const CONSOLE_TOKEN: &str = "console-token-0123456789";
const NOBODY_TOKEN: &str = "nobody-token-0123456789";
const MAILER_TOKEN: &str = "mailer-token-0123456789";
const WORKER_TOKEN: &str = "crm-worker-token-0123456789";
const SCOPED_ALL_TOKEN: &str = "billing-everything-token-0123456789";

fn callers_toml() -> String {
    format!(
        r#"
[[caller]]
name = "privacy-console"
certificate_names = ["privacy-console"]
token_sha256 = ["{console}"]
allow = ["*"]

[[caller]]
name = "nobody"
token_sha256 = ["{nobody}"]
allow = []

[[caller]]
name = "mailer"
certificate_names = ["mailer"]
token_sha256 = ["{mailer}"]
allow = ["privacy.v1.ConsentService/CheckConsent", "privacy.v1.ConsentService/BatchCheckConsent"]

[[caller]]
name = "crm-worker"
token_sha256 = ["{worker}"]
allow = ["privacy.v1.DataSystemService/*"]
data_systems = ["crm"]

[[caller]]
name = "billing-everything"
token_sha256 = ["{scoped_all}"]
allow = ["*"]
data_systems = ["billing"]
"#,
        console = sha(CONSOLE_TOKEN),
        nobody = sha(NOBODY_TOKEN),
        mailer = sha(MAILER_TOKEN),
        worker = sha(WORKER_TOKEN),
        scoped_all = sha(SCOPED_ALL_TOKEN),
    )
}

/// Every RPC of the contract: (path, server-streaming).
fn contract_methods() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(privacy_records::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    methods
}

/// Calls `path` with an empty message, with the token if any; the status
/// (OK when the call went through).
async fn call_raw(channel: &Channel, path: &str, streaming: bool, token: Option<&str>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let mut request = Request::new(Vec::new());
    if let Some(token) = token {
        request = with_token(Vec::new(), token);
    }
    let path: http::uri::PathAndQuery = path.parse().expect("path");
    let outcome = if streaming {
        grpc.server_streaming(request, path, RawCodec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    };
    match outcome {
        Ok(()) => Status::ok(""),
        Err(status) => status,
    }
}

fn plain_channel(server: &TestServer) -> Channel {
    server.channel()
}

/// Refusals of one peer for one reason are written as one event per this
/// interval (with a count); short here so tests see the counts soon.
const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_millis(200);

async fn start_with_callers(dir: &Path) -> TestServer {
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir, "callers.toml", &callers_toml()));
    settings.refusal_audit_interval = REFUSAL_AUDIT_INTERVAL;
    TestServer::start_with(settings).await
}

/// The audit events of refused calls, (actor, method, request id, details),
/// once the refusals counted in them add up to `expected` (refusals of one
/// peer for one reason within an interval share one event with a count).
async fn refusal_events(
    pool: &sqlx::PgPool,
    expected: i64,
) -> Vec<(String, String, Option<String>, serde_json::Value)> {
    common::wait_until("the refusals to be counted in the audit trail", || {
        let pool = pool.clone();
        async move {
            let counted: Option<i64> = sqlx::query_scalar(
                "SELECT sum(coalesce((details->>'count')::bigint, 1))::bigint
                 FROM audit_events WHERE target = 'auth'",
            )
            .fetch_one(&pool)
            .await
            .expect("audit");
            let counted = counted.unwrap_or(0);
            assert!(
                counted <= expected,
                "{counted} refusals counted, {expected} made"
            );
            counted == expected
        }
    })
    .await;
    sqlx::query_as(
        "SELECT actor, method, request_id, details FROM audit_events
         WHERE target = 'auth' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("audit")
}

fn count_of(details: &serde_json::Value) -> i64 {
    details["count"].as_i64().unwrap_or(1)
}

#[tokio::test]
async fn every_method_refuses_strangers_and_callers_without_permission() {
    let dir = common::scratch_dir();
    // Health stays open: start_with waits for SERVING without credentials.
    let server = start_with_callers(dir.path()).await;
    let channel = plain_channel(&server);
    let methods = contract_methods();
    assert!(methods.len() > 40, "the contract has all its services");

    for (path, streaming) in &methods {
        let status = call_raw(&channel, path, *streaming, None).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{path} without credentials"
        );
        assert_eq!(error_reason(&status).0, "CALLER_UNAUTHENTICATED", "{path}");

        let status = call_raw(&channel, path, *streaming, Some("not-a-known-token")).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{path} with an unknown token"
        );

        let status = call_raw(&channel, path, *streaming, Some(NOBODY_TOKEN)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{path} for nobody");
        assert_eq!(error_reason(&status).0, "CALLER_NOT_PERMITTED", "{path}");

        let status = call_raw(&channel, path, *streaming, Some(CONSOLE_TOKEN)).await;
        assert!(
            !matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{path} for the console: {status:?}"
        );
    }

    // Health and reflection need no credentials.
    let mut health = server.health.clone();
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "privacy.v1.ConsentService".into(),
        })
        .await
        .expect("health without credentials");
    let reflection = call_raw(
        &channel,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        true,
        None,
    )
    .await;
    assert_ne!(reflection.code(), Code::Unauthenticated);

    // Each refusal is audited: who (if known), what, why; never the token.
    // Repeated refusals of one peer for one reason share an event with a
    // count; the counts add up to every refusal.
    let pool = server.db.pool().await;
    let rows = refusal_events(&pool, (methods.len() * 3) as i64).await;
    let denied_nobody: i64 = rows
        .iter()
        .filter(|(actor, _, _, details)| {
            actor == "nobody" && details["outcome"] == "PERMISSION_DENIED"
        })
        .map(|(_, _, _, details)| count_of(details))
        .sum();
    assert_eq!(denied_nobody, methods.len() as i64);
    assert!(
        rows.iter()
            .any(|(actor, method, _, details)| actor == "unauthenticated"
                && method.starts_with("privacy.v1.")
                && details["reason"] == "no credentials")
    );
    for (_, _, _, details) in &rows {
        let details = details.to_string();
        for token in [CONSOLE_TOKEN, NOBODY_TOKEN, "not-a-known-token"] {
            assert!(!details.contains(token), "a token reached the audit trail");
        }
    }
    // The refusals are sealed into the hash chain like any other event.
    let mut audit = AuditServiceClient::new(channel.clone());
    common::wait_until("the refusals to be sealed", || {
        let mut audit = audit.clone();
        async move {
            let verdict = audit
                .verify_audit_log(with_token(VerifyAuditLogRequest::default(), CONSOLE_TOKEN))
                .await
                .expect("verify")
                .into_inner();
            assert!(verdict.intact, "{verdict:?}");
            verdict.unsealed_events == 0
        }
    })
    .await;
    let verdict = audit
        .verify_audit_log(with_token(VerifyAuditLogRequest::default(), CONSOLE_TOKEN))
        .await
        .expect("verify")
        .into_inner();
    assert!(verdict.events_verified >= rows.len() as i64);
    server.finish().await;
}

#[tokio::test]
async fn the_audit_trail_names_the_authenticated_caller() {
    let dir = common::scratch_dir();
    let server = start_with_callers(dir.path()).await;
    let mut consent = ConsentServiceClient::new(plain_channel(&server));
    consent
        .record_consent(with_token(grant("ann", "api_io_storage"), CONSOLE_TOKEN))
        .await
        .expect("the console records");
    // The mailer may check, not record.
    let check = CheckConsentRequest {
        subject_id: "ann".into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    };
    consent
        .check_consent(with_token(check, MAILER_TOKEN))
        .await
        .expect("the mailer checks");
    let refused = consent
        .record_consent(with_token(grant("ann", "api_io_storage"), MAILER_TOKEN))
        .await
        .expect_err("the mailer may not record");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let pool = server.db.pool().await;
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT actor FROM audit_events WHERE method = 'privacy.v1.ConsentService/RecordConsent' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit");
    assert_eq!(actors, ["privacy-console", "mailer"]);
    let ledger: Vec<String> = sqlx::query_scalar("SELECT actor FROM consent_records")
        .fetch_all(&pool)
        .await
        .expect("ledger");
    assert_eq!(ledger, ["privacy-console"]);
    server.finish().await;
}

fn system(id: &str) -> RegisterDataSystemRequest {
    register_system(id, &["account_data"], &[DataAction::Delete])
}

#[tokio::test]
async fn a_worker_touches_only_its_own_systems_tasks() {
    let dir = common::scratch_dir();
    let server = start_with_callers(dir.path()).await;
    let mut systems = DataSystemServiceClient::new(plain_channel(&server));
    for id in ["crm", "billing"] {
        systems
            .register_data_system(with_token(system(id), CONSOLE_TOKEN))
            .await
            .expect("register");
    }
    let claim = |system: &str| ClaimTasksRequest {
        request_id: request_id(),
        data_system: format!("dataSystems/{system}"),
        worker: "w1".into(),
        max_tasks: 10,
        lease_seconds: 60,
    };
    systems
        .claim_tasks(with_token(claim("crm"), WORKER_TOKEN))
        .await
        .expect("its own system");
    let refused = systems
        .claim_tasks(with_token(claim("billing"), WORKER_TOKEN))
        .await
        .expect_err("another system");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&refused).0, "CALLER_NOT_PERMITTED");

    // A billing task, and the crm worker reaching for it by name.
    let pool = server.db.pool().await;
    let task: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (data_system_id, subject_id, action, categories, max_attempts)
         VALUES ('billing', 'ann', 'DELETE', '{account_data}', 5) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("a task");
    let get = privacy_records::proto::GetTaskRequest {
        name: format!("tasks/{task}"),
    };
    let refused = systems
        .get_task(with_token(get.clone(), WORKER_TOKEN))
        .await
        .expect_err("another system's task");
    assert_eq!(refused.code(), Code::PermissionDenied);
    systems
        .get_task(with_token(get, CONSOLE_TOKEN))
        .await
        .expect("the console sees every task");
    let billing_claim = systems
        .claim_tasks(with_token(claim("billing"), CONSOLE_TOKEN))
        .await
        .expect("the console may claim")
        .into_inner();
    let leased = &billing_claim.tasks[0];
    let complete = privacy_records::proto::CompleteTaskRequest {
        request_id: request_id(),
        name: leased.name.clone(),
        lease_id: leased.lease_id.clone(),
        result: Some(privacy_records::proto::TaskResult {
            records_affected: 1,
            ..Default::default()
        }),
    };
    let refused = systems
        .complete_task(with_token(complete, WORKER_TOKEN))
        .await
        .expect_err("completing another system's task");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let state: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_one(&pool)
        .await
        .expect("state");
    assert_eq!(state, "LEASED", "a refused completion changes nothing");
    let list_all = privacy_records::proto::ListTasksRequest::default();
    let refused = systems
        .list_tasks(with_token(list_all, WORKER_TOKEN))
        .await
        .expect_err("a scoped worker lists its own systems only");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE target = 'auth' AND actor = 'crm-worker'",
    )
    .fetch_one(&pool)
    .await
    .expect("audit");
    assert_eq!(
        audited, 4,
        "claim, get, complete and list refusals are audited"
    );
    server.finish().await;
}

#[tokio::test]
async fn mutual_tls_names_callers_by_certificate() {
    let dir = common::scratch_dir();
    let (ca_pem, ca) = new_ca();
    let (server_cert, server_key) = server_pair(&["localhost", "127.0.0.1"], &ca);
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.security.tls_cert_file = Some(write(dir.path(), "server.pem", &server_cert));
    settings.security.tls_key_file = Some(write(dir.path(), "server.key", &server_key));
    settings.security.tls_client_ca_file = Some(write(dir.path(), "ca.pem", &ca_pem));
    settings.security.health_listen = Some("127.0.0.1:0".parse().expect("addr"));

    // The plaintext health listener answers probes without TLS (the
    // harness waits on it before handing the server over).
    let server = TestServer::start_with(settings).await;
    assert_eq!(server.health_of("").await, Some(ServingStatus::Serving));
    let addr = server.addr;

    let tls = |identity: Option<Identity>| tls_channel(addr, &ca_pem, identity);
    let check = || CheckConsentRequest {
        subject_id: "ann".into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    };

    // The mailer's certificate: it may check, not record.
    let mut mailer = ConsentServiceClient::new(tls(Some(client_identity("mailer", &ca))));
    mailer.check_consent(check()).await.expect("mailer checks");
    let refused = mailer
        .record_consent(grant("ann", "api_io_storage"))
        .await
        .expect_err("mailer records");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The console's certificate records, and the audit trail names it.
    let mut console = ConsentServiceClient::new(tls(Some(client_identity("privacy-console", &ca))));
    console
        .record_consent(grant("ann", "api_io_storage"))
        .await
        .expect("console records");

    // A certificate from the CA that names no caller has no permissions.
    let mut stranger = ConsentServiceClient::new(tls(Some(client_identity("stranger", &ca))));
    let refused = stranger.check_consent(check()).await.expect_err("stranger");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // TLS without a client certificate: a bearer token, or nothing at all.
    let mut anonymous = ConsentServiceClient::new(tls(None));
    anonymous
        .check_consent(with_token(check(), MAILER_TOKEN))
        .await
        .expect("token over TLS");
    let refused = anonymous
        .check_consent(check())
        .await
        .expect_err("no credentials");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A certificate from another CA does not get through the handshake.
    let (_, other_ca) = new_ca();
    let mut forged =
        ConsentServiceClient::new(tls(Some(client_identity("privacy-console", &other_ca))));
    forged
        .check_consent(check())
        .await
        .expect_err("a certificate from an untrusted CA");

    let pool = server.db.pool().await;
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT actor FROM audit_events WHERE method = 'privacy.v1.ConsentService/RecordConsent' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit");
    assert_eq!(actors, ["mailer", "privacy-console"]);
    pool.close().await;
    server.finish().await;
}

async fn build(settings: Settings) -> Result<Application, ServeError> {
    let db = TestDb::empty().await;
    let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let outcome = Application::build(settings, pool, common::test_keyring()).await;
    db.drop_db().await;
    outcome
}

#[tokio::test]
async fn a_server_beyond_loopback_will_not_start_open() {
    let dir = common::scratch_dir();
    let open = Settings {
        listen: "0.0.0.0:0".parse().expect("addr"),
        ..test_settings()
    };
    let err = build(open.clone()).await.err().expect("refused");
    assert!(matches!(err, ServeError::Insecure { .. }), "{err}");
    assert!(err.to_string().contains("callers_file"), "{err}");

    // Tokens without TLS would cross the network in clear.
    let mut tokens_only = open.clone();
    tokens_only.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    let err = build(tokens_only).await.err().expect("refused");
    assert!(err.to_string().contains("clear text"), "{err}");

    // Explicitly insecure: starts (and says so in the log).
    let mut insecure = open;
    insecure.security.allow_insecure = true;
    build(insecure).await.expect("allowed when asked for");

    // Loopback without authentication: the quick start.
    build(test_settings()).await.expect("loopback");

    // A callers file with a typo stops the start.
    let mut typo = test_settings();
    typo.security.callers_file = Some(write(
        dir.path(),
        "typo.toml",
        "[[caller]]\nname = \"a\"\nallow = [\"privacy.v1.ConsentService/RecordConsnt\"]\n",
    ));
    let err = build(typo).await.err().expect("refused");
    assert!(matches!(err, ServeError::Callers(_)), "{err}");
}

/// A flood of refused calls with a 7 KB unknown path and a 7 KB request id:
/// the audit trail records each refusal (the counts add up to the calls)
/// in a few events, with the method recorded as unknown and the request id
/// cut to its limit, so refusals cannot fill the disk.
#[tokio::test]
async fn a_flood_of_refused_calls_writes_few_bounded_audit_events_whose_counts_add_up() {
    let dir = common::scratch_dir();
    let server = start_with_callers(dir.path()).await;
    let channel = plain_channel(&server);
    let long_path = format!("/privacy.v1.ConsentService/{}", "A".repeat(7 * 1024));
    let long_id = "r".repeat(7 * 1024);
    const FLOOD: usize = 400;
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let mut request = Request::new(Vec::new());
        request
            .metadata_mut()
            .insert("x-request-id", long_id.parse().expect("metadata"));
        // Every other call names a real method without credentials.
        let path = if i % 2 == 0 {
            long_path.as_str()
        } else {
            "/privacy.v1.ConsentService/RecordConsent"
        };
        let path: http::uri::PathAndQuery = path.parse().expect("path");
        let status = grpc
            .unary(request, path, RawCodec)
            .await
            .map(|_| ())
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let elapsed = started.elapsed();

    let pool = server.db.pool().await;
    let rows = refusal_events(&pool, FLOOD as i64).await;
    // At most the first refusal of an interval and the interval's count,
    // per interval the flood lasted (and one more for the last).
    let intervals = (elapsed.as_millis() / REFUSAL_AUDIT_INTERVAL.as_millis()) as usize + 2;
    assert!(
        rows.len() <= 2 * intervals,
        "{} events for {FLOOD} refusals over {elapsed:?}",
        rows.len()
    );
    assert!(rows.len() < FLOOD / 4, "{} events", rows.len());
    let mut unknown = 0;
    let mut known = 0;
    for (actor, method, request_id, details) in &rows {
        assert_eq!(actor, "unauthenticated");
        assert!(method.len() <= 200, "method of {} bytes", method.len());
        assert!(
            !method.contains("AAAA"),
            "the unknown path reached the trail"
        );
        let request_id = request_id.as_deref().unwrap_or_default();
        assert!(
            request_id.len() <= 128,
            "request id of {} bytes",
            request_id.len()
        );
        assert!(details.to_string().len() <= 2048, "details: {details}");
        let methods = details["methods"].as_array().cloned().unwrap_or_default();
        if method == "unknown method" || methods.iter().any(|m| m == "unknown method") {
            unknown += 1;
        }
        if method == "privacy.v1.ConsentService/RecordConsent"
            || methods
                .iter()
                .any(|m| m == "privacy.v1.ConsentService/RecordConsent")
        {
            known += 1;
        }
    }
    assert!(unknown > 0 && known > 0, "{rows:?}");
    server.finish().await;
}

/// A caller limited to one data system may name only that system: it can
/// neither re-register another system (the next deletion would skip what
/// it removed) nor read it, its lists show only its own systems, and the
/// org-wide disclosure log and report are beyond it. Each refusal is
/// PERMISSION_DENIED and audited.
#[tokio::test]
async fn a_worker_scoped_to_one_system_can_neither_rewrite_nor_read_another() {
    use privacy_records::proto::{
        Disclosure, DisclosureBasis, GetDataSystemRequest, GetDisclosureReportRequest,
        ListDataSystemsRequest, RecordDisclosureRequest,
    };
    let dir = common::scratch_dir();
    let server = start_with_callers(dir.path()).await;
    let channel = plain_channel(&server);
    let mut systems = DataSystemServiceClient::new(channel.clone());
    for id in ["crm", "billing"] {
        systems
            .register_data_system(with_token(system(id), CONSOLE_TOKEN))
            .await
            .expect("register");
    }

    // Re-registering another system, with fewer actions: refused, unchanged.
    let mut shrunk = system("billing");
    if let Some(s) = shrunk.data_system.as_mut() {
        s.actions = vec![DataAction::Export as i32];
    }
    let refused = systems
        .register_data_system(with_token(shrunk, WORKER_TOKEN))
        .await
        .expect_err("another system's registration");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&refused).0, "CALLER_NOT_PERMITTED");
    let get = |id: &str| GetDataSystemRequest {
        name: format!("dataSystems/{id}"),
    };
    let billing = systems
        .get_data_system(with_token(get("billing"), CONSOLE_TOKEN))
        .await
        .expect("the console reads")
        .into_inner();
    assert_eq!(billing.actions, [DataAction::Delete as i32]);
    // Its own registration it may replace.
    systems
        .register_data_system(with_token(system("crm"), WORKER_TOKEN))
        .await
        .expect("its own system");

    // Reading: its own system, not another (nor whether one exists).
    systems
        .get_data_system(with_token(get("crm"), WORKER_TOKEN))
        .await
        .expect("its own system");
    for id in ["billing", "no-such-system"] {
        let refused = systems
            .get_data_system(with_token(get(id), WORKER_TOKEN))
            .await
            .expect_err(id);
        assert_eq!(refused.code(), Code::PermissionDenied, "{id}");
    }
    // Nor whether a task exists: one of another system and none at all
    // are refused alike.
    let refused = systems
        .get_task(with_token(
            privacy_records::proto::GetTaskRequest {
                name: "tasks/999999".into(),
            },
            WORKER_TOKEN,
        ))
        .await
        .expect_err("no such task");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let renew = privacy_records::proto::RenewTaskLeaseRequest {
        name: "tasks/999999".into(),
        request_id: request_id(),
        lease_id: "00000000-0000-0000-0000-000000000000".into(),
        lease_seconds: 60,
    };
    let refused = systems
        .renew_task_lease(with_token(renew, WORKER_TOKEN))
        .await
        .expect_err("no such task to renew");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let listed = systems
        .list_data_systems(with_token(ListDataSystemsRequest::default(), WORKER_TOKEN))
        .await
        .expect("its list")
        .into_inner();
    let ids: Vec<_> = listed.data_systems.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["crm"]);

    // The disclosure log and its report are org-wide.
    let refused = systems
        .get_disclosure_report(with_token(
            GetDisclosureReportRequest::default(),
            WORKER_TOKEN,
        ))
        .await
        .expect_err("the org-wide report");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let disclosure = RecordDisclosureRequest {
        request_id: request_id(),
        disclosure: Some(Disclosure {
            recipient: "Ad Network".into(),
            categories: vec!["account_data".into()],
            basis: DisclosureBasis::ServiceProvider as i32,
            ..Default::default()
        }),
    };
    let refused = systems
        .record_disclosure(with_token(disclosure, WORKER_TOKEN))
        .await
        .expect_err("the org-wide log");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A scoped caller allowed everything still reaches no org-wide method.
    for method in [
        "/privacy.v1.DataSystemService/GetDisclosureReport",
        "/privacy.v1.RetentionService/GetRecordOfProcessing",
        "/privacy.v1.RetentionService/RunRetentionSweep",
        "/privacy.v1.AuditService/ListAuditEvents",
        "/privacy.v1.PrivacyRequestService/GetPrivacyRequest",
    ] {
        let status = call_raw(&channel, method, false, Some(SCOPED_ALL_TOKEN)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{method}");
    }
    let status = call_raw(
        &channel,
        "/privacy.v1.ConsentService/CheckConsent",
        false,
        Some(SCOPED_ALL_TOKEN),
    )
    .await;
    assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
    // A lifecycle event names one of its systems.
    let event = |system: &str| privacy_records::proto::RecordLifecycleEventRequest {
        request_id: request_id(),
        subject_id: "ann".into(),
        data_system: system.into(),
        event: privacy_records::proto::lifecycle_event::Kind::Activity as i32,
        ..Default::default()
    };
    let mut retention =
        privacy_records::proto::retention_service_client::RetentionServiceClient::new(
            channel.clone(),
        );
    for system in ["dataSystems/crm", ""] {
        let refused = retention
            .record_lifecycle_event(with_token(event(system), SCOPED_ALL_TOKEN))
            .await
            .expect_err(system);
        assert_eq!(refused.code(), Code::PermissionDenied, "{system:?}");
    }
    retention
        .record_lifecycle_event(with_token(event("dataSystems/billing"), SCOPED_ALL_TOKEN))
        .await
        .expect("its own system");

    let pool = server.db.pool().await;
    let rows = refusal_events(&pool, 14).await;
    let by_worker: i64 = rows
        .iter()
        .filter(|(actor, ..)| actor == "crm-worker")
        .map(|(_, _, _, details)| count_of(details))
        .sum();
    assert_eq!(
        by_worker, 7,
        "register, two gets, a task read and renewed, the report and the log: {rows:?}"
    );
    server.finish().await;
}
