//! Logging setup: plain lines for a terminal, JSON when configured. Logs go
//! to stderr through a bounded queue and a thread of their own, so a log
//! destination that is closed (EPIPE), full (ENOSPC) or not read (a full
//! pipe) never blocks, fails or panics a call: a line that cannot be written
//! is dropped and counted, and the count is written once lines go out again.
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines waiting for the log thread at most; beyond, lines are dropped.
const QUEUE_LINES: usize = 8192;
/// How long `flush` waits for the queue to drain before the process exits.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

enum Line {
    Text(Vec<u8>),
    /// Answered once every line before it was written (or dropped).
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Line>> = OnceLock::new();
/// Lines lost since the last report.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Installs the global subscriber. Safe to call more than once (tests):
/// later calls are ignored.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QueuedStderr)
        // Its own report of a failed write goes to stderr with eprintln!,
        // which panics when stderr is closed; failures are counted instead.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Writes what is queued before the process exits, waiting a bounded time
/// (a stuck log destination must not hold the exit).
pub fn flush() {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    if queue.try_send(Line::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(FLUSH_PATIENCE);
    }
}

/// A line for stderr that must not fail or panic (the binary's last error,
/// the `new-token` output): written straight away, failures ignored.
pub fn write_stderr(text: &str) {
    flush();
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Like `println!`, without its panic when stdout is closed.
pub fn write_stdout(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn queue() -> Option<&'static SyncSender<Line>> {
    static START: Mutex<()> = Mutex::new(());
    if let Some(queue) = QUEUE.get() {
        return Some(queue);
    }
    let _guard = START.lock().ok()?;
    if let Some(queue) = QUEUE.get() {
        return Some(queue);
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(rx))
        .ok()?;
    let _ = QUEUE.set(tx);
    QUEUE.get()
}

fn write_lines(lines: Receiver<Line>) {
    let mut stderr = std::io::stderr();
    for line in lines {
        match line {
            Line::Text(text) => {
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let note = format!(
                        "privacy-records: {dropped} log lines were dropped (the log destination was full or closed)\n"
                    );
                    if stderr.write_all(note.as_bytes()).is_err() {
                        DROPPED.fetch_add(dropped, Ordering::Relaxed);
                    }
                }
                if stderr.write_all(&text).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Line::Flush(done) => {
                let _ = stderr.flush();
                let _ = done.try_send(());
            }
        }
    }
}

/// The writer the subscriber formats each event into: one `write` per
/// event, queued without blocking; always reports success.
struct QueuedStderr;

impl Write for QueuedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let sent = queue().map(|q| q.try_send(Line::Text(buf.to_vec())));
        match sent {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
