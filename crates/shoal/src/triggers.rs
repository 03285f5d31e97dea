//! `shoal triggers`: the `[[trigger]]` entries of the live versions.
//!
//! `--json` prints the API's answer, `{"items": [...]}`.

use anyhow::Result;

use shoal_client::Client;
use shoal_client::protocol::{TriggerList, TriggerView};

use crate::output::Out;

/// Prints the triggers as a table (or the API's list as JSON).
pub async fn list(client: &Client, json: bool) -> Result<()> {
    let items = client.triggers().await?;
    let list = TriggerList { items };
    Out { json }.print(&list, || table(&list.items));
    Ok(())
}

/// FUNCTION, #, ON, WHAT.
fn table(items: &[TriggerView]) -> String {
    if items.is_empty() {
        return "No triggers.".to_string();
    }
    let header = ["FUNCTION", "#", "ON", "WHAT"];
    let rows: Vec<[String; 4]> = items
        .iter()
        .map(|t| {
            [
                t.function.clone(),
                t.index.to_string(),
                t.on.clone(),
                what(t),
            ]
        })
        .collect();
    crate::output::columns(&header, &rows)
}

/// What runs it: `photos, batches of 100, 500 ms`, `uploads/* created,
/// deleted`, `resize on failure`.
fn what(t: &TriggerView) -> String {
    match t.on.as_str() {
        "docs" => format!(
            "{}, batches of {}, {} ms",
            t.category.as_deref().unwrap_or("-"),
            t.batch_size.unwrap_or(0),
            t.batch_window_ms.unwrap_or(0)
        ),
        "blob" => format!(
            "{}* {}",
            t.prefix.as_deref().unwrap_or(""),
            t.events.as_deref().unwrap_or_default().join(",")
        ),
        "outcome" => format!(
            "{} on {}",
            t.source.as_deref().unwrap_or("-"),
            t.when.as_deref().unwrap_or("any")
        ),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(on: &str) -> TriggerView {
        TriggerView {
            function: "f".into(),
            version: 1,
            index: 0,
            on: on.into(),
            category: Some("photos".into()),
            batch_size: Some(100),
            batch_window_ms: Some(500),
            prefix: Some("up/".into()),
            events: Some(vec!["created".into(), "deleted".into()]),
            source: Some("resize".into()),
            when: Some("failure".into()),
        }
    }

    #[test]
    fn a_table_of_triggers() {
        assert_eq!(table(&[]), "No triggers.");
        let t = table(&[view("docs"), view("blob"), view("outcome")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "FUNCTION  #  ON       WHAT", "{t}");
        assert!(lines[1].ends_with("photos, batches of 100, 500 ms"), "{t}");
        assert!(lines[2].ends_with("up/* created,deleted"), "{t}");
        assert!(lines[3].ends_with("resize on failure"), "{t}");
    }
}
