//! Prometheus metrics, served over HTTP at `GET /metrics` when
//! `metrics_listen` is set (see `http`). The gRPC server's metrics are
//! named as the gRPC ecosystem names them (`grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`), so the
//! dashboards and alerts written for SpiceDB or any go-grpc-prometheus
//! server work here too. No label carries personal data: methods, codes,
//! states, jurisdictions and data-system ids only.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client
//! (OpenMetrics text, typed label sets, no global registry).
mod background;
mod consent;
mod grpc;
mod http;
mod state;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use background::{SweepMetrics, VerificationMetrics};
pub use consent::{CacheCollector, CacheReading, DecisionMetrics};
pub use grpc::{CallRecord, GrpcMetrics};
pub use http::serve;
pub use state::StateMetrics;

/// Every metric the server exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    grpc: Arc<GrpcMetrics>,
    state: Arc<StateMetrics>,
    sweeps: Arc<SweepMetrics>,
    verifications: Arc<VerificationMetrics>,
    decisions: Arc<DecisionMetrics>,
    cache: Arc<CacheCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let grpc = Arc::new(GrpcMetrics::register(&mut registry));
        let state = Arc::new(StateMetrics::register(&mut registry));
        let sweeps = Arc::new(SweepMetrics::register(&mut registry));
        let verifications = Arc::new(VerificationMetrics::register(&mut registry));
        let decisions = Arc::new(DecisionMetrics::register(&mut registry));
        let cache = Arc::new(CacheCollector::default());
        registry.register_collector(Box::new(cache.clone()));
        Self(Arc::new(Inner {
            registry,
            grpc,
            state,
            sweeps,
            verifications,
            decisions,
            cache,
        }))
    }

    /// The gRPC server's metrics.
    pub fn grpc(&self) -> &Arc<GrpcMetrics> {
        &self.0.grpc
    }

    /// The service's state, sampled from the database.
    pub fn state(&self) -> &Arc<StateMetrics> {
        &self.0.state
    }

    /// The retention sweeper's runs.
    pub fn sweeps(&self) -> &Arc<SweepMetrics> {
        &self.0.sweeps
    }

    /// The audit chain's last verification.
    pub fn verifications(&self) -> &Arc<VerificationMetrics> {
        &self.0.verifications
    }

    /// The answers of consent checks.
    pub fn decisions(&self) -> &Arc<DecisionMetrics> {
        &self.0.decisions
    }

    /// The decision cache, read at each scrape.
    pub fn cache(&self) -> &CacheCollector {
        &self.0.cache
    }

    /// The exposition: OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    /// The exposition in the classic Prometheus text format (0.0.4), for
    /// clients that do not ask for OpenMetrics (curl, `promtool check
    /// metrics`).
    pub fn encode_classic(&self) -> String {
        to_classic_text(&self.encode())
    }
}

/// OpenMetrics text to the classic format: a counter family's HELP and
/// TYPE name its `_total` series, and there is no `# EOF` (or `# UNIT`).
/// Samples, labels and escaping are the same in both.
fn to_classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counters_by_their_total_series() {
        let om = "# HELP calls Calls.\n# TYPE calls counter\ncalls_total{a=\"b\"} 3\n\
                  # HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            super::to_classic_text(om),
            "# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{a=\"b\"} 3\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
