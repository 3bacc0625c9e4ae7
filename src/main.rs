//! The `llm-feedback` binary: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use llm_feedback::config::Cli;

// Many small short-lived allocations per request (headers, JSON, rows):
// mimalloc serves them from thread-local pages, glibc malloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_guard = match llm_feedback::telemetry::init(&cli.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let result = match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(llm_feedback::run(cli)),
        Err(err) => Err(format!("cannot start the async runtime: {err}").into()),
    };
    // Flush the log lines still queued before the last word.
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
