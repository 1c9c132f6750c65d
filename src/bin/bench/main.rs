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

mod batch;
mod check;
mod common;
mod health;
mod measure;
mod memory;
mod pgbench;
mod record;
mod report;
mod request;
mod tasks;

// One program split for reading, not a library: these imports and the globs
// below serve every scenario file, each of which starts with `use super::*`.
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

use common::*;
use measure::*;
use memory::*;
use pgbench::*;
use report::*;
use tasks::*;

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
