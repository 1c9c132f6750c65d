//! The test harness: one embedded PostgreSQL cluster shared by every test
//! process (started, or adopted if already running), one migrated template
//! database, and a fresh database per test copied from it
//! (`CREATE DATABASE t TEMPLATE tmpl`). Servers run in-process on port 0.
#![allow(dead_code)]

pub mod clients;
pub mod raw;
pub mod replica;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use privacy_records::config::Settings;
use privacy_records::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::server::Application;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{OnceCell, oneshot};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a test waits for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn test_pg_dir() -> PathBuf {
    std::env::var_os("PRIVACY_RECORDS_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/privacy-records-test-pg"))
}

/// A TCP port free on loopback a moment ago, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A directory the `postgres` OS user can enter (tests run as root here).
pub fn scratch_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("pr-test-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

struct Cluster {
    admin_url: String,
    /// The primary's socket directory and port (for pg_basebackup).
    socket_dir: PathBuf,
    port: u16,
    url_of: Box<dyn Fn(&str) -> String + Send + Sync>,
    template: String,
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

fn template_name() -> String {
    let mut h = Sha256::new();
    for m in privacy_records::db::MIGRATOR.iter() {
        h.update(m.version.to_le_bytes());
        h.update(&*m.checksum);
    }
    format!("tmpl_{}", hex::encode(&h.finalize()[..6]))
}

async fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            let pg = EmbeddedPostgres::start(EmbeddedOptions {
                data_dir: test_pg_dir(),
                bin_dir: None,
                port: 5432,
            })
            .await
            .expect("start the shared test PostgreSQL");
            let admin_url = pg.database_url("postgres");
            let template = template_name();
            build_template(&admin_url, &pg.database_url(&template), &template).await;
            let base = pg.database_url("DBNAME");
            Cluster {
                admin_url,
                socket_dir: pg.socket_dir().to_path_buf(),
                port: pg.port(),
                url_of: Box::new(move |db| base.replace("DBNAME", db)),
                template,
            }
        })
        .await
}

/// Creates and migrates the template once across all test processes.
async fn build_template(admin_url: &str, template_url: &str, name: &str) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("connect admin");
    sqlx::query("SELECT pg_advisory_lock(7243001)")
        .execute(&mut admin)
        .await
        .expect("lock");
    let state: Option<bool> =
        sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_optional(&mut admin)
            .await
            .expect("query template");
    if state != Some(true) {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .expect("drop");
        let create = format!("CREATE DATABASE \"{name}\"");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .expect("create");
        let pool = PgPool::connect(template_url)
            .await
            .expect("connect template");
        privacy_records::db::migrate(&pool)
            .await
            .expect("migrate template");
        pool.close().await;
        let mark = format!("ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true");
        sqlx::query(sqlx::AssertSqlSafe(mark))
            .execute(&mut admin)
            .await
            .expect("mark");
    }
    sqlx::query("SELECT pg_advisory_unlock(7243001)")
        .execute(&mut admin)
        .await
        .expect("unlock");
}

/// A fresh, migrated database for one test. The harness drops it when the
/// test is done with it: by `drop_db`/`TestServer::finish`, or else when the
/// value is dropped, so a test that fails (panics) does not leave its
/// database behind in the shared cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Whether this value drops the database: false for an alias of
    /// another test's database, or one the harness did not create.
    owned: bool,
    dropped: AtomicBool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let cluster = cluster().await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let sql = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{}\"",
            cluster.template
        );
        create(cluster, sql).await;
        TestDb::owned(cluster, name)
    }

    /// An empty database, not migrated.
    pub async fn empty() -> TestDb {
        let cluster = cluster().await;
        let name = format!("e_{}", uuid::Uuid::new_v4().simple());
        create(cluster, format!("CREATE DATABASE \"{name}\"")).await;
        TestDb::owned(cluster, name)
    }

    fn owned(cluster: &Cluster, name: String) -> TestDb {
        TestDb {
            url: (cluster.url_of)(&name),
            name,
            owned: true,
            dropped: AtomicBool::new(false),
        }
    }

    /// A database this value never drops: one the harness did not create
    /// (e.g. in a test's own cluster).
    pub fn unowned(name: &str, url: &str) -> TestDb {
        TestDb {
            name: name.into(),
            url: url.into(),
            owned: false,
            dropped: AtomicBool::new(false),
        }
    }

    /// The same database for a second server or reader; the original still
    /// owns (and drops) it.
    pub fn alias(&self) -> TestDb {
        TestDb::unowned(&self.name, &self.url)
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.expect("connect test db")
    }

    pub async fn drop_db(&self) {
        if !self.owned || self.dropped.swap(true, Ordering::SeqCst) {
            return;
        }
        let cluster = cluster().await;
        drop_database(&cluster.admin_url, &self.name).await;
    }
}

async fn create(cluster: &Cluster, sql: String) {
    let mut admin = PgConnection::connect(&cluster.admin_url)
        .await
        .expect("connect admin");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .expect("create test db");
}

/// Best effort: a database left behind is garbage, not a failure.
async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = PgConnection::connect(admin_url).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await;
    }
}

/// How long dropping a test database may hold up the end of a test.
const DROP_PATIENCE: Duration = Duration::from_secs(10);

impl Drop for TestDb {
    /// Drop runs inside the test's runtime, maybe while it unwinds from a
    /// panic, so it must neither block on that runtime nor panic: the DROP
    /// runs on a thread of its own with its own small runtime, and the wait
    /// for it is bounded.
    fn drop(&mut self) {
        if !self.owned || self.dropped.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(cluster) = CLUSTER.get() else {
            return;
        };
        let (admin_url, name) = (cluster.admin_url.clone(), self.name.clone());
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("drop-test-db".into())
            .spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let _ =
                            tokio::time::timeout(DROP_PATIENCE, drop_database(&admin_url, &name))
                                .await;
                    });
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = finished.recv_timeout(DROP_PATIENCE + Duration::from_secs(1));
        }
    }
}

pub fn test_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        health_interval: Duration::from_millis(100),
        watch_poll_interval: Duration::from_millis(20),
        shutdown_grace: Duration::from_secs(10),
        db_acquire_timeout: Duration::from_secs(2),
        db_max_connections: 16,
        // Tests drive the retention sweeper themselves, with their own clock.
        retention_sweeper: false,
        ..Settings::default()
    }
}

/// The tests' keyring as the environment gives it to a spawned binary.
pub fn test_key_env() -> [(&'static str, String); 2] {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    [
        ("PRIVACY_RECORDS_MASTER_KEY", format!("test-mk-1:{key}")),
        (
            "PRIVACY_RECORDS_IDENTIFIER_HASH_KEY",
            "test-lookup-key".into(),
        ),
    ]
}

/// The fixed keyring of the tests (master key `test-mk-1`).
pub fn test_keyring() -> privacy_records::keys::Keyring {
    privacy_records::keys::Keyring::from_parts(&[("test-mk-1", [7u8; 32])], b"test-lookup-key")
        .expect("test keyring")
}

/// A server running in this process, on its own database.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    pub consent: ConsentServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_settings()).await
    }

    pub async fn start_with(settings: Settings) -> TestServer {
        let db = TestDb::new().await;
        Self::start_on(db, settings).await
    }

    pub async fn start_on(db: TestDb, settings: Settings) -> TestServer {
        let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
        let app = Application::build(settings, pool, test_keyring())
            .await
            .expect("bind");
        Self::run(db, app).await
    }

    /// Runs a built application on `db` until the test stops it. Health is
    /// asked on the plaintext health listener when there is one (the main
    /// listener may speak TLS only).
    pub async fn run(db: TestDb, app: Application) -> TestServer {
        let addr = app.local_addr();
        let health_addr = app.health_addr().unwrap_or(addr);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("server run");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        let server = TestServer {
            addr,
            db,
            consent: ConsentServiceClient::new(channel),
            health: HealthClient::new(
                Channel::from_shared(format!("http://{health_addr}"))
                    .expect("uri")
                    .connect_lazy(),
            ),
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_for_health("", ServingStatus::Serving).await;
        server
    }

    /// A new lazily connecting channel to this server.
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_lazy()
    }

    pub async fn health_of(&self, service: &str) -> Option<ServingStatus> {
        let mut health = self.health.clone();
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    pub async fn wait_for_health(&self, service: &str, want: ServingStatus) {
        wait_until(&format!("health {service:?} to be {want:?}"), || async {
            self.health_of(service).await == Some(want)
        })
        .await;
    }

    /// Asks the server to shut down (as SIGTERM does) and waits for it.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("server stops within the patience")
                .expect("server task");
        }
    }

    pub fn request_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("server stops within the patience")
                .expect("server task");
        }
    }

    /// Stops the server and drops its database.
    pub async fn finish(mut self) {
        self.shutdown().await;
        self.db.drop_db().await;
    }
}

/// How often the waiting helpers look again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds, failing the test after `PATIENCE`.
pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_within(PATIENCE, what, condition).await
}

/// Polls `condition` until it holds, failing the test after `timeout`.
pub async fn wait_within<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retries `attempt` until it gives a value, failing the test after
/// `timeout` (like `wait_within`, with state kept across attempts).
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The ErrorInfo reason and the BadRequest fields of an error status.
pub fn error_reason(status: &tonic::Status) -> (String, Vec<String>) {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let fields = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (reason, fields)
}

/// A grant recorded from a web form.
pub fn grant(subject: &str, purpose: &str) -> privacy_records::proto::RecordConsentRequest {
    use privacy_records::proto::{ConsentDecision, ConsentSource, RecordConsentRequest};
    RecordConsentRequest {
        request_id: request_id(),
        subject_id: subject.into(),
        purpose: purpose.into(),
        decision: ConsentDecision::Granted as i32,
        source: ConsentSource::WebForm as i32,
        ..Default::default()
    }
}

/// A refusal recorded from a web form.
pub fn refuse(subject: &str, purpose: &str) -> privacy_records::proto::RecordConsentRequest {
    privacy_records::proto::RecordConsentRequest {
        decision: privacy_records::proto::ConsentDecision::Refused as i32,
        ..grant(subject, purpose)
    }
}

/// A grant of `api_io_storage`, an opt-in purpose with no evidence rule:
/// the plain write the lifecycle and watch tests drive.
pub fn storage_grant(subject: &str) -> privacy_records::proto::RecordConsentRequest {
    grant(subject, "api_io_storage")
}

/// The protobuf timestamp of `t`.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}
