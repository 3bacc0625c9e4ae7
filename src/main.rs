//! The `llm-feedback` binary: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use llm_feedback::config::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = llm_feedback::telemetry::init(&cli.log) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    match llm_feedback::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
