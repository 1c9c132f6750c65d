//! `privacy-records-bench`: load generator for a RUNNING privacy-records server.
//!
//! It measures, per scenario, requests per second and latency (p50, p99, p99.9) with
//! `--concurrency` callers spread over `--connections` HTTP/2 channels. By default the load
//! is closed-loop: each caller issues its next call as soon as the previous one returns,
//! which finds the server's maximum rate. The gRPC scenarios are:
//!
//! - `health`: `grpc.health.v1.Health/Check` for service `""`: the cost of the gRPC
//!   stack alone, the baseline every other scenario is compared with;
//! - `check`: `CheckConsent` of `analytics_cookies` for a random seeded subject;
//! - `check-verdict`: the same check with `read_mask` `verdict,reason` (AIP-157): the
//!   answer without the deciding ledger entry;
//! - `batch`: `BatchCheckConsent` of `--batch-size` random (subject, purpose) pairs
//!   (decisions per second are reported too);
//! - `record`: `RecordConsent` (a fresh `request_id` per call) for a random seeded subject;
//! - `request`: `CreatePrivacyRequest` of an opt-out of sale in California for a random
//!   seeded subject: two refusals in the consent ledger and one task for the bench's own
//!   data system, in one transaction;
//! - `tasks`: a data-system worker's cycle, `ClaimTasks` (up to 10) then `CompleteTask` for
//!   each task claimed (tasks per second are reported too). A claim that finds the queue
//!   empty is an `QueueEmpty` error: seed enough with `--tasks`.
//!
//! Three scenarios talk to the server's PostgreSQL directly and need `--database-url` (for
//! the embedded database the server logs it at start, `embedded PostgreSQL database URL`;
//! it is `postgres://postgres@localhost/privacy_records?host=<data-dir>/run&port=5432`,
//! and its socket directory is readable by root and `postgres` only):
//!
//! - `pgbench`: PostgreSQL's own `pgbench` (`--pgbench`, else on PATH, else the newest
//!   `/usr/lib/postgresql/*/bin`) with `--pgbench-clients` clients doing a durable
//!   single-row INSERT into a scratch table the bench creates and drops
//!   (`-n -M prepared -T <duration>`, a custom script): the ceiling for durable writes on
//!   this database, measured in the same runs as `record`, whose ratio to it is reported.
//!   Its p50/p99/p99.9 come from pgbench's per-transaction log.
//! - `pgbench-record`: the same pgbench clients running RecordConsent's own statement
//!   (the server's SQL text, its parameters filled as `record` fills them): what
//!   PostgreSQL alone does with the write, the ceiling for `record` on this database.
//! - `memory`: run once, after all runs: seeds `--memory-subjects` subjects × 5 purposes
//!   straight into `consent_records` with set-based SQL (no audit or change events: use a
//!   scratch data dir), checks every pair through `BatchCheckConsent` (batches of 100,
//!   `--concurrency` in parallel) so a decision cache fills, and reports the server's
//!   VmRSS and VmHWM (`/proc/<pid>/status`) before and after. The pid is `--server-pid`,
//!   else the process listening on `--addr`'s port (found through `/proc/net/tcp*` and
//!   `/proc/*/fd`, which needs the same user or root).
//!
//! Open-loop latency: with `--rate R` the gRPC scenarios are measured open-loop instead,
//! R calls per second across all callers on a fixed schedule (a pacer thread releases
//! each call at its time; a free caller sends it). Latency is measured from the call's
//! SCHEDULED time, so a server (or client) that falls behind shows up as latency rather
//! than as fewer samples (no coordinated omission); the achieved rate is reported beside
//! the target. `--rate-fraction F` measures each gRPC scenario closed-loop and then, in
//! the same run, open-loop at F times the rate just measured (row `check@0.50`): "p99 at
//! half the maximum load" in one command. The pacer wakes with the OS timer's precision
//! (tens of microseconds), which is counted in the latency, never hidden.
//!
//! Setup seeds `--subjects` subjects named `bench-<run-uuid>-<n>` with a decision on
//! `analytics_cookies` (REFUSED for even n, GRANTED for odd n), so checks read real ledger
//! rows. `record` writes the same decision again, so the expected verdicts never change:
//! a check or batch answer with the wrong verdict is counted as a `WrongVerdict` error.
//!
//! When `request` or `tasks` is measured, setup also registers a data system of its own
//! (`bench-<uuid>`, holding one category no other system holds) and queues `--tasks` tasks
//! for it through opt-out requests.
//!
//! Each run measures every scenario in turn (run 1: health, check, batch, record, ...; run 2:
//! ...), each with `--warmup` seconds unmeasured and then `--duration` seconds measured, so
//! machine noise hits all scenarios alike. The summary gives the median over runs; a ratio
//! (to health, to pgbench) is the median of each run's own ratio.
//! Latency percentiles are over successful calls; failed calls are counted by gRPC code.
//!
//! Run it against a server that is already up:
//!
//! ```text
//! cargo build --release
//! target/release/privacy-records serve --listen 127.0.0.1:50051 --data-dir /tmp/pr/data &
//! target/release/privacy-records-bench --addr http://127.0.0.1:50051 --runs 3
//! target/release/privacy-records-bench --scenarios health,check --duration 5 --json
//! target/release/privacy-records-bench --scenarios health,check,record,pgbench \
//!     --database-url 'postgres://postgres@localhost/privacy_records?host=/tmp/pr/data/run&port=5432'
//! target/release/privacy-records-bench --scenarios check --rate-fraction 0.5
//! target/release/privacy-records-bench --scenarios memory --database-url '...'
//! ```
//!
//! Exit status: 0 on success; 1 when setup fails; 2 with `--fail-on-error` when any call failed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::data_system_service_client::DataSystemServiceClient;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    BatchCheckConsentRequest, CheckConsentRequest, ClaimTasksRequest, CompleteTaskRequest,
    ConsentCheck, ConsentDecision, ConsentSource, CreatePrivacyRequestRequest, DataAction,
    DataSystem, RecordConsentRequest, RegisterDataSystemRequest, RequestType, TaskResult, Verdict,
    data_system, privacy_request,
};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The purpose seeded for every subject and checked by the `check` scenario.
const SEEDED_PURPOSE: &str = "analytics_cookies";
/// `check-verdict`'s read mask: the answer and why, without the deciding entry.
const VERDICT_ONLY: &[&str] = &["verdict", "reason"];
/// The jurisdiction the seeded and benchmarked decisions are recorded in.
const JURISDICTION: &str = "US-CA";

#[derive(Parser, Debug)]
#[command(
    name = "privacy-records-bench",
    about = "Load test of a running privacy-records server"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Callers issuing calls back to back.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured per scenario and run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Measurements per scenario (the summary gives the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scenarios to run, comma separated, in this order within each run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "health,check,batch,record,request,tasks"
    )]
    scenarios: Vec<Scenario>,
    /// Subjects seeded before measuring.
    #[arg(long, default_value_t = 10_000)]
    subjects: usize,
    /// Tasks queued before measuring `tasks` (through opt-out requests).
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Pairs per BatchCheckConsent call (1 to 1000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds before a single call is abandoned and counted as a `Timeout` error.
    #[arg(long, default_value_t = 10)]
    call_timeout: u64,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit with status 2 when any call failed.
    #[arg(long)]
    fail_on_error: bool,
    /// Measure the gRPC scenarios open-loop at this many calls per second (all callers
    /// together) instead of closed-loop.
    #[arg(long, conflicts_with = "rate_fraction")]
    rate: Option<f64>,
    /// Measure each gRPC scenario closed-loop, then open-loop at this fraction of the
    /// rate just measured (0 < F <= 1), in the same run.
    #[arg(long)]
    rate_fraction: Option<f64>,
    /// The server's PostgreSQL, for `pgbench` and `memory` (a libpq/sqlx URL).
    #[arg(long)]
    database_url: Option<String>,
    /// The pgbench program (default: on PATH, else the newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pgbench: Option<std::path::PathBuf>,
    /// pgbench clients (connections), each inserting back to back.
    #[arg(long, default_value_t = 16)]
    pgbench_clients: usize,
    /// Subjects seeded and checked by `memory` (each with 5 purposes).
    #[arg(long, default_value_t = 1_000_000)]
    memory_subjects: usize,
    /// The server's process id, for `memory` (default: the process listening on --addr's port).
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Health,
    Check,
    CheckVerdict,
    Batch,
    Record,
    Request,
    Tasks,
    Pgbench,
    PgbenchRecord,
    Memory,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Check => "check",
            Scenario::CheckVerdict => "check-verdict",
            Scenario::Batch => "batch",
            Scenario::Record => "record",
            Scenario::Request => "request",
            Scenario::Tasks => "tasks",
            Scenario::Pgbench => "pgbench",
            Scenario::PgbenchRecord => "pgbench-record",
            Scenario::Memory => "memory",
        }
    }

    /// Whether the scenario needs the bench's data system and queued tasks.
    fn needs_tasks(self) -> bool {
        matches!(self, Scenario::Request | Scenario::Tasks)
    }

    /// Whether the scenario is a gRPC call the callers repeat (closed- or open-loop).
    fn is_grpc(self) -> bool {
        !matches!(
            self,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory
        )
    }

    /// Whether the scenario talks to PostgreSQL directly.
    fn needs_database(self) -> bool {
        matches!(
            self,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory
        )
    }
}

/// How a scenario's calls are paced.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Each caller calls again as soon as its call returns: the maximum rate.
    Closed,
    /// Calls are released on a fixed schedule; latency counts from the scheduled time.
    Open,
}

/// Tasks a `tasks` call claims at most.
const CLAIM_BATCH: i32 = 10;

/// What every caller needs to know about the seeded data.
struct Plan {
    prefix: String,
    /// The bench's data system id, and the one category it holds.
    system: String,
    category: String,
    subjects: usize,
    batch_size: usize,
    call_timeout: Duration,
}

impl Plan {
    fn subject(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// The decision seeded (and re-recorded) for subject `n`.
    fn decision(n: usize) -> ConsentDecision {
        if n.is_multiple_of(2) {
            ConsentDecision::Refused
        } else {
            ConsentDecision::Granted
        }
    }

    /// An opt-out of sale in California, limited to the bench's category so it fans
    /// out to the bench's data system only.
    fn opt_out_request(&self, n: usize) -> CreatePrivacyRequestRequest {
        CreatePrivacyRequestRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            subject_id: self.subject(n),
            request_type: RequestType::OptOutSale as i32,
            jurisdiction: JURISDICTION.to_string(),
            channel: privacy_request::Channel::WebForm as i32,
            categories: vec![self.category.clone()],
            ..Default::default()
        }
    }

    fn record_request(&self, n: usize) -> RecordConsentRequest {
        RecordConsentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            subject_id: self.subject(n),
            purpose: SEEDED_PURPOSE.to_string(),
            decision: Self::decision(n) as i32,
            source: ConsentSource::Api as i32,
            jurisdiction: JURISDICTION.to_string(),
            ..Default::default()
        }
    }
}

/// Purposes of the default catalogue used by `batch`, with the verdict expected for a
/// seeded subject: `None` means "as seeded" (the subject's own analytics_cookies decision).
const BATCH_PURPOSES: &[(&str, Option<Verdict>)] = &[
    (SEEDED_PURPOSE, None),
    ("marketing_email", Some(Verdict::Allowed)), // OPT_OUT, nothing recorded
    ("model_training", Some(Verdict::Denied)),   // OPT_IN, nothing recorded
    ("sale_of_personal_data", Some(Verdict::Denied)), // PROHIBITED
    ("service_messages", Some(Verdict::Allowed)), // NOT_CONSENT_BASED
];

fn expected_seeded_verdict(n: usize) -> Verdict {
    match Plan::decision(n) {
        ConsentDecision::Granted => Verdict::Allowed,
        _ => Verdict::Denied,
    }
}

/// A small, fast, non-cryptographic generator (SplitMix64); one per caller.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

/// One caller: the clients for its channel and its own random stream.
struct Caller {
    consent: ConsentServiceClient<Channel>,
    requests: PrivacyRequestServiceClient<Channel>,
    systems: DataSystemServiceClient<Channel>,
    health: HealthClient<Channel>,
    plan: Arc<Plan>,
    rng: Rng,
}

impl Caller {
    fn new(channel: Channel, plan: Arc<Plan>) -> Self {
        Caller {
            consent: ConsentServiceClient::new(channel.clone()),
            requests: PrivacyRequestServiceClient::new(channel.clone()),
            systems: DataSystemServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            plan,
            rng: Rng::new(),
        }
    }

    /// Issues one call; `Ok` carries the units of work done (tasks completed for `tasks`,
    /// else 1); `Err` carries the error's label (gRPC code name, `Timeout`, `WrongVerdict`).
    async fn call(&mut self, scenario: Scenario) -> Result<u64, String> {
        let timeout = self.plan.call_timeout;
        match tokio::time::timeout(timeout, self.call_inner(scenario)).await {
            Ok(result) => result,
            Err(_) => Err("Timeout".to_string()),
        }
    }

    async fn call_inner(&mut self, scenario: Scenario) -> Result<u64, String> {
        match scenario {
            Scenario::Health => self.health_check().await.map(|()| 1),
            Scenario::Check => self.check(None).await.map(|()| 1),
            Scenario::CheckVerdict => self.check(Some(VERDICT_ONLY)).await.map(|()| 1),
            Scenario::Batch => self.batch().await.map(|()| 1),
            Scenario::Record => self.record().await.map(|()| 1),
            Scenario::Request => self.request().await.map(|()| 1),
            Scenario::Tasks => self.claim_and_complete().await,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory => {
                Err("NotAGrpcScenario".to_string())
            }
        }
    }

    async fn request(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let response = self
            .requests
            .create_privacy_request(self.plan.opt_out_request(n))
            .await
            .map_err(code_label)?;
        match response.into_inner().tasks {
            Some(t) if t.total == 1 => Ok(()),
            _ => Err("NotFannedOut".to_string()),
        }
    }

    /// Claims up to `CLAIM_BATCH` tasks and completes each with proof.
    async fn claim_and_complete(&mut self) -> Result<u64, String> {
        let claimed = self
            .systems
            .claim_tasks(ClaimTasksRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                data_system: format!("dataSystems/{}", self.plan.system),
                worker: "bench".to_string(),
                max_tasks: CLAIM_BATCH,
                lease_seconds: 60,
            })
            .await
            .map_err(code_label)?
            .into_inner()
            .tasks;
        if claimed.is_empty() {
            return Err("QueueEmpty".to_string());
        }
        for task in &claimed {
            self.systems
                .complete_task(CompleteTaskRequest {
                    name: task.name.clone(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    lease_id: task.lease_id.clone(),
                    result: Some(TaskResult {
                        records_affected: 1,
                        system_reference: "bench".to_string(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(code_label)?;
        }
        Ok(claimed.len() as u64)
    }

    async fn health_check(&mut self) -> Result<(), String> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let response = self.health.check(request).await.map_err(code_label)?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            _ => Err("NotServing".to_string()),
        }
    }

    /// A CheckConsent of a seeded subject; `read_mask` names the response
    /// fields asked for (None: the whole answer).
    async fn check(&mut self, read_mask: Option<&[&str]>) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let request = CheckConsentRequest {
            subject_id: self.plan.subject(n),
            purpose: SEEDED_PURPOSE.to_string(),
            read_mask: read_mask.map(|paths| prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        let response = self
            .consent
            .check_consent(request)
            .await
            .map_err(code_label)?;
        verify_verdict(response.into_inner().verdict(), expected_seeded_verdict(n))
    }

    async fn batch(&mut self) -> Result<(), String> {
        let mut checks = Vec::with_capacity(self.plan.batch_size);
        let mut expected = Vec::with_capacity(self.plan.batch_size);
        for _ in 0..self.plan.batch_size {
            let n = self.rng.below(self.plan.subjects);
            let (purpose, verdict) = BATCH_PURPOSES[self.rng.below(BATCH_PURPOSES.len())];
            checks.push(ConsentCheck {
                subject_id: self.plan.subject(n),
                purpose: purpose.to_string(),
                ..Default::default()
            });
            expected.push(verdict.unwrap_or_else(|| expected_seeded_verdict(n)));
        }
        let request = BatchCheckConsentRequest {
            checks,
            ..Default::default()
        };
        let response = self
            .consent
            .batch_check_consent(request)
            .await
            .map_err(code_label)?;
        let results = response.into_inner().results;
        if results.len() != expected.len() {
            return Err("WrongResultCount".to_string());
        }
        results
            .iter()
            .zip(expected)
            .try_for_each(|(result, want)| verify_verdict(result.verdict(), want))
    }

    async fn record(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let request = self.plan.record_request(n);
        self.consent
            .record_consent(request)
            .await
            .map_err(code_label)?;
        Ok(())
    }
}

fn code_label(status: tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn verify_verdict(got: Verdict, want: Verdict) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err("WrongVerdict".to_string())
    }
}

/// What one caller saw during the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    /// Units of work done by the successful calls (tasks for `tasks`).
    units: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.units += other.units;
        for (label, count) in other.errors {
            *self.errors.entry(label).or_default() += count;
        }
    }
}

/// The result of one scenario in one run.
#[derive(Serialize, Clone)]
struct Measurement {
    ok: u64,
    req_per_sec: f64,
    units_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// The scheduled rate (open-loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    target_rate: Option<f64>,
    errors: BTreeMap<String, u64>,
}

impl Measurement {
    fn from_tally(mut tally: Tally, window: Duration) -> Self {
        tally.latencies_us.sort_unstable();
        let ok = tally.latencies_us.len() as u64;
        Measurement {
            ok,
            req_per_sec: ok as f64 / window.as_secs_f64(),
            units_per_sec: tally.units as f64 / window.as_secs_f64(),
            p50_ms: percentile_ms(&tally.latencies_us, 0.50),
            p99_ms: percentile_ms(&tally.latencies_us, 0.99),
            p999_ms: percentile_ms(&tally.latencies_us, 0.999),
            target_rate: None,
            errors: tally.errors,
        }
    }

    /// A measurement that could not be taken, with the reason as its only error.
    fn failed(label: String) -> Self {
        Measurement::from_tally(
            Tally {
                errors: BTreeMap::from([(label, 1)]),
                ..Tally::default()
            },
            Duration::from_secs(1),
        )
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Nearest-rank percentile of sorted microsecond latencies, in milliseconds.
fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Runs `scenario` with every caller for warmup + duration and returns the measured window.
async fn measure(
    scenario: Scenario,
    callers: &mut Vec<Caller>,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let tasks: Vec<_> = callers
        .drain(..)
        .map(|caller| tokio::spawn(drive(caller, scenario, window_start, window_end)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok((caller, tally)) => {
                callers.push(caller);
                total.merge(tally);
            }
            Err(e) => {
                *total
                    .errors
                    .entry(format!("CallerPanicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    Measurement::from_tally(total, duration)
}

/// One closed-loop caller: calls back to back until `window_end`, counting the calls that
/// complete inside [window_start, window_end].
async fn drive(
    mut caller: Caller,
    scenario: Scenario,
    window_start: Instant,
    window_end: Instant,
) -> (Caller, Tally) {
    let mut tally = Tally::default();
    while Instant::now() < window_end {
        let sent = Instant::now();
        let result = caller.call(scenario).await;
        let done = Instant::now();
        if done < window_start || done > window_end {
            continue;
        }
        match result {
            Ok(units) => {
                tally.latencies_us.push((done - sent).as_micros() as u64);
                tally.units += units;
            }
            Err(label) => *tally.errors.entry(label).or_default() += 1,
        }
    }
    (caller, tally)
}

/// Runs `scenario` open-loop at `rate` calls per second for warmup + duration: a pacer
/// thread releases call slots on a fixed schedule and a free caller takes the next slot.
/// A slot's latency runs from its scheduled time, so calls queued behind a slow server
/// (or a busy client) count their wait: the measurement omits nothing.
async fn measure_open(
    scenario: Scenario,
    callers: &mut Vec<Caller>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let start = Instant::now() + Duration::from_millis(10);
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let (slots, receiver) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    // A thread, not a tokio timer: tokio's timer has millisecond granularity, which would
    // add up to a millisecond to every latency; the OS timer is off by tens of microseconds.
    let pacer = std::thread::spawn(move || {
        for k in 0u64.. {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if due >= window_end {
                return;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if slots.send(due).is_err() {
                return;
            }
        }
    });
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let tasks: Vec<_> = callers
        .drain(..)
        .map(|caller| {
            let receiver = receiver.clone();
            tokio::spawn(drive_open(caller, scenario, receiver, window_start))
        })
        .collect();
    let mut total = Tally::default();
    let mut last_done = window_end;
    for task in tasks {
        match task.await {
            Ok((caller, tally, done)) => {
                callers.push(caller);
                total.merge(tally);
                last_done = last_done.max(done);
            }
            Err(e) => {
                *total
                    .errors
                    .entry(format!("CallerPanicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    if pacer.join().is_err() {
        *total.errors.entry("PacerPanicked".to_string()).or_default() += 1;
    }
    // Calls scheduled inside the window but finished after it stretch the window, so a
    // server that cannot keep up shows an achieved rate below the target.
    let mut m = Measurement::from_tally(total, last_done - window_start);
    m.target_rate = Some(rate);
    m
}

/// One open-loop caller: takes the next scheduled slot, sends it, and measures from the
/// slot's scheduled time; slots before `window_start` are warmup. Returns when the pacer
/// is done and the queue is empty, with the time its last measured call finished.
async fn drive_open(
    mut caller: Caller,
    scenario: Scenario,
    slots: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    window_start: Instant,
) -> (Caller, Tally, Instant) {
    let mut tally = Tally::default();
    let mut last_done = window_start;
    loop {
        let Some(due) = slots.lock().await.recv().await else {
            return (caller, tally, last_done);
        };
        let result = caller.call(scenario).await;
        let done = Instant::now();
        if due < window_start {
            continue;
        }
        last_done = last_done.max(done);
        match result {
            Ok(units) => {
                tally.latencies_us.push((done - due).as_micros() as u64);
                tally.units += units;
            }
            Err(label) => *tally.errors.entry(label).or_default() += 1,
        }
    }
}

async fn connect(addr: &str, connections: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("invalid --addr {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn require_serving(channel: Channel) -> Result<(), String> {
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = health
        .check(request)
        .await
        .map_err(|s| format!("health check failed: {s}"))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("server is not SERVING (health status {other:?})")),
    }
}

/// Records the seeded decision for every subject, `concurrency` calls at a time.
/// Retries transient failures with the same request_id (safe: RecordConsent is idempotent).
async fn seed(channels: &[Channel], plan: Arc<Plan>, concurrency: usize) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(plan.subjects).max(1))
        .map(|i| {
            let mut client = ConsentServiceClient::new(channels[i % channels.len()].clone());
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= plan.subjects {
                        return Ok::<(), String>(());
                    }
                    record_with_retry(&mut client, plan.record_request(n)).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| format!("seeding task panicked: {e}"))??;
    }
    Ok(())
}

/// Registers the bench's data system and queues `count` tasks for it through
/// opt-out requests, `concurrency` at a time.
async fn seed_tasks(
    channels: &[Channel],
    plan: Arc<Plan>,
    concurrency: usize,
    count: usize,
) -> Result<(), String> {
    DataSystemServiceClient::new(channels[0].clone())
        .register_data_system(RegisterDataSystemRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            data_system: Some(DataSystem {
                id: plan.system.clone(),
                display_name: "Benchmark worker".to_string(),
                kind: data_system::Kind::Internal as i32,
                categories: vec![plan.category.clone()],
                country: "US".to_string(),
                actions: vec![DataAction::Suppress as i32],
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| format!("RegisterDataSystem failed: {s}"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(count).max(1))
        .map(|i| {
            let mut client = PrivacyRequestServiceClient::new(channels[i % channels.len()].clone());
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok::<(), String>(());
                    }
                    let request = plan.opt_out_request(n % plan.subjects);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match client.create_privacy_request(request.clone()).await {
                            Ok(_) => break,
                            Err(s) if attempt < 5 && is_transient(s.code()) => {
                                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                            }
                            Err(s) => return Err(format!("queueing a task failed: {s}")),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| format!("queueing task panicked: {e}"))??;
    }
    Ok(())
}

async fn record_with_retry(
    client: &mut ConsentServiceClient<Channel>,
    request: RecordConsentRequest,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.record_consent(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) if attempt < 5 && is_transient(status.code()) => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(status) => {
                return Err(format!(
                    "seeding RecordConsent for {} failed: {:?}: {}",
                    request.subject_id,
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted
    )
}

/// PostgreSQL's own pgbench against the server's database: durable single-row INSERTs
/// into a scratch table, the ceiling `record` is compared with.
struct Pgbench {
    program: PathBuf,
    database_url: String,
    clients: usize,
    threads: usize,
    table: String,
    /// Holds the script and pgbench's per-transaction logs; removed by `cleanup`.
    dir: PathBuf,
    script: PathBuf,
    /// RecordConsent's own statement (`pgbench-record`).
    record_script: PathBuf,
    runs: usize,
}

/// What the report says about the pgbench setup.
#[derive(Serialize)]
struct PgbenchInfo {
    program: String,
    clients: usize,
    threads: usize,
    table: String,
    /// The database's `synchronous_commit` as pgbench's sessions see it.
    synchronous_commit: String,
}

impl Pgbench {
    /// Creates the scratch table and the script.
    async fn setup(
        program: PathBuf,
        pool: &sqlx::PgPool,
        database_url: &str,
        clients: usize,
        run_id: uuid::Uuid,
    ) -> Result<(Self, PgbenchInfo), String> {
        let table = format!("bench_pgbench_insert_{}", run_id.simple());
        // The table name is ours: "bench_pgbench_insert_" and a UUID's hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, subject text NOT NULL, \
             v text NOT NULL, t timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(pool)
        .await
        .map_err(|e| format!("cannot create the pgbench table {table}: {e}"))?;
        let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(pool)
            .await
            .map_err(|e| format!("cannot read synchronous_commit: {e}"))?;
        let dir = std::env::temp_dir().join(format!("privacy-records-bench-{run_id}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let script = dir.join("insert.sql");
        let sql = format!(
            "\\set n random(1, 1000000)\n\
             INSERT INTO {table} (subject, v) VALUES ('subject-' || :n, 'GRANTED');\n"
        );
        std::fs::write(&script, sql)
            .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
        let record_script = dir.join("record_consent.sql");
        let sql = record_consent_script(pool).await?;
        std::fs::write(&record_script, sql)
            .map_err(|e| format!("cannot write {}: {e}", record_script.display()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pgbench = Pgbench {
            program,
            database_url: database_url.to_string(),
            clients,
            threads: cores.min(clients),
            table: table.clone(),
            dir,
            script,
            record_script,
            runs: 0,
        };
        let info = PgbenchInfo {
            program: pgbench.program.display().to_string(),
            clients,
            threads: pgbench.threads,
            table,
            synchronous_commit,
        };
        Ok((pgbench, info))
    }

    /// An unmeasured run of `warmup`, then a measured run of `duration` whose TPS is
    /// pgbench's own ("without initial connection time") and whose latencies come from
    /// its per-transaction log.
    async fn measure(
        &mut self,
        scenario: Scenario,
        warmup: Duration,
        duration: Duration,
    ) -> Measurement {
        let script = match scenario {
            Scenario::PgbenchRecord => self.record_script.clone(),
            _ => self.script.clone(),
        };
        if !warmup.is_zero()
            && let Err(e) = self.run(&script, warmup, None).await
        {
            return Measurement::failed(e);
        }
        self.runs += 1;
        let prefix = self.dir.join(format!("log-{}", self.runs));
        let out = match self.run(&script, duration, Some(&prefix)).await {
            Ok(out) => out,
            Err(e) => return Measurement::failed(e),
        };
        let mut latencies_us = match read_pgbench_logs(&self.dir, &prefix) {
            Ok(l) => l,
            Err(e) => return Measurement::failed(e),
        };
        latencies_us.sort_unstable();
        let (Some(tps), Some(ok)) = (
            pgbench_value(&out, "tps = "),
            pgbench_value(&out, "number of transactions actually processed: "),
        ) else {
            return Measurement::failed("PgbenchOutputUnparsed".to_string());
        };
        let mut errors = BTreeMap::new();
        if let Some(failed) = pgbench_value(&out, "number of failed transactions: ")
            && failed > 0.0
        {
            errors.insert("PgbenchFailedTransactions".to_string(), failed as u64);
        }
        Measurement {
            ok: ok as u64,
            req_per_sec: tps,
            units_per_sec: tps,
            p50_ms: percentile_ms(&latencies_us, 0.50),
            p99_ms: percentile_ms(&latencies_us, 0.99),
            p999_ms: percentile_ms(&latencies_us, 0.999),
            target_rate: None,
            errors,
        }
    }

    /// Runs pgbench for `length` (whole seconds, at least 1); returns its standard output.
    async fn run(
        &self,
        script: &Path,
        length: Duration,
        log_prefix: Option<&Path>,
    ) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(["-n", "-M", "prepared"])
            .arg("-c")
            .arg(self.clients.to_string())
            .arg("-j")
            .arg(self.threads.to_string())
            .arg("-T")
            .arg(length.as_secs().max(1).to_string())
            .arg("-f")
            .arg(script);
        if let Some(prefix) = log_prefix {
            cmd.arg("-l")
                .arg(format!("--log-prefix={}", prefix.display()));
        }
        // libpq takes a URL where the database name goes.
        cmd.arg(&self.database_url).kill_on_drop(true);
        let output = cmd
            .output()
            .await
            .map_err(|e| format!("PgbenchNotRun: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("pgbench failed ({}): {}", output.status, stderr.trim());
            return Err("PgbenchFailed".to_string());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Drops the scratch table and removes the script and logs.
    async fn cleanup(&self, pool: &sqlx::PgPool) {
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            self.table
        )))
        .execute(pool)
        .await
        {
            eprintln!("could not drop the pgbench table {}: {e}", self.table);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A pgbench script running the server's RecordConsent statement itself
/// (`privacy_records::consent::store::record_consent_sql`), its parameters
/// filled as the `record` scenario fills them: a seeded subject, a grant or
/// refusal of the seeded purpose at its current revision, a fresh request id
/// per transaction. What PostgreSQL alone does with the write, without the
/// gRPC server in front of it.
async fn record_consent_script(pool: &sqlx::PgPool) -> Result<String, String> {
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM purposes WHERE key = $1")
        .bind(SEEDED_PURPOSE)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("cannot read purposes/{SEEDED_PURPOSE}: {e}"))?;
    // Parameter number → SQL text, in the statement's order.
    let values: [String; 19] = [
        "'bench-subject-' || :n".into(),
        format!("'{SEEDED_PURPOSE}'"),
        "(CASE WHEN :n % 2 = 0 THEN 'GRANTED' ELSE 'REFUSED' END)".into(),
        "'API'".into(),
        "NULL::text".into(),
        format!("'{JURISDICTION}'"),
        "NULL::text".into(),
        "NULL::text".into(),
        "NULL::text".into(),
        "NULL::timestamptz".into(),
        "NULL::timestamptz".into(),
        "gen_random_uuid()::text".into(),
        "'bench'".into(),
        "NULL::bytea".into(),
        revision.to_string(),
        "'privacy.v1.ConsentService/RecordConsent'".into(),
        "'\\x00'::bytea".into(),
        "'CONSENT_RECORDED'".into(),
        // The caller whose request id it is (none: an unauthenticated server).
        "''".into(),
    ];
    let sql = privacy_records::consent::store::record_consent_sql();
    let mut out = String::with_capacity(sql.len() + 512);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let n: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .map_err(|_| "RecordConsent's statement has a bare $".to_string())?;
        let value = values.get(n.wrapping_sub(1)).ok_or_else(|| {
            format!(
                "RecordConsent's statement has ${n}; the bench fills {}",
                values.len()
            )
        })?;
        out.push_str(value);
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    // pgbench reads one statement per line unless told otherwise.
    let one_line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(format!("\\set n random(1, 5000)\n{one_line};\n"))
}

/// The number after `label` on the first line of pgbench's output that starts with it.
fn pgbench_value(output: &str, label: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(label)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Latencies (microseconds, the third field) from pgbench's per-transaction logs
/// `<prefix>.<pid>` and `<prefix>.<pid>.<thread>`; the files are removed once read.
fn read_pgbench_logs(dir: &Path, prefix: &Path) -> Result<Vec<u64>, String> {
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut latencies = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("PgbenchLogUnreadable: {e}"))?;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("PgbenchLogUnreadable: {e}"))?;
        latencies.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(latencies)
}

/// `--pgbench`, else pgbench on PATH, else the newest `/usr/lib/postgresql/<v>/bin/pgbench`.
fn find_pgbench(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin/pgbench")))
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .rev();
    on_path
        .chain(versioned)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin; give --pgbench".to_string()
        })
}

/// The purposes `memory` seeds for every subject: consent-based ones of the default
/// catalogue that take a grant without evidence.
const MEMORY_PURPOSES: [&str; 5] = [
    "analytics_cookies",
    "marketing_email",
    "targeted_advertising",
    "personalized_recommendations",
    "api_io_storage",
];
/// Subjects per seeding statement of `memory`.
const MEMORY_SEED_CHUNK: usize = 50_000;
/// Pairs per BatchCheckConsent call while `memory` warms the server.
const MEMORY_BATCH: usize = 100;

/// What the `memory` scenario found.
#[derive(Serialize)]
struct MemoryReport {
    subjects: usize,
    purposes: usize,
    server_pid: u32,
    seed_secs: f64,
    warm_secs: f64,
    decisions_checked: u64,
    decisions_per_sec: f64,
    errors: BTreeMap<String, u64>,
    /// After seeding, before the checks.
    before: ProcMemory,
    /// After every pair was checked once.
    after: ProcMemory,
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Serialize, Clone, Copy)]
struct ProcMemory {
    /// Resident set size now.
    vm_rss_kib: u64,
    /// Peak resident set size so far.
    vm_hwm_kib: u64,
}

fn proc_memory(pid: u32) -> Result<ProcMemory, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("no {name} in {path}"))
    };
    Ok(ProcMemory {
        vm_rss_kib: field("VmRSS:")?,
        vm_hwm_kib: field("VmHWM:")?,
    })
}

/// The process listening on TCP `port`: the socket's inode from `/proc/net/tcp{,6}`,
/// then the process holding a descriptor of that socket.
fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode (field 9); 0A is LISTEN.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if fields.len() > 9 && fields[3] == "0A" && local_port == Some(port) {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|proc| {
        let pid: u32 = proc.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(proc.path().join("fd")).ok()?;
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| inodes.contains(target.to_string_lossy().as_ref()))
            .then_some(pid)
    })
}

/// The `memory` scenario: seeds subjects × MEMORY_PURPOSES straight into the ledger,
/// reads the server's memory, checks every pair once, reads it again.
async fn measure_memory(
    args: &Args,
    pool: &sqlx::PgPool,
    channels: &[Channel],
    run_id: uuid::Uuid,
) -> Result<MemoryReport, String> {
    let server_pid = match args.server_pid {
        Some(pid) => pid,
        None => {
            let port = args
                .addr
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.port_u16())
                .ok_or_else(|| format!("no port in --addr {}; give --server-pid", args.addr))?;
            listening_pid(port).ok_or_else(|| {
                format!("no process found listening on port {port}; give --server-pid")
            })?
        }
    };
    proc_memory(server_pid)?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM purposes WHERE key = ANY($1)")
        .bind(&MEMORY_PURPOSES[..])
        .fetch_one(pool)
        .await
        .map_err(|e| format!("cannot read purposes: {e}"))?;
    if found != MEMORY_PURPOSES.len() as i64 {
        return Err(format!(
            "memory needs the default purposes {MEMORY_PURPOSES:?}; {found} of them exist"
        ));
    }
    let prefix = format!("benchmem-{run_id}-");
    let subjects = args.memory_subjects;
    eprintln!(
        "memory: seeding {subjects} subjects × {} purposes ({prefix}N) straight into consent_records ...",
        MEMORY_PURPOSES.len()
    );
    let seeding = Instant::now();
    // Decision for (n, purpose i): REFUSED when n + i is even, GRANTED when odd.
    let insert = "INSERT INTO consent_records (subject_id, purpose_key, decision, source, \
                  jurisdiction, effective_time, request_id, actor) \
                  SELECT $1 || n, p.key, \
                         CASE WHEN (n + p.i - 1) % 2 = 0 THEN 'REFUSED' ELSE 'GRANTED' END, \
                         'IMPORT', 'US-CA', now() - interval '1 day', $1 || n || '/' || p.key, 'bench' \
                  FROM generate_series($2::bigint, $3::bigint) AS n, \
                       unnest($4::text[]) WITH ORDINALITY AS p(key, i)";
    let chunks = (0..subjects).step_by(MEMORY_SEED_CHUNK).map(|first| {
        let last = (first + MEMORY_SEED_CHUNK).min(subjects) - 1;
        let prefix = prefix.clone();
        async move {
            sqlx::query(insert)
                .bind(prefix)
                .bind(first as i64)
                .bind(last as i64)
                .bind(&MEMORY_PURPOSES[..])
                .execute(pool)
                .await
                .map_err(|e| format!("seeding consent_records failed: {e}"))
        }
    });
    // Two statements at a time keep both cores busy without a pile of connections.
    let mut pending = futures::stream::iter(chunks).buffer_unordered(2);
    while let Some(result) = pending.next().await {
        result?;
    }
    sqlx::query("ANALYZE consent_records")
        .execute(pool)
        .await
        .map_err(|e| format!("ANALYZE consent_records failed: {e}"))?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    eprintln!("memory: seeded in {seed_secs:.1}s");

    let before = proc_memory(server_pid)?;
    eprintln!(
        "memory: checking every pair through BatchCheckConsent ({MEMORY_BATCH} a call, {} in parallel) ...",
        args.concurrency
    );
    let warming = Instant::now();
    let pairs = subjects * MEMORY_PURPOSES.len();
    let batches = pairs.div_ceil(MEMORY_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_secs(args.call_timeout.max(1));
    let tasks: Vec<_> = (0..args.concurrency.min(batches).max(1))
        .map(|i| {
            let mut client = ConsentServiceClient::new(channels[i % channels.len()].clone());
            let (next, prefix) = (next.clone(), prefix.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return tally;
                    }
                    let range = b * MEMORY_BATCH..((b + 1) * MEMORY_BATCH).min(pairs);
                    let (checks, expected): (Vec<_>, Vec<_>) = range
                        .map(|pair| {
                            let (n, i) =
                                (pair / MEMORY_PURPOSES.len(), pair % MEMORY_PURPOSES.len());
                            let check = ConsentCheck {
                                subject_id: format!("{prefix}{n}"),
                                purpose: MEMORY_PURPOSES[i].to_string(),
                                ..Default::default()
                            };
                            let want = if (n + i).is_multiple_of(2) {
                                Verdict::Denied
                            } else {
                                Verdict::Allowed
                            };
                            (check, want)
                        })
                        .unzip();
                    let request = BatchCheckConsentRequest {
                        checks,
                        ..Default::default()
                    };
                    let call = client.batch_check_consent(request);
                    let outcome = match tokio::time::timeout(timeout, call).await {
                        Err(_) => Err("Timeout".to_string()),
                        Ok(Err(status)) => Err(code_label(status)),
                        Ok(Ok(response)) => {
                            let results = response.into_inner().results;
                            tally.units += results.len() as u64;
                            results
                                .iter()
                                .zip(&expected)
                                .try_for_each(|(r, want)| verify_verdict(r.verdict(), *want))
                        }
                    };
                    if let Err(label) = outcome {
                        *tally.errors.entry(label).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(
            task.await
                .map_err(|e| format!("warming task panicked: {e}"))?,
        );
    }
    let warm_secs = warming.elapsed().as_secs_f64();
    let after = proc_memory(server_pid)?;
    Ok(MemoryReport {
        subjects,
        purposes: MEMORY_PURPOSES.len(),
        server_pid,
        seed_secs,
        warm_secs,
        decisions_checked: total.units,
        decisions_per_sec: total.units as f64 / warm_secs,
        errors: total.errors,
        before,
        after,
    })
}

/// The summary of one scenario (in one mode) over all runs.
#[derive(Serialize)]
struct Summary {
    scenario: Scenario,
    mode: Mode,
    median_req_per_sec: f64,
    median_p50_ms: f64,
    median_p99_ms: f64,
    median_p999_ms: f64,
    /// Median scheduled rate (open-loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    median_target_rate: Option<f64>,
    /// Median decisions per second (batch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    median_decisions_per_sec: Option<f64>,
    /// Median tasks claimed and completed per second (tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    median_tasks_per_sec: Option<f64>,
    /// Errors summed over all runs, by label.
    errors: BTreeMap<String, u64>,
    errors_total: u64,
    /// The median over runs of req/s / health's req/s in the same run, when health was
    /// measured closed-loop (closed-loop gRPC scenarios only).
    ratio_to_health: Option<f64>,
    /// The median over runs of req/s / pgbench's TPS in the same run, when pgbench was
    /// measured (record and pgbench-record only).
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_pgbench: Option<f64>,
    runs: Vec<Measurement>,
}

impl Summary {
    /// The row's name: the scenario, with the load fraction or rate when open-loop.
    fn label(&self, rate_fraction: Option<f64>) -> String {
        match (self.mode, rate_fraction) {
            (Mode::Closed, _) => self.scenario.name().to_string(),
            (Mode::Open, Some(f)) => format!("{}@{f:.2}", self.scenario.name()),
            (Mode::Open, None) => format!(
                "{}@{:.0}/s",
                self.scenario.name(),
                self.median_target_rate.unwrap_or(0.0)
            ),
        }
    }
}

#[derive(Serialize)]
struct Report {
    addr: String,
    concurrency: usize,
    connections: usize,
    duration_secs: u64,
    warmup_secs: u64,
    runs: usize,
    subjects: usize,
    tasks: usize,
    batch_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pgbench: Option<PgbenchInfo>,
    scenarios: Vec<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryReport>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn summarize(scenario: Scenario, mode: Mode, runs: Vec<Measurement>, batch_size: usize) -> Summary {
    let med = |f: fn(&Measurement) -> f64| median(runs.iter().map(f).collect());
    let median_req_per_sec = med(|m| m.req_per_sec);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for run in &runs {
        for (label, count) in &run.errors {
            *errors.entry(label.clone()).or_default() += count;
        }
    }
    Summary {
        scenario,
        mode,
        median_req_per_sec,
        median_p50_ms: med(|m| m.p50_ms),
        median_p99_ms: med(|m| m.p99_ms),
        median_p999_ms: med(|m| m.p999_ms),
        median_target_rate: (mode == Mode::Open).then(|| med(|m| m.target_rate.unwrap_or(0.0))),
        median_decisions_per_sec: (scenario == Scenario::Batch)
            .then_some(median_req_per_sec * batch_size as f64),
        median_tasks_per_sec: (scenario == Scenario::Tasks).then(|| med(|m| m.units_per_sec)),
        errors_total: errors.values().sum(),
        errors,
        ratio_to_health: None,
        ratio_to_pgbench: None,
        runs,
    }
}

/// Ratios of closed-loop gRPC rows to closed-loop health, and of record to pgbench: the
/// median of each run's own ratio. The two rows of a run are measured seconds apart, so a
/// drift of the machine's speed between runs (other tenants, steal) cancels out, which it
/// does not in a ratio of the two medians.
fn set_ratios(summaries: &mut [Summary]) {
    let baseline = |summaries: &[Summary], scenario| {
        summaries
            .iter()
            .find(|s| s.scenario == scenario && s.mode == Mode::Closed)
            .map(|s| s.runs.iter().map(|m| m.req_per_sec).collect::<Vec<_>>())
    };
    let paired = |runs: &[Measurement], base: &[f64]| {
        let ratios: Vec<f64> = runs
            .iter()
            .zip(base)
            .filter(|(_, b)| **b > 0.0)
            .map(|(m, b)| m.req_per_sec / b)
            .collect();
        (!ratios.is_empty()).then(|| median(ratios))
    };
    let health = baseline(summaries, Scenario::Health);
    let pgbench = baseline(summaries, Scenario::Pgbench);
    for summary in summaries.iter_mut() {
        if summary.mode != Mode::Closed {
            continue;
        }
        if summary.scenario.is_grpc() {
            summary.ratio_to_health = health.as_ref().and_then(|h| paired(&summary.runs, h));
        }
        if matches!(summary.scenario, Scenario::Record | Scenario::PgbenchRecord) {
            summary.ratio_to_pgbench = pgbench.as_ref().and_then(|p| paired(&summary.runs, p));
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_table(report: &Report) {
    if !report.scenarios.is_empty() {
        print_rows(report);
    }
    if let Some(m) = &report.memory {
        print_memory(m);
    }
}

fn print_rows(report: &Report) {
    println!(
        "privacy-records-bench: {} | concurrency {} over {} connections | {} run(s) of {}s (+{}s warmup) | {} subjects | batch size {}",
        report.addr,
        report.concurrency,
        report.connections,
        report.runs,
        report.duration_secs,
        report.warmup_secs,
        report.subjects,
        report.batch_size
    );
    if let Some(p) = &report.pgbench {
        println!(
            "pgbench: {} | {} clients, {} threads | single-row INSERT, -M prepared | synchronous_commit={}",
            p.program, p.clients, p.threads, p.synchronous_commit
        );
    }
    println!();
    println!(
        "{:<12} {:>12} {:>9} {:>9} {:>9} {:>8} {:>9}  notes",
        "scenario", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "vs health"
    );
    for s in &report.scenarios {
        let ratio = s
            .ratio_to_health
            .map_or("n/a".to_string(), |r| format!("{r:.2}"));
        let mut notes = Vec::new();
        if let Some(target) = s.median_target_rate {
            notes.push(format!("open loop, target {target:.0}/s"));
        }
        if let Some(d) = s.median_decisions_per_sec {
            notes.push(format!("{d:.0} decisions/s"));
        }
        if let Some(t) = s.median_tasks_per_sec {
            notes.push(format!("{t:.0} tasks claimed+completed/s"));
        }
        if s.scenario == Scenario::Pgbench {
            notes.push("TPS of durable single-row INSERTs".to_string());
        }
        if s.scenario == Scenario::PgbenchRecord {
            notes.push("TPS of RecordConsent's statement alone".to_string());
        }
        if let Some(r) = s.ratio_to_pgbench {
            notes.push(format!("{r:.2} of pgbench TPS"));
        }
        let row = format!(
            "{:<12} {:>12.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>9}  {}",
            s.label(report.rate_fraction),
            s.median_req_per_sec,
            s.median_p50_ms,
            s.median_p99_ms,
            s.median_p999_ms,
            s.errors_total,
            ratio,
            notes.join("; ")
        );
        println!("{}", row.trim_end());
    }
    println!();
    println!("req/s and latencies are medians over runs; errors are summed over runs.");
    if report.scenarios.iter().any(|s| s.mode == Mode::Open) {
        println!(
            "open loop: calls on a fixed schedule, latency from the scheduled time; req/s is the achieved rate."
        );
    }
    for s in report.scenarios.iter().filter(|s| s.errors_total > 0) {
        let by_code: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "errors in {}: {}",
            s.label(report.rate_fraction),
            by_code.join(", ")
        );
    }
}

fn print_memory(m: &MemoryReport) {
    println!();
    println!(
        "memory: {} subjects × {} purposes seeded in {:.1}s; {} decisions checked in {:.1}s ({:.0}/s), {} error(s)",
        m.subjects,
        m.purposes,
        m.seed_secs,
        m.decisions_checked,
        m.warm_secs,
        m.decisions_per_sec,
        m.errors.values().sum::<u64>()
    );
    println!(
        "memory: server pid {}: VmRSS {:.1} MiB before the checks, {:.1} MiB after (VmHWM {:.1} -> {:.1} MiB)",
        m.server_pid,
        mib(m.before.vm_rss_kib),
        mib(m.after.vm_rss_kib),
        mib(m.before.vm_hwm_kib),
        mib(m.after.vm_hwm_kib)
    );
    if !m.errors.is_empty() {
        let by_code: Vec<String> = m.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("errors in memory: {}", by_code.join(", "));
    }
}

fn validate(args: &Args) -> Result<(), String> {
    let needs_database = args.scenarios.iter().any(|s| s.needs_database());
    let checks = [
        (args.concurrency == 0, "--concurrency must be at least 1"),
        (args.connections == 0, "--connections must be at least 1"),
        (args.duration == 0, "--duration must be at least 1 second"),
        (args.runs == 0, "--runs must be at least 1"),
        (args.subjects == 0, "--subjects must be at least 1"),
        (
            args.batch_size == 0 || args.batch_size > 1000,
            "--batch-size must be 1 to 1000",
        ),
        (
            args.scenarios.is_empty(),
            "--scenarios must name at least one scenario",
        ),
        (
            args.rate.is_some_and(|r| !(r > 0.0 && r <= 1e6)),
            "--rate must be above 0 and at most 1000000",
        ),
        (
            args.rate_fraction.is_some_and(|f| !(f > 0.0 && f <= 1.0)),
            "--rate-fraction must be above 0 and at most 1",
        ),
        (
            needs_database && args.database_url.is_none(),
            "--scenarios pgbench and memory need --database-url",
        ),
        (
            args.pgbench_clients == 0,
            "--pgbench-clients must be at least 1",
        ),
        (
            args.memory_subjects == 0,
            "--memory-subjects must be at least 1",
        ),
    ];
    match checks.iter().find(|(bad, _)| *bad) {
        Some((_, message)) => Err(message.to_string()),
        None => Ok(()),
    }
}

/// The rows each run measures, in order: a gRPC scenario closed-loop, open-loop at
/// `--rate`, or both with `--rate-fraction` (the open row right after its closed row);
/// pgbench as is; memory is not a row (it runs once, after the runs).
fn rows(args: &Args) -> Vec<(Scenario, Mode)> {
    let mut rows = Vec::new();
    for &scenario in &args.scenarios {
        match scenario {
            Scenario::Memory => {}
            Scenario::Pgbench | Scenario::PgbenchRecord => rows.push((scenario, Mode::Closed)),
            _ if args.rate.is_some() => rows.push((scenario, Mode::Open)),
            _ if args.rate_fraction.is_some() => {
                rows.push((scenario, Mode::Closed));
                rows.push((scenario, Mode::Open));
            }
            _ => rows.push((scenario, Mode::Closed)),
        }
    }
    rows
}

async fn run(args: Args) -> Result<Report, String> {
    validate(&args)?;
    let channels = connect(&args.addr, args.connections).await?;
    require_serving(channels[0].clone()).await?;
    let pool = match &args.database_url {
        Some(url) if args.scenarios.iter().any(|s| s.needs_database()) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .map_err(|e| format!("cannot connect to --database-url: {e}"))?,
        ),
        _ => None,
    };

    let run_id = uuid::Uuid::new_v4();
    let plan = Arc::new(Plan {
        prefix: format!("bench-{run_id}"),
        system: format!("bench-{}", run_id.simple()),
        category: format!("bench_{}", run_id.simple()),
        subjects: args.subjects,
        batch_size: args.batch_size,
        call_timeout: Duration::from_secs(args.call_timeout.max(1)),
    });
    if args.scenarios.iter().any(|s| s.is_grpc()) {
        eprintln!("seeding {} subjects ({}-N) ...", plan.subjects, plan.prefix);
        let seeding = Instant::now();
        seed(&channels, plan.clone(), args.concurrency).await?;
        eprintln!("seeded in {:.1}s", seeding.elapsed().as_secs_f64());
    }
    if args.scenarios.iter().any(|s| s.needs_tasks()) {
        eprintln!(
            "registering dataSystems/{} and queueing {} tasks ...",
            plan.system, args.tasks
        );
        let queueing = Instant::now();
        seed_tasks(&channels, plan.clone(), args.concurrency, args.tasks).await?;
        eprintln!("queued in {:.1}s", queueing.elapsed().as_secs_f64());
    }
    let (mut pgbench, pgbench_info) = match (&pool, &args.database_url) {
        (Some(pool), Some(url))
            if args
                .scenarios
                .iter()
                .any(|s| matches!(s, Scenario::Pgbench | Scenario::PgbenchRecord)) =>
        {
            let program = find_pgbench(args.pgbench.as_deref())?;
            let (p, info) =
                Pgbench::setup(program, pool, url, args.pgbench_clients, run_id).await?;
            (Some(p), Some(info))
        }
        _ => (None, None),
    };

    let mut callers: Vec<Caller> = (0..args.concurrency)
        .map(|i| Caller::new(channels[i % channels.len()].clone(), plan.clone()))
        .collect();
    let (warmup, duration) = (
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.duration),
    );
    let rows = rows(&args);
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); rows.len()];
    for run in 1..=args.runs {
        // This run's closed-loop rate of the scenario measured last, for --rate-fraction.
        let mut last_closed_rate = 0.0;
        for (i, &(scenario, mode)) in rows.iter().enumerate() {
            let m = match (scenario, mode) {
                (Scenario::Pgbench | Scenario::PgbenchRecord, _) => match pgbench.as_mut() {
                    Some(p) => p.measure(scenario, warmup, duration).await,
                    None => Measurement::failed("NoPgbench".to_string()),
                },
                (_, Mode::Closed) => measure(scenario, &mut callers, warmup, duration).await,
                (_, Mode::Open) => {
                    let rate = match (args.rate, args.rate_fraction) {
                        (Some(rate), _) => rate,
                        (None, fraction) => fraction.unwrap_or(1.0) * last_closed_rate,
                    };
                    if rate > 0.0 {
                        measure_open(scenario, &mut callers, rate, warmup, duration).await
                    } else {
                        Measurement::failed("NoClosedLoopRate".to_string())
                    }
                }
            };
            if mode == Mode::Closed {
                last_closed_rate = m.req_per_sec;
            }
            let target = m
                .target_rate
                .map_or(String::new(), |t| format!(" (target {t:.0}/s)"));
            eprintln!(
                "run {run}/{} {:<7} {:<6} {:>10.1} req/s{target}  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}",
                args.runs,
                scenario.name(),
                format!("{mode:?}").to_lowercase(),
                m.req_per_sec,
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.error_count()
            );
            results[i].push(m);
        }
    }

    let memory = match &pool {
        Some(pool) if args.scenarios.contains(&Scenario::Memory) => {
            Some(measure_memory(&args, pool, &channels, run_id).await)
        }
        _ => None,
    };
    if let (Some(p), Some(pool)) = (&pgbench, &pool) {
        p.cleanup(pool).await;
    }
    let memory = memory.transpose()?;

    let mut scenarios: Vec<Summary> = rows
        .iter()
        .zip(results)
        .map(|(&(scenario, mode), runs)| summarize(scenario, mode, runs, args.batch_size))
        .collect();
    set_ratios(&mut scenarios);
    Ok(Report {
        addr: args.addr,
        concurrency: args.concurrency,
        connections: args.connections,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        runs: args.runs,
        subjects: args.subjects,
        tasks: args.tasks,
        batch_size: args.batch_size,
        rate: args.rate,
        rate_fraction: args.rate_fraction,
        pgbench: pgbench_info,
        scenarios,
        memory,
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (json, fail_on_error) = (args.json, args.fail_on_error);
    let report = match run(args).await {
        Ok(report) => report,
        Err(message) => {
            eprintln!("privacy-records-bench: {message}");
            std::process::exit(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("privacy-records-bench: cannot encode JSON: {e}");
                std::process::exit(1);
            }
        }
    } else {
        print_table(&report);
    }
    let errors: u64 = report.scenarios.iter().map(|s| s.errors_total).sum();
    if fail_on_error && errors > 0 {
        eprintln!("privacy-records-bench: {errors} call(s) failed (--fail-on-error)");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgbench 15's summary, as printed after a `-T` run with a custom script.
    const PGBENCH_OUTPUT: &str = "\
transaction type: /tmp/x/insert.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 47812
number of failed transactions: 3 (0.006%)
latency average = 3.346 ms
initial connection time = 12.531 ms
tps = 4781.204873 (without initial connection time)
";

    #[test]
    fn pgbench_summary_values_are_read() {
        assert_eq!(pgbench_value(PGBENCH_OUTPUT, "tps = "), Some(4781.204873));
        assert_eq!(
            pgbench_value(
                PGBENCH_OUTPUT,
                "number of transactions actually processed: "
            ),
            Some(47812.0)
        );
        assert_eq!(
            pgbench_value(PGBENCH_OUTPUT, "number of failed transactions: "),
            Some(3.0)
        );
        assert_eq!(pgbench_value(PGBENCH_OUTPUT, "no such line: "), None);
    }

    #[test]
    fn pgbench_logs_give_latencies_and_are_removed() {
        let dir = std::env::temp_dir().join(format!("bench-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("log-1");
        // client_id transaction_no latency_us script_no epoch_s epoch_us
        std::fs::write(
            dir.join("log-1.77"),
            "0 0 1500 0 1700000000 1\n1 0 900 0 1700000000 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("log-1.77.1"), "2 0 2100 0 1700000000 3\n").unwrap();
        std::fs::write(dir.join("log-2.77"), "0 0 99999 0 1700000000 1\n").unwrap();
        let mut latencies = read_pgbench_logs(&dir, &prefix).unwrap();
        latencies.sort_unstable();
        assert_eq!(latencies, vec![900, 1500, 2100]);
        assert!(!dir.join("log-1.77").exists());
        assert!(
            dir.join("log-2.77").exists(),
            "another run's log is left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_process_listening_on_a_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(listening_pid(port), None);
    }

    #[test]
    fn ratios_pair_each_run_with_its_own_baseline() {
        let summary = |scenario, rates: &[f64]| {
            let runs = rates
                .iter()
                .map(|&r| {
                    let mut m = Measurement::failed("none".into());
                    m.req_per_sec = r;
                    m
                })
                .collect();
            summarize(scenario, Mode::Closed, runs, 100)
        };
        // The machine slows in run 2: health and check both drop.
        let mut rows = vec![
            summary(Scenario::Health, &[30_000.0, 10_000.0, 20_000.0]),
            summary(Scenario::Check, &[15_000.0, 9_000.0, 18_000.0]),
            summary(Scenario::Pgbench, &[10_000.0, 10_000.0, 0.0]),
            summary(Scenario::Record, &[4_000.0, 5_000.0, 6_000.0]),
        ];
        set_ratios(&mut rows);
        // Per run 0.5, 0.9, 0.9; the ratio of the medians would say 15,000 / 20,000 = 0.75.
        assert_eq!(rows[1].ratio_to_health, Some(0.9));
        assert_eq!(rows[0].ratio_to_health, Some(1.0));
        // A run whose pgbench failed (0 TPS) has no ratio: the median of 0.4 and 0.5.
        let record = rows[3].ratio_to_pgbench.unwrap();
        assert!((record - 0.45).abs() < 1e-12, "{record}");
        assert_eq!(rows[2].ratio_to_pgbench, None);
    }

    #[test]
    fn own_memory_is_read() {
        let m = proc_memory(std::process::id()).unwrap();
        assert!(m.vm_rss_kib > 0 && m.vm_hwm_kib >= m.vm_rss_kib);
    }

    #[test]
    fn rate_fraction_measures_open_right_after_closed() {
        let args = Args::parse_from([
            "bench",
            "--scenarios",
            "health,pgbench,check,memory",
            "--rate-fraction",
            "0.5",
            "--database-url",
            "postgres://x",
        ]);
        validate(&args).unwrap();
        assert_eq!(
            rows(&args),
            vec![
                (Scenario::Health, Mode::Closed),
                (Scenario::Health, Mode::Open),
                (Scenario::Pgbench, Mode::Closed),
                (Scenario::Check, Mode::Closed),
                (Scenario::Check, Mode::Open),
            ]
        );
        let fixed = Args::parse_from(["bench", "--scenarios", "check", "--rate", "100"]);
        assert_eq!(rows(&fixed), vec![(Scenario::Check, Mode::Open)]);
    }

    #[test]
    fn database_scenarios_need_a_url_and_rates_are_bounded() {
        let no_url = Args::parse_from(["bench", "--scenarios", "pgbench"]);
        assert!(validate(&no_url).unwrap_err().contains("--database-url"));
        let zero = Args::parse_from(["bench", "--rate-fraction", "0"]);
        assert!(validate(&zero).unwrap_err().contains("--rate-fraction"));
        let both = Args::try_parse_from(["bench", "--rate", "5", "--rate-fraction", "0.5"]);
        assert!(both.is_err());
    }
}
