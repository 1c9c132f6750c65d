//! The command line: `serve` and `migrate`, and the database each of them
//! uses (an existing server from `DATABASE_URL`, or the embedded one).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sqlx::{Connection, PgConnection};

use crate::config::{Layer, LogFormat, Secret, Settings};
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPgError, EmbeddedPostgres, Supervision};

/// privacy-records: consent, privacy requests, retention and audit, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "privacy-records", version)]
pub struct Cli {
    /// A TOML file of settings (also PRIVACY_RECORDS_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Make a bearer token for a caller: prints the token (hand it to the
    /// caller's secret store) and its hash (for the callers file).
    NewToken,
    /// Re-wrap every subject data key under the active master key (in
    /// batches, resumable); optionally generate a new active master key first.
    RotateKey(RotateKeyArgs),
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Add a freshly generated master key to the keyring file and make it
    /// active (the old keys stay until you remove them).
    #[arg(long)]
    pub new_master_key: bool,
    /// Data keys re-wrapped per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: i64,
}

#[derive(Debug, Default, Args)]
pub struct DatabaseArgs {
    /// Where the embedded PostgreSQL keeps its data (ignored with DATABASE_URL).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of the PostgreSQL server binaries for the embedded database.
    #[arg(long)]
    pub pg_bin_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The keyring file (master keys; also PRIVACY_RECORDS_MASTER_KEY_FILE).
    #[arg(long)]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Do not apply migrations at start (health stays NOT_SERVING until the
    /// schema is at head).
    #[arg(long)]
    pub no_migrate: bool,
    /// A streaming replica for checks and lists when it is fresh enough
    /// (also PRIVACY_RECORDS_READ_DATABASE_URL, better for a URL holding a
    /// password: command lines are visible to other local users).
    #[arg(long)]
    pub read_database_url: Option<String>,
    /// Milliseconds calls in flight may take to finish after SIGTERM.
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// Calls handled at once before shedding with RESOURCE_EXHAUSTED.
    #[arg(long)]
    pub max_concurrent_calls: Option<usize>,
    /// Subjects the consent decision cache keeps at most (0: no cache).
    #[arg(long)]
    pub cache_max_subjects: Option<usize>,
    /// Connections open at once on the gRPC listener (beyond: closed at once).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections open at once from one peer address.
    #[arg(long)]
    pub max_connections_per_peer: Option<usize>,
    /// Milliseconds a new connection may take to send its first bytes and
    /// finish its TLS handshake.
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds a connection may stay open with no call in progress.
    #[arg(long)]
    pub idle_connection_timeout_ms: Option<u64>,
    /// Milliseconds between HTTP/2 pings to each connection's peer.
    #[arg(long)]
    pub http2_keepalive_interval_ms: Option<u64>,
    /// Milliseconds a ping may wait for its answer before the connection closes.
    #[arg(long)]
    pub http2_keepalive_timeout_ms: Option<u64>,
    /// Milliseconds over which repeated refusals of one peer for one
    /// reason are audited as one event with a count.
    #[arg(long)]
    pub refusal_audit_interval_ms: Option<u64>,
    /// Serve beyond loopback without authentication or TLS (not for
    /// production; logged as INSECURE).
    #[arg(long)]
    pub allow_insecure: bool,
    /// An HTTP address serving Prometheus metrics at /metrics, e.g.
    /// 0.0.0.0:9090 (also PRIVACY_RECORDS_METRICS_LISTEN; off when unset).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The name of the database the service uses inside the embedded cluster.
const EMBEDDED_DATABASE: &str = "privacy_records";

impl Cli {
    fn layer(&self) -> Layer {
        let no_database = DatabaseArgs::default();
        let db = match &self.command {
            Command::Serve(s) => &s.database,
            Command::Migrate(d) => d,
            Command::NewToken => &no_database,
            Command::RotateKey(r) => &r.database,
        };
        let mut layer = Layer {
            data_dir: db.data_dir.clone(),
            pg_bin_dir: db.pg_bin_dir.clone(),
            log_format: db.log_format,
            master_key_file: db.master_key_file.clone(),
            ..Layer::default()
        };
        if let Command::Serve(s) = &self.command {
            layer.listen = s.listen;
            layer.migrate_on_start = s.no_migrate.then_some(false);
            layer.read_database_url = s.read_database_url.clone().map(Secret::new);
            layer.shutdown_grace_ms = s.shutdown_grace_ms;
            layer.max_concurrent_calls = s.max_concurrent_calls;
            layer.cache_max_subjects = s.cache_max_subjects;
            layer.max_connections = s.max_connections;
            layer.max_connections_per_peer = s.max_connections_per_peer;
            layer.handshake_timeout_ms = s.handshake_timeout_ms;
            layer.idle_connection_timeout_ms = s.idle_connection_timeout_ms;
            layer.http2_keepalive_interval_ms = s.http2_keepalive_interval_ms;
            layer.http2_keepalive_timeout_ms = s.http2_keepalive_timeout_ms;
            layer.allow_insecure = s.allow_insecure.then_some(true);
            layer.refusal_audit_interval_ms = s.refusal_audit_interval_ms;
            layer.metrics_listen = s.metrics_listen;
        }
        layer
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the command; the embedded database, if started, is stopped whatever
/// the outcome.
pub async fn run(cli: Cli) -> Result<(), BoxError> {
    if let Command::NewToken = cli.command {
        return new_token();
    }
    let settings = Settings::load(
        cli.config.as_deref(),
        |k| std::env::var(k).ok(),
        cli.layer(),
    )?;
    crate::telemetry::init(settings.log_format, &settings.log_filter);
    tracing::debug!(?settings, "effective settings");
    if let Command::Serve(_) = cli.command {
        // Before the embedded database starts: a refusal should be quick.
        crate::server::check_exposure(&settings)?;
    }

    let (url, embedded) = match &settings.database_url {
        Some(url) => (url.expose().to_owned(), None),
        None => {
            let pg = EmbeddedPostgres::start(EmbeddedOptions {
                data_dir: settings.data_dir.clone(),
                bin_dir: settings.pg_bin_dir.clone(),
                port: 5432,
            })
            .await?;
            let url = pg.database_url(EMBEDDED_DATABASE);
            // No password in it (local socket, trust): tools such as the bench's
            // pgbench and memory scenarios can be pointed at the same database.
            tracing::info!(database_url = %url, "embedded PostgreSQL database URL");
            (url, Some(pg))
        }
    };
    let outcome = async {
        if let Some(pg) = &embedded {
            ensure_database(&pg.database_url("postgres"), EMBEDDED_DATABASE).await?;
        }
        match cli.command {
            Command::Serve(_) => serve(settings, &url, embedded.as_ref()).await,
            Command::Migrate(_) => migrate(&settings, &url).await,
            Command::NewToken => unreachable!("handled before the database starts"),
            Command::RotateKey(args) => rotate_key(settings, &url, &args).await,
        }
    }
    .await;
    if let Some(pg) = embedded
        && let Err(e) = pg.stop().await
    {
        tracing::error!(error = %e, "could not stop the embedded PostgreSQL");
    }
    outcome
}

/// Serves until SIGTERM or SIGINT. An embedded PostgreSQL that dies under
/// the server is started again (the listener, health and callers stay;
/// health says NOT_SERVING meanwhile); when it cannot be, the server stops
/// and the process exits non-zero so that its supervisor steps in.
async fn serve(
    settings: Settings,
    url: &str,
    embedded: Option<&EmbeddedPostgres>,
) -> Result<(), BoxError> {
    let pool = crate::db::pool(url, &settings)?;
    let keys = crate::keys::resolve(&settings, &pool).await?;
    let app = crate::server::Application::build(settings, pool, keys).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (gave_up_tx, gave_up_rx) = tokio::sync::oneshot::channel::<EmbeddedPgError>();
    let supervisor = embedded.cloned().map(|pg| {
        tokio::spawn(async move {
            if let Err(e) = pg.supervise(stop_rx, Supervision::default()).await {
                let _ = gave_up_tx.send(e);
            }
        })
    });
    let gave_up = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = gave_up.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            Ok(e) = gave_up_rx => {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(e);
                }
            }
        }
    };
    let outcome = app.run_until(stop).await;
    // Before `run` stops the database: a stop must not look like a death.
    let _ = stop_tx.send(true);
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    outcome?;
    if let Some(e) = gave_up.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(format!("the embedded PostgreSQL could not be started again: {e}").into());
    }
    Ok(())
}

async fn migrate(settings: &Settings, url: &str) -> Result<(), BoxError> {
    let pool = crate::db::pool(url, settings)?;
    crate::db::migrate(&pool).await?;
    tracing::info!(version = crate::db::head_version(), "schema at head");
    pool.close().await;
    Ok(())
}

/// 32 random bytes as a token, and the SHA-256 the callers file keeps.
fn new_token() -> Result<(), BoxError> {
    use sha2::Digest;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    let token = hex::encode(bytes);
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    // Not println!: it panics when stdout is closed (`new-token | head -1`).
    crate::telemetry::write_stdout(&format!("token: {token}"));
    crate::telemetry::write_stdout(&format!("token_sha256 = [\"{hash}\"]"));
    Ok(())
}

/// `rotate-key`: optionally a new active master key in the keyring file,
/// then every data key re-wrapped under the active key.
async fn rotate_key(settings: Settings, url: &str, args: &RotateKeyArgs) -> Result<(), BoxError> {
    let pool = crate::db::pool(url, &settings)?;
    crate::db::migrate(&pool).await?;
    let mut keys = crate::keys::resolve(&settings, &pool).await?;
    if args.new_master_key {
        if settings.master_key.is_some() {
            return Err(
                "--new-master-key needs a keyring file; the master keys come from \
                        PRIVACY_RECORDS_MASTER_KEY: add a key there (first = active)"
                    .into(),
            );
        }
        let path = settings
            .master_key_file
            .clone()
            .unwrap_or_else(|| crate::keys::default_file(&settings.data_dir));
        keys = crate::keys::Keyring::from_file(
            &path,
            settings
                .requests
                .identifier_hash_key
                .as_ref()
                .map(|s| s.expose().as_bytes()),
        )?
        .with_new_master()?;
        keys.write_file_keeping_lookup(&path, settings.requests.identifier_hash_key.is_some())?;
        tracing::info!(active = keys.active_id()?, path = %path.display(), "new active master key");
    }
    let n = crate::keys::rotate(&pool, &keys, args.batch).await?;
    tracing::info!(rewrapped = n, active = keys.active_id()?, "rotation done");
    crate::telemetry::write_stdout(&format!(
        "re-wrapped {n} data keys under master key {}",
        keys.active_id()?
    ));
    pool.close().await;
    Ok(())
}

/// Creates the service's database in the embedded cluster on first start.
async fn ensure_database(admin_url: &str, name: &str) -> Result<(), BoxError> {
    let mut conn = PgConnection::connect(admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // A name we chose (a constant), never caller input.
        let sql = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = name, "created the database"),
            // Another replica created it at the same moment.
            Err(e) if crate::error::sqlstate(&e).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
