//! `PrivacyRequestService`'s rules methods over a real server.
mod common;

use common::{TestServer, error_reason};
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::{
    GetJurisdictionRulesRequest, ListJurisdictionRulesRequest, PeriodUnit, RequestType,
};
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
    assert_eq!(ca.request_types.len(), 11);
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
    assert_eq!(codes.len(), 22, "{codes:?}");
    for code in ["US-CA", "US-IA", "US-UT", "US-TX", "US-RI", "EU", "default"] {
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
