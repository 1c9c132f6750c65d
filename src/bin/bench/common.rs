//! What every scenario shares: the scenarios and how they are measured, the seeded
//! plan, a caller with its clients, connecting and seeding.

use super::*;

/// The purpose seeded for every subject and checked by the `check` scenario.
pub(crate) const SEEDED_PURPOSE: &str = "analytics_cookies";
/// `check-verdict`'s read mask: the answer and why, without the deciding entry.
pub(crate) const VERDICT_ONLY: &[&str] = &["verdict", "reason"];
/// The jurisdiction the seeded and benchmarked decisions are recorded in.
pub(crate) const JURISDICTION: &str = "US-CA";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    Health,
    Check,
    CheckVerdict,
    Batch,
    Record,
    Request,
    Tasks,
    Pgbench,
    PgbenchRecord,
    Memory,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Check => "check",
            Scenario::CheckVerdict => "check-verdict",
            Scenario::Batch => "batch",
            Scenario::Record => "record",
            Scenario::Request => "request",
            Scenario::Tasks => "tasks",
            Scenario::Pgbench => "pgbench",
            Scenario::PgbenchRecord => "pgbench-record",
            Scenario::Memory => "memory",
        }
    }

    /// Whether the scenario needs the bench's data system and queued tasks.
    pub(crate) fn needs_tasks(self) -> bool {
        matches!(self, Scenario::Request | Scenario::Tasks)
    }

    /// Whether the scenario is a gRPC call the callers repeat (closed- or open-loop).
    pub(crate) fn is_grpc(self) -> bool {
        !matches!(
            self,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory
        )
    }

    /// Whether the scenario talks to PostgreSQL directly.
    pub(crate) fn needs_database(self) -> bool {
        matches!(
            self,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory
        )
    }
}

/// How a scenario's calls are paced.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Each caller calls again as soon as its call returns: the maximum rate.
    Closed,
    /// Calls are released on a fixed schedule; latency counts from the scheduled time.
    Open,
}

/// What every caller needs to know about the seeded data.
pub(crate) struct Plan {
    pub(crate) prefix: String,
    /// The bench's data system id, and the one category it holds.
    pub(crate) system: String,
    pub(crate) category: String,
    pub(crate) subjects: usize,
    pub(crate) batch_size: usize,
    pub(crate) call_timeout: Duration,
}

impl Plan {
    pub(crate) fn subject(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// The decision seeded (and re-recorded) for subject `n`.
    pub(crate) fn decision(n: usize) -> ConsentDecision {
        if n.is_multiple_of(2) {
            ConsentDecision::Refused
        } else {
            ConsentDecision::Granted
        }
    }

    /// An opt-out of sale in California, limited to the bench's category so it fans
    /// out to the bench's data system only.
    pub(crate) fn opt_out_request(&self, n: usize) -> CreatePrivacyRequestRequest {
        CreatePrivacyRequestRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            subject_id: self.subject(n),
            request_type: RequestType::OptOutSale as i32,
            jurisdiction: JURISDICTION.to_string(),
            channel: privacy_request::Channel::WebForm as i32,
            categories: vec![self.category.clone()],
            ..Default::default()
        }
    }

    pub(crate) fn record_request(&self, n: usize) -> RecordConsentRequest {
        RecordConsentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            subject_id: self.subject(n),
            purpose: SEEDED_PURPOSE.to_string(),
            decision: Self::decision(n) as i32,
            source: ConsentSource::Api as i32,
            jurisdiction: JURISDICTION.to_string(),
            ..Default::default()
        }
    }
}

pub(crate) fn expected_seeded_verdict(n: usize) -> Verdict {
    match Plan::decision(n) {
        ConsentDecision::Granted => Verdict::Allowed,
        _ => Verdict::Denied,
    }
}

/// A small, fast, non-cryptographic generator (SplitMix64); one per caller.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn new() -> Self {
        Rng(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

/// One caller: the clients for its channel and its own random stream.
pub(crate) struct Caller {
    pub(crate) consent: ConsentServiceClient<Channel>,
    pub(crate) requests: PrivacyRequestServiceClient<Channel>,
    pub(crate) systems: DataSystemServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) rng: Rng,
}

impl Caller {
    pub(crate) fn new(channel: Channel, plan: Arc<Plan>) -> Self {
        Caller {
            consent: ConsentServiceClient::new(channel.clone()),
            requests: PrivacyRequestServiceClient::new(channel.clone()),
            systems: DataSystemServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            plan,
            rng: Rng::new(),
        }
    }

    /// Issues one call; `Ok` carries the units of work done (tasks completed for `tasks`,
    /// else 1); `Err` carries the error's label (gRPC code name, `Timeout`, `WrongVerdict`).
    pub(crate) async fn call(&mut self, scenario: Scenario) -> Result<u64, String> {
        let timeout = self.plan.call_timeout;
        match tokio::time::timeout(timeout, self.call_inner(scenario)).await {
            Ok(result) => result,
            Err(_) => Err("Timeout".to_string()),
        }
    }

    pub(crate) async fn call_inner(&mut self, scenario: Scenario) -> Result<u64, String> {
        match scenario {
            Scenario::Health => self.health_check().await.map(|()| 1),
            Scenario::Check => self.check(None).await.map(|()| 1),
            Scenario::CheckVerdict => self.check(Some(VERDICT_ONLY)).await.map(|()| 1),
            Scenario::Batch => self.batch().await.map(|()| 1),
            Scenario::Record => self.record().await.map(|()| 1),
            Scenario::Request => self.request().await.map(|()| 1),
            Scenario::Tasks => self.claim_and_complete().await,
            Scenario::Pgbench | Scenario::PgbenchRecord | Scenario::Memory => {
                Err("NotAGrpcScenario".to_string())
            }
        }
    }
}

pub(crate) fn code_label(status: tonic::Status) -> String {
    format!("{:?}", status.code())
}

pub(crate) fn verify_verdict(got: Verdict, want: Verdict) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err("WrongVerdict".to_string())
    }
}

pub(crate) async fn connect(addr: &str, connections: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("invalid --addr {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

pub(crate) async fn require_serving(channel: Channel) -> Result<(), String> {
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = health
        .check(request)
        .await
        .map_err(|s| format!("health check failed: {s}"))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("server is not SERVING (health status {other:?})")),
    }
}

/// Records the seeded decision for every subject, `concurrency` calls at a time.
/// Retries transient failures with the same request_id (safe: RecordConsent is idempotent).
pub(crate) async fn seed(
    channels: &[Channel],
    plan: Arc<Plan>,
    concurrency: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(plan.subjects).max(1))
        .map(|i| {
            let mut client = ConsentServiceClient::new(channels[i % channels.len()].clone());
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= plan.subjects {
                        return Ok::<(), String>(());
                    }
                    record_with_retry(&mut client, plan.record_request(n)).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| format!("seeding task panicked: {e}"))??;
    }
    Ok(())
}

pub(crate) async fn record_with_retry(
    client: &mut ConsentServiceClient<Channel>,
    request: RecordConsentRequest,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.record_consent(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) if attempt < 5 && is_transient(status.code()) => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(status) => {
                return Err(format!(
                    "seeding RecordConsent for {} failed: {:?}: {}",
                    request.subject_id,
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

pub(crate) fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted
    )
}
