//! The gRPC server's metrics, per method and status code: calls started,
//! calls handled, how long each took (to its last message, so a stream
//! counts until it ends), calls in flight and calls shed.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A method's labels. A path that is no method of this server is counted as
/// `unknown`: a stranger choosing paths must not choose label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

const UNKNOWN: MethodLabels = MethodLabels {
    grpc_type: "unknown",
    grpc_service: "unknown",
    grpc_method: "unknown",
};

/// The services served beside the contract (health and reflection).
const OTHERS: &[(&str, &str, &str, &str)] = &[
    (
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health",
        "Check",
        "unary",
    ),
    (
        "grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health",
        "Watch",
        "server_stream",
    ),
    (
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
];

/// The labels of the method at `path` (`/pkg.Service/Method`).
pub fn labels_of(path: &str) -> MethodLabels {
    static BY_PATH: OnceLock<HashMap<&'static str, MethodLabels>> = OnceLock::new();
    let by_path = BY_PATH.get_or_init(|| {
        crate::proto::method::ALL
            .iter()
            .chain(OTHERS)
            .map(|&(full, service, method, kind)| {
                (
                    full,
                    MethodLabels {
                        grpc_type: kind,
                        grpc_service: service,
                        grpc_method: method,
                    },
                )
            })
            .collect()
    });
    by_path
        .get(path.trim_start_matches('/'))
        .copied()
        .unwrap_or(UNKNOWN)
}

/// A `grpc-status` value by the name the gRPC ecosystem's metrics use.
pub fn code_name(status: &str) -> &'static str {
    match status {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

type Buckets = fn() -> Histogram;

pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling_seconds: Family<MethodLabels, Histogram, Buckets>,
    in_flight: Gauge,
    shed: Counter,
}

/// From half a millisecond (a cached check) to ten seconds.
fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_buckets as Buckets),
            in_flight: Gauge::default(),
            shed: Counter::default(),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level \
             handled by the server.",
            metrics.handling_seconds.clone(),
        );
        registry.register(
            "privacy_records_grpc_calls_in_flight",
            "RPCs in progress (streams until their last message).",
            metrics.in_flight.clone(),
        );
        registry.register(
            "privacy_records_grpc_calls_shed",
            "RPCs refused with RESOURCE_EXHAUSTED at the concurrency limit \
             (max_concurrent_calls).",
            metrics.shed.clone(),
        );
        metrics
    }

    /// Counts a call to `path` as started; the record counts it handled
    /// when dropped, with the code set on it (CANCELLED if none was).
    pub fn begin(self: &Arc<Self>, path: &str) -> CallRecord {
        let labels = labels_of(path);
        self.started.get_or_create(&labels).inc();
        self.in_flight.inc();
        CallRecord {
            metrics: self.clone(),
            labels,
            started: Instant::now(),
            code: "Canceled",
        }
    }

    /// Counts a call shed at the concurrency limit.
    pub fn shed(&self) {
        self.shed.inc();
    }
}

/// One call in progress; counted as handled when dropped.
pub struct CallRecord {
    metrics: Arc<GrpcMetrics>,
    labels: MethodLabels,
    started: Instant,
    code: &'static str,
}

impl CallRecord {
    /// The call's status: a `grpc-status` value.
    pub fn set_status(&mut self, status: &str) {
        self.code = code_name(status);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let m = &self.metrics;
        let l = self.labels;
        m.in_flight.dec();
        m.handled
            .get_or_create(&HandledLabels {
                grpc_type: l.grpc_type,
                grpc_service: l.grpc_service,
                grpc_method: l.grpc_method,
                grpc_code: self.code,
            })
            .inc();
        m.handling_seconds
            .get_or_create(&l)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_servers_methods_get_their_own_labels() {
        let l = labels_of("/privacy.v1.ConsentService/CheckConsent");
        assert_eq!(
            (l.grpc_service, l.grpc_method, l.grpc_type),
            ("privacy.v1.ConsentService", "CheckConsent", "unary")
        );
        assert_eq!(
            labels_of("/grpc.health.v1.Health/Watch").grpc_type,
            "server_stream"
        );
        assert_eq!(labels_of("/evil/AAAA"), UNKNOWN);
        assert_eq!(labels_of("/privacy.v1.ConsentService/Nope"), UNKNOWN);
    }

    #[test]
    fn a_dropped_record_counts_the_call_handled_with_its_code() {
        let mut registry = Registry::default();
        let m = Arc::new(GrpcMetrics::register(&mut registry));
        let mut call = m.begin("/privacy.v1.ConsentService/CheckConsent");
        assert_eq!(m.in_flight.get(), 1);
        call.set_status("3");
        drop(call);
        drop(m.begin("/privacy.v1.ConsentService/CheckConsent"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("grpc_code=\"InvalidArgument\"} 1"), "{text}");
        assert!(text.contains("grpc_code=\"Canceled\"} 1"), "{text}");
        assert!(text.contains("grpc_server_started_total{"), "{text}");
        assert!(
            text.contains("privacy_records_grpc_calls_in_flight 0"),
            "{text}"
        );
    }
}
