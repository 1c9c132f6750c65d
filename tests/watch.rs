//! The change feed: a watch never skips or reorders a committed change, even
//! when transactions commit out of id order, and resumes exactly where it
//! left off.
mod common;

use std::collections::HashSet;

use common::{PATIENCE, TestServer, request_id, storage_grant, test_keyring};
use privacy_records::changefeed;
use privacy_records::consent::model::{Decision, NewConsent, Source};
use privacy_records::consent::service::{self, Context};
use privacy_records::names::{PurposeKey, SubjectId};
use privacy_records::proto::WatchConsentChangesRequest;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::tokens::FeedPosition;
use tonic::transport::Channel;

/// Reads a watch stream until `want` consent records have arrived; returns
/// their ids in arrival order and the last resume token.
async fn collect(
    client: &mut ConsentServiceClient<Channel>,
    request: WatchConsentChangesRequest,
    want: usize,
) -> (Vec<i64>, String) {
    let mut stream = client
        .watch_consent_changes(request)
        .await
        .expect("watch")
        .into_inner();
    let mut ids = Vec::new();
    let mut token = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ids.len() < want {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("changes arrive in time")
            .expect("stream ok")
            .expect("stream open");
        for change in next.changes {
            ids.push(change.record.expect("record").id);
        }
        token = next.resume_token;
    }
    (ids, token)
}

#[tokio::test]
async fn a_resumed_watch_sees_every_change_once_in_the_same_order_under_concurrent_writers() {
    let server = TestServer::start().await;
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    const TOTAL: usize = WRITERS * EACH;

    let mut watcher = server.consent.clone();
    let whole = tokio::spawn(async move {
        collect(
            &mut watcher,
            WatchConsentChangesRequest {
                start_from_beginning: true,
                ..Default::default()
            },
            TOTAL,
        )
        .await
    });

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.consent.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..EACH {
                let r = c
                    .record_consent(storage_grant(&format!("w{w}-{i}")))
                    .await
                    .expect("write");
                acked.push(r.into_inner().record.expect("record").id);
            }
            acked
        }));
    }

    // A second watcher that disconnects part-way and resumes from its token.
    let mut c = server.consent.clone();
    let (mut first_part, token) = collect(
        &mut c,
        WatchConsentChangesRequest {
            start_from_beginning: true,
            ..Default::default()
        },
        TOTAL / 4,
    )
    .await;
    let (rest, _) = collect(
        &mut c,
        WatchConsentChangesRequest {
            resume_token: token,
            ..Default::default()
        },
        TOTAL - first_part.len(),
    )
    .await;
    first_part.extend(rest);

    let mut acked = HashSet::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    let (whole, _) = whole.await.expect("watcher");
    assert_eq!(whole.len(), TOTAL);
    assert_eq!(
        whole.iter().copied().collect::<HashSet<_>>(),
        acked,
        "every acknowledged write, once"
    );
    assert_eq!(
        first_part, whole,
        "the resumed watcher saw the same sequence"
    );
    server.finish().await;
}

#[tokio::test]
async fn a_change_that_commits_late_is_delivered_before_later_ids_not_skipped() {
    let server = TestServer::start().await;
    let pool = server.db.pool().await;

    // T1 takes its transaction id first and stays open.
    let mut slow = pool.begin().await.expect("begin");
    let ctx = Context::internal("test", "test/slow", request_id());
    let new = NewConsent {
        subject_id: SubjectId::parse("slow").expect("id"),
        purpose: PurposeKey::parse("api_io_storage").expect("key"),
        decision: Decision::Granted,
        source: Source::Api,
        policy_version: None,
        jurisdiction: None,
        evidence: None,
        effective_time: None,
        expire_time: None,
    };
    let (slow_record, _) = service::append_decision(&test_keyring(), &mut slow, &ctx, &new)
        .await
        .expect("slow write");

    // T2 starts later and commits first.
    let fast = server
        .consent
        .clone()
        .record_consent(storage_grant("fast"))
        .await
        .expect("fast write")
        .into_inner()
        .record
        .expect("record");

    // While T1 is open, the feed holds back T2 rather than deliver it ahead
    // of a change that may still commit before it.
    let batch = changefeed::read(&pool, FeedPosition::BEGINNING, None, 100)
        .await
        .expect("read");
    assert!(
        batch.events.is_empty(),
        "nothing delivered past an open transaction: {batch:?}"
    );

    slow.commit().await.expect("commit T1");
    let mut c = server.consent.clone();
    let (ids, _) = collect(
        &mut c,
        WatchConsentChangesRequest {
            start_from_beginning: true,
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(
        ids,
        vec![slow_record.id, fast.id],
        "feed order is transaction order"
    );

    // Resuming from the end delivers nothing twice.
    let batch = changefeed::read(&pool, FeedPosition::BEGINNING, None, 100)
        .await
        .expect("read");
    assert_eq!(batch.events.len(), 2);
    let again = changefeed::read(&pool, batch.next, None, 100)
        .await
        .expect("read");
    assert!(again.events.is_empty());
    pool.close().await;
    server.finish().await;
}

#[tokio::test]
async fn a_watch_from_now_sees_only_later_changes_and_can_filter_by_subject() {
    let server = TestServer::start().await;
    let mut c = server.consent.clone();
    c.record_consent(storage_grant("before"))
        .await
        .expect("write");
    let mut stream = c
        .watch_consent_changes(WatchConsentChangesRequest {
            subject_id: "mine".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    // The first message confirms the stream with its start token.
    let hello = stream.message().await.expect("ok").expect("open");
    assert!(hello.changes.is_empty() && !hello.resume_token.is_empty());
    c.record_consent(storage_grant("other"))
        .await
        .expect("write");
    let mine = c
        .record_consent(storage_grant("mine"))
        .await
        .expect("write")
        .into_inner()
        .record
        .expect("r");
    let got = loop {
        let m = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        if !m.changes.is_empty() {
            break m;
        }
    };
    assert_eq!(got.changes.len(), 1);
    assert_eq!(got.changes[0].record.as_ref().expect("record").id, mine.id);
    let err = c
        .watch_consent_changes(WatchConsentChangesRequest {
            resume_token: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.finish().await;
}
