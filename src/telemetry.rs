//! Logging setup: plain lines for a terminal, JSON when configured. Logs go
//! to stderr through a bounded queue and a thread of their own, so a log
//! destination that is closed (EPIPE), full (ENOSPC) or not read (a full
//! pipe) never blocks, fails or panics a call: a line that cannot be written
//! is dropped and counted, and the count is written once lines go out again.
//!
//! Traces: OpenTelemetry, opt-in by the standard variables. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`,
//! spans go to that OTLP/gRPC endpoint in batches; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and
//! `OTEL_BSP_*` are read by the SDK as the specification says. The
//! middleware continues the caller's W3C `traceparent`.
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
/// The trace pipeline, when the environment asks for one.
static TRACES: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Lines lost since the last report.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Installs the global subscriber. Safe to call more than once (tests):
/// later calls are ignored.
/// Call it inside the Tokio runtime: the OTLP exporter's channel needs it.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| QueuedStderr)
        // Its own report of a failed write goes to stderr with eprintln!,
        // which panics when stderr is closed; failures are counted instead.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Plain => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, trouble) = match tracer_provider(|k| std::env::var(k).ok()) {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("privacy-records");
            let _ = TRACES.set(provider);
            // Spans down to the store's (debug). A static level: with a
            // second per-target filter here, some events left the logs.
            let spans = tracing_subscriber::filter::LevelFilter::DEBUG;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans);
            (Some(layer), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(traces)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    if let Some(e) = trouble {
        tracing::warn!(error = %e, "no traces: the OTLP exporter could not be set up");
    }
}

/// Whether the standard variables ask for traces.
fn traces_wanted(env: &impl Fn(&str) -> Option<String>) -> bool {
    let is = |k: &str, v: &str| env(k).is_some_and(|x| x.trim().eq_ignore_ascii_case(v));
    let set = |k: &str| env(k).is_some_and(|x| !x.trim().is_empty());
    !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn tracer_provider(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    if !traces_wanted(&env) {
        return Ok(None);
    }
    // The endpoint, headers, timeout and compression come from the
    // OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none_or(|n| n.trim().is_empty()) {
        resource = resource.with_service_name("privacy-records");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Sends the spans still batched (a bounded wait) and stops the trace
/// pipeline; call it once, before the process exits.
pub fn shutdown_traces() {
    if let Some(provider) = TRACES.get() {
        let _ = provider.shutdown_with_timeout(FLUSH_PATIENCE);
    }
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

#[cfg(test)]
mod trace_env_tests {
    use super::traces_wanted;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint_and_not_disabled() {
        assert!(!traces_wanted(&env(&[])));
        assert!(!traces_wanted(&env(&[("OTEL_SERVICE_NAME", "x")])));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(traces_wanted(&env(&[endpoint])));
        assert!(traces_wanted(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(!traces_wanted(&env(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(!traces_wanted(&env(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(!traces_wanted(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
    }
}
