//! `shoal jobs ...`: fan-out jobs (client side only).

use anyhow::Result;
use clap::Args;

use shoal_client::Client;
use shoal_client::protocol::{ErrorCode, JobNodeView, JobSummary, JobView};

use crate::cli::JobsCommand;
use crate::output::{Out, check_json, duration, fail, fail_hint, read_input, time};

/// The options of `shoal jobs` (with no subcommand): a page of jobs.
#[derive(Args, Debug, Default)]
pub struct ListArgs {
    /// How many, newest first (1 to 200; default 20).
    #[arg(long)]
    limit: Option<usize>,
    /// Where a previous page ended (its `next`).
    #[arg(long)]
    cursor: Option<String>,
}

/// Prints a page of jobs as a table (or the page as JSON).
pub async fn list(client: &Client, args: ListArgs, json: bool) -> Result<()> {
    let page = client.list_jobs(args.cursor.as_deref(), args.limit).await?;
    Out { json }.print(&page, || {
        if page.jobs.is_empty() && page.next.is_none() {
            return "No jobs.".to_string();
        }
        let mut s = table(&page.jobs);
        if let Some(next) = &page.next {
            s += &format!("\nMore: add --cursor {next}");
        }
        s
    });
    Ok(())
}

fn table(rows: &[JobSummary]) -> String {
    let mut s = format!(
        "{:<36}  {:<24} {:<10} {:>15} {:>5} {:<23}",
        "ID", "FUNCTION", "STATUS", "DONE/TOTAL", "FAIL", "CREATED"
    );
    for j in rows {
        let c = &j.counts;
        let function = match &j.then {
            Some(then) => format!("{} → {then}", j.function),
            None => j.function.clone(),
        };
        s += &format!(
            "\n{:<36}  {:<24} {:<10} {:>15} {:>5} {:<23}",
            j.id,
            function,
            j.status,
            format!("{}/{}", c.total.saturating_sub(c.pending), c.total),
            c.failed,
            time(j.created_at_ms)
        );
    }
    s
}

pub async fn run(client: &Client, command: JobsCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        JobsCommand::Start {
            function,
            events,
            then,
        } => {
            let Some(text) = read_input(events.as_deref(), "the events")? else {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    "no events given",
                    "give a JSON array of events as an argument, as @FILE, or on stdin",
                ));
            };
            let serde_json::Value::Array(events) = check_json(&text, "the events")? else {
                return Err(fail(
                    ErrorCode::InvalidInput,
                    "the events must be a JSON array, one event per child",
                ));
            };
            let id = client.start_job(&function, events, then.as_deref()).await?;
            out.print(&serde_json::json!({ "job": id }), || {
                format!("Started job {id}. Follow it with `shoal jobs show {id}`.")
            });
        }
        JobsCommand::Show { id } => {
            let job = client.job(&id).await?;
            out.print(&job, || describe(&job));
        }
        JobsCommand::Results { id, offset, limit } => {
            let mut offset = offset;
            let mut left = limit.unwrap_or(u64::MAX);
            while left > 0 {
                let page = client
                    .job_results(&id, offset, left.min(1000) as usize)
                    .await?;
                for r in &page.results {
                    outln!("{}", serde_json::to_string(r)?);
                }
                left = left.saturating_sub(page.results.len() as u64);
                match page.next {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
        JobsCommand::Cancel { id } => {
            let job = client.cancel_job(&id).await?;
            out.print(&job, || {
                let what = if job.status == "finished" {
                    format!("Job {id} had already finished: nothing was cancelled.")
                } else {
                    format!("Cancelled job {id}.")
                };
                format!("{what}\n{}", describe(&job))
            });
        }
    }
    Ok(())
}

fn describe(j: &JobView) -> String {
    let c = &j.counts;
    let mut s = format!(
        "job        {}\nstatus     {}\nfunction   {}{}\nprogress   {:.1}% ({} of {} finished)\nchildren   {} pending, {} succeeded, {} failed, {} cancelled",
        j.id,
        j.status,
        j.function,
        j.then
            .as_ref()
            .map(|t| format!(" then {t}"))
            .unwrap_or_default(),
        j.progress * 100.0,
        c.total - c.pending,
        c.total,
        c.pending,
        c.succeeded,
        c.failed,
        c.cancelled
    );
    s += &format!("\nstarted    {}", time(j.created_at_ms));
    if let Some(t) = j.finished_at_ms {
        s += &format!(
            "\nfinished   {} (after {})",
            time(t),
            duration(t.saturating_sub(j.created_at_ms) as f64)
        );
    }
    if let Some(t) = j.cancelled_at_ms {
        s += &format!("\ncancelled  {}", time(t));
    }
    if let Some(inv) = &j.then_invocation {
        s += &format!("\nfan-in     invocation {inv}");
    }
    if let Some(parent) = &j.parent {
        s += &format!("\nparent     job {parent}");
    }
    if !j.failures.is_empty() {
        s += "\nfailures:";
        for f in &j.failures {
            let why = f
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind, e.message))
                .unwrap_or_else(|| f.status.clone());
            s += &format!("\n  #{:<8} {}  {}", f.index, f.invocation, why);
        }
    }
    if !j.jobs.is_empty() {
        s += "\njobs below:";
        for n in &j.jobs {
            tree(&mut s, n, 1);
        }
    }
    s
}

fn tree(s: &mut String, n: &JobNodeView, depth: usize) {
    let c = &n.counts;
    *s += &format!(
        "\n{}{} {} {} ({} of {} finished, {} failed)",
        "  ".repeat(depth),
        n.id,
        n.function,
        n.status,
        c.total - c.pending,
        c.total,
        c.failed
    );
    for sub in &n.jobs {
        tree(s, sub, depth + 1);
    }
}
