//! Promises kept by the purposes catalogue: a PROHIBITED
//! purpose is a promise the organisation made in its published policy. An
//! edit of the catalogue alone cannot weaken it; only a published material
//! policy version lifts it, from that version's effective time, never
//! backwards. Real server on port 0, real PostgreSQL, the generated client.
mod common;

use chrono::{DateTime, Duration, Utc};
use common::{TestServer, error_reason, grant, request_id, ts, wait_until};
use privacy_records::consent::cache::{CacheSettings, DecisionCache};
use privacy_records::consent::model::Reason;
use privacy_records::consent::service::CheckQuery;
use privacy_records::names::{PurposeKey, SubjectId};
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::data_system_service_client::DataSystemServiceClient;
use privacy_records::proto::{
    CheckConsentRequest, ConsentModel, CreatePurposeRequest, DecisionReason, Disclosure,
    DisclosureBasis, GetPurposeRequest, JurisdictionModel, ListAuditEventsRequest, PolicyVersion,
    PublishPolicyVersionRequest, Purpose, RecordConsentRequest, RecordDisclosureRequest,
    UpdatePurposeRequest, Verdict,
};
use prost_types::FieldMask;
use tokio::sync::watch;
use tonic::Code;

const SALE: &str = "sale_of_personal_data";

fn check(subject: &str, purpose: &str) -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: subject.into(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

async fn decide(server: &TestServer, req: CheckConsentRequest) -> (Verdict, DecisionReason) {
    let r = server
        .consent
        .clone()
        .check_consent(req)
        .await
        .expect("check")
        .into_inner();
    (
        Verdict::try_from(r.verdict).expect("verdict"),
        DecisionReason::try_from(r.reason).expect("reason"),
    )
}

/// An UpdatePurpose that sets the default model of `key`.
fn set_model(key: &str, model: ConsentModel) -> UpdatePurposeRequest {
    UpdatePurposeRequest {
        request_id: request_id(),
        purpose: Some(Purpose {
            name: format!("purposes/{key}"),
            consent_model: model as i32,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["consent_model".into()],
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_edit_of_the_catalogue_alone_cannot_lift_the_promise_never_to_sell() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let err = c
        .update_purpose(set_model(SALE, ConsentModel::OptOut))
        .await
        .expect_err("a promise is not lifted by an edit");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "PURPOSE_PROMISE_IN_FORCE");
    assert_eq!(
        decide(&server, check("ann", SALE)).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    // The default catalogue's promise holds from the start, everywhere.
    let sale = c
        .get_purpose(GetPurposeRequest {
            name: format!("purposes/{SALE}"),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(sale.consent_model, ConsentModel::Prohibited as i32);
    assert_eq!(sale.promises.len(), 1);
    let promise = &sale.promises[0];
    assert_eq!(promise.jurisdiction, "");
    assert_eq!(promise.make_time, None, "from the start");
    assert!(promise.lifted_by_policy_version.is_empty());
    // The refusal names the promise it keeps.
    use tonic_types::StatusExt;
    let subjects: Vec<String> = err
        .get_error_details()
        .precondition_failure()
        .map(|f| f.violations.iter().map(|v| v.subject.clone()).collect())
        .unwrap_or_default();
    assert_eq!(subjects, vec![promise.name.clone()]);
    assert!(
        promise
            .name
            .starts_with("purposes/sale_of_personal_data/promises/")
    );
    server.finish().await;
}

/// Publishes a policy version effective at `effective`.
async fn publish(server: &TestServer, id: &str, material: bool, effective: DateTime<Utc>) {
    server
        .consent
        .clone()
        .publish_policy_version(PublishPolicyVersionRequest {
            request_id: request_id(),
            policy_version: Some(PolicyVersion {
                version_id: id.into(),
                effective_time: Some(ts(effective)),
                text_sha256: "b".repeat(64),
                material,
                summary: "we may now sell personal data to partners".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("publish");
}

fn as_of(subject: &str, purpose: &str, at: DateTime<Utc>) -> CheckConsentRequest {
    CheckConsentRequest {
        as_of_time: Some(ts(at)),
        ..check(subject, purpose)
    }
}

fn time_of(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("timestamp")
}

#[tokio::test]
async fn a_material_policy_version_lifts_the_promise_from_its_effective_time_never_before() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let before_lift = Utc::now();
    // Published now, in effect a few seconds from now.
    let effective = Utc::now() + Duration::seconds(3);
    publish(&server, "2027-01-01", true, effective).await;
    let lifted = c
        .update_purpose(UpdatePurposeRequest {
            lift_promise_policy_version: "2027-01-01".into(),
            ..set_model(SALE, ConsentModel::OptOut)
        })
        .await
        .expect("a material version lifts the promise")
        .into_inner();
    assert_eq!(lifted.consent_model, ConsentModel::OptOut as i32);
    let promise = &lifted.promises[0];
    assert_eq!(promise.lifted_by_policy_version, "2027-01-01");
    let lift_effective = time_of(promise.lift_effective_time.as_ref().expect("lift time"));
    assert_eq!(
        lift_effective.timestamp_micros(),
        effective.timestamp_micros(),
        "the lift takes effect at the version's effective time"
    );
    assert!(!promise.lifted_by.is_empty());

    // Until then, every path still answers PROHIBITED: now (cache or not),
    // and as of any earlier time.
    assert_eq!(
        decide(&server, check("bea", SALE)).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    assert_eq!(
        decide(&server, as_of("bea", SALE, before_lift)).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    let err = c
        .record_consent(grant("bea", SALE))
        .await
        .expect_err("no grant while the promise holds");
    assert_eq!(error_reason(&err).0, "PURPOSE_PROHIBITED");

    // Once the effective time passes, with no write in between, checks
    // answer from the new model (the decision cache included).
    wait_until("the lift to take effect", || async {
        decide(&server, check("bea", SALE)).await
            == (Verdict::Allowed, DecisionReason::DefaultOptOut)
    })
    .await;
    // Both sides of the effective time, as of.
    assert_eq!(
        decide(
            &server,
            as_of("bea", SALE, effective - Duration::milliseconds(1))
        )
        .await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    assert_eq!(
        decide(
            &server,
            as_of("bea", SALE, effective + Duration::milliseconds(1))
        )
        .await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    c.record_consent(RecordConsentRequest {
        ..grant("bea", SALE)
    })
    .await
    .expect("a grant after the lift");

    // The audit trail says who lifted it, under which version.
    let mut audit = AuditServiceClient::new(server.channel());
    let events = audit
        .list_audit_events(ListAuditEventsRequest {
            target: format!("purposes/{SALE}"),
            method: "privacy.v1.ConsentService/UpdatePurpose".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, promise.lifted_by);
    let details: serde_json::Value = serde_json::from_str(&events[0].details_json).expect("json");
    assert_eq!(
        details["promises_lifted"][0]["policy_version"],
        "2027-01-01"
    );
    assert_eq!(details["promises_lifted"][0]["promise"], promise.name);
    server.finish().await;
}

#[tokio::test]
async fn a_promise_is_lifted_only_by_a_published_material_version_newer_than_it() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let lift = |version: &str| UpdatePurposeRequest {
        lift_promise_policy_version: version.into(),
        ..set_model(SALE, ConsentModel::OptOut)
    };
    let err = c
        .update_purpose(lift("never-published"))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "POLICY_VERSION_UNKNOWN");
    publish(&server, "2026-12-minor", false, Utc::now()).await;
    let err = c
        .update_purpose(lift("2026-12-minor"))
        .await
        .expect_err("not material");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "POLICY_VERSION_CANNOT_LIFT_PROMISE");

    // A version the promise already stood in cannot lift it: published
    // before the promise was recorded (here, before the default
    // catalogue's promises were).
    let pool = server.db.pool().await;
    sqlx::query(
        "INSERT INTO policy_versions (version_id, effective_time, text_sha256, material, publish_time)
         VALUES ('2025-01-01', '2025-01-01', repeat('c', 64), true, '2025-01-01')",
    )
    .execute(&pool)
    .await
    .expect("an older material version");
    let err = c
        .update_purpose(lift("2025-01-01"))
        .await
        .expect_err("older");
    assert_eq!(error_reason(&err).0, "POLICY_VERSION_CANNOT_LIFT_PROMISE");
    // Nor can anyone rewrite or delete a promise behind the service's back.
    for sql in [
        "DELETE FROM purpose_promises",
        "UPDATE purpose_promises SET made_by = 'someone else'",
        "UPDATE purpose_promises SET lifted_by_version = '2025-01-01',
                lift_effective_time = now(), lift_time = now(), lifted_by = 'x',
                lift_request_id = 'x', exceptions = '{EU}'",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("purpose"), "{sql}: {err}");
    }
    pool.close().await;

    // A version published before a promise was made cannot lift it.
    publish(&server, "2026-12-material", true, Utc::now()).await;
    c.create_purpose(CreatePurposeRequest {
        request_id: request_id(),
        purpose: Some(Purpose {
            key: "data_brokering".into(),
            display_name: "Data brokering".into(),
            consent_model: ConsentModel::Prohibited as i32,
            ..Default::default()
        }),
    })
    .await
    .expect("create a promise");
    let err = c
        .update_purpose(UpdatePurposeRequest {
            lift_promise_policy_version: "2026-12-material".into(),
            ..set_model("data_brokering", ConsentModel::OptIn)
        })
        .await
        .expect_err("older than the promise");
    assert_eq!(error_reason(&err).0, "POLICY_VERSION_CANNOT_LIFT_PROMISE");
    let err = c
        .update_purpose(set_model("data_brokering", ConsentModel::OptIn))
        .await
        .expect_err("a created promise holds too");
    assert_eq!(error_reason(&err).0, "PURPOSE_PROMISE_IN_FORCE");

    // Naming a version on an update that weakens nothing is a mistake.
    let err = c
        .update_purpose(UpdatePurposeRequest {
            lift_promise_policy_version: "2026-12-material".into(),
            ..set_model("marketing_email", ConsentModel::OptIn)
        })
        .await
        .expect_err("nothing to lift");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        error_reason(&err).1,
        vec!["lift_promise_policy_version".to_string()]
    );
    // Nothing was lifted by the refusals.
    let sale = c
        .get_purpose(GetPurposeRequest {
            name: format!("purposes/{SALE}"),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(sale.consent_model, ConsentModel::Prohibited as i32);
    assert!(
        sale.promises
            .iter()
            .all(|p| p.lifted_by_policy_version.is_empty())
    );
    server.finish().await;
}

fn set_overrides(key: &str, overrides: &[(&str, ConsentModel)]) -> UpdatePurposeRequest {
    UpdatePurposeRequest {
        request_id: request_id(),
        purpose: Some(Purpose {
            name: format!("purposes/{key}"),
            jurisdiction_models: overrides
                .iter()
                .map(|(j, m)| JurisdictionModel {
                    jurisdiction: (*j).into(),
                    consent_model: *m as i32,
                })
                .collect(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["jurisdiction_models".into()],
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn jurisdiction_overrides_cannot_carve_a_promise_away() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    // Never sold anywhere: an EU opt-in override would sell in the EU.
    let err = c
        .update_purpose(set_overrides(SALE, &[("EU", ConsentModel::OptIn)]))
        .await
        .expect_err("an override weakens the default promise");
    assert_eq!(error_reason(&err).0, "PURPOSE_PROMISE_IN_FORCE");

    // A promise made by an override: prohibited in the US, opt-out elsewhere.
    c.create_purpose(CreatePurposeRequest {
        request_id: request_id(),
        purpose: Some(Purpose {
            key: "location_sharing".into(),
            display_name: "Location sharing".into(),
            consent_model: ConsentModel::OptOut as i32,
            jurisdiction_models: vec![JurisdictionModel {
                jurisdiction: "US".into(),
                consent_model: ConsentModel::Prohibited as i32,
            }],
            ..Default::default()
        }),
    })
    .await
    .expect("create");
    let in_ = |j: &str| CheckConsentRequest {
        jurisdiction: j.into(),
        ..check("cai", "location_sharing")
    };
    assert_eq!(
        decide(&server, in_("US-CA")).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    for weaker in [
        vec![],
        vec![("US", ConsentModel::OptIn)],
        vec![
            ("US", ConsentModel::Prohibited),
            ("US-CA", ConsentModel::OptOut),
        ],
    ] {
        let err = c
            .update_purpose(set_overrides("location_sharing", &weaker))
            .await
            .expect_err("an override promise holds");
        assert_eq!(
            error_reason(&err).0,
            "PURPOSE_PROMISE_IN_FORCE",
            "{weaker:?}"
        );
    }
    // Making it stricter is always allowed.
    c.update_purpose(set_overrides(
        "location_sharing",
        &[
            ("US", ConsentModel::Prohibited),
            ("EU", ConsentModel::Prohibited),
        ],
    ))
    .await
    .expect("a stricter catalogue");
    assert_eq!(
        decide(&server, in_("DE")).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    assert_eq!(
        decide(&server, in_("US-CA")).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    server.finish().await;
}

fn sale_disclosure(at: DateTime<Utc>) -> RecordDisclosureRequest {
    RecordDisclosureRequest {
        request_id: request_id(),
        disclosure: Some(Disclosure {
            subject_id: "dan".into(),
            recipient: "Data Partner Inc.".into(),
            categories: vec!["device_and_usage_data".into()],
            basis: DisclosureBasis::Sale as i32,
            disclose_time: Some(ts(at)),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_sale_is_flagged_while_the_promise_held_at_its_time() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let mut systems = DataSystemServiceClient::new(server.channel());
    let effective = Utc::now() + Duration::seconds(2);
    publish(&server, "2027-02-01", true, effective).await;
    c.update_purpose(UpdatePurposeRequest {
        lift_promise_policy_version: "2027-02-01".into(),
        ..set_model(SALE, ConsentModel::OptOut)
    })
    .await
    .expect("lift");
    let during = systems
        .record_disclosure(sale_disclosure(Utc::now()))
        .await
        .expect("record")
        .into_inner();
    assert!(
        during.contradicts_prohibited_purpose,
        "the lift is not yet in effect"
    );
    assert_eq!(during.contradicted_purpose, SALE);
    wait_until("the lift to take effect", || async {
        Utc::now() > effective + Duration::milliseconds(10)
    })
    .await;
    let after = systems
        .record_disclosure(sale_disclosure(Utc::now()))
        .await
        .expect("record")
        .into_inner();
    assert!(!after.contradicts_prohibited_purpose);
    let backdated = systems
        .record_disclosure(sale_disclosure(effective - Duration::milliseconds(1)))
        .await
        .expect("record")
        .into_inner();
    assert!(
        backdated.contradicts_prohibited_purpose,
        "as of its own time"
    );
    server.finish().await;
}

#[tokio::test]
async fn the_decision_cache_lets_a_pending_lift_take_effect_without_a_write() {
    let server = TestServer::start().await;
    let pool = server.db.pool().await;
    let cache = DecisionCache::new(CacheSettings {
        max_subjects: 100,
        max_staleness: std::time::Duration::from_secs(1),
        poll_interval: std::time::Duration::from_millis(50),
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(cache.clone().follow(pool.clone(), stopped));
    let effective = Utc::now() + Duration::seconds(5);
    publish(&server, "2027-03-01", true, effective).await;
    server
        .consent
        .clone()
        .update_purpose(UpdatePurposeRequest {
            lift_promise_policy_version: "2027-03-01".into(),
            ..set_model(SALE, ConsentModel::OptOut)
        })
        .await
        .expect("lift");
    let key = PurposeKey::parse(SALE).expect("key");
    wait_until("the catalogue to load the lift", || async {
        cache
            .purpose(&key)
            .is_some_and(|p| p.promises.iter().any(|p| p.lift.is_some()))
    })
    .await;
    let query = CheckQuery {
        subject: SubjectId::parse("eve").expect("subject"),
        purpose: key.clone(),
        jurisdiction: None,
        gpc_signal: false,
        category: None,
    };
    let cached = || async {
        cache
            .check(&pool, std::slice::from_ref(&query), None)
            .await
            .expect("cache check")
            .map(|a| (a.outcomes[0].allowed, a.outcomes[0].reason))
    };
    wait_until("the cache to answer PROHIBITED", || async {
        cached().await == Some((false, Reason::Prohibited))
    })
    .await;
    assert!(
        Utc::now() < effective,
        "answered before the lift took effect"
    );
    wait_until("the cache to answer from the lifted model", || async {
        cached().await == Some((true, Reason::DefaultOptOut))
    })
    .await;
    assert!(Utc::now() >= effective);
    let _ = stop.send(true);
    let _ = task.await;
    pool.close().await;
    server.finish().await;
}
