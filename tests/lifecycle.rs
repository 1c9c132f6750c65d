//! The server's life: health follows the database, load is shed at the
//! limit, shutdown lets calls in flight finish, a killed server loses no
//! acknowledged write, replicas can migrate together.
mod common;

use std::process::Stdio;

use common::{
    TestDb, TestServer, error_reason, scratch_dir, storage_grant, test_settings, wait_until,
};
use privacy_records::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::{CheckConsentRequest, RecordConsentRequest};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

fn check(subject: &str) -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: subject.into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    }
}

/// Blocks every ledger insert until the returned transaction ends.
async fn block_ledger_writes(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE consent_records IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

async fn wait_for_a_blocked_query(pool: &PgPool) {
    wait_until("a call to block on the lock", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        n > 0
    })
    .await;
}

#[tokio::test]
async fn health_follows_the_database_away_and_back_without_a_restart() {
    let dir = scratch_dir();
    let pg = EmbeddedPostgres::start(EmbeddedOptions::new(dir.path().join("data")))
        .await
        .expect("own cluster");
    // The test's own cluster's database: nothing for the harness to drop.
    let db = TestDb::unowned("postgres", &pg.database_url("postgres"));
    let server = TestServer::start_on(db, test_settings()).await;
    server
        .wait_for_health("privacy.v1.ConsentService", ServingStatus::Serving)
        .await;
    server
        .consent
        .clone()
        .record_consent(storage_grant("a"))
        .await
        .expect("write");

    pg.stop().await.expect("stop postgres");
    server.wait_for_health("", ServingStatus::NotServing).await;
    server
        .wait_for_health("privacy.v1.ConsentService", ServingStatus::NotServing)
        .await;
    let err = server
        .consent
        .clone()
        .check_consent(check("a"))
        .await
        .expect_err("no database");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_reason(&err).0, "DATABASE_UNAVAILABLE");
    assert!(
        !err.message().contains("postgres"),
        "no database text leaks: {}",
        err.message()
    );

    pg.restart().await.expect("start postgres again");
    server.wait_for_health("", ServingStatus::Serving).await;
    let mut c = server.consent.clone();
    wait_until("checks to succeed again", || {
        let mut c = c.clone();
        async move { c.check_consent(check("a")).await.is_ok() }
    })
    .await;
    let r = c
        .check_consent(check("a"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(r.verdict, privacy_records::proto::Verdict::Allowed as i32);

    let mut server = server;
    server.shutdown().await;
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_but_probes_still_answer() {
    let settings = privacy_records::config::Settings {
        max_concurrent_calls: 1,
        ..test_settings()
    };
    let server = TestServer::start_with(settings).await;
    let pool = server.db.pool().await;
    let lock = block_ledger_writes(&pool).await;
    let mut c = server.consent.clone();
    let blocked = tokio::spawn(async move { c.record_consent(storage_grant("held")).await });
    wait_for_a_blocked_query(&pool).await;

    let err = server
        .consent
        .clone()
        .check_consent(check("x"))
        .await
        .expect_err("shed");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(error_reason(&err).0, "OVERLOADED");
    assert_eq!(server.health_of("").await, Some(ServingStatus::Serving));

    lock.commit().await.expect("release");
    blocked
        .await
        .expect("join")
        .expect("the held call completes");
    server
        .consent
        .clone()
        .check_consent(check("x"))
        .await
        .expect("capacity is back");
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn shutdown_lets_a_call_in_flight_finish() {
    let mut server = TestServer::start().await;
    let pool = server.db.pool().await;
    let lock = block_ledger_writes(&pool).await;
    let mut c = server.consent.clone();
    let in_flight = tokio::spawn(async move { c.record_consent(storage_grant("late")).await });
    wait_for_a_blocked_query(&pool).await;

    server.request_shutdown();
    // New connections are refused once shutdown has begun.
    let addr = server.addr;
    wait_until("new connections to be refused", || async move {
        match Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            Err(_) => true,
            Ok(ch) => ConsentServiceClient::new(ch)
                .check_consent(check("n"))
                .await
                .is_err(),
        }
    })
    .await;
    lock.commit().await.expect("release");
    let response = in_flight
        .await
        .expect("join")
        .expect("the call in flight succeeds");
    let id = response.into_inner().record.expect("record").id;
    server.join().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_records WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 1);
    pool.close().await;
    server.db.drop_db().await;
}

/// The real binary, as a separate process, against the test database.
fn spawn_binary(db: &TestDb, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .envs(common::test_key_env())
        .env("PRIVACY_RECORDS_HEALTH_INTERVAL_MS", "100")
        .env("PRIVACY_RECORDS_LOG_FILTER", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary")
}

async fn connect_when_serving(port: u16) -> ConsentServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_until("the binary to serve", || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                .unwrap_or(false)
        }
    })
    .await;
    ConsentServiceClient::new(channel)
}

#[tokio::test]
async fn a_server_killed_right_after_acknowledging_writes_loses_none_and_retries_stay_single() {
    let db = TestDb::new().await;
    let port = common::free_port();
    let mut child = spawn_binary(&db, port);
    let mut c = connect_when_serving(port).await;
    let mut acked = Vec::new();
    let mut last = None;
    for i in 0..40 {
        let req = storage_grant(&format!("k{i}"));
        let r = c.record_consent(req.clone()).await.expect("write");
        acked.push(r.into_inner().record.expect("record").id);
        last = Some(req);
    }
    child.kill().await.expect("SIGKILL");

    let pool = db.pool().await;
    let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM consent_records ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("read");
    assert_eq!(stored, acked, "every acknowledged write survived");

    // A client that did not see the last answer retries it on a new server.
    let port = common::free_port();
    let mut child = spawn_binary(&db, port);
    let mut c = connect_when_serving(port).await;
    let retried = c
        .record_consent(last.expect("a request"))
        .await
        .expect("retry");
    assert_eq!(
        retried.into_inner().record.expect("record").id,
        *acked.last().expect("ids")
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_records")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 40);

    // SIGTERM ends it cleanly with exit code 0.
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(common::PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn two_replicas_migrating_an_empty_database_at_once_both_succeed() {
    let db = TestDb::empty().await;
    let settings = test_settings();
    let a = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let b = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let (ra, rb) = tokio::join!(
        privacy_records::db::migrate(&a),
        privacy_records::db::migrate(&b)
    );
    ra.expect("replica a");
    rb.expect("replica b");
    assert!(privacy_records::db::is_ready(&a).await);
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_is_abandoned_and_writes_nothing() {
    let server = TestServer::start().await;
    let pool = server.db.pool().await;
    let lock = block_ledger_writes(&pool).await;
    let mut request = tonic::Request::new(storage_grant("deadline"));
    request.set_timeout(std::time::Duration::from_millis(300));
    let err = server
        .consent
        .clone()
        .record_consent(request)
        .await
        .expect_err("deadline passes while blocked");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    lock.commit().await.expect("release");
    // Later calls work, and the abandoned one left nothing behind.
    server
        .consent
        .clone()
        .record_consent(storage_grant("after"))
        .await
        .expect("write");
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject_id FROM consent_records")
        .fetch_all(&pool)
        .await
        .expect("read");
    assert_eq!(subjects, vec!["after".to_string()]);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(keys, 1);
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused() {
    let settings = privacy_records::config::Settings {
        max_message_bytes: 16 * 1024,
        ..test_settings()
    };
    let server = TestServer::start_with(settings).await;
    let big = RecordConsentRequest {
        evidence: Some(privacy_records::proto::Evidence {
            kind: 1,
            description: "x".repeat(64 * 1024),
            ..Default::default()
        }),
        ..storage_grant("big")
    };
    let err = server
        .consent
        .clone()
        .record_consent(big)
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    server.finish().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_still_stops_its_embedded_database() {
    let dir = scratch_dir();
    let data_dir = dir.path().join("data");
    // Hold the port so `serve` fails after the embedded database is up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    // The cluster was created, and is no longer running.
    let pid_file = data_dir.join("pgdata").join("postmaster.pid");
    assert!(data_dir.join("pgdata").join("PG_VERSION").exists());
    assert!(
        !pid_file.exists(),
        "the embedded PostgreSQL was left running"
    );
    drop(taken);
}
