//! `memory`: the server's resident memory before and after a decision cache fills.

use super::*;

/// The purposes `memory` seeds for every subject: consent-based ones of the default
/// catalogue that take a grant without evidence.
pub(crate) const MEMORY_PURPOSES: [&str; 5] = [
    "analytics_cookies",
    "marketing_email",
    "targeted_advertising",
    "personalized_recommendations",
    "api_io_storage",
];
/// Subjects per seeding statement of `memory`.
pub(crate) const MEMORY_SEED_CHUNK: usize = 50_000;
/// Pairs per BatchCheckConsent call while `memory` warms the server.
pub(crate) const MEMORY_BATCH: usize = 100;

/// What the `memory` scenario found.
#[derive(Serialize)]
pub(crate) struct MemoryReport {
    pub(crate) subjects: usize,
    pub(crate) purposes: usize,
    pub(crate) server_pid: u32,
    pub(crate) seed_secs: f64,
    pub(crate) warm_secs: f64,
    pub(crate) decisions_checked: u64,
    pub(crate) decisions_per_sec: f64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// After seeding, before the checks.
    pub(crate) before: ProcMemory,
    /// After every pair was checked once.
    pub(crate) after: ProcMemory,
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Serialize, Clone, Copy)]
pub(crate) struct ProcMemory {
    /// Resident set size now.
    pub(crate) vm_rss_kib: u64,
    /// Peak resident set size so far.
    pub(crate) vm_hwm_kib: u64,
}

pub(crate) fn proc_memory(pid: u32) -> Result<ProcMemory, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("no {name} in {path}"))
    };
    Ok(ProcMemory {
        vm_rss_kib: field("VmRSS:")?,
        vm_hwm_kib: field("VmHWM:")?,
    })
}

/// The process listening on TCP `port`: the socket's inode from `/proc/net/tcp{,6}`,
/// then the process holding a descriptor of that socket.
pub(crate) fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode (field 9); 0A is LISTEN.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if fields.len() > 9 && fields[3] == "0A" && local_port == Some(port) {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|proc| {
        let pid: u32 = proc.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(proc.path().join("fd")).ok()?;
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| inodes.contains(target.to_string_lossy().as_ref()))
            .then_some(pid)
    })
}

/// The `memory` scenario: seeds subjects × MEMORY_PURPOSES straight into the ledger,
/// reads the server's memory, checks every pair once, reads it again.
pub(crate) async fn measure_memory(
    args: &Args,
    pool: &sqlx::PgPool,
    channels: &[Channel],
    run_id: uuid::Uuid,
) -> Result<MemoryReport, String> {
    let server_pid = match args.server_pid {
        Some(pid) => pid,
        None => {
            let port = args
                .addr
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.port_u16())
                .ok_or_else(|| format!("no port in --addr {}; give --server-pid", args.addr))?;
            listening_pid(port).ok_or_else(|| {
                format!("no process found listening on port {port}; give --server-pid")
            })?
        }
    };
    proc_memory(server_pid)?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM purposes WHERE key = ANY($1)")
        .bind(&MEMORY_PURPOSES[..])
        .fetch_one(pool)
        .await
        .map_err(|e| format!("cannot read purposes: {e}"))?;
    if found != MEMORY_PURPOSES.len() as i64 {
        return Err(format!(
            "memory needs the default purposes {MEMORY_PURPOSES:?}; {found} of them exist"
        ));
    }
    let prefix = format!("benchmem-{run_id}-");
    let subjects = args.memory_subjects;
    eprintln!(
        "memory: seeding {subjects} subjects × {} purposes ({prefix}N) straight into consent_records ...",
        MEMORY_PURPOSES.len()
    );
    let seeding = Instant::now();
    // Decision for (n, purpose i): REFUSED when n + i is even, GRANTED when odd.
    let insert = "INSERT INTO consent_records (subject_id, purpose_key, decision, source, \
                  jurisdiction, effective_time, request_id, actor) \
                  SELECT $1 || n, p.key, \
                         CASE WHEN (n + p.i - 1) % 2 = 0 THEN 'REFUSED' ELSE 'GRANTED' END, \
                         'IMPORT', 'US-CA', now() - interval '1 day', $1 || n || '/' || p.key, 'bench' \
                  FROM generate_series($2::bigint, $3::bigint) AS n, \
                       unnest($4::text[]) WITH ORDINALITY AS p(key, i)";
    let chunks = (0..subjects).step_by(MEMORY_SEED_CHUNK).map(|first| {
        let last = (first + MEMORY_SEED_CHUNK).min(subjects) - 1;
        let prefix = prefix.clone();
        async move {
            sqlx::query(insert)
                .bind(prefix)
                .bind(first as i64)
                .bind(last as i64)
                .bind(&MEMORY_PURPOSES[..])
                .execute(pool)
                .await
                .map_err(|e| format!("seeding consent_records failed: {e}"))
        }
    });
    // Two statements at a time keep both cores busy without a pile of connections.
    let mut pending = futures::stream::iter(chunks).buffer_unordered(2);
    while let Some(result) = pending.next().await {
        result?;
    }
    sqlx::query("ANALYZE consent_records")
        .execute(pool)
        .await
        .map_err(|e| format!("ANALYZE consent_records failed: {e}"))?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    eprintln!("memory: seeded in {seed_secs:.1}s");

    let before = proc_memory(server_pid)?;
    eprintln!(
        "memory: checking every pair through BatchCheckConsent ({MEMORY_BATCH} a call, {} in parallel) ...",
        args.concurrency
    );
    let warming = Instant::now();
    let pairs = subjects * MEMORY_PURPOSES.len();
    let batches = pairs.div_ceil(MEMORY_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_secs(args.call_timeout.max(1));
    let tasks: Vec<_> = (0..args.concurrency.min(batches).max(1))
        .map(|i| {
            let mut client = ConsentServiceClient::new(channels[i % channels.len()].clone());
            let (next, prefix) = (next.clone(), prefix.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return tally;
                    }
                    let range = b * MEMORY_BATCH..((b + 1) * MEMORY_BATCH).min(pairs);
                    let (checks, expected): (Vec<_>, Vec<_>) = range
                        .map(|pair| {
                            let (n, i) =
                                (pair / MEMORY_PURPOSES.len(), pair % MEMORY_PURPOSES.len());
                            let check = ConsentCheck {
                                subject_id: format!("{prefix}{n}"),
                                purpose: MEMORY_PURPOSES[i].to_string(),
                                ..Default::default()
                            };
                            let want = if (n + i).is_multiple_of(2) {
                                Verdict::Denied
                            } else {
                                Verdict::Allowed
                            };
                            (check, want)
                        })
                        .unzip();
                    let request = BatchCheckConsentRequest {
                        checks,
                        ..Default::default()
                    };
                    let call = client.batch_check_consent(request);
                    let outcome = match tokio::time::timeout(timeout, call).await {
                        Err(_) => Err("Timeout".to_string()),
                        Ok(Err(status)) => Err(code_label(status)),
                        Ok(Ok(response)) => {
                            let results = response.into_inner().results;
                            tally.units += results.len() as u64;
                            results
                                .iter()
                                .zip(&expected)
                                .try_for_each(|(r, want)| verify_verdict(r.verdict(), *want))
                        }
                    };
                    if let Err(label) = outcome {
                        *tally.errors.entry(label).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(
            task.await
                .map_err(|e| format!("warming task panicked: {e}"))?,
        );
    }
    let warm_secs = warming.elapsed().as_secs_f64();
    let after = proc_memory(server_pid)?;
    Ok(MemoryReport {
        subjects,
        purposes: MEMORY_PURPOSES.len(),
        server_pid,
        seed_secs,
        warm_secs,
        decisions_checked: total.units,
        decisions_per_sec: total.units as f64 / warm_secs,
        errors: total.errors,
        before,
        after,
    })
}

pub(crate) fn print_memory(m: &MemoryReport) {
    println!();
    println!(
        "memory: {} subjects × {} purposes seeded in {:.1}s; {} decisions checked in {:.1}s ({:.0}/s), {} error(s)",
        m.subjects,
        m.purposes,
        m.seed_secs,
        m.decisions_checked,
        m.warm_secs,
        m.decisions_per_sec,
        m.errors.values().sum::<u64>()
    );
    println!(
        "memory: server pid {}: VmRSS {:.1} MiB before the checks, {:.1} MiB after (VmHWM {:.1} -> {:.1} MiB)",
        m.server_pid,
        mib(m.before.vm_rss_kib),
        mib(m.after.vm_rss_kib),
        mib(m.before.vm_hwm_kib),
        mib(m.after.vm_hwm_kib)
    );
    if !m.errors.is_empty() {
        let by_code: Vec<String> = m.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("errors in memory: {}", by_code.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_listening_on_a_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(listening_pid(port), None);
    }

    #[test]
    fn own_memory_is_read() {
        let m = proc_memory(std::process::id()).unwrap();
        assert!(m.vm_rss_kib > 0 && m.vm_hwm_kib >= m.vm_rss_kib);
    }
}
