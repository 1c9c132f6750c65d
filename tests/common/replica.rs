//! A streaming replica of the shared test cluster, made with
//! `pg_basebackup -R` into a scratch directory and started as a hot
//! standby. It replicates the whole cluster, so databases created on the
//! primary (before or after) appear on it. Dropping it stops it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

use sqlx::{Connection, PgConnection};

use super::{PATIENCE, cluster, wait_until};

/// Retries `attempt` until it gives a value, failing after `PATIENCE`.
async fn eventually<T>(what: &str, attempt: impl AsyncFnMut() -> Option<T>) -> T {
    super::eventually(PATIENCE, what, attempt).await
}

pub struct Replica {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Each replica of a test process gets its own port number. It only names
/// the socket file in the replica's own directory (TCP stays off, as on
/// the primary), so it cannot clash with another process.
static NEXT_PORT: AtomicU16 = AtomicU16::new(5433);

/// A command for a PostgreSQL program, as the `postgres` OS user when we
/// are root (PostgreSQL refuses to run as root).
fn pg_command(bin_dir: &Path, program: &str) -> Command {
    let program = bin_dir.join(program);
    if nix::unistd::geteuid().is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Replica {
    /// Copies the shared cluster and starts the copy as a hot standby
    /// streaming from it; returns once it accepts read-only connections.
    pub async fn start() -> Replica {
        let primary = cluster().await;
        let bin_dir =
            privacy_records::embedded_pg::find_bin_dir(None).expect("PostgreSQL binaries");
        let dir = super::scratch_dir();
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .expect("look up postgres")
                .expect("a postgres OS user");
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("chown the replica's directory");
        }
        let pgdata = dir.path().join("pgdata");
        let socket_dir = dir.path().join("run");
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);

        // pg_basebackup's temporary slot is made only once its WAL stream
        // starts, after the backup's checkpoint; under the suite's write load
        // a checkpoint in between can recycle the segment the stream needs
        // ("requested WAL segment ... has already been removed"). Keeping
        // some WAL on the shared test cluster closes that window.
        let mut admin = PgConnection::connect(&primary.admin_url)
            .await
            .expect("connect admin");
        sqlx::query("ALTER SYSTEM SET wal_keep_size = '1GB'")
            .execute(&mut admin)
            .await
            .expect("keep WAL");
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut admin)
            .await
            .expect("reload");
        drop(admin);

        let mut backup = pg_command(&bin_dir, "pg_basebackup");
        backup
            .arg("-D")
            .arg(&pgdata)
            .arg("-h")
            .arg(&primary.socket_dir)
            .arg("-p")
            .arg(primary.port.to_string())
            // -R: standby.signal and primary_conninfo; a fast checkpoint so
            // the copy starts at once; WAL streamed alongside.
            .args(["-U", "postgres", "-R", "-c", "fast", "-X", "stream"])
            .current_dir(dir.path());
        tokio::task::spawn_blocking(move || run(backup, "pg_basebackup"))
            .await
            .expect("pg_basebackup task");

        let mut start = pg_command(&bin_dir, "pg_ctl");
        // Command-line options override the copied configuration (whose
        // socket directory and port are the primary's).
        let options = format!(
            "-p {port} -k {} -c hot_standby=on -c fsync=off",
            socket_dir.display()
        );
        std::fs::create_dir(&socket_dir).expect("socket directory");
        if nix::unistd::geteuid().is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&socket_dir);
                    c
                },
                "chown",
            );
        }
        start
            .args(["start", "-w", "-s", "-t"])
            .arg(PATIENCE.as_secs().to_string())
            .arg("-D")
            .arg(&pgdata)
            .arg("-l")
            .arg(dir.path().join("replica.log"))
            .arg("-o")
            .arg(options)
            .current_dir(dir.path());
        tokio::task::spawn_blocking(move || run(start, "pg_ctl start (replica)"))
            .await
            .expect("pg_ctl task");

        let replica = Replica {
            bin_dir,
            pgdata,
            socket_dir,
            port,
            _dir: dir,
        };
        let url = replica.url("postgres");
        wait_until("the replica to accept read-only connections", || async {
            match PgConnection::connect(&url).await {
                Ok(mut c) => sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            }
        })
        .await;
        replica
    }

    /// The URL of `database` on the replica.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port={}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// A connection to `database` on the replica, once it has it.
    pub async fn connect(&self, database: &str) -> PgConnection {
        let url = self.url(database);
        eventually(&format!("database {database} on the replica"), async || {
            PgConnection::connect(&url).await.ok()
        })
        .await
    }

    /// Waits until the replica has replayed everything the primary has
    /// flushed now.
    pub async fn catch_up(&self) {
        let mut primary = PgConnection::connect(&cluster().await.admin_url)
            .await
            .expect("connect primary");
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
            .fetch_one(&mut primary)
            .await
            .expect("primary position");
        let mut replica = self.connect("postgres").await;
        eventually("the replica to catch up", async || {
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(&target)
                .fetch_one(&mut replica)
                .await
                .ok()
                .filter(|caught_up| *caught_up)
        })
        .await;
    }

    /// Pauses (true) or resumes (false) WAL replay; WAL still arrives.
    pub async fn pause_replay(&self, pause: bool) {
        let mut c = self.connect("postgres").await;
        let sql = if pause {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .expect("replay control");
        if pause {
            eventually("replay to pause", async || {
                sqlx::query_scalar::<_, String>("SELECT pg_get_wal_replay_pause_state()")
                    .fetch_one(&mut c)
                    .await
                    .ok()
                    .filter(|s| s == "paused")
            })
            .await;
        }
    }

    /// Stops the replica now (also done on drop).
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bin_dir, "pg_ctl");
        stop.args(["stop", "-w", "-s", "-m", "immediate", "-D"])
            .arg(&self.pgdata)
            .current_dir("/");
        let _ = stop.output();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            self.stop();
        }
    }
}
