//! The data commands that stream: `shoal write` (upload with a progress bar)
//! and `shoal query` (SSE with a progress bar, values to stdout or a file).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;

use shoal_client::Client;
use shoal_client::protocol::{QueryDone, QueryFailed, QueryProgress, Written};

/// Files above this size get a progress bar.
const BAR_FROM_BYTES: u64 = 4 * 1024 * 1024;

/// Streams a JSON array or NDJSON file (or stdin) as one atomic write.
pub async fn write(client: &Client, category: &str, file: &str, quiet: bool) -> Result<Written> {
    let (reader, size): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) = if file == "-"
    {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {file}"))?;
        let size = f.metadata().await.ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
    // Peek at the first non-blank byte: `[` means a JSON array.
    let mut head = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
        if !byte[0].is_ascii_whitespace() {
            break;
        }
    }
    let ndjson = head.last() != Some(&b'[');
    let bar = match size {
        Some(n) if n >= BAR_FROM_BYTES && !quiet => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {wide_bar} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let bar2 = bar.clone();
    let stream = futures_util::stream::unfold((reader, Some(head)), move |(mut r, head)| {
        let bar = bar2.clone();
        async move {
            if let Some(h) = head {
                bar.inc(h.len() as u64);
                return Some((Ok::<_, std::io::Error>(h), (r, None)));
            }
            let mut buf = vec![0u8; 256 * 1024];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    Some((Ok(buf), (r, None)))
                }
                Err(e) => Some((Err(e), (r, None))),
            }
        }
    });
    let result = client
        .write_docs(category, reqwest_body(stream), ndjson, false)
        .await;
    bar.finish_and_clear();
    Ok(result?)
}

fn reqwest_body<S>(stream: S) -> shoal_client::Body
where
    S: futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static,
{
    shoal_client::Body::wrap_stream(stream)
}

/// Runs a query over SSE: a progress bar on stderr, mapped values as NDJSON
/// to stdout or `output`, the reduced result and a summary at the end.
pub async fn query(
    client: &Client,
    category: &str,
    function: &str,
    output: Option<&Path>,
    skip_errors: bool,
    json: bool,
) -> Result<()> {
    let mut sink: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut lines = client.query(category, function, skip_errors, true).await?;
    let bar = if json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} documents {wide_bar} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let mut event = String::new();
    while let Some(line) = lines.next_line().await? {
        let line = String::from_utf8_lossy(&line);
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        match event.as_str() {
            "progress" => {
                if let Ok(p) = serde_json::from_str::<QueryProgress>(data) {
                    bar.set_length(p.docs_total);
                    bar.set_position(p.docs_done);
                }
            }
            "value" => {
                // With --json on stdout, each value is a `{"value": ...}`
                // line, as in the API's NDJSON answer; in a file, bare.
                if json && output.is_none() {
                    sink.write_all(b"{\"value\":")?;
                    sink.write_all(data.as_bytes())?;
                    sink.write_all(b"}\n")?;
                } else {
                    sink.write_all(data.as_bytes())?;
                    sink.write_all(b"\n")?;
                }
            }
            "done" => {
                bar.finish_and_clear();
                let done: QueryDone =
                    serde_json::from_str(data).context("reading the query's result")?;
                if json {
                    // The summary (with the reduced `result`) is the last
                    // line on stdout.
                    sink.flush()?;
                    drop(sink);
                    outln!("{{\"done\":{data}}}");
                } else {
                    if let (true, Some(result)) = (done.reduced, &done.result) {
                        writeln!(sink, "{}", serde_json::to_string_pretty(result)?)?;
                    }
                    sink.flush()?;
                    eprintln!(
                        "{} documents over {} shards ({} resident) in {}; {} values, {} errors.",
                        done.docs,
                        done.shards,
                        done.cached_shards,
                        crate::output::duration(done.duration_ms),
                        done.values,
                        done.errors
                    );
                    for f in &done.failures {
                        eprintln!("  {}: {}: {}", f.id, f.error.kind, f.error.message);
                    }
                }
                return Ok(());
            }
            "error" => {
                bar.finish_and_clear();
                sink.flush()?;
                let failed: QueryFailed =
                    serde_json::from_str(data).context("reading the query's error")?;
                if let (false, Some(tb)) = (
                    json,
                    failed.error.as_ref().and_then(|e| e.traceback.as_ref()),
                ) {
                    eprintln!("{tb}");
                }
                return Err(crate::output::fail(
                    failed.code,
                    format!("the query failed: {}", failed.message),
                ));
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    bail!("the node closed the query's stream before it finished")
}
