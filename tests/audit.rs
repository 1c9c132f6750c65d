//! The audit trail over a real server and PostgreSQL: events are sealed into
//! a hash chain in commit order, listed with filters, and a row edited,
//! removed or rewritten behind the service's back (with the append-only
//! triggers off, as someone with database access can) is found by
//! VerifyAuditLog.
mod common;

use common::{TestServer, grant};
use privacy_records::audit::chain::{self, EventFields};
use privacy_records::audit::sealer;
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::{
    ListAuditEventsRequest, VerifyAuditLogRequest, VerifyAuditLogResponse,
};
use tonic::transport::Channel;

fn client(server: &TestServer) -> AuditServiceClient<Channel> {
    let channel = server.channel();
    AuditServiceClient::new(channel)
}

/// Seals in batches of `batch` until `want` events are sealed (or 10 s
/// pass): only events below the oldest transaction running anywhere in the
/// cluster can be sealed, and a parallel test may hold one open a moment,
/// so it first waits until all `want` can be.
async fn seal(pool: &sqlx::PgPool, batch: i64, want: usize) -> usize {
    seal_under(pool, &common::test_keyring(), batch, want).await
}

/// `seal`, with checkpoints under `keys`.
async fn seal_under(
    pool: &sqlx::PgPool,
    keys: &privacy_records::keys::Keyring,
    batch: i64,
    want: usize,
) -> usize {
    // Wait until all of them can be sealed at once: sealing a part first
    // would put a checkpoint where the test does not expect one.
    common::eventually(
        std::time::Duration::from_secs(10),
        &format!("{want} events below every running transaction"),
        async || {
            let sealable: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events e
                 WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())
                   AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)",
            )
            .fetch_one(pool)
            .await
            .expect("sealable events");
            (sealable >= want as i64).then_some(())
        },
    )
    .await;
    let mut sealed = 0;
    common::eventually(
        std::time::Duration::from_secs(10),
        &format!("{want} events to be sealed"),
        async || {
            sealed += sealer::seal_all(pool, keys, batch).await.expect("seal");
            (sealed >= want).then_some(())
        },
    )
    .await;
    sealed
}

/// A server whose background sealer stays out of the way: the test seals
/// by hand, so it knows where the checkpoints fall.
async fn hand_sealed_server() -> (TestServer, sqlx::PgPool) {
    let mut settings = common::test_settings();
    settings.audit_seal_interval = std::time::Duration::from_secs(3600);
    let server = TestServer::start_with(settings).await;
    let pool = server.db.pool().await;
    (server, pool)
}

/// `n` consent grants, one audit event each.
async fn grants(server: &TestServer, n: usize) {
    let mut consent = server.consent.clone();
    for i in 0..n {
        consent
            .record_consent(grant(&format!("s{i}"), "api_io_storage"))
            .await
            .expect("grant");
    }
}

async fn verify(audit: &mut AuditServiceClient<Channel>) -> VerifyAuditLogResponse {
    verify_against(audit, "").await
}

async fn verify_against(
    audit: &mut AuditServiceClient<Channel>,
    anchor: &str,
) -> VerifyAuditLogResponse {
    audit
        .verify_audit_log(VerifyAuditLogRequest {
            anchor: anchor.into(),
        })
        .await
        .expect("verify")
        .into_inner()
}

/// Runs `statements` the way someone with database access can: with every
/// trigger of `tables` (the append-only guards) switched off, in one
/// transaction.
async fn behind_the_service(pool: &sqlx::PgPool, tables: &[&str], statements: &[String]) {
    let mut tx = pool.begin().await.expect("begin");
    for t in tables {
        let sql = format!("ALTER TABLE {t} DISABLE TRIGGER USER");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("disable triggers");
    }
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s.clone()))
            .execute(&mut *tx)
            .await
            .expect("tamper");
    }
    for t in tables {
        let sql = format!("ALTER TABLE {t} ENABLE TRIGGER USER");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("enable triggers");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_tail_truncated_with_the_triggers_off_is_reported_where_it_begins() {
    let (mut server, pool) = hand_sealed_server().await;
    let mut audit = client(&server);
    grants(&server, 3).await;
    assert_eq!(seal(&pool, 100, 3).await, 3);
    grants(&server, 5).await;
    assert_eq!(seal(&pool, 100, 5).await, 5, "a checkpoint at link 8");
    assert!(verify(&mut audit).await.intact);

    // The newest five events and their links go; the checkpoints stay.
    behind_the_service(
        &pool,
        &["audit_events", "audit_chain"],
        &[
            "DELETE FROM audit_events
             WHERE id IN (SELECT event_id FROM audit_chain WHERE chain_seq > 3)"
                .into(),
            "DELETE FROM audit_chain WHERE chain_seq > 3".into(),
        ],
    )
    .await;
    let found = verify(&mut audit).await;
    assert!(!found.intact, "{found:?}");
    assert_eq!((found.first_broken_seq, found.events_verified), (4, 3));
    assert!(
        found.problem.contains("links 4..8 are missing"),
        "{}",
        found.problem
    );

    // The sealer goes on after the last link left, and the gap stays on
    // record: the checkpoint of the old link 8 never matches again.
    grants(&server, 2).await;
    assert_eq!(seal(&pool, 100, 2).await, 2);
    let later = verify(&mut audit).await;
    assert!(!later.intact, "{later:?}");
    assert!(later.problem.contains("link 8"), "{}", later.problem);
    grants(&server, 3).await;
    assert_eq!(seal(&pool, 100, 3).await, 3, "a new link 8");
    let later = verify(&mut audit).await;
    assert!(!later.intact, "{later:?}");
    assert!(
        later.problem.contains("does not match the checkpoint"),
        "{}",
        later.problem
    );
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn an_event_edited_with_its_plain_sha256_links_recomputed_is_reported() {
    let (mut server, pool) = hand_sealed_server().await;
    let mut audit = client(&server);
    grants(&server, 4).await;
    assert_eq!(seal(&pool, 2, 4).await, 4, "checkpoints at links 2 and 4");
    assert!(verify(&mut audit).await.intact);

    // The attacker edits the event of link 3, then recomputes links 3 and 4
    // and the checkpoint's hash exactly as the chain's arithmetic does: only
    // a key the database does not hold is missing.
    let victim: i64 = sqlx::query_scalar("SELECT event_id FROM audit_chain WHERE chain_seq = 3")
        .fetch_one(&pool)
        .await
        .expect("victim");
    behind_the_service(
        &pool,
        &["audit_events"],
        &[format!(
            "UPDATE audit_events SET details = '{{\"decision\": \"REFUSED\"}}' WHERE id = {victim}"
        )],
    )
    .await;
    let mut prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_chain WHERE chain_seq = 2")
        .fetch_one(&pool)
        .await
        .expect("link 2");
    let events: Vec<EventFields> = sqlx::query_as(
        "SELECT e.id, e.xid::text::bigint AS xid, e.occur_time, e.actor, e.method, e.target,
                e.subject_id, e.request_id, e.details::text AS details
         FROM audit_chain c JOIN audit_events e ON e.id = c.event_id
         WHERE c.chain_seq >= 3 ORDER BY c.chain_seq",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let mut rewrites = vec![];
    for (seq, e) in (3..).zip(&events) {
        let hash = chain::link(&prev, seq, e);
        rewrites.push(format!(
            "UPDATE audit_chain SET prev_hash = '\\x{}', hash = '\\x{}' WHERE chain_seq = {seq}",
            hex::encode(&prev),
            hex::encode(&hash)
        ));
        prev = hash;
    }
    rewrites.push(format!(
        "UPDATE audit_checkpoints SET hash = '\\x{}' WHERE chain_seq = 4",
        hex::encode(&prev)
    ));
    behind_the_service(&pool, &["audit_chain", "audit_checkpoints"], &rewrites).await;
    let found = verify(&mut audit).await;
    assert!(!found.intact, "{found:?}");
    assert_eq!((found.first_broken_seq, found.events_verified), (3, 2));
    assert!(found.problem.contains("checkpoint"), "{}", found.problem);

    // Removing the checkpoint that no longer authenticates leaves links
    // nothing vouches for: reported as well.
    behind_the_service(
        &pool,
        &["audit_checkpoints"],
        &["DELETE FROM audit_checkpoints WHERE chain_seq = 4".into()],
    )
    .await;
    let found = verify(&mut audit).await;
    assert!(!found.intact, "{found:?}");
    assert_eq!((found.first_broken_seq, found.events_verified), (3, 2));
    assert!(found.problem.contains("not covered"), "{}", found.problem);
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn an_anchor_is_confirmed_while_the_log_holds_it_and_refused_after_a_truncation_below_it() {
    let (mut server, pool) = hand_sealed_server().await;
    let mut audit = client(&server);
    grants(&server, 5).await;
    assert_eq!(seal(&pool, 100, 5).await, 5, "a checkpoint at link 5");
    grants(&server, 3).await;
    assert_eq!(seal(&pool, 100, 3).await, 3, "a checkpoint at link 8");
    let head = verify(&mut audit).await;
    assert!(head.intact, "{head:?}");
    assert_eq!(head.checkpoints_verified, 2);
    let anchor = head.anchor;
    assert_eq!(anchor, format!("8:{}", head.head_hash));

    let held = verify_against(&mut audit, &anchor).await;
    assert!(held.intact && held.anchor_held, "{held:?}");
    // A listed event's position and hash is an anchor too.
    let third = audit
        .list_audit_events(ListAuditEventsRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .audit_events
        .remove(2);
    let listed = verify_against(&mut audit, &format!("{}:{}", third.chain_seq, third.hash)).await;
    assert!(listed.intact && listed.anchor_held, "{listed:?}");
    // An anchor the log never held (another hash at link 8) is refused.
    let forged = format!("8:{}", "ab".repeat(32));
    let refused = verify_against(&mut audit, &forged).await;
    assert!(!refused.intact && !refused.anchor_held, "{refused:?}");
    assert_eq!(refused.first_broken_seq, 8);
    assert!(refused.problem.contains(&forged), "{}", refused.problem);

    // Someone removes links 6 to 8 with their events and checkpoints: what
    // is left is a shorter chain every remaining checkpoint vouches for, so
    // only the anchor kept outside can tell.
    behind_the_service(
        &pool,
        &["audit_events", "audit_chain", "audit_checkpoints"],
        &[
            "DELETE FROM audit_events
             WHERE id IN (SELECT event_id FROM audit_chain WHERE chain_seq > 5)"
                .into(),
            "DELETE FROM audit_chain WHERE chain_seq > 5".into(),
            "DELETE FROM audit_checkpoints WHERE chain_seq > 5".into(),
        ],
    )
    .await;
    assert!(verify(&mut audit).await.intact, "without the anchor");
    let truncated = verify_against(&mut audit, &anchor).await;
    assert!(!truncated.intact && !truncated.anchor_held, "{truncated:?}");
    assert_eq!(
        (truncated.first_broken_seq, truncated.events_verified),
        (6, 5)
    );
    assert!(
        truncated
            .problem
            .contains(&format!("does not hold anchor {anchor}")),
        "{}",
        truncated.problem
    );
    assert_eq!(
        truncated.anchor, "",
        "no anchor is handed out for a broken log"
    );

    // A malformed anchor names the field.
    for bad in ["8", "08:00", "x:y", &format!("-1:{}", "0".repeat(64))] {
        let status = audit
            .verify_audit_log(VerifyAuditLogRequest { anchor: bad.into() })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(status.message().contains("anchor"), "{}", status.message());
    }
    server.shutdown().await;
    server.db.drop_db().await;
}

#[tokio::test]
async fn checkpoints_stay_verifiable_across_a_master_key_rotation() {
    use privacy_records::keys::Keyring;
    let (mut server, pool) = hand_sealed_server().await;
    let old = Keyring::from_parts(&[("test-mk-1", [7u8; 32])], b"test-lookup-key").expect("old");
    let both = Keyring::from_parts(
        &[("test-mk-2", [8u8; 32]), ("test-mk-1", [7u8; 32])],
        b"test-lookup-key",
    )
    .expect("rotated");
    let only_new =
        Keyring::from_parts(&[("test-mk-2", [8u8; 32])], b"test-lookup-key").expect("new");
    let stranger =
        Keyring::from_parts(&[("test-mk-9", [9u8; 32])], b"test-lookup-key").expect("stranger");
    let check = |keys: Keyring| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("conn");
            sealer::verify(&mut conn, &keys, None)
                .await
                .expect("verify")
        }
    };
    grants(&server, 2).await;
    assert_eq!(seal_under(&pool, &old, 100, 2).await, 2);
    grants(&server, 2).await;
    assert_eq!(seal_under(&pool, &both, 100, 2).await, 2);

    let v = check(both.clone()).await;
    assert_eq!(
        (v.broken.clone(), v.checkpoints_verified),
        (None, 2),
        "{v:?}"
    );
    // The old key removed: its checkpoint can no longer be checked, but the
    // new key's checkpoint vouches for every link before it.
    let v = check(only_new).await;
    assert_eq!(
        (v.broken.clone(), v.checkpoints_verified),
        (None, 1),
        "{v:?}"
    );
    // A keyring that holds none of the keys vouches for nothing...
    let v = check(stranger.clone()).await;
    let broken = v.broken.expect("unvouched");
    assert_eq!(broken.seq, 1);
    assert!(broken.problem.contains("not covered"), "{}", broken.problem);
    // ...until its sealer adds a checkpoint of the head under its own key.
    assert_eq!(
        sealer::seal_all(&pool, &stranger, 100).await.expect("seal"),
        0
    );
    let v = check(stranger).await;
    assert_eq!(
        (v.broken.clone(), v.checkpoints_verified),
        (None, 1),
        "{v:?}"
    );
    server.shutdown().await;
    server.db.drop_db().await;
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
        .verify_audit_log(VerifyAuditLogRequest::default())
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
        .verify_audit_log(VerifyAuditLogRequest::default())
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
    let verified = sealer::verify(&mut conn, &common::test_keyring(), None)
        .await
        .expect("verify");
    assert_eq!(verified.broken, None);
    assert_eq!((verified.verified, verified.unsealed), (4, 0));
    // The two links sealed before checkpoints carried a MAC are vouched for
    // by the keyed checkpoints after them.
    assert!(verified.checkpoints_verified >= 1, "{verified:?}");
    let updated = sqlx::query("UPDATE audit_events SET actor = 'someone else'")
        .execute(&pool)
        .await;
    assert!(updated.is_err(), "audit events are never rewritten now");
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}
