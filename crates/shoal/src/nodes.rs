//! `shoal nodes`: the nodes sharing the node's store, from their heartbeats.
//!
//! `--json` prints the API's answer, `{"nodes": [...]}`.

use anyhow::Result;

use shoal_client::Client;
use shoal_client::protocol::{NodeList, NodeView};

use crate::output::{Out, time};

/// Prints the nodes as a table (or the API's list as JSON).
pub async fn list(client: &Client, json: bool) -> Result<()> {
    let nodes = client.nodes().await?;
    let list = NodeList { nodes };
    Out { json }.print(&list, || table(&list.nodes, local_now_ms()));
    Ok(())
}

/// ID, ADDRESS, VERSION, STARTED, LAST SEEN, RUNNING, WORKERS, LOAD, STATE;
/// the node that answered is marked `*`. "Last seen" counts back from the
/// answering node's clock (its own heartbeat is "now"), so a skewed clock
/// on the machine running the CLI does not shift it; `local_now_ms` is the
/// fallback should no node be marked.
fn table(nodes: &[NodeView], local_now_ms: u64) -> String {
    if nodes.is_empty() {
        return "No nodes.".to_string();
    }
    let now = nodes
        .iter()
        .find(|n| n.this)
        .map_or(local_now_ms, |n| n.last_seen_ms);
    let header = [
        "ID",
        "ADDRESS",
        "VERSION",
        "STARTED",
        "LAST SEEN",
        "RUNNING",
        "WORKERS",
        "LOAD",
        "STATE",
    ];
    let rows: Vec<[String; 9]> = nodes
        .iter()
        .map(|n| {
            [
                n.id.clone(),
                n.address.clone(),
                n.version.clone(),
                time(n.started_at_ms),
                ago(now.saturating_sub(n.last_seen_ms)),
                n.running.to_string(),
                n.workers.to_string(),
                n.load
                    .map_or_else(|| "-".to_string(), |l| format!("{l:.2}")),
                n.state.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers align right.
    let right = [false, false, false, false, false, true, true, true, false];
    let line = |mark: &str, cells: &[&str]| {
        let mut s = format!("{mark} ");
        for (i, cell) in cells.iter().enumerate() {
            let w = widths[i];
            if i > 0 {
                s += "  ";
            }
            if right[i] {
                s += &format!("{cell:>w$}");
            } else {
                s += &format!("{cell:<w$}");
            }
        }
        s.trim_end().to_string()
    };
    let mut s = line(" ", &header);
    for (n, row) in nodes.iter().zip(&rows) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        s += "\n";
        s += &line(if n.this { "*" } else { " " }, &cells);
    }
    s
}

/// How long ago, in milliseconds: `now`, `2s ago`, `4m ago`, `3h ago`,
/// `2d ago`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "now".to_string(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn local_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, this: bool, last_seen_ms: u64, state: &str) -> NodeView {
        NodeView {
            id: id.to_string(),
            address: format!("10.0.0.{}:7700", id.len()),
            version: "0.1.0".to_string(),
            started_at_ms: 1_796_403_792_000,
            last_seen_ms,
            running: 3,
            workers: 12,
            load: this.then_some(0.5),
            this,
            state: state.to_string(),
        }
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(ago(0), "now");
        assert_eq!(ago(999), "now");
        assert_eq!(ago(2_400), "2s ago");
        assert_eq!(ago(59_999), "59s ago");
        assert_eq!(ago(60_000), "1m ago");
        assert_eq!(ago(7_200_000), "2h ago");
        assert_eq!(ago(2 * 86_400_000), "2d ago");
    }

    #[test]
    fn the_answering_node_is_marked_and_times_count_from_its_clock() {
        let t = 1_796_403_800_000;
        let out = table(
            &[
                node("aaaaaaaaaaaa", true, t, "alive"),
                node("bbbb", false, t - 20_000, "lost"),
            ],
            // A local clock far off changes nothing.
            t + 3_600_000,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("  ID "), "{out}");
        for col in [
            "ADDRESS",
            "VERSION",
            "STARTED",
            "LAST SEEN",
            "RUNNING",
            "WORKERS",
            "LOAD",
            "STATE",
        ] {
            assert!(lines[0].contains(col), "{col}: {out}");
        }
        assert!(
            lines[1].starts_with("* aaaaaaaaaaaa  10.0.0.12:7700"),
            "{out}"
        );
        assert!(lines[1].contains("2026-12-04 17:03:12 UTC  now"), "{out}");
        assert!(lines[1].ends_with("0.50  alive"), "{out}");
        assert!(lines[2].starts_with("  bbbb "), "{out}");
        assert!(lines[2].contains("20s ago"), "{out}");
        assert!(lines[2].ends_with("-  lost"), "{out}");
        assert_eq!(table(&[], t), "No nodes.");
    }
}
