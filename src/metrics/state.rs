//! The service's own state as gauges: open privacy requests and their
//! deadlines, the task queue, the retention schedule, the audit chain's
//! unsealed tail, the database pool. A sampler reads them every
//! `metrics_state_interval_ms` with ONE statement (aggregates over partial
//! indexes: open requests, queued/leased/failed tasks, due/held schedule
//! entries, the audit events after the last link), so a scrape costs no
//! query and many scrapers cost the database nothing more.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::{Mutex, watch};

use crate::reads::{ReadStats, Reads};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    state: String,
    request_type: String,
    jurisdiction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DueLabels {
    request_type: String,
    jurisdiction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    state: String,
    data_system: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SystemLabels {
    data_system: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    /// `replica`, `primary` (no replica fresh enough), `replica_stale` and
    /// `replica_error` (the replica answered too old, or failed: redone on
    /// the primary).
    went: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The gauges the sampler sets.
pub struct StateMetrics {
    requests_open: Family<RequestLabels, Gauge>,
    requests_overdue: Family<DueLabels, Gauge>,
    requests_due_7d: Family<DueLabels, Gauge>,
    requests_due_2d_open_tasks: Family<DueLabels, Gauge>,
    soonest_due_seconds: F64Gauge,
    tasks: Family<TaskLabels, Gauge>,
    oldest_queued_age: Family<SystemLabels, F64Gauge>,
    leases_expired: Family<SystemLabels, Gauge>,
    retention_due: Gauge,
    retention_held: Gauge,
    audit_unsealed: Gauge,
    audit_oldest_unsealed_age: F64Gauge,
    pool: Family<PoolLabels, Gauge>,
    replica_lag: F64Gauge,
    replica_max_lag: F64Gauge,
    reads: Family<ReadLabels, Counter>,
    database_up: Gauge,
    sampled_at: F64Gauge,
    sample_errors: Counter,
    /// The label sets set last time, so one that disappears reads 0
    /// rather than its last value.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    requests: HashSet<RequestLabels>,
    due: HashSet<DueLabels>,
    tasks: HashSet<TaskLabels>,
    systems: HashSet<SystemLabels>,
}

impl StateMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests_open: Family::default(),
            requests_overdue: Family::default(),
            requests_due_7d: Family::default(),
            requests_due_2d_open_tasks: Family::default(),
            soonest_due_seconds: F64Gauge::default(),
            tasks: Family::default(),
            oldest_queued_age: Family::default(),
            leases_expired: Family::default(),
            retention_due: Gauge::default(),
            retention_held: Gauge::default(),
            audit_unsealed: Gauge::default(),
            audit_oldest_unsealed_age: F64Gauge::default(),
            pool: Family::default(),
            replica_lag: F64Gauge::default(),
            replica_max_lag: F64Gauge::default(),
            reads: Family::default(),
            database_up: Gauge::default(),
            sampled_at: F64Gauge::default(),
            sample_errors: Counter::default(),
            seen: Mutex::new(Seen::default()),
        };
        let r = registry;
        r.register(
            "privacy_records_requests_open",
            "Open privacy requests (RECEIVED, AWAITING_VERIFICATION, IN_PROGRESS, ON_HOLD), by \
             state, type and the jurisdiction whose rules apply.",
            m.requests_open.clone(),
        );
        r.register(
            "privacy_records_requests_overdue",
            "Open privacy requests past their due date.",
            m.requests_overdue.clone(),
        );
        r.register(
            "privacy_records_requests_due_within_7_days",
            "Open privacy requests due today or within the next 7 days.",
            m.requests_due_7d.clone(),
        );
        r.register(
            "privacy_records_requests_due_within_2_days_with_open_tasks",
            "Open privacy requests due within 2 days (or overdue) whose data systems still hold \
             QUEUED or LEASED tasks.",
            m.requests_due_2d_open_tasks.clone(),
        );
        r.register(
            "privacy_records_requests_soonest_due_seconds",
            "Time left until the open request due soonest is due, in whole days as seconds \
             (negative: overdue; +Inf: none open).",
            m.soonest_due_seconds.clone(),
        );
        r.register(
            "privacy_records_tasks",
            "Data-system tasks QUEUED, LEASED or FAILED (for good), by system and action.",
            m.tasks.clone(),
        );
        r.register(
            "privacy_records_tasks_oldest_queued_age_seconds",
            "Age of the oldest QUEUED task, by data system.",
            m.oldest_queued_age.clone(),
        );
        r.register(
            "privacy_records_tasks_leases_expired",
            "LEASED tasks whose lease has expired (their worker stopped renewing), by system.",
            m.leases_expired.clone(),
        );
        r.register(
            "privacy_records_retention_due_untasked",
            "Retention schedule entries due and not yet turned into deletion tasks.",
            m.retention_due.clone(),
        );
        r.register(
            "privacy_records_retention_held",
            "Retention schedule entries kept by a legal hold.",
            m.retention_held.clone(),
        );
        r.register(
            "privacy_records_audit_unsealed_events",
            "Audit events not yet linked into the hash chain.",
            m.audit_unsealed.clone(),
        );
        r.register(
            "privacy_records_audit_oldest_unsealed_age_seconds",
            "Age of the oldest audit event not yet linked into the hash chain (0: none).",
            m.audit_oldest_unsealed_age.clone(),
        );
        r.register(
            "privacy_records_db_pool_connections",
            "Connections of the database pool, idle or in use.",
            m.pool.clone(),
        );
        r.register(
            "privacy_records_replica_lag_seconds",
            "How far the read replica is behind the primary (+Inf while it is down or not yet \
             probed). Exported only with a replica.",
            m.replica_lag.clone(),
        );
        r.register(
            "privacy_records_replica_max_lag_seconds",
            "How far behind the replica may be and still answer reads \
             (read_replica_max_lag_ms).",
            m.replica_max_lag.clone(),
        );
        r.register(
            "privacy_records_reads",
            "Reads that may use the replica, by where they went.",
            m.reads.clone(),
        );
        r.register(
            "privacy_records_database_up",
            "1 while the health monitor finds the database answering and the schema at head.",
            m.database_up.clone(),
        );
        r.register(
            "privacy_records_state_sampled_timestamp_seconds",
            "When the state gauges were last read from the database (Unix time).",
            m.sampled_at.clone(),
        );
        r.register(
            "privacy_records_state_sample_errors",
            "State samples that failed (the database away, or slow).",
            m.sample_errors.clone(),
        );
        m
    }

    /// Samples every `interval` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        reads: Reads,
        ready: watch::Receiver<bool>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let pool = reads.primary().clone();
        let mut routed = ReadStats::default();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let up = *ready.borrow();
            self.database_up.set(i64::from(up));
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            self.pool
                .get_or_create(&PoolLabels { state: "idle" })
                .set(idle);
            self.pool
                .get_or_create(&PoolLabels { state: "in_use" })
                .set((size - idle).max(0));
            self.replica(&reads, &mut routed);
            if !up {
                continue;
            }
            match tokio::time::timeout(interval.max(Duration::from_secs(1)), sample(&pool)).await {
                Ok(Ok(sample)) => self.apply(sample).await,
                Ok(Err(e)) => {
                    self.sample_errors.inc();
                    tracing::warn!(error = %e, "could not sample the state for metrics");
                }
                Err(_) => {
                    self.sample_errors.inc();
                    tracing::warn!("sampling the state for metrics took too long");
                }
            }
        }
    }

    /// The replica's lag and where reads went since the last tick (the
    /// counters advance by what `Reads` counted meanwhile).
    fn replica(&self, reads: &Reads, routed: &mut ReadStats) {
        let Some((lag, max_lag)) = reads.replica_lag() else {
            return;
        };
        self.replica_lag
            .set(lag.map_or(f64::INFINITY, |l| l.as_secs_f64()));
        self.replica_max_lag.set(max_lag.as_secs_f64());
        let now = reads.stats();
        for (went, was, is) in [
            ("replica", routed.replica, now.replica),
            ("primary", routed.primary, now.primary),
            ("replica_stale", routed.stale, now.stale),
            ("replica_error", routed.errors, now.errors),
        ] {
            self.reads
                .get_or_create(&ReadLabels { went })
                .inc_by(is.saturating_sub(was));
        }
        *routed = now;
    }

    async fn apply(&self, s: Sample) {
        let mut seen = self.seen.lock().await;
        let mut requests = HashSet::new();
        let mut due = HashSet::new();
        let mut overdue_by = std::collections::HashMap::<DueLabels, (i64, i64, i64)>::new();
        let mut days_left = f64::INFINITY;
        for r in s.requests {
            let labels = RequestLabels {
                state: r.state,
                request_type: r.request_type.clone(),
                jurisdiction: r.jurisdiction.clone(),
            };
            self.requests_open.get_or_create(&labels).set(r.n);
            requests.insert(labels);
            let d = DueLabels {
                request_type: r.request_type,
                jurisdiction: r.jurisdiction,
            };
            let e = overdue_by.entry(d).or_default();
            e.0 += r.overdue;
            e.1 += r.due_7d;
            e.2 += r.due_2d_open_tasks;
            days_left = days_left.min(r.min_days_left as f64 * 86_400.0);
        }
        for (labels, (overdue, due_7d, due_2d)) in overdue_by {
            self.requests_overdue.get_or_create(&labels).set(overdue);
            self.requests_due_7d.get_or_create(&labels).set(due_7d);
            self.requests_due_2d_open_tasks
                .get_or_create(&labels)
                .set(due_2d);
            due.insert(labels);
        }
        self.soonest_due_seconds.set(days_left);
        let mut tasks = HashSet::new();
        let mut systems = HashSet::new();
        for t in s.tasks {
            let system = SystemLabels {
                data_system: t.data_system.clone(),
            };
            let labels = TaskLabels {
                state: t.state,
                data_system: t.data_system,
                action: t.action,
            };
            self.tasks.get_or_create(&labels).set(t.n);
            tasks.insert(labels);
            systems.insert(system);
        }
        for system in &systems {
            self.oldest_queued_age.get_or_create(system).set(0.0);
            self.leases_expired.get_or_create(system).set(0);
        }
        for q in s.queues {
            let system = SystemLabels {
                data_system: q.data_system,
            };
            self.oldest_queued_age
                .get_or_create(&system)
                .set(q.oldest_queued_age);
            self.leases_expired
                .get_or_create(&system)
                .set(q.leases_expired);
            systems.insert(system);
        }
        for gone in seen.requests.difference(&requests) {
            self.requests_open.get_or_create(gone).set(0);
        }
        for gone in seen.due.difference(&due) {
            self.requests_overdue.get_or_create(gone).set(0);
            self.requests_due_7d.get_or_create(gone).set(0);
            self.requests_due_2d_open_tasks.get_or_create(gone).set(0);
        }
        for gone in seen.tasks.difference(&tasks) {
            self.tasks.get_or_create(gone).set(0);
        }
        for gone in seen.systems.difference(&systems) {
            self.oldest_queued_age.get_or_create(gone).set(0.0);
            self.leases_expired.get_or_create(gone).set(0);
        }
        *seen = Seen {
            requests,
            due,
            tasks,
            systems,
        };
        self.retention_due.set(s.retention_due);
        self.retention_held.set(s.retention_held);
        self.audit_unsealed.set(s.audit_unsealed);
        self.audit_oldest_unsealed_age
            .set(s.audit_oldest_unsealed_age.unwrap_or(0.0));
        self.sampled_at.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
    }
}

#[derive(Deserialize)]
struct Sample {
    requests: Vec<RequestRow>,
    tasks: Vec<TaskRow>,
    queues: Vec<QueueRow>,
    retention_due: i64,
    retention_held: i64,
    audit_unsealed: i64,
    audit_oldest_unsealed_age: Option<f64>,
}

#[derive(Deserialize)]
struct RequestRow {
    state: String,
    request_type: String,
    jurisdiction: String,
    n: i64,
    overdue: i64,
    due_7d: i64,
    due_2d_open_tasks: i64,
    min_days_left: i64,
}

#[derive(Deserialize)]
struct TaskRow {
    state: String,
    data_system: String,
    action: String,
    n: i64,
}

#[derive(Deserialize)]
struct QueueRow {
    data_system: String,
    oldest_queued_age: f64,
    leases_expired: i64,
}

/// The one statement: every aggregate as one JSON document.
const SAMPLE: &str = "
WITH last_link AS (
  SELECT coalesce((SELECT event_xid FROM audit_chain ORDER BY chain_seq DESC LIMIT 1), '0'::xid8)
           AS xid,
         coalesce((SELECT event_id FROM audit_chain ORDER BY chain_seq DESC LIMIT 1), 0) AS id
), unsealed AS (
  SELECT e.occur_time FROM audit_events e, last_link l WHERE (e.xid, e.id) > (l.xid, l.id)
)
SELECT json_build_object(
  'requests', (SELECT coalesce(json_agg(r), '[]') FROM (
      SELECT state, request_type, rules_code AS jurisdiction, count(*) AS n,
             count(*) FILTER (WHERE due_date < current_date) AS overdue,
             count(*) FILTER (WHERE due_date >= current_date
                                AND due_date <= current_date + 7) AS due_7d,
             count(*) FILTER (WHERE due_date <= current_date + 2 AND EXISTS (
                 SELECT 1 FROM tasks t WHERE t.privacy_request_id = privacy_requests.id
                                         AND t.state IN ('QUEUED', 'LEASED')))
                 AS due_2d_open_tasks,
             min(due_date - current_date) AS min_days_left
      FROM privacy_requests
      WHERE state IN ('RECEIVED', 'AWAITING_VERIFICATION', 'IN_PROGRESS', 'ON_HOLD')
      GROUP BY 1, 2, 3) r),
  'tasks', (SELECT coalesce(json_agg(t), '[]') FROM (
      SELECT state, data_system_id AS data_system, action, count(*) AS n
      FROM tasks WHERE state IN ('QUEUED', 'LEASED', 'FAILED')
      GROUP BY 1, 2, 3) t),
  'queues', (SELECT coalesce(json_agg(q), '[]') FROM (
      SELECT data_system_id AS data_system,
             coalesce(extract(epoch FROM now() - min(create_time)
                 FILTER (WHERE state = 'QUEUED')), 0)::float8 AS oldest_queued_age,
             count(*) FILTER (WHERE state = 'LEASED' AND lease_expire_time < now())
                 AS leases_expired
      FROM tasks WHERE state IN ('QUEUED', 'LEASED')
      GROUP BY 1) q),
  'retention_due', (SELECT count(*) FROM retention_schedule
      WHERE state = 'SCHEDULED' AND due_time <= now()),
  'retention_held', (SELECT count(*) FROM retention_schedule WHERE state = 'HELD'),
  'audit_unsealed', (SELECT count(*) FROM unsealed),
  'audit_oldest_unsealed_age',
      (SELECT extract(epoch FROM now() - min(occur_time))::float8 FROM unsealed)
)";

async fn sample(pool: &PgPool) -> Result<Sample, sqlx::Error> {
    let doc: sqlx::types::Json<Sample> = sqlx::query_scalar(SAMPLE).fetch_one(pool).await?;
    Ok(doc.0)
}
