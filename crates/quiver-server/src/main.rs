//! `quiver`: the server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;
use quiver_server::cli::{Cli, run};

/// Stack of the threads serving requests: a margin over tokio's default for the
/// recursion a request may cause before it reaches the query runtime.
const THREAD_STACK: usize = 8 << 20;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build();
    let outcome = match runtime {
        Ok(runtime) => {
            // The trace exporter's channel lives on the runtime.
            runtime.block_on(async { quiver_server::telemetry::init() });
            let outcome = runtime.block_on(run(Cli::parse()));
            quiver_server::telemetry::shutdown();
            outcome
        }
        Err(err) => Err(quiver_server::Error::Io(err)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quiver: {err}");
            ExitCode::FAILURE
        }
    }
}
