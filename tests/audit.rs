//! The audit trail over a real server and PostgreSQL: events are sealed into
//! a hash chain in commit order, listed with filters, and a row edited behind
//! the service's back is found by VerifyAuditLog.
mod common;

use common::{TestServer, grant};
use privacy_records::audit::sealer;
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::{ListAuditEventsRequest, VerifyAuditLogRequest};
use tonic::transport::Channel;

fn client(server: &TestServer) -> AuditServiceClient<Channel> {
    let channel = server.channel();
    AuditServiceClient::new(channel)
}

#[tokio::test]
async fn the_chain_verifies_and_an_edited_row_is_found() {
    // The test seals by hand; the background sealer stays out of the way.
    let mut settings = common::test_settings();
    settings.audit_seal_interval = std::time::Duration::from_secs(3600);
    let mut server = TestServer::start_with(settings).await;
    let mut audit = client(&server);
    let pool = server.db.pool().await;
    for subject in ["a", "b", "a", "c"] {
        server
            .consent
            .record_consent(grant(subject, "api_io_storage"))
            .await
            .expect("grant");
    }
    let sealed = sealer::seal_all(&pool, 3).await.expect("seal");
    assert_eq!(sealed, 4, "in batches of 3");

    let ok = audit
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(ok.intact, "{ok:?}");
    assert_eq!((ok.events_verified, ok.unsealed_events), (4, 0));
    assert_eq!(ok.head_hash.len(), 64);

    // Listing: by subject, with the chain position and hash.
    let a = audit
        .list_audit_events(ListAuditEventsRequest {
            subject_id: "a".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .audit_events;
    assert_eq!(a.len(), 2);
    assert!(
        a.iter()
            .all(|e| e.method == "privacy.v1.ConsentService/RecordConsent")
    );
    assert!(a.iter().all(|e| e.chain_seq > 0 && e.hash.len() == 64));
    assert!(a[0].details_json.contains("GRANTED"));
    let first_page = audit
        .list_audit_events(ListAuditEventsRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first_page.audit_events.len(), 3);
    let rest = audit
        .list_audit_events(ListAuditEventsRequest {
            page_size: 3,
            page_token: first_page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.audit_events.len(), 1);

    // Someone with database access rewrites history behind the service.
    let victim: i64 = sqlx::query_scalar("SELECT id FROM audit_events WHERE chain_seq = 2")
        .fetch_one(&pool)
        .await
        .expect("victim");
    let mut conn = pool.acquire().await.expect("conn");
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_seal_only")
        .execute(&mut *conn)
        .await
        .expect("disable");
    sqlx::query(
        "UPDATE audit_events SET details = '{\"decision\": \"REFUSED\"}'::jsonb WHERE id = $1",
    )
    .bind(victim)
    .execute(&mut *conn)
    .await
    .expect("tamper");
    sqlx::query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_seal_only")
        .execute(&mut *conn)
        .await
        .expect("enable");
    let broken = audit
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(!broken.intact);
    assert_eq!(broken.first_broken_seq, 2);
    assert_eq!(broken.first_broken_event, format!("auditEvents/{victim}"));
    assert!(broken.problem.contains("altered"), "{}", broken.problem);
    assert_eq!(broken.events_verified, 1);
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn the_background_sealer_chains_new_events() {
    let mut settings = common::test_settings();
    settings.audit_seal_interval = std::time::Duration::from_millis(20);
    let mut server = TestServer::start_with(settings).await;
    let pool = server.db.pool().await;
    server
        .consent
        .record_consent(grant("z", "api_io_storage"))
        .await
        .expect("grant");
    common::wait_until("the event to be sealed", || async {
        let unsealed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE chain_seq IS NULL")
                .fetch_one(&pool)
                .await
                .expect("count");
        unsealed == 0
    })
    .await;
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(checkpoints >= 1);
    server.shutdown().await;
    server.db.drop_db().await;
}
