//! `shoal channels ...`: channel settings, publishing, and following a
//! channel's messages (client side only).

use anyhow::Result;
use clap::Subcommand;

use shoal_client::Client;
use shoal_client::protocol::{ChannelInfoView, ChannelSettingsBody, ErrorCode};

use crate::output::{Out, check_json, fail, fail_hint, read_input};

#[derive(Subcommand)]
pub enum ChannelsCommand {
    /// Change a channel's settings (those not given keep their values).
    Set {
        name: String,
        /// Subscribing needs no token (`--public true|false`).
        #[arg(long)]
        public: Option<bool>,
        /// Messages kept for resuming subscribers.
        #[arg(long)]
        history_len: Option<u64>,
        /// Messages older than this leave the history (`1h`, `7d` is not a
        /// unit: use `168h`; `0s`: no age bound).
        #[arg(long)]
        history_age: Option<String>,
        /// Gather deliveries into one frame per this many milliseconds.
        #[arg(long)]
        coalesce_ms: Option<u32>,
    },
    /// A channel's settings, position and presence.
    Show { name: String },
    /// Channels with messages or settings, by name prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Publish a JSON message: DATA, `@FILE`, `-` or piped stdin.
    Publish { name: String, data: Option<String> },
    /// Print a channel's messages as they come (one per line; `--json`:
    /// each event with its kind and position), until interrupted.
    Tail {
        name: String,
        /// Resume after this position (`EPOCH:OFFSET`, or a bare offset;
        /// `0` replays the whole history).
        #[arg(long)]
        since: Option<String>,
        /// Stop after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
}

fn human(c: &ChannelInfoView) -> String {
    format!(
        "{}  {}  offset {} (epoch {})  history {} messages / {}  coalesce {} ms  {} subscribed",
        c.name,
        if c.public { "public" } else { "private" },
        c.offset,
        if c.epoch.is_empty() { "-" } else { &c.epoch },
        c.history_len,
        if c.history_age_s == 0 {
            "no age bound".to_string()
        } else {
            format!("{} s", c.history_age_s)
        },
        c.coalesce_ms,
        c.presence
    )
}

pub async fn run(client: &Client, command: ChannelsCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        ChannelsCommand::Set {
            name,
            public,
            history_len,
            history_age,
            coalesce_ms,
        } => {
            let history_age_s = match history_age.as_deref() {
                None => None,
                Some(t) => Some(
                    shoal_engine::manifest::parse_duration(t)
                        .ok_or_else(|| {
                            fail(
                                ErrorCode::InvalidInput,
                                format!(
                                    "--history-age {t:?} is not a duration; use e.g. 30s, 5m, 24h"
                                ),
                            )
                        })?
                        .as_secs(),
                ),
            };
            let body = ChannelSettingsBody {
                public,
                history_len,
                history_age_s,
                coalesce_ms,
            };
            let c = client.configure_channel(&name, &body).await?;
            out.print(&c, || human(&c));
        }
        ChannelsCommand::Show { name } => {
            let c = client.channel(&name).await?;
            out.print(&c, || human(&c));
        }
        ChannelsCommand::Ls { prefix } => {
            let list = client.channels(&prefix).await?;
            out.print(&list, || {
                if list.channels.is_empty() {
                    "No channels.".to_string()
                } else {
                    list.channels
                        .iter()
                        .map(human)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
        }
        ChannelsCommand::Publish { name, data } => {
            let Some(text) = read_input(data.as_deref(), "the message")? else {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    "no message given",
                    "give a JSON value as an argument ('{\"text\": \"hi\"}'), as @FILE, or on stdin",
                ));
            };
            let value = check_json(&text, "the message")?;
            let at = client.publish(&name, &value.to_string()).await?;
            out.print(&at, || {
                format!(
                    "Published on {name} at offset {} (epoch {}).",
                    at.offset, at.epoch
                )
            });
        }
        ChannelsCommand::Tail { name, since, count } => {
            let mut events = client.follow_channel(&name, since.as_deref()).await?;
            let mut left = count;
            while left != Some(0) {
                let Some(e) = events.next().await? else { break };
                if matches!(e.kind.as_str(), "message" | "binary") {
                    left = left.map(|n| n - 1);
                }
                let view = serde_json::json!({"event": e.kind, "id": e.id, "data": e.data});
                out.item(&view, || match e.kind.as_str() {
                    "message" | "binary" => e.data.clone(),
                    "ready" => format!("# live from {}", e.id.clone().unwrap_or_default()),
                    "reset" => format!(
                        "# reset: resync from a snapshot; live after {} ({})",
                        e.id.clone().unwrap_or_default(),
                        e.data
                    ),
                    other => format!("# {other}: {}", e.data),
                });
            }
        }
    }
    Ok(())
}
