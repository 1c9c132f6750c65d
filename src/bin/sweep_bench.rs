//! `privacy-records-sweep-bench`: how fast the retention sweeper turns a
//! mass of due schedule entries into deletion tasks.
//!
//! It connects to a PostgreSQL database (migrating it if needed), seeds
//! `--entries` schedule entries that all fell due a minute ago for a data
//! system of its own, runs `--sweepers` sweepers at once (as that many
//! server replicas would) with `--batch` entries per transaction, and
//! reports the time, the rate, and that every entry became exactly one
//! task. Its rows stay in the database (they are ordinary tasks of a
//! `sweep-bench-<uuid>` system); use a scratch database.
//!
//! ```text
//! target/release/privacy-records serve --data-dir /tmp/pr/data &     # or any PostgreSQL
//! target/release/privacy-records-sweep-bench \
//!     --database-url 'postgres://postgres@localhost/privacy_records?host=/tmp/pr/data/run&port=5432'
//! ```
use std::time::Instant;

use chrono::Utc;
use clap::Parser;
use privacy_records::retention::sweeper::{self, SweepSettings, SweepTotals};
use privacy_records::rpc::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser, Debug)]
#[command(
    name = "privacy-records-sweep-bench",
    about = "Times the retention sweeper over many due entries"
)]
struct Args {
    /// The database (also DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Schedule entries falling due at once.
    #[arg(long, default_value_t = 1_000_000)]
    entries: i64,
    /// Entries per sweep transaction.
    #[arg(long, default_value_t = 5000)]
    batch: i64,
    /// Sweepers running at once.
    #[arg(long, default_value_t = 2)]
    sweepers: usize,
}

async fn seed(pool: &PgPool, system: &str, entries: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO data_systems (id, display_name, kind, categories, country, actions)
         VALUES ($1, 'sweep bench', 'INTERNAL', '{account_information}', 'US', '{DELETE}')",
    )
    .bind(system)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO retention_schedule
             (subject_id, category, data_system_id, trigger, anchor_time, due_time, action)
         SELECT $1 || '-' || n, 'account_information', $1, 'ACCOUNT_CLOSED',
                now() - interval '31 days', now() - interval '1 minute', 'DELETE'
         FROM generate_series(1, $2) AS n",
    )
    .bind(system)
    .bind(entries)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE retention_schedule")
        .execute(pool)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.entries < 1 || args.batch < 1 || args.sweepers < 1 {
        return Err("--entries, --batch and --sweepers must be at least 1".into());
    }
    let pool = PgPoolOptions::new()
        .max_connections(args.sweepers as u32 + 2)
        .connect(&args.database_url)
        .await?;
    privacy_records::db::MIGRATOR.run(&pool).await?;
    let system = format!("sweep-bench-{}", uuid::Uuid::new_v4().simple());

    eprintln!(
        "seeding {} due entries for dataSystems/{system} ...",
        args.entries
    );
    let seeding = Instant::now();
    seed(&pool, &system, args.entries).await?;
    eprintln!("seeded in {:.1}s", seeding.elapsed().as_secs_f64());

    let settings = SweepSettings {
        interval: std::time::Duration::from_secs(60),
        batch: args.batch,
        task_max_attempts: 5,
        idempotency_key_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
    };
    let now = Utc::now();
    let start = Instant::now();
    let runs: Vec<_> = (0..args.sweepers)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let ctx = Context::internal(
                    format!("sweep-bench-{i}"),
                    "RetentionSweeper",
                    format!("sweep-bench-{i}"),
                );
                sweeper::sweep(&pool, now, &settings, &ctx).await
            })
        })
        .collect();
    let mut total = SweepTotals::default();
    for run in runs {
        let t = run.await??;
        total.tasks_created += t.tasks_created;
    }
    let elapsed = start.elapsed().as_secs_f64();

    let (tasks, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT subject_id) FROM tasks WHERE data_system_id = $1",
    )
    .bind(&system)
    .fetch_one(&pool)
    .await?;
    println!(
        "{} due entries -> {} tasks by {} sweeper(s), batch {}: {:.1} s, {:.0} entries/s",
        args.entries,
        total.tasks_created,
        args.sweepers,
        args.batch,
        elapsed,
        total.tasks_created as f64 / elapsed
    );
    if tasks != args.entries || distinct != args.entries || total.tasks_created != args.entries {
        return Err(format!(
            "expected {} tasks, one per entry; found {tasks} ({distinct} distinct)",
            args.entries
        )
        .into());
    }
    println!("every entry became exactly one task");
    Ok(())
}
