//! All configuration in one place, layered: defaults, then an optional TOML
//! file, then `PRIVACY_RECORDS_*` environment variables (and `DATABASE_URL`),
//! then command-line flags. Secrets are wrapped so they never print.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A value that must never reach a log: Debug and Display print a redaction.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The effective settings of a `serve` or `migrate` run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where the embedded PostgreSQL keeps its cluster (unused with a database URL).
    pub data_dir: PathBuf,
    /// An existing PostgreSQL server; without it the embedded one is used.
    pub database_url: Option<Secret>,
    /// A streaming replica of the database for checks and lists (see
    /// crate::reads); without it every read goes to the primary.
    pub read_database_url: Option<Secret>,
    /// The most a replica may lag the primary and still answer reads.
    pub read_replica_max_lag: Duration,
    /// Directory of the PostgreSQL server binaries for the embedded database.
    pub pg_bin_dir: Option<PathBuf>,
    /// Apply migrations when `serve` starts.
    pub migrate_on_start: bool,
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `privacy_records=debug,info`.
    pub log_filter: String,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Pause between reporting NOT_SERVING and closing the listener, so load
    /// balancers stop sending new calls first.
    pub shutdown_delay: Duration,
    /// Calls handled at once; calls beyond it are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_calls: usize,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Connections open at once on the gRPC listener; a new one beyond is
    /// closed at once.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
    /// How long a new connection may take to send its first bytes and, under
    /// TLS, to finish its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in progress.
    pub idle_connection_timeout: Duration,
    /// How often an HTTP/2 ping checks that a connection's peer is there.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may wait for its answer before the connection closes.
    pub http2_keepalive_timeout: Duration,
    /// Connections in the database pool.
    pub db_max_connections: u32,
    /// How long a call waits for a pooled connection before UNAVAILABLE.
    pub db_acquire_timeout: Duration,
    /// How often the health monitor probes the database.
    pub health_interval: Duration,
    /// How often an idle watch stream polls the change feed.
    pub watch_poll_interval: Duration,
    /// How often an idle watch stream sends a heartbeat with a fresh token.
    pub watch_heartbeat: Duration,
    /// Subjects the consent decision cache keeps at most (0: no cache).
    pub cache_max_subjects: usize,
    /// How far behind PostgreSQL a check without a consistency token may be
    /// answered from the cache.
    pub cache_max_staleness: Duration,
    /// How often the cache's change-feed follower polls when nothing wakes it.
    pub cache_poll_interval: Duration,
    /// RecordConsent calls written in one shared commit at most (1: each
    /// call commits alone).
    pub write_batch_max: usize,
    /// Shared commits in progress at once.
    pub write_batch_workers: usize,
    /// How privacy requests are handled.
    pub requests: RequestSettings,
    /// Run the retention sweeper inside `serve`.
    pub retention_sweeper: bool,
    /// Pause between retention sweeps.
    pub retention_sweep_interval: Duration,
    /// Schedule entries per sweep transaction.
    pub retention_sweep_batch: i64,
    /// How long a request id is remembered (AIP-155); the sweeper deletes
    /// older ones, after which a retry runs as a new request.
    pub idempotency_key_ttl: Duration,
    /// How often the audit sealer links new events into the hash chain.
    pub audit_seal_interval: Duration,
    /// Refused calls of one peer for one reason are audited as one event
    /// per this interval: the first at once, the rest as a count when the
    /// interval ends (so a flood cannot fill the audit trail).
    pub refusal_audit_interval: Duration,
    /// Who may call, and how they prove it.
    pub security: SecuritySettings,
    /// An HTTP listener serving Prometheus metrics at `/metrics` (off when
    /// unset).
    pub metrics_listen: Option<SocketAddr>,
    /// How often the state gauges (open requests, queues, schedule, audit)
    /// are read from the database, with one statement.
    pub metrics_state_interval: Duration,
    // -- keys (personal data at rest; see crate::keys) --
    /// A keyring file (TOML: master keys, the active one, the lookup key).
    pub master_key_file: Option<PathBuf>,
    /// Master keys from the environment: `id:base64[,id:base64...]`, first active.
    pub master_key: Option<Secret>,
}

/// Transport security and caller authentication. With no `callers_file`
/// every call is allowed (the quick start, on loopback only).
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// PEM server certificate (chain); with `tls_key_file`, serve TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the server certificate.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA that signs client certificates (mutual TLS). Clients without a
    /// certificate may still connect and present a bearer token.
    pub tls_client_ca_file: Option<PathBuf>,
    /// TOML file of callers: their certificate names, token hashes and
    /// permissions. Set: every call but health and reflection must
    /// authenticate.
    pub callers_file: Option<PathBuf>,
    /// Serve beyond loopback without authentication or TLS (logged loudly).
    pub allow_insecure: bool,
    /// A second, plaintext listener serving only grpc.health.v1 (for
    /// Kubernetes gRPC probes, which do not speak TLS).
    pub health_listen: Option<SocketAddr>,
}

/// Settings of the privacy-request service.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Refuse (FAILED_PRECONDITION RIGHT_NOT_AVAILABLE) a request for a right
    /// the jurisdiction does not grant, instead of honouring it voluntarily.
    pub refuse_voluntary: bool,
    /// Accept authorized agents (with evidence of authority) where a statute
    /// has no agent provision at all (Iowa, Utah, Virginia, the GDPR): a
    /// voluntary choice of the organisation, not the law. Off by default:
    /// only what a statute provides for, and every type where no law applies.
    pub voluntary_agents: bool,
    /// The key of the keyed hash (HMAC-SHA-256) of subject identifiers, when
    /// it is not the keyring's `lookup_key` (see crate::keys).
    pub identifier_hash_key: Option<Secret>,
    /// Claims of a data-system task before it fails for good.
    pub task_max_attempts: u32,
    /// Offer an appeal where the jurisdiction's law gives none (US-CA,
    /// US-UT, the GDPR), as the seed policy does for any decision on a
    /// rights request: the organisation's deadline, marked voluntary, a
    /// regulator notice only where the law requires one. Off: such appeals
    /// are refused with APPEAL_NOT_ALLOWED.
    pub offer_voluntary_appeals: bool,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self {
            refuse_voluntary: false,
            voluntary_agents: false,
            identifier_hash_key: None,
            task_max_attempts: 5,
            offer_voluntary_appeals: true,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: crate::embedded_pg::default_data_dir(),
            database_url: None,
            read_database_url: None,
            read_replica_max_lag: Duration::from_secs(1),
            pg_bin_dir: None,
            migrate_on_start: true,
            log_format: LogFormat::Plain,
            log_filter: "info".into(),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
            max_concurrent_calls: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_connections: 1000,
            max_connections_per_peer: 100,
            handshake_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(300),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            db_max_connections: 32,
            db_acquire_timeout: Duration::from_secs(3),
            health_interval: Duration::from_secs(1),
            watch_poll_interval: Duration::from_millis(100),
            watch_heartbeat: Duration::from_secs(10),
            cache_max_subjects: 100_000,
            cache_max_staleness: Duration::from_secs(1),
            cache_poll_interval: Duration::from_millis(100),
            write_batch_max: 64,
            write_batch_workers: 2,
            requests: RequestSettings::default(),
            retention_sweeper: true,
            retention_sweep_interval: Duration::from_secs(60),
            retention_sweep_batch: 5000,
            idempotency_key_ttl: Duration::from_secs(7 * 24 * 3600),
            audit_seal_interval: Duration::from_secs(1),
            refusal_audit_interval: Duration::from_secs(10),
            security: SecuritySettings::default(),
            metrics_listen: None,
            metrics_state_interval: Duration::from_secs(15),
            master_key_file: None,
            master_key: None,
        }
    }
}

/// One layer of settings: every field optional, so layers can be merged.
/// The file and the environment use these names (env: upper case with the
/// `PRIVACY_RECORDS_` prefix).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<Secret>,
    pub read_database_url: Option<Secret>,
    pub read_replica_max_lag_ms: Option<u64>,
    pub pg_bin_dir: Option<PathBuf>,
    pub migrate_on_start: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
    pub shutdown_delay_ms: Option<u64>,
    pub max_concurrent_calls: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_connection_timeout_ms: Option<u64>,
    pub http2_keepalive_interval_ms: Option<u64>,
    pub http2_keepalive_timeout_ms: Option<u64>,
    pub db_max_connections: Option<u32>,
    pub db_acquire_timeout_ms: Option<u64>,
    pub health_interval_ms: Option<u64>,
    pub watch_poll_interval_ms: Option<u64>,
    pub watch_heartbeat_ms: Option<u64>,
    pub cache_max_subjects: Option<usize>,
    pub cache_max_staleness_ms: Option<u64>,
    pub cache_poll_interval_ms: Option<u64>,
    pub write_batch_max: Option<usize>,
    pub write_batch_workers: Option<usize>,
    pub refuse_voluntary_requests: Option<bool>,
    pub voluntary_agents: Option<bool>,
    pub identifier_hash_key: Option<Secret>,
    pub task_max_attempts: Option<u32>,
    pub offer_voluntary_appeals: Option<bool>,
    pub retention_sweeper: Option<bool>,
    pub retention_sweep_interval_ms: Option<u64>,
    pub retention_sweep_batch: Option<i64>,
    pub idempotency_key_ttl_secs: Option<u64>,
    pub audit_seal_interval_ms: Option<u64>,
    pub refusal_audit_interval_ms: Option<u64>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub callers_file: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
    pub health_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_state_interval_ms: Option<u64>,
    // -- keys --
    pub master_key_file: Option<PathBuf>,
    pub master_key: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid environment variable {name}: {reason}")]
    Env { name: String, reason: String },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

const ENV_PREFIX: &str = "PRIVACY_RECORDS_";

impl Layer {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Reads `PRIVACY_RECORDS_*` variables and `DATABASE_URL` through `get`
    /// (the process environment in production, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn parse<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: fmt::Display,
        {
            let name = format!("{ENV_PREFIX}{key}");
            match get(&name) {
                None => Ok(None),
                Some(raw) if raw.is_empty() => Ok(None),
                Some(raw) => raw.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
                    name,
                    reason: e.to_string(),
                }),
            }
        }
        let log_format = match get(&format!("{ENV_PREFIX}LOG_FORMAT")).as_deref() {
            None | Some("") => None,
            Some("plain") => Some(LogFormat::Plain),
            Some("json") => Some(LogFormat::Json),
            Some(other) => {
                return Err(ConfigError::Env {
                    name: format!("{ENV_PREFIX}LOG_FORMAT"),
                    reason: format!("{other:?} is not one of plain, json"),
                });
            }
        };
        let database_url = get(&format!("{ENV_PREFIX}DATABASE_URL"))
            .or_else(|| get("DATABASE_URL"))
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        Ok(Self {
            listen: parse(&get, "LISTEN")?,
            data_dir: parse(&get, "DATA_DIR")?,
            database_url,
            read_database_url: get(&format!("{ENV_PREFIX}READ_DATABASE_URL"))
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            read_replica_max_lag_ms: parse(&get, "READ_REPLICA_MAX_LAG_MS")?,
            pg_bin_dir: parse(&get, "PG_BIN_DIR")?,
            migrate_on_start: parse(&get, "MIGRATE_ON_START")?,
            log_format,
            log_filter: parse(&get, "LOG_FILTER")?,
            shutdown_grace_ms: parse(&get, "SHUTDOWN_GRACE_MS")?,
            shutdown_delay_ms: parse(&get, "SHUTDOWN_DELAY_MS")?,
            max_concurrent_calls: parse(&get, "MAX_CONCURRENT_CALLS")?,
            max_message_bytes: parse(&get, "MAX_MESSAGE_BYTES")?,
            max_connections: parse(&get, "MAX_CONNECTIONS")?,
            max_connections_per_peer: parse(&get, "MAX_CONNECTIONS_PER_PEER")?,
            handshake_timeout_ms: parse(&get, "HANDSHAKE_TIMEOUT_MS")?,
            idle_connection_timeout_ms: parse(&get, "IDLE_CONNECTION_TIMEOUT_MS")?,
            http2_keepalive_interval_ms: parse(&get, "HTTP2_KEEPALIVE_INTERVAL_MS")?,
            http2_keepalive_timeout_ms: parse(&get, "HTTP2_KEEPALIVE_TIMEOUT_MS")?,
            db_max_connections: parse(&get, "DB_MAX_CONNECTIONS")?,
            db_acquire_timeout_ms: parse(&get, "DB_ACQUIRE_TIMEOUT_MS")?,
            health_interval_ms: parse(&get, "HEALTH_INTERVAL_MS")?,
            watch_poll_interval_ms: parse(&get, "WATCH_POLL_INTERVAL_MS")?,
            watch_heartbeat_ms: parse(&get, "WATCH_HEARTBEAT_MS")?,
            cache_max_subjects: parse(&get, "CACHE_MAX_SUBJECTS")?,
            cache_max_staleness_ms: parse(&get, "CACHE_MAX_STALENESS_MS")?,
            cache_poll_interval_ms: parse(&get, "CACHE_POLL_INTERVAL_MS")?,
            write_batch_max: parse(&get, "WRITE_BATCH_MAX")?,
            write_batch_workers: parse(&get, "WRITE_BATCH_WORKERS")?,
            refuse_voluntary_requests: parse(&get, "REFUSE_VOLUNTARY_REQUESTS")?,
            voluntary_agents: parse(&get, "VOLUNTARY_AGENTS")?,
            identifier_hash_key: get(&format!("{ENV_PREFIX}IDENTIFIER_HASH_KEY"))
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            task_max_attempts: parse(&get, "TASK_MAX_ATTEMPTS")?,
            offer_voluntary_appeals: parse(&get, "OFFER_VOLUNTARY_APPEALS")?,
            retention_sweeper: parse(&get, "RETENTION_SWEEPER")?,
            retention_sweep_interval_ms: parse(&get, "RETENTION_SWEEP_INTERVAL_MS")?,
            retention_sweep_batch: parse(&get, "RETENTION_SWEEP_BATCH")?,
            idempotency_key_ttl_secs: parse(&get, "IDEMPOTENCY_KEY_TTL_SECS")?,
            audit_seal_interval_ms: parse(&get, "AUDIT_SEAL_INTERVAL_MS")?,
            refusal_audit_interval_ms: parse(&get, "REFUSAL_AUDIT_INTERVAL_MS")?,
            tls_cert_file: parse(&get, "TLS_CERT_FILE")?,
            tls_key_file: parse(&get, "TLS_KEY_FILE")?,
            tls_client_ca_file: parse(&get, "TLS_CLIENT_CA_FILE")?,
            callers_file: parse(&get, "CALLERS_FILE")?,
            allow_insecure: parse(&get, "ALLOW_INSECURE")?,
            health_listen: parse(&get, "HEALTH_LISTEN")?,
            metrics_listen: parse(&get, "METRICS_LISTEN")?,
            metrics_state_interval_ms: parse(&get, "METRICS_STATE_INTERVAL_MS")?,
            // -- keys --
            master_key_file: parse(&get, "MASTER_KEY_FILE")?,
            master_key: get(&format!("{ENV_PREFIX}MASTER_KEY"))
                .filter(|s| !s.is_empty())
                .map(Secret::new),
        })
    }
}

impl Settings {
    /// Applies a layer on top of these settings.
    pub fn apply(&mut self, layer: Layer) {
        let ms = Duration::from_millis;
        if let Some(v) = layer.listen {
            self.listen = v;
        }
        if let Some(v) = layer.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = layer.database_url {
            self.database_url = Some(v);
        }
        if let Some(v) = layer.read_database_url {
            self.read_database_url = Some(v);
        }
        if let Some(v) = layer.read_replica_max_lag_ms {
            self.read_replica_max_lag = ms(v);
        }
        if let Some(v) = layer.pg_bin_dir {
            self.pg_bin_dir = Some(v);
        }
        if let Some(v) = layer.migrate_on_start {
            self.migrate_on_start = v;
        }
        if let Some(v) = layer.log_format {
            self.log_format = v;
        }
        if let Some(v) = layer.log_filter {
            self.log_filter = v;
        }
        if let Some(v) = layer.shutdown_grace_ms {
            self.shutdown_grace = ms(v);
        }
        if let Some(v) = layer.shutdown_delay_ms {
            self.shutdown_delay = ms(v);
        }
        if let Some(v) = layer.max_concurrent_calls {
            self.max_concurrent_calls = v;
        }
        if let Some(v) = layer.max_message_bytes {
            self.max_message_bytes = v;
        }
        if let Some(v) = layer.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = layer.max_connections_per_peer {
            self.max_connections_per_peer = v;
        }
        if let Some(v) = layer.handshake_timeout_ms {
            self.handshake_timeout = ms(v);
        }
        if let Some(v) = layer.idle_connection_timeout_ms {
            self.idle_connection_timeout = ms(v);
        }
        if let Some(v) = layer.http2_keepalive_interval_ms {
            self.http2_keepalive_interval = ms(v);
        }
        if let Some(v) = layer.http2_keepalive_timeout_ms {
            self.http2_keepalive_timeout = ms(v);
        }
        if let Some(v) = layer.db_max_connections {
            self.db_max_connections = v;
        }
        if let Some(v) = layer.db_acquire_timeout_ms {
            self.db_acquire_timeout = ms(v);
        }
        if let Some(v) = layer.health_interval_ms {
            self.health_interval = ms(v);
        }
        if let Some(v) = layer.watch_poll_interval_ms {
            self.watch_poll_interval = ms(v);
        }
        if let Some(v) = layer.watch_heartbeat_ms {
            self.watch_heartbeat = ms(v);
        }
        if let Some(v) = layer.cache_max_subjects {
            self.cache_max_subjects = v;
        }
        if let Some(v) = layer.write_batch_max {
            self.write_batch_max = v;
        }
        if let Some(v) = layer.write_batch_workers {
            self.write_batch_workers = v;
        }
        if let Some(v) = layer.cache_max_staleness_ms {
            self.cache_max_staleness = ms(v);
        }
        if let Some(v) = layer.cache_poll_interval_ms {
            self.cache_poll_interval = ms(v);
        }
        if let Some(v) = layer.refuse_voluntary_requests {
            self.requests.refuse_voluntary = v;
        }
        if let Some(v) = layer.voluntary_agents {
            self.requests.voluntary_agents = v;
        }
        if let Some(v) = layer.identifier_hash_key {
            self.requests.identifier_hash_key = Some(v);
        }
        if let Some(v) = layer.task_max_attempts {
            self.requests.task_max_attempts = v;
        }
        if let Some(v) = layer.offer_voluntary_appeals {
            self.requests.offer_voluntary_appeals = v;
        }
        if let Some(v) = layer.retention_sweeper {
            self.retention_sweeper = v;
        }
        if let Some(v) = layer.retention_sweep_interval_ms {
            self.retention_sweep_interval = ms(v);
        }
        if let Some(v) = layer.retention_sweep_batch {
            self.retention_sweep_batch = v;
        }
        if let Some(v) = layer.idempotency_key_ttl_secs {
            self.idempotency_key_ttl = Duration::from_secs(v);
        }
        if let Some(v) = layer.audit_seal_interval_ms {
            self.audit_seal_interval = ms(v);
        }
        if let Some(v) = layer.refusal_audit_interval_ms {
            self.refusal_audit_interval = ms(v);
        }
        let security = &mut self.security;
        for (slot, value) in [
            (&mut security.tls_cert_file, layer.tls_cert_file),
            (&mut security.tls_key_file, layer.tls_key_file),
            (&mut security.tls_client_ca_file, layer.tls_client_ca_file),
            (&mut security.callers_file, layer.callers_file),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        if let Some(v) = layer.allow_insecure {
            security.allow_insecure = v;
        }
        if let Some(v) = layer.health_listen {
            security.health_listen = Some(v);
        }
        if let Some(v) = layer.metrics_listen {
            self.metrics_listen = Some(v);
        }
        if let Some(v) = layer.metrics_state_interval_ms {
            self.metrics_state_interval = ms(v);
        }
        // -- keys --
        if let Some(v) = layer.master_key_file {
            self.master_key_file = Some(v);
        }
        if let Some(v) = layer.master_key {
            self.master_key = Some(v);
        }
    }

    /// Defaults < file < environment < flags.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: Layer,
    ) -> Result<Self, ConfigError> {
        let mut settings = Settings::default();
        let file = file.map(Path::to_owned).or_else(|| {
            env(&format!("{ENV_PREFIX}CONFIG"))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        if let Some(path) = file {
            settings.apply(Layer::from_file(&path)?);
        }
        settings.apply(Layer::from_env(env)?);
        settings.apply(flags);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("max_concurrent_calls", self.max_concurrent_calls as u64)?;
        positive(
            "task_max_attempts",
            u64::from(self.requests.task_max_attempts),
        )?;
        positive("max_message_bytes", self.max_message_bytes as u64)?;
        positive("db_max_connections", u64::from(self.db_max_connections))?;
        positive("max_connections", self.max_connections as u64)?;
        positive(
            "max_connections_per_peer",
            self.max_connections_per_peer as u64,
        )?;
        for (name, value) in [
            ("handshake_timeout_ms", self.handshake_timeout),
            ("idle_connection_timeout_ms", self.idle_connection_timeout),
            ("http2_keepalive_interval_ms", self.http2_keepalive_interval),
            ("http2_keepalive_timeout_ms", self.http2_keepalive_timeout),
        ] {
            positive(name, value.as_millis() as u64)?;
        }
        positive("write_batch_max", self.write_batch_max as u64)?;
        positive("write_batch_workers", self.write_batch_workers as u64)?;
        positive(
            "read_replica_max_lag_ms",
            self.read_replica_max_lag.as_millis() as u64,
        )?;
        positive(
            "health_interval_ms",
            self.health_interval.as_millis() as u64,
        )?;
        positive(
            "watch_poll_interval_ms",
            self.watch_poll_interval.as_millis() as u64,
        )?;
        positive(
            "watch_heartbeat_ms",
            self.watch_heartbeat.as_millis() as u64,
        )?;
        positive(
            "cache_poll_interval_ms",
            self.cache_poll_interval.as_millis() as u64,
        )?;
        positive(
            "refusal_audit_interval_ms",
            self.refusal_audit_interval.as_millis() as u64,
        )?;
        let security = &self.security;
        if security.tls_cert_file.is_some() != security.tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                name: "tls_cert_file",
                reason: "tls_cert_file and tls_key_file go together".into(),
            });
        }
        if security.tls_client_ca_file.is_some() && security.tls_cert_file.is_none() {
            return Err(ConfigError::Invalid {
                name: "tls_client_ca_file",
                reason: "client certificates need TLS: set tls_cert_file and tls_key_file".into(),
            });
        }
        if security.tls_client_ca_file.is_some() && security.callers_file.is_none() {
            return Err(ConfigError::Invalid {
                name: "tls_client_ca_file",
                reason:
                    "client certificates name callers: set callers_file to say what each may call"
                        .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flags_beat_environment_which_beats_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nmax_concurrent_calls = 7\nlog_filter = \"warn\"\n",
        )
        .unwrap();
        let flags = Layer {
            listen: Some("127.0.0.1:3".parse().unwrap()),
            ..Layer::default()
        };
        let s = Settings::load(
            Some(&file),
            env(&[
                ("PRIVACY_RECORDS_LISTEN", "127.0.0.1:2"),
                ("PRIVACY_RECORDS_MAX_CONCURRENT_CALLS", "9"),
            ]),
            flags,
        )
        .unwrap();
        assert_eq!(s.listen.port(), 3);
        assert_eq!(s.max_concurrent_calls, 9);
        assert_eq!(s.log_filter, "warn");
        assert_eq!(s.db_max_connections, Settings::default().db_max_connections);
    }

    #[test]
    fn the_database_url_never_prints() {
        let s = Settings::load(
            None,
            env(&[("DATABASE_URL", "postgres://u:hunter2@h/db")]),
            Layer::default(),
        )
        .unwrap();
        assert_eq!(
            s.database_url.as_ref().unwrap().expose(),
            "postgres://u:hunter2@h/db"
        );
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let err = Settings::load(
            None,
            env(&[("PRIVACY_RECORDS_MAX_CONCURRENT_CALLS", "many")]),
            Layer::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("PRIVACY_RECORDS_MAX_CONCURRENT_CALLS")
        );
    }

    #[test]
    fn a_write_batch_of_zero_is_refused_by_name() {
        let err = Settings::load(
            None,
            env(&[("PRIVACY_RECORDS_WRITE_BATCH_MAX", "0")]),
            Layer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("write_batch_max"), "{err}");
        let s = Settings::load(
            None,
            env(&[("PRIVACY_RECORDS_WRITE_BATCH_WORKERS", "3")]),
            Layer::default(),
        )
        .unwrap();
        assert_eq!((s.write_batch_max, s.write_batch_workers), (64, 3));
    }

    #[test]
    fn voluntary_appeals_are_offered_unless_turned_off() {
        let s = Settings::load(None, env(&[]), Layer::default()).unwrap();
        assert!(s.requests.offer_voluntary_appeals);
        let s = Settings::load(
            None,
            env(&[("PRIVACY_RECORDS_OFFER_VOLUNTARY_APPEALS", "false")]),
            Layer::default(),
        )
        .unwrap();
        assert!(!s.requests.offer_voluntary_appeals);
    }

    #[test]
    fn connection_limits_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "max_connections = 50\nhandshake_timeout_ms = 2500\nidle_connection_timeout_ms = 60000\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[
                ("PRIVACY_RECORDS_MAX_CONNECTIONS_PER_PEER", "5"),
                ("PRIVACY_RECORDS_HTTP2_KEEPALIVE_INTERVAL_MS", "15000"),
                ("PRIVACY_RECORDS_HTTP2_KEEPALIVE_TIMEOUT_MS", "5000"),
            ]),
            Layer::default(),
        )
        .unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_peer), (50, 5));
        assert_eq!(s.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(s.idle_connection_timeout, Duration::from_secs(60));
        assert_eq!(s.http2_keepalive_interval, Duration::from_secs(15));
        assert_eq!(s.http2_keepalive_timeout, Duration::from_secs(5));
        let err = Settings::load(
            None,
            env(&[("PRIVACY_RECORDS_HANDSHAKE_TIMEOUT_MS", "0")]),
            Layer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("handshake_timeout_ms"), "{err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lsiten = \"127.0.0.1:1\"\n").unwrap();
        assert!(Settings::load(Some(&file), env(&[]), Layer::default()).is_err());
    }
}
