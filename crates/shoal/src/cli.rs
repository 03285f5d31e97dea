//! Command-line parsing and the client commands.
//!
//! Client commands only call `shoal_client::Client` and print: human output
//! by default, `--json` for scripts, non-zero exit with a message on failure.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use shoal_client::Client;

pub(crate) use crate::output::{Out, read_event};
use crate::output::{duration, time};
use crate::serve::{self, ServeArgs};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: serverless functions next to your data, in one binary."
)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: Command,
}

// `--url` and `--token` read their environment variables in `connect`, not
// through clap's `env`: clap puts an argument set from the environment into
// the usage line of every error, as if it were required.
#[derive(clap::Args)]
pub struct Conn {
    /// The node to talk to: `host:port`, `localhost:7700` or an
    /// `http(s)://` URL [env: SHOAL_URL] [default: http://127.0.0.1:7700].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token [env: SHOAL_TOKEN] (default: the admin token file in ./.shoal).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Deploy a function directory (with shoal.toml) as a new version; it
    /// goes live once it loads in a real worker.
    Deploy {
        dir: PathBuf,
        /// Only check that it loads; deploy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create a function directory (shoal.toml and main.py) that deploys
    /// and answers as it is.
    Init {
        name: String,
        /// Where to create it (default: ./NAME).
        dir: Option<PathBuf>,
    },
    /// Invoke a function with a JSON event: the argument, `@FILE`, `-` or
    /// piped stdin; `{}` when none is given.
    Invoke {
        name: String,
        event: Option<String>,
        /// Queue the invocation and print its id instead of waiting.
        #[arg(long = "async")]
        is_async: bool,
        /// Write the result to FILE instead of stdout (for a function that
        /// returns a `shoal.Response`: its bytes as they are).
        #[arg(long, short = 'o', value_name = "FILE", conflicts_with = "is_async")]
        output: Option<PathBuf>,
    },
    /// List invocations, newest first, filtered (`--function`, `--status`,
    /// `--failed`, `--mode`, `--since`, `--until`, `--grep TEXT`); show
    /// one; replay one.
    #[command(args_conflicts_with_subcommands = true)]
    Invocations {
        #[command(subcommand)]
        command: Option<InvocationsCommand>,
        #[command(flatten)]
        list: crate::invocations::ListArgs,
    },
    /// Print an invocation's logs, or (`--function F`) the logs of a
    /// function's latest invocations, `--follow`ing new ones.
    Logs(crate::invocations::LogsArgs),
    /// List functions, or remove one.
    Functions {
        #[command(subcommand)]
        command: Option<FunctionsCommand>,
    },
    /// Write documents to a category from a JSON array or NDJSON file:
    /// FILE, `@FILE`, `-` or piped stdin.
    Write {
        category: String,
        file: Option<String>,
    },
    /// Print one document.
    Get { category: String, id: String },
    /// Delete one document.
    Rm { category: String, id: String },
    /// List categories, or create or delete one.
    Categories {
        #[command(subcommand)]
        command: Option<CategoriesCommand>,
    },
    /// Map a function over a category (and reduce, if it defines `reduce`).
    Query {
        category: String,
        function: String,
        /// Write mapped values (NDJSON) to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Count and list documents whose `map` fails instead of failing.
        #[arg(long)]
        skip_errors: bool,
    },
    /// Durable queues: list, create or change, send, dead letters, stats.
    Queues {
        #[command(subcommand)]
        command: Option<QueuesCommand>,
    },
    /// Fan-out jobs: list them newest first (no subcommand; --limit,
    /// --cursor), start one, show its progress and tree, page its results,
    /// cancel it.
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        #[command(flatten)]
        list: crate::jobs::ListArgs,
    },
    /// The key-value store: get, set (with --ttl, --nx, --xx, --version),
    /// incr, rm, ls by prefix.
    Kv {
        #[command(subcommand)]
        command: crate::kv::KvCommand,
    },
    /// Blobs: put and get (whole or a byte range, streamed), ls, stat,
    /// rm; fixed-size blobs (create) and their bitfield batches.
    Blobs {
        #[command(subcommand)]
        command: crate::blobs::BlobsCommand,
    },
    /// Channels: set (public, history, coalescing), show, ls, publish,
    /// tail (follow the messages, resuming with --since).
    Channels {
        #[command(subcommand)]
        command: crate::channels::ChannelsCommand,
    },
    /// Static sites: deploy a directory (--path, --spa, --cache-control),
    /// ls, versions, rollback, rm.
    Sites {
        #[command(subcommand)]
        command: crate::sites::SitesCommand,
    },
    /// Shared rate limiters: list, set (create or change), remove.
    Limiters {
        #[command(subcommand)]
        command: Option<LimitersCommand>,
    },
    /// The node's health, version and how it isolates functions.
    Status,
    /// The nodes sharing the node's store (several nodes on one Redis):
    /// address, version, start, last heartbeat, running invocations,
    /// workers, load, alive or lost; the node answering is marked `*`.
    Nodes,
    /// Webhooks told about events (admin): set NAME URL [--event E]
    /// [--function F] [--secret S], ls, rm NAME, deliveries (the log).
    Notifications {
        #[command(subcommand)]
        command: Option<crate::notifications::NotificationsCommand>,
    },
    /// The schedules (`[[schedule]]`) of the live versions: function,
    /// index, interval or cron expression, missed-tick policy, next fire
    /// time, paused; `pause`, `resume` and `history` of one schedule.
    Schedules {
        #[command(subcommand)]
        command: Option<crate::schedules::SchedulesCommand>,
    },
    /// The triggers (`[[trigger]]`) of the live versions: function, index,
    /// kind (docs, blob, outcome) and what runs it.
    Triggers,
    /// Secrets functions get as environment variables (admin): set (the
    /// value from stdin or --file), list (names only), rm.
    Secrets {
        #[command(subcommand)]
        command: Option<SecretsCommand>,
    },
    /// Manage API tokens (admin).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Named users with a role and several tokens each (admin): add, ls,
    /// show, set-role, rm (revokes its tokens).
    Users {
        #[command(subcommand)]
        command: crate::users::UsersCommand,
    },
    /// Usage and cost: finished invocations, GB-seconds and money per
    /// function, token or day (`--group-by`, `--since`, `--until`);
    /// `prices [set]`, `estimate FUNCTION`, `budget TOKEN [set|rm]`,
    /// `count` (exact invocation counts).
    #[command(args_conflicts_with_subcommands = true)]
    Usage {
        #[command(flatten)]
        args: crate::usage::UsageArgs,
        #[command(subcommand)]
        command: Option<crate::usage::UsageCommand>,
    },
}

#[derive(Subcommand)]
pub enum InvocationsCommand {
    /// Show an invocation's status, result or error, timings and billing.
    Show { id: String },
    /// Run an invocation again: a new asynchronous invocation with its
    /// event, of the live version (or `--same-version`).
    Replay {
        id: String,
        #[arg(long)]
        same_version: bool,
    },
}

#[derive(Subcommand)]
pub enum FunctionsCommand {
    /// A function's versions: when, which code, who deployed, which is
    /// live, the aliases.
    Show { name: String },
    /// Make another version live at once (default: the one before the
    /// live one).
    Rollback { name: String, version: Option<u64> },
    /// Point an alias at a version: `NAME@ALIAS` then runs it.
    Alias {
        name: String,
        alias: String,
        version: u64,
    },
    /// Remove an alias.
    Unalias { name: String, alias: String },
    /// What 1,000 calls cost, from its recent p50 duration and its
    /// memory (the same as `shoal usage estimate`).
    Estimate { name: String },
    /// Remove a function and all its versions (asks first on a terminal;
    /// `--force` otherwise).
    Rm {
        name: String,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum CategoriesCommand {
    /// Create a category with a shard level.
    Create {
        name: String,
        #[arg(long)]
        shards: Option<u32>,
    },
    /// Delete a category. One that holds documents only after a yes on a
    /// terminal, or with `--force`.
    Rm {
        name: String,
        /// Delete it even with documents, without asking.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Start a job: one asynchronous invocation of FUNCTION per event of a
    /// JSON array (the argument, `@FILE`, `-` or piped stdin).
    Start {
        function: String,
        events: Option<String>,
        /// The function to run once every child has finished.
        #[arg(long)]
        then: Option<String>,
    },
    /// A job's counts by state, progress, failures and the jobs below it.
    Show { id: String },
    /// Finished children's results (NDJSON, one per child, in order).
    Results {
        id: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Cancel a job and every job below it.
    Cancel { id: String },
}

#[derive(Subcommand)]
pub enum QueuesCommand {
    /// Create a queue, or change its settings.
    Create {
        name: String,
        /// Deliveries before a message is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// E.g. 30s.
        #[arg(long)]
        visibility_timeout: Option<String>,
        /// First retry delay, e.g. 1s.
        #[arg(long)]
        retry_delay: Option<String>,
        /// How long deduplication ids are remembered, e.g. 5m.
        #[arg(long)]
        dedup_window: Option<String>,
    },
    /// Settings, depth, counters and subscriber of a queue.
    Show { name: String },
    /// Delete a queue. One with messages, dead letters or a subscribed
    /// function only after a yes on a terminal, or with `--force`.
    Rm {
        name: String,
        /// Delete it with what it holds, without asking.
        #[arg(long)]
        force: bool,
    },
    /// Send a message with a JSON body: the argument, `@FILE`, `-` or piped
    /// stdin.
    Send {
        name: String,
        body: Option<String>,
        #[arg(long)]
        delay: Option<String>,
        #[arg(long)]
        dedup_id: Option<String>,
    },
    /// List dead letters.
    Dlq { name: String },
    /// Put dead letters back on the queue (all, or the ids given).
    Redrive { name: String, ids: Vec<String> },
    /// Delete waiting messages (or, with --dead, dead letters): after a yes
    /// on a terminal, or with `--force`.
    Purge {
        name: String,
        #[arg(long)]
        dead: bool,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// The queue's history (depth, rates), newest last.
    Stats {
        name: String,
        /// How far back, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
}

#[derive(Subcommand)]
pub enum LimitersCommand {
    /// Create or change a limiter: N per second, bursts up to B.
    Set {
        name: String,
        #[arg(long)]
        per_second: f64,
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Remove a limiter no function uses.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set a secret. The value is read from stdin (or --file), never from
    /// the command line, where other users could see it.
    Set {
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Remove a secret no function names.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create a token: reader, invoker, developer or admin.
    Create {
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: Option<String>,
        /// Limit the token to a channel action, e.g. `subscribe:board.*`
        /// or `publish:chat` (repeatable); the same as `--scope
        /// channel:subscribe:board.*`.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// The user the token belongs to (`shoal users add`); its role may
        /// be at most the user's.
        #[arg(long)]
        user: Option<String>,
        /// Limit the token to resources (repeatable): `function:resize-*`,
        /// `category:photos`, `queue:jobs`, `channel:subscribe:board.*`,
        /// `channel:publish:chat`. A token with any scope may act only on
        /// what its scopes name.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List tokens.
    List,
    /// Revoke a token by id (not the last admin token).
    Revoke { id: String },
    /// A token's budget and spend; `set --limit L [--period day|month]
    /// [--unit usd|gb-s] [--notify-at F] [--enforce]` or `rm` it (the
    /// same as `shoal usage budget`).
    Budget {
        #[arg(value_name = "TOKEN_ID")]
        token_id: String,
        #[command(subcommand)]
        command: Option<crate::usage::BudgetCommand>,
    },
    /// Lost the admin token? On the node's machine, with the node stopped,
    /// as the owner of its data directory: write a new admin token into the
    /// store and into DATA_DIR/admin.token. Never over the network.
    Recover {
        /// The node's data directory.
        #[arg(long, default_value = ".shoal")]
        data_dir: PathBuf,
        /// The new token's name.
        #[arg(long, default_value = "admin (recovered)")]
        name: String,
    },
}

pub async fn run(args: Args) -> Result<()> {
    let conn = args.conn;
    let command = match args.command {
        Command::Serve(s) => return serve::run(*s).await,
        Command::Init { name, dir } => {
            return crate::functions::init(&name, dir.as_deref(), Out { json: conn.json });
        }
        Command::Tokens {
            command: TokensCommand::Recover { data_dir, name },
        } => return crate::recover::run(&data_dir, &name, Out { json: conn.json }).await,
        other => other,
    };
    let client = connect(&conn)?;
    let out = Out { json: conn.json };
    match command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Init { .. } => unreachable!("handled above"),
        Command::Deploy { dir, dry_run } => {
            crate::functions::deploy(&client, &dir, dry_run, out).await?;
        }
        Command::Functions {
            command: Some(FunctionsCommand::Show { name }),
        } => crate::functions::show(&client, &name, out).await?,
        Command::Functions {
            command: Some(FunctionsCommand::Rollback { name, version }),
        } => crate::functions::rollback(&client, &name, version, out).await?,
        Command::Functions {
            command:
                Some(FunctionsCommand::Alias {
                    name,
                    alias,
                    version,
                }),
        } => crate::functions::alias(&client, &name, &alias, version, out).await?,
        Command::Functions {
            command: Some(FunctionsCommand::Unalias { name, alias }),
        } => crate::functions::unalias(&client, &name, &alias, out).await?,
        Command::Functions {
            command: Some(FunctionsCommand::Estimate { name }),
        } => crate::usage::estimate(&client, &name, conn.json).await?,
        Command::Invoke {
            name,
            event,
            is_async,
            output,
        } => {
            let event = read_event(event.as_deref())?;
            if is_async {
                let id = client.invoke_async(&name, &event).await?;
                out.print(&serde_json::json!({"id": id, "status": "queued"}), || {
                    id.clone()
                });
            } else {
                let done = match client.invoke_answer(&name, &event).await? {
                    shoal_client::Answer::Value(done) => done,
                    shoal_client::Answer::Binary(binary) => {
                        return crate::invocations::binary_answer(&binary, output.as_deref(), out);
                    }
                };
                match done.result {
                    Ok(value) => {
                        if let Some(path) = &output {
                            let text = serde_json::to_string_pretty(&value)? + "\n";
                            crate::invocations::write_output(path, text.as_bytes())?;
                        } else if conn.json {
                            outln!("{}", serde_json::json!({"id": done.id, "output": value}));
                        } else {
                            outln!("{}", serde_json::to_string_pretty(&value)?);
                        }
                    }
                    Err(failure) => {
                        if conn.json {
                            outln!("{}", serde_json::to_string(&failure)?);
                            return Err(crate::output::fail(
                                shoal_client::protocol::ErrorCode::FunctionError,
                                format!(
                                    "the function failed ({}): {}",
                                    failure.error.kind, failure.error.message
                                ),
                            ));
                        } else {
                            eprintln!("{}: {}", failure.error.kind, failure.error.message);
                            if let Some(tb) = &failure.error.traceback {
                                eprintln!("{tb}");
                            }
                            eprintln!("invocation {}", failure.invocation_id);
                        }
                        return Err(crate::output::fail(
                            shoal_client::protocol::ErrorCode::FunctionError,
                            format!("the function failed ({})", failure.error.kind),
                        ));
                    }
                }
            }
        }
        Command::Invocations {
            command: None,
            list,
        } => crate::invocations::list(&client, list, conn.json).await?,
        Command::Invocations {
            command: Some(InvocationsCommand::Replay { id, same_version }),
            ..
        } => {
            let new_id = client.replay(&id, same_version).await?;
            if conn.json {
                outln!("{}", serde_json::json!({"id": new_id, "status": "queued"}));
            } else {
                outln!("{new_id}");
            }
        }
        Command::Invocations {
            command: Some(InvocationsCommand::Show { id }),
            ..
        } => {
            let inv = client.invocation(&id).await?;
            out.print(&inv, || {
                let mut s = format!(
                    "id:        {}\nfunction:  {} (version {})\nmode:      {}\nstatus:    {}\nattempts:  {}/{}\n",
                    inv.id, inv.function, inv.version, inv.mode, inv.status, inv.attempts, inv.max_attempts
                );
                s += &format!("created:   {}\n", time(inv.created_at_ms));
                if let Some(t) = inv.started_at_ms {
                    s += &format!("started:   {}\n", time(t));
                }
                if let Some(t) = inv.finished_at_ms {
                    s += &format!("finished:  {}\n", time(t));
                }
                if let Some(q) = inv.queued_ms {
                    s += &format!("queued:    {}\n", duration(q));
                }
                if let Some(d) = inv.duration_ms {
                    s += &format!("duration:  {}{}\n", duration(d), if inv.cold_start { " (cold start)" } else { "" });
                }
                if let Some(t) = inv.next_attempt_at_ms {
                    s += &format!("next try:  {}\n", time(t));
                }
                if inv.cache_hit {
                    s += "cache:     hit (answered without running)\n";
                }
                s += &format!("billed:    {:.6} GB-s\n", inv.billed_gb_seconds);
                if let Some(o) = &inv.output {
                    s += &format!("output:    {o}\n");
                }
                if let Some(e) = &inv.error {
                    s += &format!("error:     {}: {}\n", e.kind, e.message);
                    if let Some(tb) = &e.traceback {
                        s += tb;
                    }
                }
                s.trim_end().to_string()
            });
        }
        Command::Logs(args) => crate::invocations::logs(&client, args, conn.json).await?,
        Command::Functions { command: None } => {
            let fs = client.functions().await?;
            out.print(&fs, || {
                if fs.is_empty() {
                    return "No functions deployed. Deploy one with `shoal deploy DIR`."
                        .to_string();
                }
                let mut s = format!(
                    "{:<24} {:>7}  {:<20} {:>8} {:>7} {:>11}",
                    "NAME", "VERSION", "HANDLER", "TIMEOUT", "MEMORY", "CONCURRENCY"
                );
                for f in &fs {
                    s += &format!(
                        "\n{:<24} {:>7}  {:<20} {:>8} {:>5}MB {:>11}",
                        f.name,
                        f.version,
                        f.handler,
                        duration(f.timeout_ms as f64),
                        f.memory_mb,
                        f.concurrency
                    );
                }
                s
            });
        }
        Command::Functions {
            command: Some(FunctionsCommand::Rm { name, force }),
        } => {
            // Fails here when the function does not exist, before asking.
            client.function(&name).await?;
            crate::output::confirm(
                &format!("removing function `{name}` deletes every version of it"),
                force,
            )?;
            client.remove_function(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed {name}.")
            });
        }
        Command::Write { category, file } => {
            let file = match file.as_deref() {
                Some(f) => f.strip_prefix('@').unwrap_or(f).to_string(),
                None if !std::io::IsTerminal::is_terminal(&std::io::stdin()) => "-".to_string(),
                None => {
                    return Err(crate::output::fail_hint(
                        shoal_client::protocol::ErrorCode::InvalidInput,
                        "no documents given",
                        "give a file (FILE or @FILE), or pipe them in",
                    ));
                }
            };
            let written = crate::data::write(&client, &category, &file, conn.json).await?;
            out.print(&written, || {
                format!("Wrote {} documents to {category}.", written.written)
            });
        }
        Command::Get { category, id } => {
            let doc = client.get_doc(&category, &id).await?;
            if conn.json {
                outln!("{doc}");
            } else {
                outln!("{}", serde_json::to_string_pretty(&doc)?);
            }
        }
        Command::Rm { category, id } => {
            client.delete_doc(&category, &id).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Deleted {id} from {category}.")
            });
        }
        Command::Categories { command: None } => {
            let cats = client.categories().await?;
            out.print(&cats, || {
                if cats.is_empty() {
                    return "No categories. Write documents with `shoal write CATEGORY FILE`."
                        .to_string();
                }
                let mut s = format!(
                    "{:<24} {:>6} {:>12} {:>14}",
                    "NAME", "SHARDS", "DOCUMENTS", "BYTES"
                );
                for c in &cats {
                    s += &format!(
                        "\n{:<24} {:>6} {:>12} {:>14}",
                        c.name, c.shards, c.docs, c.bytes
                    );
                }
                s
            });
        }
        Command::Categories {
            command: Some(CategoriesCommand::Create { name, shards }),
        } => {
            let c = client.create_category(&name, shards).await?;
            out.print(&c, || {
                format!("Created {} with {} shards.", c.name, c.shards)
            });
        }
        Command::Categories {
            command: Some(CategoriesCommand::Rm { name, force }),
        } => {
            crate::output::guarded(force, |r| client.delete_category_with(&name, r)).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Deleted category {name}.")
            });
        }
        Command::Query {
            category,
            function,
            output,
            skip_errors,
        } => {
            crate::data::query(
                &client,
                &category,
                &function,
                output.as_deref(),
                skip_errors,
                conn.json,
            )
            .await?
        }
        Command::Queues { command } => crate::queues::run(&client, command, conn.json).await?,
        Command::Jobs {
            command: None,
            list,
        } => crate::jobs::list(&client, list, conn.json).await?,
        Command::Jobs {
            command: Some(command),
            ..
        } => crate::jobs::run(&client, command, conn.json).await?,
        Command::Kv { command } => crate::kv::run(&client, command, conn.json).await?,
        Command::Blobs { command } => crate::blobs::run(&client, command, conn.json).await?,
        Command::Sites { command } => crate::sites::run(&client, command, conn.json).await?,
        Command::Channels { command } => crate::channels::run(&client, command, conn.json).await?,
        Command::Limiters { command: None } => {
            let ls = client.limiters().await?;
            out.print(&ls, || {
                let mut s = format!("{:<24} {:>12} {:>8}", "NAME", "PER SECOND", "BURST");
                for l in &ls {
                    s += &format!("\n{:<24} {:>12} {:>8}", l.name, l.per_second, l.burst);
                }
                s
            });
        }
        Command::Limiters {
            command:
                Some(LimitersCommand::Set {
                    name,
                    per_second,
                    burst,
                }),
        } => {
            let l = client.put_limiter(&name, per_second, burst).await?;
            out.print(&l, || {
                format!(
                    "Limiter {}: {} per second, burst {}.",
                    l.name, l.per_second, l.burst
                )
            });
        }
        Command::Limiters {
            command: Some(LimitersCommand::Rm { name }),
        } => {
            client.remove_limiter(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed limiter {name}.")
            });
        }
        Command::Status => {
            let h = client.health().await?;
            // Needs a token (reader); without one the rest still shows.
            let stats = client.stats().await.ok();
            let mut value = serde_json::to_value(&h)?;
            if let Some(st) = &stats {
                value["stats"] = serde_json::to_value(st)?;
            }
            out.print(&value, || {
                let mut s = format!(
                    "node:    {} ({})\nversion: {}\nsandbox: {}",
                    h.status,
                    client.url(),
                    h.version,
                    h.sandbox
                );
                if let Some(st) = &stats {
                    s += &format!("\ndata:    {}", crate::invocations::stats_line(st));
                }
                s
            });
        }
        Command::Nodes => crate::nodes::list(&client, conn.json).await?,
        Command::Notifications { command } => {
            crate::notifications::run(&client, command, conn.json).await?
        }
        Command::Schedules { command } => {
            crate::schedules::run(&client, command, conn.json).await?
        }
        Command::Triggers => crate::triggers::list(&client, conn.json).await?,
        Command::Users { command } => crate::users::run(&client, command, conn.json).await?,
        Command::Usage { args, command } => {
            crate::usage::run(&client, args, command, conn.json).await?
        }
        Command::Secrets { command: None } => {
            let ls = client.secrets().await?;
            out.print(&ls, || {
                let mut s = String::from("NAME");
                for l in &ls {
                    s += &format!("\n{}", l.name);
                }
                s
            });
        }
        Command::Secrets {
            command: Some(SecretsCommand::Set { name, file }),
        } => {
            let raw = match &file {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("reading the secret from {}", path.display()))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("reading the secret from stdin")?;
                    buf
                }
            };
            let value = String::from_utf8(raw)
                .map_err(|_| anyhow::anyhow!("the secret must be UTF-8 text"))?;
            // One trailing newline (from `echo` or an editor) is not part of it.
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            let s = client.set_secret(&name, value).await?;
            out.print(&s, || format!("Secret {} set.", s.name));
        }
        Command::Secrets {
            command: Some(SecretsCommand::Rm { name }),
        } => {
            client.remove_secret(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed secret {name}.")
            });
        }
        Command::Tokens { command } => match command {
            TokensCommand::Create {
                role,
                name,
                channels,
                user,
                scopes,
            } => {
                let mut scopes = scopes;
                scopes.extend(channels.into_iter().map(|c| format!("channel:{c}")));
                let t = client
                    .create_user_token(&role, name.as_deref(), user.as_deref(), scopes)
                    .await?;
                out.print(&t, || t.token.clone());
                if !conn.json {
                    eprintln!(
                        "Created {} token {}. Store the secret above now: it is not shown again.",
                        t.role, t.id
                    );
                }
            }
            TokensCommand::List => {
                let list = client.tokens().await?;
                out.print(&list, || {
                    let mut s = format!(
                        "{:<20} {:<10} {:<23}  {:<16} {:<16} SCOPES",
                        "ID", "ROLE", "CREATED", "USER", "NAME"
                    );
                    for t in &list.tokens {
                        let mut scopes = t.scopes.clone();
                        scopes.extend(t.channels.iter().map(|c| format!("channel:{c}")));
                        s += &format!(
                            "\n{:<20} {:<10} {:<23}  {:<16} {:<16} {}",
                            t.id,
                            t.role,
                            time(t.created_at_ms),
                            t.user.as_deref().unwrap_or("-"),
                            t.name,
                            if scopes.is_empty() {
                                "-".to_string()
                            } else {
                                scopes.join(",")
                            }
                        );
                    }
                    s
                });
            }
            TokensCommand::Recover { .. } => unreachable!("handled above"),
            TokensCommand::Revoke { id } => {
                client.revoke_token(&id).await?;
                out.print(&serde_json::json!({"deleted": true}), || {
                    format!("Revoked {id}.")
                });
            }
            TokensCommand::Budget { token_id, command } => {
                crate::usage::budget(&client, &token_id, command, conn.json).await?
            }
        },
    }
    Ok(())
}

/// `--listen`: `host:port` where host is an address or a name
/// (`localhost:7700`); a name resolves to its first IPv4 address if it has
/// one (the loopback a browser and the CLI reach first).
pub(crate) fn parse_listen(text: &str) -> std::result::Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = text
        .to_socket_addrs()
        .map_err(|e| {
            format!("`{text}` is not host:port ({e}); e.g. 127.0.0.1:7700 or localhost:7700")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// The node's URL: `--url`, else `SHOAL_URL`, else the default.
pub(crate) fn node_url(conn: &Conn) -> String {
    conn.url
        .clone()
        .or_else(|| std::env::var("SHOAL_URL").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

const DEFAULT_URL: &str = "http://127.0.0.1:7700";

fn connect(conn: &Conn) -> Result<Client> {
    let token = match &conn.token {
        Some(t) => Some(t.clone()),
        None => match std::env::var("SHOAL_TOKEN") {
            Ok(t) if !t.is_empty() => Some(t),
            _ => read_default_token(Path::new(".shoal"))?,
        },
    };
    // A URL that cannot be one is the user's input, not an unreachable node.
    let url = shoal_client::node_url(&node_url(conn)).map_err(|e| {
        crate::output::fail(
            shoal_client::protocol::ErrorCode::InvalidInput,
            e.to_string(),
        )
    })?;
    Ok(Client::new(&url, token.as_deref())?)
}

/// The admin token file a node writes into its data directory.
fn read_default_token(data_dir: &Path) -> Result<Option<String>> {
    let path = data_dir.join(serve::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
