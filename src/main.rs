//! The `privacy-records` binary: parse the command line, run, report.
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = privacy_records::cli::Cli::parse();
    let code = match privacy_records::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be set up yet (bad configuration): stderr,
            // without eprintln!'s panic when stderr is closed.
            privacy_records::telemetry::write_stderr(&format!("privacy-records: {e}"));
            std::process::ExitCode::FAILURE
        }
    };
    // The last spans and log lines are still queued.
    privacy_records::telemetry::shutdown_traces();
    privacy_records::telemetry::flush();
    code
}
