//! Logs never carry identifiers, evidence or secrets: a server
//! with callers configured runs with every `tracing` event at debug level
//! captured into a buffer, requests carrying them go through it (valid and
//! invalid ones, accepted and refused bearer tokens), and the buffer is
//! searched. To cover a new kind of secret, add it to `SECRETS` and send it
//! in `exercise`.
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{TestServer, request_id};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    self, Agent, CheckConsentRequest, CheckSuppressionRequest, CreatePrivacyRequestRequest,
    Evidence, Identifier, RecordConsentRequest, RequestType, identifier,
};
use tonic::{Request, Status};

const EMAIL: &str = "log.secret@example.com";
const PHONE: &str = "+15555550199";
const DEVICE: &str = "device-secret-8c1f";
const EVIDENCE_REF: &str = "evidence-secret-ref-31";
const EVIDENCE_TEXT: &str = "evidence secret free text";
const AGENT_CONTACT: &str = "agent.log.secret@example.org";
const CONSOLE_TOKEN: &str = "console-token-secret-5d1e";
const MAILER_TOKEN: &str = "mailer-token-secret-90ab";
const UNKNOWN_TOKEN: &str = "unknown-token-secret-77c3";

/// A stranger's overlong method path and request id (7 KB each, as a
/// flood would send them); a log line holds neither whole.
fn long_path() -> String {
    format!("Flood{}", "Pq7".repeat(2400))
}

fn long_request_id() -> String {
    format!("flood-{}", "rQ3".repeat(2400))
}

/// Everything that must never reach a log line.
const SECRETS: &[&str] = &[
    EMAIL,
    PHONE,
    DEVICE,
    EVIDENCE_REF,
    EVIDENCE_TEXT,
    AGENT_CONTACT,
    CONSOLE_TOKEN,
    MAILER_TOKEN,
    UNKNOWN_TOKEN,
];

/// The console may call anything; the mailer only checks consent.
fn callers_toml() -> String {
    use sha2::{Digest, Sha256};
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        "[[caller]]\nname = \"console\"\ntoken_sha256 = [\"{}\"]\nallow = [\"*\"]\n\
         [[caller]]\nname = \"mailer\"\ntoken_sha256 = [\"{}\"]\n\
         allow = [\"privacy.v1.ConsentService/CheckConsent\"]\n",
        hash(CONSOLE_TOKEN),
        hash(MAILER_TOKEN)
    )
}

/// Adds `authorization: Bearer <token>` to every call.
fn bearer(token: &'static str) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let value = format!("Bearer {token}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn identifiers() -> Vec<Identifier> {
    vec![
        Identifier {
            kind: identifier::Kind::EmailAddress as i32,
            value: EMAIL.into(),
        },
        Identifier {
            kind: identifier::Kind::PhoneNumber as i32,
            value: PHONE.into(),
        },
        Identifier {
            kind: identifier::Kind::DeviceId as i32,
            value: DEVICE.into(),
        },
    ]
}

/// Calls that carry the secrets: valid ones, a retry, and refused ones.
async fn exercise(server: &TestServer) {
    let channel = server.channel();
    let mut requests =
        PrivacyRequestServiceClient::with_interceptor(channel.clone(), bearer(CONSOLE_TOKEN));
    let mut consent =
        ConsentServiceClient::with_interceptor(channel.clone(), bearer(CONSOLE_TOKEN));

    let grant = RecordConsentRequest {
        request_id: request_id(),
        subject_id: "log-subject".into(),
        purpose: "model_training".into(),
        decision: proto::ConsentDecision::Granted as i32,
        source: proto::ConsentSource::WrittenAgreementSource as i32,
        evidence: Some(Evidence {
            kind: proto::EvidenceKind::WrittenAgreement as i32,
            reference: EVIDENCE_REF.into(),
            description: EVIDENCE_TEXT.into(),
        }),
        ..Default::default()
    };
    consent.record_consent(grant.clone()).await.expect("grant");
    consent.record_consent(grant.clone()).await.expect("replay");
    // The same request id with another payload: refused.
    let _ = consent
        .record_consent(RecordConsentRequest {
            purpose: "api_io_storage".into(),
            ..grant.clone()
        })
        .await
        .expect_err("reused id");
    // Evidence where the purpose takes none: refused with a field violation.
    let _ = consent
        .record_consent(RecordConsentRequest {
            request_id: request_id(),
            purpose: "no_such_purpose".into(),
            ..grant
        })
        .await;

    requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: "log-subject".into(),
            request_type: RequestType::Access as i32,
            jurisdiction: "US-CA".into(),
            channel: proto::privacy_request::Channel::WebForm as i32,
            identifiers: identifiers(),
            agent: Some(Agent {
                display_name: "Agent".into(),
                contact: AGENT_CONTACT.into(),
                evidence_reference: EVIDENCE_REF.into(),
                evidence_description: EVIDENCE_TEXT.into(),
            }),
            ..Default::default()
        })
        .await
        .expect("create");
    // Invalid: no jurisdiction; the identifiers ride along.
    let _ = requests
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: "log-subject".into(),
            request_type: RequestType::Deletion as i32,
            identifiers: identifiers(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    requests
        .check_suppression(CheckSuppressionRequest {
            identifiers: identifiers(),
            ..Default::default()
        })
        .await
        .expect("suppression");

    // Refused tokens: one the server does not know, one without permission.
    let check = CheckConsentRequest {
        subject_id: "log-subject".into(),
        purpose: "model_training".into(),
        ..Default::default()
    };
    let mut stranger =
        ConsentServiceClient::with_interceptor(channel.clone(), bearer(UNKNOWN_TOKEN));
    stranger
        .check_consent(check.clone())
        .await
        .expect_err("unknown token");
    let mut mailer = ConsentServiceClient::with_interceptor(channel, bearer(MAILER_TOKEN));
    mailer
        .check_consent(check)
        .await
        .expect("the mailer checks");
    mailer
        .record_consent(common::grant("log-subject", "api_io_storage"))
        .await
        .expect_err("the mailer may not record");

    // What a stranger sends is bounded before it is logged: a path that is
    // no method, and an overlong request id.
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.expect("ready");
    let mut request = Request::new(Vec::new());
    request.metadata_mut().insert(
        "x-request-id",
        long_request_id().parse().expect("an ascii request id"),
    );
    let path: http::uri::PathAndQuery = format!("/privacy.v1.ConsentService/{}", long_path())
        .parse()
        .expect("path");
    grpc.unary(request, path, common::raw::RawCodec)
        .await
        .expect_err("no such method, no credentials");
}

#[tokio::test]
async fn logs_at_debug_level_never_carry_identifiers_or_evidence() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = common::scratch_dir();
    let callers = dir.path().join("callers.toml");
    std::fs::write(&callers, callers_toml()).expect("callers file");
    let mut settings = common::test_settings();
    settings.security.callers_file = Some(callers);
    let server = TestServer::start_with(settings).await;
    exercise(&server).await;
    server.finish().await;

    let logs = captured.text();
    assert!(
        logs.contains("privacy.v1.ConsentService/RecordConsent"),
        "the capture works: the RPC spans are there"
    );
    assert!(
        logs.contains("unknown bearer token") && logs.contains("actor=mailer"),
        "the refusals are logged (without the tokens)"
    );
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret:?} reached the log");
    }
    assert!(
        !logs.contains(&long_path()[..200]),
        "a path that is no method is logged as such, not as sent"
    );
    assert!(
        !logs.contains(&long_request_id()[..200]),
        "a request id is cut to its limit in the log"
    );
}
