//! `shoal kv ...`: the key-value store (client side only).

use anyhow::Result;
use clap::Subcommand;

use shoal_client::protocol::{ErrorCode, KvEntryView};
use shoal_client::{Client, KvSetOptions};

use crate::output::{Out, check_json, fail, fail_hint, read_input, time};

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a key's value (`--json`: the whole entry, with its version
    /// and expiry).
    Get { key: String },
    /// Store a JSON value under a key: VALUE, `@FILE`, `-` or piped stdin.
    Set {
        key: String,
        value: Option<String>,
        /// Expire after this long (`500ms`, `30s`, `5m`, `24h`).
        #[arg(long)]
        ttl: Option<String>,
        /// Only if the key is absent.
        #[arg(long, conflicts_with_all = ["xx", "version"])]
        nx: bool,
        /// Only if the key is present.
        #[arg(long, conflicts_with = "version")]
        xx: bool,
        /// Only if the key is at this version (compare-and-set).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Add to a key's integer value (an absent key counts as 0).
    Incr {
        key: String,
        /// What to add (may be negative).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Delete a key.
    Rm {
        key: String,
        /// Only if the key is at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List keys (with their values) by prefix, in key order.
    Ls {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub async fn run(client: &Client, command: KvCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        KvCommand::Get { key } => {
            let e = client.kv_get(&key).await?;
            if json {
                out.print(&e, String::new);
            } else {
                outln!("{}", serde_json::to_string_pretty(&e.value)?);
            }
        }
        KvCommand::Set {
            key,
            value,
            ttl,
            nx,
            xx,
            version,
        } => {
            let Some(text) = read_input(value.as_deref(), "the value")? else {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    "no value given",
                    "give a JSON value as an argument ('{\"k\": 1}', '\"text\"', 42), as @FILE, or on stdin",
                ));
            };
            let value = check_json(&text, "the value")?;
            let ttl = match ttl.as_deref() {
                None => None,
                Some(t) => Some(shoal_engine::manifest::parse_duration(t).ok_or_else(|| {
                    fail(
                        ErrorCode::InvalidInput,
                        format!("--ttl {t:?} is not a duration; use e.g. 500ms, 30s, 5m, 24h"),
                    )
                })?),
            };
            let opts = KvSetOptions {
                ttl,
                nx,
                xx,
                version,
            };
            let e = client.kv_set(&key, &value, &opts).await?;
            out.print(&e, || format!("Set {} ({}).", e.key, describe(&e)));
        }
        KvCommand::Incr { key, by } => {
            let e = client.kv_incr(&key, by).await?;
            out.print(&e, || e.value.to_string());
        }
        KvCommand::Rm { key, version } => {
            client.kv_delete(&key, version).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Deleted {key}.")
            });
        }
        KvCommand::Ls { prefix, limit } => {
            let mut left = limit.unwrap_or(usize::MAX);
            let mut entries = Vec::new();
            let mut cursor: Option<String> = None;
            while left > 0 {
                let page = client
                    .kv_list(&prefix, cursor.as_deref(), left.min(1000))
                    .await?;
                left -= page.entries.len().min(left);
                entries.extend(page.entries);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            entries.truncate(limit.unwrap_or(usize::MAX));
            out.print(&entries, || {
                if entries.is_empty() {
                    return "No keys. Set one with `shoal kv set KEY VALUE`.".to_string();
                }
                let mut s = format!("{:<32} {:>10} {:<24} VALUE", "KEY", "VERSION", "EXPIRES");
                for e in &entries {
                    let mut v = e.value.to_string();
                    if v.chars().count() > 60 {
                        v = v.chars().take(57).collect::<String>() + "...";
                    }
                    let expires = e.expires_at_ms.map_or_else(|| "never".to_string(), time);
                    s += &format!("\n{:<32} {:>10} {:<24} {v}", e.key, e.version, expires);
                }
                s
            });
        }
    }
    Ok(())
}

fn describe(e: &KvEntryView) -> String {
    match e.expires_at_ms {
        Some(at) => format!("version {}, expires {}", e.version, time(at)),
        None => format!("version {}", e.version),
    }
}
