//! Personal data at rest: identifiers, evidence, agent details,
//! corrections and exports are sealed under per-subject data keys; the API
//! still answers with them in clear; erasing a subject destroys its data
//! key; rotate-key re-wraps data keys; the embedded install generates its
//! keyring file.
mod common;

use common::clients::{Clients, claim, file_request, register_system};
use common::{TestServer, request_id, test_keyring};
use privacy_records::keys::{self, Keyring};
use privacy_records::proto::{
    self, Agent, ClaimTasksRequest, CompleteTaskRequest, CreatePrivacyRequestRequest, DataAction,
    Evidence, FieldCorrection, GetAccessPackageRequest, GetPrivacyRequestRequest, GetTaskRequest,
    Identifier, ListConsentRecordsRequest, RecordConsentRequest, RequestType, Task, TaskResult,
    identifier,
};
use sqlx::PgPool;

const EMAIL: &str = "ann.secret@example.com";
const PHONE: &str = "+15555550123";
const EVIDENCE_REF: &str = "MSA-secret-ref-4711";
const EVIDENCE_TEXT: &str = "Signed by Ann Secret-Signer on paper";
const AGENT_NAME: &str = "Agent Smith-Secret";
const AGENT_CONTACT: &str = "agent.secret@example.org";
const AGENT_EVIDENCE: &str = "POA-secret-99";
const CORRECTED: &str = "ann.corrected.secret@example.com";
const EXPORT_SECRET: &str = "Ann Secret-Export";

fn grant_with_evidence(subject: &str, rid: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        request_id: rid.into(),
        subject_id: subject.into(),
        purpose: "model_training".into(),
        decision: proto::ConsentDecision::Granted as i32,
        source: proto::ConsentSource::WrittenAgreementSource as i32,
        evidence: Some(Evidence {
            kind: proto::EvidenceKind::WrittenAgreement as i32,
            reference: EVIDENCE_REF.into(),
            description: EVIDENCE_TEXT.into(),
        }),
        ..Default::default()
    }
}

fn request(subject: &str, t: RequestType) -> CreatePrivacyRequestRequest {
    CreatePrivacyRequestRequest {
        identifiers: vec![
            Identifier {
                kind: identifier::Kind::EmailAddress as i32,
                value: EMAIL.into(),
            },
            Identifier {
                kind: identifier::Kind::PhoneNumber as i32,
                value: PHONE.into(),
            },
        ],
        ..file_request(subject, t)
    }
}

async fn complete(c: &mut Clients, task: &Task, export_json: &str) -> Task {
    c.systems
        .complete_task(CompleteTaskRequest {
            name: task.name.clone(),
            request_id: request_id(),
            lease_id: task.lease_id.clone(),
            result: Some(TaskResult {
                records_affected: 1,
                system_reference: "job-1".into(),
                export_json: export_json.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("complete")
        .into_inner()
}

/// Every row of every table of the schema, as JSON text (bytea as hex).
async fn dump(pool: &PgPool) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut out = Vec::new();
    for t in tables {
        let sql =
            format!("SELECT coalesce(string_agg(row_to_json(x)::text, E'\\n'), '') FROM \"{t}\" x");
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .expect("dump");
        out.push((t, text));
    }
    out
}

/// Asserts no secret is in any column, in clear or as the hex of a bytea.
fn assert_nowhere(dump: &[(String, String)], secrets: &[&str]) {
    for (table, text) in dump {
        let lower = text.to_lowercase();
        for s in secrets {
            assert!(
                !lower.contains(&s.to_lowercase()),
                "{s:?} is in clear in table {table}"
            );
            assert!(
                !lower.contains(&hex::encode(s.as_bytes())),
                "{s:?} is in a bytea of table {table}"
            );
        }
    }
}

#[tokio::test]
async fn personal_data_written_through_the_api_is_nowhere_in_clear_yet_reads_back() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Export, DataAction::Correct],
    ))
    .await;

    // Consent evidence, and a retry that replays the stored response.
    let rid = request_id();
    let first = c
        .consent
        .record_consent(grant_with_evidence("ann", &rid))
        .await
        .expect("grant")
        .into_inner();
    let replay = c
        .consent
        .record_consent(grant_with_evidence("ann", &rid))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(first.record, replay.record);
    let evidence = first.record.expect("record").evidence.expect("evidence");
    assert_eq!(evidence.reference, EVIDENCE_REF);
    assert_eq!(evidence.description, EVIDENCE_TEXT);

    // An access request filed by an agent, with identifiers; its export.
    let access = c
        .file_and_verify(CreatePrivacyRequestRequest {
            agent: Some(Agent {
                display_name: AGENT_NAME.into(),
                contact: AGENT_CONTACT.into(),
                evidence_reference: AGENT_EVIDENCE.into(),
                evidence_description: String::new(),
            }),
            ..request("ann", RequestType::Access)
        })
        .await;
    // A correction request: the task carries the values.
    let correction = c
        .file_and_verify(CreatePrivacyRequestRequest {
            corrections: vec![FieldCorrection {
                field: "email".into(),
                current_value: EMAIL.into(),
                corrected_value: CORRECTED.into(),
            }],
            ..request("ann", RequestType::Correction)
        })
        .await;
    let tasks = c
        .claim(ClaimTasksRequest {
            worker: "w".into(),
            ..claim("accounts-db")
        })
        .await;
    assert_eq!(tasks.len(), 2);
    let export = format!("{{\"name\": \"{EXPORT_SECRET}\"}}");
    for t in &tasks {
        if t.action == DataAction::Correct as i32 {
            assert_eq!(t.corrections[0].corrected_value, CORRECTED);
            complete(&mut c, t, "").await;
        } else {
            let done = complete(&mut c, t, &export).await;
            assert_eq!(done.result.expect("result").export_json, export);
        }
    }

    let pool = server.db.pool().await;
    assert_nowhere(
        &dump(&pool).await,
        &[
            EMAIL,
            PHONE,
            EVIDENCE_REF,
            EVIDENCE_TEXT,
            AGENT_NAME,
            AGENT_CONTACT,
            AGENT_EVIDENCE,
            CORRECTED,
            EXPORT_SECRET,
        ],
    );
    // Sealed values sit beside the hashes, one data key for the subject.
    let sealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request_identifiers WHERE value_sealed IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(sealed, 4, "two identifiers on each of two requests");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(keys, 1);

    // Reads give the values back in clear.
    let got = c
        .requests
        .get_privacy_request(GetPrivacyRequestRequest {
            name: access.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let agent = got.agent.expect("agent");
    assert_eq!(
        (agent.display_name.as_str(), agent.contact.as_str()),
        (AGENT_NAME, AGENT_CONTACT)
    );
    let got = c
        .requests
        .get_privacy_request(GetPrivacyRequestRequest {
            name: correction.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.corrections[0].corrected_value, CORRECTED);
    let records = c
        .consent
        .list_consent_records(ListConsentRecordsRequest {
            subject_id: "ann".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .records;
    let evidence = records
        .iter()
        .find_map(|r| r.evidence.clone())
        .expect("evidence");
    assert_eq!(evidence.reference, EVIDENCE_REF);
    let export_task = tasks
        .iter()
        .find(|t| t.action == DataAction::Export as i32)
        .expect("export task");
    let got = c
        .systems
        .get_task(GetTaskRequest {
            name: export_task.name.clone(),
        })
        .await
        .expect("get task")
        .into_inner();
    assert_eq!(got.result.expect("result").export_json, export);
    let package = c
        .requests
        .get_access_package(GetAccessPackageRequest {
            name: access.name.clone(),
        })
        .await
        .expect("package")
        .into_inner();
    assert!(package.content.contains(EXPORT_SECRET));

    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_completed_deletion_shreds_the_subjects_data_key_and_no_one_elses() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[DataAction::Delete],
    ))
    .await;
    for subject in ["ann", "bob"] {
        c.consent
            .record_consent(grant_with_evidence(subject, &request_id()))
            .await
            .expect("grant");
    }
    let pool = server.db.pool().await;
    // A backup's copy of Ann's evidence, taken before the erasure.
    let copied: Vec<u8> =
        sqlx::query_scalar("SELECT evidence_sealed FROM consent_records WHERE subject_id = 'ann'")
            .fetch_one(&pool)
            .await
            .expect("copy");
    let keyring = test_keyring();
    let before = keyring
        .opener(&pool, [copied.as_slice()])
        .await
        .expect("opener");
    assert!(
        before
            .open("ann", keys::column::CONSENT_EVIDENCE, &copied)
            .expect("open")
            .is_some()
    );

    c.file_and_verify(request("ann", RequestType::Deletion))
        .await;
    for t in c
        .claim(ClaimTasksRequest {
            worker: "w".into(),
            ..claim("accounts-db")
        })
        .await
    {
        complete(&mut c, &t, "").await;
    }

    let left: Vec<String> = sqlx::query_scalar("SELECT subject_id FROM subject_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(left, vec!["bob".to_owned()]);
    // The copy no longer opens: its data key is gone everywhere.
    let after = keyring
        .opener(&pool, [copied.as_slice()])
        .await
        .expect("opener");
    assert!(
        after
            .open("ann", keys::column::CONSENT_EVIDENCE, &copied)
            .expect("open")
            .is_none()
    );
    // The ledger keeps the decision (the law's proof), not the evidence.
    let list = |subject: &str| ListConsentRecordsRequest {
        subject_id: subject.into(),
        ..Default::default()
    };
    let ann = c
        .consent
        .list_consent_records(list("ann"))
        .await
        .expect("list")
        .into_inner()
        .records;
    let ann_evidence = ann[0].evidence.clone().expect("kind kept");
    assert_eq!(ann_evidence.reference, "");
    assert_eq!(ann_evidence.description, "");
    let bob = c
        .consent
        .list_consent_records(list("bob"))
        .await
        .expect("list")
        .into_inner()
        .records;
    assert_eq!(
        bob[0].evidence.clone().expect("evidence").reference,
        EVIDENCE_REF
    );

    pool.close().await;
    server.finish().await;
}

fn ring(masters: &[(&str, u8)]) -> Keyring {
    let parts: Vec<(&str, [u8; 32])> = masters.iter().map(|(id, b)| (*id, [*b; 32])).collect();
    Keyring::from_parts(&parts, b"test-lookup-key").expect("keyring")
}

#[tokio::test]
async fn rotation_rewraps_every_data_key_so_the_old_master_key_can_go() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    for n in 0..5 {
        c.consent
            .record_consent(grant_with_evidence(&format!("s{n}"), &request_id()))
            .await
            .expect("grant");
    }
    let pool = server.db.pool().await;
    // test-mk-1 is the tests' master key ([7; 32]); test-mk-2 becomes active.
    let both = ring(&[("test-mk-2", 9), ("test-mk-1", 7)]);
    assert_eq!(keys::rotate(&pool, &both, 2).await.expect("rotate"), 5);
    assert_eq!(keys::rotate(&pool, &both, 2).await.expect("rerun"), 0);
    let masters: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT master_key_id FROM subject_keys")
            .fetch_all(&pool)
            .await
            .expect("masters");
    assert_eq!(masters, vec!["test-mk-2".to_owned()]);

    // The old key removed from the keyring: everything still reads back.
    let new_only = ring(&[("test-mk-2", 9)]);
    let subject = privacy_records::names::SubjectId::parse("s3").expect("id");
    let records = privacy_records::consent::store::list_records(
        &new_only,
        &pool,
        Some(&subject),
        None,
        None,
        10,
    )
    .await
    .expect("read with the new key only");
    assert_eq!(
        records[0].evidence.clone().expect("evidence").reference,
        EVIDENCE_REF
    );

    // A keyring without the wrapping key fails clearly, never with garbage.
    let old_only = ring(&[("test-mk-1", 7)]);
    let err = privacy_records::consent::store::list_records(
        &old_only,
        &pool,
        Some(&subject),
        None,
        None,
        10,
    )
    .await
    .expect_err("unknown master key");
    let message = err.to_string();
    assert!(
        message.contains("test-mk-2") && message.contains("not in the keyring"),
        "{message}"
    );
    // Same id, wrong material: refused as not unwrapping.
    let impostor = ring(&[("test-mk-2", 1)]);
    let err = privacy_records::consent::store::list_records(
        &impostor,
        &pool,
        Some(&subject),
        None,
        None,
        10,
    )
    .await
    .expect_err("wrong key material");
    assert!(err.to_string().contains("does not unwrap"), "{err}");

    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_consent_without_evidence_never_touches_the_key_table() {
    let server = TestServer::start().await;
    server
        .consent
        .clone()
        .record_consent(common::refuse("ann", "marketing_email"))
        .await
        .expect("refuse");
    let pool = server.db.pool().await;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(keys, 0);
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn an_embedded_install_generates_its_keyring_once_carrying_the_old_hash_key() {
    let db = common::TestDb::new().await;
    let pool = db.pool().await;
    // The hash key an earlier version generated into the database.
    sqlx::query("INSERT INTO service_keys (name, key) VALUES ('identifier_hash_key', $1)")
        .bind(&[42u8; 32][..])
        .execute(&pool)
        .await
        .expect("legacy key");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = privacy_records::config::Settings {
        data_dir: dir.path().to_owned(),
        database_url: None,
        ..privacy_records::config::Settings::default()
    };
    let first = keys::resolve(&settings, &pool).await.expect("generate");
    let path = keys::default_file(dir.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let kind = privacy_records::identifiers::IdentifierKind::EmailAddress;
    let old = privacy_records::identifiers::HashKey::new(vec![42u8; 32]);
    assert_eq!(
        first.hash_key().expect("hash key").hash(kind, EMAIL),
        old.hash(kind, EMAIL),
        "old hashes still match"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM service_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "the key left the database");
    let again = keys::resolve(&settings, &pool).await.expect("reuse");
    assert_eq!(
        again.active_id().expect("id"),
        first.active_id().expect("id")
    );

    // With an external database and no key configured: refuse to start.
    let external = privacy_records::config::Settings {
        database_url: Some(privacy_records::config::Secret::new(db.url.clone())),
        ..settings
    };
    let err = keys::resolve(&external, &pool).await.expect_err("refused");
    assert!(
        err.to_string().contains("no master key configured"),
        "{err}"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_rotate_key_command_adds_an_active_master_key_and_rewraps_under_it() {
    let db = common::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyring.toml");
    let old = test_keyring();
    old.write_file(&path, true).expect("keyring file");
    let mut conn = pool.acquire().await.expect("conn");
    let sealed = old
        .sealer(&mut conn, "ann")
        .await
        .expect("data key")
        .seal(keys::column::TASK_EXPORT, b"{}")
        .expect("seal");
    drop(conn);

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args(["rotate-key", "--new-master-key", "--master-key-file"])
        .arg(&path)
        .env("DATABASE_URL", &db.url)
        .env_remove("PRIVACY_RECORDS_MASTER_KEY")
        .env_remove("PRIVACY_RECORDS_IDENTIFIER_HASH_KEY")
        .env("PRIVACY_RECORDS_LOG_FILTER", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run rotate-key");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("re-wrapped 1 data keys"), "{stdout}");

    let new = Keyring::from_file(&path, None).expect("rotated keyring");
    let active = new.active_id().expect("active").to_owned();
    assert_ne!(active, "test-mk-1");
    assert!(
        new.master_ids().contains(&"test-mk-1".to_owned()),
        "old key kept"
    );
    let masters: Vec<String> = sqlx::query_scalar("SELECT master_key_id FROM subject_keys")
        .fetch_all(&pool)
        .await
        .expect("masters");
    assert_eq!(masters, vec![active]);
    let opener = new
        .opener(&pool, [sealed.as_slice()])
        .await
        .expect("opener");
    assert_eq!(
        opener
            .open("ann", keys::column::TASK_EXPORT, &sealed)
            .expect("open")
            .as_deref(),
        Some(&b"{}"[..])
    );
    pool.close().await;
    db.drop_db().await;
}
