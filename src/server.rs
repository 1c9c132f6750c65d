//! The gRPC server: binds the listener (port 0 works, for tests), wires
//! health, reflection and the services behind the middleware, migrates in the
//! background, and shuts down gracefully.
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::audit::grpc::AuditApi;
use crate::config::Settings;
use crate::consent::grpc::{ConsentApi, WatchSettings};
use crate::datasystems::grpc::DataSystemApi;
use crate::middleware::RpcLayer;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::consent_service_server::ConsentServiceServer;
use crate::proto::data_system_service_server::DataSystemServiceServer;
use crate::proto::privacy_request_service_server::PrivacyRequestServiceServer;
use crate::proto::retention_service_server::RetentionServiceServer;
use crate::requests::grpc::PrivacyRequestApi;
use crate::retention::grpc::RetentionApi;
use crate::retention::sweeper::{self, SweepSettings};

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    pool: PgPool,
    settings: Settings,
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
}

impl Application {
    /// Binds the listen address; read the real port back with `local_addr`.
    pub async fn build(settings: Settings, pool: PgPool) -> Result<Self, ServeError> {
        // A broken rules table must stop the server before it takes traffic.
        let rules = crate::rules::table()?;
        tracing::info!(version = rules.version(), "jurisdiction rules loaded");
        let addr = settings.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            pool,
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
            pool,
            settings,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        crate::health::set_all(&reporter, ServingStatus::NotServing).await;

        let (stop_tx, stop_rx) = watch::channel(false);
        if settings.migrate_on_start {
            tokio::spawn(migrate_until_done(pool.clone(), stop_rx.clone()));
        }
        let monitor = tokio::spawn(crate::health::monitor(
            reporter.clone(),
            pool.clone(),
            settings.health_interval,
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

        let limit = settings.max_message_bytes;
        let consent = ConsentServiceServer::new(ConsentApi::new(
            pool.clone(),
            WatchSettings {
                poll_interval: settings.watch_poll_interval,
                heartbeat: settings.watch_heartbeat,
            },
            stop_rx.clone(),
            settings.keys.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let requests = PrivacyRequestServiceServer::new(PrivacyRequestApi::new(
            pool.clone(),
            settings.requests.clone(),
            settings.keys.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let data_systems =
            DataSystemServiceServer::new(DataSystemApi::new(pool.clone(), settings.keys.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);

        let sweep = SweepSettings {
            interval: settings.retention_sweep_interval,
            batch: settings.retention_sweep_batch,
            task_max_attempts: i32::try_from(settings.requests.task_max_attempts)
                .unwrap_or(i32::MAX),
            idempotency_key_ttl: settings.idempotency_key_ttl,
        };
        let sweeper = settings
            .retention_sweeper
            .then(|| tokio::spawn(sweeper::run(pool.clone(), sweep, stop_rx.clone())));
        let retention = RetentionServiceServer::new(RetentionApi::new(
            pool.clone(),
            sweep,
            settings.keys.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let sealer = tokio::spawn(crate::audit::sealer::run(
            pool.clone(),
            settings.audit_seal_interval,
            5000,
            stop_rx.clone(),
        ));
        let audit = AuditServiceServer::new(AuditApi::new(pool.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
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

        tracing::info!(%local_addr, "serving gRPC");
        let server = Server::builder()
            .layer(RpcLayer::new(settings.max_concurrent_calls))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
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
        let _ = monitor.await;
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        let _ = sealer.await;
        pool.close().await;
        tracing::info!("server stopped");
        outcome
    }
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
