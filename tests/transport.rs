//! The transport under hostile traffic and broken surroundings, over real
//! sockets, real certificates and a real PostgreSQL: credential-less floods
//! do not take callers' capacity; a closed log pipe changes no call's
//! outcome; a certificate with the wrong key stops the start; certificate
//! names are explicit; half-open connections are closed after the
//! handshake timeout, and over the connection caps a new connection is
//! refused while established callers still get answers.
mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::tls::{client_identity, new_ca, server_pair, sha, tls_channel, with_token, write};
use common::{TestDb, TestServer, test_settings, wait_until};
use privacy_records::proto::CheckConsentRequest;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::server::{Application, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;
use tonic::transport::Channel;

const CONSOLE_TOKEN: &str = "console-token-0123456789";

fn callers_toml() -> String {
    format!(
        "[[caller]]\nname = \"privacy-console\"\ntoken_sha256 = [\"{}\"]\nallow = [\"*\"]\n",
        sha(CONSOLE_TOKEN)
    )
}

fn check() -> CheckConsentRequest {
    CheckConsentRequest {
        subject_id: "ann".into(),
        purpose: "api_io_storage".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_flood_of_calls_without_credentials_never_sheds_an_authenticated_caller() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.max_concurrent_calls = 2;
    let server = TestServer::start_with(settings).await;

    // Strangers call as fast as they can, each refusal audited.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut stranger = ConsentServiceClient::new(server.channel());
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let (mut refused, mut other) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let status = stranger.check_consent(check()).await.expect_err("stranger");
                if status.code() == Code::Unauthenticated {
                    refused += 1;
                } else {
                    other.push(status.code());
                }
            }
            (refused, other)
        }));
    }

    let mut console = ConsentServiceClient::new(server.channel());
    let mut shed = 0;
    for _ in 0..200 {
        match console
            .check_consent(with_token(check(), CONSOLE_TOKEN))
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => panic!("the console's check failed: {status:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut refused, mut other) = (0, Vec::new());
    for task in flood {
        let (n, codes) = task.await.expect("flood task");
        refused += n;
        other.extend(codes);
    }
    assert!(refused > 0, "the flood ran");
    assert_eq!(
        shed, 0,
        "the console was shed while {refused} strangers were refused"
    );
    // Strangers are refused before they could take a permit.
    assert!(other.is_empty(), "strangers got {other:?}");
    server.finish().await;
}

/// A pipe whose reading end is already closed: every write to the other end
/// fails with EPIPE, like `serve 2>&1 | head -2` once `head` is done.
fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Stdio::from(write)
}

async fn serving(channel: &Channel) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

#[tokio::test]
async fn a_server_whose_log_pipe_is_closed_answers_with_real_statuses_and_audits_refusals() {
    let dir = common::scratch_dir();
    let callers = write(dir.path(), "callers.toml", &callers_toml());
    let db = TestDb::new().await;
    let port = common::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .envs(common::test_key_env())
        .env("PRIVACY_RECORDS_CALLERS_FILE", &callers)
        .env("PRIVACY_RECORDS_HEALTH_INTERVAL_MS", "100")
        // Every call is logged: successes at debug, failures at info.
        .env("PRIVACY_RECORDS_LOG_FILTER", "debug")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    wait_until("the binary to serve", || serving(&channel)).await;

    let mut client = ConsentServiceClient::new(channel.clone());
    for _ in 0..10 {
        let refused = client
            .check_consent(check())
            .await
            .expect_err("no credentials");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    client
        .check_consent(with_token(check(), CONSOLE_TOKEN))
        .await
        .expect("the console checks");
    let mut bad = check();
    bad.purpose = String::new();
    let invalid = client
        .check_consent(with_token(bad, CONSOLE_TOKEN))
        .await
        .expect_err("no purpose");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    assert!(child.try_wait().expect("child").is_none(), "still running");

    // SIGTERM: a clean exit, not a panic on the closed pipe.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::time::timeout(common::PATIENCE, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Repeated refusals are written as one event with a count; the counts
    // still open are written on the way out.
    let pool = db.pool().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(coalesce((details->>'count')::bigint, 1)), 0)::bigint
         FROM audit_events WHERE target = 'auth'",
    )
    .fetch_one(&pool)
    .await
    .expect("audit");
    assert_eq!(audited, 10, "every refusal is audited");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_failed_start_with_a_closed_log_pipe_exits_with_failure_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let db = TestDb::new().await;
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .envs(common::test_key_env())
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .await
        .expect("run the binary");
    assert_eq!(status.code(), Some(1), "{status:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_server_certificate_with_another_private_key_stops_the_start_naming_the_mismatch() {
    let dir = common::scratch_dir();
    let (_, ca) = new_ca();
    let (cert, _) = server_pair(&["localhost"], &ca);
    let (_, other_key) = server_pair(&["localhost"], &ca);
    let mut settings = test_settings();
    settings.security.tls_cert_file = Some(write(dir.path(), "server.pem", &cert));
    settings.security.tls_key_file = Some(write(dir.path(), "server.key", &other_key));
    let db = TestDb::empty().await;
    let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let outcome = Application::build(settings, pool, common::test_keyring()).await;
    db.drop_db().await;
    let err = outcome.err().expect("refused before serving");
    assert!(!matches!(err, ServeError::Transport(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("does not match"), "{message}");
    assert!(
        message.contains("server.key") && message.contains("server.pem"),
        "{message}"
    );
}

#[tokio::test]
async fn a_caller_without_certificate_names_accepts_no_certificate() {
    let dir = common::scratch_dir();
    let (ca_pem, ca) = new_ca();
    let (cert, key) = server_pair(&["localhost"], &ca);
    // The console names its certificate; the mailer has only a token.
    let callers = format!(
        "{}\n[[caller]]\nname = \"privacy-console\"\ncertificate_names = [\"console.internal\"]\nallow = [\"*\"]\n",
        "[[caller]]\nname = \"mailer\"\ntoken_sha256 = [\"00000000000000000000000000000000000000000000000000000000000000aa\"]\nallow = [\"*\"]"
    );
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers));
    settings.security.tls_cert_file = Some(write(dir.path(), "server.pem", &cert));
    settings.security.tls_key_file = Some(write(dir.path(), "server.key", &key));
    settings.security.tls_client_ca_file = Some(write(dir.path(), "ca.pem", &ca_pem));
    let server = tls_server(settings).await;
    let tls = |common_name: &str| {
        tls_channel(
            server.addr,
            &ca_pem,
            Some(client_identity(common_name, &ca)),
        )
    };
    let mut console = ConsentServiceClient::new(tls("console.internal"));
    console
        .check_consent(check())
        .await
        .expect("the console's certificate");
    // A CA-signed certificate whose CN is the token-only caller's name.
    let mut posing = ConsentServiceClient::new(tls("mailer"));
    let refused = posing
        .check_consent(check())
        .await
        .expect_err("a certificate the mailer never had");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    server.finish().await;
}

/// A server with TLS on its main listener, and a plaintext health listener
/// to see it serving.
async fn tls_server(mut settings: privacy_records::config::Settings) -> TestServer {
    settings.security.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    TestServer::start_with(settings).await
}

/// A raw TCP connection from `from` (a loopback address) that sends nothing.
async fn raw_connection(from: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Whether the server closes `stream` within `patience` (whatever it sent
/// before, e.g. its HTTP/2 settings, is read and ignored).
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(patience, read_to_end).await.is_ok()
}

async fn console_answers(channel: Channel) {
    let mut console = ConsentServiceClient::new(channel);
    console
        .check_consent(with_token(check(), CONSOLE_TOKEN))
        .await
        .expect("the console gets an answer");
}

fn tls_settings(
    dir: &Path,
    ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> privacy_records::config::Settings {
    let (cert, key) = server_pair(&["localhost"], ca);
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir, "callers.toml", &callers_toml()));
    settings.security.tls_cert_file = Some(write(dir, "server.pem", &cert));
    settings.security.tls_key_file = Some(write(dir, "server.key", &key));
    settings
}

#[tokio::test]
async fn half_open_tls_connections_are_closed_after_the_handshake_timeout() {
    let dir = common::scratch_dir();
    let (ca_pem, ca) = new_ca();
    let mut settings = tls_settings(dir.path(), &ca);
    settings.handshake_timeout = Duration::from_millis(300);
    settings.max_connections = 20;
    let server = tls_server(settings).await;

    // The cap filled with connections that never finish their handshake:
    // some send nothing, some the first bytes of a ClientHello.
    let mut half_open = Vec::new();
    for i in 0..20 {
        let mut stream = raw_connection("127.0.0.1", server.addr).await;
        if i % 2 == 1 {
            stream
                .write_all(&[0x16, 0x03, 0x01, 0x02])
                .await
                .expect("write");
        }
        half_open.push(stream);
    }
    for stream in &mut half_open {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "a half-open connection was kept"
        );
    }
    console_answers(tls_channel(server.addr, &ca_pem, None)).await;
    server.finish().await;
}

#[tokio::test]
async fn plaintext_connections_that_send_nothing_are_closed_after_the_handshake_timeout() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(settings).await;
    let mut silent = raw_connection("127.0.0.1", server.addr).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a connection that sent nothing was kept"
    );
    console_answers(server.channel()).await;
    server.finish().await;
}

#[tokio::test]
async fn a_connection_with_no_call_in_progress_is_closed_after_the_idle_timeout() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.idle_connection_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(settings).await;
    // A client that says hello (the HTTP/2 preface) and then nothing more.
    let mut idle = raw_connection("127.0.0.1", server.addr).await;
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "an idle connection was kept"
    );
    // A call that takes longer than the idle timeout is not cut: a watch
    // stream stays open across several idle periods.
    let mut console = ConsentServiceClient::new(server.channel());
    let mut watch = console
        .watch_consent_changes(with_token(
            privacy_records::proto::WatchConsentChangesRequest::default(),
            CONSOLE_TOKEN,
        ))
        .await
        .expect("watch")
        .into_inner();
    // On the watch's own connection, busy while the watch lasts.
    let mut writer = console.clone();
    let start = tokio::time::Instant::now();
    let mut seen = 0;
    while seen < 3 || start.elapsed() < Duration::from_millis(1500) {
        writer
            .record_consent(with_token(common::storage_grant("ann"), CONSOLE_TOKEN))
            .await
            .expect("write");
        let got = tokio::time::timeout(common::PATIENCE, watch.message())
            .await
            .expect("the watch answers")
            .expect("the watch stream is still open");
        assert!(got.is_some(), "the watch stream ended");
        seen += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.finish().await;
}

#[tokio::test]
async fn over_the_total_cap_a_new_connection_is_refused_while_an_established_caller_gets_answers() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.max_connections = 3;
    let server = TestServer::start_with(settings).await;
    // The test harness's own channel (health) holds one connection.
    let console = server.channel();
    console_answers(console.clone()).await;
    let mut held = Vec::new();
    while held.len() < 8 {
        let mut stream = raw_connection("127.0.0.1", server.addr).await;
        if closed_within(&mut stream, Duration::from_millis(500)).await {
            break;
        }
        held.push(stream);
    }
    assert!(held.len() < 3, "the cap of 3 let {} more in", held.len());
    let mut refused = raw_connection("127.0.0.1", server.addr).await;
    assert!(
        closed_within(&mut refused, Duration::from_secs(5)).await,
        "a connection over the cap was kept"
    );
    console_answers(console).await;
    // A connection closed gives its place back.
    held.clear();
    wait_until("a place under the cap", || async {
        let mut stream = raw_connection("127.0.0.1", server.addr).await;
        !closed_within(&mut stream, Duration::from_millis(300)).await
    })
    .await;
    server.finish().await;
}

#[tokio::test]
async fn over_the_per_peer_cap_a_peer_is_refused_while_other_peers_get_answers() {
    let dir = common::scratch_dir();
    let mut settings = test_settings();
    settings.security.callers_file = Some(write(dir.path(), "callers.toml", &callers_toml()));
    settings.max_connections_per_peer = 4;
    let server = TestServer::start_with(settings).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw_connection("127.0.0.1", server.addr).await);
    }
    let mut refused = raw_connection("127.0.0.1", server.addr).await;
    assert!(
        closed_within(&mut refused, Duration::from_secs(5)).await,
        "a fifth connection from one peer was kept"
    );
    let other_peer = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .local_address(Some("127.0.0.2".parse().expect("ip")))
        .connect_lazy();
    console_answers(other_peer).await;
    drop(held);
    server.finish().await;
}

/// A server with a plaintext health listener, and the listener's address.
async fn with_health_listener(
    mut settings: privacy_records::config::Settings,
) -> (TestServer, std::net::SocketAddr) {
    settings.security.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let db = TestDb::new().await;
    let pool = privacy_records::db::pool(&db.url, &settings).expect("pool");
    let app = Application::build(settings, pool, common::test_keyring())
        .await
        .expect("build");
    let health = app.health_addr().expect("health listener");
    (TestServer::run(db, app).await, health)
}

/// Whether a probe from `from` to the health listener gets SERVING.
async fn probe_serves(from: &str, health: std::net::SocketAddr) -> bool {
    let channel = Channel::from_shared(format!("http://{health}"))
        .expect("uri")
        .local_address(Some(from.parse().expect("ip")))
        .connect_lazy();
    serving(&channel).await
}

#[tokio::test]
async fn the_health_listener_caps_a_peers_connections_while_other_peers_probes_get_answers() {
    let (server, health) = with_health_listener(test_settings()).await;
    // One peer holds connections that send nothing, up to its cap...
    let mut held = Vec::new();
    while held.len() < 64 {
        let mut stream = raw_connection("127.0.0.1", health).await;
        if closed_within(&mut stream, Duration::from_millis(300)).await {
            break;
        }
        held.push(stream);
    }
    assert!(
        held.len() < 64,
        "one peer kept {} silent connections to the health listener",
        held.len()
    );
    // ...and the kubelet, another peer, still gets its answer.
    assert!(
        probe_serves("127.0.0.2", health).await,
        "a probe from another peer got no answer"
    );
    drop(held);
    server.finish().await;
}

#[tokio::test]
async fn silent_connections_to_the_health_listener_are_closed_after_the_handshake_timeout() {
    let mut settings = test_settings();
    settings.handshake_timeout = Duration::from_millis(300);
    let (server, health) = with_health_listener(settings).await;
    let mut silent = raw_connection("127.0.0.1", health).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a connection that sent nothing to the health listener was kept"
    );
    assert!(probe_serves("127.0.0.1", health).await, "no probe answer");
    server.finish().await;
}

#[tokio::test]
async fn a_health_watch_on_the_health_listener_outlives_the_idle_timeout() {
    let mut settings = test_settings();
    settings.idle_connection_timeout = Duration::from_millis(300);
    let (server, health) = with_health_listener(settings).await;
    let channel = Channel::from_shared(format!("http://{health}"))
        .expect("uri")
        .connect_lazy();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("first status");
    assert!(first.is_some(), "the watch sent no status");
    // Nothing changes, so nothing is sent: a stream closed as idle would
    // end (or fail) within this wait; an open one stays silent through it.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), watch.message()).await;
    assert!(quiet.is_err(), "the health watch ended: {quiet:?}");
    server.finish().await;
}
