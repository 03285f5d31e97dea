//! `shoal`: one binary for every role. `shoal serve` runs a node; every other
//! command is an HTTP client of a node.

mod cli;
mod data;
mod functions;
mod invocations;
mod jobs;
mod output;
mod queues;
mod recover;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let json = args.conn.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::report(&e, json);
            ExitCode::FAILURE
        }
    }
}
