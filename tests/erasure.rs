//! An erased person is erased in every answer: once a deletion request
//! completes (or a minor without parental consent is erased), every check,
//! on every path, is DENIED with SUBJECT_ERASED; a grant is refused; nobody
//! lists the subject to be asked again. Checks as of a time before the
//! erasure answer as they did then.
mod common;

use chrono::Utc;
use common::{TestServer, error_reason, grant, refuse, request_id, storage_grant, ts};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    self, BatchCheckConsentRequest, CheckConsentRequest, CompletePrivacyRequestRequest,
    ConsentChangeKind, ConsentCheck, CreatePrivacyRequestRequest, DecisionReason,
    GetConsentStateRequest, GetSubjectRequest, Identifier, ListSubjectsToReconsentRequest,
    PolicyVersion, PublishPolicyVersionRequest, RequestType, SetSubjectMinorStatusRequest, Verdict,
    VerifyPrivacyRequestIdentityRequest, WatchConsentChangesRequest, identifier,
};
use tonic::Code;
use tonic::transport::Channel;

/// Every purpose of the default catalogue, whatever its model.
const PURPOSES: &[&str] = &[
    "service_messages",
    "marketing_email",
    "targeted_advertising",
    "personalized_recommendations",
    "analytics_cookies",
    "model_training",
    "api_io_storage",
    "sensitive_data_processing",
    "sale_of_personal_data",
    "cross_context_sharing",
    "profiling",
];

fn requests(server: &TestServer) -> PrivacyRequestServiceClient<Channel> {
    PrivacyRequestServiceClient::new(server.channel())
}

/// Files a US-CA deletion for `subject`, verifies it and completes it by
/// hand (no data system holds anything); returns the request's name.
async fn erase(server: &TestServer, subject: &str) -> String {
    let mut c = requests(server);
    let created = c
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: subject.into(),
            request_type: RequestType::Deletion as i32,
            jurisdiction: "US-CA".into(),
            channel: proto::privacy_request::Channel::Email as i32,
            identifiers: vec![Identifier {
                kind: identifier::Kind::EmailAddress as i32,
                value: format!("{subject}@example.com"),
            }],
            ..Default::default()
        })
        .await
        .expect("create the deletion")
        .into_inner();
    c.verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
        name: created.name.clone(),
        request_id: request_id(),
        method: "email link".into(),
        agent_evidence_reference: String::new(),
    })
    .await
    .expect("verify");
    let done = c
        .complete_privacy_request(CompletePrivacyRequestRequest {
            name: created.name.clone(),
            request_id: request_id(),
            explanation: "no data system holds this person's data".into(),
            exemptions: vec![],
        })
        .await
        .expect("complete")
        .into_inner();
    assert_eq!(
        done.state,
        proto::privacy_request::State::Completed as i32,
        "{done:?}"
    );
    created.name
}

async fn check(
    consent: &mut ConsentServiceClient<Channel>,
    subject: &str,
    purpose: &str,
    as_of: Option<chrono::DateTime<Utc>>,
) -> (Verdict, DecisionReason) {
    let r = consent
        .check_consent(CheckConsentRequest {
            subject_id: subject.into(),
            purpose: purpose.into(),
            as_of_time: as_of.map(ts),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    (r.verdict(), r.reason())
}

/// What a server's decision cache says the checks of `subject` answer now,
/// once it is fresh (a check without a token through the cache).
async fn every_purpose_is_erased(server: &TestServer, subject: &str) {
    let mut consent = server.consent.clone();
    for purpose in PURPOSES {
        assert_eq!(
            check(&mut consent, subject, purpose, None).await,
            (Verdict::Denied, DecisionReason::SubjectErased),
            "CheckConsent({subject}, {purpose})"
        );
    }
    let batch = consent
        .batch_check_consent(BatchCheckConsentRequest {
            checks: PURPOSES
                .iter()
                .map(|p| ConsentCheck {
                    subject_id: subject.into(),
                    purpose: p.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("batch check")
        .into_inner();
    for r in &batch.results {
        assert_eq!(
            (r.verdict(), r.reason()),
            (Verdict::Denied, DecisionReason::SubjectErased),
            "BatchCheckConsent: {r:?}"
        );
        assert!(r.deciding_record.is_none(), "{r:?}");
    }
    let state = consent
        .get_consent_state(GetConsentStateRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await
        .expect("state")
        .into_inner();
    assert!(!state.decisions.is_empty());
    for r in &state.decisions {
        assert_eq!(
            (r.verdict(), r.reason()),
            (Verdict::Denied, DecisionReason::SubjectErased),
            "GetConsentState: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_completed_deletion_denies_every_purpose_with_subject_erased() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-every-purpose";
    consent
        .record_consent(storage_grant(subject))
        .await
        .expect("grant api_io_storage");
    // Before: a grant and a default opt-out both allow.
    assert_eq!(
        check(&mut consent, subject, "api_io_storage", None).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );
    assert_eq!(
        check(&mut consent, subject, "marketing_email", None).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    erase(&server, subject).await;
    every_purpose_is_erased(&server, subject).await;
    server.finish().await;
}

#[tokio::test]
async fn as_of_checks_answer_as_before_the_erasure_and_erased_after_it() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-as-of";
    consent
        .record_consent(storage_grant(subject))
        .await
        .expect("grant");
    let before = Utc::now();
    erase(&server, subject).await;
    let after = Utc::now();
    assert_eq!(
        check(&mut consent, subject, "api_io_storage", Some(before)).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );
    assert_eq!(
        check(&mut consent, subject, "marketing_email", Some(before)).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    for purpose in ["api_io_storage", "marketing_email", "service_messages"] {
        assert_eq!(
            check(&mut consent, subject, purpose, Some(after)).await,
            (Verdict::Denied, DecisionReason::SubjectErased),
            "{purpose} as of after the erasure"
        );
    }
    server.finish().await;
}

#[tokio::test]
async fn a_grant_for_an_erased_subject_is_refused_and_a_refusal_is_accepted() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-then-grant";
    erase(&server, subject).await;
    let err = consent
        .record_consent(grant(subject, "marketing_email"))
        .await
        .expect_err("a grant for an erased subject");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(error_reason(&err).0, "SUBJECT_WAS_ERASED");
    // Evidence-carrying grants take another path to the ledger.
    let mut with_evidence = grant(subject, "model_training");
    with_evidence.source = proto::ConsentSource::WrittenAgreementSource as i32;
    with_evidence.evidence = Some(proto::Evidence {
        kind: proto::EvidenceKind::WrittenAgreement as i32,
        reference: "MSA-1".into(),
        description: String::new(),
    });
    let err = consent
        .record_consent(with_evidence)
        .await
        .expect_err("an evidenced grant for an erased subject");
    assert_eq!(error_reason(&err).0, "SUBJECT_WAS_ERASED", "{err:?}");
    consent
        .record_consent(refuse(subject, "marketing_email"))
        .await
        .expect("a refusal is still accepted");
    every_purpose_is_erased(&server, subject).await;
    server.finish().await;
}

#[tokio::test]
async fn get_subject_says_when_and_by_which_request_the_subject_was_erased() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-get-subject";
    consent
        .record_consent(storage_grant(subject))
        .await
        .expect("grant");
    let before = Utc::now();
    let name = erase(&server, subject).await;
    let s = consent
        .get_subject(GetSubjectRequest {
            name: format!("subjects/{subject}"),
        })
        .await
        .expect("get subject")
        .into_inner();
    assert!(s.erased, "{s:?}");
    let t = s.erase_time.expect("erase_time");
    assert!(t.seconds >= before.timestamp() - 1, "{s:?}");
    assert_eq!(s.erased_by, name);
    server.finish().await;
}

#[tokio::test]
async fn the_change_feed_carries_the_erasure_to_watchers() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-watch";
    erase(&server, subject).await;
    let mut stream = consent
        .watch_consent_changes(WatchConsentChangesRequest {
            start_from_beginning: true,
            subject_id: subject.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("an erasure event within the patience")
            .expect("stream")
            .expect("stream open");
        if message
            .changes
            .iter()
            .any(|c| c.kind() == ConsentChangeKind::SubjectErasure && c.subject_id == subject)
        {
            break;
        }
    }
    server.finish().await;
}

#[tokio::test]
async fn an_erased_subject_is_not_listed_to_be_asked_again() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let (kept, erased) = ("reconsent-kept", "reconsent-erased");
    for s in [kept, erased] {
        consent
            .record_consent(storage_grant(s))
            .await
            .expect("grant");
    }
    erase(&server, erased).await;
    consent
        .publish_policy_version(PublishPolicyVersionRequest {
            request_id: request_id(),
            policy_version: Some(PolicyVersion {
                version_id: "2027-01".into(),
                effective_time: Some(ts(Utc::now())),
                text_sha256: "ab".repeat(32),
                material: true,
                summary: "material change".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("publish");
    let listed = consent
        .list_subjects_to_reconsent(ListSubjectsToReconsentRequest {
            policy_version: "2027-01".into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let subjects: Vec<&str> = listed
        .subjects
        .iter()
        .map(|s| s.subject_id.as_str())
        .collect();
    assert!(subjects.contains(&kept), "{subjects:?}");
    assert!(!subjects.contains(&erased), "{subjects:?}");
    server.finish().await;
}

#[tokio::test]
async fn a_minor_erased_without_parental_consent_is_erased_in_every_answer() {
    let server = TestServer::start().await;
    let mut consent = server.consent.clone();
    let subject = "erase-minor";
    consent
        .record_consent(storage_grant(subject))
        .await
        .expect("grant");
    consent
        .set_subject_minor_status(SetSubjectMinorStatusRequest {
            request_id: request_id(),
            subject_id: subject.into(),
            minor: true,
            reason: "told by a parent".into(),
            parental_consent: false,
        })
        .await
        .expect("flag a minor");
    every_purpose_is_erased(&server, subject).await;
    let s = consent
        .get_subject(GetSubjectRequest {
            name: format!("subjects/{subject}"),
        })
        .await
        .expect("get subject")
        .into_inner();
    assert!(s.erased && s.erase_time.is_some(), "{s:?}");
    let err = consent
        .record_consent(grant(subject, "marketing_email"))
        .await
        .expect_err("a grant for an erased minor");
    assert_eq!(error_reason(&err).0, "SUBJECT_WAS_ERASED", "{err:?}");
    server.finish().await;
}
