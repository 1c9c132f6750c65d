//! `PrivacyRequestService`'s request lifecycle over a real server and a real
//! PostgreSQL: clocks per jurisdiction (due dates computed by hand here),
//! the Iowa and Utah exceptions, extensions, every refused transition,
//! agents, the free limit, opt-outs in the consent ledger, appeals, metrics.
mod common;

use chrono::{Days, NaiveDate, Utc};
use common::{TestServer, error_reason, request_id, test_settings};
use privacy_records::proto::privacy_request::State;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    self, Agent, AppealPrivacyRequestRequest, CancelPrivacyRequestRequest, CheckConsentRequest,
    CompletePrivacyRequestRequest, CreatePrivacyRequestRequest, DecideAppealRequest, DenialReason,
    DenyPrivacyRequestRequest, ExtendPrivacyRequestRequest, FieldCorrection,
    GetRequestMetricsRequest, HoldPrivacyRequestRequest, HoldReason, ListPrivacyRequestsRequest,
    PrivacyRequest, RequestType, ResumePrivacyRequestRequest, Verdict,
    VerifyPrivacyRequestIdentityRequest,
};
use prost_types::Timestamp;
use tonic::Code;
use tonic::transport::Channel;

type Client = PrivacyRequestServiceClient<Channel>;

fn client(server: &TestServer) -> Client {
    let channel = server.channel();
    PrivacyRequestServiceClient::new(channel)
}

/// Midnight UTC of `date`: received dates are UTC dates, and midnight of
/// today is never in the future, whatever the hour the tests run at.
fn at(date: NaiveDate) -> Timestamp {
    let t = date.and_hms_opt(0, 0, 0).expect("time").and_utc();
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn new_request(
    subject: &str,
    t: RequestType,
    jurisdiction: &str,
    received: NaiveDate,
) -> CreatePrivacyRequestRequest {
    CreatePrivacyRequestRequest {
        request_id: request_id(),
        subject_id: subject.into(),
        request_type: t as i32,
        jurisdiction: jurisdiction.into(),
        channel: proto::privacy_request::Channel::WebForm as i32,
        corrections: if t == RequestType::Correction {
            vec![FieldCorrection {
                field: "postal_address".into(),
                current_value: "1 Old Rd".into(),
                corrected_value: "2 New St".into(),
            }]
        } else {
            vec![]
        },
        receive_time: Some(at(received)),
        ..Default::default()
    }
}

async fn create(c: &mut Client, req: CreatePrivacyRequestRequest) -> PrivacyRequest {
    c.create_privacy_request(req)
        .await
        .expect("create")
        .into_inner()
}

fn state(r: &PrivacyRequest) -> State {
    State::try_from(r.state).expect("state")
}

async fn verify(c: &mut Client, name: &str) -> Result<PrivacyRequest, tonic::Status> {
    c.verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
        name: name.into(),
        request_id: request_id(),
        method: "email link".into(),
        agent_evidence_reference: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn deny(c: &mut Client, name: &str) -> Result<PrivacyRequest, tonic::Status> {
    c.deny_privacy_request(DenyPrivacyRequestRequest {
        name: name.into(),
        request_id: request_id(),
        denial_reason: DenialReason::IdentityNotVerified as i32,
        explanation: "could not verify".into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn complete(
    c: &mut Client,
    name: &str,
    exemptions: &[&str],
) -> Result<PrivacyRequest, tonic::Status> {
    c.complete_privacy_request(CompletePrivacyRequestRequest {
        name: name.into(),
        request_id: request_id(),
        explanation: "done by hand".into(),
        exemptions: exemptions.iter().map(|e| e.to_string()).collect(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Every request type in California, Iowa, Utah, Virginia and the EU,
/// received on Monday 2 March 2026: the due date, whether the right is
/// statutory, whether verification is required. Expected values are read
/// from the research by hand: 45 calendar days = 16 April; Iowa's 90 = 31
/// May; California's 15 business days for opt-outs of sale/sharing and
/// sensitive-data limits = 23 March; the GDPR's one month = 2 April; a
/// right the state does not grant falls to the voluntary 45 days.
#[tokio::test]
async fn every_type_gets_its_jurisdictions_clock() {
    use RequestType::*;
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = d("2026-03-02");
    let (d45, d90, bd15, m1) = ("2026-04-16", "2026-05-31", "2026-03-23", "2026-04-02");
    // (jurisdiction, type, due, statutory, verification required)
    let cases: &[(&str, RequestType, &str, bool, bool)] = &[
        ("US-CA", Access, d45, true, true),
        ("US-CA", ConfirmProcessing, d45, false, true),
        ("US-CA", Deletion, d45, true, true),
        ("US-CA", Correction, d45, true, true),
        ("US-CA", Portability, d45, true, true),
        ("US-CA", OptOutSale, bd15, true, false),
        ("US-CA", OptOutTargetedAdvertising, bd15, true, false),
        // The CCPA has no opt-out of profiling; its ADMT opt-out (11 CCR
        // 7221) starts on 1 January 2027: voluntary before.
        ("US-CA", OptOutProfiling, d45, false, false),
        ("US-CA", LimitSensitiveData, bd15, true, false),
        ("US-CA", Restriction, d45, false, false),
        ("US-CA", Objection, d45, false, false),
        ("US-IA", Access, d90, true, true),
        ("US-IA", ConfirmProcessing, d90, true, true),
        ("US-IA", Deletion, d90, true, true),
        ("US-IA", Correction, d45, false, true),
        ("US-IA", Portability, d90, true, true),
        ("US-IA", OptOutSale, d90, true, false),
        ("US-IA", OptOutTargetedAdvertising, d45, false, false),
        ("US-IA", OptOutProfiling, d45, false, false),
        ("US-IA", LimitSensitiveData, d90, true, false),
        ("US-IA", Restriction, d45, false, false),
        ("US-IA", Objection, d45, false, false),
        ("US-UT", Access, d45, true, true),
        ("US-UT", ConfirmProcessing, d45, true, true),
        ("US-UT", Deletion, d45, true, true),
        // Utah's correction right starts on 1 July 2026.
        ("US-UT", Correction, d45, false, true),
        ("US-UT", Portability, d45, true, true),
        ("US-UT", OptOutSale, d45, true, false),
        ("US-UT", OptOutTargetedAdvertising, d45, true, false),
        ("US-UT", OptOutProfiling, d45, false, false),
        ("US-UT", LimitSensitiveData, d45, true, false),
        ("US-UT", Restriction, d45, false, false),
        ("US-UT", Objection, d45, false, false),
        ("US-VA", Access, d45, true, true),
        ("US-VA", ConfirmProcessing, d45, true, true),
        ("US-VA", Deletion, d45, true, true),
        ("US-VA", Correction, d45, true, true),
        ("US-VA", Portability, d45, true, true),
        ("US-VA", OptOutSale, d45, true, false),
        ("US-VA", OptOutTargetedAdvertising, d45, true, false),
        ("US-VA", OptOutProfiling, d45, true, false),
        ("US-VA", LimitSensitiveData, d45, true, false),
        ("US-VA", Restriction, d45, false, false),
        ("US-VA", Objection, d45, false, false),
        ("EU", Access, m1, true, true),
        ("EU", ConfirmProcessing, m1, true, true),
        ("EU", Deletion, m1, true, true),
        ("EU", Correction, m1, true, true),
        ("EU", Portability, m1, true, true),
        // An objection (Art. 21) / withdrawal (Art. 7(3)): Art. 12(3)'s month.
        ("EU", OptOutSale, m1, true, false),
        ("EU", OptOutTargetedAdvertising, m1, true, false),
        ("EU", OptOutProfiling, m1, true, false),
        ("EU", LimitSensitiveData, m1, true, false),
        ("EU", Restriction, m1, true, false),
        ("EU", Objection, m1, true, false),
        // A member state resolves to the GDPR; an unknown place to the defaults.
        ("DE", Access, m1, true, true),
        ("BR", Access, d45, false, true),
    ];
    for (i, &(j, t, due, statutory, verification)) in cases.iter().enumerate() {
        let r = create(&mut c, new_request(&format!("s{i}"), t, j, received)).await;
        let what = format!("{j} {t:?}");
        assert_eq!(r.due_date, due, "{what}");
        assert_eq!(r.original_due_date, due, "{what}");
        assert_eq!(r.received_date, "2026-03-02", "{what}");
        assert_eq!(r.statutory, statutory, "{what}");
        assert_eq!(r.verification_required, verification, "{what}");
        let expected_state = if verification {
            State::AwaitingVerification
        } else {
            // Opt-outs and limits take effect at once; with no data system
            // registered, the ledger refusals are the whole fulfilment.
            match t {
                OptOutSale
                | OptOutTargetedAdvertising
                | OptOutProfiling
                | LimitSensitiveData
                | Objection => State::Completed,
                _ => State::InProgress,
            }
        };
        assert_eq!(state(&r), expected_state, "{what}");
        assert_eq!(r.overdue, expected_state != State::Completed, "{what}");
        assert!(!r.deadline_citation.expect("citation").source.is_empty());
    }
    // Utah's correction right exists from 1 July 2026.
    let r = create(
        &mut c,
        new_request("ut-late", Correction, "US-UT", d("2026-07-01")),
    )
    .await;
    assert!(r.statutory);
    assert_eq!(r.due_date, "2026-08-15");
    server.finish().await;
}

#[tokio::test]
async fn iowa_has_no_correction_right_and_no_agents() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = today();
    // Accepted voluntarily by default...
    let r = create(
        &mut c,
        new_request("ia", RequestType::Correction, "US-IA", received),
    )
    .await;
    assert!(!r.statutory);
    assert_eq!(r.rules_code, "US-IA");
    // ...and an agent may not file an Iowa request of a statutory type.
    let err = c
        .create_privacy_request(CreatePrivacyRequestRequest {
            agent: Some(Agent {
                display_name: "Agency".into(),
                evidence_reference: "poa-1".into(),
                ..Default::default()
            }),
            ..new_request("ia2", RequestType::Access, "US-IA", received)
        })
        .await
        .expect_err("agent in Iowa");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "AGENT_NOT_PERMITTED");
    server.finish().await;

    // Configured to refuse voluntary requests: the Iowa correction is refused.
    let mut settings = test_settings();
    settings.requests.refuse_voluntary = true;
    let server = TestServer::start_with(settings).await;
    let mut c = client(&server);
    let err = c
        .create_privacy_request(new_request(
            "ia",
            RequestType::Correction,
            "US-IA",
            received,
        ))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "RIGHT_NOT_AVAILABLE");
    let list = c
        .list_privacy_requests(ListPrivacyRequestsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.privacy_requests.is_empty(), "a refusal writes nothing");
    server.finish().await;
}

#[tokio::test]
async fn utah_stops_the_clock_while_suspected_fraud_awaits_authentication() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = today() - Days::new(10);
    let r = create(
        &mut c,
        new_request("ut", RequestType::Access, "US-UT", received),
    )
    .await;
    let due = received + Days::new(45);
    assert_eq!(r.due_date, due.to_string());
    let held = c
        .hold_privacy_request(HoldPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            hold_reason: HoldReason::FraudSuspectedAuthenticationPending as i32,
            explanation: "the email does not match the account".into(),
        })
        .await
        .expect("hold")
        .into_inner();
    assert_eq!(state(&held), State::OnHold);
    // Move the hold's start 5 days back, as if it had lasted 5 days.
    sqlx::query("UPDATE privacy_requests SET hold_start = hold_start - 5")
        .execute(&server.db.pool().await)
        .await
        .expect("age the hold");
    let resumed = c
        .resume_privacy_request(ResumePrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            explanation: "authenticated".into(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(state(&resumed), State::AwaitingVerification);
    assert_eq!(resumed.paused_days, 5);
    assert_eq!(resumed.due_date, (due + Days::new(5)).to_string());

    // In Virginia the same hold does not stop the clock.
    let va = create(
        &mut c,
        new_request("va", RequestType::Access, "US-VA", received),
    )
    .await;
    c.hold_privacy_request(HoldPrivacyRequestRequest {
        name: va.name.clone(),
        request_id: request_id(),
        hold_reason: HoldReason::FraudSuspectedAuthenticationPending as i32,
        explanation: "suspicious".into(),
    })
    .await
    .expect("hold");
    sqlx::query("UPDATE privacy_requests SET hold_start = hold_start - 5")
        .execute(&server.db.pool().await)
        .await
        .expect("age the hold");
    let resumed = c
        .resume_privacy_request(ResumePrivacyRequestRequest {
            name: va.name.clone(),
            request_id: request_id(),
            explanation: String::new(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.paused_days, 0);
    assert_eq!(resumed.due_date, due.to_string());
    server.finish().await;
}

#[tokio::test]
async fn an_extension_is_once_before_the_original_due_date_with_a_reason() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = today() - Days::new(2);
    let r = create(
        &mut c,
        new_request("ca", RequestType::Access, "US-CA", received),
    )
    .await;
    let due = received + Days::new(45);
    assert!(r.extension_allowed);
    assert_eq!(r.extended_due_date, (due + Days::new(45)).to_string());

    let extend = |name: &str, reason: &str| ExtendPrivacyRequestRequest {
        name: name.into(),
        request_id: request_id(),
        reason: reason.into(),
    };
    let err = c
        .extend_privacy_request(extend(&r.name, ""))
        .await
        .expect_err("no reason");
    assert_eq!(error_reason(&err).1, vec!["reason"]);

    let extended = c
        .extend_privacy_request(extend(&r.name, "many systems to search"))
        .await
        .expect("extend")
        .into_inner();
    assert!(extended.extended);
    assert!(!extended.extension_allowed);
    assert_eq!(extended.due_date, (due + Days::new(45)).to_string());
    assert_eq!(extended.original_due_date, due.to_string());
    assert_eq!(extended.extension_reason, "many systems to search");

    let err = c
        .extend_privacy_request(extend(&r.name, "again"))
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "EXTENSION_NOT_ALLOWED");

    // Past the original due date it is too late.
    let late = create(
        &mut c,
        new_request(
            "late",
            RequestType::Access,
            "US-CA",
            today() - Days::new(60),
        ),
    )
    .await;
    assert!(late.overdue);
    assert!(!late.extension_allowed);
    let err = c
        .extend_privacy_request(extend(&late.name, "too late"))
        .await
        .expect_err("after due");
    assert_eq!(error_reason(&err).0, "EXTENSION_NOT_ALLOWED");

    // The GDPR: one month, extendable by two more, counted in months.
    let eu = create(
        &mut c,
        new_request("eu", RequestType::Access, "EU", d("2026-11-10")),
    )
    .await;
    assert_eq!(eu.due_date, "2026-12-10");
    assert_eq!(eu.extended_due_date, "2027-02-10");
    server.finish().await;
}

/// Every action refused from every state the lifecycle table does not allow
/// it from, with FAILED_PRECONDITION / INVALID_STATE_TRANSITION naming the
/// state. The allowed set is written out here from the design of the lifecycle, not read from
/// the code.
#[tokio::test]
async fn every_invalid_transition_is_refused_naming_the_state() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = today();
    let fresh = |c: &mut Client, s: &str| {
        let mut c = c.clone();
        let req = new_request(s, RequestType::Access, "US-VA", received);
        async move { create(&mut c, req).await }
    };
    // One request in each state.
    let awaiting = fresh(&mut c, "a").await;
    let in_progress = fresh(&mut c, "b").await;
    verify(&mut c, &in_progress.name).await.expect("verify");
    let on_hold = fresh(&mut c, "c").await;
    c.hold_privacy_request(HoldPrivacyRequestRequest {
        name: on_hold.name.clone(),
        request_id: request_id(),
        hold_reason: HoldReason::AwaitingSubject as i32,
        explanation: "asked for a document".into(),
    })
    .await
    .expect("hold");
    let completed = fresh(&mut c, "d").await;
    verify(&mut c, &completed.name).await.expect("verify");
    complete(&mut c, &completed.name, &[])
        .await
        .expect("complete");
    let partial = fresh(&mut c, "e").await;
    verify(&mut c, &partial.name).await.expect("verify");
    let p = complete(&mut c, &partial.name, &["billing records kept for tax law"])
        .await
        .expect("complete in part");
    assert_eq!(state(&p), State::PartiallyCompleted);
    let denied = fresh(&mut c, "f").await;
    deny(&mut c, &denied.name).await.expect("deny");
    let canceled = fresh(&mut c, "g").await;
    c.cancel_privacy_request(CancelPrivacyRequestRequest {
        name: canceled.name.clone(),
        request_id: request_id(),
        explanation: "withdrawn".into(),
    })
    .await
    .expect("cancel");

    const ACTIONS: [&str; 9] = [
        "verify", "extend", "hold", "resume", "deny", "cancel", "complete", "appeal", "decide",
    ];
    // From the lifecycle's design: what each state allows.
    let allowed: &[(&str, &PrivacyRequest, &[&str])] = &[
        (
            "AWAITING_VERIFICATION",
            &awaiting,
            &["verify", "extend", "hold", "deny", "cancel"],
        ),
        (
            "IN_PROGRESS",
            &in_progress,
            &["extend", "hold", "deny", "cancel", "complete"],
        ),
        ("ON_HOLD", &on_hold, &["extend", "resume", "deny", "cancel"]),
        ("COMPLETED", &completed, &[]),
        ("PARTIALLY_COMPLETED", &partial, &["appeal", "decide"]),
        ("DENIED", &denied, &["appeal", "decide"]),
        ("CANCELED", &canceled, &[]),
    ];
    let mut refused = 0;
    for (state_name, r, ok) in allowed {
        for action in ACTIONS.iter().filter(|a| !ok.contains(a)) {
            let name = r.name.clone();
            let rid = request_id();
            let result = match *action {
                "verify" => verify(&mut c, &name).await.map(|_| ()),
                "extend" => c
                    .extend_privacy_request(ExtendPrivacyRequestRequest {
                        name,
                        request_id: rid,
                        reason: "r".into(),
                    })
                    .await
                    .map(|_| ()),
                "hold" => c
                    .hold_privacy_request(HoldPrivacyRequestRequest {
                        name,
                        request_id: rid,
                        hold_reason: HoldReason::OtherHold as i32,
                        explanation: "x".into(),
                    })
                    .await
                    .map(|_| ()),
                "resume" => c
                    .resume_privacy_request(ResumePrivacyRequestRequest {
                        name,
                        request_id: rid,
                        explanation: String::new(),
                    })
                    .await
                    .map(|_| ()),
                "deny" => deny(&mut c, &name).await.map(|_| ()),
                "cancel" => c
                    .cancel_privacy_request(CancelPrivacyRequestRequest {
                        name,
                        request_id: rid,
                        explanation: "x".into(),
                    })
                    .await
                    .map(|_| ()),
                "complete" => complete(&mut c, &name, &[]).await.map(|_| ()),
                "appeal" => c
                    .appeal_privacy_request(AppealPrivacyRequestRequest {
                        name,
                        request_id: rid,
                        statement: "please".into(),
                        receive_time: None,
                    })
                    .await
                    .map(|_| ()),
                _ => c
                    .decide_appeal(DecideAppealRequest {
                        name,
                        request_id: rid,
                        decision: proto::appeal::State::Upheld as i32,
                        explanation: "x".into(),
                        regulator_contact_provided: true,
                    })
                    .await
                    .map(|_| ()),
            };
            let err = result.expect_err(&format!("{action} from {state_name}"));
            assert_eq!(
                err.code(),
                Code::FailedPrecondition,
                "{action} from {state_name}"
            );
            use tonic_types::StatusExt;
            let info = err.get_error_details().error_info().cloned().expect("info");
            assert_eq!(
                info.reason, "INVALID_STATE_TRANSITION",
                "{action} from {state_name}"
            );
            assert_eq!(
                info.metadata.get("state").map(String::as_str),
                Some(*state_name)
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 9 * 7 - 5 - 5 - 4 - 2 - 2);
    // The states did not change.
    let again = c
        .get_privacy_request(proto::GetPrivacyRequestRequest {
            name: completed.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(state(&again), State::Completed);
    server.finish().await;
}

#[tokio::test]
async fn agents_need_evidence_and_only_file_what_the_law_lets_them() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = today();
    let agent = |evidence: &str| Agent {
        display_name: "Privacy Agency Inc.".into(),
        contact: "agent@example.org".into(),
        evidence_reference: evidence.into(),
        evidence_description: String::new(),
    };
    // An opt-out filed by an agent without evidence does not take effect.
    let r = create(
        &mut c,
        CreatePrivacyRequestRequest {
            agent: Some(agent("")),
            ..new_request("p", RequestType::OptOutSale, "US-CA", received)
        },
    )
    .await;
    assert!(r.agent_may_file);
    assert_eq!(state(&r), State::AwaitingVerification);
    let err = verify(&mut c, &r.name).await.expect_err("no evidence");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "AGENT_NOT_PERMITTED");
    // It may be denied for that reason.
    let denied = c
        .deny_privacy_request(DenyPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            denial_reason: DenialReason::AgentNotAuthorized as i32,
            explanation: "no signed permission was provided".into(),
        })
        .await
        .expect("deny")
        .into_inner();
    assert_eq!(
        denied.denial_reason,
        DenialReason::AgentNotAuthorized as i32
    );

    // Evidence given at verification lets it proceed.
    let r = create(
        &mut c,
        CreatePrivacyRequestRequest {
            agent: Some(agent("")),
            ..new_request("q", RequestType::Access, "US-CA", received)
        },
    )
    .await;
    let ok = c
        .verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
            name: r.name.clone(),
            request_id: request_id(),
            method: "signed permission checked".into(),
            agent_evidence_reference: "docs/poa-77".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(state(&ok), State::InProgress);
    assert_eq!(ok.agent.expect("agent").evidence_reference, "docs/poa-77");

    // Virginia lets no agent file an access request.
    let err = c
        .create_privacy_request(CreatePrivacyRequestRequest {
            agent: Some(agent("poa")),
            ..new_request("v", RequestType::Access, "US-VA", received)
        })
        .await
        .expect_err("agent in VA");
    assert_eq!(error_reason(&err).0, "AGENT_NOT_PERMITTED");
    server.finish().await;
}

#[tokio::test]
async fn the_free_limit_counts_the_last_twelve_months() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    // California: two free access requests in 12 months.
    let old = create(
        &mut c,
        new_request("f", RequestType::Access, "US-CA", today() - Days::new(400)),
    )
    .await;
    assert!(!old.free_limit_exceeded);
    let mut last = old;
    for i in 0..3 {
        last = create(
            &mut c,
            new_request(
                "f",
                RequestType::Access,
                "US-CA",
                today() - Days::new(30 - i),
            ),
        )
        .await;
    }
    // The one 400 days ago does not count; two in the window before the third.
    assert_eq!(last.prior_requests_12_months, 2);
    assert!(last.free_limit_exceeded);
    // Another type has its own count.
    let del = create(
        &mut c,
        new_request("f", RequestType::Deletion, "US-CA", today()),
    )
    .await;
    assert_eq!(del.prior_requests_12_months, 0);
    assert!(!del.free_limit_exceeded);
    server.finish().await;
}

#[tokio::test]
async fn an_opt_out_refuses_in_the_consent_ledger_at_once() {
    let mut server = TestServer::start().await;
    let mut c = client(&server);
    let check = |subject: &str| CheckConsentRequest {
        subject_id: subject.into(),
        purpose: "targeted_advertising".into(),
        ..Default::default()
    };
    let before = server
        .consent
        .check_consent(check("o"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(before.verdict, Verdict::Allowed as i32, "opt-out purpose");
    let r = create(
        &mut c,
        new_request(
            "o",
            RequestType::OptOutTargetedAdvertising,
            "US-CA",
            today(),
        ),
    )
    .await;
    assert_eq!(state(&r), State::Completed);
    assert!(
        r.explanation.contains("targeted_advertising"),
        "{}",
        r.explanation
    );
    let after = server
        .consent
        .check_consent(check("o"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(after.verdict, Verdict::Denied as i32);
    let record = after.deciding_record.expect("deciding record");
    assert_eq!(record.source, proto::ConsentSource::PrivacyRequest as i32);
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn appeals_have_their_own_clock_and_the_regulator_is_named() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let r = create(
        &mut c,
        new_request("ap", RequestType::Deletion, "US-VA", today()),
    )
    .await;
    deny(&mut c, &r.name).await.expect("deny");
    let appeal_day = today();
    let appealed = c
        .appeal_privacy_request(AppealPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            statement: "I did verify".into(),
            receive_time: Some(at(appeal_day)),
        })
        .await
        .expect("appeal")
        .into_inner();
    let appeal = appealed.appeal.expect("appeal");
    assert_eq!(appeal.state, proto::appeal::State::Pending as i32);
    // Virginia: 45 days to decide an appeal; the AG must be named on denial.
    assert_eq!(appeal.due_date, (appeal_day + Days::new(45)).to_string());
    assert!(appeal.regulator_contact_required);
    let err = c
        .appeal_privacy_request(AppealPrivacyRequestRequest {
            name: r.name.clone(),
            request_id: request_id(),
            statement: "again".into(),
            receive_time: None,
        })
        .await
        .expect_err("second appeal");
    assert_eq!(error_reason(&err).0, "APPEAL_NOT_ALLOWED");
    let decide = |provided: bool, decision: proto::appeal::State| DecideAppealRequest {
        name: r.name.clone(),
        request_id: request_id(),
        decision: decision as i32,
        explanation: "the identity check failed twice".into(),
        regulator_contact_provided: provided,
    };
    let err = c
        .decide_appeal(decide(false, proto::appeal::State::Upheld))
        .await
        .expect_err("regulator not named");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).1, vec!["regulator_contact_provided"]);
    let upheld = c
        .decide_appeal(decide(true, proto::appeal::State::Upheld))
        .await
        .expect("uphold")
        .into_inner();
    assert_eq!(state(&upheld), State::Denied);
    let appeal = upheld.appeal.expect("appeal");
    assert_eq!(appeal.state, proto::appeal::State::Upheld as i32);
    assert!(appeal.regulator_contact_provided);

    // A granted appeal reopens the request.
    let r2 = create(
        &mut c,
        new_request("ap2", RequestType::Access, "US-VA", today()),
    )
    .await;
    deny(&mut c, &r2.name).await.expect("deny");
    c.appeal_privacy_request(AppealPrivacyRequestRequest {
        name: r2.name.clone(),
        request_id: request_id(),
        statement: "please".into(),
        receive_time: None,
    })
    .await
    .expect("appeal");
    let granted = c
        .decide_appeal(DecideAppealRequest {
            name: r2.name.clone(),
            request_id: request_id(),
            decision: proto::appeal::State::Granted as i32,
            explanation: "verified on review".into(),
            regulator_contact_provided: false,
        })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(state(&granted), State::InProgress);
    assert_eq!(granted.denial_reason, 0);
    let last = granted.transitions.last().expect("transitions");
    assert_eq!(last.action, "DecideAppeal");
    assert_eq!(last.to_state, State::InProgress as i32);

    // California's law gives no appeal: the one offered is the
    // organisation's own (tests/appeals.rs has the rest).
    let ca = create(
        &mut c,
        new_request("ap3", RequestType::Deletion, "US-CA", today()),
    )
    .await;
    assert!(ca.appeal_available);
    assert!(ca.appeal_voluntary);
    server.finish().await;
}

#[tokio::test]
async fn transitions_are_recorded_with_who_and_why_and_audited() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let r = create(
        &mut c,
        new_request("t", RequestType::Access, "US-CA", today()),
    )
    .await;
    verify(&mut c, &r.name).await.expect("verify");
    let done = complete(&mut c, &r.name, &[]).await.expect("complete");
    let steps: Vec<(i32, i32, &str)> = done
        .transitions
        .iter()
        .map(|t| (t.from_state, t.to_state, t.action.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (0, State::Received as i32, "CreatePrivacyRequest"),
            (
                State::Received as i32,
                State::AwaitingVerification as i32,
                "CreatePrivacyRequest"
            ),
            (
                State::AwaitingVerification as i32,
                State::InProgress as i32,
                "VerifyPrivacyRequestIdentity"
            ),
            (
                State::InProgress as i32,
                State::Completed as i32,
                "CompletePrivacyRequest"
            ),
        ]
    );
    assert!(
        done.transitions
            .iter()
            .all(|t| t.actor.starts_with("peer:"))
    );
    assert!(done.transitions[2].reason.contains("email link"));
    assert!(done.close_time.is_some());
    let pool = server.db.pool().await;
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE target = $1")
        .bind(&r.name)
        .fetch_one(&pool)
        .await
        .expect("audit");
    assert_eq!(audited, 3, "create, verify, complete");
    server.finish().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let base = new_request("b", RequestType::Access, "US-CA", today());
    let tomorrow = today() + Days::new(2);
    let cases: Vec<(&str, CreatePrivacyRequestRequest)> = vec![
        (
            "request_id",
            CreatePrivacyRequestRequest {
                request_id: String::new(),
                ..base.clone()
            },
        ),
        (
            "subject_id",
            CreatePrivacyRequestRequest {
                subject_id: "has space".into(),
                ..base.clone()
            },
        ),
        (
            "request_type",
            CreatePrivacyRequestRequest {
                request_type: 0,
                ..base.clone()
            },
        ),
        (
            "jurisdiction",
            CreatePrivacyRequestRequest {
                jurisdiction: "california".into(),
                ..base.clone()
            },
        ),
        (
            "channel",
            CreatePrivacyRequestRequest {
                channel: 0,
                ..base.clone()
            },
        ),
        (
            "receive_time",
            CreatePrivacyRequestRequest {
                receive_time: Some(at(tomorrow)),
                ..base.clone()
            },
        ),
        (
            "corrections",
            CreatePrivacyRequestRequest {
                request_type: RequestType::Correction as i32,
                ..base.clone()
            },
        ),
        (
            "identifiers[0]",
            CreatePrivacyRequestRequest {
                identifiers: vec![proto::Identifier {
                    kind: proto::identifier::Kind::PhoneNumber as i32,
                    value: "none".into(),
                }],
                ..base.clone()
            },
        ),
        (
            "categories[0]",
            CreatePrivacyRequestRequest {
                categories: vec!["Not Valid".into()],
                ..base.clone()
            },
        ),
        (
            "agent.display_name",
            CreatePrivacyRequestRequest {
                agent: Some(Agent::default()),
                ..base.clone()
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.create_privacy_request(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            error_reason(&err),
            ("FIELD_VIOLATION".into(), vec![field.to_owned()])
        );
    }
    let err = c
        .get_privacy_request(proto::GetPrivacyRequestRequest {
            name: "privacyRequests/999".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let pool = server.db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy_requests")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 0);
    server.finish().await;
}

#[tokio::test]
async fn a_retried_create_returns_the_first_request() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let req = new_request("r", RequestType::Deletion, "US-CA", today());
    let first = create(&mut c, req.clone()).await;
    let again = create(&mut c, req).await;
    assert_eq!(first.name, again.name);
    let list = c
        .list_privacy_requests(ListPrivacyRequestsRequest {
            subject_id: "r".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.privacy_requests.len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn lists_filter_by_subject_state_type_jurisdiction_and_due_date() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let a = create(
        &mut c,
        new_request("x", RequestType::Access, "US-CA", today() - Days::new(60)),
    )
    .await;
    let b = create(
        &mut c,
        new_request("x", RequestType::Deletion, "US-VA", today()),
    )
    .await;
    let e = create(&mut c, new_request("y", RequestType::Access, "EU", today())).await;
    deny(&mut c, &e.name).await.expect("deny");
    let names = |r: proto::ListPrivacyRequestsResponse| {
        r.privacy_requests
            .into_iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
    };
    let list = |f: ListPrivacyRequestsRequest| {
        let mut c = c.clone();
        async move { names(c.list_privacy_requests(f).await.expect("list").into_inner()) }
    };
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            subject_id: "x".into(),
            ..Default::default()
        })
        .await,
        vec![a.name.clone(), b.name.clone()]
    );
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            state: State::Denied as i32,
            ..Default::default()
        })
        .await,
        vec![e.name.clone()]
    );
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            request_type: RequestType::Deletion as i32,
            ..Default::default()
        })
        .await,
        vec![b.name.clone()]
    );
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            jurisdiction: "EU".into(),
            ..Default::default()
        })
        .await,
        vec![e.name.clone()]
    );
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            overdue: true,
            ..Default::default()
        })
        .await,
        vec![a.name.clone()]
    );
    assert_eq!(
        list(ListPrivacyRequestsRequest {
            due_before: (today() + Days::new(40)).to_string(),
            ..Default::default()
        })
        .await,
        vec![a.name.clone(), e.name.clone()]
    );
    // Paging with a token bound to the filters.
    let first = c
        .list_privacy_requests(ListPrivacyRequestsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first.privacy_requests.len(), 2);
    let err = c
        .list_privacy_requests(ListPrivacyRequestsRequest {
            page_size: 2,
            subject_id: "x".into(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("token from other filters");
    assert_eq!(error_reason(&err).1, vec!["page_token"]);
    let second = c
        .list_privacy_requests(ListPrivacyRequestsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(names(second), vec![e.name.clone()]);
    server.finish().await;
}

/// The CCPA 11 CCR 7102 figures for a seeded year, against numbers worked
/// out by hand.
#[tokio::test]
async fn metrics_for_a_year_match_a_hand_count() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let pool = server.db.pool().await;
    // 2025: four access requests, one deletion.
    let mut access = Vec::new();
    for (i, day) in ["2025-01-10", "2025-03-01", "2025-06-15", "2025-12-31"]
        .iter()
        .enumerate()
    {
        access.push(
            create(
                &mut c,
                new_request(&format!("m{i}"), RequestType::Access, "US-CA", d(day)),
            )
            .await,
        );
    }
    let deletion = create(
        &mut c,
        new_request("m9", RequestType::Deletion, "US-CA", d("2025-05-05")),
    )
    .await;
    // 2026: not counted in 2025.
    create(
        &mut c,
        new_request("m10", RequestType::Access, "US-CA", d("2026-01-01")),
    )
    .await;
    // Outcomes: access[0] complied in whole after 10 days, access[1] in part
    // after 30, access[2] denied (identity) after 5, access[3] still open;
    // the deletion denied (no data) after 20.
    verify(&mut c, &access[0].name).await.expect("verify");
    complete(&mut c, &access[0].name, &[])
        .await
        .expect("complete");
    verify(&mut c, &access[1].name).await.expect("verify");
    complete(&mut c, &access[1].name, &["trade secrets"])
        .await
        .expect("complete");
    deny(&mut c, &access[2].name).await.expect("deny");
    c.deny_privacy_request(DenyPrivacyRequestRequest {
        name: deletion.name.clone(),
        request_id: request_id(),
        denial_reason: DenialReason::NoData as i32,
        explanation: "no such person".into(),
    })
    .await
    .expect("deny");
    for (name, days) in [
        (&access[0].name, 10),
        (&access[1].name, 30),
        (&access[2].name, 5),
        (&deletion.name, 20),
    ] {
        sqlx::query(
            "UPDATE privacy_requests SET close_time = receive_time + make_interval(days => $2)
             WHERE id = $1",
        )
        .bind(
            name.trim_start_matches("privacyRequests/")
                .parse::<i64>()
                .expect("id"),
        )
        .bind(days)
        .execute(&pool)
        .await
        .expect("set close time");
    }
    let m = c
        .get_request_metrics(GetRequestMetricsRequest { year: 2025 })
        .await
        .expect("metrics")
        .into_inner();
    let of = |t: RequestType| {
        m.request_types
            .iter()
            .find(|r| r.request_type == t as i32)
            .cloned()
            .expect("type")
    };
    let a = of(RequestType::Access);
    assert_eq!(a.received, 4);
    assert_eq!(a.complied_in_whole, 1);
    assert_eq!(a.complied_in_part, 1);
    assert_eq!(a.denied, 1);
    assert_eq!(a.denied_by_reason.len(), 1);
    assert_eq!(
        a.denied_by_reason[0].denial_reason,
        DenialReason::IdentityNotVerified as i32
    );
    // Days: 5, 10, 30 → median 10, mean 15.
    assert_eq!(a.median_days_to_respond, 10.0);
    assert_eq!(a.mean_days_to_respond, 15.0);
    let del = of(RequestType::Deletion);
    assert_eq!((del.received, del.denied), (1, 1));
    assert_eq!(del.median_days_to_respond, 20.0);
    assert_eq!(of(RequestType::Correction).received, 0);
    // Open and past due now: access[3] (received 2025-12-31) and the 2026 one.
    assert_eq!(m.overdue, 2);
    assert_eq!(m.due_within_7_days, 0);
    let err = c
        .get_request_metrics(GetRequestMetricsRequest { year: 0 })
        .await
        .expect_err("year");
    assert_eq!(error_reason(&err).1, vec!["year"]);
    server.finish().await;
}

#[tokio::test]
async fn a_written_request_carries_its_consistency_token_in_the_message_and_the_header() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let created = c
        .create_privacy_request(new_request("t", RequestType::Access, "US-CA", today()))
        .await
        .expect("create");
    let header = created
        .metadata()
        .get(privacy_records::rpc::CONSISTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("the header");
    let created = created.into_inner();
    assert_eq!(created.consistency_token, header);
    let verified = verify(&mut c, &created.name).await.expect("verify");
    assert!(
        !verified.consistency_token.is_empty(),
        "a change has one too"
    );
    assert_ne!(verified.consistency_token, created.consistency_token);
    let read = c
        .get_privacy_request(proto::GetPrivacyRequestRequest {
            name: created.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.consistency_token, "", "a read writes nothing");
    server.finish().await;
}

/// One request has one name: "privacyRequests/01", "/+1" and "/001" would
/// otherwise all reach "privacyRequests/1", and a reader comparing names
/// (an audit reviewer, a cache) would see several requests where there is
/// one. Reads and changes refuse them, naming the field.
#[tokio::test]
async fn a_request_answers_only_to_its_canonical_name() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let r = create(
        &mut c,
        new_request("ann", RequestType::Access, "US-CA", today()),
    )
    .await;
    let id = r.name.strip_prefix("privacyRequests/").expect("a name");
    for bad in [
        format!("privacyRequests/0{id}"),
        format!("privacyRequests/+{id}"),
        format!("privacyRequests/00{id}"),
        format!("privacyRequests/{id} "),
    ] {
        let err = c
            .get_privacy_request(proto::GetPrivacyRequestRequest { name: bad.clone() })
            .await
            .expect_err(&bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(error_reason(&err).1, ["name"], "{bad}");
        let err = verify(&mut c, &bad).await.expect_err(&bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(error_reason(&err).1, ["name"], "{bad}");
    }
    c.get_privacy_request(proto::GetPrivacyRequestRequest {
        name: r.name.clone(),
    })
    .await
    .expect("the canonical name");
    server.finish().await;
}

/// An identifier value with a control character (NUL, CR, LF, ESC, DEL, a
/// C1 control) would be hashed and matched as typed, and could forge lines
/// in whatever later prints it: refused, naming the field.
#[tokio::test]
async fn control_characters_in_identifier_values_are_refused() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    for value in [
        "ann@example.com\0",
        "ann\r\n@example.com",
        "ann@exa\nmple.com",
        "\u{1b}[31mann@example.com",
        "ann\u{7f}@example.com",
        "ann\u{85}@example.com",
        "ann\t@example.com",
    ] {
        let req = CreatePrivacyRequestRequest {
            identifiers: vec![proto::Identifier {
                kind: proto::identifier::Kind::EmailAddress as i32,
                value: value.into(),
            }],
            ..new_request("ann", RequestType::Access, "US-CA", today())
        };
        let err = c.create_privacy_request(req).await.expect_err(value);
        assert_eq!(err.code(), Code::InvalidArgument, "{value:?}");
        assert_eq!(error_reason(&err).1, ["identifiers[0].value"], "{value:?}");
    }
    let fine = CreatePrivacyRequestRequest {
        identifiers: vec![proto::Identifier {
            kind: proto::identifier::Kind::EmailAddress as i32,
            value: " Ann@Example.com ".into(),
        }],
        ..new_request("ann", RequestType::Access, "US-CA", today())
    };
    c.create_privacy_request(fine)
        .await
        .expect("surrounding spaces are trimmed, as before");
    server.finish().await;
}
