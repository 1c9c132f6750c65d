//! Prometheus metrics over HTTP, checked by Prometheus' own tools: the
//! exposition passes `promtool check metrics`, and a real Prometheus server
//! scrapes the server on loopback and sees, through its query API, the
//! counters move as calls are made.
mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::clients::{file_request, register_system};
use common::{TestDb, TestServer, test_settings, wait_until};
use privacy_records::config::Settings;
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    CheckConsentRequest, CreatePrivacyRequestRequest, DataAction, RequestType,
    VerifyAuditLogRequest, privacy_request,
};
use privacy_records::server::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn with_metrics() -> (TestServer, SocketAddr) {
    with_metrics_and(test_settings()).await
}

async fn with_metrics_and(mut settings: Settings) -> (TestServer, SocketAddr) {
    settings.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    settings.metrics_state_interval = std::time::Duration::from_millis(200);
    let db = TestDb::new().await;
    let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let app = Application::build(settings, pool, common::test_keyring())
        .await
        .expect("build");
    let metrics = app.metrics_addr().expect("metrics listener");
    (TestServer::run(db, app).await, metrics)
}

/// A plain HTTP/1.1 GET: the status line's code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn check(subject: &str) -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: subject.into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_scrape_counts_calls_by_method_and_code_and_promtool_accepts_it() {
    let (mut server, metrics) = with_metrics().await;
    for _ in 0..3 {
        server
            .consent
            .check_consent(check("ann"))
            .await
            .expect("check");
    }
    let refused = server.consent.check_consent(check("")).await;
    assert_eq!(
        refused.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );

    let (code, body) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    for line in [
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"privacy.v1.ConsentService\",grpc_method=\"CheckConsent\",grpc_code=\"OK\"} 3",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"privacy.v1.ConsentService\",grpc_method=\"CheckConsent\",grpc_code=\"InvalidArgument\"} 1",
        "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"privacy.v1.ConsentService\",grpc_method=\"CheckConsent\"} 4",
    ] {
        assert!(body.contains(line), "no {line:?} in\n{body}");
    }
    assert!(
        body.contains("grpc_server_handling_seconds_bucket{"),
        "no latency histogram in\n{body}"
    );
    assert!(
        !body.contains("api_io_storage"),
        "a request's value became a label"
    );
    let decided: f64 = body
        .lines()
        .filter(|l| l.starts_with("privacy_records_consent_decisions_total{verdict="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        decided, 3.0,
        "three decisions, by verdict and reason, in\n{body}"
    );

    let (code, _) = http_get(metrics, "/nothing").await;
    assert_eq!(code, 404);

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    let mut stdin = promtool.stdin.take().expect("stdin");
    stdin
        .write_all(body.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let out = promtool.wait_with_output().await.expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.finish().await;
}

/// A Prometheus server scraping `target` every second, on a free loopback
/// port, with its data in a scratch directory; killed when dropped.
struct Prometheus {
    addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: privacy-records\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            probe.local_addr().expect("addr")
        };
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus (Debian's prometheus package; .ci/run installs it)");
        let prometheus = Prometheus {
            addr,
            child,
            _dir: dir,
        };
        wait_until("Prometheus ready", || async {
            match TcpStream::connect(addr).await {
                Ok(_) => http_get(addr, "/-/ready").await.0 == 200,
                Err(_) => false,
            }
        })
        .await;
        prometheus
    }

    /// The value of an instant query with one result, if it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")).await;
        assert_eq!(code, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_server_and_sees_calls_counted() {
    let (mut server, metrics) = with_metrics().await;
    let mut prometheus = Prometheus::start(metrics).await;
    let query = "sum(grpc_server_handled_total{grpc_method=\"CheckConsent\",grpc_code=\"OK\"})";
    wait_until("the first scrape", || async {
        prometheus.value("up{job=\"privacy-records\"}").await == Some(1.0)
    })
    .await;
    let before = prometheus.value(query).await.unwrap_or(0.0);
    for _ in 0..5 {
        server
            .consent
            .check_consent(check("ann"))
            .await
            .expect("check");
    }
    wait_until("five more checks counted", || async {
        prometheus.value(query).await.unwrap_or(0.0) >= before + 5.0
    })
    .await;
    let _ = prometheus.child.kill().await;
    server.finish().await;
}

#[tokio::test]
async fn an_overdue_request_reaches_the_overdue_gauge_through_prometheus() {
    let (server, metrics) = with_metrics().await;
    let mut prometheus = Prometheus::start(metrics).await;
    let overdue = "sum(privacy_records_requests_overdue{jurisdiction=\"US-CA\"})";
    let open = "sum(privacy_records_requests_open{request_type=\"deletion\"})";
    wait_until("the first state sample scraped", || async {
        prometheus
            .value("privacy_records_state_sampled_timestamp_seconds")
            .await
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    assert_eq!(prometheus.value(overdue).await.unwrap_or(0.0), 0.0);

    // Received 60 days ago: California's 45 days have run out.
    let received = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * 86_400);
    let mut requests = PrivacyRequestServiceClient::new(server.channel());
    requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: common::request_id(),
            subject_id: "late-lou".into(),
            request_type: RequestType::Deletion as i32,
            jurisdiction: "US-CA".into(),
            channel: privacy_request::Channel::WebForm as i32,
            receive_time: Some(received.into()),
            ..Default::default()
        })
        .await
        .expect("create");
    wait_until("the overdue request counted", || async {
        prometheus.value(overdue).await == Some(1.0)
    })
    .await;
    assert_eq!(prometheus.value(open).await, Some(1.0));
    assert!(
        prometheus
            .value("privacy_records_requests_soonest_due_seconds")
            .await
            .is_some_and(|d| d < 0.0),
        "the oldest open request is past due"
    );
    let _ = prometheus.child.kill().await;
    server.finish().await;
}

/// A scrape once one contains `text` (a family, once it has a series,
/// stays).
async fn wait_for_scrape(metrics: SocketAddr, text: &str) -> String {
    wait_until(&format!("{text} in a scrape"), || async {
        http_get(metrics, "/metrics").await.1.contains(text)
    })
    .await;
    http_get(metrics, "/metrics").await.1
}

/// The metric families of a classic-text scrape, by name, with their type.
fn families(scrape: &str) -> std::collections::HashMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Every metric name a PromQL expression uses (identifiers of this server's
/// families; functions, labels and keywords are not).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("grpc_server_") || w.starts_with("privacy_records_"))
        // A prose mention of a prefix (`privacy_records_requests_*`).
        .filter(|w| !w.ends_with('_'))
        .map(str::to_owned)
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_in_a_scrape() {
    let mut settings = test_settings();
    settings.retention_sweeper = true;
    settings.retention_sweep_interval = std::time::Duration::from_millis(100);
    let (mut server, metrics) = with_metrics_and(settings).await;
    // A family shows in a scrape once it has a series: a queued deletion
    // task, an open request and a decision give every labelled one its
    // first.
    let mut c = server.clients();
    c.register(register_system(
        "crm",
        &["account_data"],
        &[DataAction::Delete],
    ))
    .await;
    c.file_and_verify(file_request("ann", RequestType::Deletion))
        .await;
    server
        .consent
        .check_consent(check("ann"))
        .await
        .expect("check");
    let scrape = wait_for_scrape(metrics, "privacy_records_tasks{").await;
    let families = families(&scrape);
    let exported = |name: &str| {
        families.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| families.get(base).is_some_and(|t| t == "histogram"))
            })
    };

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/privacy-records.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() > 20, "the dashboard's queries: {queries:?}");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml"))
        .expect("the alert rules");
    let mut missing = std::collections::BTreeSet::new();
    let mut named = 0;
    for name in queries
        .iter()
        .chain([&alerts])
        .flat_map(|q| metric_names(q))
    {
        named += 1;
        // The replica's gauges exist only with a replica (tests/replica.rs).
        if !exported(&name) && !name.starts_with("privacy_records_replica_") {
            missing.insert(name);
        }
    }
    assert!(named > 40, "{named} metric names found");
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not exported: {missing:?}"
    );
    server.finish().await;
}

#[tokio::test]
async fn the_sweeper_and_the_last_audit_verification_are_exported() {
    let mut settings = test_settings();
    settings.retention_sweeper = true;
    settings.retention_sweep_interval = std::time::Duration::from_millis(100);
    let (server, metrics) = with_metrics_and(settings).await;
    let sample = |scrape: &str, name: &str| -> f64 {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{scrape}"))
    };
    let (_, scrape) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&scrape, "privacy_records_retention_sweep_interval_seconds"),
        0.1
    );
    assert_eq!(
        sample(
            &scrape,
            "privacy_records_audit_verification_timestamp_seconds"
        ),
        0.0,
        "not verified yet"
    );
    let started = sample(
        &scrape,
        "privacy_records_retention_sweep_last_run_timestamp_seconds",
    );
    wait_until("a sweep finished", || async {
        let (_, scrape) = http_get(metrics, "/metrics").await;
        sample(
            &scrape,
            "privacy_records_retention_sweep_last_run_timestamp_seconds",
        ) > started
    })
    .await;

    let found = AuditServiceClient::new(server.channel())
        .verify_audit_log(VerifyAuditLogRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(found.intact);
    let (_, scrape) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&scrape, "privacy_records_audit_verification_intact"),
        1.0
    );
    assert!(
        sample(
            &scrape,
            "privacy_records_audit_verification_timestamp_seconds"
        ) > 0.0
    );
    server.finish().await;
}
