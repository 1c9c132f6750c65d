//! Property tests of every RPC, driven by the file descriptor set: for each
//! method of each `privacy.v1` service, arbitrary messages of its input type
//! (built from the descriptor, so a new RPC or field is covered without
//! editing this file), plus truncated and raw random bytes, go over real
//! gRPC to a real server on a real database. Each case must get an answer
//! that is neither INTERNAL nor UNKNOWN nor UNAVAILABLE, no server thread may
//! panic, and a call that fails must not have written anything (every write
//! writes an audit event and, through `rpc::mutate`, an idempotency key in
//! its own transaction; consent changes also go to the change feed).
//!
//! Cases per RPC: `PRIVACY_RECORDS_FUZZ_CASES` (default 48: about 7 s for
//! every RPC, to keep `cargo test --all-targets` short; CI's long run sets
//! 10000: 60-85 s per RPC in a debug build on 2 cores, measured on
//! CheckConsent and CreatePrivacyRequest). `PRIVACY_RECORDS_FUZZ_METHOD=Name`
//! runs that method only. A failure names the method and prints the shrunk
//! case, compactly and as bytes.
mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::raw::RawCodec;
use common::{TestServer, request_id, test_settings};
use privacy_records::proto;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    MethodDescriptor, Value,
};
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic::{Code, Status};

const DEFAULT_CASES: u32 = 48;
/// Nested messages deeper than this are left unset.
const MAX_DEPTH: usize = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn cases() -> u32 {
    std::env::var("PRIVACY_RECORDS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

// ---- panics on the server's threads -----------------------------------------

/// Panics seen on threads named `fuzz-*` (the servers' runtimes), with the
/// thread name, so each service test finds its own.
fn panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with("fuzz-")
                && let Ok(mut p) = panics().lock()
            {
                p.push(format!("{name}: {info}"));
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

fn panics_on(thread: &str) -> Vec<String> {
    panics()
        .lock()
        .map(|p| {
            p.iter()
                .filter(|m| m.starts_with(&format!("{thread}:")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

// ---- arbitrary messages from a descriptor -----------------------------------

/// What is sent: a message built from the descriptor, the same cut short,
/// or bytes that are probably not protobuf at all.
#[derive(Clone)]
enum Case {
    Message(DynamicMessage),
    Truncated(DynamicMessage, usize),
    Raw(Vec<u8>),
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Case::Message(m) => m.encode_to_vec(),
            Case::Truncated(m, cut) => {
                let mut b = m.encode_to_vec();
                if !b.is_empty() {
                    b.truncate(cut % b.len());
                }
                b
            }
            Case::Raw(b) => b.clone(),
        }
    }
}

/// Hex, the first 256 bytes only.
fn show_bytes(b: &[u8]) -> String {
    let shown = hex::encode(&b[..b.len().min(256)]);
    if b.len() > 256 {
        format!("{shown}... ({} bytes)", b.len())
    } else {
        shown
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Case::Message(m) => write!(f, "{}", show_message(m)),
            Case::Truncated(m, cut) => write!(f, "cut at {cut}: {}", show_message(m)),
            Case::Raw(b) => write!(f, "raw bytes {}", show_bytes(b)),
        }
    }
}

/// A message in a compact text form: `{name: "x", items: ["a"; 1001]}`.
fn show_message(m: &DynamicMessage) -> String {
    let fields: Vec<String> = m
        .fields()
        .map(|(f, v)| format!("{}: {}", f.name(), show_value(v)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 40 => {
            let head: String = s.chars().take(12).collect();
            format!("{head:?}... ({} bytes)", s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Message(m) => show_message(m),
        Value::List(items) => match items.first() {
            Some(first) if items.len() > 3 && items.iter().all(|i| i == first) => {
                format!("[{}; {}]", show_value(first), items.len())
            }
            _ => format!(
                "[{}]",
                items.iter().map(show_value).collect::<Vec<_>>().join(", ")
            ),
        },
        other => format!("{other:?}"),
    }
}

fn case_strategy(input: &MessageDescriptor) -> BoxedStrategy<Case> {
    let message = message_strategy(input, 0);
    prop_oneof![
        12 => message.clone().prop_map(Case::Message),
        1 => (message, any::<usize>()).prop_map(|(m, cut)| Case::Truncated(m, cut)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Case::Raw),
    ]
    .boxed()
}

fn message_strategy(desc: &MessageDescriptor, depth: usize) -> BoxedStrategy<DynamicMessage> {
    let desc = desc.clone();
    let fields: Vec<BoxedStrategy<Option<(FieldDescriptor, Value)>>> = desc
        .fields()
        .filter_map(|f| {
            let value = field_strategy(&f, depth)?;
            let f2 = f.clone();
            Some(
                proptest::option::weighted(0.6, value)
                    .prop_map(move |v| v.map(|v| (f2.clone(), v)))
                    .boxed(),
            )
        })
        .collect();
    fields
        .prop_map(move |values| {
            let mut m = DynamicMessage::new(desc.clone());
            for (f, v) in values.into_iter().flatten() {
                m.set_field(&f, v);
            }
            m
        })
        .boxed()
}

fn field_strategy(f: &FieldDescriptor, depth: usize) -> Option<BoxedStrategy<Value>> {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return None;
        };
        let key = single_strategy(&entry.map_entry_key_field(), depth)?;
        let value = single_strategy(&entry.map_entry_value_field(), depth)?;
        return Some(
            proptest::collection::vec((key, value), 0..4)
                .prop_map(|entries| {
                    Value::Map(
                        entries
                            .into_iter()
                            .filter_map(|(k, v)| map_key(k).map(|k| (k, v)))
                            .collect(),
                    )
                })
                .boxed(),
        );
    }
    let one = single_strategy(f, depth)?;
    if f.is_list() {
        // Mostly a few items; sometimes just past the usual limits.
        return Some(
            prop_oneof![
                8 => proptest::collection::vec(one.clone(), 0..4).prop_map(Value::List),
                1 => (one, prop::sample::select(vec![51usize, 101, 301, 1001]))
                    .prop_map(|(v, n)| Value::List(vec![v; n])),
            ]
            .boxed(),
        );
    }
    Some(one)
}

fn map_key(v: Value) -> Option<MapKey> {
    Some(match v {
        Value::String(s) => MapKey::String(s),
        Value::I32(n) => MapKey::I32(n),
        Value::I64(n) => MapKey::I64(n),
        Value::U32(n) => MapKey::U32(n),
        Value::U64(n) => MapKey::U64(n),
        Value::Bool(b) => MapKey::Bool(b),
        _ => return None,
    })
}

fn single_strategy(f: &FieldDescriptor, depth: usize) -> Option<BoxedStrategy<Value>> {
    let name = f.name().to_owned();
    Some(match f.kind() {
        Kind::String => string_strategy(&name).prop_map(Value::String).boxed(),
        Kind::Bytes => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| Value::Bytes(b.into()))
            .boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            int32_strategy(&name).prop_map(Value::I32).boxed()
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            int64_strategy(&name).prop_map(Value::I64).boxed()
        }
        Kind::Uint32 | Kind::Fixed32 => prop_oneof![0u32..400, any::<u32>()]
            .prop_map(Value::U32)
            .boxed(),
        Kind::Uint64 | Kind::Fixed64 => prop_oneof![0u64..400, any::<u64>()]
            .prop_map(Value::U64)
            .boxed(),
        Kind::Float => any::<f32>().prop_map(Value::F32).boxed(),
        Kind::Double => any::<f64>().prop_map(Value::F64).boxed(),
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            prop_oneof![
                6 => prop::sample::select(known),
                1 => any::<i32>(),
                1 => Just(-1),
            ]
            .prop_map(Value::EnumNumber)
            .boxed()
        }
        Kind::Message(m) => {
            if depth >= MAX_DEPTH {
                return None;
            }
            message_strategy(&m, depth + 1)
                .prop_map(Value::Message)
                .boxed()
        }
    })
}

fn int32_strategy(name: &str) -> BoxedStrategy<i32> {
    match name {
        "year" => prop_oneof![1999..2030i32, any::<i32>()].boxed(),
        "nanos" => prop_oneof![0..1_000_000_000i32, any::<i32>()].boxed(),
        _ => prop_oneof![4 => -2..20i32, 1 => 990..1010i32, 2 => any::<i32>()].boxed(),
    }
}

fn int64_strategy(name: &str) -> BoxedStrategy<i64> {
    let now = chrono::Utc::now().timestamp();
    match name {
        // Timestamps: near now (valid), and far outside what chrono takes.
        "seconds" => prop_oneof![
            6 => (now - 400 * 86_400)..(now + 2 * 86_400),
            1 => Just(253_402_300_800i64),
            1 => Just(-62_135_596_801i64),
            1 => any::<i64>(),
        ]
        .boxed(),
        _ => prop_oneof![4 => -2..20i64, 2 => any::<i64>()].boxed(),
    }
}

fn string_strategy(field: &str) -> BoxedStrategy<String> {
    let generic = prop_oneof![
        4 => Just(String::new()),
        4 => "[a-z][a-z0-9_]{0,12}",
        2 => "\\PC{0,24}",
        2 => "(?s).{0,12}",
        1 => prop::sample::select(vec![128usize, 129, 256, 257, 1024, 1025, 2049, 8001])
            .prop_map(|n| "x".repeat(n)),
        1 => Just("é".repeat(2001)),
        1 => prop::sample::select(vec![" ", "\0", "a\nb", "\u{202e}", "null", "' OR 1=1 --", "%s%n", "../../etc/passwd"])
            .prop_map(str::to_owned),
    ];
    match hints(field) {
        Some(hints) => prop_oneof![3 => hints, 2 => generic].boxed(),
        None => generic.boxed(),
    }
}

fn pick(values: &[&str]) -> BoxedStrategy<String> {
    let owned: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    prop::sample::select(owned).boxed()
}

/// Plausible values by field name, so that some cases get past validation
/// and reach the use cases and the database.
fn hints(field: &str) -> Option<BoxedStrategy<String>> {
    let names = [
        "purposes/marketing_email",
        "purposes/model_training",
        "privacyRequests/1",
        "privacyRequests/2",
        "privacyRequests/99",
        "tasks/1",
        "tasks/2",
        "dataSystems/billing-db",
        "dataSystems/nope",
        "legalHolds/1",
        "subjects/s1",
        "jurisdictionRules/US-CA",
        "jurisdictionRules/DE",
        "retentionPolicies/account_information",
        "policyVersions/v1",
    ];
    Some(match field {
        "request_id" | "lease_id" => prop_oneof![
            4 => "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}",
            1 => Just("fuzz-fixed-request-id".to_owned()),
        ]
        .boxed(),
        "subject_id" => pick(&["s1", "s2", "s3", "user-42", "acct_123"]),
        "purpose" | "key" | "contradicted_purpose" => pick(&[
            "marketing_email",
            "model_training",
            "sale_of_personal_data",
            "service_messages",
            "analytics_cookies",
            "fuzz_purpose",
        ]),
        "jurisdiction" | "code" | "country" | "requested_code" => {
            pick(&["US", "US-CA", "US-UT", "EU", "DE", "GB", "usa", "ZZ"])
        }
        "name" | "data_system" | "privacy_request" | "task" => pick(&names),
        "category" | "categories" => pick(&[
            "account_information",
            "payment_records",
            "contact_inquiries",
            "Not-OK",
        ]),
        "due_before" | "due_date" | "right_since" | "effective_date" => {
            pick(&["2026-01-01", "2026-13-45", "9999-12-31", "0000-01-01"])
        }
        "text_sha256" | "content_sha256" => "[0-9a-f]{64}".boxed(),
        "export_json" => pick(&["{}", "{\"a\":1}", "[1,2]", "{not json", "\"x\""]),
        "version_id" | "policy_version" => pick(&["v1", "2026-11-01", "v 1"]),
        "id" => pick(&["billing-db", "crm", "Billing DB"]),
        "worker" | "display_name" | "recipient" => pick(&["worker-1", "Acme", "  "]),
        "value" => pick(&["ann@example.com", "+1 555 0100", "device-1"]),
        "paths" => pick(&["display_name", "consent_model", "*", "key", "nope"]),
        _ => return None,
    })
}

// ---- the checks ---------------------------------------------------------------

/// What every write leaves behind: the last audit event, the last change
/// feed entry, and the number of idempotency keys.
async fn write_marks(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT coalesce(max(id), 0) FROM audit_events),
                (SELECT coalesce(max(id), 0) FROM change_events),
                (SELECT count(*) FROM idempotency_keys)",
    )
    .fetch_one(pool)
    .await
    .expect("read the write marks")
}

/// Calls `path` with `body`; for a server-streaming method, reads the first
/// message (or the status) and drops the stream.
async fn call(
    grpc: &mut tonic::client::Grpc<Channel>,
    method: &MethodDescriptor,
    path: &str,
    body: Vec<u8>,
) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path: http::uri::PathAndQuery = path.parse().expect("method path");
    let request = tonic::Request::new(body);
    if method.is_server_streaming() {
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await?
            .into_inner();
        match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(status)) => Err(status),
        }
    } else if method.is_client_streaming() {
        let stream = tokio_stream::iter(vec![body_of(request)]);
        grpc.client_streaming(tonic::Request::new(stream), path, RawCodec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    }
}

fn body_of(request: tonic::Request<Vec<u8>>) -> Vec<u8> {
    request.into_inner()
}

struct Fuzz {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    pool: PgPool,
    grpc: tonic::client::Grpc<Channel>,
    thread: String,
}

impl Fuzz {
    fn start(service: &str) -> Fuzz {
        panics();
        let thread = format!("fuzz-{service}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(thread.clone())
            .enable_all()
            .build()
            .expect("runtime");
        let (server, pool, grpc) = rt.block_on(async {
            let settings = privacy_records::config::Settings {
                watch_heartbeat: Duration::from_millis(20),
                ..test_settings()
            };
            let server = TestServer::start_with(settings).await;
            let pool = server.db.pool().await;
            let channel = server.channel();
            seed(channel.clone()).await;
            (server, pool, tonic::client::Grpc::new(channel))
        });
        Fuzz {
            rt,
            server,
            pool,
            grpc,
            thread,
        }
    }

    /// Runs the cases of every method of `service`; returns the failures.
    fn run_service(&mut self, service: &str) -> Vec<String> {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let svc = pool
            .get_service_by_name(&format!("privacy.v1.{service}"))
            .unwrap_or_else(|| panic!("no service privacy.v1.{service}"));
        let mut failures = Vec::new();
        let only = std::env::var("PRIVACY_RECORDS_FUZZ_METHOD").ok();
        for method in svc.methods() {
            if only.as_ref().is_some_and(|m| m != method.name()) {
                continue;
            }
            let started = std::time::Instant::now();
            let path = format!("/{}/{}", svc.full_name(), method.name());
            let mut runner = TestRunner::new(Config {
                cases: cases(),
                failure_persistence: None,
                max_shrink_iters: 256,
                ..Config::default()
            });
            let strategy = case_strategy(&method.input());
            let result = runner.run(&strategy, |case| self.check(&method, &path, &case));
            eprintln!(
                "fuzz: {path}: {} cases in {:.2?}",
                cases(),
                started.elapsed()
            );
            match result {
                Ok(()) => {}
                Err(TestError::Fail(why, case)) => failures.push(format!(
                    "{path}: {why}\n  case: {case:?}\n  bytes: {}",
                    show_bytes(&case.bytes())
                )),
                Err(TestError::Abort(why)) => failures.push(format!("{path}: aborted: {why}")),
            }
        }
        failures
    }

    fn check(
        &self,
        method: &MethodDescriptor,
        path: &str,
        case: &Case,
    ) -> Result<(), TestCaseError> {
        let body = case.bytes();
        let pool = self.pool.clone();
        let mut grpc = self.grpc.clone();
        let (before, outcome, after) = self.rt.block_on(async {
            let before = write_marks(&pool).await;
            let outcome =
                tokio::time::timeout(CALL_TIMEOUT, call(&mut grpc, method, path, body)).await;
            let after = write_marks(&pool).await;
            (before, outcome, after)
        });
        let panicked = panics_on(&self.thread);
        if !panicked.is_empty() {
            return Err(TestCaseError::fail(format!(
                "the server panicked: {panicked:?}"
            )));
        }
        let outcome = outcome
            .map_err(|_| TestCaseError::fail(format!("no answer within {CALL_TIMEOUT:?}")))?;
        if let Err(status) = outcome {
            if matches!(
                status.code(),
                Code::Internal
                    | Code::Unknown
                    | Code::Unavailable
                    | Code::DataLoss
                    | Code::Unimplemented
            ) {
                return Err(TestCaseError::fail(format!(
                    "answered {:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
            if before != after {
                return Err(TestCaseError::fail(format!(
                    "refused with {:?} ({}) but wrote: (audit, feed, keys) {before:?} -> {after:?}",
                    status.code(),
                    status.message()
                )));
            }
        }
        Ok(())
    }

    fn finish(self) {
        let Fuzz {
            rt, server, pool, ..
        } = self;
        rt.block_on(async {
            pool.close().await;
            server.finish().await;
        });
    }
}

/// Some state for the cases to find: a data system, requests (one verified,
/// so it has tasks), a consent decision, a legal hold.
async fn seed(channel: Channel) {
    use proto::consent_service_client::ConsentServiceClient;
    use proto::data_system_service_client::DataSystemServiceClient;
    use proto::privacy_request_service_client::PrivacyRequestServiceClient;
    use proto::retention_service_client::RetentionServiceClient;

    let mut systems = DataSystemServiceClient::new(channel.clone());
    systems
        .register_data_system(proto::RegisterDataSystemRequest {
            request_id: request_id(),
            data_system: Some(proto::DataSystem {
                id: "billing-db".into(),
                display_name: "Billing".into(),
                kind: proto::data_system::Kind::Internal as i32,
                categories: vec!["account_information".into(), "payment_records".into()],
                country: "US".into(),
                actions: vec![
                    proto::DataAction::Export as i32,
                    proto::DataAction::Delete as i32,
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("seed: data system");
    let mut requests = PrivacyRequestServiceClient::new(channel.clone());
    for (subject, kind) in [
        ("s1", proto::RequestType::Deletion),
        ("s2", proto::RequestType::Access),
    ] {
        let created = requests
            .create_privacy_request(proto::CreatePrivacyRequestRequest {
                request_id: request_id(),
                subject_id: subject.into(),
                request_type: kind as i32,
                jurisdiction: "US-CA".into(),
                channel: proto::privacy_request::Channel::Email as i32,
                identifiers: vec![proto::Identifier {
                    kind: proto::identifier::Kind::EmailAddress as i32,
                    value: format!("{subject}@example.com"),
                }],
                ..Default::default()
            })
            .await
            .expect("seed: request")
            .into_inner();
        requests
            .verify_privacy_request_identity(proto::VerifyPrivacyRequestIdentityRequest {
                name: created.name,
                request_id: request_id(),
                method: "email link".into(),
                ..Default::default()
            })
            .await
            .expect("seed: verify");
    }
    ConsentServiceClient::new(channel.clone())
        .record_consent(common::grant("s1", "marketing_email"))
        .await
        .expect("seed: consent");
    RetentionServiceClient::new(channel)
        .place_legal_hold(proto::PlaceLegalHoldRequest {
            request_id: request_id(),
            legal_hold: Some(proto::LegalHold {
                subject_id: "s3".into(),
                reason: "litigation".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("seed: hold");
}

fn fuzz_service(service: &str) {
    let mut fuzz = Fuzz::start(service);
    let failures = fuzz.run_service(service);
    fuzz.finish();
    assert!(
        failures.is_empty(),
        "{} method(s) of {service} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_consent_rpc_survives_arbitrary_requests() {
    fuzz_service("ConsentService");
}

#[test]
fn every_privacy_request_rpc_survives_arbitrary_requests() {
    fuzz_service("PrivacyRequestService");
}

#[test]
fn every_data_system_rpc_survives_arbitrary_requests() {
    fuzz_service("DataSystemService");
}

#[test]
fn every_retention_rpc_survives_arbitrary_requests() {
    fuzz_service("RetentionService");
}

#[test]
fn every_audit_rpc_survives_arbitrary_requests() {
    fuzz_service("AuditService");
}

/// Every service in the descriptor set has a test above.
#[test]
fn every_service_is_fuzzed() {
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let services: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() == "privacy.v1")
        .map(|s| s.name().to_owned())
        .collect();
    let fuzzed = [
        "ConsentService",
        "PrivacyRequestService",
        "DataSystemService",
        "RetentionService",
        "AuditService",
    ];
    for s in &services {
        assert!(fuzzed.contains(&s.as_str()), "add a fuzz test for {s}");
    }
}
