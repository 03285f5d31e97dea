//! `shoal`: one binary for every role. `shoal serve` runs a node; every other
//! command is an HTTP client of a node.

// First: its `outln!`/`out!` macros are used by the modules below.
#[macro_use]
mod output;
mod blobs;
mod channels;
mod cli;
mod data;
mod functions;
mod invocations;
mod jobs;
mod kv;
mod nodes;
mod notifications;
mod queues;
mod recover;
mod schedules;
mod serve;
mod sites;
mod triggers;
mod usage;
mod users;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        // A usage error under `--json` is a JSON error too; help and
        // version (and usage errors for people) print as clap prints them.
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--json") => {
            let text = e.to_string();
            let head = text.split("\nUsage:").next().unwrap_or_default();
            let head = head
                .split("\nFor more information")
                .next()
                .unwrap_or_default();
            let message = head
                .trim_start_matches("error: ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            output::report(
                &output::fail(
                    shoal_client::protocol::ErrorCode::InvalidInput,
                    format!("{message} (see `shoal --help`)"),
                ),
                true,
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
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
