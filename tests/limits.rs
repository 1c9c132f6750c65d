//! The input limits at the edge: requests over a limit, or not protobuf at
//! all, are refused with INVALID_ARGUMENT before any handler runs.
mod common;

use common::raw::RawCodec;
use common::{TestServer, error_reason, grant};
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    BatchCheckConsentRequest, CheckConsentRequest, CheckSuppressionRequest, ConsentCheck,
    Identifier,
};
use tonic::Code;
use tonic_types::StatusExt;

/// The field violations of a status, as (field, description).
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_oversized_subject_id_in_check_consent_is_refused_at_the_edge() {
    let server = TestServer::start().await;
    let err = server
        .consent
        .clone()
        .check_consent(CheckConsentRequest {
            subject_id: "s".repeat(1025),
            purpose: "marketing_email".into(),
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(error_reason(&err).0, "FIELD_VIOLATION");
    assert_eq!(
        violations(&err),
        [(
            "subject_id".to_owned(),
            "must be at most 1024 bytes".to_owned()
        )]
    );
    server.finish().await;
}

#[tokio::test]
async fn too_many_items_and_nested_fields_are_named_by_their_path() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let err = consent
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![ConsentCheck::default(); 1001],
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        violations(&err),
        [(
            "checks".to_owned(),
            "must have at most 1000 items".to_owned()
        )]
    );

    let err = consent
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![
                ConsentCheck {
                    subject_id: "s1".into(),
                    purpose: "marketing_email".into(),
                    ..Default::default()
                },
                ConsentCheck {
                    subject_id: "s".repeat(2000),
                    purpose: "marketing_email".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert_eq!(
        violations(&err),
        [(
            "checks[1].subject_id".to_owned(),
            "must be at most 1024 bytes".to_owned()
        )]
    );

    let channel = server.channel();
    let err = PrivacyRequestServiceClient::new(channel)
        .check_suppression(CheckSuppressionRequest {
            identifiers: vec![Identifier {
                kind: 1,
                value: "v".repeat(1281),
            }],
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert_eq!(
        violations(&err),
        [(
            "identifiers[0].value".to_owned(),
            "must be at most 1280 bytes".to_owned()
        )]
    );
    server.finish().await;
}

#[tokio::test]
async fn a_request_within_the_limits_still_gets_every_field_rule() {
    let server = TestServer::start().await;
    // 300 bytes: within the edge's 1024, over the subject id's own 256.
    let err = server
        .consent
        .clone()
        .record_consent(grant(&"x".repeat(300), "Not A Key"))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    fields.sort();
    assert_eq!(fields, ["purpose", "subject_id"]);
    server.finish().await;
}

#[tokio::test]
async fn garbage_bytes_are_a_malformed_message_not_an_internal_error() {
    let server = TestServer::start().await;
    let channel = server.channel();
    let mut grpc = tonic::client::Grpc::new(channel);
    // Field 1 with wire type 7 (there is none), then a string that runs
    // past the end, then invalid UTF-8 in a string field.
    for garbage in [
        vec![0x0f, 0xff, 0xff],
        vec![0x0a, 0x7f, 0x61],
        vec![0x0a, 0x02, 0xc3, 0x28],
    ] {
        grpc.ready().await.expect("ready");
        let err = grpc
            .unary(
                tonic::Request::new(garbage.clone()),
                "/privacy.v1.ConsentService/CheckConsent"
                    .parse()
                    .expect("path"),
                RawCodec,
            )
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument, "{garbage:?}: {err:?}");
        assert_eq!(error_reason(&err).0, "MALFORMED_MESSAGE", "{garbage:?}");
        assert!(err.message().contains("CheckConsentRequest"), "{err:?}");
    }
    server.finish().await;
}

#[tokio::test]
async fn hundreds_of_invalid_items_fit_in_one_status() {
    let server = TestServer::start().await;
    // 999 checks, each with two invalid fields: far more violations than a
    // status carries. The caller gets the first 20 and the count.
    let err = server
        .consent
        .clone()
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![ConsentCheck::default(); 999],
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violations(&err).len(), 20);
    assert!(err.message().contains("more)"), "{}", err.message());
    server.finish().await;
}
