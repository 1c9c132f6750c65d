//! The consent decision cache against real PostgreSQL: what it answers,
//! when it leaves a check to PostgreSQL, and that it never keeps a stale
//! state once the change feed has carried the change.
//!
//! "Foreign" writes below go straight to PostgreSQL (a ledger row and its
//! change event in one transaction, as another server process would write
//! them), so this process's own-write fences play no part: the cache learns
//! of them only through the feed, exactly as from another process.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, TestServer, test_keyring, test_settings};
use privacy_records::consent::cache::{CacheSettings, DecisionCache};
use privacy_records::consent::group_commit::{Batching, GroupCommit};
use privacy_records::consent::model::{ConsentModel, Decision, NewConsent, Reason, Source};
use privacy_records::consent::service::{self, CheckQuery, Context, Recorded};
use privacy_records::consent::store::{self, Appended};
use privacy_records::error::Error;
use privacy_records::idempotency::{self, RequestId};
use privacy_records::names::{PurposeKey, SubjectId};
use privacy_records::proto::ErrorReason;
use privacy_records::reads::Reads;
use privacy_records::tokens::ConsistencyToken;
use sqlx::PgPool;
use tokio::sync::watch;

const OPT_IN: &str = "api_io_storage";

struct Followed {
    cache: DecisionCache,
    pool: PgPool,
    _db: TestDb,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Followed {
    async fn start(max_subjects: usize) -> Followed {
        Self::on(TestDb::new().await, max_subjects, Duration::from_millis(50)).await
    }

    /// A cache following the feed of database `db`.
    async fn on(db: TestDb, max_subjects: usize, poll_interval: Duration) -> Followed {
        let pool = db.pool().await;
        let cache = DecisionCache::new(CacheSettings {
            max_subjects,
            max_staleness: Duration::from_secs(1),
            poll_interval,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(cache.clone().follow(pool.clone(), stopped));
        common::wait_until("the cache follows the feed", || {
            let cache = cache.clone();
            async move { cache.stats().applied >= 0 }
        })
        .await;
        Followed {
            cache,
            pool,
            _db: db,
            stop,
            task,
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// The cache's answer (None: left to PostgreSQL).
    async fn cached(&self, subject: &str, token: Option<i64>) -> Option<(bool, Reason)> {
        let token = token.map(|xid| ConsistencyToken { xid });
        self.cache
            .check(&self.pool, &[query(subject)], token)
            .await
            .expect("cache check")
            .map(|a| (a.outcomes[0].allowed, a.outcomes[0].reason))
    }

    /// The cache's answer without a token, waiting while the cache is not
    /// fresh enough to give one (a transaction anywhere in the cluster holds
    /// back the feed, and the test cluster is shared).
    async fn cached_fresh(&self, subject: &str) -> (bool, Reason) {
        common::eventually(
            common::PATIENCE,
            "the cache to answer without a token",
            async || self.cached(subject, None).await,
        )
        .await
    }

    /// PostgreSQL's answer.
    async fn truth(&self, subjects: &[String]) -> Vec<bool> {
        let queries: Vec<CheckQuery> = subjects.iter().map(|s| query(s)).collect();
        let reads = Reads::primary_only(self.pool.clone());
        service::check(&test_keyring(), &reads, &queries, None, None)
            .await
            .expect("check")
            .outcomes
            .iter()
            .map(|o| o.allowed)
            .collect()
    }
}

fn query(subject: &str) -> CheckQuery {
    CheckQuery {
        subject: SubjectId::parse(subject).expect("subject"),
        purpose: PurposeKey::parse(OPT_IN).expect("purpose"),
        jurisdiction: None,
        gpc_signal: false,
        category: None,
    }
}

/// Records a decision as another process would; returns its transaction id.
async fn foreign_write(pool: &PgPool, subject: &str, granted: bool) -> i64 {
    let mut tx = pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO consent_records (subject_id, purpose_key, decision, source, effective_time,
                                      request_id, actor)
         VALUES ($1, $2, $3, 'WEB_FORM', now(), gen_random_uuid()::text, 'another-process')
         RETURNING id",
    )
    .bind(subject)
    .bind(OPT_IN)
    .bind(if granted { "GRANTED" } else { "REFUSED" })
    .fetch_one(&mut *tx)
    .await
    .expect("insert record");
    let xid: i64 = sqlx::query_scalar(
        "INSERT INTO change_events (kind, subject_id, purpose_key, consent_record_id)
         VALUES ('CONSENT_RECORDED', $1, $2, $3) RETURNING xid::text::bigint",
    )
    .bind(subject)
    .bind(OPT_IN)
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .expect("insert change event");
    tx.commit().await.expect("commit");
    xid
}

#[tokio::test]
async fn a_foreign_write_is_seen_with_its_token_at_once_and_without_one_soon() {
    let f = Followed::start(1000).await;
    // Unknown subject of an opt-in purpose: denied by default, then kept.
    assert_eq!(f.cached_fresh("alice").await, (false, Reason::DefaultOptIn));
    assert_eq!(f.cache.stats().loads, 1);
    assert_eq!(f.cached_fresh("alice").await, (false, Reason::DefaultOptIn));
    assert_eq!(f.cache.stats().hits, 1, "the second check is a hit");
    assert_eq!(f.cache.stats().subjects, 1);

    let xid = foreign_write(&f.pool, "alice", true).await;
    // With the write's token the cache either answers with the grant (it
    // has applied the write) or leaves the check to PostgreSQL: never the
    // old default.
    let mut left_to_postgres = 0;
    loop {
        match f.cached("alice", Some(xid)).await {
            None => left_to_postgres += 1,
            Some(answer) => {
                assert_eq!(answer, (true, Reason::ExplicitGrant));
                break;
            }
        }
        assert!(left_to_postgres < 100_000, "the cache never caught up");
        tokio::task::yield_now().await;
    }
    // Without a token: the grant, once the feed carried it (it has now).
    assert_eq!(f.cached_fresh("alice").await, (true, Reason::ExplicitGrant));
    assert!(f.cache.stats().applied >= xid);
    f.finish().await;
}

#[tokio::test]
async fn another_process_notification_wakes_the_follower() {
    // Polls an hour apart: only a notification can bring the write in.
    let f = Followed::on(TestDb::new().await, 1000, Duration::from_secs(3600)).await;
    let xid = foreign_write(&f.pool, "erin", true).await;
    // Notified as another process does (its own tag as payload), repeatedly:
    // a transaction elsewhere in the shared test cluster may hold the feed
    // back at the first wake-up.
    common::wait_until(
        "a notification from another process to wake the follower",
        || async {
            if f.cache.stats().applied >= xid {
                return true;
            }
            sqlx::query("SELECT pg_notify($1, 'another-process')")
                .bind(privacy_records::consent::cache::CHANNEL)
                .execute(&f.pool)
                .await
                .expect("notify");
            false
        },
    )
    .await;
    f.finish().await;
}

#[tokio::test]
async fn a_load_older_than_an_applied_write_is_not_kept() {
    let f = Followed::start(1000).await;
    let old = f.cache.load(&f.pool, &["bob"]).await.expect("load");
    let xid = foreign_write(&f.pool, "bob", true).await;
    common::wait_until("the feed carries the grant", || {
        let cache = f.cache.clone();
        async move { cache.stats().applied >= xid }
    })
    .await;
    // The read predates the grant the follower already applied: keeping it
    // would answer "denied" until bob's next change.
    assert!(!f.cache.keep(&old), "a stale read was kept");
    assert_eq!(
        f.cached("bob", Some(xid)).await,
        Some((true, Reason::ExplicitGrant))
    );
    // A read after the grant is kept.
    let new = f.cache.load(&f.pool, &["bob"]).await.expect("load");
    assert!(f.cache.keep(&new));
    f.finish().await;
}

#[tokio::test]
async fn loads_racing_the_feed_never_leave_a_stale_state_behind() {
    // Writers flip a few subjects' decisions while checkers load them into
    // the cache concurrently. Once the writes stop and the feed has carried
    // them, every cached answer must be PostgreSQL's: a load that read an
    // old snapshot must not have put an old state back after the eviction.
    // The follower polls all the time, so evictions land while loads are
    // in flight: the race the load's snapshot check exists for.
    let f = Followed::on(TestDb::new().await, 1000, Duration::from_millis(1)).await;
    let f = Arc::new(f);
    let subjects: Vec<String> = (0..4).map(|i| format!("racer-{i}")).collect();
    for round in 0..5 {
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (f, subjects) = (Arc::clone(&f), subjects.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for i in 0..40 {
                    let subject = &subjects[(w * 7 + i) % subjects.len()];
                    last = foreign_write(&f.pool, subject, (i + round) % 2 == 0).await;
                }
                last
            }));
        }
        let checkers: Vec<_> = (0..8)
            .map(|c| {
                let (f, subjects) = (Arc::clone(&f), subjects.clone());
                tokio::spawn(async move {
                    for i in 0..400 {
                        // Token 0: answered whatever the staleness, so loads happen.
                        let _ = f.cached(&subjects[(c + i) % subjects.len()], Some(0)).await;
                    }
                })
            })
            .collect();
        let mut newest = 0;
        for t in tasks {
            newest = newest.max(t.await.expect("writer"));
        }
        for c in checkers {
            c.await.expect("checker");
        }
        common::wait_until("the feed carries every write", || {
            let f = Arc::clone(&f);
            async move { f.cache.stats().applied >= newest }
        })
        .await;
        let truth = f.truth(&subjects).await;
        for (subject, expected) in subjects.iter().zip(truth) {
            let cached = f.cached(subject, Some(newest)).await;
            assert_eq!(
                cached.map(|(allowed, _)| allowed),
                Some(expected),
                "round {round}: {subject} is stale in the cache"
            );
        }
    }
    let stats = f.cache.stats();
    assert!(stats.hits > 0 && stats.loads > 0, "{stats:?}");
    match Arc::try_unwrap(f) {
        Ok(f) => f.finish().await,
        Err(_) => panic!("the test still holds the cache"),
    }
}

#[tokio::test]
async fn the_cache_keeps_at_most_its_configured_subjects() {
    let f = Followed::start(50).await;
    for i in 0..500 {
        let answer = f.cached(&format!("many-{i}"), Some(0)).await;
        assert!(answer.is_some(), "check {i}: {:?}", f.cache.stats());
    }
    let held = f.cache.stats().subjects;
    // quick_cache splits the capacity over shards, rounding each up a little.
    assert!(held > 0 && held <= 64, "holds {held} subjects");
    f.finish().await;
}

#[tokio::test]
async fn subjects_with_evidence_are_left_to_postgres() {
    let server = TestServer::start_with(test_settings()).await;
    let same_db = server.db.alias();
    let f = Followed::on(same_db, 100, Duration::from_millis(50)).await;
    // A grant with evidence, recorded through the server.
    let mut consent = server.consent.clone();
    let mut with_evidence = common::grant("evidenced", OPT_IN);
    with_evidence.evidence = Some(privacy_records::proto::Evidence {
        kind: privacy_records::proto::EvidenceKind::WrittenAgreement as i32,
        reference: "contract 7".into(),
        description: "signed".into(),
    });
    let token = consent
        .record_consent(with_evidence)
        .await
        .expect("record")
        .into_inner()
        .consistency_token;
    let xid = ConsistencyToken::parse(&token).expect("token").xid;
    common::wait_until("the feed carries the grant", || {
        let cache = f.cache.clone();
        async move { cache.stats().applied >= xid }
    })
    .await;
    assert_eq!(f.cached("evidenced", Some(xid)).await, None);
    assert_eq!(f.cache.stats().subjects, 0);

    // Through the server the same check answers, evidence and all.
    let answer = consent
        .check_consent(privacy_records::proto::CheckConsentRequest {
            subject_id: "evidenced".into(),
            purpose: OPT_IN.into(),
            consistency_token: token,
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    let evidence = answer
        .deciding_record
        .and_then(|r| r.evidence)
        .expect("evidence");
    assert_eq!(evidence.reference, "contract 7");

    f.finish().await;
    server.finish().await;
}

/// A RecordConsent as the handler makes it, straight through the service.
async fn record(
    f: &Followed,
    request_id: &str,
    decision: Decision,
) -> privacy_records::error::Result<service::Recorded> {
    let request_id = RequestId::parse(request_id).expect("request id");
    let ctx = Context::internal(
        "test",
        "privacy.v1.ConsentService/RecordConsent",
        String::new(),
    );
    let new = new_consent("writer", decision);
    let body = format!("{request_id:?}{decision:?}");
    let fingerprint = idempotency::fingerprint(&test_keyring(), ctx.method, &body).expect("key");
    let writes = GroupCommit::start(f.pool.clone(), test_keyring(), ctx.method, BATCHING);
    service::record_consent(&f.cache, &writes, &ctx, &fingerprint, &request_id, &new).await
}

async fn ledger_rows(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM consent_records").await
}

#[tokio::test]
async fn a_write_checks_the_purpose_as_it_is_now_not_as_the_catalogue_last_saw_it() {
    let f = Followed::start(100).await;
    let key = PurposeKey::parse(OPT_IN).expect("key");
    assert_eq!(
        f.cache.purpose(&key).map(|p| p.consent_model),
        Some(ConsentModel::OptIn),
        "the write starts from the catalogue's copy"
    );
    // Changed behind the feed's back (no change event): the catalogue keeps
    // its stale copy, and only the revision in the write can notice.
    sqlx::query(
        "UPDATE purposes SET consent_model = 'PROHIBITED', revision = revision + 1 WHERE key = $1",
    )
    .bind(OPT_IN)
    .execute(&f.pool)
    .await
    .expect("update purpose");
    assert_eq!(
        f.cache.purpose(&key).map(|p| p.consent_model),
        Some(ConsentModel::OptIn)
    );

    let err = record(&f, "grant-1", Decision::Granted)
        .await
        .err()
        .expect("a PROHIBITED purpose cannot be granted");
    assert!(
        matches!(
            err,
            Error::FailedPrecondition {
                reason: ErrorReason::PurposeProhibited,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(ledger_rows(&f.pool).await, 0, "nothing was written");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&f.pool)
        .await
        .expect("count");
    assert_eq!(keys, 0, "the request id stays free");

    // A refusal is still recorded, once per request id.
    let Recorded::Entry(first, first_token) = record(&f, "refuse-1", Decision::Refused)
        .await
        .expect("refusal")
    else {
        panic!("a new write returns its entry");
    };
    let Recorded::Entry(again, again_token) = record(&f, "refuse-1", Decision::Refused)
        .await
        .expect("retry")
    else {
        panic!("a retry returns the entry written");
    };
    assert_eq!((first.id, first_token), (again.id, again_token));
    assert_eq!(ledger_rows(&f.pool).await, 1);
    f.finish().await;
}

const RECORD_CONSENT: &str = "privacy.v1.ConsentService/RecordConsent";
const BATCHING: Batching = Batching {
    max: 64,
    workers: 2,
};

/// A plain decision on the opt-in purpose, without evidence.
fn new_consent(subject: &str, decision: Decision) -> NewConsent {
    NewConsent {
        subject_id: SubjectId::parse(subject).expect("id"),
        purpose: PurposeKey::parse(OPT_IN).expect("key"),
        decision,
        source: Source::Api,
        policy_version: None,
        jurisdiction: None,
        evidence: None,
        effective_time: None,
        expire_time: None,
    }
}

fn pending(subject: &str, request_id: &str, purpose_revision: i64) -> store::Pending {
    store::Pending {
        new: new_consent(subject, Decision::Granted),
        purpose_revision,
        actor: "test".into(),
        scope: String::new(),
        request_id: request_id.into(),
        fingerprint: request_id.as_bytes().to_vec(),
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

#[tokio::test]
async fn a_grouped_write_gives_each_entry_its_own_outcome() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM purposes WHERE key = $1")
        .bind(OPT_IN)
        .fetch_one(&pool)
        .await
        .expect("revision");
    sqlx::query(
        "INSERT INTO idempotency_keys (caller, request_id, method, request_hash)
         VALUES ('', 'used', $1, '')",
    )
    .bind(RECORD_CONSENT)
    .execute(&pool)
    .await
    .expect("a used key");
    let entries = &[
        &pending("ann", "r-ann", revision),
        &pending("bob", "used", revision),
        &pending("cid", "r-cid", revision - 1),
        &pending("dan", "r-dup", revision),
        &pending("eve", "r-dup", revision),
    ];
    let mut conn = pool.acquire().await.expect("conn");
    let outcomes = store::append_many(&mut conn, RECORD_CONSENT, entries)
        .await
        .expect("grouped write");
    let [
        Appended::Written(ann, xid),
        Appended::RequestIdUsed,
        Appended::PurposeRevised,
        Appended::Written(dan, dan_xid),
        Appended::RequestIdUsed,
    ] = outcomes.as_slice()
    else {
        panic!("outcomes in the entries' order: {:?}", outcomes.len());
    };
    assert_eq!(
        (ann.subject_id.as_str(), dan.subject_id.as_str()),
        ("ann", "dan")
    );
    assert_eq!(xid, dan_xid, "one transaction");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM consent_records").await,
        2
    );
    let written = "SELECT count(*) FROM audit_events a JOIN change_events c \
                   ON c.consent_record_id::text = split_part(a.target, '/', 4) \
                   JOIN idempotency_keys k ON k.consent_record_id = c.consent_record_id \
                   WHERE a.method = 'privacy.v1.ConsentService/RecordConsent'";
    assert_eq!(
        count(&pool, written).await,
        2,
        "each entry has its key, audit and change event"
    );

    // One entry breaking a constraint (an unpublished policy version) fails
    // the statement, and nothing of the batch is written.
    let mut bad = pending("gus", "r-gus", revision);
    bad.new.policy_version = Some("never-published".into());
    let err = store::append_many(
        &mut conn,
        RECORD_CONSENT,
        &[&pending("fay", "r-fay", revision), &bad],
    )
    .await
    .err()
    .expect("a grouped write with a broken entry fails");
    assert!(
        matches!(&err, Error::Internal(m) if m.contains("policy_version")),
        "{err:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM consent_records").await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM idempotency_keys WHERE request_id = 'r-fay'"
        )
        .await,
        0
    );
    drop(conn);
    pool.close().await;
}

#[tokio::test]
async fn concurrent_writes_through_the_group_commit_each_land_once() {
    let f = Followed::start(100).await;
    let writes = GroupCommit::start(f.pool.clone(), test_keyring(), RECORD_CONSENT, BATCHING);
    let calls = (0..48).map(|i| {
        let (f, writes) = (&f, &writes);
        async move {
            // Each request id twice at once, and distinct subjects.
            let id = format!("grp-{}", i / 2);
            let subject = format!("g{}", i / 2);
            let request_id = RequestId::parse(&id).expect("id");
            let ctx = Context::internal("test", RECORD_CONSENT, String::new());
            let new = new_consent(&subject, Decision::Granted);
            let fingerprint =
                idempotency::fingerprint(&test_keyring(), RECORD_CONSENT, &id).expect("key");
            service::record_consent(&f.cache, writes, &ctx, &fingerprint, &request_id, &new).await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let mut ids = std::collections::HashMap::new();
    let mut commits = std::collections::HashSet::new();
    for outcome in outcomes {
        let Recorded::Entry(record, token) = outcome.expect("written") else {
            panic!("a grouped write returns its entry");
        };
        commits.insert(token.xid);
        ids.entry(record.subject_id.clone())
            .or_insert_with(Vec::new)
            .push(record.id);
    }
    assert_eq!(ids.len(), 24);
    // The calls were all queued before a worker ran (one thread), so they
    // shared commits.
    assert!(
        commits.len() < 24,
        "{} commits for 24 entries",
        commits.len()
    );
    for (subject, entries) in ids {
        assert_eq!(
            entries[0], entries[1],
            "{subject}: a retry gets the same entry"
        );
    }
    assert_eq!(ledger_rows(&f.pool).await, 24, "each request id wrote once");
    f.finish().await;
}

#[tokio::test]
async fn a_retry_of_a_call_made_before_one_statement_writes_gets_its_sealed_response() {
    // Keys RecordConsent wrote before migration 0008 hold the sealed
    // response, like every other method's keys.
    let f = Followed::start(100).await;
    let token = ConsistencyToken { xid: 4242 };
    let response = b"an encoded RecordConsentResponse".to_vec();
    let request_id = "before-0008";
    let body = format!(
        "{:?}{:?}",
        RequestId::parse(request_id).unwrap(),
        Decision::Refused
    );
    let fingerprint =
        idempotency::fingerprint(&test_keyring(), RECORD_CONSENT, &body).expect("fingerprint");
    sqlx::query(
        "INSERT INTO idempotency_keys (caller, request_id, method, request_hash, response,
                                       consistency_token)
         VALUES ('', $1, 'privacy.v1.ConsentService/RecordConsent', $2, $3, $4)",
    )
    .bind(request_id)
    .bind(fingerprint.as_bytes())
    .bind(
        test_keyring()
            .seal_response(request_id, &response)
            .expect("seal"),
    )
    .bind(token.encode())
    .execute(&f.pool)
    .await
    .expect("insert key");
    match record(&f, request_id, Decision::Refused)
        .await
        .expect("retry")
    {
        Recorded::Sealed(bytes, t) => assert_eq!((bytes, t), (response, token)),
        Recorded::Entry(..) => panic!("the retry wrote again"),
    }
    assert_eq!(ledger_rows(&f.pool).await, 0);
    // The same id with another request is refused.
    let err = record(&f, request_id, Decision::Granted)
        .await
        .err()
        .expect("reused id");
    assert!(matches!(err, Error::RequestIdReused(_)), "{err:?}");
    f.finish().await;
}

/// Erases a subject as another process would (the subject row and its
/// SUBJECT_ERASED change event in one transaction); returns its xid.
async fn foreign_erasure(pool: &PgPool, subject: &str) -> i64 {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO subjects (subject_id, erase_time, erased_by)
         VALUES ($1, now(), 'privacyRequests/1')
         ON CONFLICT (subject_id) DO UPDATE SET erase_time = now()",
    )
    .bind(subject)
    .execute(&mut *tx)
    .await
    .expect("erase");
    let xid: i64 = sqlx::query_scalar(
        "INSERT INTO change_events (kind, subject_id) VALUES ('SUBJECT_ERASED', $1)
         RETURNING xid::text::bigint",
    )
    .bind(subject)
    .fetch_one(&mut *tx)
    .await
    .expect("insert change event");
    tx.commit().await.expect("commit");
    xid
}

#[tokio::test]
async fn a_cached_subject_erased_elsewhere_is_answered_subject_erased() {
    let f = Followed::start(1000).await;
    foreign_write(&f.pool, "erin", true).await;
    assert_eq!(f.cached_fresh("erin").await, (true, Reason::ExplicitGrant));
    let xid = foreign_erasure(&f.pool, "erin").await;
    common::wait_until("the cache applies the erasure", || {
        let cache = f.cache.clone();
        async move { cache.stats().applied >= xid }
    })
    .await;
    assert_eq!(f.cached_fresh("erin").await, (false, Reason::SubjectErased));
    // Loaded again (not just evicted): the erased state is what is kept.
    assert_eq!(f.cached_fresh("erin").await, (false, Reason::SubjectErased));
    assert!(f.cache.stats().hits >= 1, "{:?}", f.cache.stats());
    assert_eq!(f.truth(&["erin".into()]).await, vec![false]);
    f.finish().await;
}
