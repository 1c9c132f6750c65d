//! `PrivacyRequestService`'s rules methods over a real server, and the rules
//! as enacted seen through `CreatePrivacyRequest`.
mod common;

use chrono::{Days, NaiveDate, Utc};
use common::{TestServer, error_reason, request_id, test_settings};
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    self, Agent, CreatePrivacyRequestRequest, GetJurisdictionRulesRequest,
    ListJurisdictionRulesRequest, PeriodUnit, PrivacyRequest, RequestType,
};
use prost_types::Timestamp;
use tonic::Code;
use tonic::transport::Channel;

fn client(server: &TestServer) -> PrivacyRequestServiceClient<Channel> {
    let channel = server.channel();
    PrivacyRequestServiceClient::new(channel)
}

fn get(code: &str) -> GetJurisdictionRulesRequest {
    GetJurisdictionRulesRequest {
        name: format!("jurisdictionRules/{code}"),
    }
}

#[tokio::test]
async fn california_rules_carry_their_deadlines_and_citations() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let ca = c
        .get_jurisdiction_rules(get("US-CA"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(ca.name, "jurisdictionRules/US-CA");
    assert_eq!(ca.requested_code, "");
    assert_eq!(ca.request_types.len(), 13);
    let access = ca
        .request_types
        .iter()
        .find(|r| r.request_type == RequestType::Access as i32)
        .expect("access");
    assert!(access.statutory && access.verification_required);
    let deadline = access.response_deadline.expect("deadline");
    assert_eq!(
        (deadline.amount, deadline.unit),
        (45, PeriodUnit::CalendarDays as i32)
    );
    assert!(
        !access
            .deadline_citation
            .as_ref()
            .expect("cite")
            .source
            .is_empty()
    );
    assert!(!ca.table_version.is_empty());
    server.finish().await;
}

#[tokio::test]
async fn iowa_grants_no_correction_and_utah_pauses_the_clock() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let ia = c
        .get_jurisdiction_rules(get("US-IA"))
        .await
        .expect("get")
        .into_inner();
    let correction = ia
        .request_types
        .iter()
        .find(|r| r.request_type == RequestType::Correction as i32)
        .expect("correction");
    assert!(!correction.statutory, "Iowa grants no correction right");
    let ut = c
        .get_jurisdiction_rules(get("US-UT"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        ut.clock_pauses,
        vec!["fraud_suspected_authentication_pending".to_string()]
    );
    server.finish().await;
}

#[tokio::test]
async fn member_states_get_the_gdpr_and_unknown_codes_the_defaults() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let de = c
        .get_jurisdiction_rules(get("DE"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!((de.code.as_str(), de.requested_code.as_str()), ("EU", "DE"));
    let access = &de.request_types[0];
    let deadline = access.response_deadline.expect("deadline");
    assert_eq!(
        (deadline.amount, deadline.unit),
        (1, PeriodUnit::Months as i32)
    );
    let br = c
        .get_jurisdiction_rules(get("BR"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (br.code.as_str(), br.requested_code.as_str()),
        ("default", "BR")
    );
    assert!(br.request_types.iter().all(|r| !r.statutory));

    let all = c
        .list_jurisdiction_rules(ListJurisdictionRulesRequest {})
        .await
        .expect("list")
        .into_inner();
    let codes: Vec<&str> = all
        .jurisdiction_rules
        .iter()
        .map(|r| r.code.as_str())
        .collect();
    assert_eq!(codes.len(), 25, "{codes:?}");
    for code in [
        "US-CA", "US-IA", "US-UT", "US-TX", "US-RI", "US-OK", "US-LA", "US-AL", "EU", "default",
    ] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }

    let err = c
        .get_jurisdiction_rules(GetJurisdictionRulesRequest {
            name: "US-CA".into(),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).1, vec!["name".to_string()]);
    server.finish().await;
}

fn at(date: NaiveDate) -> Timestamp {
    let t = date.and_hms_opt(0, 0, 0).expect("time").and_utc();
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
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
        receive_time: Some(at(received)),
        ..Default::default()
    }
}

async fn create(
    c: &mut PrivacyRequestServiceClient<Channel>,
    req: CreatePrivacyRequestRequest,
) -> PrivacyRequest {
    c.create_privacy_request(req)
        .await
        .expect("create")
        .into_inner()
}

fn of(rules: &proto::JurisdictionRules, t: RequestType) -> &proto::RequestTypeRules {
    rules
        .request_types
        .iter()
        .find(|r| r.request_type == t as i32)
        .expect("every type is listed")
}

#[tokio::test]
async fn the_list_carries_the_table_version_and_the_date_it_was_checked() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let all = c
        .list_jurisdiction_rules(ListJurisdictionRulesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.table_version, "2026-12-03.2");
    assert_eq!(all.table_checked_date, "2026-12-03");
    assert!(
        all.jurisdiction_rules
            .iter()
            .all(|r| r.table_checked_date == "2026-12-03")
    );
    let ok = all
        .jurisdiction_rules
        .iter()
        .find(|r| r.code == "US-OK")
        .expect("Oklahoma");
    assert_eq!(ok.effective_date, "2027-01-01");
    let al = all
        .jurisdiction_rules
        .iter()
        .find(|r| r.code == "US-AL")
        .expect("Alabama");
    assert_eq!(al.effective_date, "2027-05-01");
    server.finish().await;
}

#[tokio::test]
async fn california_rules_show_the_holidays_admt_rights_and_the_free_limit_per_type() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let ca = c
        .get_jurisdiction_rules(get("US-CA"))
        .await
        .expect("get")
        .into_inner();
    // Gov. Code 19853 / CalHR: Thanksgiving 2026 and the day after.
    assert!(ca.holidays.contains(&"2026-11-26".to_string()));
    assert!(ca.holidays.contains(&"2026-11-27".to_string()));
    assert!(!ca.holidays_through.is_empty());
    assert!(ca.holidays_citation.is_some());
    // 11 CCR 7221 / 7222 from 2027-01-01.
    let admt = of(&ca, RequestType::OptOutAdmt);
    assert!(admt.statutory);
    assert_eq!(admt.right_since, "2027-01-01");
    assert_eq!(
        admt.response_deadline.map(|p| (p.amount, p.unit)),
        Some((15, PeriodUnit::BusinessDays as i32))
    );
    assert_eq!(of(&ca, RequestType::AccessAdmt).right_since, "2027-01-01");
    // Civ. Code 1798.130(b): only requests to know are capped.
    assert_eq!(of(&ca, RequestType::Access).free_requests_per_12_months, 2);
    assert_eq!(
        of(&ca, RequestType::Deletion).free_requests_per_12_months,
        0
    );
    // 11 CCR 7063: agents by statute.
    assert!(ca.agent_provision);
    assert!(of(&ca, RequestType::Deletion).agent_statutory);
    server.finish().await;
}

#[tokio::test]
async fn iowa_says_its_statute_has_no_agent_provision() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    let ia = c
        .get_jurisdiction_rules(get("US-IA"))
        .await
        .expect("get")
        .into_inner();
    assert!(!ia.agent_provision);
    let access = of(&ia, RequestType::Access);
    assert!(!access.agent_statutory && !access.agent_may_file);
    assert!(ia.agent_citation.expect("cite").source.contains("715D"));
    server.finish().await;

    // With voluntary agents on, the same answer says an agent may file,
    // still not by statute.
    let mut settings = test_settings();
    settings.requests.voluntary_agents = true;
    let server = TestServer::start_with(settings).await;
    let mut c = client(&server);
    let ia = c
        .get_jurisdiction_rules(get("US-IA"))
        .await
        .expect("get")
        .into_inner();
    let access = of(&ia, RequestType::Access);
    assert!(!access.agent_statutory && access.agent_may_file);
    server.finish().await;
}

#[tokio::test]
async fn a_third_california_deletion_in_twelve_months_is_not_over_the_free_limit() {
    // Civ. Code 1798.130(b) caps requests to know only.
    let server = TestServer::start().await;
    let mut c = client(&server);
    let mut last = None;
    for i in 0..3u64 {
        last = Some(
            create(
                &mut c,
                new_request(
                    "del3",
                    RequestType::Deletion,
                    "US-CA",
                    today() - Days::new(30 - i),
                ),
            )
            .await,
        );
    }
    let last = last.expect("three deletions");
    assert_eq!(last.prior_requests_12_months, 2);
    assert!(!last.free_limit_exceeded);
    // A third request to know still is.
    let mut know = Vec::new();
    for i in 0..3u64 {
        let received = today() - Days::new(30 - i);
        know.push(
            create(
                &mut c,
                new_request("know3", RequestType::Access, "US-CA", received),
            )
            .await,
        );
    }
    assert!(know.last().is_some_and(|r| r.free_limit_exceeded));
    server.finish().await;
}

#[tokio::test]
async fn an_eu_opt_out_of_sale_is_due_in_one_month_not_forty_five_days() {
    // GDPR Art. 21 / Art. 7(3), answered under Art. 12(3).
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = NaiveDate::from_ymd_opt(2026, 11, 3).expect("date");
    let r = create(
        &mut c,
        new_request("eu-sale", RequestType::OptOutSale, "FR", received),
    )
    .await;
    assert!(r.statutory);
    assert_eq!(r.rules_code, "EU");
    assert_eq!(r.original_due_date, "2026-12-03");
    let r = create(
        &mut c,
        new_request("eu-spi", RequestType::LimitSensitiveData, "DE", received),
    )
    .await;
    assert!(r.statutory);
    assert_eq!(r.original_due_date, "2026-12-03");
    server.finish().await;
}

#[tokio::test]
async fn a_california_opt_out_filed_the_friday_before_thanksgiving_is_due_after_the_holidays() {
    // 11 CCR 7026(f): 15 business days, less Thanksgiving and the day after.
    let server = TestServer::start().await;
    let mut c = client(&server);
    let received = NaiveDate::from_ymd_opt(2026, 11, 20).expect("date");
    let r = create(
        &mut c,
        new_request("thx", RequestType::OptOutSale, "US-CA", received),
    )
    .await;
    assert_eq!(r.original_due_date, "2026-12-15");
    // Texas has no shorter opt-out clock: 45 calendar days.
    let r = create(
        &mut c,
        new_request("thx-tx", RequestType::OptOutSale, "US-TX", received),
    )
    .await;
    assert_eq!(r.original_due_date, "2027-01-04");
    server.finish().await;
}

#[tokio::test]
async fn an_oklahoma_request_before_2027_is_answered_voluntarily_under_the_defaults() {
    // SB 546 takes effect on 1 January 2027.
    let server = TestServer::start().await;
    let mut c = client(&server);
    let r = create(
        &mut c,
        new_request("okie", RequestType::Deletion, "US-OK", today()),
    )
    .await;
    assert_eq!(r.rules_code, "US-OK");
    assert!(!r.statutory);
    server.finish().await;
}

#[tokio::test]
async fn an_agent_may_file_in_iowa_only_where_the_organisation_accepts_agents_voluntarily() {
    let agent = || Agent {
        display_name: "Agency".into(),
        evidence_reference: "poa-1".into(),
        ..Default::default()
    };
    let mut settings = test_settings();
    settings.requests.voluntary_agents = true;
    let server = TestServer::start_with(settings).await;
    let mut c = client(&server);
    let r = create(
        &mut c,
        CreatePrivacyRequestRequest {
            agent: Some(agent()),
            ..new_request("ia-agent", RequestType::Access, "US-IA", today())
        },
    )
    .await;
    assert!(r.agent_may_file);
    assert!(r.statutory);
    // Colorado's statute lets agents file opt-outs only: the setting does not
    // reach past a statute's own provision.
    let err = c
        .create_privacy_request(CreatePrivacyRequestRequest {
            agent: Some(agent()),
            ..new_request("co-agent", RequestType::Access, "US-CO", today())
        })
        .await
        .expect_err("agent for a Colorado access request");
    assert_eq!(error_reason(&err).0, "AGENT_NOT_PERMITTED");
    server.finish().await;
}

/// A jurisdiction's rules have one name, with the code in upper case as it
/// is printed ("jurisdictionRules/US-CA"): "us-ca" or "Us-Ca" would be
/// second names of the same rules, and are refused naming the field.
#[tokio::test]
async fn jurisdiction_rules_answer_only_to_their_canonical_name() {
    let server = TestServer::start().await;
    let mut c = client(&server);
    for bad in ["us-ca", "Us-CA", "eu", "de"] {
        let err = c.get_jurisdiction_rules(get(bad)).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(error_reason(&err).1, ["name"], "{bad}");
    }
    let ca = c
        .get_jurisdiction_rules(get("US-CA"))
        .await
        .expect("the canonical name")
        .into_inner();
    assert_eq!(ca.name, "jurisdictionRules/US-CA");
    let defaults = c
        .get_jurisdiction_rules(get("default"))
        .await
        .expect("the defaults' name")
        .into_inner();
    assert_eq!(defaults.code, "default");
    server.finish().await;
}
