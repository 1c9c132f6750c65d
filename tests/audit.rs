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

/// Seals in batches of `batch` until `want` events are sealed (or 10 s
/// pass): only events below the oldest transaction running anywhere in the
/// cluster can be sealed, and a parallel test may hold one open a moment.
async fn seal(pool: &sqlx::PgPool, batch: i64, want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut sealed = 0;
    while sealed < want && std::time::Instant::now() < deadline {
        sealed += sealer::seal_all(pool, batch).await.expect("seal");
        if sealed < want {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    sealed
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
    assert_eq!(seal(&pool, 3, 4).await, 4, "in batches of 3");

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
    let victim: i64 = sqlx::query_scalar("SELECT event_id FROM audit_chain WHERE chain_seq = 2")
        .fetch_one(&pool)
        .await
        .expect("victim");
    let mut conn = pool.acquire().await.expect("conn");
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
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
    sqlx::query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
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
        let unsealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events e
                 WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)",
        )
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

#[tokio::test]
async fn links_sealed_in_the_events_themselves_move_to_the_chain_table_and_the_chain_goes_on() {
    use privacy_records::audit::chain::{self, EventFields, GENESIS};
    // A database as it was before migration 0008: links in audit_events.
    let db = common::TestDb::empty().await;
    let pool = db.pool().await;
    privacy_records::db::MIGRATOR
        .run_to(7, &pool)
        .await
        .expect("migrate to 7");
    let event = |n: i64| format!("subjects/s{n}");
    let insert = |target: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO audit_events (actor, method, target, details)
                 VALUES ('test', 'test/Method', $1, '{\"n\": 1}')",
            )
            .bind(target)
            .execute(&pool)
            .await
            .expect("insert event");
        }
    };
    for n in 0..3 {
        insert(event(n)).await;
    }
    // Seal the first two the way the sealer of version 7 did.
    let old: Vec<EventFields> = sqlx::query_as(
        "SELECT id, xid::text::bigint AS xid, occur_time, actor, method, target, subject_id,
                request_id, details::text AS details
         FROM audit_events ORDER BY xid, id LIMIT 2",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let mut prev = GENESIS.to_vec();
    for (seq, e) in (1..).zip(&old) {
        let hash = chain::link(&prev, seq, e);
        sqlx::query(
            "UPDATE audit_events SET chain_seq = $2, prev_hash = $3, hash = $4 WHERE id = $1",
        )
        .bind(e.id)
        .bind(seq)
        .bind(&prev)
        .bind(&hash)
        .execute(&pool)
        .await
        .expect("seal the old way");
        prev = hash;
    }

    privacy_records::db::migrate(&pool)
        .await
        .expect("migrate to head");
    insert(event(3)).await;
    assert_eq!(
        seal(&pool, 100, 2).await,
        2,
        "the one left unsealed and the new one"
    );
    let mut conn = pool.acquire().await.expect("conn");
    let verified = sealer::verify(&mut conn).await.expect("verify");
    assert_eq!(verified.broken, None);
    assert_eq!((verified.verified, verified.unsealed), (4, 0));
    let updated = sqlx::query("UPDATE audit_events SET actor = 'someone else'")
        .execute(&pool)
        .await;
    assert!(updated.is_err(), "audit events are never rewritten now");
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}
