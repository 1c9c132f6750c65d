//! What the law makes the organisation keep, over a real server and
//! PostgreSQL: a deletion request does not delete a category whose retention
//! policy carries a legal reason, completes in part naming the category, the
//! law and until when, and the retention schedule and the access package say
//! what is kept and why.
mod common;

use common::clients::{Clients, claim, file_request, register_system};
use common::{TestServer, request_id};
use privacy_records::proto::privacy_request::State;
use privacy_records::proto::{
    self, DataAction, GetAccessPackageRequest, GetPrivacyRequestRequest,
    GetRetentionScheduleRequest, PeriodUnit, PrivacyRequest, RequestType,
};
use prost_types::Timestamp;

async fn get(c: &mut Clients, name: &str) -> PrivacyRequest {
    c.requests
        .get_privacy_request(GetPrivacyRequestRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
}

fn state(r: &PrivacyRequest) -> State {
    State::try_from(r.state).expect("state")
}

fn date_of(t: &Option<Timestamp>) -> Option<chrono::NaiveDate> {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.date_naive())
}

const TAX_LAW: &str = "Tax and accounting records are kept 7 years";

#[tokio::test]
async fn a_deletion_keeps_the_payment_records_tax_law_requires_and_completes_in_part_saying_why_and_until_when()
 {
    let server = TestServer::start().await;
    let mut c = server.clients();
    use DataAction::*;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[Delete],
    ))
    .await;
    c.register(register_system("payments", &["payment_records"], &[Delete]))
        .await;
    let r = c
        .file_and_verify(file_request("paula", RequestType::Deletion))
        .await;
    assert_eq!(state(&r), State::InProgress);
    assert_eq!(
        r.tasks.as_ref().expect("summary").total,
        1,
        "only the accounts database deletes"
    );
    assert!(
        c.claim(claim("payments")).await.is_empty(),
        "no DELETE task for payment records the law keeps"
    );
    let task = c.claim(claim("accounts-db")).await.remove(0);
    assert_eq!(task.categories, vec!["account_information"]);
    c.complete(&task).await;

    let finished = get(&mut c, &r.name).await;
    assert_eq!(state(&finished), State::PartiallyCompleted);
    // The account closure started the payments' 7-year clock today.
    let until = (chrono::Utc::now() + chrono::Months::new(84)).date_naive();
    assert_eq!(finished.exemptions.len(), 1, "{:?}", finished.exemptions);
    let kept = &finished.exemptions[0];
    assert!(
        kept.starts_with("dataSystems/payments (payment_records): kept by law until "),
        "{kept}"
    );
    assert!(kept.contains(TAX_LAW), "{kept}");
    assert!(kept.contains(&until.to_string()), "{kept}");
    // The same, structured: category, system, law, until when.
    assert_eq!(finished.legal_keeps.len(), 1);
    let keep = &finished.legal_keeps[0];
    assert_eq!(keep.category, "payment_records");
    assert_eq!(keep.data_system, "dataSystems/payments");
    assert!(
        keep.legal_reason.starts_with(TAX_LAW),
        "{}",
        keep.legal_reason
    );
    assert_eq!(date_of(&keep.keep_until), Some(until));
    assert_eq!(keep.trigger, "ACCOUNT_CLOSED");
    let period = keep.period.expect("period");
    assert_eq!(
        (period.amount, period.unit),
        (84, PeriodUnit::Months as i32)
    );

    // The retention schedule says what is kept of the subject, and why.
    let schedule = c
        .retention
        .get_retention_schedule(GetRetentionScheduleRequest {
            subject_id: "paula".into(),
        })
        .await
        .expect("schedule")
        .into_inner();
    assert_eq!(schedule.legal_keeps, finished.legal_keeps);
    let entry = schedule
        .entries
        .iter()
        .find(|e| e.category == "payment_records")
        .expect("the payments' clock");
    assert_eq!(date_of(&entry.due_time), Some(until));
    server.finish().await;
}

#[tokio::test]
async fn a_deletion_of_only_what_the_law_keeps_completes_in_part_at_once() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    c.register(register_system(
        "payments",
        &["payment_records"],
        &[DataAction::Delete],
    ))
    .await;
    let r = c
        .file_and_verify(file_request("quinn", RequestType::Deletion))
        .await;
    assert_eq!(state(&r), State::PartiallyCompleted);
    assert_eq!(r.tasks.expect("summary").total, 0);
    assert_eq!(r.legal_keeps.len(), 1);
    assert!(c.claim(claim("payments")).await.is_empty());
    server.finish().await;
}

#[tokio::test]
async fn an_access_package_says_what_the_law_keeps_why_and_until_when() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    use DataAction::*;
    c.register(register_system(
        "payments",
        &["payment_records"],
        &[Export, Delete],
    ))
    .await;
    c.register(register_system(
        "accounts-db",
        &["account_information"],
        &[Export],
    ))
    .await;
    // Before any account closure the keep is the policy's period.
    let r = c
        .file_and_verify(file_request("rosa", RequestType::Access))
        .await;
    for system in ["payments", "accounts-db"] {
        let task = c.claim(claim(system)).await.remove(0);
        c.complete(&task).await;
    }
    assert_eq!(state(&get(&mut c, &r.name).await), State::Completed);
    let package = c
        .requests
        .get_access_package(GetAccessPackageRequest {
            name: r.name.clone(),
        })
        .await
        .expect("package")
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&package.content).expect("json");
    let kept = json["kept_by_law"].as_array().expect("kept_by_law");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["category"], "payment_records");
    assert_eq!(kept[0]["data_system"], "dataSystems/payments");
    assert!(
        kept[0]["legal_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(TAX_LAW))
    );
    assert!(kept[0]["keep_until"].is_null());
    assert_eq!(
        kept[0]["explanation"]
            .as_str()
            .expect("explanation")
            .split(": ")
            .nth(1),
        Some("kept by law for 84 months after ACCOUNT_CLOSED")
    );
    server.finish().await;
}

#[tokio::test]
async fn a_keep_ends_when_its_clock_runs_out_and_the_minor_erasure_follows_the_same_rule() {
    let server = TestServer::start().await;
    let mut c = server.clients();
    let pool = server.db.pool().await;
    c.register(register_system(
        "billing",
        &["account_information", "payment_records"],
        &[DataAction::Delete],
    ))
    .await;
    let minor = |subject: &str| proto::SetSubjectMinorStatusRequest {
        request_id: request_id(),
        subject_id: subject.into(),
        minor: true,
        reason: "age stated in support ticket 12".into(),
        parental_consent: false,
    };
    let tasks = |subject: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<Vec<String>> = sqlx::query_scalar(
                "SELECT categories FROM tasks WHERE subject_id = $1 AND action = 'DELETE'",
            )
            .bind(subject)
            .fetch_all(&pool)
            .await
            .expect("tasks");
            rows
        }
    };
    // A minor whose account is open: tax law keeps the payments.
    server
        .consent
        .clone()
        .set_subject_minor_status(minor("kim"))
        .await
        .expect("flag");
    assert_eq!(tasks("kim").await, vec![vec!["account_information"]]);

    // A minor whose account closed eight years ago: the seven years are over.
    let closed = chrono::Utc::now() - chrono::Months::new(96);
    c.retention
        .record_lifecycle_event(proto::RecordLifecycleEventRequest {
            request_id: request_id(),
            subject_id: "lee".into(),
            event: proto::lifecycle_event::Kind::AccountClosed as i32,
            event_time: Some(common::ts(closed)),
            ..Default::default()
        })
        .await
        .expect("closed long ago");
    let schedule = c
        .retention
        .get_retention_schedule(GetRetentionScheduleRequest {
            subject_id: "lee".into(),
        })
        .await
        .expect("schedule")
        .into_inner();
    assert!(
        schedule.legal_keeps.is_empty(),
        "{:?}",
        schedule.legal_keeps
    );
    server
        .consent
        .clone()
        .set_subject_minor_status(minor("lee"))
        .await
        .expect("flag");
    assert_eq!(
        tasks("lee").await,
        vec![vec!["account_information", "payment_records"]]
    );
    server.finish().await;
}
