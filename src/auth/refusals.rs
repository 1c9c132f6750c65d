//! The audit of refused calls, bounded so refusals cannot fill the disk.
//!
//! Anyone who can reach the port can be refused, as often as they like, and
//! every refusal is audited in the append-only, hash-chained trail. So the
//! fields a caller controls are bounded (a method outside the contract is
//! recorded as "unknown method", never its path; a request id is cut to the
//! length a request id may have), and repeated refusals are aggregated: per
//! peer address, caller, outcome and reason, the first refusal of an
//! interval is written at once (with its method and request id) and the
//! rest are counted and written as one event with the count when the
//! interval ends. The counts add up to every refusal, so the trail stays
//! complete, and a flood writes at most two events per key and interval.
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

/// How a method outside the contract is recorded.
pub const UNKNOWN_METHOD: &str = "unknown method";
/// The longest request id kept (the length a request id may have).
pub const MAX_REQUEST_ID: usize = 128;
/// The longest caller name kept (names in the callers file are shorter; a
/// certificate's may not be).
const MAX_ACTOR: usize = 200;
/// Distinct methods listed in an aggregated event.
const MAX_METHODS: usize = 16;
/// Keys counted at once; beyond them, refusals from new peers share one
/// key, so memory stays bounded when the peers are many.
const MAX_OPEN: usize = 10_000;
/// The peer of the shared key beyond `MAX_OPEN`.
const OTHER_PEERS: &str = "other peers";

/// One refused call, as the middleware or a use case saw it.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The caller's name, or "unauthenticated".
    pub actor: &'a str,
    /// The method's path as called (`/package.Service/Method`) or its name.
    pub path: &'a str,
    /// "UNAUTHENTICATED" or "PERMISSION_DENIED".
    pub outcome: &'static str,
    pub reason: &'a str,
    /// The peer's address ("127.0.0.1:5000"), or "" when unknown.
    pub peer: &'a str,
    pub request_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The peer's IP address, not its port: a new connection must not open
    /// a new key.
    peer: String,
    actor: String,
    outcome: &'static str,
    reason: String,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Refusals after the first (which was written when the window opened).
    more: u64,
    methods: BTreeSet<String>,
}

/// The aggregating refusal audit; `run` writes the counts as intervals end.
#[derive(Debug)]
pub struct RefusalAudit {
    pool: PgPool,
    interval: Duration,
    open: Mutex<HashMap<Key, Window>>,
}

impl RefusalAudit {
    pub fn new(pool: PgPool, interval: Duration) -> Self {
        Self {
            pool,
            interval,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Audits a refusal: at once when it opens an interval for its key,
    /// otherwise as part of the interval's count.
    pub async fn record(&self, refusal: Refusal<'_>) {
        let method = method_name(refusal.path);
        let mut key = Key {
            peer: peer_host(refusal.peer),
            actor: cut(refusal.actor, MAX_ACTOR).to_owned(),
            outcome: refusal.outcome,
            reason: refusal.reason.to_owned(),
        };
        let opens = {
            // A poisoned lock only means another refusal panicked while
            // counting; the counts are still usable.
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.len() >= MAX_OPEN && !open.contains_key(&key) {
                key.peer = OTHER_PEERS.to_owned();
            }
            match open.get_mut(&key) {
                Some(window) => {
                    window.more += 1;
                    if window.methods.len() < MAX_METHODS {
                        window.methods.insert(method.to_owned());
                    }
                    false
                }
                None => {
                    open.insert(
                        key.clone(),
                        Window {
                            opened: Instant::now(),
                            more: 0,
                            methods: BTreeSet::new(),
                        },
                    );
                    true
                }
            }
        };
        if opens {
            let details = serde_json::json!({
                "outcome": key.outcome,
                "reason": key.reason,
                "peer": cut(refusal.peer, 64),
                "count": 1,
            });
            insert(
                &self.pool,
                &key.actor,
                method,
                refusal.request_id.map(|id| cut(id, MAX_REQUEST_ID)),
                details,
            )
            .await;
        }
    }

    /// Writes the counts of the intervals that have ended (of all, with
    /// `all`), one event per key that saw more than its first refusal.
    pub async fn flush(&self, all: bool) {
        let ended: Vec<(Key, Window)> = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<Key> = open
                .iter()
                .filter(|(_, w)| all || w.opened.elapsed() >= self.interval)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| open.remove(&k).map(|w| (k, w)))
                .collect()
        };
        for (key, window) in ended {
            if window.more == 0 {
                continue;
            }
            let method = match window.methods.len() {
                1 => window.methods.iter().next().map_or("", String::as_str),
                _ => "several methods",
            };
            let details = serde_json::json!({
                "outcome": key.outcome,
                "reason": key.reason,
                "peer": key.peer,
                "count": window.more,
                "aggregated": true,
                "interval_ms": u64::try_from(window.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
                "methods": window.methods,
            });
            insert(&self.pool, &key.actor, method, None, details).await;
        }
    }

    /// Writes the counts as intervals end, until `stop`; then writes the
    /// counts of the intervals still open.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tick = (self.interval / 4).max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopped = tokio::select! {
                _ = ticks.tick() => false,
                // The borrow `wait_for` returns is dropped here, not held
                // across the flush.
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if stopped {
                break;
            }
            self.flush(false).await;
        }
        self.flush(true).await;
    }
}

/// The method as recorded: its name when it is a method of the contract,
/// otherwise "unknown method" (a path is whatever a caller sent).
pub fn method_name(path: &str) -> &str {
    let name = path.trim_start_matches('/');
    if super::callers::is_contract_method(name) {
        name
    } else {
        UNKNOWN_METHOD
    }
}

/// The peer's IP address (without the port), bounded.
fn peer_host(peer: &str) -> String {
    match peer.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => cut(peer, 64).to_owned(),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes one refusal event (logged, not raised, when it fails: the call
/// is refused either way).
pub async fn insert(
    pool: &PgPool,
    actor: &str,
    method: &str,
    request_id: Option<&str>,
    details: serde_json::Value,
) {
    let result = sqlx::query(
        "INSERT INTO audit_events (actor, method, target, request_id, details)
         VALUES ($1, $2, 'auth', $3, $4)",
    )
    .bind(actor)
    .bind(method)
    .bind(request_id)
    .bind(details)
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not audit a refused call");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_a_caller_controls_are_bounded() {
        assert_eq!(
            method_name("/privacy.v1.ConsentService/CheckConsent"),
            "privacy.v1.ConsentService/CheckConsent"
        );
        assert_eq!(
            method_name("privacy.v1.ConsentService/CheckConsent"),
            "privacy.v1.ConsentService/CheckConsent"
        );
        let long = format!("/privacy.v1.ConsentService/{}", "A".repeat(7000));
        assert_eq!(method_name(&long), UNKNOWN_METHOD);
        assert_eq!(method_name("/x"), UNKNOWN_METHOD);
        assert_eq!(cut(&"r".repeat(7000), MAX_REQUEST_ID).len(), 128);
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(peer_host("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(peer_host("[::1]:5000"), "::1");
        assert_eq!(peer_host(""), "");
    }
}
