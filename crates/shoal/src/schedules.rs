//! `shoal schedules`: the schedules of the live versions and their next
//! fire times; `pause`, `resume` and `history` of one of them.
//!
//! `--json` prints the API's answer (`{"schedules": [...]}`, the schedule,
//! or `{"items": [...], "cursor"}`).

use anyhow::Result;
use clap::Subcommand;

use shoal_client::Client;
use shoal_client::protocol::{ScheduleHistory, ScheduleList, ScheduleTick, ScheduleView};

use crate::output::{Out, time};

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Pause a schedule on every node: its ticks are skipped until resumed.
    Pause {
        function: String,
        /// Which of the function's [[schedule]] entries, from 0.
        #[arg(default_value_t = 0)]
        index: u64,
    },
    /// Resume a paused schedule (skipped ticks are not run, except the
    /// last 10 with missed = "catch_up").
    Resume {
        function: String,
        #[arg(default_value_t = 0)]
        index: u64,
    },
    /// The ticks that fired, newest first: tick, when, node, invocation
    /// and its status.
    History {
        function: String,
        #[arg(default_value_t = 0)]
        index: u64,
        /// Most ticks shown (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this cursor (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Runs `shoal schedules [pause|resume|history]`.
pub async fn run(client: &Client, command: Option<SchedulesCommand>, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        None => list(client, json).await?,
        Some(SchedulesCommand::Pause { function, index }) => {
            let s = client.pause_schedule(&function, index, true).await?;
            out.print(&s, || format!("Paused {function} schedule {index}."));
        }
        Some(SchedulesCommand::Resume { function, index }) => {
            let s = client.pause_schedule(&function, index, false).await?;
            out.print(&s, || {
                let next = s
                    .next_ms
                    .first()
                    .map_or_else(|| "-".to_string(), |t| time(*t));
                format!("Resumed {function} schedule {index}; next tick {next}.")
            });
        }
        Some(SchedulesCommand::History {
            function,
            index,
            limit,
            cursor,
        }) => {
            let h = client
                .schedule_history(&function, index, limit, cursor.as_deref())
                .await?;
            out.print(&h, || history_table(&h));
        }
    }
    Ok(())
}

/// TICK, FIRED, NODE, INVOCATION, STATUS; the cursor after a full page.
fn history_table(h: &ScheduleHistory) -> String {
    if h.items.is_empty() {
        return "No ticks fired yet (or none kept).".to_string();
    }
    let rows: Vec<[String; 5]> = h.items.iter().map(tick_row).collect();
    let mut s = crate::output::columns(&["TICK", "FIRED", "NODE", "INVOCATION", "STATUS"], &rows);
    if let Some(c) = &h.cursor {
        s += &format!("\nMore: --cursor {c}");
    }
    s
}

fn tick_row(t: &ScheduleTick) -> [String; 5] {
    [
        time(t.tick_ms),
        time(t.fired_at_ms),
        if t.node.is_empty() {
            "-".to_string()
        } else {
            t.node.clone()
        },
        t.invocation.clone(),
        t.status.clone().unwrap_or_else(|| "-".to_string()),
    ]
}

/// Prints the schedules as a table (or the API's list as JSON).
pub async fn list(client: &Client, json: bool) -> Result<()> {
    let schedules = client.schedules().await?;
    let list = ScheduleList { schedules };
    Out { json }.print(&list, || table(&list.schedules));
    Ok(())
}

/// FUNCTION, #, WHEN, MISSED, NEXT (the next fire time, UTC as the rest
/// of the CLI's times).
fn table(schedules: &[ScheduleView]) -> String {
    if schedules.is_empty() {
        return "No schedules.".to_string();
    }
    let header = ["FUNCTION", "#", "WHEN", "MISSED", "NEXT"];
    let rows: Vec<[String; 5]> = schedules
        .iter()
        .map(|s| {
            let when = match (&s.every_ms, &s.cron) {
                (Some(ms), _) => format!("every {}", every(*ms)),
                (None, Some(c)) => format!("cron {c} {}", s.timezone),
                (None, None) => "-".to_string(),
            };
            [
                s.function.clone(),
                s.index.to_string(),
                when,
                s.missed.clone(),
                if s.paused {
                    "paused".to_string()
                } else {
                    s.next_ms
                        .first()
                        .map_or_else(|| "-".to_string(), |t| time(*t))
                },
            ]
        })
        .collect();
    crate::output::columns(&header, &rows)
}

/// `30s`, `5m`, `2h`, `1500ms`: the largest unit that divides the period.
fn every(ms: u64) -> String {
    match ms {
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(every_ms: Option<u64>, cron: Option<&str>, next: u64) -> ScheduleView {
        ScheduleView {
            function: "report".to_string(),
            version: 1,
            index: 0,
            every_ms,
            cron: cron.map(str::to_string),
            timezone: "UTC".to_string(),
            event: serde_json::json!({}),
            missed: "skip".to_string(),
            next_ms: vec![next],
            paused: false,
            last: None,
        }
    }

    #[test]
    fn a_table_of_schedules() {
        assert_eq!(table(&[]), "No schedules.");
        let t = table(&[
            view(Some(30_000), None, 1_750_000_030_000),
            view(None, Some("0 */5 * * * *"), 1_750_000_200_000),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("FUNCTION  #  WHEN"), "{t}");
        assert!(lines[1].contains("every 30s"), "{t}");
        assert!(lines[2].contains("cron 0 */5 * * * * UTC"), "{t}");
        assert_eq!(every(90_000), "90s");
        assert_eq!(every(7_200_000), "2h");
        assert_eq!(every(1500), "1500ms");
    }
}
