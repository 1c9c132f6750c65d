//! `pgbench` and `pgbench-record`: PostgreSQL's own pgbench on the server's database,
//! a durable single-row insert and RecordConsent's own statement: the ceilings for writes.

use super::*;

/// PostgreSQL's own pgbench against the server's database: durable single-row INSERTs
/// into a scratch table, the ceiling `record` is compared with.
pub(crate) struct Pgbench {
    pub(crate) program: PathBuf,
    pub(crate) database_url: String,
    pub(crate) clients: usize,
    pub(crate) threads: usize,
    pub(crate) table: String,
    /// Holds the script and pgbench's per-transaction logs; removed by `cleanup`.
    pub(crate) dir: PathBuf,
    pub(crate) script: PathBuf,
    /// RecordConsent's own statement (`pgbench-record`).
    pub(crate) record_script: PathBuf,
    pub(crate) runs: usize,
}

/// What the report says about the pgbench setup.
#[derive(Serialize)]
pub(crate) struct PgbenchInfo {
    pub(crate) program: String,
    pub(crate) clients: usize,
    pub(crate) threads: usize,
    pub(crate) table: String,
    /// The database's `synchronous_commit` as pgbench's sessions see it.
    pub(crate) synchronous_commit: String,
}

impl Pgbench {
    /// Creates the scratch table and the script.
    pub(crate) async fn setup(
        program: PathBuf,
        pool: &sqlx::PgPool,
        database_url: &str,
        clients: usize,
        run_id: uuid::Uuid,
    ) -> Result<(Self, PgbenchInfo), String> {
        let table = format!("bench_pgbench_insert_{}", run_id.simple());
        // The table name is ours: "bench_pgbench_insert_" and a UUID's hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, subject text NOT NULL, \
             v text NOT NULL, t timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(pool)
        .await
        .map_err(|e| format!("cannot create the pgbench table {table}: {e}"))?;
        let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(pool)
            .await
            .map_err(|e| format!("cannot read synchronous_commit: {e}"))?;
        let dir = std::env::temp_dir().join(format!("privacy-records-bench-{run_id}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let script = dir.join("insert.sql");
        let sql = format!(
            "\\set n random(1, 1000000)\n\
             INSERT INTO {table} (subject, v) VALUES ('subject-' || :n, 'GRANTED');\n"
        );
        std::fs::write(&script, sql)
            .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
        let record_script = dir.join("record_consent.sql");
        let sql = record_consent_script(pool).await?;
        std::fs::write(&record_script, sql)
            .map_err(|e| format!("cannot write {}: {e}", record_script.display()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pgbench = Pgbench {
            program,
            database_url: database_url.to_string(),
            clients,
            threads: cores.min(clients),
            table: table.clone(),
            dir,
            script,
            record_script,
            runs: 0,
        };
        let info = PgbenchInfo {
            program: pgbench.program.display().to_string(),
            clients,
            threads: pgbench.threads,
            table,
            synchronous_commit,
        };
        Ok((pgbench, info))
    }

    /// An unmeasured run of `warmup`, then a measured run of `duration` whose TPS is
    /// pgbench's own ("without initial connection time") and whose latencies come from
    /// its per-transaction log.
    pub(crate) async fn measure(
        &mut self,
        scenario: Scenario,
        warmup: Duration,
        duration: Duration,
    ) -> Measurement {
        let script = match scenario {
            Scenario::PgbenchRecord => self.record_script.clone(),
            _ => self.script.clone(),
        };
        if !warmup.is_zero()
            && let Err(e) = self.run(&script, warmup, None).await
        {
            return Measurement::failed(e);
        }
        self.runs += 1;
        let prefix = self.dir.join(format!("log-{}", self.runs));
        let out = match self.run(&script, duration, Some(&prefix)).await {
            Ok(out) => out,
            Err(e) => return Measurement::failed(e),
        };
        let mut latencies_us = match read_pgbench_logs(&self.dir, &prefix) {
            Ok(l) => l,
            Err(e) => return Measurement::failed(e),
        };
        latencies_us.sort_unstable();
        let (Some(tps), Some(ok)) = (
            pgbench_value(&out, "tps = "),
            pgbench_value(&out, "number of transactions actually processed: "),
        ) else {
            return Measurement::failed("PgbenchOutputUnparsed".to_string());
        };
        let mut errors = BTreeMap::new();
        if let Some(failed) = pgbench_value(&out, "number of failed transactions: ")
            && failed > 0.0
        {
            errors.insert("PgbenchFailedTransactions".to_string(), failed as u64);
        }
        Measurement {
            ok: ok as u64,
            req_per_sec: tps,
            units_per_sec: tps,
            p50_ms: percentile_ms(&latencies_us, 0.50),
            p99_ms: percentile_ms(&latencies_us, 0.99),
            p999_ms: percentile_ms(&latencies_us, 0.999),
            target_rate: None,
            errors,
        }
    }

    /// Runs pgbench for `length` (whole seconds, at least 1); returns its standard output.
    pub(crate) async fn run(
        &self,
        script: &Path,
        length: Duration,
        log_prefix: Option<&Path>,
    ) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(["-n", "-M", "prepared"])
            .arg("-c")
            .arg(self.clients.to_string())
            .arg("-j")
            .arg(self.threads.to_string())
            .arg("-T")
            .arg(length.as_secs().max(1).to_string())
            .arg("-f")
            .arg(script);
        if let Some(prefix) = log_prefix {
            cmd.arg("-l")
                .arg(format!("--log-prefix={}", prefix.display()));
        }
        // libpq takes a URL where the database name goes.
        cmd.arg(&self.database_url).kill_on_drop(true);
        let output = cmd
            .output()
            .await
            .map_err(|e| format!("PgbenchNotRun: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("pgbench failed ({}): {}", output.status, stderr.trim());
            return Err("PgbenchFailed".to_string());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Drops the scratch table and removes the script and logs.
    pub(crate) async fn cleanup(&self, pool: &sqlx::PgPool) {
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            self.table
        )))
        .execute(pool)
        .await
        {
            eprintln!("could not drop the pgbench table {}: {e}", self.table);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A pgbench script running the server's RecordConsent statement itself
/// (`privacy_records::consent::store::record_consent_sql`), its parameters
/// filled as the `record` scenario fills them: a seeded subject, a grant or
/// refusal of the seeded purpose at its current revision, a fresh request id
/// per transaction. What PostgreSQL alone does with the write, without the
/// gRPC server in front of it.
pub(crate) async fn record_consent_script(pool: &sqlx::PgPool) -> Result<String, String> {
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM purposes WHERE key = $1")
        .bind(SEEDED_PURPOSE)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("cannot read purposes/{SEEDED_PURPOSE}: {e}"))?;
    // Parameter number → SQL text, in the statement's order.
    let values: [String; 19] = [
        "'bench-subject-' || :n".into(),
        format!("'{SEEDED_PURPOSE}'"),
        "(CASE WHEN :n % 2 = 0 THEN 'GRANTED' ELSE 'REFUSED' END)".into(),
        "'API'".into(),
        "NULL::text".into(),
        format!("'{JURISDICTION}'"),
        "NULL::text".into(),
        "NULL::text".into(),
        "NULL::text".into(),
        "NULL::timestamptz".into(),
        "NULL::timestamptz".into(),
        "gen_random_uuid()::text".into(),
        "'bench'".into(),
        "NULL::bytea".into(),
        revision.to_string(),
        "'privacy.v1.ConsentService/RecordConsent'".into(),
        "'\\x00'::bytea".into(),
        "'CONSENT_RECORDED'".into(),
        // The caller whose request id it is (none: an unauthenticated server).
        "''".into(),
    ];
    let sql = privacy_records::consent::store::record_consent_sql();
    let mut out = String::with_capacity(sql.len() + 512);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let n: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .map_err(|_| "RecordConsent's statement has a bare $".to_string())?;
        let value = values.get(n.wrapping_sub(1)).ok_or_else(|| {
            format!(
                "RecordConsent's statement has ${n}; the bench fills {}",
                values.len()
            )
        })?;
        out.push_str(value);
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    // pgbench reads one statement per line unless told otherwise.
    let one_line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(format!("\\set n random(1, 5000)\n{one_line};\n"))
}

/// The number after `label` on the first line of pgbench's output that starts with it.
pub(crate) fn pgbench_value(output: &str, label: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(label)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Latencies (microseconds, the third field) from pgbench's per-transaction logs
/// `<prefix>.<pid>` and `<prefix>.<pid>.<thread>`; the files are removed once read.
pub(crate) fn read_pgbench_logs(dir: &Path, prefix: &Path) -> Result<Vec<u64>, String> {
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut latencies = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("PgbenchLogUnreadable: {e}"))?;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("PgbenchLogUnreadable: {e}"))?;
        latencies.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(latencies)
}

/// `--pgbench`, else pgbench on PATH, else the newest `/usr/lib/postgresql/<v>/bin/pgbench`.
pub(crate) fn find_pgbench(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin/pgbench")))
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .rev();
    on_path
        .chain(versioned)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin; give --pgbench".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgbench 15's summary, as printed after a `-T` run with a custom script.
    const PGBENCH_OUTPUT: &str = "\
transaction type: /tmp/x/insert.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 47812
number of failed transactions: 3 (0.006%)
latency average = 3.346 ms
initial connection time = 12.531 ms
tps = 4781.204873 (without initial connection time)
";

    #[test]
    fn pgbench_summary_values_are_read() {
        assert_eq!(pgbench_value(PGBENCH_OUTPUT, "tps = "), Some(4781.204873));
        assert_eq!(
            pgbench_value(
                PGBENCH_OUTPUT,
                "number of transactions actually processed: "
            ),
            Some(47812.0)
        );
        assert_eq!(
            pgbench_value(PGBENCH_OUTPUT, "number of failed transactions: "),
            Some(3.0)
        );
        assert_eq!(pgbench_value(PGBENCH_OUTPUT, "no such line: "), None);
    }

    #[test]
    fn pgbench_logs_give_latencies_and_are_removed() {
        let dir = std::env::temp_dir().join(format!("bench-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("log-1");
        // client_id transaction_no latency_us script_no epoch_s epoch_us
        std::fs::write(
            dir.join("log-1.77"),
            "0 0 1500 0 1700000000 1\n1 0 900 0 1700000000 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("log-1.77.1"), "2 0 2100 0 1700000000 3\n").unwrap();
        std::fs::write(dir.join("log-2.77"), "0 0 99999 0 1700000000 1\n").unwrap();
        let mut latencies = read_pgbench_logs(&dir, &prefix).unwrap();
        latencies.sort_unstable();
        assert_eq!(latencies, vec![900, 1500, 2100]);
        assert!(!dir.join("log-1.77").exists());
        assert!(
            dir.join("log-2.77").exists(),
            "another run's log is left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
