//! Reliability under load: real `privacy-records
//! serve` processes, real signals, real PostgreSQL, while many calls are in
//! flight.
//!
//! - Two server processes on one database under a write storm: every write
//!   through one, checked with its consistency token through the other, gets
//!   the verdict just written (decisions alternate, so a stale read shows).
//! - `kill -9` of a server during a RecordConsent storm: every acknowledged
//!   write is in the ledger, and retrying every request (acknowledged or not)
//!   with its request_id on a new server creates no duplicate.
//! - PostgreSQL restarted during a check storm (its own cluster): calls fail
//!   fast with UNAVAILABLE meanwhile, health goes NOT_SERVING then SERVING,
//!   and no stale answer is given after recovery (a decision changed by a
//!   third server right after the restart is seen; a write's token is
//!   honoured at once on the other server).
//! - SIGTERM during a storm: the calls in flight complete, none is lost or
//!   cut, the process exits 0.
//!
//! Each storm lasts `PRIVACY_RECORDS_STORM_SECS` seconds (default 3, a short
//! form for `cargo test`); for a longer run:
//! `PRIVACY_RECORDS_STORM_SECS=60 cargo test --test storms -- --nocapture`
//! (the counts of verified calls are printed).
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use common::{PATIENCE, TestDb, scratch_dir, test_key_env, wait_until};
use privacy_records::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::{
    CheckConsentRequest, CheckConsentResponse, ConsentDecision, ConsentSource,
    RecordConsentRequest, Verdict,
};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// An opt-in purpose without evidence rules: GRANTED allows, REFUSED denies.
const PURPOSE: &str = "api_io_storage";

/// A call that takes longer than this is hung, whatever the scenario.
const HANG: Duration = Duration::from_secs(20);

/// How long a call may take while the database is away ("fast"): well
/// below the server's pool acquire timeout, which these tests set to 10 s so
/// that waiting for it cannot pass for failing fast, and below the outage
/// (at least twice this), so that a call waiting for the database shows.
/// Refusals take milliseconds; the margin is for a loaded machine.
const FAIL_FAST: Duration = Duration::from_secs(3);

/// How long a change may take to reach a check without a token.
const FRESHNESS_BOUND: Duration = Duration::from_secs(5);

fn storm_duration() -> Duration {
    let secs = std::env::var("PRIVACY_RECORDS_STORM_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// A `privacy-records serve` child process on port 0; its address is read
/// from its own "serving gRPC" log line.
struct ServerProcess {
    name: &'static str,
    child: tokio::process::Child,
    channel: Channel,
    /// Set when the server logs that it cut calls off at the end of its grace.
    cut_calls: Arc<AtomicBool>,
    /// Set when the server logs that shutdown began (health cannot show it:
    /// the listener closes at once, so a health call may not get through).
    stopping: Arc<AtomicBool>,
}

impl ServerProcess {
    async fn spawn(name: &'static str, database_url: &str) -> ServerProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PRIVACY_RECORDS_DATABASE_URL", database_url)
            .envs(test_key_env())
            .env("PRIVACY_RECORDS_LOG_FORMAT", "json")
            .env(
                "PRIVACY_RECORDS_LOG_FILTER",
                "privacy_records::server=info,warn",
            )
            .env("PRIVACY_RECORDS_HEALTH_INTERVAL_MS", "100")
            .env("PRIVACY_RECORDS_DB_ACQUIRE_TIMEOUT_MS", "10000")
            .env("PRIVACY_RECORDS_SHUTDOWN_GRACE_MS", "15000")
            .env("PRIVACY_RECORDS_RETENTION_SWEEPER", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the server binary");
        let stderr = child.stderr.take().expect("stderr");
        let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
        let cut_calls = Arc::new(AtomicBool::new(false));
        let cut = cut_calls.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let shutdown_begun = stopping.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listen_addr_of(&line)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                if line.contains("grace period over") {
                    cut.store(true, Ordering::SeqCst);
                }
                if line.contains("shutdown requested") {
                    shutdown_begun.store(true, Ordering::SeqCst);
                }
                eprintln!("[server {name}] {line}");
            }
        });
        let addr = tokio::time::timeout(PATIENCE, addr_rx)
            .await
            .expect("the server logs its address in time")
            .expect("the server exited before serving");
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        let server = ServerProcess {
            name,
            child,
            channel,
            cut_calls,
            stopping,
        };
        server.wait_for_health(ServingStatus::Serving).await;
        server
    }

    fn consent(&self) -> ConsentServiceClient<Channel> {
        ConsentServiceClient::new(self.channel.clone())
    }

    async fn health(&self) -> Option<ServingStatus> {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    async fn wait_for_health(&self, want: ServingStatus) {
        let what = format!("server {} to be {want:?}", self.name);
        wait_until(&what, || async { self.health().await == Some(want) }).await;
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// `kill -9`, and reap it.
    async fn kill9(mut self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        self.child.wait().await.expect("reap");
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the server exits in time")
            .expect("wait")
    }
}

fn listen_addr_of(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != "serving gRPC" {
        return None;
    }
    event.get("local_addr")?.as_str()?.parse().ok()
}

fn record(subject: &str, decision: ConsentDecision) -> RecordConsentRequest {
    RecordConsentRequest {
        request_id: common::request_id(),
        subject_id: subject.into(),
        purpose: PURPOSE.into(),
        decision: decision as i32,
        source: ConsentSource::WebForm as i32,
        ..Default::default()
    }
}

fn check(subject: &str, token: &str) -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: subject.into(),
        purpose: PURPOSE.into(),
        consistency_token: token.into(),
        ..Default::default()
    }
}

fn verdict_of(decision: ConsentDecision) -> Verdict {
    match decision {
        ConsentDecision::Granted => Verdict::Allowed,
        _ => Verdict::Denied,
    }
}

/// Alternates GRANTED and REFUSED.
fn nth_decision(n: u64) -> ConsentDecision {
    if n.is_multiple_of(2) {
        ConsentDecision::Granted
    } else {
        ConsentDecision::Refused
    }
}

/// A call's outcome, or DEADLINE_EXCEEDED if it hung.
async fn within<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(HANG, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("the call hung")),
    }
}

async fn verdict_now(
    client: &mut ConsentServiceClient<Channel>,
    subject: &str,
    token: &str,
) -> Result<CheckConsentResponse, tonic::Status> {
    within(client.check_consent(check(subject, token))).await
}

/// Polls checks without a token until one answers `want`; fails after
/// `FRESHNESS_BOUND`, then asks again a few times: it must not flip back.
async fn must_see_within_bound(
    client: &mut ConsentServiceClient<Channel>,
    who: &str,
    subject: &str,
    want: Verdict,
) {
    let deadline = Instant::now() + FRESHNESS_BOUND;
    loop {
        let r = verdict_now(client, subject, "").await;
        if matches!(&r, Ok(r) if r.verdict == want as i32) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: a check without a token still answers {r:?} for {subject} \
             {FRESHNESS_BOUND:?} after the change (want {want:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        let r = verdict_now(client, subject, "")
            .await
            .unwrap_or_else(|e| panic!("{who}: check {subject}: {e:?}"));
        assert_eq!(r.verdict, want as i32, "{who}: {subject} flipped back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_agree_on_every_write_checked_with_its_token() {
    const WRITERS: u64 = 8;
    const SUBJECTS_PER_WRITER: u64 = 4;
    let db = TestDb::new().await;
    let (a, b) = tokio::join!(
        ServerProcess::spawn("a", &db.url),
        ServerProcess::spawn("b", &db.url)
    );
    let until = Instant::now() + storm_duration();
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        // Half write through a and check through b, half the other way.
        let (mut write_via, mut check_via) = if w % 2 == 0 {
            (a.consent(), b.consent())
        } else {
            (b.consent(), a.consent())
        };
        writers.spawn(async move {
            let mut pairs = 0u64;
            let mut disagreements = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                // Each subject is written by this writer only, and its
                // decision flips on every visit.
                let subject = format!("agree-{w}-{}", n % SUBJECTS_PER_WRITER);
                let decision = nth_decision(n / SUBJECTS_PER_WRITER);
                n += 1;
                let written = within(write_via.record_consent(record(&subject, decision)))
                    .await
                    .unwrap_or_else(|e| panic!("write {subject}: {e:?}"));
                let id = written.record.expect("record").id;
                let checked = verdict_now(&mut check_via, &subject, &written.consistency_token)
                    .await
                    .unwrap_or_else(|e| panic!("check {subject}: {e:?}"));
                let deciding = checked.deciding_record.as_ref().map(|r| r.id);
                if checked.verdict != verdict_of(decision) as i32 || deciding != Some(id) {
                    disagreements.push(format!(
                        "{subject}: wrote {decision:?} (record {id}), the other server \
                         answered {:?} from record {deciding:?}",
                        Verdict::try_from(checked.verdict)
                    ));
                }
                pairs += 1;
            }
            (pairs, disagreements)
        });
    }
    let mut pairs = 0;
    let mut disagreements = Vec::new();
    while let Some(done) = writers.join_next().await {
        let (p, d) = done.expect("writer");
        pairs += p;
        disagreements.extend(d);
    }
    eprintln!(
        "two-process agreement: {pairs} write/check pairs verified, {} disagreements",
        disagreements.len()
    );
    assert!(pairs > 0, "the storm made no calls");
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    a.kill9().await;
    b.kill9().await;
    db.drop_db().await;
}

/// request_id, id, subject_id, purpose_key, decision.
type LedgerRow = (String, i64, String, String, String);

/// One RecordConsent sent during the storm, and its answer if one came.
struct Attempt {
    request: RecordConsentRequest,
    acknowledged: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_write_storm_loses_no_acknowledged_write_and_retries_stay_single() {
    const WRITERS: u64 = 8;
    let db = TestDb::new().await;
    let first = ServerProcess::spawn("first", &db.url).await;
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let mut client = first.consent();
        let acked = acked.clone();
        writers.spawn(async move {
            let mut attempts = Vec::new();
            for n in 0u64.. {
                let subject = format!("kill-{w}-{}", n % 8);
                let request = record(&subject, nth_decision(n / 8));
                let outcome = within(client.record_consent(request.clone())).await;
                let acknowledged = outcome.as_ref().ok().map(|r| {
                    acked.fetch_add(1, Ordering::Relaxed);
                    r.record.as_ref().expect("record").id
                });
                attempts.push(Attempt {
                    request,
                    acknowledged,
                });
                if outcome.is_err() {
                    // The server is gone: this one's fate is unknown.
                    break;
                }
            }
            attempts
        });
    }
    tokio::time::sleep(storm_duration()).await;
    wait_until("some writes to be acknowledged", || async {
        acked.load(Ordering::Relaxed) >= 20
    })
    .await;
    first.kill9().await;
    let mut attempts = Vec::new();
    while let Some(done) = writers.join_next().await {
        attempts.extend(done.expect("writer"));
    }
    let acknowledged: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.acknowledged.is_some())
        .collect();
    let unknown = attempts.len() - acknowledged.len();

    // Every acknowledged write is in the ledger, as acknowledged.
    let pool = db.pool().await;
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT request_id, id, subject_id, purpose_key, decision FROM consent_records",
    )
    .fetch_all(&pool)
    .await
    .expect("read the ledger");
    let mut by_request: HashMap<&str, Vec<&LedgerRow>> = HashMap::new();
    for row in &rows {
        by_request.entry(row.0.as_str()).or_default().push(row);
    }
    for a in &acknowledged {
        let r = &a.request;
        let found = by_request
            .get(r.request_id.as_str())
            .unwrap_or_else(|| panic!("acknowledged write {} is not in the ledger", r.request_id));
        assert_eq!(found.len(), 1, "one ledger row for {}", r.request_id);
        let (_, id, subject, purpose, decision) = found[0];
        assert_eq!(Some(*id), a.acknowledged);
        assert_eq!(
            (subject.as_str(), purpose.as_str()),
            (r.subject_id.as_str(), PURPOSE)
        );
        let want = ConsentDecision::try_from(r.decision).expect("decision");
        assert_eq!(decision.as_str(), want.as_str_name());
    }

    // Every request is retried on a new server, twice at once: each gets one
    // answer, the acknowledged ones their original record.
    let second = ServerProcess::spawn("second", &db.url).await;
    let mut retries = JoinSet::new();
    // As many clients as wrote (more would be shed with RESOURCE_EXHAUSTED).
    let clients = Arc::new(tokio::sync::Semaphore::new(WRITERS as usize));
    for a in &attempts {
        let request = a.request.clone();
        let acknowledged = a.acknowledged;
        let (mut c1, mut c2) = (second.consent(), second.consent());
        let clients = clients.clone();
        retries.spawn(async move {
            let _client = clients.acquire().await.expect("semaphore");
            let (r1, r2) = tokio::join!(
                within(c1.record_consent(request.clone())),
                within(c2.record_consent(request.clone()))
            );
            let id1 = r1.expect("retry").record.expect("record").id;
            let id2 = r2.expect("retry").record.expect("record").id;
            assert_eq!(
                id1, id2,
                "two retries of {} got two records",
                request.request_id
            );
            if let Some(id) = acknowledged {
                assert_eq!(
                    id1, id,
                    "a retry of {} made a new record",
                    request.request_id
                );
            }
        });
    }
    while let Some(done) = retries.join_next().await {
        done.expect("retry");
    }
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT request_id) FROM consent_records")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        distinct,
        attempts.len() as i64,
        "every request is in the ledger"
    );
    assert_eq!(rows, distinct, "no request_id has two ledger rows");
    eprintln!(
        "kill -9: {} writes acknowledged before the kill, {unknown} in flight; \
         {} retried twice each, no duplicate",
        acknowledged.len(),
        attempts.len()
    );
    pool.close().await;
    second.kill9().await;
    db.drop_db().await;
}

/// The storm's phases in the PostgreSQL restart test.
const BEFORE: u8 = 0;
const OUTAGE: u8 = 1;
const RECOVERING: u8 = 2;
const RECOVERED: u8 = 3;

/// One check of the storm: the phase it started in, its status code and
/// how long it took.
#[derive(Debug)]
struct Observed {
    phase: u8,
    /// Which server answered (a or b), and when the call started.
    server: char,
    started: Instant,
    code: Code,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_a_check_storm_fails_fast_then_recovers_without_stale_answers() {
    const CHECKERS: u64 = 6;
    const SUBJECTS: u64 = 20;
    let dir = scratch_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        port,
        ..EmbeddedOptions::new(dir.path().join("data"))
    })
    .await
    .expect("own cluster");
    // The servers reach it over TCP, as a deployment does: a stopped server
    // then refuses connections (its Unix socket would just vanish, an error
    // clients give up on at once).
    let mut admin = PgConnection::connect(&pg.database_url("postgres"))
        .await
        .expect("connect");
    sqlx::query("ALTER SYSTEM SET listen_addresses = '127.0.0.1'")
        .execute(&mut admin)
        .await
        .expect("listen on TCP");
    admin.close().await.expect("close");
    pg.stop().await.expect("stop");
    pg.restart().await.expect("start on TCP");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (a, b) = tokio::join!(
        ServerProcess::spawn("a", &url),
        ServerProcess::spawn("b", &url)
    );
    // Subjects 1.. are decided once and never change; subject 0 is changed
    // around the restart and is not part of the storm.
    let mut seed = a.consent();
    for s in 0..SUBJECTS {
        within(seed.record_consent(record(&format!("pg-{s}"), nth_decision(s))))
            .await
            .expect("seed");
    }

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut checkers = JoinSet::new();
    for w in 0..CHECKERS {
        let mut client = if w % 2 == 0 { a.consent() } else { b.consent() };
        let (phase, paused, stop) = (phase.clone(), paused.clone(), stop.clone());
        checkers.spawn(async move {
            let mut seen = Vec::new();
            let mut wrong = Vec::new();
            let mut n = w;
            while !stop.load(Ordering::SeqCst) {
                if paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let s = 1 + n % (SUBJECTS - 1);
                n += 1;
                let started_in = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let result = verdict_now(&mut client, &format!("pg-{s}"), "").await;
                let took = started.elapsed();
                let code = match &result {
                    Ok(r) => {
                        if r.verdict != verdict_of(nth_decision(s)) as i32 {
                            wrong.push(format!("pg-{s}: {:?}", Verdict::try_from(r.verdict)));
                        }
                        Code::Ok
                    }
                    Err(e) => e.code(),
                };
                seen.push(Observed {
                    phase: started_in,
                    server: if w % 2 == 0 { 'a' } else { 'b' },
                    started,
                    code,
                    took,
                });
                if code != Code::Ok {
                    // Do not spin on a refusal.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (seen, wrong)
        });
    }

    tokio::time::sleep(storm_duration() / 3).await;
    // Calls started before the outage finish before it (a pause of a moment),
    // so each phase's calls are judged by that phase's promise.
    paused.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    phase.store(OUTAGE, Ordering::SeqCst);
    paused.store(false, Ordering::SeqCst);
    let outage = Instant::now();
    pg.stop().await.expect("stop PostgreSQL");
    // Both report the outage while the storm goes on, for longer than a
    // call may take to fail, so that calls waiting for the database show.
    tokio::join!(
        a.wait_for_health(ServingStatus::NotServing),
        b.wait_for_health(ServingStatus::NotServing)
    );
    tokio::time::sleep_until(outage + (storm_duration() / 3).max(FAIL_FAST * 2)).await;

    // Back, and before the storm resumes, a third server changes subject 0
    // (GRANTED since the seed): a and b must not keep answering the old one.
    paused.store(true, Ordering::SeqCst);
    phase.store(RECOVERING, Ordering::SeqCst);
    pg.restart().await.expect("restart PostgreSQL");
    let third = ServerProcess::spawn("third", &url).await;
    within(
        third
            .consent()
            .record_consent(record("pg-0", ConsentDecision::Refused)),
    )
    .await
    .expect("change through the third server");
    third.kill9().await;
    paused.store(false, Ordering::SeqCst);
    tokio::join!(
        a.wait_for_health(ServingStatus::Serving),
        b.wait_for_health(ServingStatus::Serving)
    );
    let (mut ca, mut cb) = (a.consent(), b.consent());
    must_see_within_bound(&mut ca, "a", "pg-0", Verdict::Denied).await;
    must_see_within_bound(&mut cb, "b", "pg-0", Verdict::Denied).await;

    // A write through a: its token is honoured by b at once, and checks
    // without a token catch up within the bound.
    let written = within(ca.record_consent(record("pg-0", ConsentDecision::Granted)))
        .await
        .expect("write after recovery");
    let r = verdict_now(&mut cb, "pg-0", &written.consistency_token)
        .await
        .expect("check with the token");
    assert_eq!(r.verdict, Verdict::Allowed as i32, "b ignored the token");
    must_see_within_bound(&mut cb, "b", "pg-0", Verdict::Allowed).await;
    must_see_within_bound(&mut ca, "a", "pg-0", Verdict::Allowed).await;

    phase.store(RECOVERED, Ordering::SeqCst);
    tokio::time::sleep(storm_duration() / 3).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    while let Some(done) = checkers.join_next().await {
        let (s, w) = done.expect("checker");
        seen.extend(s);
        wrong.extend(w);
    }
    a.kill9().await;
    b.kill9().await;
    pg.stop().await.expect("stop PostgreSQL");

    assert!(wrong.is_empty(), "wrong verdicts: {wrong:?}");
    let in_phase = |p: u8| seen.iter().filter(move |o| o.phase == p);
    let unexpected: Vec<_> = seen
        .iter()
        .filter(|o| !matches!(o.code, Code::Ok | Code::Unavailable))
        .map(|o| (o.phase, o.code, o.took))
        .collect();
    assert!(
        unexpected.is_empty(),
        "calls failed otherwise than UNAVAILABLE: {unexpected:?}"
    );
    let failed_before: Vec<_> = in_phase(BEFORE)
        .filter(|o| o.code != Code::Ok)
        .map(|o| (o.code, o.took))
        .collect();
    assert!(
        failed_before.is_empty(),
        "checks failed before the outage: {failed_before:?}"
    );
    let refused = in_phase(OUTAGE)
        .filter(|o| o.code == Code::Unavailable)
        .count();
    assert!(refused > 0, "no call saw the outage");
    // Answered or refused, but at once: none waits for the database.
    let slowest = in_phase(OUTAGE).map(|o| o.took).max().unwrap_or_default();
    let slow: Vec<_> = in_phase(OUTAGE)
        .filter(|o| o.took > FAIL_FAST)
        .map(|o| (o.server, o.code, o.started - outage, o.took))
        .collect();
    assert!(
        slow.is_empty(),
        "calls waited while the database was away (server, code, started after \
         the outage began, took): {slow:?}"
    );
    let after: Vec<&Observed> = in_phase(RECOVERED).collect();
    assert!(!after.is_empty(), "no call after the recovery");
    let failed_after: Vec<_> = after
        .iter()
        .filter(|o| o.code != Code::Ok)
        .map(|o| (o.code, o.took))
        .collect();
    assert!(
        failed_after.is_empty(),
        "checks failed after the recovery: {failed_after:?}"
    );
    eprintln!(
        "postgres restart: {} checks before, {} during the outage ({refused} UNAVAILABLE, \
         slowest {slowest:?}), {} after the recovery",
        in_phase(BEFORE).count(),
        in_phase(OUTAGE).count(),
        after.len()
    );
}

/// Holds every ledger insert until the returned transaction ends.
async fn block_ledger_writes(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE consent_records IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_storm_lets_every_call_in_flight_complete() {
    const WRITERS: u64 = 6;
    const CHECKERS: u64 = 6;
    let db = TestDb::new().await;
    let mut server = ServerProcess::spawn("server", &db.url).await;
    let signalled = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for w in 0..WRITERS + CHECKERS {
        let mut client = server.consent();
        let signalled = signalled.clone();
        workers.spawn(async move {
            // (request, answered OK, sent before SIGTERM)
            let mut writes = Vec::new();
            let mut checks = Vec::new();
            for n in 0u64.. {
                let subject = format!("term-{w}-{}", n % 8);
                let before = !signalled.load(Ordering::SeqCst);
                let ok = if w < WRITERS {
                    let request = record(&subject, nth_decision(n / 8));
                    let outcome = within(client.record_consent(request.clone())).await;
                    let ok = outcome.is_ok();
                    writes.push((request, outcome.map(|_| ()), before));
                    ok
                } else {
                    let outcome = verdict_now(&mut client, &subject, "").await;
                    let ok = outcome.is_ok();
                    checks.push((outcome.map(|_| ()), before));
                    ok
                };
                if !ok {
                    break;
                }
            }
            (writes, checks)
        });
    }
    tokio::time::sleep(storm_duration()).await;

    // Hold the writers in the database, so calls are surely in flight when
    // the signal comes, and let them go once shutdown has begun. Writes are
    // grouped into shared commits, so a blocked statement holds several
    // writers' calls, and the others queue behind the blocked ones: once a
    // statement waits, no write can finish, and each writer's call is in
    // flight a moment later.
    let pool = db.pool().await;
    let lock = block_ledger_writes(&pool).await;
    wait_until("a write to wait on the ledger", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        n >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    signalled.store(true, Ordering::SeqCst);
    server.sigterm();
    wait_until("the server to begin its shutdown", || async {
        server.stopping.load(Ordering::SeqCst)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.commit().await.expect("release the writers");
    let status = server.wait_exit().await;

    let mut writes = Vec::new();
    let mut checks = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (w, c) = done.expect("worker");
        writes.extend(w);
        checks.extend(c);
    }
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !server.cut_calls.load(Ordering::SeqCst),
        "the server cut calls off at the end of its grace period"
    );

    // The writes held at the signal all completed.
    let held: Vec<_> = writes.iter().filter(|(_, _, before)| *before).collect();
    let failed_held: Vec<_> = held
        .iter()
        .filter_map(|(r, outcome, _)| outcome.as_ref().err().map(|e| (&r.subject_id, e)))
        .collect();
    assert!(
        failed_held.is_empty(),
        "calls in flight at SIGTERM failed: {failed_held:?}"
    );
    let failed_checks: Vec<_> = checks
        .iter()
        .filter(|(outcome, before)| *before && outcome.is_err())
        .collect();
    assert!(
        failed_checks.is_empty(),
        "checks sent before SIGTERM failed: {failed_checks:?}"
    );
    // After it, calls are refused, not cut: a refused write was not applied,
    // an acknowledged one was.
    for (_, outcome, _) in &writes {
        if let Err(e) = outcome {
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        }
    }
    let in_ledger: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM consent_records")
            .fetch_all(&pool)
            .await
            .expect("read the ledger")
            .into_iter()
            .collect();
    for (request, outcome, _) in &writes {
        assert_eq!(
            in_ledger.contains(&request.request_id),
            outcome.is_ok(),
            "write {} answered {outcome:?}",
            request.request_id
        );
    }
    eprintln!(
        "SIGTERM: {} writes ({} held in flight at the signal) and {} checks, none lost",
        writes.len(),
        WRITERS,
        checks.len()
    );
    pool.close().await;
    db.drop_db().await;
}
