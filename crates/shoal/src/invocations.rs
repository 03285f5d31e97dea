//! `shoal invocations` (the filtered list) and `shoal logs --function F
//! [--follow]` (a function's logs, followed over server-sent events).
//!
//! `--json`: the list prints the API's page (`{"invocations": [...],
//! "next"}`), one JSON value, so the cursor of the next page comes along;
//! logs print one `InvocationLogs` per line (NDJSON), followed or not.
//!
//! Also what `shoal invoke` does with a function's `shoal.Response`: its
//! bytes go to stdout or `--output FILE` as they are.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use shoal_client::Client;
use shoal_client::protocol::{ErrorCode, InvocationLogs, InvocationSummary, LogsLagged, NodeStats};

use crate::output::{Out, duration, fail_hint, time};

/// The filters of `shoal invocations` (with no subcommand).
#[derive(Args, Debug, Default)]
pub struct ListArgs {
    /// Only this function's invocations.
    #[arg(long)]
    function: Option<String>,
    /// queued, running, succeeded, failed, timed_out or cancelled.
    #[arg(long)]
    status: Option<String>,
    /// sync, async or queue.
    #[arg(long)]
    mode: Option<String>,
    /// Created since: a duration back from now (90s, 15m, 1h, 7d) or an
    /// RFC 3339 time (2026-12-04T17:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Created before: the same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Only those that failed or timed out.
    #[arg(long, conflicts_with = "status")]
    failed: bool,
    /// Text to find (case-insensitive) in the logs, event, output or error;
    /// a bounded scan (--scan records), continued with --cursor.
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// With --grep: records to look at, at most (1 to 10000; default 2000).
    #[arg(long, requires = "grep")]
    scan: Option<u32>,
    /// How many, newest first (1 to 1000; default 50).
    #[arg(long)]
    limit: Option<u32>,
    /// Where a previous page ended (its `next`).
    #[arg(long)]
    cursor: Option<String>,
}

/// `shoal logs`: one invocation's logs by id, or a function's.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The invocation whose logs to print.
    #[arg(required_unless_present = "function", conflicts_with = "function")]
    id: Option<String>,
    /// Print the logs of this function's latest invocations instead.
    #[arg(long)]
    function: Option<String>,
    /// With --function: keep printing the logs of invocations as they
    /// finish, until interrupted.
    #[arg(long, requires = "function")]
    follow: bool,
    /// With --function: how many of the latest invocations (default 20;
    /// 10 with --follow).
    #[arg(long, requires = "function")]
    limit: Option<u32>,
}

/// Prints a page of invocations as a table (or the page as JSON).
pub async fn list(client: &Client, args: ListArgs, json: bool) -> Result<()> {
    let limit = args.limit.map(|n| n.to_string());
    let scan = args.scan.map(|n| n.to_string());
    let pairs = [
        ("failed", args.failed.then_some("true")),
        ("q", args.grep.as_deref()),
        ("scan", scan.as_deref()),
        ("function", args.function.as_deref()),
        ("status", args.status.as_deref()),
        ("mode", args.mode.as_deref()),
        ("since", args.since.as_deref()),
        ("until", args.until.as_deref()),
        ("limit", limit.as_deref()),
        ("cursor", args.cursor.as_deref()),
    ];
    let filters: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    let page = client.list_invocations(&filters).await?;
    Out { json }.print(&page, || {
        match (&page.invocations[..], &page.next) {
            ([], None) => return "No invocations match.".to_string(),
            // A rare --mode: the node stopped looking before finding one.
            ([], Some(next)) => {
                return format!(
                    "None among the records looked at; look further with --cursor {next}"
                );
            }
            _ => {}
        }
        let mut s = table(&page.invocations);
        if let Some(n) = page.scanned {
            s += &format!("\n(looked at {n} records)");
        }
        if let Some(next) = &page.next {
            s += &format!("\nMore: add --cursor {next}");
        }
        s
    });
    Ok(())
}

/// `shoal logs ID` as before; `--function F` prints the latest
/// invocations' logs, and `--follow` keeps streaming them.
pub async fn logs(client: &Client, args: LogsArgs, json: bool) -> Result<()> {
    let out = Out { json };
    let Some(function) = args.function else {
        let id = args.id.expect("clap requires an id without --function");
        let logs = match client.logs(&id).await {
            Ok(logs) => logs,
            // `shoal logs hello`: a function's name where an id goes.
            Err(e)
                if e.code() == Some(ErrorCode::InvocationNotFound)
                    && client.function(&id).await.is_ok() =>
            {
                return Err(fail_hint(
                    ErrorCode::InvocationNotFound,
                    format!("no invocation has the id {id:?}, but a function has that name"),
                    format!("for its logs, run `shoal logs --function {id}`"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            outln!("{}", serde_json::json!({"id": id, "logs": logs}));
        } else {
            out!("{logs}");
        }
        return Ok(());
    };
    if !args.follow {
        let got = client.function_logs(&function, args.limit).await?;
        if got.entries.is_empty() && !json {
            outln!("No invocations of {function} yet.");
        }
        for e in &got.entries {
            out.item(e, || entry(e));
        }
        return Ok(());
    }
    let mut lines = client.follow_logs(&function, args.limit).await?;
    let mut event = String::new();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => anyhow::bail!("the node closed the log stream ({e})"),
        };
        let line = String::from_utf8_lossy(&line);
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            match event.as_str() {
                "invocation" => {
                    let e: InvocationLogs = serde_json::from_str(data)?;
                    out.item(&e, || entry(&e));
                }
                "lagged" => {
                    let l: LogsLagged = serde_json::from_str(data)?;
                    eprintln!(
                        "warning: {} finished invocations were skipped: this reader fell behind",
                        l.missed
                    );
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `1.2 GiB, 4213 invocations (kept 30 days)` for `shoal status`.
pub(crate) fn stats_line(st: &NodeStats) -> String {
    let kept = match st.retain_seconds {
        Some(s) if s % 86_400 == 0 => format!("kept {} days", s / 86_400),
        Some(s) => format!("kept {}", duration(s as f64 * 1000.0)),
        None => "kept forever".to_string(),
    };
    format!(
        "{}, {} invocations ({kept})",
        bytes(st.data_dir_bytes),
        st.invocations
    )
}

/// Bytes in binary units: `512 B`, `3.4 KiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// ID, FUNCTION@VERSION, STATUS, MODE, STARTED, DURATION.
fn table(rows: &[InvocationSummary]) -> String {
    let mut s = format!(
        "{:<36}  {:<24} {:<10} {:<6} {:<23} {:>9}",
        "ID", "FUNCTION", "STATUS", "MODE", "STARTED", "DURATION"
    );
    for r in rows {
        let started = r.started_at_ms.map_or_else(|| "-".to_string(), time);
        let took = r.duration_ms.map_or_else(|| "-".to_string(), duration);
        s += &format!(
            "\n{:<36}  {:<24} {:<10} {:<6} {:<23} {:>9}",
            r.id,
            format!("{}@{}", r.function, r.version),
            r.status,
            r.mode,
            started,
            took
        );
    }
    s
}

/// A header line for one attempt, then its logs.
fn entry(e: &InvocationLogs) -> String {
    // A failed attempt whose invocation is tried again.
    let status = match e.next_attempt_at_ms {
        Some(_) => "failed, retrying",
        None => e.status.as_str(),
    };
    let mut s = format!(
        "── {}  {}@{}  {status}  {}",
        time(e.at_ms),
        e.function,
        e.version,
        e.id
    );
    let logs = e.logs.trim_end_matches('\n');
    if !logs.is_empty() {
        s += "\n";
        s += logs;
    }
    s
}

/// Writes a function's `shoal.Response` (its bytes as they are) to `path`,
/// or to stdout; with `--json` and no file, its JSON form instead. Binary
/// bytes are not written to a terminal.
pub(crate) fn binary_answer(
    binary: &shoal_client::Binary,
    path: Option<&Path>,
    out: Out,
) -> Result<()> {
    if !(200..300).contains(&binary.status) {
        eprintln!("the function answered with status {}", binary.status);
    }
    match path {
        Some(path) => {
            write_output(path, &binary.body)?;
            out.print(
                &serde_json::json!({
                    "id": binary.id,
                    "status": binary.status,
                    "content_type": binary.content_type,
                    "bytes": binary.body.len(),
                    "file": path.display().to_string(),
                }),
                || {
                    format!(
                        "wrote {} bytes of {} to {}",
                        binary.body.len(),
                        binary.content_type,
                        path.display()
                    )
                },
            );
        }
        None if out.json => {
            outln!(
                "{}",
                serde_json::json!({"id": binary.id, "output": binary.to_json()})
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            if stdout.is_terminal() && std::str::from_utf8(&binary.body).is_err() {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    format!(
                        "the function answered {} bytes of {}, which would garble the terminal",
                        binary.body.len(),
                        binary.content_type
                    ),
                    "write them to a file with --output FILE, or pipe them on",
                ));
            }
            if let Err(e) = stdout.write_all(&binary.body).and_then(|()| stdout.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e).context("writing the result to stdout");
            }
        }
    }
    Ok(())
}

/// Writes a result to the file `path` (created or replaced).
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn bytes_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
        assert_eq!(bytes(3 << 40), "3.0 TiB");
    }
}
