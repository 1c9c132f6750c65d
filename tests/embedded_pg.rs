//! Integration tests for the embedded PostgreSQL cluster. They run the real
//! server binaries, each test in its own data directory under /tmp.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::unistd::{User, geteuid};
use privacy_records::embedded_pg::{
    EmbeddedOptions, EmbeddedPgError, EmbeddedPostgres, find_bin_dir,
};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A data directory the `postgres` OS user can reach. Dropping it stops any
/// server still running there (so a failed assertion does not leak one)
/// before the directory is removed.
struct Scratch {
    tmp: TempDir,
    data_dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("embpg-")
            .tempdir()
            .expect("create tempdir");
        // `postgres` must be able to pass through; do not rely on the mode
        // tempfile picks (it has varied between releases).
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        let data_dir = tmp.path().join("data");
        Self { tmp, data_dir }
    }

    fn options(&self) -> EmbeddedOptions {
        EmbeddedOptions::new(&self.data_dir)
    }

    fn pgdata(&self) -> PathBuf {
        self.data_dir.join("pgdata")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let pgdata = self.pgdata();
        if !pgdata.join("postmaster.pid").exists() {
            return;
        }
        let Ok(bin_dir) = find_bin_dir(None) else {
            return;
        };
        let mut cmd = std::process::Command::new(bin_dir.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&pgdata)
            .current_dir(self.tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = postgres_user() {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let _ = cmd.status();
    }
}

fn postgres_user() -> Option<User> {
    if !geteuid().is_root() {
        return None;
    }
    User::from_name("postgres").ok().flatten()
}

/// The server accepts a connection and answers a query.
async fn assert_answers(pg: &EmbeddedPostgres) {
    let mut conn = connect(pg).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
    conn.close().await.expect("close");
}

fn postmaster_pid(pgdata: &Path) -> String {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).expect("read postmaster.pid");
    text.lines().next().expect("pid line").to_owned()
}

async fn connect(pg: &EmbeddedPostgres) -> PgConnection {
    let url = pg.database_url("postgres");
    PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn show(conn: &mut PgConnection, setting: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
        .bind(setting)
        .fetch_one(conn)
        .await
        .expect("current_setting")
}

#[tokio::test]
async fn a_fresh_data_dir_gets_a_cluster_that_accepts_socket_connections() {
    let scratch = Scratch::new();
    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("start");

    assert_eq!(pg.data_dir(), scratch.data_dir);
    assert_eq!(pg.socket_dir(), scratch.data_dir.join("run"));
    assert!(pg.socket_dir().join(".s.PGSQL.5432").exists());
    let mode = fs::metadata(&scratch.data_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data dir must be private");

    let mut conn = connect(&pg).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
    assert_eq!(show(&mut conn, "listen_addresses").await, "");
    assert_eq!(show(&mut conn, "unix_socket_permissions").await, "0700");
    assert_eq!(show(&mut conn, "fsync").await, "on");
    assert_eq!(show(&mut conn, "synchronous_commit").await, "on");
    assert_eq!(show(&mut conn, "max_connections").await, "200");
    assert_eq!(show(&mut conn, "shared_buffers").await, "128MB");
    assert_eq!(show(&mut conn, "server_encoding").await, "UTF8");
    conn.close().await.expect("close");

    pg.stop().await.expect("stop");
    assert!(!scratch.pgdata().join("postmaster.pid").exists());
    assert!(
        PgConnection::connect(&pg.database_url("postgres"))
            .await
            .is_err()
    );
    pg.stop().await.expect("a second stop is a no-op");
}

#[tokio::test]
async fn data_survives_a_stop_and_a_restart_and_a_new_start() {
    let scratch = Scratch::new();
    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("start");
    let mut conn = connect(&pg).await;
    sqlx::query("CREATE TABLE kept (note text NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("create table");
    sqlx::query("INSERT INTO kept VALUES ('still here')")
        .execute(&mut conn)
        .await
        .expect("insert");
    conn.close().await.expect("close");
    pg.stop().await.expect("stop");

    pg.restart().await.expect("restart");
    let mut conn = connect(&pg).await;
    let note: String = sqlx::query_scalar("SELECT note FROM kept")
        .fetch_one(&mut conn)
        .await
        .expect("read after restart");
    assert_eq!(note, "still here");
    conn.close().await.expect("close");
    pg.stop().await.expect("stop");
    drop(pg);

    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("start again");
    let mut conn = connect(&pg).await;
    let note: String = sqlx::query_scalar("SELECT note FROM kept")
        .fetch_one(&mut conn)
        .await
        .expect("read after a new start");
    assert_eq!(note, "still here");
    conn.close().await.expect("close");
    pg.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_starts_of_one_data_dir_both_succeed() {
    let scratch = Scratch::new();
    let first = tokio::spawn(EmbeddedPostgres::start(scratch.options()));
    let second = tokio::spawn(EmbeddedPostgres::start(scratch.options()));
    let first = first.await.expect("join").expect("first start");
    let second = second.await.expect("join").expect("second start");

    assert_eq!(
        first.database_url("postgres"),
        second.database_url("postgres")
    );
    for pg in [&first, &second] {
        assert_answers(pg).await;
    }

    first.stop().await.expect("stop");
    second.stop().await.expect("stopping again is a no-op");
}

#[tokio::test]
async fn a_second_start_adopts_the_running_server() {
    let scratch = Scratch::new();
    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("start");
    let pid = postmaster_pid(&scratch.pgdata());
    // What a crash (SIGKILL) leaves behind: the server, without its owner.
    drop(pg);
    assert!(
        scratch.pgdata().join("postmaster.pid").exists(),
        "drop must not stop the server"
    );

    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("adopt");
    assert_eq!(
        postmaster_pid(&scratch.pgdata()),
        pid,
        "must adopt, not restart"
    );
    assert_answers(&pg).await;
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn a_server_running_with_another_port_is_not_silently_adopted() {
    let scratch = Scratch::new();
    let pg = EmbeddedPostgres::start(scratch.options())
        .await
        .expect("start");

    let mut other = scratch.options();
    other.port = 5433;
    let err = EmbeddedPostgres::start(other)
        .await
        .expect_err("a server on another port must not be adopted");
    assert!(
        matches!(
            err,
            EmbeddedPgError::RunningElsewhere {
                running_port: 5432,
                port: 5433,
                ..
            }
        ),
        "{err}"
    );
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn a_data_dir_the_postgres_user_cannot_enter_is_refused_clearly() {
    if !geteuid().is_root() {
        eprintln!("skipped: only root hands the server to the `postgres` user");
        return;
    }
    // A root-owned 0700 directory: `postgres` cannot pass through. (The
    // guard stops the server should the check ever let one start.)
    let scratch = Scratch::new();
    let private = scratch.tmp.path();
    fs::set_permissions(private, fs::Permissions::from_mode(0o700)).expect("chmod tempdir");
    let data_dir = &scratch.data_dir;
    let err = EmbeddedPostgres::start(scratch.options())
        .await
        .expect_err("postgres cannot reach the data dir");

    match &err {
        EmbeddedPgError::DataDirUnreachable { dir, mode } => {
            assert_eq!(dir, private);
            assert_eq!(*mode, 0o700);
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("runs as OS user `postgres`, which cannot enter"),
        "{message}"
    );
    assert!(
        message.contains(&private.display().to_string()),
        "{message}"
    );
    assert!(message.contains("(mode 0700)"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(
        !data_dir.exists(),
        "nothing is created when the dir is unreachable"
    );
}

#[tokio::test]
async fn an_empty_bin_dir_gives_an_install_hint() {
    let scratch = Scratch::new();
    let empty = tempfile::tempdir().expect("create tempdir");
    let mut options = scratch.options();
    options.bin_dir = Some(empty.path().to_path_buf());

    let err = EmbeddedPostgres::start(options)
        .await
        .expect_err("no binaries to run");
    assert!(
        matches!(err, EmbeddedPgError::BinariesNotFound { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("no PostgreSQL server binaries found"),
        "{message}"
    );
    assert!(
        message.contains(&empty.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(message.contains("PRIVACY_RECORDS_PG_BIN_DIR"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
}

#[tokio::test]
async fn a_socket_path_over_the_unix_limit_is_refused_clearly() {
    let scratch = Scratch::new();
    let options = EmbeddedOptions::new(scratch.data_dir.join("d".repeat(100)));
    let err = EmbeddedPostgres::start(options)
        .await
        .expect_err("socket path too long");
    assert!(
        matches!(err, EmbeddedPgError::SocketPathTooLong { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("limited to 107 bytes"), "{err}");
}
