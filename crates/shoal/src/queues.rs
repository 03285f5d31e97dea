//! `shoal queues ...`: queue commands (client side only).

use anyhow::Result;

use shoal_client::Client;
use shoal_client::protocol::{ErrorCode, PutQueue, QueueView, SendMessage};

use crate::cli::QueuesCommand;
use crate::output::{Out, check_json, confirm, duration, fail_hint, guarded, read_input, time};

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
        Some(QueuesCommand::Rm { name, force }) => {
            guarded(force, |r| client.delete_queue_with(&name, r)).await?;
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
            let Some(text) = read_input(body.as_deref(), "the message body")? else {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    "no message body given",
                    "give a JSON body as an argument, as @FILE, or on stdin",
                ));
            };
            let body = check_json(&text, "the message body")?;
            let sent = client
                .send_messages(
                    &name,
                    vec![SendMessage {
                        body,
                        delay,
                        dedup_id,
                    }],
                )
                .await?;
            out.print(&sent, || {
                let id = sent.ids.first().map(String::as_str).unwrap_or_default();
                match (sent.duplicate, id) {
                    (false, _) => id.to_string(),
                    (true, "") => "duplicate: not sent again".to_string(),
                    (true, _) => format!("duplicate of {id}: not sent again"),
                }
            });
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
                        "{}  attempts {}  dead since {}  {}\n  body: {}\n",
                        d.id,
                        d.attempts,
                        time(d.dead_at_ms),
                        d.reason,
                        d.body
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
        Some(QueuesCommand::Purge { name, dead, force }) => {
            let n = if dead {
                let q = client.queue(&name).await?;
                if q.depth.dead > 0 {
                    confirm(
                        &format!(
                            "purging deletes the {} dead letters of queue `{name}`",
                            q.depth.dead
                        ),
                        force,
                    )?;
                }
                client.purge_dead(&name, None).await?
            } else {
                guarded(force, |r| client.purge_queue(&name, r)).await?
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
                    "{:<23} {:>8} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8}",
                    "AT", "WAITING", "IN FLIGHT", "DEAD", "OLDEST", "SENT/s", "ACKED/s", "FAILED/s"
                );
                for p in &stats.samples {
                    s += &format!(
                        "\n{:<23} {:>8} {:>9} {:>6} {:>10} {:>8.1} {:>8.1} {:>8.1}",
                        time(p.at_ms),
                        p.depth.waiting,
                        p.depth.in_flight,
                        p.depth.dead,
                        p.depth
                            .oldest_age_ms
                            .map_or("-".to_string(), |ms| duration(ms as f64)),
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
        "name:         {}\nmax attempts: {}\nvisibility:   {}\nretry delay:  {}\ndedup window: {}\nsubscriber:   {}\nwaiting:      {}\nin flight:    {}\ndead:         {}\nsent/acked:   {}/{}",
        q.name,
        q.max_attempts,
        duration(q.visibility_timeout_ms as f64),
        duration(q.retry_delay_ms as f64),
        duration(q.dedup_window_ms as f64),
        q.subscriber.as_deref().unwrap_or("-"),
        q.depth.waiting,
        q.depth.in_flight,
        q.depth.dead,
        q.counters.sent,
        q.counters.acked
    )
}
