//! The Consent API end to end: a real server on port 0, a real PostgreSQL
//! database per test, the generated gRPC client.
mod common;

use common::{TestServer, error_reason, grant, refuse, request_id, ts};
use privacy_records::proto::{
    BatchCheckConsentRequest, CheckConsentRequest, CheckConsentResponse, ConsentCheck,
    ConsentDecision, ConsentModel, ConsentSource, CreatePurposeRequest, DecisionReason, Evidence,
    EvidenceKind, GetConsentStateRequest, GetPurposeRequest, GetSubjectRequest, JurisdictionModel,
    ListConsentRecordsRequest, ListPolicyVersionsRequest, ListPurposesRequest,
    ListSubjectsToReconsentRequest, PolicyVersion, PublishPolicyVersionRequest, Purpose,
    RecordConsentRequest, SetSubjectMinorStatusRequest, UpdatePurposeRequest, Verdict,
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

fn written_agreement() -> Option<Evidence> {
    Some(Evidence {
        kind: EvidenceKind::WrittenAgreement as i32,
        reference: "contract-42 clause 7".into(),
        description: String::new(),
    })
}

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

async fn count(server: &TestServer, sql: &str) -> i64 {
    let pool = server.db.pool().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

#[tokio::test]
async fn a_recorded_grant_is_allowed_and_a_withdrawal_denies_at_once() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();

    assert_eq!(
        decide(&server, check("alice", "marketing_email")).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    assert_eq!(
        decide(&server, check("alice", "api_io_storage")).await,
        (Verdict::Denied, DecisionReason::DefaultOptIn)
    );

    let granted = c
        .record_consent(grant("alice", "api_io_storage"))
        .await
        .expect("grant");
    let header = granted
        .metadata()
        .get("x-consistency-token")
        .expect("token header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let granted = granted.into_inner();
    assert_eq!(header, granted.consistency_token);
    let record = granted.record.expect("record");
    assert_eq!(record.subject_id, "alice");
    assert!(record.actor.starts_with("peer:127.0.0.1:"));

    let r = c
        .check_consent(CheckConsentRequest {
            consistency_token: granted.consistency_token.clone(),
            ..check("alice", "api_io_storage")
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(r.verdict, Verdict::Allowed as i32);
    assert_eq!(r.reason, DecisionReason::ExplicitGrant as i32);
    assert_eq!(r.deciding_record.expect("deciding").id, record.id);
    assert!(!r.consistency_token.is_empty());

    c.record_consent(refuse("alice", "api_io_storage"))
        .await
        .expect("withdraw");
    assert_eq!(
        decide(&server, check("alice", "api_io_storage")).await,
        (Verdict::Denied, DecisionReason::ExplicitRefusal)
    );
    // History is kept: both entries are in the ledger, and each wrote an
    // audit event and a change event.
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        2
    );
    assert_eq!(count(&server, "SELECT count(*) FROM audit_events").await, 2);
    assert_eq!(
        count(&server, "SELECT count(*) FROM change_events").await,
        2
    );
    server.finish().await;
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_first_response_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let req = grant("bob", "api_io_storage");
    let first = c
        .record_consent(req.clone())
        .await
        .expect("first")
        .into_inner();
    let again = c
        .record_consent(req.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        1
    );

    // Many concurrent retries of one new request: still one entry.
    let req = grant("bob", "analytics_cookies");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            c.record_consent(req).await.map(|r| r.into_inner())
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await
                .expect("join")
                .expect("concurrent retry")
                .record
                .expect("record")
                .id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all retries got the same record");
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        2
    );

    // The same id with a different request is refused.
    let conflicting = RecordConsentRequest {
        decision: ConsentDecision::Refused as i32,
        ..req
    };
    let err = c.record_consent(conflicting).await.expect_err("reused id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).0, "REQUEST_ID_REUSED");
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        2
    );
    server.finish().await;
}

#[tokio::test]
async fn a_check_fills_only_the_fields_its_read_mask_asks_for() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    c.record_consent(grant("mona", "api_io_storage"))
        .await
        .expect("grant");
    let masked = |paths: &[&str]| CheckConsentRequest {
        read_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..check("mona", "api_io_storage")
    };

    let whole = c
        .check_consent(check("mona", "api_io_storage"))
        .await
        .expect("check")
        .into_inner();
    assert!(whole.deciding_record.is_some() && !whole.consistency_token.is_empty());
    let star = c
        .check_consent(masked(&["*"]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(star.deciding_record, whole.deciding_record);

    let verdict_only = c
        .check_consent(masked(&["verdict"]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        verdict_only,
        CheckConsentResponse {
            verdict: Verdict::Allowed as i32,
            ..Default::default()
        }
    );
    let some = c
        .check_consent(masked(&["reason", "deciding_record"]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(some.verdict, 0);
    assert_eq!(some.reason, whole.reason);
    assert_eq!(some.deciding_record, whole.deciding_record);
    assert!(some.consistency_token.is_empty());

    let err = c
        .check_consent(masked(&["verdict", "subject_id"]))
        .await
        .expect_err("not a response field");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).1, vec!["read_mask".to_string()]);
    assert!(err.message().contains("subject_id"), "{}", err.message());
    server.finish().await;
}

#[tokio::test]
async fn every_invalid_field_is_named_and_nothing_is_written() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let future = chrono::Utc::now() + chrono::Duration::days(1);
    let cases: Vec<(&str, RecordConsentRequest)> = vec![
        (
            "request_id",
            RecordConsentRequest {
                request_id: String::new(),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "request_id",
            RecordConsentRequest {
                request_id: "has space".into(),
                ..grant("s", "marketing_email")
            },
        ),
        ("subject_id", grant("", "marketing_email")),
        ("subject_id", grant(&"x".repeat(300), "marketing_email")),
        ("purpose", grant("s", "Not A Key")),
        (
            "decision",
            RecordConsentRequest {
                decision: 0,
                ..grant("s", "marketing_email")
            },
        ),
        (
            "decision",
            RecordConsentRequest {
                decision: 99,
                ..grant("s", "marketing_email")
            },
        ),
        (
            "source",
            RecordConsentRequest {
                source: 0,
                ..grant("s", "marketing_email")
            },
        ),
        (
            "source",
            RecordConsentRequest {
                source: ConsentSource::GpcSignal as i32,
                ..grant("s", "marketing_email")
            },
        ),
        (
            "jurisdiction",
            RecordConsentRequest {
                jurisdiction: "california".into(),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "policy_version",
            RecordConsentRequest {
                policy_version: "v 1".into(),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "effective_time",
            RecordConsentRequest {
                effective_time: Some(ts(future)),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "effective_time",
            RecordConsentRequest {
                effective_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "expire_time",
            RecordConsentRequest {
                expire_time: Some(ts(past)),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "expire_time",
            RecordConsentRequest {
                expire_time: Some(ts(future)),
                ..refuse("s", "marketing_email")
            },
        ),
        (
            "evidence.kind",
            RecordConsentRequest {
                evidence: Some(Evidence {
                    kind: 0,
                    ..Default::default()
                }),
                ..grant("s", "marketing_email")
            },
        ),
        (
            "evidence.reference",
            RecordConsentRequest {
                evidence: Some(Evidence {
                    kind: 1,
                    reference: "r".repeat(600),
                    ..Default::default()
                }),
                ..grant("s", "marketing_email")
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.record_consent(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let (reason, fields) = error_reason(&err);
        assert_eq!(reason, "FIELD_VIOLATION", "{field}");
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not named in {fields:?}"
        );
    }
    // Several bad fields at once are all named.
    let err = c
        .record_consent(RecordConsentRequest {
            request_id: String::new(),
            ..grant("", "")
        })
        .await
        .expect_err("three bad fields");
    let (_, fields) = error_reason(&err);
    for f in ["request_id", "subject_id", "purpose"] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }

    let bad_checks: Vec<(&str, CheckConsentRequest)> = vec![
        ("subject_id", check("", "marketing_email")),
        ("purpose", check("s", "")),
        (
            "jurisdiction",
            CheckConsentRequest {
                jurisdiction: "us-ca".into(),
                ..check("s", "marketing_email")
            },
        ),
        (
            "as_of_time",
            CheckConsentRequest {
                as_of_time: Some(ts(future)),
                ..check("s", "marketing_email")
            },
        ),
        (
            "consistency_token",
            CheckConsentRequest {
                consistency_token: "garbage".into(),
                ..check("s", "marketing_email")
            },
        ),
    ];
    for (field, req) in bad_checks {
        let err = c.check_consent(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(error_reason(&err).1.iter().any(|f| f == field), "{field}");
    }
    let err = c
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![
                ConsentCheck {
                    subject_id: "s".into(),
                    purpose: "marketing_email".into(),
                    ..Default::default()
                },
                ConsentCheck {
                    subject_id: String::new(),
                    purpose: "marketing_email".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .expect_err("batch");
    assert!(
        error_reason(&err)
            .1
            .iter()
            .any(|f| f == "checks[1].subject_id")
    );
    let err = c
        .batch_check_consent(BatchCheckConsentRequest::default())
        .await
        .expect_err("empty batch");
    assert!(error_reason(&err).1.iter().any(|f| f == "checks"));

    let err = c
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                key: "x".into(),
                display_name: String::new(),
                consent_model: 0,
                ..Default::default()
            }),
        })
        .await
        .expect_err("bad purpose");
    let (_, fields) = error_reason(&err);
    for f in ["purpose.display_name", "purpose.consent_model"] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }
    let err = c
        .list_consent_records(ListConsentRecordsRequest {
            page_size: -1,
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad page");
    let (_, fields) = error_reason(&err);
    assert!(
        fields.contains(&"page_size".to_string()) && fields.contains(&"page_token".to_string())
    );

    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        0
    );
    assert_eq!(count(&server, "SELECT count(*) FROM audit_events").await, 0);
    assert_eq!(
        count(&server, "SELECT count(*) FROM idempotency_keys").await,
        0
    );
    server.finish().await;
}

#[tokio::test]
async fn a_prohibited_purpose_cannot_be_granted_but_can_be_refused() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let err = c
        .record_consent(grant("carol", "sale_of_personal_data"))
        .await
        .expect_err("prohibited");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "PURPOSE_PROHIBITED");
    c.record_consent(refuse("carol", "sale_of_personal_data"))
        .await
        .expect("a refusal is fine");
    assert_eq!(
        decide(&server, check("carol", "sale_of_personal_data")).await,
        (Verdict::Denied, DecisionReason::PurposeIsProhibited)
    );
    let err = c
        .record_consent(grant("carol", "service_messages"))
        .await
        .expect_err("not consent based");
    assert_eq!(error_reason(&err).0, "PURPOSE_NOT_CONSENT_BASED");
    assert_eq!(
        decide(&server, check("carol", "service_messages")).await,
        (Verdict::Allowed, DecisionReason::NotConsentBasedPurpose)
    );
    let err = c
        .record_consent(grant("carol", "no_such_purpose"))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_reason(&err).0, "RESOURCE_NOT_FOUND");
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        1
    );
    server.finish().await;
}

#[tokio::test]
async fn training_consent_needs_a_written_agreement() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let err = c
        .record_consent(grant("dave", "model_training"))
        .await
        .expect_err("no evidence");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).0, "EVIDENCE_REQUIRED");
    let wrong = RecordConsentRequest {
        evidence: Some(Evidence {
            kind: EvidenceKind::Email as i32,
            ..Default::default()
        }),
        ..grant("dave", "model_training")
    };
    assert_eq!(
        error_reason(&c.record_consent(wrong).await.expect_err("wrong kind")).0,
        "EVIDENCE_REQUIRED"
    );
    assert_eq!(
        count(&server, "SELECT count(*) FROM consent_records").await,
        0
    );
    let ok = RecordConsentRequest {
        evidence: written_agreement(),
        ..grant("dave", "model_training")
    };
    let record = c
        .record_consent(ok)
        .await
        .expect("with evidence")
        .into_inner()
        .record
        .expect("record");
    assert_eq!(
        record.evidence.expect("evidence").reference,
        "contract-42 clause 7"
    );
    assert_eq!(
        decide(&server, check("dave", "model_training")).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );
    server.finish().await;
}

#[tokio::test]
async fn a_gpc_signal_denies_purposes_that_honour_it() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let with_gpc = |purpose: &str| CheckConsentRequest {
        gpc_signal: true,
        ..check("erin", purpose)
    };
    assert_eq!(
        decide(&server, with_gpc("targeted_advertising")).await,
        (Verdict::Denied, DecisionReason::Gpc)
    );
    // Analytics does not treat GPC as a refusal.
    assert_eq!(
        decide(&server, with_gpc("analytics_cookies")).await.0,
        Verdict::Allowed
    );
    // A recorded GPC refusal keeps denying without the signal.
    c.record_consent(RecordConsentRequest {
        source: ConsentSource::GpcSignal as i32,
        ..refuse("erin", "targeted_advertising")
    })
    .await
    .expect("gpc refusal");
    assert_eq!(
        decide(&server, check("erin", "targeted_advertising")).await,
        (Verdict::Denied, DecisionReason::Gpc)
    );
    server.finish().await;
}

#[tokio::test]
async fn an_expired_grant_denies_and_as_of_checks_see_the_past() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let now = chrono::Utc::now();
    let import = RecordConsentRequest {
        source: ConsentSource::Import as i32,
        effective_time: Some(ts(now - chrono::Duration::hours(3))),
        expire_time: Some(ts(now - chrono::Duration::hours(1))),
        ..grant("frank", "api_io_storage")
    };
    c.record_consent(import).await.expect("back-dated import");
    assert_eq!(
        decide(&server, check("frank", "api_io_storage")).await,
        (Verdict::Denied, DecisionReason::GrantExpired)
    );
    let as_of = |t| CheckConsentRequest {
        as_of_time: Some(ts(t)),
        ..check("frank", "api_io_storage")
    };
    assert_eq!(
        decide(&server, as_of(now - chrono::Duration::hours(2))).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );
    assert_eq!(
        decide(&server, as_of(now - chrono::Duration::hours(4))).await,
        (Verdict::Denied, DecisionReason::DefaultOptIn)
    );
    // A refusal now does not rewrite what was true before it.
    c.record_consent(refuse("frank", "marketing_email"))
        .await
        .expect("refuse");
    let before = CheckConsentRequest {
        as_of_time: Some(ts(now)),
        ..check("frank", "marketing_email")
    };
    assert_eq!(
        decide(&server, before).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    server.finish().await;
}

#[tokio::test]
async fn eu_subjects_must_opt_in_to_analytics() {
    let server = TestServer::start().await;
    let in_ = |j: &str| CheckConsentRequest {
        jurisdiction: j.into(),
        ..check("gina", "analytics_cookies")
    };
    assert_eq!(
        decide(&server, in_("US-CA")).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    assert_eq!(
        decide(&server, in_("DE")).await,
        (Verdict::Denied, DecisionReason::DefaultOptIn)
    );
    assert_eq!(
        decide(&server, in_("EU")).await,
        (Verdict::Denied, DecisionReason::DefaultOptIn)
    );
    server.finish().await;
}

#[tokio::test]
async fn a_material_policy_change_asks_for_fresh_consent() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    c.record_consent(RecordConsentRequest {
        evidence: written_agreement(),
        ..grant("hana", "model_training")
    })
    .await
    .expect("grant");
    c.record_consent(grant("hana", "api_io_storage"))
        .await
        .expect("grant");
    let publish = |id: &str, material: bool| PublishPolicyVersionRequest {
        request_id: request_id(),
        policy_version: Some(PolicyVersion {
            version_id: id.into(),
            effective_time: Some(ts(chrono::Utc::now())),
            text_sha256: "a".repeat(64),
            material,
            summary: "new processors".into(),
            ..Default::default()
        }),
    };
    c.publish_policy_version(publish("2026-11-01", false))
        .await
        .expect("minor version");
    assert_eq!(
        decide(&server, check("hana", "model_training")).await.0,
        Verdict::Allowed
    );
    c.publish_policy_version(publish("2026-11-23", true))
        .await
        .expect("material version");
    assert_eq!(
        decide(&server, check("hana", "model_training")).await,
        (Verdict::Denied, DecisionReason::ConsentPredatesPolicyChange)
    );
    let listed = c
        .list_subjects_to_reconsent(ListSubjectsToReconsentRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.policy_version, "2026-11-23");
    let pairs: Vec<(String, String)> = listed
        .subjects
        .iter()
        .map(|s| (s.subject_id.clone(), s.purpose.clone()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("hana".to_string(), "api_io_storage".to_string()),
            ("hana".to_string(), "model_training".to_string())
        ]
    );

    c.record_consent(RecordConsentRequest {
        evidence: written_agreement(),
        policy_version: "2026-11-23".into(),
        ..grant("hana", "model_training")
    })
    .await
    .expect("fresh consent");
    assert_eq!(
        decide(&server, check("hana", "model_training")).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );

    let versions = c
        .list_policy_versions(ListPolicyVersionsRequest::default())
        .await
        .expect("versions")
        .into_inner();
    assert_eq!(versions.policy_versions.len(), 2);
    let err = c
        .publish_policy_version(publish("2026-11-23", true))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .record_consent(RecordConsentRequest {
            policy_version: "never-published".into(),
            ..grant("hana", "marketing_email")
        })
        .await
        .expect_err("unknown version");
    assert_eq!(error_reason(&err).0, "POLICY_VERSION_UNKNOWN");
    server.finish().await;
}

#[tokio::test]
async fn a_minor_is_denied_everything_consent_based() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    c.record_consent(grant("ivy", "api_io_storage"))
        .await
        .expect("grant");
    let subject = c
        .set_subject_minor_status(SetSubjectMinorStatusRequest {
            request_id: request_id(),
            subject_id: "ivy".into(),
            minor: true,
            reason: "age stated in ticket 7".into(),
            // Without parental consent the minor would be erased at once
            // (tests/erasure.rs); with it, the minor flag alone decides.
            parental_consent: true,
        })
        .await
        .expect("flag")
        .into_inner();
    assert!(subject.minor && subject.minor_since.is_some());
    for purpose in ["api_io_storage", "marketing_email", "analytics_cookies"] {
        assert_eq!(
            decide(&server, check("ivy", purpose)).await,
            (Verdict::Denied, DecisionReason::SubjectIsMinor)
        );
    }
    assert_eq!(
        decide(&server, check("ivy", "service_messages")).await.0,
        Verdict::Allowed
    );
    let got = c
        .get_subject(GetSubjectRequest {
            name: "subjects/ivy".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(got.minor);
    let err = c
        .get_subject(GetSubjectRequest {
            name: "subjects/nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    server.finish().await;
}

#[tokio::test]
async fn batch_checks_and_consent_state_answer_in_one_call() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    c.record_consent(refuse("jo", "marketing_email"))
        .await
        .expect("refuse");
    let checks = (0..300)
        .map(|i| ConsentCheck {
            subject_id: if i % 2 == 0 {
                "jo".into()
            } else {
                format!("other{i}")
            },
            purpose: "marketing_email".into(),
            ..Default::default()
        })
        .collect();
    let batch = c
        .batch_check_consent(BatchCheckConsentRequest {
            checks,
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.results.len(), 300);
    for (i, r) in batch.results.iter().enumerate() {
        let want = if i % 2 == 0 {
            Verdict::Denied
        } else {
            Verdict::Allowed
        };
        assert_eq!(r.verdict, want as i32, "result {i}");
    }
    let err = c
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![ConsentCheck {
                subject_id: "jo".into(),
                purpose: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("unknown purpose");
    assert_eq!(err.code(), Code::NotFound);

    let state = c
        .get_consent_state(GetConsentStateRequest {
            subject_id: "jo".into(),
            ..Default::default()
        })
        .await
        .expect("state")
        .into_inner();
    let purposes = c
        .list_purposes(ListPurposesRequest::default())
        .await
        .expect("purposes")
        .into_inner();
    assert_eq!(state.decisions.len(), purposes.purposes.len());
    let marketing = state
        .decisions
        .iter()
        .find(|d| d.purpose == "marketing_email")
        .expect("marketing");
    assert_eq!(marketing.reason, DecisionReason::ExplicitRefusal as i32);
    server.finish().await;
}

#[tokio::test]
async fn the_purposes_catalogue_can_be_created_read_listed_and_updated() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let listed = c
        .list_purposes(ListPurposesRequest {
            page_size: 4,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.purposes.len(), 4);
    let mut all = listed.purposes.clone();
    let mut token = listed.next_page_token;
    while !token.is_empty() {
        let page = c
            .list_purposes(ListPurposesRequest {
                page_size: 4,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        all.extend(page.purposes);
        token = page.next_page_token;
    }
    let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "marketing_email",
        "model_training",
        "sale_of_personal_data",
        "profiling",
        "service_messages",
    ] {
        assert!(keys.contains(&k), "default catalogue has {k}");
    }

    let created = c
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                key: "product_research".into(),
                display_name: "Product research".into(),
                consent_model: ConsentModel::OptIn as i32,
                jurisdiction_models: vec![JurisdictionModel {
                    jurisdiction: "US".into(),
                    consent_model: ConsentModel::OptOut as i32,
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.name, "purposes/product_research");
    let err = c
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(created.clone()),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);

    let updated = c
        .update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: created.name.clone(),
                consent_model: ConsentModel::Prohibited as i32,
                etag: created.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["consent_model".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.consent_model, ConsentModel::Prohibited as i32);
    assert_eq!(
        updated.display_name, "Product research",
        "unmasked fields are kept"
    );
    assert_ne!(updated.etag, created.etag);
    let stale = c
        .update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: created.name.clone(),
                description: "x".into(),
                etag: created.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["description".into()],
            }),
            ..Default::default()
        })
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(error_reason(&stale).0, "ETAG_MISMATCH");
    let got = c
        .get_purpose(GetPurposeRequest {
            name: created.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, updated);
    let err = c
        .get_purpose(GetPurposeRequest {
            name: "purposes/none".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    server.finish().await;
}

#[tokio::test]
async fn ledger_pages_are_stable_while_new_entries_arrive() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    for i in 0..25 {
        c.record_consent(grant(&format!("k{i}"), "api_io_storage"))
            .await
            .expect("grant");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_consent_records(ListConsentRecordsRequest {
                purpose: "api_io_storage".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.records.iter().map(|r| r.id));
        // Writes between pages land after the pages already read.
        c.record_consent(grant("late", "marketing_email"))
            .await
            .expect("other purpose");
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "no duplicates, in order");
    assert_eq!(seen.len(), 25);
    // A token is bound to its filters.
    let page = c
        .list_consent_records(ListConsentRecordsRequest {
            purpose: "api_io_storage".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let err = c
        .list_consent_records(ListConsentRecordsRequest {
            purpose: "marketing_email".into(),
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("other filters");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.finish().await;
}

#[tokio::test]
async fn the_ledger_refuses_rewrites_even_from_sql() {
    let server = TestServer::start().await;
    server
        .consent
        .clone()
        .record_consent(grant("lee", "api_io_storage"))
        .await
        .expect("grant");
    let pool = server.db.pool().await;
    assert!(
        sqlx::query("UPDATE consent_records SET decision = 'REFUSED'")
            .execute(&pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM consent_records")
            .execute(&pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_events")
            .execute(&pool)
            .await
            .is_err()
    );
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn other_methods_name_their_invalid_fields_too() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let named = |err: tonic::Status, field: &str| {
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let (reason, fields) = error_reason(&err);
        assert_eq!(reason, "FIELD_VIOLATION");
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    };
    let version = |f: fn(&mut PolicyVersion)| {
        let mut v = PolicyVersion {
            version_id: "v1".into(),
            effective_time: Some(ts(chrono::Utc::now())),
            text_sha256: "b".repeat(64),
            ..Default::default()
        };
        f(&mut v);
        PublishPolicyVersionRequest {
            request_id: request_id(),
            policy_version: Some(v),
        }
    };
    named(
        c.publish_policy_version(version(|v| v.version_id = "bad id".into()))
            .await
            .expect_err("id"),
        "policy_version.version_id",
    );
    named(
        c.publish_policy_version(version(|v| v.effective_time = None))
            .await
            .expect_err("time"),
        "policy_version.effective_time",
    );
    named(
        c.publish_policy_version(version(|v| v.text_sha256 = "ABC".into()))
            .await
            .expect_err("sha"),
        "policy_version.text_sha256",
    );
    named(
        c.publish_policy_version(PublishPolicyVersionRequest {
            request_id: request_id(),
            policy_version: None,
        })
        .await
        .expect_err("none"),
        "policy_version",
    );
    named(
        c.set_subject_minor_status(SetSubjectMinorStatusRequest {
            request_id: request_id(),
            subject_id: "a b".into(),
            minor: true,
            reason: String::new(),
            parental_consent: false,
        })
        .await
        .expect_err("subject"),
        "subject_id",
    );
    named(
        c.update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: "purposes/marketing_email".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["key".into()],
            }),
            ..Default::default()
        })
        .await
        .expect_err("mask"),
        "update_mask",
    );
    named(
        c.update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: "marketing_email".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["description".into()],
            }),
            ..Default::default()
        })
        .await
        .expect_err("name"),
        "purpose.name",
    );
    named(
        c.get_purpose(GetPurposeRequest {
            name: "marketing_email".into(),
        })
        .await
        .expect_err("name"),
        "name",
    );
    named(
        c.get_subject(GetSubjectRequest {
            name: "nobody".into(),
        })
        .await
        .expect_err("name"),
        "name",
    );
    named(
        c.list_subjects_to_reconsent(ListSubjectsToReconsentRequest {
            policy_version: "no way".into(),
            ..Default::default()
        })
        .await
        .expect_err("version"),
        "policy_version",
    );
    named(
        c.get_consent_state(GetConsentStateRequest {
            subject_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("subject"),
        "subject_id",
    );
    assert_eq!(count(&server, "SELECT count(*) FROM audit_events").await, 0);
    assert_eq!(
        count(&server, "SELECT count(*) FROM policy_versions").await,
        0
    );
    server.finish().await;
}

/// Creates `key` with `model` and returns its etag.
async fn create_purpose(server: &TestServer, key: &str, model: ConsentModel) -> String {
    server
        .consent
        .clone()
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                key: key.into(),
                display_name: key.into(),
                consent_model: model as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("create purpose")
        .into_inner()
        .etag
}

#[tokio::test]
async fn a_grant_right_after_a_purpose_update_is_judged_against_the_updated_purpose() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    // Several rounds, because the window in which the catalogue lags is short.
    for round in 0..15 {
        let key = format!("newsletter_{round}");
        let etag = create_purpose(&server, &key, ConsentModel::NotConsentBased).await;
        c.update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: format!("purposes/{key}"),
                consent_model: ConsentModel::OptIn as i32,
                etag,
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["consent_model".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update");
        let written = c
            .record_consent(grant(&format!("reader-{round}"), &key))
            .await;
        assert!(
            written.is_ok(),
            "round {round}: the grant is judged against the purpose as updated: {written:?}"
        );
    }
    server.finish().await;
}

#[tokio::test]
async fn contact_form_data_is_never_used_for_advertising_whatever_the_consent() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let with_category = |category: &str| CheckConsentRequest {
        data_category: category.into(),
        ..check("lee", "targeted_advertising")
    };
    assert_eq!(
        decide(&server, check("lee", "targeted_advertising")).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut),
        "the purpose as a whole is an opt-out one"
    );
    assert_eq!(
        decide(&server, with_category("contact_form_inquiries")).await,
        (Verdict::Denied, DecisionReason::DataCategoryExcluded)
    );
    c.record_consent(grant("lee", "targeted_advertising"))
        .await
        .expect("grant");
    assert_eq!(
        decide(&server, with_category("contact_form_inquiries")).await,
        (Verdict::Denied, DecisionReason::DataCategoryExcluded),
        "a grant does not reach an excluded category"
    );
    assert_eq!(
        decide(&server, with_category("device_and_usage_data")).await,
        (Verdict::Allowed, DecisionReason::ExplicitGrant)
    );
    let batch = c
        .batch_check_consent(BatchCheckConsentRequest {
            checks: vec![
                ConsentCheck {
                    subject_id: "lee".into(),
                    purpose: "marketing_email".into(),
                    data_category: "contact_form_inquiries".into(),
                    ..Default::default()
                },
                ConsentCheck {
                    subject_id: "lee".into(),
                    purpose: "service_messages".into(),
                    data_category: "contact_form_inquiries".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    let reasons: Vec<i32> = batch.results.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![
            DecisionReason::DataCategoryExcluded as i32,
            DecisionReason::NotConsentBasedPurpose as i32
        ]
    );
    let err = c
        .check_consent(with_category("Contact Forms!"))
        .await
        .expect_err("a malformed category");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("data_category"), "{}", err.message());
    server.finish().await;
}

#[tokio::test]
async fn a_purpose_excludes_only_known_categories_and_the_exclusion_can_be_changed() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    let unknown = c
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                key: "cold_outreach".into(),
                display_name: "Cold outreach".into(),
                consent_model: ConsentModel::OptOut as i32,
                excluded_categories: vec!["no_such_category".into()],
                ..Default::default()
            }),
        })
        .await
        .expect_err("an unknown category");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().contains("excluded_categories[0]"),
        "{}",
        unknown.message()
    );
    let created = c
        .create_purpose(CreatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                key: "cold_outreach".into(),
                display_name: "Cold outreach".into(),
                consent_model: ConsentModel::OptOut as i32,
                excluded_categories: vec!["communication_records".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.excluded_categories, vec!["communication_records"]);
    let check_of = |category: &str| CheckConsentRequest {
        data_category: category.into(),
        ..check("kim", "cold_outreach")
    };
    assert_eq!(
        decide(&server, check_of("communication_records")).await,
        (Verdict::Denied, DecisionReason::DataCategoryExcluded)
    );
    let updated = c
        .update_purpose(UpdatePurposeRequest {
            request_id: request_id(),
            purpose: Some(Purpose {
                name: created.name.clone(),
                excluded_categories: vec!["account_information".into()],
                etag: created.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["excluded_categories".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.excluded_categories, vec!["account_information"]);
    assert_eq!(
        decide(&server, check_of("communication_records")).await,
        (Verdict::Allowed, DecisionReason::DefaultOptOut)
    );
    assert_eq!(
        decide(&server, check_of("account_information")).await,
        (Verdict::Denied, DecisionReason::DataCategoryExcluded)
    );
    server.finish().await;
}
