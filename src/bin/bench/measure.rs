//! The load drivers: closed-loop (each caller calls again at once) and open-loop
//! (calls released on a fixed schedule, latency from the scheduled time), and what
//! a measured window yields.

use super::*;

/// What one caller saw during the measured window.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) latencies_us: Vec<u64>,
    /// Units of work done by the successful calls (tasks for `tasks`).
    pub(crate) units: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.units += other.units;
        for (label, count) in other.errors {
            *self.errors.entry(label).or_default() += count;
        }
    }
}

/// The result of one scenario in one run.
#[derive(Serialize, Clone)]
pub(crate) struct Measurement {
    pub(crate) ok: u64,
    pub(crate) req_per_sec: f64,
    pub(crate) units_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// The scheduled rate (open-loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target_rate: Option<f64>,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Measurement {
    pub(crate) fn from_tally(mut tally: Tally, window: Duration) -> Self {
        tally.latencies_us.sort_unstable();
        let ok = tally.latencies_us.len() as u64;
        Measurement {
            ok,
            req_per_sec: ok as f64 / window.as_secs_f64(),
            units_per_sec: tally.units as f64 / window.as_secs_f64(),
            p50_ms: percentile_ms(&tally.latencies_us, 0.50),
            p99_ms: percentile_ms(&tally.latencies_us, 0.99),
            p999_ms: percentile_ms(&tally.latencies_us, 0.999),
            target_rate: None,
            errors: tally.errors,
        }
    }

    /// A measurement that could not be taken, with the reason as its only error.
    pub(crate) fn failed(label: String) -> Self {
        Measurement::from_tally(
            Tally {
                errors: BTreeMap::from([(label, 1)]),
                ..Tally::default()
            },
            Duration::from_secs(1),
        )
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Nearest-rank percentile of sorted microsecond latencies, in milliseconds.
pub(crate) fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Runs `scenario` with every caller for warmup + duration and returns the measured window.
pub(crate) async fn measure(
    scenario: Scenario,
    callers: &mut Vec<Caller>,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let tasks: Vec<_> = callers
        .drain(..)
        .map(|caller| tokio::spawn(drive(caller, scenario, window_start, window_end)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok((caller, tally)) => {
                callers.push(caller);
                total.merge(tally);
            }
            Err(e) => {
                *total
                    .errors
                    .entry(format!("CallerPanicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    Measurement::from_tally(total, duration)
}

/// One closed-loop caller: calls back to back until `window_end`, counting the calls that
/// complete inside [window_start, window_end].
pub(crate) async fn drive(
    mut caller: Caller,
    scenario: Scenario,
    window_start: Instant,
    window_end: Instant,
) -> (Caller, Tally) {
    let mut tally = Tally::default();
    while Instant::now() < window_end {
        let sent = Instant::now();
        let result = caller.call(scenario).await;
        let done = Instant::now();
        if done < window_start || done > window_end {
            continue;
        }
        match result {
            Ok(units) => {
                tally.latencies_us.push((done - sent).as_micros() as u64);
                tally.units += units;
            }
            Err(label) => *tally.errors.entry(label).or_default() += 1,
        }
    }
    (caller, tally)
}

/// Runs `scenario` open-loop at `rate` calls per second for warmup + duration: a pacer
/// thread releases call slots on a fixed schedule and a free caller takes the next slot.
/// A slot's latency runs from its scheduled time, so calls queued behind a slow server
/// (or a busy client) count their wait: the measurement omits nothing.
pub(crate) async fn measure_open(
    scenario: Scenario,
    callers: &mut Vec<Caller>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let start = Instant::now() + Duration::from_millis(10);
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let (slots, receiver) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    // A thread, not a tokio timer: tokio's timer has millisecond granularity, which would
    // add up to a millisecond to every latency; the OS timer is off by tens of microseconds.
    let pacer = std::thread::spawn(move || {
        for k in 0u64.. {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if due >= window_end {
                return;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if slots.send(due).is_err() {
                return;
            }
        }
    });
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let tasks: Vec<_> = callers
        .drain(..)
        .map(|caller| {
            let receiver = receiver.clone();
            tokio::spawn(drive_open(caller, scenario, receiver, window_start))
        })
        .collect();
    let mut total = Tally::default();
    let mut last_done = window_end;
    for task in tasks {
        match task.await {
            Ok((caller, tally, done)) => {
                callers.push(caller);
                total.merge(tally);
                last_done = last_done.max(done);
            }
            Err(e) => {
                *total
                    .errors
                    .entry(format!("CallerPanicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    if pacer.join().is_err() {
        *total.errors.entry("PacerPanicked".to_string()).or_default() += 1;
    }
    // Calls scheduled inside the window but finished after it stretch the window, so a
    // server that cannot keep up shows an achieved rate below the target.
    let mut m = Measurement::from_tally(total, last_done - window_start);
    m.target_rate = Some(rate);
    m
}

/// One open-loop caller: takes the next scheduled slot, sends it, and measures from the
/// slot's scheduled time; slots before `window_start` are warmup. Returns when the pacer
/// is done and the queue is empty, with the time its last measured call finished.
pub(crate) async fn drive_open(
    mut caller: Caller,
    scenario: Scenario,
    slots: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    window_start: Instant,
) -> (Caller, Tally, Instant) {
    let mut tally = Tally::default();
    let mut last_done = window_start;
    loop {
        let Some(due) = slots.lock().await.recv().await else {
            return (caller, tally, last_done);
        };
        let result = caller.call(scenario).await;
        let done = Instant::now();
        if due < window_start {
            continue;
        }
        last_done = last_done.max(done);
        match result {
            Ok(units) => {
                tally.latencies_us.push((done - due).as_micros() as u64);
                tally.units += units;
            }
            Err(label) => *tally.errors.entry(label).or_default() += 1,
        }
    }
}
