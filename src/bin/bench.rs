//! `privacy-records-bench`: closed-loop load generator for a RUNNING privacy-records server.
//!
//! It measures, per scenario, requests per second and latency (p50, p99) with
//! `--concurrency` callers spread over `--connections` HTTP/2 channels, each caller
//! issuing its next call as soon as the previous one returns:
//!
//! - `health`: `grpc.health.v1.Health/Check` for service `""`: the cost of the gRPC
//!   stack alone, the baseline every other scenario is compared with;
//! - `check`: `CheckConsent` of `analytics_cookies` for a random seeded subject;
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
//! machine noise hits all scenarios alike. The summary gives the median over runs.
//! Latency percentiles are over successful calls; failed calls are counted by gRPC code.
//!
//! Run it against a server that is already up:
//!
//! ```text
//! cargo build --release
//! target/release/privacy-records serve --listen 127.0.0.1:50051 --data-dir /tmp/pr/data &
//! target/release/privacy-records-bench --addr http://127.0.0.1:50051 --runs 3
//! target/release/privacy-records-bench --scenarios health,check --duration 5 --json
//! ```
//!
//! Exit status: 0 on success; 1 when setup fails; 2 with `--fail-on-error` when any call failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
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
/// The jurisdiction the seeded and benchmarked decisions are recorded in.
const JURISDICTION: &str = "US-CA";

#[derive(Parser, Debug)]
#[command(
    name = "privacy-records-bench",
    about = "Closed-loop load test of a running privacy-records server"
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
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Health,
    Check,
    Batch,
    Record,
    Request,
    Tasks,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Check => "check",
            Scenario::Batch => "batch",
            Scenario::Record => "record",
            Scenario::Request => "request",
            Scenario::Tasks => "tasks",
        }
    }

    /// Whether the scenario needs the bench's data system and queued tasks.
    fn needs_tasks(self) -> bool {
        matches!(self, Scenario::Request | Scenario::Tasks)
    }
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
            Scenario::Check => self.check().await.map(|()| 1),
            Scenario::Batch => self.batch().await.map(|()| 1),
            Scenario::Record => self.record().await.map(|()| 1),
            Scenario::Request => self.request().await.map(|()| 1),
            Scenario::Tasks => self.claim_and_complete().await,
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

    async fn check(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let request = CheckConsentRequest {
            subject_id: self.plan.subject(n),
            purpose: SEEDED_PURPOSE.to_string(),
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
            errors: tally.errors,
        }
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

/// The summary of one scenario over all runs.
#[derive(Serialize)]
struct Summary {
    scenario: Scenario,
    median_req_per_sec: f64,
    median_p50_ms: f64,
    median_p99_ms: f64,
    /// Median decisions per second (batch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    median_decisions_per_sec: Option<f64>,
    /// Median tasks claimed and completed per second (tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    median_tasks_per_sec: Option<f64>,
    /// Errors summed over all runs, by label.
    errors: BTreeMap<String, u64>,
    errors_total: u64,
    /// median_req_per_sec / health's median_req_per_sec, when health was measured.
    ratio_to_health: Option<f64>,
    runs: Vec<Measurement>,
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
    scenarios: Vec<Summary>,
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

fn summarize(scenario: Scenario, runs: Vec<Measurement>, batch_size: usize) -> Summary {
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
        median_req_per_sec,
        median_p50_ms: med(|m| m.p50_ms),
        median_p99_ms: med(|m| m.p99_ms),
        median_decisions_per_sec: (scenario == Scenario::Batch)
            .then_some(median_req_per_sec * batch_size as f64),
        median_tasks_per_sec: (scenario == Scenario::Tasks).then(|| med(|m| m.units_per_sec)),
        errors_total: errors.values().sum(),
        errors,
        ratio_to_health: None,
        runs,
    }
}

fn set_health_ratios(summaries: &mut [Summary]) {
    let health = summaries
        .iter()
        .find(|s| s.scenario == Scenario::Health)
        .map(|s| s.median_req_per_sec)
        .filter(|rps| *rps > 0.0);
    for summary in summaries.iter_mut() {
        summary.ratio_to_health = health.map(|h| summary.median_req_per_sec / h);
    }
}

fn print_table(report: &Report) {
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
    println!();
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>8} {:>10}  notes",
        "scenario", "req/s", "p50 ms", "p99 ms", "errors", "vs health"
    );
    for s in &report.scenarios {
        let ratio = s
            .ratio_to_health
            .map_or("n/a".to_string(), |r| format!("{r:.2}"));
        let notes = match (s.median_decisions_per_sec, s.median_tasks_per_sec) {
            (Some(d), _) => format!("{d:.0} decisions/s"),
            (_, Some(t)) => format!("{t:.0} tasks claimed+completed/s"),
            _ => String::new(),
        };
        let row = format!(
            "{:<8} {:>12.1} {:>10.2} {:>10.2} {:>8} {:>10}  {}",
            s.scenario.name(),
            s.median_req_per_sec,
            s.median_p50_ms,
            s.median_p99_ms,
            s.errors_total,
            ratio,
            notes
        );
        println!("{}", row.trim_end());
    }
    println!();
    println!("req/s, p50 and p99 are medians over runs; errors are summed over runs.");
    for s in report.scenarios.iter().filter(|s| s.errors_total > 0) {
        let by_code: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("errors in {}: {}", s.scenario.name(), by_code.join(", "));
    }
}

fn validate(args: &Args) -> Result<(), String> {
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
    ];
    match checks.iter().find(|(bad, _)| *bad) {
        Some((_, message)) => Err(message.to_string()),
        None => Ok(()),
    }
}

async fn run(args: Args) -> Result<Report, String> {
    validate(&args)?;
    let channels = connect(&args.addr, args.connections).await?;
    require_serving(channels[0].clone()).await?;

    let run_id = uuid::Uuid::new_v4();
    let plan = Arc::new(Plan {
        prefix: format!("bench-{run_id}"),
        system: format!("bench-{}", run_id.simple()),
        category: format!("bench_{}", run_id.simple()),
        subjects: args.subjects,
        batch_size: args.batch_size,
        call_timeout: Duration::from_secs(args.call_timeout.max(1)),
    });
    eprintln!("seeding {} subjects ({}-N) ...", plan.subjects, plan.prefix);
    let seeding = Instant::now();
    seed(&channels, plan.clone(), args.concurrency).await?;
    eprintln!("seeded in {:.1}s", seeding.elapsed().as_secs_f64());
    if args.scenarios.iter().any(|s| s.needs_tasks()) {
        eprintln!(
            "registering dataSystems/{} and queueing {} tasks ...",
            plan.system, args.tasks
        );
        let queueing = Instant::now();
        seed_tasks(&channels, plan.clone(), args.concurrency, args.tasks).await?;
        eprintln!("queued in {:.1}s", queueing.elapsed().as_secs_f64());
    }

    let mut callers: Vec<Caller> = (0..args.concurrency)
        .map(|i| Caller::new(channels[i % channels.len()].clone(), plan.clone()))
        .collect();
    let (warmup, duration) = (
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.duration),
    );
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); args.scenarios.len()];
    for run in 1..=args.runs {
        for (i, &scenario) in args.scenarios.iter().enumerate() {
            let m = measure(scenario, &mut callers, warmup, duration).await;
            eprintln!(
                "run {run}/{} {:<6} {:>10.1} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                args.runs,
                scenario.name(),
                m.req_per_sec,
                m.p50_ms,
                m.p99_ms,
                m.error_count()
            );
            results[i].push(m);
        }
    }

    let mut scenarios: Vec<Summary> = args
        .scenarios
        .iter()
        .zip(results)
        .map(|(&scenario, runs)| summarize(scenario, runs, args.batch_size))
        .collect();
    set_health_ratios(&mut scenarios);
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
        scenarios,
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
