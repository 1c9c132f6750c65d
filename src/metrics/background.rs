//! What the background work did last: the retention sweeper's runs and the
//! audit chain's last verification. Set by the work itself, read at scrape.
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type F64Gauge = Gauge<f64, AtomicU64>;

/// The retention sweeper's runs.
#[derive(Default)]
pub struct SweepMetrics {
    last_run: F64Gauge,
    interval: F64Gauge,
    duration: F64Gauge,
    tasked: Counter,
    failures: Counter,
}

impl SweepMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "privacy_records_retention_sweep_last_run_timestamp_seconds",
            "When the retention sweeper last finished a sweep (Unix time; until its first, when \
             it started; 0: the sweeper is off in this process).",
            m.last_run.clone(),
        );
        registry.register(
            "privacy_records_retention_sweep_interval_seconds",
            "The retention sweeper's interval (0: the sweeper is off in this process).",
            m.interval.clone(),
        );
        registry.register(
            "privacy_records_retention_sweep_duration_seconds",
            "How long the last finished sweep took.",
            m.duration.clone(),
        );
        registry.register(
            "privacy_records_retention_sweep_tasked",
            "Deletion tasks the sweeper created from due schedule entries.",
            m.tasked.clone(),
        );
        registry.register(
            "privacy_records_retention_sweep_failures",
            "Sweeps that failed (retried at the next interval).",
            m.failures.clone(),
        );
        m
    }

    /// The sweeper runs in this process, every `interval`.
    pub fn started(&self, interval: Duration) {
        self.interval.set(interval.as_secs_f64());
        self.last_run.set(unix_now());
    }

    /// A sweep finished after `took`, having created `tasked` tasks.
    pub fn swept(&self, took: Duration, tasked: i64) {
        self.duration.set(took.as_secs_f64());
        self.tasked.inc_by(u64::try_from(tasked).unwrap_or(0));
        self.last_run.set(unix_now());
    }

    pub fn failed(&self) {
        self.failures.inc();
    }
}

/// The audit chain's last verification (a `VerifyAuditLog` call).
#[derive(Default)]
pub struct VerificationMetrics {
    intact: Gauge,
    at: F64Gauge,
}

impl VerificationMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "privacy_records_audit_verification_intact",
            "1 if the last verification of the audit chain found it intact, 0 if it found a \
             broken link (see privacy_records_audit_verification_timestamp_seconds).",
            m.intact.clone(),
        );
        registry.register(
            "privacy_records_audit_verification_timestamp_seconds",
            "When this process last verified the audit chain (Unix time; 0: not yet).",
            m.at.clone(),
        );
        m
    }

    pub fn verified(&self, intact: bool) {
        self.intact.set(i64::from(intact));
        self.at.set(unix_now());
    }
}

pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
