//! The gRPC server: binds the listener (port 0 works, for tests), wires
//! health, reflection and the services behind the middleware, migrates in the
//! background, and shuts down gracefully.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::audit::grpc::AuditApi;
use crate::auth::refusals::RefusalAudit;
use crate::auth::{Authenticator, Callers};
use crate::config::Settings;
use crate::connections::{Admission, ConnectionLimits};
use crate::consent::cache::{CacheSettings, DecisionCache};
use crate::consent::group_commit::Batching;
use crate::consent::grpc::{ConsentApi, WatchSettings};
use crate::datasystems::grpc::DataSystemApi;
use crate::keys::Keyring;
use crate::metrics::{CacheReading, Metrics};
use crate::middleware::RpcLayer;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::consent_service_server::ConsentServiceServer;
use crate::proto::data_system_service_server::DataSystemServiceServer;
use crate::proto::privacy_request_service_server::PrivacyRequestServiceServer;
use crate::proto::retention_service_server::RetentionServiceServer;
use crate::reads::Reads;
use crate::requests::grpc::PrivacyRequestApi;
use crate::retention::grpc::RetentionApi;
use crate::retention::sweeper::{self, SweepSettings};
use crate::transport::Unvectored;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The plaintext health-only listener, when configured.
    health_listener: Option<TcpListener>,
    /// The Prometheus `/metrics` listener, when configured.
    metrics_listener: Option<TcpListener>,
    metrics: Metrics,
    pool: PgPool,
    /// Where checks and lists go (the primary, or a fresh enough replica).
    reads: Reads,
    settings: Settings,
    /// The master keys and the identifier lookup key, resolved before the
    /// server is built (`keys::resolve`).
    keys: Keyring,
    auth: Option<Arc<Authenticator>>,
    tls: Option<ServerTlsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the embedded jurisdiction rules table is invalid: {0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error(transparent)]
    Callers(#[from] crate::auth::CallersError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::auth::tls::TlsFileError),
    /// The certificate and key cannot serve TLS together (checked before
    /// serving, so the server never says it serves and then stops).
    #[error("TLS: cannot serve {} with {}: {reason}", cert.display(), key.display())]
    TlsPair {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        reason: String,
    },
    #[error("read_database_url: {0}")]
    ReadDatabase(sqlx::Error),
    /// Safe by default: no unauthenticated or clear-text service beyond
    /// loopback unless explicitly asked for.
    #[error("refusing to serve on {addr}: {reason}")]
    Insecure {
        addr: SocketAddr,
        reason: &'static str,
    },
}

/// Refuses a listener beyond loopback that would take calls without
/// authentication, or bearer tokens in clear text, unless `allow_insecure`
/// (then says so in the log).
pub fn check_exposure(settings: &Settings) -> Result<(), ServeError> {
    let security = &settings.security;
    let addr = settings.listen;
    let problem = if addr.ip().is_loopback() {
        None
    } else if security.callers_file.is_none() {
        Some("no authentication is configured (set callers_file)")
    } else if security.tls_cert_file.is_none() {
        Some(
            "bearer tokens would cross the network in clear text (set tls_cert_file and tls_key_file)",
        )
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(reason) if security.allow_insecure => {
            tracing::warn!(%addr, reason, "INSECURE: serving anyway because allow_insecure is set");
            Ok(())
        }
        Some(reason) => Err(ServeError::Insecure { addr, reason }),
    }
}

impl Application {
    /// Binds the listen address; read the real port back with `local_addr`.
    pub async fn build(
        settings: Settings,
        pool: PgPool,
        keys: Keyring,
    ) -> Result<Self, ServeError> {
        // A broken rules table must stop the server before it takes traffic.
        let rules = crate::rules::table()?;
        tracing::info!(version = rules.version(), "jurisdiction rules loaded");
        check_exposure(&settings)?;
        let auth = match &settings.security.callers_file {
            Some(path) => {
                let callers = Callers::load(path)?;
                tracing::info!(path = %path.display(), "callers must authenticate");
                Some(Arc::new(Authenticator::new(callers)))
            }
            None => {
                tracing::warn!("no callers_file: every call is allowed (loopback only)");
                None
            }
        };
        let tls = crate::auth::tls::server_config(&settings.security)?;
        if let Some(config) = &tls {
            check_tls_pair(config, &settings.security)?;
        }
        let health_listener = match settings.security.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let addr = settings.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let reads = match &settings.read_database_url {
            Some(url) => {
                let replica =
                    crate::db::pool(url.expose(), &settings).map_err(ServeError::ReadDatabase)?;
                tracing::info!(max_lag = ?settings.read_replica_max_lag, "checks and lists may read from the replica");
                Reads::with_replica(pool.clone(), replica, settings.read_replica_max_lag)
            }
            None => Reads::primary_only(pool.clone()),
        };
        Ok(Self {
            listener,
            local_addr,
            health_listener,
            metrics_listener,
            metrics: Metrics::new(),
            pool,
            reads,
            settings,
            keys,
            auth,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How reads are routed (shares its counters with the running server).
    pub fn reads(&self) -> Reads {
        self.reads.clone()
    }

    /// The address of the plaintext health-only listener, if any.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address of the Prometheus `/metrics` listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The server's metrics (shared with the running server).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, wait the
    /// configured delay, stop accepting, let calls in flight finish within
    /// the grace period, stop background jobs.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Application {
            listener,
            local_addr,
            health_listener,
            metrics_listener,
            metrics,
            pool,
            reads,
            settings,
            keys,
            auth,
            tls,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        crate::health::set_all(&reporter, ServingStatus::NotServing).await;

        let (stop_tx, stop_rx) = watch::channel(false);
        if settings.migrate_on_start {
            tokio::spawn(migrate_until_done(pool.clone(), stop_rx.clone()));
        }
        let (ready_tx, ready_rx) = watch::channel(false);
        let monitor = tokio::spawn(crate::health::monitor(
            reporter.clone(),
            pool.clone(),
            settings.health_interval,
            ready_tx,
            stop_rx.clone(),
        ));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can show ErrorInfo reasons.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("privacy.v1.ConsentService")
                .with_service_name("privacy.v1.PrivacyRequestService")
                .with_service_name("privacy.v1.DataSystemService")
                .with_service_name("privacy.v1.RetentionService")
                .with_service_name("privacy.v1.AuditService")
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let cache = DecisionCache::new(CacheSettings {
            max_subjects: settings.cache_max_subjects,
            max_staleness: settings.cache_max_staleness,
            poll_interval: settings.cache_poll_interval,
        });
        metrics.cache().watch({
            let cache = cache.clone();
            move || {
                let stats = cache.stats();
                CacheReading {
                    entries: u64::try_from(stats.subjects).unwrap_or(u64::MAX),
                    hits: stats.hits,
                    loads: stats.loads,
                    passes: stats.passes,
                    staleness: cache.staleness(),
                }
            }
        });
        let follower = tokio::spawn(cache.clone().follow(pool.clone(), stop_rx.clone()));
        let notifier = tokio::spawn(crate::consent::cache::notify_others(
            pool.clone(),
            stop_rx.clone(),
        ));

        let limit = settings.max_message_bytes;
        let replica_probe = tokio::spawn(reads.clone().probe(stop_rx.clone()));
        let consent = ConsentServiceServer::new(ConsentApi::new(
            reads.clone(),
            WatchSettings {
                poll_interval: settings.watch_poll_interval,
                heartbeat: settings.watch_heartbeat,
            },
            stop_rx.clone(),
            keys.clone(),
            cache,
            Batching {
                max: settings.write_batch_max,
                workers: settings.write_batch_workers,
            },
            metrics.decisions().clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let requests = PrivacyRequestServiceServer::new(PrivacyRequestApi::new(
            reads.clone(),
            settings.requests.clone(),
            keys.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let data_systems =
            DataSystemServiceServer::new(DataSystemApi::new(reads.clone(), keys.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);

        let sweep = SweepSettings {
            interval: settings.retention_sweep_interval,
            batch: settings.retention_sweep_batch,
            task_max_attempts: i32::try_from(settings.requests.task_max_attempts)
                .unwrap_or(i32::MAX),
            idempotency_key_ttl: settings.idempotency_key_ttl,
        };
        let sweeper = settings.retention_sweeper.then(|| {
            tokio::spawn(sweeper::run(
                pool.clone(),
                sweep,
                metrics.sweeps().clone(),
                stop_rx.clone(),
            ))
        });
        let retention =
            RetentionServiceServer::new(RetentionApi::new(reads.clone(), sweep, keys.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);

        let sealer = tokio::spawn(crate::audit::sealer::run(
            pool.clone(),
            keys.clone(),
            settings.audit_seal_interval,
            5000,
            stop_rx.clone(),
        ));
        // Refusals at the door, aggregated; its counts are written until
        // the server has stopped taking calls.
        let refusals = Arc::new(RefusalAudit::new(
            pool.clone(),
            settings.refusal_audit_interval,
        ));
        let (refusals_stop_tx, refusals_stop_rx) = watch::channel(false);
        let refusal_counter = tokio::spawn(refusals.clone().run(refusals_stop_rx));
        let audit = AuditServiceServer::new(AuditApi::new(
            reads.clone(),
            keys.clone(),
            metrics.verifications().clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        // Connections beyond the caps are closed at once; admitted ones close
        // themselves when late or idle (see `connections`). Small answers of
        // a burst share a write (see `transport`).
        let admission = Admission::new(ConnectionLimits {
            max_connections: settings.max_connections,
            max_connections_per_peer: settings.max_connections_per_peer,
            handshake_timeout: settings.handshake_timeout,
            idle_timeout: settings.idle_connection_timeout,
        });
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .filter_map(move |conn| match conn {
                Ok(stream) => admission.admit(stream).map(|c| Ok(Unvectored(c))),
                Err(e) => Some(Err(e)),
            });
        let (begin_tx, mut begin_rx) = watch::channel(false);
        let reporter_for_stop = reporter.clone();
        let delay = settings.shutdown_delay;
        let signal = async move {
            shutdown.await;
            tracing::info!("shutdown requested; health NOT_SERVING");
            crate::health::set_all(&reporter_for_stop, ServingStatus::NotServing).await;
            let _ = begin_tx.send(true);
            // Background jobs and watch streams stop at a safe point.
            let _ = stop_tx.send(true);
            tokio::time::sleep(delay).await;
        };

        if let Some(listener) = health_listener {
            let health_only = health_service.clone();
            // Reflection of the health service alone, so grpcurl works here too.
            let probe_reflection = || {
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .with_service_name("grpc.health.v1.Health")
            };
            let probe_reflection_v1 = probe_reflection().build_v1()?;
            let probe_reflection_v1alpha = probe_reflection().build_v1alpha()?;
            let mut stopped = stop_rx.clone();
            // Capped and timed out like the main listener (see `connections`):
            // probes must keep answering through a flood of idle connections.
            let probe_admission = Admission::new(ConnectionLimits {
                max_connections: crate::connections::HEALTH_MAX_CONNECTIONS,
                max_connections_per_peer: crate::connections::HEALTH_MAX_CONNECTIONS_PER_PEER,
                handshake_timeout: settings.handshake_timeout,
                idle_timeout: settings.idle_connection_timeout,
            });
            let keepalive = (
                settings.http2_keepalive_interval,
                settings.http2_keepalive_timeout,
            );
            tokio::spawn(async move {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .filter_map(move |conn| match conn {
                        Ok(stream) => probe_admission.admit(stream).map(Ok),
                        Err(e) => Some(Err(e)),
                    });
                let result = Server::builder()
                    .layer(crate::connections::MarkCallsLayer)
                    .http2_keepalive_interval(Some(keepalive.0))
                    .http2_keepalive_timeout(Some(keepalive.1))
                    .add_service(health_only)
                    .add_service(probe_reflection_v1)
                    .add_service(probe_reflection_v1alpha)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "the health listener failed");
                }
            });
        }

        // The state gauges are sampled only where someone can read them.
        let state_sampler = metrics_listener.as_ref().map(|_| {
            tokio::spawn(metrics.state().clone().run(
                reads.clone(),
                ready_rx.clone(),
                settings.metrics_state_interval,
                stop_rx.clone(),
            ))
        });
        let metrics_server = metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                ConnectionLimits {
                    max_connections: crate::connections::HEALTH_MAX_CONNECTIONS,
                    max_connections_per_peer: crate::connections::HEALTH_MAX_CONNECTIONS_PER_PEER,
                    handshake_timeout: settings.handshake_timeout,
                    idle_timeout: settings.idle_connection_timeout,
                },
                stop_rx.clone(),
            ))
        });

        tracing::info!(%local_addr, tls = tls.is_some(), "serving gRPC");
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls.timeout(settings.handshake_timeout))?;
        }
        let server = builder
            .layer(
                RpcLayer::new(settings.max_concurrent_calls, auth, pool.clone(), ready_rx)
                    .with_refusal_audit(refusals)
                    .with_metrics(metrics.grpc().clone()),
            )
            .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(consent)
            .add_service(requests)
            .add_service(data_systems)
            .add_service(retention)
            .add_service(audit)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);

        let grace = settings.shutdown_grace;
        let outcome = tokio::select! {
            result = &mut server => result.map_err(ServeError::from),
            _ = async {
                let _ = begin_rx.wait_for(|begun| *begun).await;
                tokio::time::sleep(delay + grace).await;
            } => {
                tracing::warn!(?grace, "grace period over; cutting off the calls still in flight");
                Ok(())
            }
        };
        let _ = refusals_stop_tx.send(true);
        let _ = refusal_counter.await;
        let _ = monitor.await;
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        let _ = sealer.await;
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        if let Some(state_sampler) = state_sampler {
            let _ = state_sampler.await;
        }
        let _ = follower.await;
        let _ = notifier.await;
        let _ = replica_probe.await;
        reads.close().await;
        tracing::info!("server stopped");
        outcome
    }
}

/// Builds the TLS acceptor once before serving: tonic builds it only when
/// the server starts, and then reports a wrong key as "transport error".
fn check_tls_pair(
    config: &ServerTlsConfig,
    security: &crate::config::SecuritySettings,
) -> Result<(), ServeError> {
    let Err(e) = Server::builder().tls_config(config.clone()) else {
        return Ok(());
    };
    // The cause chain, as text and as the rustls error's own name.
    let mut text = Vec::new();
    let mut mismatch = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(error) = cause {
        mismatch |= format!("{error:?}").contains("KeyMismatch");
        text.push(error.to_string());
        cause = error.source();
    }
    let reason = if mismatch {
        "the private key does not match the certificate's public key".to_owned()
    } else {
        text.join(": ")
    };
    Err(ServeError::TlsPair {
        cert: security.tls_cert_file.clone().unwrap_or_default(),
        key: security.tls_key_file.clone().unwrap_or_default(),
        reason,
    })
}

/// Applies migrations, retrying while the database is away, until they
/// succeed or the server stops.
async fn migrate_until_done(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match crate::db::migrate(&pool).await {
            Ok(()) => {
                tracing::info!(version = crate::db::head_version(), "schema at head");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "migration failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
