//! Embedded PostgreSQL: runs a private PostgreSQL cluster from the server
//! binaries installed on the machine, so the service works out of the box
//! without an operator setting up a database server.
//!
//! The cluster lives in `<data_dir>/pgdata` and is kept across runs. It
//! listens only on a Unix socket in `<data_dir>/run` (TCP is off) and logs to
//! `<data_dir>/postgres.log`. PostgreSQL refuses to run as root, so when this
//! process is root the binaries run as the OS user `postgres`.
//!
//! The server outlives the handle: dropping [`EmbeddedPostgres`] does not stop
//! it, and a later [`EmbeddedPostgres::start`] for the same data directory
//! adopts a server that is still running (for example one left behind by a
//! process killed with SIGKILL). Several processes may start the same data
//! directory at once; an exclusive `flock` serialises them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid, User, geteuid, getuid};
use tokio::process::Command;
use tracing::{debug, info};

/// Environment variable naming the directory holding `pg_ctl`, `initdb`, ...
pub const PG_BIN_DIR_ENV: &str = "PRIVACY_RECORDS_PG_BIN_DIR";

/// Port used to name the socket file when none is given.
pub const DEFAULT_PORT: u16 = 5432;

const APP_DIR_NAME: &str = "privacy-records";
const ROOT_DEFAULT_DATA_DIR: &str = "/var/lib/privacy-records";
const PG_OS_USER: &str = "postgres";
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// Everything `start` runs; a directory missing any of them is not a usable
/// server installation (client-only packages ship some of these names).
const REQUIRED_BINARIES: [&str; 4] = ["pg_ctl", "initdb", "postgres", "pg_isready"];

/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux and includes the
/// terminating NUL, so PostgreSQL rejects socket paths longer than 107 bytes.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// How long to wait for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const READY_POLL_INTERVAL: Duration = Duration::from_millis(200);

const LOG_TAIL_LINES: usize = 20;
/// Only the end of the log matters for an error message; the log is never
/// rotated, so avoid reading all of it.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

const LOCK_FILE_NAME: &str = ".embedded-pg.lock";
const RUNTIME_CONF_NAME: &str = "embedded.conf";
const RUNTIME_CONF_INCLUDE: &str = "include = 'embedded.conf'";

/// Variables that libpq-based tools and the server read; a caller's settings
/// (meant for some other server) must not leak into our cluster.
const SCRUBBED_ENV: [&str; 9] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
];

/// Where and how to run the embedded cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Our data directory: the cluster lives in `data_dir/pgdata`, the socket
    /// in `data_dir/run` and the server log in `data_dir/postgres.log`.
    pub data_dir: PathBuf,
    /// Directory holding the PostgreSQL server binaries; discovered with
    /// [`find_bin_dir`] when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Only names the socket file (`.s.PGSQL.<port>`); TCP is off.
    pub port: u16,
}

impl EmbeddedOptions {
    /// Options for `data_dir` with discovered binaries and the default port.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bin_dir: None,
            port: DEFAULT_PORT,
        }
    }
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self::new(default_data_dir())
    }
}

/// Errors from starting or stopping the embedded cluster. The messages are
/// meant for operators, so they say what to do about the problem.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    /// No directory with the server binaries was found.
    #[error(
        "no PostgreSQL server binaries found (looked in {looked_in}): install them \
         (Debian/Ubuntu: `apt-get install postgresql`), set PRIVACY_RECORDS_PG_BIN_DIR, \
         or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound {
        /// Where we looked.
        looked_in: String,
    },

    /// We are root but there is no `postgres` OS user to run the server as.
    #[error(
        "PostgreSQL refuses to run as root and there is no OS user `postgres` to run it as: \
         install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`), run as an \
         unprivileged user, or set DATABASE_URL to use an existing server"
    )]
    NoPostgresUser,

    /// The `postgres` OS user cannot traverse one of the data dir's ancestors.
    #[error(
        "the embedded PostgreSQL runs as OS user `postgres`, which cannot enter {} \
         (mode {mode:04o}); choose a --data-dir it can reach, e.g. /var/lib/privacy-records, \
         or set DATABASE_URL",
        dir.display()
    )]
    DataDirUnreachable {
        /// The first directory on the way that `postgres` cannot enter.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The socket path does not fit in `sockaddr_un.sun_path`.
    #[error(
        "the PostgreSQL Unix socket path {} is {len} bytes long, but Unix socket paths are \
         limited to {MAX_SOCKET_PATH_LEN} bytes; choose a shorter --data-dir, \
         e.g. /var/lib/privacy-records",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket path that would have been used.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },

    /// The options cannot be used as given.
    #[error("invalid embedded PostgreSQL option: {0}")]
    InvalidOption(String),

    /// `data_dir/pgdata` exists but holds something other than a cluster.
    #[error(
        "{} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away \
         or choose another --data-dir",
        path.display()
    )]
    NotADataDirectory {
        /// The offending directory.
        path: PathBuf,
    },

    /// A server is running for our cluster, but not where these options say.
    #[error(
        "a PostgreSQL server (pid {pid}) is already running for {} with its socket in {} \
         on port {running_port}, but this process expects {} on port {port}; stop it with \
         `pg_ctl stop -D {}` or use the same port",
        pgdata.display(),
        running_socket_dir.display(),
        socket_dir.display(),
        pgdata.display()
    )]
    RunningElsewhere {
        /// The cluster's data directory.
        pgdata: PathBuf,
        /// Postmaster PID.
        pid: u32,
        /// Where the running server's socket is.
        running_socket_dir: PathBuf,
        /// The running server's port.
        running_port: u16,
        /// Where we expected the socket.
        socket_dir: PathBuf,
        /// The port we expected.
        port: u16,
    },

    /// A server runs for our cluster but never started accepting connections.
    #[error(
        "a PostgreSQL server is running for {} but did not accept connections on {} \
         within {}s{details}",
        pgdata.display(),
        socket_dir.display(),
        timeout.as_secs()
    )]
    NotReady {
        /// The cluster's data directory.
        pgdata: PathBuf,
        /// Where we expected the socket.
        socket_dir: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// The tail of the server log, preformatted.
        details: String,
    },

    /// A PostgreSQL program failed.
    #[error("`{command}` failed ({status}){details}")]
    CommandFailed {
        /// The command, for humans.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its output and the tail of the server log, preformatted.
        details: String,
    },

    /// A file system or process operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What we were doing, e.g. "create directory".
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = EmbeddedPgError> = std::result::Result<T, E>;

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedPgError {
    let path = path.to_path_buf();
    move |source| EmbeddedPgError::Io {
        action,
        path,
        source,
    }
}

/// How [`EmbeddedPostgres::supervise`] watches the server and brings it
/// back.
#[derive(Debug, Clone, Copy)]
pub struct Supervision {
    /// How often the server's process is looked at.
    pub check_interval: Duration,
    /// The pause before the first restart after a failed one; doubled after
    /// each further failure, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Restarts that may fail in a row before supervision gives up.
    pub max_failures: u32,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_failures: 10,
        }
    }
}

/// The OS identity the PostgreSQL binaries run as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// What `pg_ctl status` says about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerStatus {
    Running,
    Stopped,
    /// The data directory is missing or unreadable.
    NoDataDirectory,
}

/// The fields of `postmaster.pid` we care about.
#[derive(Debug)]
struct PostmasterInfo {
    pid: u32,
    port: u16,
    socket_dir: PathBuf,
}

/// A running (or adopted) embedded PostgreSQL cluster.
///
/// Dropping the handle leaves the server running: callers stop it explicitly
/// with [`EmbeddedPostgres::stop`], and several processes may share it.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
}

impl EmbeddedPostgres {
    /// Initialises the cluster in `data_dir/pgdata` if there is none, then
    /// starts it, or adopts it if a server for it is already running. Returns
    /// once the server accepts connections.
    pub async fn start(opts: EmbeddedOptions) -> Result<Self> {
        if opts.port == 0 {
            return Err(EmbeddedPgError::InvalidOption(
                "port must be between 1 and 65535".to_owned(),
            ));
        }
        let bin_dir = find_bin_dir(opts.bin_dir.as_deref())?;
        let data_dir = std::path::absolute(&opts.data_dir)
            .map_err(io_error("resolve data directory", &opts.data_dir))?;
        check_data_dir_text(&data_dir)?;
        let socket_dir = data_dir.join("run");
        check_socket_path_len(&socket_dir, opts.port)?;

        // PostgreSQL refuses to run as root, so root hands it to `postgres`.
        let run_as = if geteuid().is_root() {
            Some(postgres_os_user()?)
        } else {
            None
        };

        let pg = Self {
            pgdata: data_dir.join("pgdata"),
            log_file: data_dir.join("postgres.log"),
            socket_dir,
            data_dir,
            bin_dir,
            port: opts.port,
            run_as,
        };

        pg.prepare_data_dir()?;
        let _lock = pg.lock().await?;
        if !pg.is_initialised()? {
            pg.init().await?;
        }
        pg.ensure_running().await?;
        Ok(pg)
    }

    /// A sqlx/libpq URL reaching `dbname` through the Unix socket.
    pub fn database_url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@localhost/{}?host={}&port={}",
            percent_encode(dbname, false),
            percent_encode(&self.socket_dir.to_string_lossy(), true),
            self.port
        )
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Our data directory (the cluster itself is in its `pgdata`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The port naming the socket file.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open sessions are disconnected and
    /// their transactions rolled back). Stopping a stopped server is fine.
    pub async fn stop(&self) -> Result<()> {
        if !self.data_dir.exists() {
            // Nothing left that a server could be running from.
            return Ok(());
        }
        // Hold the lock so a concurrent start in another process either
        // finishes before we stop or starts afresh after us.
        let _lock = self.lock().await?;
        if self.status().await? != ServerStatus::Running {
            debug!(pgdata = %self.pgdata.display(), "embedded PostgreSQL already stopped");
            return Ok(());
        }
        info!(pgdata = %self.pgdata.display(), "stopping embedded PostgreSQL");
        let timeout = READY_TIMEOUT.as_secs().to_string();
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-m", "fast", "-w", "-s", "-t", &timeout, "-D"])
            .arg(&self.pgdata);
        let output = self.run(cmd, "pg_ctl").await?;
        if !output.status.success() {
            // Someone else may have stopped it between our check and now.
            if self.status().await? != ServerStatus::Running {
                return Ok(());
            }
            return Err(self.command_failed("pg_ctl stop", &output));
        }
        info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop), without
    /// initialising anything. Adopts the server if it is already running.
    pub async fn restart(&self) -> Result<()> {
        let _lock = self.lock().await?;
        self.ensure_running().await
    }

    /// The running server's process id, from `postmaster.pid`.
    pub fn server_pid(&self) -> Option<u32> {
        read_postmaster_pid(&self.pgdata).map(|info| info.pid)
    }

    /// Watches the server until `stop` turns true (or its sender is
    /// dropped). When its process is gone (killed, crashed, stopped by
    /// someone else) it says so in the log, with the end of the server log,
    /// and starts the server again, retrying with backoff. Gives up with the
    /// last error after `policy.max_failures` failed restarts in a row: the
    /// caller should then exit non-zero so that its own supervisor steps in.
    pub async fn supervise(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        policy: Supervision,
    ) -> Result<()> {
        let mut watched = self.server_pid();
        loop {
            tokio::select! {
                () = tokio::time::sleep(policy.check_interval) => {}
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return Ok(());
                },
            }
            if watched.is_some_and(process_runs) {
                continue;
            }
            tracing::error!(
                pid = watched,
                log = %self.log_file.display(),
                last_lines = %format_log_tail(&self.log_file),
                "the embedded PostgreSQL is gone (killed, crashed or stopped); starting it again"
            );
            let mut backoff = policy.initial_backoff;
            let mut failures = 0;
            loop {
                match self.restart().await {
                    Ok(()) => {
                        watched = self.server_pid();
                        info!(pid = watched, "embedded PostgreSQL started again");
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= policy.max_failures {
                            tracing::error!(error = %e, failures, "the embedded PostgreSQL does not start again; giving up");
                            return Err(e);
                        }
                        tracing::warn!(error = %e, failures, ?backoff, "the embedded PostgreSQL did not start; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    },
                }
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }

    /// Creates the data directory and hands it to the server's OS user.
    ///
    /// This is quick metadata work done once at start-up, so it uses
    /// blocking `std::fs` calls rather than a blocking-pool round trip.
    fn prepare_data_dir(&self) -> Result<()> {
        if let Some(user) = self.run_as {
            // Fail before creating anything if `postgres` could never get in.
            check_reachable(&self.data_dir, user)?;
        }
        fs::create_dir_all(&self.data_dir)
            .map_err(io_error("create data directory", &self.data_dir))?;
        if let Some(user) = self.run_as {
            chown(&self.data_dir, user)?;
            // Ancestors we just created got our umask, which may deny others.
            check_reachable(&self.data_dir, user)?;
        }
        // The cluster trusts every local connection, so only its owner (and
        // root) may get near it.
        set_mode(&self.data_dir, 0o700)
    }

    /// Takes the exclusive lock serialising init/start/stop across processes
    /// (and across tasks of this process: every call opens its own file
    /// description, and flock conflicts between descriptions).
    async fn lock(&self) -> Result<Flock<File>> {
        let path = self.data_dir.join(LOCK_FILE_NAME);
        let run_as = self.run_as;
        let pgdata = self.pgdata.clone();
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io_error("open lock file", &path))?;
            if let Some(user) = run_as {
                chown(&path, user)?;
            }
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((file, Errno::EWOULDBLOCK)) => file,
                Err((_, errno)) => return Err(io_error("lock", &path)(errno.into())),
            };
            info!(
                pgdata = %pgdata.display(),
                "waiting for another process to finish starting or stopping embedded PostgreSQL"
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io_error("lock", &path)(errno.into()))
        })
        .await
        .map_err(|join| {
            io_error("lock", &self.data_dir.join(LOCK_FILE_NAME))(io::Error::other(join))
        })?
    }

    fn is_initialised(&self) -> Result<bool> {
        if self.pgdata.join("PG_VERSION").is_file() {
            return Ok(true);
        }
        match fs::read_dir(&self.pgdata) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("read", &self.pgdata)(e)),
            // An empty directory (e.g. made by an operator) is fine: init
            // replaces it.
            Ok(mut entries) => match entries.next() {
                None => Ok(false),
                Some(_) => Err(EmbeddedPgError::NotADataDirectory {
                    path: self.pgdata.clone(),
                }),
            },
        }
    }

    /// Runs initdb in a staging directory and renames it into place, so an
    /// interrupted init never leaves a half-made cluster that looks real.
    async fn init(&self) -> Result<()> {
        let staging = self.data_dir.join("pgdata.initdb");
        match fs::remove_dir_all(&staging) {
            Ok(()) => info!(path = %staging.display(), "removed leftover of an interrupted initdb"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &staging)(e)),
        }

        info!(pgdata = %self.pgdata.display(), "initialising embedded PostgreSQL cluster");
        let mut cmd = self.command("initdb");
        cmd.arg("--pgdata").arg(&staging).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            // The caller's locale may not be installed for `postgres`,
            // and C collation cannot change under us with a libc upgrade
            // (which would silently corrupt text indexes).
            "--locale=C",
        ]);
        let output = self.run(cmd, "initdb").await?;
        if !output.status.success() {
            return Err(EmbeddedPgError::CommandFailed {
                command: "initdb".to_owned(),
                status: output.status,
                details: format_output("initdb", &output),
            });
        }

        append_initial_conf(&staging.join("postgresql.conf"))?;

        if self.pgdata.exists() {
            // is_initialised() let only an empty directory through.
            fs::remove_dir(&self.pgdata).map_err(io_error("remove", &self.pgdata))?;
        }
        fs::rename(&staging, &self.pgdata).map_err(io_error("rename", &staging))?;
        // Make the rename itself durable, as initdb did for the files.
        File::open(&self.data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("sync", &self.data_dir))?;
        info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL cluster initialised");
        Ok(())
    }

    /// Starts the server unless it already runs; waits until it accepts
    /// connections either way. The caller holds the lock.
    async fn ensure_running(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut announced = false;
        loop {
            if self.status().await? != ServerStatus::Running {
                return self.start_server().await;
            }
            if let Some(running) = read_postmaster_pid(&self.pgdata) {
                self.check_same_socket(&running)?;
            }
            if self.is_ready().await? {
                info!(
                    pgdata = %self.pgdata.display(),
                    socket_dir = %self.socket_dir.display(),
                    "adopted already running embedded PostgreSQL"
                );
                return Ok(());
            }
            if !announced {
                // Typically crash recovery after the server was killed.
                info!(
                    pgdata = %self.pgdata.display(),
                    "embedded PostgreSQL is running but not ready yet; waiting"
                );
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedPgError::NotReady {
                    pgdata: self.pgdata.clone(),
                    socket_dir: self.socket_dir.clone(),
                    timeout: READY_TIMEOUT,
                    details: format_log_tail(&self.log_file),
                });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    async fn start_server(&self) -> Result<()> {
        self.write_runtime_conf()?;
        fs::create_dir_all(&self.socket_dir)
            .map_err(io_error("create socket directory", &self.socket_dir))?;
        set_mode(&self.socket_dir, 0o700)?;
        // pg_ctl opens the log as the server's user; create it ourselves so
        // its mode is private whatever the umask.
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log_file)
            .map_err(io_error("create log file", &self.log_file))?;
        if let Some(user) = self.run_as {
            chown(&self.socket_dir, user)?;
            chown(&self.log_file, user)?;
        }

        info!(
            pgdata = %self.pgdata.display(),
            socket_dir = %self.socket_dir.display(),
            log = %self.log_file.display(),
            "starting embedded PostgreSQL"
        );
        let timeout = READY_TIMEOUT.as_secs().to_string();
        let mut cmd = self.command("pg_ctl");
        // -l matters beyond logging: without it the server inherits our
        // output pipes and reading pg_ctl's output would never finish.
        cmd.args(["start", "-w", "-s", "-t", &timeout, "-D"])
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file);
        let output = self.run(cmd, "pg_ctl").await?;
        if !output.status.success() {
            return Err(self.command_failed("pg_ctl start", &output));
        }
        info!(socket_dir = %self.socket_dir.display(), "embedded PostgreSQL accepts connections");
        Ok(())
    }

    /// Writes the settings that depend on where the data dir is now. They
    /// are rewritten at every start so a moved data dir keeps working, and
    /// they live in a file included at the end of postgresql.conf so that
    /// socket-only access is not undone by an edit above the include.
    fn write_runtime_conf(&self) -> Result<()> {
        ensure_include(&self.pgdata.join("postgresql.conf"))?;
        let socket_dir = self.socket_dir.to_string_lossy();
        // unix_socket_directories is a list: double-quote the entry so
        // spaces survive, then single-quote the whole value for the parser.
        let list_entry = format!("\"{}\"", socket_dir.replace('"', "\"\""));
        let contents = format!(
            "# Managed by privacy-records: rewritten every time it starts this cluster.\n\
             # The embedded server is reachable only through its Unix socket.\n\
             listen_addresses = ''\n\
             port = {port}\n\
             unix_socket_directories = {dirs}\n\
             unix_socket_permissions = 0700\n",
            port = self.port,
            dirs = conf_quote(&list_entry),
        );
        let path = self.pgdata.join(RUNTIME_CONF_NAME);
        let tmp = self.pgdata.join(format!("{RUNTIME_CONF_NAME}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &tmp))?;
        if let Some(user) = self.run_as {
            chown(&tmp, user)?;
        }
        fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))
    }

    fn check_same_socket(&self, running: &PostmasterInfo) -> Result<()> {
        let same_dir = running.socket_dir == self.socket_dir
            || matches!(
                (fs::canonicalize(&running.socket_dir), fs::canonicalize(&self.socket_dir)),
                (Ok(a), Ok(b)) if a == b
            );
        if same_dir && running.port == self.port {
            return Ok(());
        }
        Err(EmbeddedPgError::RunningElsewhere {
            pgdata: self.pgdata.clone(),
            pid: running.pid,
            running_socket_dir: running.socket_dir.clone(),
            running_port: running.port,
            socket_dir: self.socket_dir.clone(),
            port: self.port,
        })
    }

    async fn status(&self) -> Result<ServerStatus> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["status", "-D"]).arg(&self.pgdata);
        let output = self.run(cmd, "pg_ctl").await?;
        // Exit codes documented for `pg_ctl status`.
        match output.status.code() {
            Some(0) => Ok(ServerStatus::Running),
            Some(3) => Ok(ServerStatus::Stopped),
            Some(4) => Ok(ServerStatus::NoDataDirectory),
            _ => Err(self.command_failed("pg_ctl status", &output)),
        }
    }

    /// Whether the server accepts connections on our socket (it may be
    /// running but still in crash recovery or shutting down).
    async fn is_ready(&self) -> Result<bool> {
        let mut cmd = self.command("pg_isready");
        cmd.arg("-q")
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-t", "5"]);
        let output = self.run(cmd, "pg_isready").await?;
        Ok(output.status.success())
    }

    /// A command for one of the PostgreSQL binaries, run as the server's OS
    /// user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        // The `postgres` user may not be able to enter our working directory
        // (e.g. /root), which makes initdb and pg_ctl complain.
        cmd.current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        if let Some(user) = self.run_as {
            // std also drops our supplementary groups when switching uid.
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd
    }

    async fn run(&self, mut cmd: Command, program: &str) -> Result<Output> {
        debug!(command = ?cmd.as_std(), "running PostgreSQL program");
        cmd.output()
            .await
            .map_err(io_error("run", &self.bin_dir.join(program)))
    }

    fn command_failed(&self, command: &str, output: &Output) -> EmbeddedPgError {
        let mut details = format_output(command, output);
        details.push_str(&format_log_tail(&self.log_file));
        EmbeddedPgError::CommandFailed {
            command: command.to_owned(),
            status: output.status,
            details,
        }
    }
}

/// The default data directory: system-wide for root, per-user otherwise.
pub fn default_data_dir() -> PathBuf {
    if geteuid().is_root() {
        return PathBuf::from(ROOT_DEFAULT_DATA_DIR);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return xdg.join(APP_DIR_NAME);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| User::from_uid(getuid()).ok().flatten().map(|u| u.dir));
    match home {
        Some(home) => home.join(".local").join("share").join(APP_DIR_NAME),
        None => PathBuf::from(APP_DIR_NAME),
    }
}

/// Finds the directory with the PostgreSQL server binaries: `explicit`, else
/// `$PRIVACY_RECORDS_PG_BIN_DIR`, else the highest-versioned
/// `/usr/lib/postgresql/<N>/bin`, else the directory of `pg_ctl` on `PATH`.
/// An explicit or environment-given directory that lacks the binaries is an
/// error rather than a reason to look elsewhere.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return checked_bin_dir(dir, dir.display().to_string());
    }
    if let Some(dir) = std::env::var_os(PG_BIN_DIR_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        let looked_in = format!("{PG_BIN_DIR_ENV}={}", dir.display());
        return checked_bin_dir(&dir, looked_in);
    }
    if let Some(dir) = highest_versioned_bin_dir(Path::new(DEBIAN_PG_ROOT)) {
        return Ok(dir);
    }
    if let Some(dir) = bin_dir_on_path() {
        return Ok(dir);
    }
    Err(EmbeddedPgError::BinariesNotFound {
        looked_in: format!("{DEBIAN_PG_ROOT}/*/bin and PATH"),
    })
}

fn checked_bin_dir(dir: &Path, looked_in: String) -> Result<PathBuf> {
    if !has_server_binaries(dir) {
        return Err(EmbeddedPgError::BinariesNotFound { looked_in });
    }
    // Commands run with the data dir as working directory, so a relative
    // program path would resolve differently.
    std::path::absolute(dir).map_err(io_error("resolve", dir))
}

fn has_server_binaries(dir: &Path) -> bool {
    REQUIRED_BINARIES
        .iter()
        .all(|name| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Debian/Ubuntu install each major version side by side; prefer the newest.
fn highest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// "15" or "9.6" into comparable numbers; anything else is not a version.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn bin_dir_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let pg_ctl = dir.join("pg_ctl");
        if !is_executable(&pg_ctl) {
            return None;
        }
        if has_server_binaries(&dir) && dir.is_absolute() {
            return Some(dir);
        }
        // PATH may hold only a symlink to pg_ctl; its siblings are where the
        // link points.
        let real_dir = fs::canonicalize(&pg_ctl).ok()?.parent()?.to_path_buf();
        has_server_binaries(&real_dir).then_some(real_dir)
    })
}

fn postgres_os_user() -> Result<RunAs> {
    match User::from_name(PG_OS_USER) {
        Ok(Some(user)) => Ok(RunAs {
            uid: user.uid,
            gid: user.gid,
        }),
        Ok(None) => Err(EmbeddedPgError::NoPostgresUser),
        Err(errno) => Err(io_error("look up OS user", Path::new(PG_OS_USER))(
            errno.into(),
        )),
    }
}

/// The data dir path goes into a config file and a URL, so it must be text
/// that both can carry.
fn check_data_dir_text(data_dir: &Path) -> Result<()> {
    let Some(text) = data_dir.to_str() else {
        return Err(EmbeddedPgError::InvalidOption(format!(
            "data directory {} is not valid UTF-8",
            data_dir.display()
        )));
    };
    if text.chars().any(char::is_control) {
        return Err(EmbeddedPgError::InvalidOption(format!(
            "data directory {text:?} contains control characters"
        )));
    }
    Ok(())
}

fn check_socket_path_len(socket_dir: &Path, port: u16) -> Result<()> {
    let path = socket_dir.join(format!(".s.PGSQL.{port}"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(EmbeddedPgError::SocketPathTooLong { path, len });
    }
    Ok(())
}

/// Checks that `user` can traverse every ancestor of `dir` (`dir` itself is
/// handed to `user`). Ancestors that do not exist yet are skipped: we create
/// them, and the caller checks again afterwards.
fn check_reachable(dir: &Path, user: RunAs) -> Result<()> {
    // Judge the real directories, not symlinks on the way to them.
    let resolved = resolve_existing_prefix(dir);
    // Outermost first: that is the one to fix (e.g. /root, not /root/x).
    let ancestors: Vec<&Path> = resolved.ancestors().skip(1).collect();
    for ancestor in ancestors.into_iter().rev() {
        let meta = match fs::metadata(ancestor) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("inspect", ancestor)(e)),
        };
        let mode = meta.mode();
        // Unix picks exactly one class: owner, else group, else others. Only
        // the primary group counts, because std clears supplementary groups
        // when it switches the child to another uid.
        let can_enter = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_enter {
            return Err(EmbeddedPgError::DataDirUnreachable {
                dir: ancestor.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// `path` with its longest existing prefix canonicalised.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        if let Ok(real) = fs::canonicalize(current) {
            return missing.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                current = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn chown(path: &Path, user: RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(io_error("change owner of", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_error("change mode of", path))
}

/// Settings chosen once when the cluster is created; operators may edit them.
fn append_initial_conf(conf: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(conf)
        .map_err(io_error("open", conf))?;
    let block = format!(
        "\n# Added by privacy-records when it created this cluster.\n\
         max_connections = 200\n\
         shared_buffers = 128MB\n\
         # Durability matters more than speed for privacy records.\n\
         fsync = on\n\
         synchronous_commit = on\n\
         # Socket-only access; keep this line last.\n\
         {RUNTIME_CONF_INCLUDE}\n"
    );
    file.write_all(block.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", conf))
}

/// Makes sure postgresql.conf includes our runtime settings, also for a
/// cluster that was not created by us.
fn ensure_include(conf: &Path) -> Result<()> {
    let text = fs::read_to_string(conf).map_err(io_error("read", conf))?;
    if text.lines().any(|line| line.trim() == RUNTIME_CONF_INCLUDE) {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .append(true)
        .open(conf)
        .map_err(io_error("open", conf))?;
    let block =
        format!("\n# Socket-only access, added by privacy-records.\n{RUNTIME_CONF_INCLUDE}\n");
    file.write_all(block.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", conf))
}

/// A single-quoted postgresql.conf string.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Whether process `pid` runs. A zombie does not: when this process is the
/// container's init, a killed postmaster becomes our zombie until reaped.
fn process_runs(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        // No /proc (not Linux): signal 0 only asks whether it exists.
        Err(_) if !Path::new("/proc/self").exists() => i32::try_from(pid)
            .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()),
        Err(_) => false,
    }
}

/// Reads postmaster.pid; `None` if absent or half-written. Line layout
/// (PostgreSQL 10+): pid, data dir, start time, port, socket dir, ...
fn read_postmaster_pid(pgdata: &Path) -> Option<PostmasterInfo> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let port = lines.nth(2)?.trim().parse().ok()?;
    let socket_dir = lines.next()?.trim();
    if socket_dir.is_empty() {
        return None;
    }
    Some(PostmasterInfo {
        pid,
        port,
        socket_dir: PathBuf::from(socket_dir),
    })
}

fn format_output(command: &str, output: &Output) -> String {
    let mut text = String::new();
    for stream in [&output.stdout, &output.stderr] {
        let s = String::from_utf8_lossy(stream);
        let s = s.trim();
        if !s.is_empty() {
            text.push_str(s);
            text.push('\n');
        }
    }
    if text.is_empty() {
        return String::new();
    }
    format!("\n--- output of {command} ---\n{}", text.trim_end())
}

fn format_log_tail(log_file: &Path) -> String {
    match log_tail(log_file, LOG_TAIL_LINES) {
        Ok(tail) if !tail.is_empty() => {
            format!("\n--- last lines of {} ---\n{tail}", log_file.display())
        }
        Ok(_) => String::new(),
        Err(e) => format!("\n(could not read {}: {e})", log_file.display()),
    }
}

fn log_tail(log_file: &Path, lines: usize) -> io::Result<String> {
    let mut file = File::open(log_file)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    // When we started mid-file the first line is probably cut; drop it.
    let skip_partial = usize::from(start > 0 && all.len() > lines);
    let from = all.len().saturating_sub(lines).max(skip_partial);
    Ok(all[from..].join("\n"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when asked, which is safe in a query value and keeps paths readable).
fn percent_encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_paths_readable_and_escapes_the_rest() {
        assert_eq!(percent_encode("/tmp/a b/run", true), "/tmp/a%20b/run");
        assert_eq!(percent_encode("a/b&c=d", false), "a%2Fb%26c%3Dd");
        assert_eq!(percent_encode("é", false), "%C3%A9");
    }

    #[test]
    fn conf_values_escape_quotes_and_backslashes() {
        assert_eq!(conf_quote(r#""/a'b\c""#), r#"'"/a''b\\c"'"#);
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn long_socket_paths_are_rejected() {
        let dir = PathBuf::from(format!("/{}", "x".repeat(100)));
        let err = check_socket_path_len(&dir, 5432).unwrap_err();
        assert!(matches!(err, EmbeddedPgError::SocketPathTooLong { .. }));
        assert!(check_socket_path_len(Path::new("/var/lib/privacy-records/run"), 5432).is_ok());
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("postgres.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 20).unwrap();
        assert!(tail.starts_with("line 11\n"));
        assert!(tail.ends_with("line 30"));
    }
}
