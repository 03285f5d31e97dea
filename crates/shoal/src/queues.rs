//! `shoal queues ...`: queue commands (client side only).

use anyhow::Result;

use shoal_client::Client;
use shoal_client::protocol::{PutQueue, QueueView, SendMessage};

use crate::cli::{Out, QueuesCommand, read_event};

pub async fn run(client: &Client, command: Option<QueuesCommand>, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        None => {
            let queues = client.queues().await?;
            out.print(&queues, || {
                if queues.is_empty() {
                    return "No queues. Create one with `shoal queues create NAME`.".to_string();
                }
                let mut s = format!(
                    "{:<24} {:>9} {:>9} {:>6} {:>10} {:>10}  SUBSCRIBER",
                    "NAME", "WAITING", "IN FLIGHT", "DEAD", "SENT", "ACKED"
                );
                for q in &queues {
                    s += &format!(
                        "\n{:<24} {:>9} {:>9} {:>6} {:>10} {:>10}  {}",
                        q.name,
                        q.depth.waiting,
                        q.depth.in_flight,
                        q.depth.dead,
                        q.counters.sent,
                        q.counters.acked,
                        q.subscriber.as_deref().unwrap_or("-")
                    );
                }
                s
            });
        }
        Some(QueuesCommand::Create {
            name,
            max_attempts,
            visibility_timeout,
            retry_delay,
            dedup_window,
        }) => {
            let q = client
                .put_queue(
                    &name,
                    &PutQueue {
                        max_attempts,
                        visibility_timeout,
                        retry_delay,
                        dedup_window,
                    },
                )
                .await?;
            out.print(&q, || format!("Queue {} ready.\n{}", q.name, describe(&q)));
        }
        Some(QueuesCommand::Show { name }) => {
            let q = client.queue(&name).await?;
            out.print(&q, || describe(&q));
        }
        Some(QueuesCommand::Rm { name }) => {
            client.delete_queue(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Deleted queue {name}.")
            });
        }
        Some(QueuesCommand::Send {
            name,
            body,
            delay,
            dedup_id,
        }) => {
            let text = read_event(Some(&body))?;
            let ids = client
                .send(
                    &name,
                    vec![SendMessage {
                        body: serde_json::from_str(&text)?,
                        delay,
                        dedup_id,
                    }],
                )
                .await?;
            out.print(&serde_json::json!({"ids": ids}), || ids.join("\n"));
        }
        Some(QueuesCommand::Dlq { name }) => {
            let page = client.dead_letters(&name, None, 1000).await?;
            out.print(&page, || {
                if page.dead_letters.is_empty() {
                    return format!("No dead letters in {name}.");
                }
                let mut s = String::new();
                for d in &page.dead_letters {
                    s += &format!(
                        "{}  attempts {}  {}\n  body: {}\n",
                        d.id, d.attempts, d.reason, d.body
                    );
                }
                s.trim_end().to_string()
            });
        }
        Some(QueuesCommand::Redrive { name, ids }) => {
            let ids = (!ids.is_empty()).then_some(ids);
            let n = client.redrive(&name, ids).await?;
            out.print(&serde_json::json!({"count": n}), || {
                format!("Redrove {n} messages.")
            });
        }
        Some(QueuesCommand::Purge { name, dead }) => {
            let n = if dead {
                client.purge_dead(&name, None).await?
            } else {
                client.purge_queue(&name).await?
            };
            out.print(&serde_json::json!({"count": n}), || {
                format!("Purged {n} messages.")
            });
        }
        Some(QueuesCommand::Stats { name, minutes }) => {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64
                - minutes * 60_000;
            let stats = client.queue_stats(&name, Some(since)).await?;
            out.print(&stats, || {
                let mut s = format!(
                    "{:<13} {:>8} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8}",
                    "AT (ms)",
                    "WAITING",
                    "IN FLIGHT",
                    "DEAD",
                    "OLDEST ms",
                    "SENT/s",
                    "ACKED/s",
                    "FAILED/s"
                );
                for p in &stats.samples {
                    s += &format!(
                        "\n{:<13} {:>8} {:>9} {:>6} {:>10} {:>8.1} {:>8.1} {:>8.1}",
                        p.at_ms,
                        p.depth.waiting,
                        p.depth.in_flight,
                        p.depth.dead,
                        p.depth.oldest_age_ms.unwrap_or(0),
                        p.sent_per_s,
                        p.acked_per_s,
                        p.failed_per_s
                    );
                }
                s
            });
        }
    }
    Ok(())
}

fn describe(q: &QueueView) -> String {
    format!(
        "name:         {}\nmax attempts: {}\nvisibility:   {} ms\nretry delay:  {} ms\ndedup window: {} ms\nsubscriber:   {}\nwaiting:      {}\nin flight:    {}\ndead:         {}\nsent/acked:   {}/{}",
        q.name,
        q.max_attempts,
        q.visibility_timeout_ms,
        q.retry_delay_ms,
        q.dedup_window_ms,
        q.subscriber.as_deref().unwrap_or("-"),
        q.depth.waiting,
        q.depth.in_flight,
        q.depth.dead,
        q.counters.sent,
        q.counters.acked
    )
}
