//! Read replicas, with a real streaming replica of the test cluster: a read
//! carrying a consistency token is never answered from a replica that has
//! not replayed it, a tokenless read may be (within the configured lag),
//! and a replica that stops takes no reads down with it.
mod common;

use std::time::Duration;

use common::replica::Replica;
use common::{TestDb, TestServer, grant, refuse, wait_until};
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::{
    CheckConsentRequest, GetConsentStateRequest, ListAuditEventsRequest, ListConsentRecordsRequest,
    Verdict,
};
use privacy_records::reads::Reads;

const PURPOSE: &str = "api_io_storage";

/// A server on a fresh database whose reads may go to `replica`.
async fn server_with_replica(replica: &Replica, max_lag: Duration) -> (TestServer, Reads) {
    let db = TestDb::new().await;
    let mut settings = common::test_settings();
    settings.read_database_url = Some(privacy_records::config::Secret::new(replica.url(&db.name)));
    settings.read_replica_max_lag = max_lag;
    // These tests watch where checks the decision cache leaves to
    // PostgreSQL go; with the cache on, most checks never get that far.
    settings.cache_max_subjects = 0;
    // The test database must exist on the replica before the server reads.
    drop(replica.connect(&db.name).await);
    let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let app = privacy_records::server::Application::build(settings, pool, common::test_keyring())
        .await
        .expect("bind");
    let reads = app.reads();
    (TestServer::run(db, app).await, reads)
}

async fn verdict(server: &TestServer, subject: &str, token: &str) -> Verdict {
    let r = server
        .consent
        .clone()
        .check_consent(CheckConsentRequest {
            subject_id: subject.into(),
            purpose: PURPOSE.into(),
            consistency_token: token.into(),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    Verdict::try_from(r.verdict).expect("verdict")
}

async fn record_count(server: &TestServer, subject: &str, token: &str) -> usize {
    server
        .consent
        .clone()
        .list_consent_records(ListConsentRecordsRequest {
            subject_id: subject.into(),
            consistency_token: token.into(),
            ..Default::default()
        })
        .await
        .expect("list records")
        .into_inner()
        .records
        .len()
}

async fn audit_count(server: &TestServer, subject: &str) -> usize {
    AuditServiceClient::new(server.channel())
        .list_audit_events(ListAuditEventsRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events
        .len()
}

async fn state_verdict(server: &TestServer, subject: &str, token: &str) -> Verdict {
    let state = server
        .consent
        .clone()
        .get_consent_state(GetConsentStateRequest {
            subject_id: subject.into(),
            consistency_token: token.into(),
            ..Default::default()
        })
        .await
        .expect("consent state")
        .into_inner();
    let decision = state
        .decisions
        .iter()
        .find(|d| d.purpose == PURPOSE)
        .expect("the purpose in the state");
    Verdict::try_from(decision.verdict).expect("verdict")
}

#[tokio::test]
async fn a_token_is_never_answered_by_a_replica_that_has_not_replayed_it() {
    let replica = Replica::start().await;
    // A lag limit far above the test: tokenless reads stay on the replica
    // even while its replay is paused, which makes its answers observable.
    let (server, reads) = server_with_replica(&replica, Duration::from_secs(3600)).await;
    let mut consent = server.consent.clone();

    let granted = consent
        .record_consent(grant("alice", PURPOSE))
        .await
        .expect("grant")
        .into_inner()
        .consistency_token;
    // Once the replica has replayed the grant, reads with its token go there.
    replica.catch_up().await;
    let before = reads.stats();
    wait_until(
        "a check with the grant's token to be answered by the replica",
        || async {
            verdict(&server, "alice", &granted).await == Verdict::Allowed
                && reads.stats().replica > before.replica
        },
    )
    .await;

    // The replica stops replaying: it keeps the grant, the primary moves on.
    replica.pause_replay(true).await;
    let refused = consent
        .record_consent(refuse("alice", PURPOSE))
        .await
        .expect("refuse")
        .into_inner()
        .consistency_token;

    // With the refusal's token: the primary's answer, every time.
    let before = reads.stats();
    assert_eq!(verdict(&server, "alice", &refused).await, Verdict::Denied);
    assert_eq!(
        state_verdict(&server, "alice", &refused).await,
        Verdict::Denied
    );
    assert_eq!(record_count(&server, "alice", &refused).await, 2);
    assert_eq!(
        reads.stats().replica,
        before.replica,
        "nothing with the new token was read from the paused replica"
    );

    // Without a token, within the lag limit: the replica may answer, and
    // here it does, with what it has replayed (the grant).
    assert_eq!(verdict(&server, "alice", "").await, Verdict::Allowed);
    assert_eq!(state_verdict(&server, "alice", "").await, Verdict::Allowed);
    assert_eq!(record_count(&server, "alice", "").await, 1);
    assert_eq!(audit_count(&server, "alice").await, 1);
    // The older token is satisfied by the replica too.
    assert_eq!(verdict(&server, "alice", &granted).await, Verdict::Allowed);
    assert!(reads.stats().replica >= before.replica + 5);

    // Replay resumes: the replica catches up and takes the reads again,
    // including those with the refusal's token.
    replica.pause_replay(false).await;
    replica.catch_up().await;
    let before = reads.stats();
    wait_until(
        "the refusal's token to be answered by the replica",
        || async {
            let before_call = reads.stats().replica;
            verdict(&server, "alice", &refused).await == Verdict::Denied
                && reads.stats().replica > before_call
        },
    )
    .await;
    assert_eq!(verdict(&server, "alice", "").await, Verdict::Denied);
    assert_eq!(record_count(&server, "alice", &refused).await, 2);
    assert_eq!(audit_count(&server, "alice").await, 2);
    assert!(reads.stats().replica >= before.replica + 3);
    server.finish().await;
}

#[tokio::test]
async fn tokenless_reads_leave_a_replica_that_lags_more_than_the_limit() {
    let replica = Replica::start().await;
    let (server, reads) = server_with_replica(&replica, Duration::from_millis(300)).await;
    let mut consent = server.consent.clone();
    consent
        .record_consent(grant("bob", PURPOSE))
        .await
        .expect("grant");
    replica.catch_up().await;
    wait_until("tokenless reads to reach the replica", || async {
        let before = reads.stats().replica;
        verdict(&server, "bob", "").await == Verdict::Allowed && reads.stats().replica > before
    })
    .await;

    replica.pause_replay(true).await;
    consent
        .record_consent(refuse("bob", PURPOSE))
        .await
        .expect("refuse");
    // The replica still has the grant, but once it is more than 300 ms
    // behind, tokenless reads get the primary's answer.
    wait_until("tokenless reads to leave the lagging replica", || async {
        verdict(&server, "bob", "").await == Verdict::Denied
    })
    .await;
    let before = reads.stats();
    assert_eq!(verdict(&server, "bob", "").await, Verdict::Denied);
    assert_eq!(record_count(&server, "bob", "").await, 2);
    assert_eq!(audit_count(&server, "bob").await, 2);
    let after = reads.stats();
    assert_eq!(after.replica, before.replica);
    assert!(after.primary >= before.primary + 3);

    replica.pause_replay(false).await;
    server.finish().await;
}

#[tokio::test]
async fn reads_go_on_through_the_primary_when_the_replica_stops() {
    let replica = Replica::start().await;
    let (server, reads) = server_with_replica(&replica, Duration::from_secs(3600)).await;
    let mut consent = server.consent.clone();
    let granted = consent
        .record_consent(grant("carol", PURPOSE))
        .await
        .expect("grant")
        .into_inner()
        .consistency_token;
    replica.catch_up().await;
    wait_until("reads to reach the replica", || async {
        let before = reads.stats().replica;
        verdict(&server, "carol", &granted).await == Verdict::Allowed
            && reads.stats().replica > before
    })
    .await;

    replica.stop();
    let refused = consent
        .record_consent(refuse("carol", PURPOSE))
        .await
        .expect("refuse")
        .into_inner()
        .consistency_token;
    // Every kind of routed read still answers, from the primary.
    for _ in 0..3 {
        assert_eq!(verdict(&server, "carol", "").await, Verdict::Denied);
        assert_eq!(verdict(&server, "carol", &granted).await, Verdict::Denied);
        assert_eq!(verdict(&server, "carol", &refused).await, Verdict::Denied);
        assert_eq!(state_verdict(&server, "carol", "").await, Verdict::Denied);
        assert_eq!(record_count(&server, "carol", "").await, 2);
        assert_eq!(audit_count(&server, "carol").await, 2);
    }
    let stats = reads.stats();
    assert!(
        stats.errors + stats.primary > 0,
        "the stopped replica was noticed: {stats:?}"
    );
    server.finish().await;
}

#[tokio::test]
async fn a_replica_answers_subject_erased_once_it_has_replayed_the_erasure() {
    use privacy_records::proto::{DecisionReason, SetSubjectMinorStatusRequest};
    let replica = Replica::start().await;
    let (server, reads) = server_with_replica(&replica, Duration::from_secs(3600)).await;
    let mut consent = server.consent.clone();
    consent
        .record_consent(grant("erin", PURPOSE))
        .await
        .expect("grant");
    // A minor without parental consent is erased at once.
    consent
        .set_subject_minor_status(SetSubjectMinorStatusRequest {
            request_id: common::request_id(),
            subject_id: "erin".into(),
            minor: true,
            reason: "told by a parent".into(),
            parental_consent: false,
        })
        .await
        .expect("erase a minor");
    replica.catch_up().await;
    wait_until("the replica to answer SUBJECT_ERASED", || async {
        let before = reads.stats().replica;
        let answer = server
            .consent
            .clone()
            .check_consent(CheckConsentRequest {
                subject_id: "erin".into(),
                purpose: PURPOSE.into(),
                ..Default::default()
            })
            .await
            .expect("check")
            .into_inner();
        answer.reason() == DecisionReason::SubjectErased && reads.stats().replica > before
    })
    .await;
    server.finish().await;
}
