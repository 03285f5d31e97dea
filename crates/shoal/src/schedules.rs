//! `shoal schedules`: the schedules of the live versions and their next
//! fire times.
//!
//! `--json` prints the API's answer, `{"schedules": [...]}`.

use anyhow::Result;

use shoal_client::Client;
use shoal_client::protocol::{ScheduleList, ScheduleView};

use crate::output::{Out, time};

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
                s.next_ms
                    .first()
                    .map_or_else(|| "-".to_string(), |t| time(*t)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                s += "  ";
            }
            s += &format!("{cell:<w$}", w = widths[i]);
        }
        s.trim_end().to_string()
    };
    let mut s = line(header);
    for row in &rows {
        s += "\n";
        s += &line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    s
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
