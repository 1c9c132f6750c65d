//! The consent decision cache: what `decide` needs per subject, in memory,
//! kept coherent by the change feed. `docs/caching.md` states what it
//! promises; in short:
//!
//! - A follower task reads the change feed (`crate::changefeed`), woken at
//!   once by this process's commits and by `NOTIFY` from other processes,
//!   and polls every `poll_interval` besides. Each event about a subject
//!   evicts that subject; a purpose or policy-version change reloads the
//!   catalogue. `applied` is the feed position it has caught up with: every
//!   transaction with an id <= `applied` is in the cache's view.
//! - A check with a consistency token newer than `applied` is answered from
//!   PostgreSQL, so read-your-writes holds across processes. A check without
//!   a token is answered from the cache only while the cache is at most
//!   `max_staleness` behind PostgreSQL, and never about a subject (or
//!   catalogue) this process wrote to and the feed has not yet passed
//!   (`journal::LOCAL_WRITES`). Checks "as of" a past time bypass the cache.
//! - A miss loads the subject's whole state in one query (all misses of a
//!   batch in the same query) and keeps it only if that read is at least as
//!   new as `applied`, under a lock the follower takes to apply events: a
//!   load can never put back a state an applied event already replaced.
//! - Subjects whose deciding entries carry evidence are not kept (opened
//!   evidence stays out of memory, so crypto-shredding reaches it); their
//!   checks go to PostgreSQL.
//! - The cache holds at most `max_subjects` subjects (quick_cache, CLOCK-Pro
//!   eviction). If the feed cannot be read, every check goes to PostgreSQL
//!   until the follower catches up again, which starts from an empty cache.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::decision::{self, Inputs, MaterialChange};
use super::model::{ConsentRecord, Purpose};
use super::service::{CheckAnswers, CheckQuery};
use super::store;
use crate::changefeed;
use crate::error::Result;
use crate::journal::{ChangeKind, Follower, LOCAL_WRITES};
use crate::names::PurposeKey;
use crate::tokens::{ConsistencyToken, FeedPosition};

/// The channel this service's processes wake each other's followers on.
pub const CHANNEL: &str = "privacy_records_changes";

/// The least time between two notifications from one process.
const NOTIFY_SPACING: Duration = Duration::from_millis(5);

/// Feed events read per poll.
const FEED_BATCH: i64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Subjects kept at most; 0 turns the cache off.
    pub max_subjects: usize,
    /// How far behind PostgreSQL a check without a token may be answered.
    pub max_staleness: Duration,
    /// How often the follower polls the feed when nothing wakes it.
    pub poll_interval: Duration,
}

/// What `decide` needs about one subject, as of the snapshot it was loaded at.
#[derive(Debug)]
struct SubjectEntry {
    minor_since: Option<DateTime<Utc>>,
    erase_time: Option<DateTime<Utc>>,
    /// The latest entry per purpose (no entry: the purpose's default).
    latest: Box<[ConsentRecord]>,
}

/// The purposes and the material policy versions.
#[derive(Debug, Default)]
struct Catalog {
    purposes: BTreeMap<String, Purpose>,
    /// Oldest effective first.
    material: Vec<MaterialChange>,
}

impl Catalog {
    async fn load(pool: &PgPool) -> Result<Self> {
        let purposes = store::purposes::all_purposes(pool)
            .await?
            .into_iter()
            .map(|p| (p.key.as_str().to_owned(), p))
            .collect();
        let material = store::policy_versions::material_versions(pool).await?;
        Ok(Catalog { purposes, material })
    }

    /// The latest material version in effect at `at`.
    fn material_at(&self, at: DateTime<Utc>) -> Option<&MaterialChange> {
        self.material.iter().rev().find(|v| v.effective_time <= at)
    }
}

/// Not yet caught up: every check goes to PostgreSQL.
const UNSYNCED: i64 = -1;

struct Shared {
    settings: CacheSettings,
    subjects: quick_cache::sync::Cache<String, Arc<SubjectEntry>>,
    catalog: RwLock<Arc<Catalog>>,
    /// Every transaction with an id <= this is applied (`UNSYNCED`: none).
    applied: AtomicI64,
    /// When PostgreSQL was last known to be exactly what the cache says
    /// (nanoseconds since `epoch`; 0: never).
    fresh_as_of: AtomicU64,
    epoch: Instant,
    /// Held shared by loads while they check `applied` and insert, and
    /// exclusively by the follower while it applies events.
    gate: RwLock<()>,
    hits: AtomicU64,
    loads: AtomicU64,
    passes: AtomicU64,
    /// A check named a purpose the catalogue lacks: reload it on the next
    /// poll (a purpose written without a change event, e.g. by a migration).
    catalog_suspect: AtomicBool,
}

/// A handle to the cache; cheap to clone.
#[derive(Clone)]
pub struct DecisionCache {
    shared: Option<Arc<Shared>>,
}

/// What the cache holds and has done, for tests and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Subjects kept.
    pub subjects: usize,
    /// The feed position applied (-1: not following).
    pub applied: i64,
    /// Checks answered from memory alone.
    pub hits: u64,
    /// Checks answered after loading a subject.
    pub loads: u64,
    /// Checks left to PostgreSQL.
    pub passes: u64,
}

impl DecisionCache {
    pub fn new(settings: CacheSettings) -> Self {
        if settings.max_subjects == 0 {
            return Self::disabled();
        }
        DecisionCache {
            shared: Some(Arc::new(Shared {
                settings,
                subjects: quick_cache::sync::Cache::new(settings.max_subjects),
                catalog: RwLock::new(Arc::default()),
                applied: AtomicI64::new(UNSYNCED),
                fresh_as_of: AtomicU64::new(0),
                epoch: Instant::now(),
                gate: RwLock::new(()),
                hits: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                passes: AtomicU64::new(0),
                catalog_suspect: AtomicBool::new(false),
            })),
        }
    }

    /// A cache that answers nothing: every check goes to PostgreSQL.
    pub fn disabled() -> Self {
        DecisionCache { shared: None }
    }

    pub fn stats(&self) -> CacheStats {
        match &self.shared {
            Some(s) => CacheStats {
                subjects: s.subjects.len(),
                applied: s.applied.load(Ordering::Acquire),
                hits: s.hits.load(Ordering::Relaxed),
                loads: s.loads.load(Ordering::Relaxed),
                passes: s.passes.load(Ordering::Relaxed),
            },
            None => CacheStats::default(),
        }
    }

    /// How long ago the cache was last known to be exactly PostgreSQL;
    /// `None` when it never was or the cache is off.
    pub fn staleness(&self) -> Option<Duration> {
        let shared = self.shared.as_ref()?;
        let fresh = shared.fresh_as_of.load(Ordering::Acquire);
        (fresh != 0).then(|| {
            Duration::from_nanos(
                shared
                    .nanos_since_epoch(Instant::now())
                    .saturating_sub(fresh),
            )
        })
    }

    /// Answers every query from the cache (loading missing subjects), or
    /// `None` when the check must be answered by PostgreSQL: the cache is
    /// off, behind the token or too stale, a subject was written here and
    /// not yet applied, a purpose is not in the catalogue, or a subject is
    /// not cacheable.
    pub async fn check(
        &self,
        pool: &PgPool,
        queries: &[CheckQuery],
        token: Option<ConsistencyToken>,
    ) -> Result<Option<CheckAnswers>> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let answers = shared.check(pool, queries, token).await?;
        let counter = match &answers {
            None => &shared.passes,
            Some((_, false)) => &shared.hits,
            Some((_, true)) => &shared.loads,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(answers.map(|(answers, _)| answers))
    }

    /// The two halves of a miss, public so that tests can put a write
    /// between them: read subjects from PostgreSQL...
    pub async fn load(&self, pool: &PgPool, subjects: &[&str]) -> Result<Loaded> {
        load(pool, subjects).await
    }

    /// ... and keep them, if nothing applied since may be missing from the
    /// read. Returns whether they were kept.
    pub fn keep(&self, loaded: &Loaded) -> bool {
        self.shared.as_ref().is_some_and(|s| s.keep(loaded))
    }

    /// Every purpose key, in order, when the cache can answer for them.
    pub fn purpose_keys(&self) -> Option<Vec<String>> {
        let shared = self.shared.as_ref()?;
        if shared.applied.load(Ordering::Acquire) == UNSYNCED {
            return None;
        }
        Some(shared.catalog().purposes.keys().cloned().collect())
    }

    /// The purpose as the catalogue last loaded it, which may be behind
    /// PostgreSQL: a writer checks against its revision (see
    /// `store::ledger::record_consent`). None when the cache is off or lacks it.
    pub fn purpose(&self, key: &PurposeKey) -> Option<Purpose> {
        let shared = self.shared.as_ref()?;
        shared.catalog().purposes.get(key.as_str()).cloned()
    }

    /// Follows the change feed until `stop` turns true. Spawn it once per cache.
    pub async fn follow(self, pool: PgPool, mut stop: watch::Receiver<bool>) {
        let Some(shared) = self.shared else {
            return;
        };
        let mut local = LOCAL_WRITES.subscribe();
        let follower = LOCAL_WRITES.follower();
        let mut listener: Option<PgListener> = None;
        let mut position: Option<FeedPosition> = None;
        let mut waiting: Vec<(Instant, i64)> = Vec::new();
        // The schema must be at head first: a catalogue read halfway through
        // the migrations would miss the purposes they insert.
        while !crate::db::is_ready(&pool).await {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(shared.settings.poll_interval) => {}
            }
        }
        let mut failing = false;
        loop {
            if *stop.borrow() {
                return;
            }
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            match shared
                .catch_up(&pool, &follower, &mut position, &mut waiting)
                .await
            {
                Ok(()) => {
                    if failing {
                        tracing::info!("decision cache following the change feed again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "decision cache cannot read the change feed; checks go to PostgreSQL");
                        failing = true;
                    }
                    shared.reset();
                    position = None;
                    waiting.clear();
                }
            }
            let notified = async {
                match listener.as_mut() {
                    // This process's own notifications add nothing: its
                    // commits woke `local` already.
                    Some(l) => loop {
                        if l.recv().await?.payload() != process_tag() {
                            return Ok::<(), sqlx::Error>(());
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => {}
                _ = local.changed() => {}
                r = notified => {
                    if r.is_err() {
                        listener = None;
                    }
                }
                _ = tokio::time::sleep(shared.settings.poll_interval) => {}
            }
        }
    }
}

/// Subjects read from PostgreSQL for the cache, not yet kept.
pub struct Loaded {
    /// The read's snapshot xmin and time.
    xmin: i64,
    at: DateTime<Utc>,
    /// Each subject, its state, and whether it may be kept (no entry that
    /// takes effect later).
    entries: Vec<(String, Arc<SubjectEntry>, bool)>,
    /// Some deciding entry carries evidence: nothing of this read is kept.
    with_evidence: bool,
}

/// Reads subjects' states in one query.
async fn load(pool: &PgPool, subjects: &[&str]) -> Result<Loaded> {
    let (states, snapshot) = store::decisions::subject_states(pool, subjects).await?;
    let with_evidence = states
        .iter()
        .any(|s| s.latest.iter().any(|r| r.evidence.is_some()));
    let entries = states
        .into_iter()
        .map(|state| {
            let entry = Arc::new(SubjectEntry {
                minor_since: state.minor_since,
                erase_time: state.erase_time,
                latest: state.latest.into_boxed_slice(),
            });
            (state.subject_id, entry, !state.has_future_entry)
        })
        .collect();
    Ok(Loaded {
        xmin: snapshot.xmin,
        at: snapshot.at,
        entries,
        with_evidence,
    })
}

/// A LISTEN connection, or none for now (the follower polls meanwhile).
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}

impl Shared {
    /// The answers and whether a subject was loaded for them, or `None`.
    async fn check(
        &self,
        pool: &PgPool,
        queries: &[CheckQuery],
        token: Option<ConsistencyToken>,
    ) -> Result<Option<(CheckAnswers, bool)>> {
        let applied = self.applied.load(Ordering::Acquire);
        if applied == UNSYNCED {
            return Ok(None);
        }
        match token {
            Some(t) if t.xid > applied => return Ok(None),
            Some(_) => {}
            None => {
                if !self.fresh_enough() {
                    return Ok(None);
                }
                if queries
                    .iter()
                    .any(|q| LOCAL_WRITES.fence(q.subject.as_str()) > applied)
                {
                    return Ok(None);
                }
            }
        }
        let catalog = self.catalog();
        if queries
            .iter()
            .any(|q| !catalog.purposes.contains_key(q.purpose.as_str()))
        {
            self.catalog_suspect.store(true, Ordering::Release);
            return Ok(None);
        }

        let mut found: HashMap<&str, Arc<SubjectEntry>> = HashMap::with_capacity(queries.len());
        let mut missing: Vec<&str> = Vec::new();
        for q in queries {
            let subject = q.subject.as_str();
            if found.contains_key(subject) || missing.contains(&subject) {
                continue;
            }
            match self.subjects.get(subject) {
                Some(entry) => {
                    found.insert(subject, entry);
                }
                None => missing.push(subject),
            }
        }
        let mut at = Utc::now();
        let loaded = !missing.is_empty();
        if loaded {
            let batch = load(pool, &missing).await?;
            if batch.with_evidence {
                // Answered by PostgreSQL, which opens the evidence.
                return Ok(None);
            }
            at = batch.at;
            self.keep(&batch);
            for (subject, entry, _) in batch.entries {
                if let Some(subject) = missing.iter().find(|s| **s == subject) {
                    found.insert(subject, entry);
                }
            }
        }

        let material = catalog.material_at(at);
        let mut outcomes = Vec::with_capacity(queries.len());
        for q in queries {
            let (Some(entry), Some(purpose)) = (
                found.get(q.subject.as_str()),
                catalog.purposes.get(q.purpose.as_str()),
            ) else {
                return Ok(None);
            };
            outcomes.push(decision::decide(&Inputs {
                purpose,
                jurisdiction: q.jurisdiction.as_ref(),
                gpc_signal: q.gpc_signal,
                category: q.category.as_deref(),
                minor: entry.minor_since.is_some_and(|t| t <= at),
                erased: entry.erase_time.is_some_and(|t| t <= at),
                latest: entry
                    .latest
                    .iter()
                    .find(|r| r.purpose == q.purpose.as_str()),
                material_change: material,
                at,
            }));
        }
        let answers = CheckAnswers {
            outcomes,
            token: ConsistencyToken { xid: applied },
        };
        Ok(Some((answers, loaded)))
    }

    fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn fresh_enough(&self) -> bool {
        let fresh = self.fresh_as_of.load(Ordering::Acquire);
        fresh != 0
            && self.nanos_since_epoch(Instant::now()).saturating_sub(fresh)
                <= u64::try_from(self.settings.max_staleness.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Keeps loaded subjects, unless the follower has applied events the
    /// load's snapshot may not include (its xmin is older than `applied`):
    /// such a load could put back a state an applied event replaced.
    fn keep(&self, batch: &Loaded) -> bool {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let applied = self.applied.load(Ordering::Acquire);
        if batch.with_evidence || applied == UNSYNCED || batch.xmin - 1 < applied {
            return false;
        }
        for (subject, entry, cacheable) in &batch.entries {
            if *cacheable {
                self.subjects.insert(subject.clone(), Arc::clone(entry));
            }
        }
        true
    }

    /// Forgets everything: the next successful poll starts over.
    fn reset(&self) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.applied.store(UNSYNCED, Ordering::Release);
        self.fresh_as_of.store(0, Ordering::Release);
        self.subjects.clear();
    }

    /// Reads the feed from `position` until caught up, applying each batch.
    /// Starting over (no position) loads the catalogue and starts at the
    /// feed's head with an empty cache.
    async fn catch_up(
        &self,
        pool: &PgPool,
        follower: &Follower,
        position: &mut Option<FeedPosition>,
        waiting: &mut Vec<(Instant, i64)>,
    ) -> Result<()> {
        let mut from = match *position {
            Some(p) => p,
            None => {
                let head = changefeed::head(pool).await?;
                let catalog = Catalog::load(pool).await?;
                let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
                self.subjects.clear();
                *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
                self.applied.store(head.xid - 1, Ordering::Release);
                head
            }
        };
        loop {
            let started = Instant::now();
            let batch = changefeed::read(pool, from, None, FEED_BATCH).await?;
            let catalog_changed = self.catalog_suspect.swap(false, Ordering::AcqRel)
                || batch.events.iter().any(|e| {
                    matches!(
                        e.kind,
                        ChangeKind::PurposeChanged | ChangeKind::PolicyVersionPublished
                    )
                });
            let catalog = if catalog_changed {
                Some(Catalog::load(pool).await?)
            } else {
                None
            };
            let applied = batch.next.xid - 1;
            {
                let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
                for event in &batch.events {
                    if let Some(subject) = &event.subject_id {
                        self.subjects.remove(subject.as_str());
                    }
                }
                if let Some(catalog) = catalog {
                    *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
                }
                self.applied.store(applied, Ordering::Release);
            }
            LOCAL_WRITES.applied(follower, applied);
            // Every commit before a poll began is applied once `applied`
            // reaches that poll's xmax: from then on the cache was exactly
            // PostgreSQL as of the poll's start.
            if waiting.last().is_none_or(|(_, xmax)| *xmax != batch.xmax) {
                waiting.push((started, batch.xmax));
            }
            let caught_up = waiting.iter().rposition(|(_, xmax)| *xmax <= applied + 1);
            if let Some(i) = caught_up {
                let (at, _) = waiting[i];
                self.fresh_as_of
                    .store(self.nanos_since_epoch(at), Ordering::Release);
                waiting.drain(..=i);
            }
            waiting.truncate(64);
            *position = Some(batch.next);
            from = batch.next;
            if (batch.events.len() as i64) < FEED_BATCH {
                return Ok(());
            }
        }
    }
}

/// Names this process in its notifications, so that its own follower, woken
/// by its commits directly, can skip them (one feed read per burst fewer).
fn process_tag() -> &'static str {
    static TAG: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());
    &TAG
}

/// Wakes the other processes' followers after this process's commits: one
/// `NOTIFY` per burst of commits, sent after they committed and outside
/// any write transaction (a `NOTIFY` inside each write would serialise
/// every commit on PostgreSQL's notify queue lock).
pub async fn notify_others(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut local = LOCAL_WRITES.subscribe();
    loop {
        tokio::select! {
            changed = local.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(process_tag())
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "could not notify the other processes of a change");
        }
        // Commits during this pause share the next notification. PostgreSQL
        // gives each NOTIFY a transaction id and a commit, so a storm of
        // writes costs at most 200 of them a second per process.
        tokio::time::sleep(NOTIFY_SPACING).await;
    }
}
