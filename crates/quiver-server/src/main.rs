//! `quiver`: the server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;
use quiver_server::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    quiver_server::telemetry::init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quiver: {err}");
            ExitCode::FAILURE
        }
    }
}
