//! `shoal blobs ...`: upload and download blobs (streamed, with a progress
//! bar on a terminal when the size is known), list, stat, remove, and
//! fixed-size blobs with their bitfield batches (client side only).
//!
//! The op syntax of `shoal blobs bitfield --op` follows redis-cli's
//! `BITFIELD`: `get TYPE OFFSET`, `set TYPE OFFSET VALUE`, `incrby TYPE
//! OFFSET BY`, `overflow wrap|sat|fail` (for the `set`/`incrby` after it),
//! and `write_at BYTE_OFFSET hex:..|base64:..|text:..`; one `--op` may
//! hold several operations.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use shoal_client::protocol::{BitfieldOp, BlobView, ErrorCode};
use shoal_client::{ByteRange, Client, Progress};

use crate::output::{Out, fail, fail_hint, time};

#[derive(Subcommand)]
pub enum BlobsCommand {
    /// Upload a file (or `-`: stdin) as a blob, replacing any blob under
    /// the key; stored whole once it has all arrived, or not at all.
    Put {
        key: String,
        /// The file to upload, or `-` for stdin.
        file: String,
        /// Kept and answered on reads (default: none; reads answer
        /// application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download a blob, whole or one byte range, to FILE (default `-`:
    /// stdout).
    Get {
        key: String,
        /// Where to write the bytes; `-` for stdout.
        #[arg(default_value = "-")]
        file: String,
        /// One byte range: `START-END` (END included), `START-` (to the
        /// end) or `-LENGTH` (the last LENGTH bytes).
        #[arg(long, conflicts_with_all = ["offset", "length"], allow_hyphen_values = true)]
        range: Option<String>,
        /// The first byte to read (with --length).
        #[arg(long, requires = "length")]
        offset: Option<u64>,
        /// How many bytes to read (from --offset, default 0).
        #[arg(long)]
        length: Option<u64>,
    },
    /// List blobs by key prefix, in key order.
    Ls {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many blobs.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a blob's size, ETag, SHA-256, content type, version and kind.
    #[command(alias = "head")]
    Stat { key: String },
    /// Delete a blob.
    Rm { key: String },
    /// Create a zero-filled fixed-size blob that `bitfield` can change,
    /// replacing any blob under the key (unless --if-absent).
    Create {
        key: String,
        /// Its size in bytes (1 B to 256 MiB).
        #[arg(long)]
        size: u64,
        /// Keep a blob that exists (fails with precondition_failed).
        #[arg(long)]
        if_absent: bool,
    },
    /// Apply a batch of bit and byte operations to a fixed-size blob, all
    /// or nothing: `--op 'set u4 #3 7'`, `--op 'overflow sat'`,
    /// `--op 'incrby i8 16 -2'`, `--op 'get u4 #3'`,
    /// `--op 'write_at 10 hex:00ff'` (`#N`: the N-th field of the type's
    /// width; a plain number: a bit offset). Prints one result per
    /// operation (`null` for write_at and a failed overflow).
    Bitfield {
        key: String,
        /// Operations in redis-cli BITFIELD syntax (repeatable; one may
        /// hold several).
        #[arg(long = "op", value_name = "OPS", allow_hyphen_values = true)]
        ops: Vec<String>,
        /// A JSON file (or `-`) with the API's operations: an array, or
        /// `{"ops": [...]}`; applied after the --op ones.
        #[arg(long, value_name = "FILE")]
        ops_json: Option<String>,
    },
}

pub async fn run(client: &Client, command: BlobsCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        BlobsCommand::Put {
            key,
            file,
            content_type,
        } => {
            let b = put(client, &key, &file, content_type.as_deref(), json).await?;
            out.print(&b, || {
                format!(
                    "Uploaded {} ({}, sha256 {}).",
                    b.key,
                    bytes(b.size),
                    b.sha256.as_deref().unwrap_or("-")
                )
            });
        }
        BlobsCommand::Get {
            key,
            file,
            range,
            offset,
            length,
        } => {
            let range = match (range, offset, length) {
                (Some(r), _, _) => Some(ByteRange::parse(&r).map_err(|e| {
                    fail_hint(
                        ErrorCode::InvalidInput,
                        format!("--range: {e}"),
                        "e.g. --range 0-1023, --range 1024- or --range -100",
                    )
                })?),
                (None, o, Some(l)) => Some(ByteRange::at(o.unwrap_or(0), l).ok_or_else(|| {
                    fail(
                        ErrorCode::InvalidInput,
                        "--length must be at least 1 (and --offset + --length within 2^64)",
                    )
                })?),
                (None, _, None) => None,
            };
            get(client, &key, &file, range, json).await?;
        }
        BlobsCommand::Ls { prefix, limit } => {
            let mut left = limit.unwrap_or(usize::MAX);
            let mut blobs = Vec::new();
            let mut cursor: Option<String> = None;
            while left > 0 {
                let page = client
                    .list_blobs(&prefix, cursor.as_deref(), left.min(1000))
                    .await?;
                left -= page.blobs.len().min(left);
                blobs.extend(page.blobs);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            blobs.truncate(limit.unwrap_or(usize::MAX));
            out.print(&blobs, || {
                if blobs.is_empty() {
                    return "No blobs. Upload one with `shoal blobs put KEY FILE`.".to_string();
                }
                let mut s = format!(
                    "{:<40} {:>12} {:<8} {:<24} ETAG",
                    "KEY", "SIZE", "KIND", "CREATED"
                );
                for b in &blobs {
                    s += &format!(
                        "\n{:<40} {:>12} {:<8} {:<24} {}",
                        b.key,
                        b.size,
                        kind(b),
                        time(b.created_at_ms),
                        b.etag
                    );
                }
                s
            });
        }
        BlobsCommand::Stat { key } => {
            let b = client.blob_meta(&key).await?;
            out.print(&b, || {
                let mut s = format!(
                    "key:          {}\nsize:         {} ({})\nkind:         {}\netag:         {}",
                    b.key,
                    b.size,
                    bytes(b.size),
                    kind(&b),
                    b.etag
                );
                if let Some(sha) = &b.sha256 {
                    s += &format!("\nsha256:       {sha}");
                }
                s += &format!(
                    "\ncontent type: {}\nversion:      {}\ncreated:      {}",
                    b.content_type.as_deref().unwrap_or("-"),
                    b.version,
                    time(b.created_at_ms)
                );
                s
            });
        }
        BlobsCommand::Rm { key } => {
            client.delete_blob(&key).await?;
            out.print(&json!({"deleted": true}), || format!("Deleted {key}."));
        }
        BlobsCommand::Create {
            key,
            size,
            if_absent,
        } => {
            let b = client.create_fixed_blob(&key, size, if_absent).await?;
            out.print(&b, || {
                format!(
                    "Created {} ({}, zero-filled, version {}).",
                    b.key,
                    bytes(b.size),
                    b.version
                )
            });
        }
        BlobsCommand::Bitfield { key, ops, ops_json } => {
            let mut batch = parse_ops(&ops.join(" "))?;
            if let Some(file) = ops_json {
                batch.extend(read_ops_json(&file)?);
            }
            if batch.is_empty() {
                return Err(fail_hint(
                    ErrorCode::InvalidInput,
                    "no operations given",
                    "give --op 'set u4 #3 7' (repeatable) or --ops-json FILE",
                ));
            }
            let r = client.bitfield(&key, batch).await?;
            out.print(&r, || {
                r.results
                    .iter()
                    .map(|v| v.map_or_else(|| "null".to_string(), |n| n.to_string()))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

/// Uploads `file` (or stdin), with a progress bar when its size is known
/// and stderr is a terminal.
async fn put(
    client: &Client,
    key: &str,
    file: &str,
    content_type: Option<&str>,
    json: bool,
) -> Result<BlobView> {
    if file == "-" {
        return Ok(client
            .put_blob_reader(key, tokio::io::stdin(), content_type, None)
            .await?);
    }
    let path = Path::new(file);
    let f = tokio::fs::File::open(path).await.map_err(|e| {
        fail(
            ErrorCode::InvalidInput,
            format!("cannot open {file}: {e}; nothing was uploaded"),
        )
    })?;
    let meta = f
        .metadata()
        .await
        .with_context(|| format!("reading {file}"))?;
    if meta.is_dir() {
        return Err(fail(
            ErrorCode::InvalidInput,
            format!("{file} is a directory; give a file (or - for stdin)"),
        ));
    }
    let bar = bar(Some(meta.len()), json);
    let result = client
        .put_blob_reader(key, f, content_type, progress(&bar))
        .await;
    bar.finish_and_clear();
    Ok(result?)
}

/// Downloads to `file` (or stdout), with a progress bar when writing to a
/// file from a terminal.
async fn get(
    client: &Client,
    key: &str,
    file: &str,
    range: Option<ByteRange>,
    json: bool,
) -> Result<()> {
    if file == "-" {
        let download = client.get_blob(key, range).await?;
        let mut stdout = tokio::io::stdout();
        match download.write_to(&mut stdout, None).await {
            Ok(_) => return Ok(()),
            // A reader that went away (`| head`) ends the command quietly.
            Err(shoal_client::Error::Transport(m)) if m.contains("Broken pipe") => {
                std::process::exit(0)
            }
            Err(e) => return Err(e.into()),
        }
    }
    let path = PathBuf::from(file);
    let download = client.get_blob(key, range).await?;
    let (length, size, served, etag) = (
        download.length,
        download.size,
        download.range,
        download.etag.clone(),
    );
    let bar = bar(Some(length), json);
    let result = download.write_file(&path, progress(&bar)).await;
    bar.finish_and_clear();
    let written = result?;
    let v = json!({
        "key": key,
        "file": file,
        "bytes": written,
        "size": size,
        "range": served.map(|(s, e)| json!({"start": s, "end": e})),
        "etag": etag,
    });
    Out { json }.print(&v, || match served {
        Some((s, e)) => format!("Wrote bytes {s}-{e} of {key} ({}) to {file}.", bytes(size)),
        None => format!("Wrote {key} ({}) to {file}.", bytes(written)),
    });
    Ok(())
}

/// A byte progress bar on stderr, shown only on a terminal for a known
/// size (never on pipes, never under --json).
fn bar(size: Option<u64>, json: bool) -> ProgressBar {
    match size {
        Some(n) if !json && std::io::stderr().is_terminal() => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    }
}

fn progress(bar: &ProgressBar) -> Option<Progress> {
    if bar.is_hidden() {
        return None;
    }
    let bar = bar.clone();
    Some(Arc::new(move |n| bar.set_position(n)))
}

fn kind(b: &BlobView) -> &'static str {
    if b.fixed_size { "fixed" } else { "uploaded" }
}

/// `1.5 MiB`-style sizes for people.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses operations in redis-cli BITFIELD syntax (see the module docs).
/// `overflow` applies to the `set` and `incrby` after it, as in Redis.
fn parse_ops(text: &str) -> Result<Vec<BitfieldOp>> {
    let bad = |msg: String| {
        fail_hint(
            ErrorCode::InvalidInput,
            format!("--op: {msg}; nothing was sent"),
            "ops: get TYPE OFFSET | set TYPE OFFSET VALUE | incrby TYPE OFFSET BY | overflow wrap|sat|fail | write_at BYTE_OFFSET hex:..|base64:..|text:..",
        )
    };
    let mut words = text.split_whitespace();
    let mut ops = Vec::new();
    let mut overflow: Option<String> = None;
    while let Some(word) = words.next() {
        let name = word.to_ascii_lowercase();
        let mut arg = |what: &str| {
            words
                .next()
                .ok_or_else(|| bad(format!("{name} needs {what}")))
        };
        let op = match name.as_str() {
            "overflow" => {
                let mode = arg("wrap, sat or fail")?.to_ascii_lowercase();
                if !matches!(mode.as_str(), "wrap" | "sat" | "fail") {
                    return Err(bad(format!("overflow {mode:?} is not wrap, sat or fail")));
                }
                overflow = Some(mode);
                continue;
            }
            "get" | "set" | "incrby" => {
                let ty = arg("a TYPE (u1..u32, i1..i32)")?.to_ascii_lowercase();
                let offset = offset_value(arg("an OFFSET (bits, or #N)")?)
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                let mut number = |what: &str| -> Result<i64> {
                    let text = arg(what)?;
                    text.parse()
                        .map_err(|_| bad(format!("{name}: {what} {text:?} is not an integer")))
                };
                let (value, by) = match name.as_str() {
                    "set" => (Some(number("a VALUE")?), None),
                    "incrby" => (None, Some(number("an increment")?)),
                    _ => (None, None),
                };
                BitfieldOp {
                    op: name.clone(),
                    ty: Some(ty),
                    offset,
                    value,
                    by,
                    overflow: if name == "get" {
                        None
                    } else {
                        overflow.clone()
                    },
                    data_base64: None,
                }
            }
            "write_at" => {
                let at = arg("a BYTE_OFFSET")?;
                let at: u64 = at
                    .parse()
                    .map_err(|_| bad(format!("write_at: offset {at:?} is not a byte offset")))?;
                let data = arg("data (hex:.., base64:.. or text:..)")?;
                BitfieldOp {
                    op: name.clone(),
                    ty: None,
                    offset: json!(at),
                    value: None,
                    by: None,
                    overflow: None,
                    data_base64: Some(
                        data_base64(data).map_err(|e| bad(format!("write_at: {e}")))?,
                    ),
                }
            }
            other => {
                return Err(bad(format!(
                    "{other:?} is not get, set, incrby, overflow or write_at"
                )));
            }
        };
        ops.push(op);
    }
    Ok(ops)
}

/// `#N` (the N-th field) as the API's string, a bit offset as a number.
fn offset_value(text: &str) -> std::result::Result<Value, String> {
    if let Some(n) = text.strip_prefix('#') {
        return n
            .parse::<u64>()
            .map(|n| json!(format!("#{n}")))
            .map_err(|_| format!("offset {text:?} is not #N"));
    }
    text.parse::<u64>()
        .map(|n| json!(n))
        .map_err(|_| format!("offset {text:?} is neither a bit offset nor #N"))
}

/// `hex:..`, `base64:..` or `text:..` as base64.
fn data_base64(text: &str) -> std::result::Result<String, String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(h) = text.strip_prefix("hex:") {
        let bytes = hex::decode(h).map_err(|e| format!("{text:?} is not hex: {e}"))?;
        return Ok(b64.encode(bytes));
    }
    if let Some(b) = text.strip_prefix("base64:") {
        b64.decode(b)
            .map_err(|e| format!("{text:?} is not base64: {e}"))?;
        return Ok(b.to_string());
    }
    if let Some(t) = text.strip_prefix("text:") {
        return Ok(b64.encode(t.as_bytes()));
    }
    Err(format!(
        "data {text:?} must start with hex:, base64: or text:"
    ))
}

/// The API's operations from a JSON file (or `-`): an array, or
/// `{"ops": [...]}`.
fn read_ops_json(file: &str) -> Result<Vec<BitfieldOp>> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the operations from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let value = crate::output::check_json(&text, "--ops-json")?;
    let list = match value {
        Value::Object(mut o) if o.contains_key("ops") => o.remove("ops").unwrap_or_default(),
        other => other,
    };
    serde_json::from_value(list).map_err(|e| {
        fail(
            ErrorCode::InvalidInput,
            format!(
                "--ops-json: not a list of operations ({e}); each is like {{\"op\": \"set\", \"type\": \"u4\", \"offset\": \"#3\", \"value\": 7}}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_like_redis_cli() {
        let ops =
            parse_ops("set u4 #3 7 OVERFLOW SAT incrby i8 16 -2 get u4 #3 write_at 10 hex:00ff")
                .unwrap();
        let ops: Vec<Value> = ops
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        assert_eq!(
            ops,
            vec![
                json!({"op": "set", "type": "u4", "offset": "#3", "value": 7}),
                json!({"op": "incrby", "type": "i8", "offset": 16, "by": -2, "overflow": "sat"}),
                json!({"op": "get", "type": "u4", "offset": "#3"}),
                json!({"op": "write_at", "offset": 10, "data_base64": "AP8="}),
            ]
        );
        for bad in [
            "set u4 #3",
            "set u4 x 1",
            "frob u4 1",
            "overflow never",
            "write_at 1 zz",
            "write_at 1 hex:0",
            "incrby u4 #1 one",
        ] {
            assert!(parse_ops(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }
}
