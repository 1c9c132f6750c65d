//! The audit event and the change event every mutation writes, in the same
//! transaction as the change itself, in one statement. It returns the
//! transaction's consistency token. (RecordConsent, the hot write, writes
//! both inside its own single statement and then calls `recorded`.)
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::watch;

use crate::error::Result;
use crate::tokens::ConsistencyToken;

/// Who did what to which resource (the audit trail).
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub subject_id: Option<&'a str>,
    pub request_id: &'a str,
    pub details: Value,
}

/// What the change feed says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    ConsentRecorded,
    PurposeChanged,
    PolicyVersionPublished,
    SubjectChanged,
    /// A subject was erased: every check of it is denied from then on.
    SubjectErased,
    PrivacyRequestChanged,
    DataSystemChanged,
    TaskChanged,
    DisclosureRecorded,
    RetentionChanged,
}

impl ChangeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::ConsentRecorded => "CONSENT_RECORDED",
            ChangeKind::PurposeChanged => "PURPOSE_CHANGED",
            ChangeKind::PolicyVersionPublished => "POLICY_VERSION_PUBLISHED",
            ChangeKind::SubjectChanged => "SUBJECT_CHANGED",
            ChangeKind::SubjectErased => "SUBJECT_ERASED",
            ChangeKind::PrivacyRequestChanged => "PRIVACY_REQUEST_CHANGED",
            ChangeKind::DataSystemChanged => "DATA_SYSTEM_CHANGED",
            ChangeKind::TaskChanged => "TASK_CHANGED",
            ChangeKind::DisclosureRecorded => "DISCLOSURE_RECORDED",
            ChangeKind::RetentionChanged => "RETENTION_CHANGED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CONSENT_RECORDED" => ChangeKind::ConsentRecorded,
            "PURPOSE_CHANGED" => ChangeKind::PurposeChanged,
            "POLICY_VERSION_PUBLISHED" => ChangeKind::PolicyVersionPublished,
            "SUBJECT_CHANGED" => ChangeKind::SubjectChanged,
            "SUBJECT_ERASED" => ChangeKind::SubjectErased,
            "PRIVACY_REQUEST_CHANGED" => ChangeKind::PrivacyRequestChanged,
            "DATA_SYSTEM_CHANGED" => ChangeKind::DataSystemChanged,
            "TASK_CHANGED" => ChangeKind::TaskChanged,
            "DISCLOSURE_RECORDED" => ChangeKind::DisclosureRecorded,
            "RETENTION_CHANGED" => ChangeKind::RetentionChanged,
            _ => return None,
        })
    }
}

pub struct ChangeEntry<'a> {
    pub kind: ChangeKind,
    pub subject_id: Option<&'a str>,
    pub purpose_key: Option<&'a str>,
    pub consent_record_id: Option<i64>,
    pub policy_version: Option<&'a str>,
    /// The resource changed, for the kinds that are not about consent.
    pub resource: Option<&'a str>,
}

impl<'a> ChangeEntry<'a> {
    /// A change to one resource (a request, a task, a data system).
    pub fn resource(kind: ChangeKind, resource: &'a str, subject_id: Option<&'a str>) -> Self {
        ChangeEntry {
            kind,
            subject_id,
            purpose_key: None,
            consent_record_id: None,
            policy_version: None,
            resource: Some(resource),
        }
    }
}

/// Writes both events; returns the token of this transaction.
pub async fn record(
    conn: &mut PgConnection,
    audit: AuditEntry<'_>,
    change: ChangeEntry<'_>,
) -> Result<ConsistencyToken> {
    let xid: i64 = sqlx::query_scalar(
        "WITH audit AS (
             INSERT INTO audit_events (actor, method, target, subject_id, request_id, details)
             VALUES ($1, $2, $3, $4, $5, $6)
         )
         INSERT INTO change_events (kind, subject_id, purpose_key, consent_record_id, policy_version, resource)
         VALUES ($7, $8, $9, $10, $11, $12)
         RETURNING xid::text::bigint",
    )
    .bind(audit.actor)
    .bind(audit.method)
    .bind(audit.target)
    .bind(audit.subject_id)
    .bind(audit.request_id)
    .bind(audit.details)
    .bind(change.kind.as_str())
    .bind(change.subject_id)
    .bind(change.purpose_key)
    .bind(change.consent_record_id)
    .bind(change.policy_version)
    .bind(change.resource)
    .fetch_one(conn)
    .await?;
    LOCAL_WRITES.note(change.kind, change.subject_id, xid);
    Ok(ConsistencyToken { xid })
}

/// For a write that put its own events in its statement (a consent
/// decision, `consent::store::append`): what `record` does after writing
/// them. When that statement committed itself, this is called before the
/// caller hears of the write, so a check it makes next through this server
/// still sees it.
pub fn recorded(kind: ChangeKind, subject_id: Option<&str>, xid: i64) -> ConsistencyToken {
    LOCAL_WRITES.note(kind, subject_id, xid);
    ConsistencyToken { xid }
}

/// The writes this process made that affect consent decisions, kept until
/// its decision caches have applied them from the change feed. A check
/// without a token about a subject this process just wrote to is answered
/// from PostgreSQL meanwhile: a caller reading through the server it wrote
/// through sees its write, token or not. A fence is set before its
/// transaction commits; one whose transaction rolls back only costs a few
/// checks a trip to PostgreSQL until the feed passes it.
pub struct LocalWrites {
    /// Subject → the newest transaction id that changed its decisions.
    subjects: Mutex<HashMap<String, i64>>,
    /// The newest fence in `subjects`, 0 when there is none (a check then
    /// skips the lock). Changed only with `subjects` locked.
    newest_subject: AtomicI64,
    /// The newest change to every subject's decisions (a purpose, a policy version).
    everyone: AtomicI64,
    /// Bumped after each commit, to wake the change-feed followers at once.
    committed: watch::Sender<u64>,
    /// The position each following cache has applied. A process may run
    /// several (the tests run many servers, each on its own database), and a
    /// fence is forgotten only once every one of them has passed it.
    followers: Mutex<HashMap<u64, i64>>,
    next_follower: AtomicU64,
}

/// A cache following the change feed, as `LocalWrites` knows it; forgotten
/// when dropped.
pub struct Follower(u64);

impl Drop for Follower {
    fn drop(&mut self) {
        let mut followers = LOCAL_WRITES
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        followers.remove(&self.0);
    }
}

pub static LOCAL_WRITES: LazyLock<LocalWrites> = LazyLock::new(|| LocalWrites {
    subjects: Mutex::new(HashMap::new()),
    newest_subject: AtomicI64::new(0),
    everyone: AtomicI64::new(0),
    committed: watch::Sender::new(0),
    followers: Mutex::new(HashMap::new()),
    next_follower: AtomicU64::new(0),
});

impl LocalWrites {
    fn note(&self, kind: ChangeKind, subject_id: Option<&str>, xid: i64) {
        match (kind, subject_id) {
            (
                ChangeKind::ConsentRecorded
                | ChangeKind::SubjectChanged
                | ChangeKind::SubjectErased,
                Some(subject),
            ) => {
                let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
                let fence = subjects.entry(subject.to_owned()).or_insert(xid);
                *fence = (*fence).max(xid);
                self.newest_subject.fetch_max(xid, Ordering::AcqRel);
            }
            (ChangeKind::PurposeChanged | ChangeKind::PolicyVersionPublished, _) => {
                self.everyone.fetch_max(xid, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    /// The newest local write a check about `subject` must see.
    pub fn fence(&self, subject: &str) -> i64 {
        let everyone = self.everyone.load(Ordering::Acquire);
        if self.newest_subject.load(Ordering::Acquire) == 0 {
            return everyone;
        }
        let subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        subjects.get(subject).copied().unwrap_or(0).max(everyone)
    }

    /// A new follower, which has applied nothing yet.
    pub fn follower(&self) -> Follower {
        let id = self.next_follower.fetch_add(1, Ordering::Relaxed);
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers.insert(id, -1);
        Follower(id)
    }

    /// Notes that `follower` has applied every transaction up to `applied`,
    /// and forgets the subject fences every follower has applied.
    pub fn applied(&self, follower: &Follower, applied: i64) {
        let everyone_applied = {
            let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
            followers.insert(follower.0, applied);
            followers.values().copied().min().unwrap_or(applied)
        };
        if self.newest_subject.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        subjects.retain(|_, xid| *xid > everyone_applied);
        if subjects.is_empty() {
            self.newest_subject.store(0, Ordering::Release);
        }
    }

    /// Called after a transaction that wrote events commits.
    pub fn committed(&self) {
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes after every local commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_lasts_until_every_follower_in_the_process_has_applied_it() {
        // Two caches in one process, each following its own database (as
        // the tests' servers do): one passing a transaction id says nothing
        // of the other's feed.
        let (mine, other) = (LOCAL_WRITES.follower(), LOCAL_WRITES.follower());
        let subject = "journal-unit-test-subject";
        LOCAL_WRITES.note(ChangeKind::ConsentRecorded, Some(subject), 1_000);
        LOCAL_WRITES.applied(&other, 2_000);
        assert_eq!(LOCAL_WRITES.fence(subject), 1_000);
        LOCAL_WRITES.applied(&mine, 1_000);
        assert_eq!(LOCAL_WRITES.fence(subject), 0, "both have applied it");

        LOCAL_WRITES.note(ChangeKind::ConsentRecorded, Some(subject), 3_000);
        drop(other);
        LOCAL_WRITES.applied(&mine, 3_000);
        assert_eq!(
            LOCAL_WRITES.fence(subject),
            0,
            "a stopped follower holds nothing"
        );
    }
}
