//! Consent checks: the decisions given, by verdict and reason, and the
//! decision cache that answers most of them (read from the cache's own
//! counters at scrape time, so the hot path pays nothing more for them).
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: &'static str,
    reason: &'static str,
}

/// The answers of CheckConsent and BatchCheckConsent.
#[derive(Default)]
pub struct DecisionMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl DecisionMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "privacy_records_consent_decisions",
            "Consent checks answered (CheckConsent, BatchCheckConsent), by verdict (allowed, \
             denied) and the reason of the decision.",
            m.decisions.clone(),
        );
        m
    }

    pub fn decided(&self, allowed: bool, reason: &'static str) {
        let verdict = if allowed { "allowed" } else { "denied" };
        self.decisions
            .get_or_create(&DecisionLabels { verdict, reason })
            .inc();
    }
}

/// What the decision cache holds and has done, as its owner reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheReading {
    /// Subjects kept.
    pub entries: u64,
    /// Checks answered from memory alone.
    pub hits: u64,
    /// Checks answered after loading their subjects.
    pub loads: u64,
    /// Checks the cache left to PostgreSQL.
    pub passes: u64,
    /// How long ago the cache was last known to be exactly PostgreSQL
    /// (`None`: never, or the cache is off).
    pub staleness: Option<Duration>,
}

type Reader = Box<dyn Fn() -> CacheReading + Send + Sync>;

/// Reads the cache at each scrape, once the server has given it a reader.
#[derive(Default)]
pub struct CacheCollector {
    reader: OnceLock<Reader>,
}

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl CacheCollector {
    /// Sets how the cache is read (once; later calls are ignored).
    pub fn watch(&self, read: impl Fn() -> CacheReading + Send + Sync + 'static) {
        let _ = self.reader.set(Box::new(read));
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = self.reader.get().map(|read| read()).unwrap_or_default();
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            &mut encoder,
            "privacy_records_decision_cache_hits",
            "Consent checks the decision cache answered from memory.",
            r.hits,
        )?;
        let misses = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "privacy_records_decision_cache_misses",
            "Consent checks the decision cache could not answer from memory: answered after \
             loading the subject (loaded), or left to PostgreSQL (passed: the cache behind a \
             consistency token or too stale, a subject written here not yet applied, ...).",
            None,
            misses.metric_type(),
        )?;
        for (then, n) in [("loaded", r.loads), ("passed", r.passes)] {
            ConstCounter::new(n).encode(family.encode_family(&[("then", then)])?)?;
        }
        let entries = ConstGauge::new(i64::try_from(r.entries).unwrap_or(i64::MAX));
        entries.encode(encoder.encode_descriptor(
            "privacy_records_decision_cache_entries",
            "Subjects the decision cache holds.",
            None,
            entries.metric_type(),
        )?)?;
        let age = ConstGauge::new(r.staleness.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        age.encode(encoder.encode_descriptor(
            "privacy_records_decision_cache_applied_age_seconds",
            "How long ago the decision cache was last known to hold exactly what PostgreSQL \
             holds: the age of the change feed position it has applied (+Inf: never, or the \
             cache is off).",
            None,
            age.metric_type(),
        )?)?;
        Ok(())
    }
}
