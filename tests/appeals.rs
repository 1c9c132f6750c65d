//! Appeals over a real server and PostgreSQL: where the law gives none (US-CA,
//! US-UT), the organisation's voluntary appeal (the seed policy offers one to
//! residents of every state it names) is available with the organisation's
//! deadline, marked voluntary, without a regulator notice; a setting turns
//! it off.
mod common;

use chrono::{Days, NaiveDate, Utc};
use common::{TestServer, error_reason, request_id, test_settings};
use privacy_records::proto::privacy_request::State;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    self, AppealPrivacyRequestRequest, CreatePrivacyRequestRequest, DecideAppealRequest,
    DenialReason, DenyPrivacyRequestRequest, PrivacyRequest, RequestType,
};
use tonic::transport::Channel;

type Client = PrivacyRequestServiceClient<Channel>;

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Files a request and denies it.
async fn denied(
    c: &mut Client,
    subject: &str,
    t: RequestType,
    jurisdiction: &str,
) -> PrivacyRequest {
    let r = c
        .create_privacy_request(CreatePrivacyRequestRequest {
            request_id: request_id(),
            subject_id: subject.into(),
            request_type: t as i32,
            jurisdiction: jurisdiction.into(),
            channel: proto::privacy_request::Channel::WebForm as i32,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    c.deny_privacy_request(DenyPrivacyRequestRequest {
        name: r.name,
        request_id: request_id(),
        denial_reason: DenialReason::IdentityNotVerified as i32,
        explanation: "the identity check failed".into(),
    })
    .await
    .expect("deny")
    .into_inner()
}

async fn appeal(c: &mut Client, name: &str) -> Result<PrivacyRequest, tonic::Status> {
    c.appeal_privacy_request(AppealPrivacyRequestRequest {
        name: name.into(),
        request_id: request_id(),
        statement: "I did verify, by email".into(),
        receive_time: None,
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_denied_california_or_utah_request_is_appealed_voluntarily_with_the_organisations_deadline()
 {
    let server = TestServer::start().await;
    let mut c = PrivacyRequestServiceClient::new(server.channel());
    for (subject, jurisdiction) in [("cal", "US-CA"), ("uta", "US-UT")] {
        let r = denied(&mut c, subject, RequestType::Deletion, jurisdiction).await;
        assert!(r.appeal_available, "{jurisdiction}");
        let appealed = appeal(&mut c, &r.name)
            .await
            .unwrap_or_else(|e| panic!("{jurisdiction}: {e:?}"));
        assert!(r.appeal_voluntary, "{jurisdiction}");
        let a = appealed.appeal.expect("appeal");
        assert_eq!(a.state, proto::appeal::State::Pending as i32);
        assert!(a.voluntary, "{jurisdiction}: the law gives none");
        // The organisation's own deadline: 45 days (the rules table's defaults).
        assert_eq!(a.due_date, (today() + Days::new(45)).to_string());
        // No regulator notice: neither law requires one.
        assert!(!a.regulator_contact_required, "{jurisdiction}");
        let upheld = c
            .decide_appeal(DecideAppealRequest {
                name: r.name.clone(),
                request_id: request_id(),
                decision: proto::appeal::State::Upheld as i32,
                explanation: "the identity check failed again on review".into(),
                regulator_contact_provided: false,
            })
            .await
            .expect("uphold without a regulator notice")
            .into_inner();
        assert_eq!(upheld.state, State::Denied as i32);
        assert_eq!(
            upheld.appeal.expect("appeal").state,
            proto::appeal::State::Upheld as i32
        );
    }
    // Granted, a voluntary appeal reopens the request like a statutory one.
    let r = denied(&mut c, "cal2", RequestType::Access, "US-CA").await;
    appeal(&mut c, &r.name).await.expect("appeal");
    let granted = c
        .decide_appeal(DecideAppealRequest {
            name: r.name.clone(),
            request_id: request_id(),
            decision: proto::appeal::State::Granted as i32,
            explanation: "verified on review".into(),
            regulator_contact_provided: false,
        })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(granted.state, State::InProgress as i32);
    // A second appeal is still refused.
    let again = denied(&mut c, "cal3", RequestType::Deletion, "US-CA").await;
    appeal(&mut c, &again.name).await.expect("appeal");
    let err = appeal(&mut c, &again.name)
        .await
        .expect_err("second appeal");
    assert_eq!(error_reason(&err).0, "APPEAL_NOT_ALLOWED");
    server.finish().await;
}

#[tokio::test]
async fn an_appeal_the_law_gives_is_not_marked_voluntary_and_names_the_regulator() {
    let server = TestServer::start().await;
    let mut c = PrivacyRequestServiceClient::new(server.channel());
    let r = denied(&mut c, "virginia", RequestType::Deletion, "US-VA").await;
    assert!(r.appeal_available);
    assert!(!r.appeal_voluntary);
    let a = appeal(&mut c, &r.name)
        .await
        .expect("appeal")
        .appeal
        .expect("appeal");
    assert!(!a.voluntary);
    assert!(a.regulator_contact_required);
    server.finish().await;
}

#[tokio::test]
async fn with_voluntary_appeals_turned_off_a_california_appeal_is_refused() {
    let mut settings = test_settings();
    settings.requests.offer_voluntary_appeals = false;
    let server = TestServer::start_with(settings).await;
    let mut c = PrivacyRequestServiceClient::new(server.channel());
    let r = denied(&mut c, "cal", RequestType::Deletion, "US-CA").await;
    assert!(!r.appeal_available);
    let err = appeal(&mut c, &r.name).await.expect_err("no appeal");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "APPEAL_NOT_ALLOWED");
    // A statutory appeal is unaffected.
    let va = denied(&mut c, "va", RequestType::Deletion, "US-VA").await;
    appeal(&mut c, &va.name).await.expect("Virginia's appeal");
    server.finish().await;
}
