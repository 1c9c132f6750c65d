//! OpenTelemetry traces, opt-in by the standard variables: the real binary,
//! pointed at an OTLP/gRPC receiver this test runs on loopback (the
//! collector's own service definition, from `opentelemetry-proto`), exports
//! a span per call that continues the caller's W3C `traceparent`, with
//! child spans for the use case and the store, and logs the trace id.
mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{TestDb, wait_until};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use privacy_records::proto::CheckConsentRequest;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

/// Every span the receiver was sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().expect("spans").extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
        let addr = incoming.local_addr().expect("addr");
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (receiver, addr)
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Span> {
        let spans = self.0.lock().expect("spans");
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

#[tokio::test]
async fn a_call_continues_the_callers_trace_with_spans_for_the_use_case_and_the_store() {
    let (receiver, otlp) = Receiver::start().await;
    let db = TestDb::new().await;
    let port = common::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .envs(common::test_key_env())
        .env("PRIVACY_RECORDS_LOG_FORMAT", "json")
        .env("PRIVACY_RECORDS_LOG_FILTER", "privacy_records=debug,warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_SERVICE_NAME", "privacy-records-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    let consent = ConsentServiceClient::new(channel);
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let check = || CheckConsentRequest {
        subject_id: "traced-tina".into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    };
    wait_until("the server to answer", || {
        let mut consent = consent.clone();
        async move { consent.check_consent(check()).await.is_ok() }
    })
    .await;
    // Another subject than the warm-up's: the decision cache loads it from
    // the database, a round trip of its own.
    let mut call = tonic::Request::new(CheckConsentRequest {
        subject_id: "traced-tom".into(),
        ..check()
    });
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{parent_trace}-{parent_span}-01")
            .parse()
            .expect("metadata"),
    );
    call.metadata_mut()
        .insert("x-request-id", "trace-test-1".parse().expect("metadata"));
    consent
        .clone()
        .check_consent(call)
        .await
        .expect("a traced check");

    let trace_id = hex::decode(parent_trace).expect("hex");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while receiver.of_trace(&trace_id).len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    {
        let all = receiver.0.lock().expect("spans");
        let seen: Vec<(String, String)> = all
            .iter()
            .map(|s| (s.name.clone(), hex::encode(&s.trace_id)))
            .collect();
        assert!(
            receiver_count(&all, &trace_id) >= 3,
            "the call's spans did not arrive; the receiver has {seen:?}"
        );
    }
    let spans = receiver.of_trace(&trace_id);
    let root = spans
        .iter()
        .find(|s| s.name == "rpc")
        .unwrap_or_else(|| panic!("no rpc span in {spans:#?}"));
    assert_eq!(hex::encode(&root.parent_span_id), parent_span);
    assert_eq!(
        attribute(root, "method").as_deref(),
        Some("privacy.v1.ConsentService/CheckConsent")
    );
    assert_eq!(
        attribute(root, "request_id").as_deref(),
        Some("trace-test-1")
    );
    // The use case is a child of the call; the store's spans descend from it.
    let use_case = spans
        .iter()
        .find(|s| s.parent_span_id == root.span_id)
        .unwrap_or_else(|| panic!("no child of the rpc span in {spans:#?}"));
    assert!(
        spans.iter().any(|s| s.parent_span_id == use_case.span_id),
        "no grandchild (a store round trip) in {spans:#?}"
    );
    for span in &spans {
        for a in &span.attributes {
            assert!(
                !format!("{:?}", a.value).contains("traced-to"),
                "a subject id in span {}: {a:?}",
                span.name
            );
        }
    }

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut stderr = child.stderr.take().expect("stderr");
    let mut logs = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stderr.read_to_string(&mut logs),
    )
    .await;
    let _ = child.wait().await;
    assert!(
        logs.contains(&format!("\"trace_id\":\"{parent_trace}\"")),
        "no log line carries the trace id:\n{logs}"
    );
    db.drop_db().await;
}

fn receiver_count(spans: &[Span], trace_id: &[u8]) -> usize {
    spans.iter().filter(|s| s.trace_id == trace_id).count()
}
