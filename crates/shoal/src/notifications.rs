//! `shoal notifications`: webhooks told about events (`set`, `ls`, `rm`,
//! `deliveries`), and the node's side of sending them: [`HttpWebhook`],
//! the engine's `Webhook` port over HTTP.
//!
//! `--json` prints the API's answer (the notification, `{"items": [...]}`,
//! or the log page `{"items": [...], "cursor"}`).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use futures_util::future::BoxFuture;

use shoal_client::Client;
use shoal_client::protocol::{DeliveryList, NotificationList, PutNotification};

use crate::output::{Out, time};

#[derive(Subcommand)]
pub enum NotificationsCommand {
    /// Create or replace a notification: events POSTed to URL, signed
    /// (the secret is printed once when the node generates it).
    Set {
        name: String,
        /// Where events are POSTed (http://).
        #[arg(value_name = "URL")]
        webhook_url: String,
        /// An event type (repeat): invocation.failed, invocation.succeeded,
        /// dead_letter, job.finished, budget.reached. None: all of them.
        #[arg(long = "event")]
        events: Vec<String>,
        /// A function name or prefix ending in * (repeat). None: all.
        #[arg(long = "function")]
        functions: Vec<String>,
        /// The signing secret; generated (and printed once) when absent.
        #[arg(long)]
        secret: Option<String>,
    },
    /// List the notifications (never their secrets).
    Ls,
    /// Remove a notification; its pending deliveries end as failed.
    Rm { name: String },
    /// The delivery log, newest first: status, attempts, last answer.
    Deliveries {
        /// Only this notification's.
        #[arg(long)]
        name: Option<String>,
        /// Only pending, delivered or failed ones.
        #[arg(long)]
        status: Option<String>,
        /// Most shown (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this cursor (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Runs `shoal notifications [set|ls|rm|deliveries]` (`ls` by default).
pub async fn run(client: &Client, command: Option<NotificationsCommand>, json: bool) -> Result<()> {
    let out = Out { json };
    match command.unwrap_or(NotificationsCommand::Ls) {
        NotificationsCommand::Set {
            name,
            webhook_url: url,
            events,
            functions,
            secret,
        } => {
            let req = PutNotification {
                url,
                events: (!events.is_empty()).then_some(events),
                functions,
                secret,
            };
            let n = client.put_notification(&name, &req).await?;
            out.print(&n, || {
                let mut s = format!(
                    "Notification {} → {} ({}).",
                    n.name,
                    n.url,
                    n.events.join(", ")
                );
                if let Some(secret) = &n.secret {
                    s += &format!("\nSigning secret (shown once, keep it): {secret}");
                }
                s
            });
        }
        NotificationsCommand::Ls => {
            let items = client.notifications().await?;
            let list = NotificationList { items };
            out.print(&list, || {
                if list.items.is_empty() {
                    return "No notifications.".to_string();
                }
                let rows: Vec<Vec<String>> = list
                    .items
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.url.clone(),
                            n.events.join(","),
                            if n.functions.is_empty() {
                                "*".to_string()
                            } else {
                                n.functions.join(",")
                            },
                        ]
                    })
                    .collect();
                crate::output::columns(&["NAME", "URL", "EVENTS", "FUNCTIONS"], &rows)
            });
        }
        NotificationsCommand::Rm { name } => {
            client.remove_notification(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed notification {name}.")
            });
        }
        NotificationsCommand::Deliveries {
            name,
            status,
            limit,
            cursor,
        } => {
            let page = client
                .notification_deliveries(
                    name.as_deref(),
                    status.as_deref(),
                    limit,
                    cursor.as_deref(),
                )
                .await?;
            out.print(&page, || deliveries_table(&page));
        }
    }
    Ok(())
}

fn deliveries_table(page: &DeliveryList) -> String {
    if page.items.is_empty() {
        return "No deliveries (kept 7 days).".to_string();
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|d| {
            let last = match (d.last_status_code, &d.last_error) {
                (Some(c), _) if d.status == "delivered" => c.to_string(),
                (_, Some(e)) => e.clone(),
                (Some(c), None) => c.to_string(),
                (None, None) => "-".to_string(),
            };
            vec![
                time(d.created_at_ms),
                d.name.clone(),
                d.event.clone(),
                d.status.clone(),
                d.attempts.to_string(),
                last,
                d.id.clone(),
            ]
        })
        .collect();
    let mut s = crate::output::columns(
        &[
            "CREATED", "NAME", "EVENT", "STATUS", "ATTEMPTS", "LAST", "DELIVERY",
        ],
        &rows,
    );
    if let Some(c) = &page.cursor {
        s += &format!("\nMore: --cursor {c}");
    }
    s
}

/// The engine's `Webhook` port over HTTP (reqwest; plain `http://`).
pub struct HttpWebhook {
    client: reqwest::Client,
}

impl HttpWebhook {
    pub fn new() -> Result<HttpWebhook> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            // A receiver that redirects is answered as it answered.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(HttpWebhook { client })
    }
}

impl shoal_engine::Webhook for HttpWebhook {
    fn send(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, std::result::Result<u16, String>> {
        let mut req = self.client.post(url).timeout(timeout).body(body);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        Box::pin(async move {
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    format!("connection failed: {e}")
                } else {
                    e.to_string()
                }
            })?;
            Ok(resp.status().as_u16())
        })
    }
}
