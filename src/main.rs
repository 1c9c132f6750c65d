//! The `privacy-records` binary: parse the command line, run, report.
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = privacy_records::cli::Cli::parse();
    match privacy_records::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be set up yet (bad configuration): stderr.
            eprintln!("privacy-records: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
