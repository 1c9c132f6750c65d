//! The summary over runs (medians, ratios to the baselines) and how it is printed.

use super::*;

/// The summary of one scenario (in one mode) over all runs.
#[derive(Serialize)]
pub(crate) struct Summary {
    pub(crate) scenario: Scenario,
    pub(crate) mode: Mode,
    pub(crate) median_req_per_sec: f64,
    pub(crate) median_p50_ms: f64,
    pub(crate) median_p99_ms: f64,
    pub(crate) median_p999_ms: f64,
    /// Median scheduled rate (open-loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) median_target_rate: Option<f64>,
    /// Median decisions per second (batch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) median_decisions_per_sec: Option<f64>,
    /// Median tasks claimed and completed per second (tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) median_tasks_per_sec: Option<f64>,
    /// Errors summed over all runs, by label.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) errors_total: u64,
    /// The median over runs of req/s / health's req/s in the same run, when health was
    /// measured closed-loop (closed-loop gRPC scenarios only).
    pub(crate) ratio_to_health: Option<f64>,
    /// The median over runs of req/s / pgbench's TPS in the same run, when pgbench was
    /// measured (record and pgbench-record only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_to_pgbench: Option<f64>,
    pub(crate) runs: Vec<Measurement>,
}

impl Summary {
    /// The row's name: the scenario, with the load fraction or rate when open-loop.
    pub(crate) fn label(&self, rate_fraction: Option<f64>) -> String {
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
pub(crate) struct Report {
    pub(crate) addr: String,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) duration_secs: u64,
    pub(crate) warmup_secs: u64,
    pub(crate) runs: usize,
    pub(crate) subjects: usize,
    pub(crate) tasks: usize,
    pub(crate) batch_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pgbench: Option<PgbenchInfo>,
    pub(crate) scenarios: Vec<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory: Option<MemoryReport>,
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
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

pub(crate) fn summarize(
    scenario: Scenario,
    mode: Mode,
    runs: Vec<Measurement>,
    batch_size: usize,
) -> Summary {
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
pub(crate) fn set_ratios(summaries: &mut [Summary]) {
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

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn print_table(report: &Report) {
    if !report.scenarios.is_empty() {
        print_rows(report);
    }
    if let Some(m) = &report.memory {
        print_memory(m);
    }
}

pub(crate) fn print_rows(report: &Report) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
