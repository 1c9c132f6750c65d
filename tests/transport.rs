//! The transport under hostile traffic, over real sockets and a real
//! PostgreSQL: credential-less floods do not take callers' capacity.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestServer, test_settings};
use privacy_records::proto::CheckConsentRequest;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

const CONSOLE_TOKEN: &str = "console-token-0123456789";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn callers_toml() -> String {
    format!(
        "[[caller]]\nname = \"privacy-console\"\ntoken_sha256 = [\"{}\"]\nallow = [\"*\"]\n",
        hex::encode(Sha256::digest(CONSOLE_TOKEN.as_bytes()))
    )
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

fn check() -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: "ann".into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_flood_of_calls_without_credentials_never_sheds_an_authenticated_caller() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.max_concurrent_calls = 2;
    let server = TestServer::start_with(settings).await;

    // Strangers call as fast as they can, each refusal audited.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut stranger = ConsentServiceClient::new(server.channel());
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let (mut refused, mut other) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let status = stranger.check_consent(check()).await.expect_err("stranger");
                if status.code() == Code::Unauthenticated {
                    refused += 1;
                } else {
                    other.push(status.code());
                }
            }
            (refused, other)
        }));
    }

    let mut console = ConsentServiceClient::new(server.channel());
    let mut shed = 0;
    for _ in 0..200 {
        match console
            .check_consent(with_token(check(), CONSOLE_TOKEN))
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => panic!("the console's check failed: {status:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut refused, mut other) = (0, Vec::new());
    for task in flood {
        let (n, codes) = task.await.expect("flood task");
        refused += n;
        other.extend(codes);
    }
    assert!(refused > 0, "the flood ran");
    assert_eq!(
        shed, 0,
        "the console was shed while {refused} strangers were refused"
    );
    // Strangers are refused before they could take a permit.
    assert!(other.is_empty(), "strangers got {other:?}");
    server.finish().await;
}
