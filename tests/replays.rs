//! Idempotent replays over real gRPC and PostgreSQL: a replayed request id
//! returns nothing of a subject erased since its first call, and request
//! ids belong to the caller that used them.
mod common;

use std::path::Path;

use common::clients::{claim, file_request, register_system};
use common::tls::{sha, with_token, write};
use common::{TestServer, error_reason, request_id, test_settings};
use privacy_records::proto::{
    self, ClaimTasksRequest, CreatePrivacyRequestRequest, DataAction, FieldCorrection,
    RegisterDataSystemRequest, RequestType, Task, VerifyPrivacyRequestIdentityRequest,
};
use sha2::{Digest, Sha256};
use tonic::Code;

const ANN_OLD: &str = "1 Old Secret Street";
const ANN_NEW: &str = "2 New Secret Avenue";
const BOB_NEW: &str = "3 Bob Lane";

/// The one system of these tests: it corrects and deletes account data.
fn accounts_db() -> RegisterDataSystemRequest {
    register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Correct, DataAction::Delete],
    )
}

fn correction(subject: &str, old: &str, new: &str) -> CreatePrivacyRequestRequest {
    CreatePrivacyRequestRequest {
        corrections: vec![FieldCorrection {
            field: "postal_address".into(),
            current_value: old.into(),
            corrected_value: new.into(),
        }],
        ..file_request(subject, RequestType::Correction)
    }
}

/// A claim under request id `rid` by worker `w1` with a long lease.
fn claim_request(rid: &str, system: &str) -> ClaimTasksRequest {
    ClaimTasksRequest {
        request_id: rid.into(),
        worker: "w1".into(),
        lease_seconds: 600,
        ..claim(system)
    }
}

fn text_of(tasks: &[Task]) -> String {
    format!("{tasks:?}")
}

#[tokio::test]
async fn a_replayed_claim_after_the_subjects_erasure_returns_nothing_of_the_erased_person() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(accounts_db()).await;
    c.file_and_verify(correction("ann", ANN_OLD, ANN_NEW)).await;
    c.file_and_verify(correction("bob", "", BOB_NEW)).await;

    // The worker's claim, whose response is remembered under its request id.
    let rid = request_id();
    let claimed = c.claim(claim_request(&rid, "accounts-db")).await;
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    assert!(text_of(&claimed).contains(ANN_NEW));
    for t in &claimed {
        c.complete(t).await;
    }

    // Ann is erased: her deletion request runs through the system.
    c.file_and_verify(file_request("ann", RequestType::Deletion))
        .await;
    let deletion = c
        .systems
        .claim_tasks(claim_request(&request_id(), "accounts-db"))
        .await
        .expect("claim the deletion")
        .into_inner()
        .tasks;
    assert_eq!(deletion.len(), 1);
    c.complete(&deletion[0]).await;

    // The worker replays its first claim, same id, same body.
    let replayed = c
        .systems
        .claim_tasks(claim_request(&rid, "accounts-db"))
        .await
        .expect("a replay still answers")
        .into_inner()
        .tasks;
    let text = text_of(&replayed);
    for secret in [ANN_OLD, ANN_NEW] {
        assert!(!text.contains(secret), "{secret:?} came back: {text}");
    }
    assert!(
        replayed.iter().all(|t| t.subject_id != "ann"),
        "no task of the erased person: {text}"
    );
    // The other person's task is still the replay's answer.
    assert_eq!(replayed.len(), 1, "{text}");
    assert_eq!(replayed[0].subject_id, "bob");
    assert!(text.contains(BOB_NEW));
    server.finish().await;
}

#[tokio::test]
async fn a_replayed_request_after_the_subjects_erasure_is_refused_without_its_data() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(accounts_db()).await;
    let create = correction("ann", ANN_OLD, ANN_NEW);
    let created = c
        .requests
        .create_privacy_request(create.clone())
        .await
        .expect("create")
        .into_inner();
    assert!(format!("{created:?}").contains(ANN_NEW));
    c.requests
        .verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
            name: created.name.clone(),
            request_id: request_id(),
            method: "account login".into(),
            agent_evidence_reference: String::new(),
        })
        .await
        .expect("verify");
    for t in c.claim(claim_request(&request_id(), "accounts-db")).await {
        c.complete(&t).await;
    }
    c.file_and_verify(file_request("ann", RequestType::Deletion))
        .await;
    for t in c.claim(claim_request(&request_id(), "accounts-db")).await {
        c.complete(&t).await;
    }

    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy_requests")
        .fetch_one(&server.db.pool().await)
        .await
        .expect("count");
    let refused = c
        .requests
        .create_privacy_request(create)
        .await
        .expect_err("the stored response went with the subject");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&refused).0, "STORED_RESPONSE_ERASED");
    for secret in [ANN_OLD, ANN_NEW] {
        assert!(!refused.message().contains(secret));
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy_requests")
        .fetch_one(&server.db.pool().await)
        .await
        .expect("count");
    assert_eq!(before, after, "the replay runs nothing again");
    server.finish().await;
}

const CONSOLE_TOKEN: &str = "console-token-0123456789";
const WORKER_TOKEN: &str = "accounts-worker-token-0123456789";

fn callers_file(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[[caller]]
name = "privacy-console"
token_sha256 = ["{console}"]
allow = ["*"]

[[caller]]
name = "accounts-worker"
token_sha256 = ["{worker}"]
allow = ["privacy.v1.DataSystemService/*"]
data_systems = ["accounts-db"]
"#,
        console = sha(CONSOLE_TOKEN),
        worker = sha(WORKER_TOKEN),
    );
    write(dir, "callers.toml", &text)
}

#[tokio::test]
async fn another_caller_replaying_a_request_id_does_not_receive_the_first_callers_stored_response()
{
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(callers_file(dir.path()));
    let server = TestServer::start_with(settings).await;
    let mut c = server.clients();
    c.systems
        .register_data_system(with_token(accounts_db(), CONSOLE_TOKEN))
        .await
        .expect("register");
    let created = c
        .requests
        .create_privacy_request(with_token(
            correction("ann", ANN_OLD, ANN_NEW),
            CONSOLE_TOKEN,
        ))
        .await
        .expect("create")
        .into_inner();
    c.requests
        .verify_privacy_request_identity(with_token(
            VerifyPrivacyRequestIdentityRequest {
                name: created.name,
                request_id: request_id(),
                method: "account login".into(),
                agent_evidence_reference: String::new(),
            },
            CONSOLE_TOKEN,
        ))
        .await
        .expect("verify");

    let rid = request_id();
    let mine = c
        .systems
        .claim_tasks(with_token(claim_request(&rid, "accounts-db"), WORKER_TOKEN))
        .await
        .expect("the worker's claim")
        .into_inner()
        .tasks;
    assert_eq!(mine.len(), 1);

    // Another caller sends the same request id and body: its own call, not
    // a replay of the worker's (the task is leased, so it gets nothing).
    let theirs = c
        .systems
        .claim_tasks(with_token(
            claim_request(&rid, "accounts-db"),
            CONSOLE_TOKEN,
        ))
        .await
        .expect("the console's claim")
        .into_inner()
        .tasks;
    assert!(theirs.is_empty(), "{theirs:?}");
    assert!(!text_of(&theirs).contains(&mine[0].lease_id));

    // The worker's own replay still answers with its first response.
    let again = c
        .systems
        .claim_tasks(with_token(claim_request(&rid, "accounts-db"), WORKER_TOKEN))
        .await
        .expect("the worker's replay")
        .into_inner()
        .tasks;
    assert_eq!(again, mine);
    server.finish().await;
}

#[tokio::test]
async fn without_authentication_a_replay_from_a_new_connection_returns_the_stored_response() {
    let server = TestServer::start().await;
    server.clients().register(accounts_db()).await;
    server
        .clients()
        .file_and_verify(correction("ann", ANN_OLD, ANN_NEW))
        .await;
    let rid = request_id();
    let first = server
        .clients()
        .systems
        .claim_tasks(claim_request(&rid, "accounts-db"))
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(first.tasks.len(), 1);
    let again = server
        .clients()
        .systems
        .claim_tasks(claim_request(&rid, "accounts-db"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(again, first);
    server.finish().await;
}

#[tokio::test]
async fn a_workers_failure_message_about_the_person_does_not_outlive_the_erasure() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(accounts_db()).await;
    c.file_and_verify(correction("ann", ANN_OLD, ANN_NEW)).await;
    let task = c
        .claim(claim_request(&request_id(), "accounts-db"))
        .await
        .remove(0);
    c.systems
        .fail_task(proto::FailTaskRequest {
            name: task.name.clone(),
            request_id: request_id(),
            lease_id: task.lease_id.clone(),
            retryable: false,
            error_message: format!("no row to update at {ANN_NEW}"),
        })
        .await
        .expect("fail");

    c.file_and_verify(file_request("ann", RequestType::Deletion))
        .await;
    for t in c
        .systems
        .claim_tasks(claim_request(&request_id(), "accounts-db"))
        .await
        .expect("claim the deletion")
        .into_inner()
        .tasks
    {
        c.complete(&t).await;
    }

    let after = c
        .systems
        .get_task(proto::GetTaskRequest {
            name: task.name.clone(),
        })
        .await
        .expect("the task is still there")
        .into_inner();
    assert!(
        !format!("{after:?}").contains(ANN_NEW),
        "the failure message outlived the erasure: {after:?}"
    );
    let pool = server.db.pool().await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasks WHERE last_error LIKE '%' || $1 || '%'")
            .bind(ANN_NEW)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(left, 0);
    pool.close().await;
    server.finish().await;
}

/// The plain SHA-256 a request's fingerprint was before it was keyed.
fn plain_fingerprint(method: &str, request: &CreatePrivacyRequestRequest) -> Vec<u8> {
    use prost::Message;
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0u8]);
    h.update(request.encode_to_vec());
    h.finalize().to_vec()
}

#[tokio::test]
async fn a_stored_fingerprint_cannot_be_tested_against_guesses_of_the_request() {
    const METHOD: &str = "privacy.v1.PrivacyRequestService/CreatePrivacyRequest";
    let server = TestServer::start().await;
    let mut c = server.clients().requests;
    let req = correction("ann", ANN_OLD, ANN_NEW);
    let first = c
        .create_privacy_request(req.clone())
        .await
        .expect("create")
        .into_inner();
    let pool = server.db.pool().await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT request_hash FROM idempotency_keys WHERE request_id = $1")
            .bind(&req.request_id)
            .fetch_one(&pool)
            .await
            .expect("the key");
    assert_ne!(
        stored,
        plain_fingerprint(METHOD, &req),
        "whoever reads the table could hash guesses of the corrections and compare"
    );

    // A key stored before fingerprints were keyed still replays.
    sqlx::query("UPDATE idempotency_keys SET request_hash = $2 WHERE request_id = $1")
        .bind(&req.request_id)
        .bind(plain_fingerprint(METHOD, &req))
        .execute(&pool)
        .await
        .expect("an older key");
    let again = c
        .create_privacy_request(req.clone())
        .await
        .expect("the replay of an older key")
        .into_inner();
    assert_eq!(again.name, first.name);
    let other = CreatePrivacyRequestRequest {
        subject_id: "bob".into(),
        ..req
    };
    let err = c
        .create_privacy_request(other)
        .await
        .expect_err("another request under the id");
    assert_eq!(error_reason(&err).0, "REQUEST_ID_REUSED", "{err:?}");
    server.finish().await;
}
