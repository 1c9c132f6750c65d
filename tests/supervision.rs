//! The embedded PostgreSQL under a running server, killed with SIGKILL: the
//! server notices, starts it again, and serves again without a restart of
//! its own. Runs the real binary on its own embedded cluster.
mod common;

use std::path::Path;
use std::process::Stdio;

use common::{PATIENCE, wait_until};
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("pgdata/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether a process runs (a zombie does not count).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

async fn health(channel: &Channel) -> Option<ServingStatus> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Stops whatever cluster the test left running, pass or fail.
struct Cluster<'a>(&'a Path);

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        if let Some(pid) = postmaster_pid(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
    }
}

#[tokio::test]
async fn an_embedded_postgres_killed_under_the_server_is_started_again_and_serves() {
    let dir = common::scratch_dir();
    let data_dir = dir.path().join("data");
    let _cluster = Cluster(&data_dir);
    let port = common::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_privacy-records"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .envs(common::test_key_env())
        .env("PRIVACY_RECORDS_HEALTH_INTERVAL_MS", "100")
        .env("PRIVACY_RECORDS_LOG_FILTER", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    // initdb on a shared machine can be slow: twice the usual patience.
    common::eventually(PATIENCE * 2, "the binary to serve", async || {
        if health(&channel).await == Some(ServingStatus::Serving) {
            return Some(());
        }
        assert!(
            child.try_wait().expect("child").is_none(),
            "the binary exited"
        );
        None
    })
    .await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    consent
        .record_consent(common::storage_grant("ann"))
        .await
        .expect("a write before the kill");

    let killed = postmaster_pid(&data_dir).expect("postmaster.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the postmaster");
    wait_until("the postmaster to be gone", || async { !alive(killed) }).await;
    wait_until("health NOT_SERVING", || async {
        health(&channel).await == Some(ServingStatus::NotServing)
    })
    .await;

    wait_until("a new postmaster", || async {
        postmaster_pid(&data_dir).is_some_and(|pid| pid != killed && alive(pid))
    })
    .await;
    wait_until("health SERVING again", || async {
        health(&channel).await == Some(ServingStatus::Serving)
    })
    .await;
    consent
        .record_consent(common::storage_grant("bob"))
        .await
        .expect("a write after the restart");
    assert!(
        child.try_wait().expect("child").is_none(),
        "the server kept running"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(
        postmaster_pid(&data_dir).is_none(),
        "the server stopped its PostgreSQL on the way out"
    );
}
