//! Subtasks over byte ranges (`ctx.map_ranges`) and waiting for a job's
//! fan-in (`ctx.job_wait`).
//!
//! `map_ranges(key, fn, chunk_bytes, records)` makes an ordinary job (see
//! `jobs`) whose children each get one byte range of a blob:
//! `{"key", "offset", "length", "records", "size", "etag", "index",
//! "args"}`. The ranges tile the blob exactly, so every byte belongs to one
//! child:
//! - `records = N` (fixed-size records): ranges are whole records
//!   (`chunk_bytes` rounded down to a multiple of N, at least N); a blob
//!   whose size is not a multiple of N is refused, so no record is cut;
//! - `records = "lines"`: ranges are `chunk_bytes` each, and a child owns
//!   the lines that START inside its range: it skips to the first line
//!   start at or after its offset (offset 0, or the byte after a newline at
//!   `offset - 1` or later) and reads its last line to the end, past its
//!   range if need be (the runner's `ctx.range_records` does this). Every
//!   line is read exactly once, whatever the chunk edges cut.
//!
//! `etag` names the content the job was planned on; a child reading another
//! content (the blob replaced meanwhile) fails instead of mixing two.
//! `max_in_flight` holds the job to K children running at once, on every
//! node (see `JobSpec::max_in_flight`).

use std::time::Duration;

use serde_json::json;

use shoal_store::BlobMeta;

use crate::blobs::Blobs;
use crate::dispatch::Dispatcher;
use crate::error::{Entity, Error, Result};
use crate::jobs::{Caller, JobSpec};

/// How a blob is cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Fixed-size records of this many bytes.
    Fixed(u64),
    /// Newline-delimited records.
    Lines,
}

impl Records {
    fn json(self) -> serde_json::Value {
        match self {
            Records::Fixed(n) => json!(n),
            Records::Lines => json!("lines"),
        }
    }
}

/// A `map_ranges` call.
#[derive(Debug, Clone)]
pub struct RangeJob {
    pub key: String,
    pub function: String,
    pub chunk_bytes: u64,
    pub records: Records,
    pub then: Option<String>,
    pub max_in_flight: Option<u32>,
    /// JSON text given to every child as `args`.
    pub args: Option<String>,
    /// Only these byte windows `(offset, length)`, each cut on its own
    /// (for fixed-size records each must start and end on a record edge);
    /// `None`: the whole blob.
    pub windows: Option<Vec<(u64, u64)>>,
}

/// The most windows one `map_ranges` takes.
pub const MAX_WINDOWS: usize = 10_000;

/// The ranges of the windows (in the order given) of a blob of `size`
/// bytes; `None`: the whole blob.
pub(crate) fn plan_windows(
    size: u64,
    chunk_bytes: u64,
    records: Records,
    windows: Option<&[(u64, u64)]>,
) -> Result<Vec<(u64, u64)>> {
    let Some(windows) = windows else {
        return plan(size, chunk_bytes, records);
    };
    if windows.len() > MAX_WINDOWS {
        return Err(Error::invalid(
            "windows",
            format!("has {} windows; give at most {MAX_WINDOWS}", windows.len()),
        ));
    }
    let mut out = Vec::new();
    for (i, &(offset, length)) in windows.iter().enumerate() {
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::invalid(
                    "windows",
                    format!("window {i} ({offset}+{length}) ends past the blob's {size} bytes"),
                )
            })?;
        if let Records::Fixed(n) = records
            && n > 0
            && (!offset.is_multiple_of(n) || !end.is_multiple_of(n))
        {
            return Err(Error::invalid(
                "windows",
                format!(
                    "window {i} ({offset}+{length}) does not start and end on a {n}-byte record edge"
                ),
            ));
        }
        // Within a window: the plan of a blob of its length, moved.
        let ranges = plan(length, chunk_bytes, records)?;
        out.extend(ranges.into_iter().map(|(o, l)| (offset + o, l)));
    }
    Ok(out)
}

/// The ranges `(offset, length)` of a blob of `size` bytes.
pub(crate) fn plan(size: u64, chunk_bytes: u64, records: Records) -> Result<Vec<(u64, u64)>> {
    if chunk_bytes == 0 {
        return Err(Error::invalid(
            "chunk_bytes",
            "is 0; give the bytes per child".to_string(),
        ));
    }
    let chunk = match records {
        Records::Fixed(0) => {
            return Err(Error::invalid(
                "records",
                "is 0; give the record size in bytes or \"lines\"".to_string(),
            ));
        }
        Records::Fixed(n) => {
            if !size.is_multiple_of(n) {
                return Err(Error::invalid(
                    "records",
                    format!(
                        "the blob has {size} bytes, not a whole number of {n}-byte records; no record may be cut"
                    ),
                ));
            }
            (chunk_bytes - chunk_bytes % n).max(n)
        }
        Records::Lines => chunk_bytes,
    };
    let mut out = Vec::with_capacity(size.div_ceil(chunk) as usize);
    let mut offset = 0;
    while offset < size {
        let length = chunk.min(size - offset);
        out.push((offset, length));
        offset += length;
    }
    Ok(out)
}

/// Starts a `map_ranges` job; answers its id and how many children it has.
pub(crate) async fn start(
    engine: &Dispatcher,
    spec: RangeJob,
    caller: Option<&Caller>,
) -> Result<(String, u64)> {
    let meta: BlobMeta = Blobs::new(engine.env.clone()).meta(&spec.key).await?;
    let max = engine.env.opts.max_job_children as u64;
    let ranges = plan_windows(
        meta.size,
        spec.chunk_bytes,
        spec.records,
        spec.windows.as_deref(),
    )?;
    if ranges.len() as u64 > max {
        return Err(Error::invalid(
            "chunk_bytes",
            format!(
                "cuts blob `{}` ({} bytes) into {} ranges; a job has at most {max} children: give at least {} bytes per child",
                spec.key,
                meta.size,
                ranges.len(),
                meta.size.div_ceil(max)
            ),
        ));
    }
    let args: Option<serde_json::Value> = match &spec.args {
        None => None,
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| Error::invalid("args", format!("is not JSON: {e}")))?,
        ),
    };
    let etag = meta.etag();
    let events: Vec<String> = ranges
        .iter()
        .enumerate()
        .map(|(index, &(offset, length))| {
            json!({
                "key": spec.key,
                "offset": offset,
                "length": length,
                "records": spec.records.json(),
                "size": meta.size,
                "etag": etag,
                "index": index,
                "args": args,
            })
            .to_string()
        })
        .collect();
    let children = events.len() as u64;
    let job = JobSpec {
        function: spec.function,
        events,
        then: spec.then,
        max_in_flight: spec.max_in_flight,
    };
    let origin = caller.map(|c| c.origin.clone()).unwrap_or_default();
    let id = engine.jobs.start(job, caller, &origin).await?;
    Ok((id, children))
}

/// How a waited-for job ended.
#[derive(Debug, Clone)]
pub(crate) struct Waited {
    /// The fan-in's status, or the job's own for a job without one.
    pub(crate) status: String,
    /// The fan-in's output (JSON text).
    pub(crate) output: Option<String>,
    pub(crate) error: Option<serde_json::Value>,
}

/// Waits until the job and its fan-in have finished, checking at growing
/// intervals (2 ms to 25 ms: at most 40 reads a second of one record, small
/// against a request's latency); `Ok(None)` when `timeout` passed first.
pub(crate) async fn wait(
    engine: &Dispatcher,
    job: &str,
    timeout: Duration,
) -> Result<Option<Waited>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let (record, progress) = engine
            .env
            .backend
            .jobs
            .job(job)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Job, job))?;
        if progress.finished_at_ms.is_some() {
            let cancelled = progress.cancelled_at_ms.is_some();
            // A cancelled job's fan-in does not run.
            let plan = match &record.then_plan {
                Some(plan) if !cancelled => plan,
                _ => {
                    let status = if cancelled { "cancelled" } else { "finished" };
                    return Ok(Some(Waited {
                        status: status.into(),
                        output: None,
                        error: None,
                    }));
                }
            };
            match engine.invocation(&plan.record.id).await {
                Ok(then) if then.status.is_final() => {
                    return Ok(Some(Waited {
                        status: then.status.as_str().to_string(),
                        output: then.output.clone(),
                        error: then.error.as_ref().map(|e| {
                            json!({"type": e.kind, "exception": e.exception, "message": e.message})
                        }),
                    }));
                }
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_records_tile_the_blob() {
        assert_eq!(
            plan(96, 30, Records::Fixed(12)).unwrap(),
            vec![(0, 24), (24, 24), (48, 24), (72, 24)]
        );
        assert_eq!(plan(96, 5, Records::Fixed(12)).unwrap().len(), 8);
        assert!(plan(100, 30, Records::Fixed(12)).is_err());
        assert!(plan(100, 0, Records::Lines).is_err());
        assert_eq!(plan(0, 10, Records::Lines).unwrap(), vec![]);
        assert_eq!(
            plan(25, 10, Records::Lines).unwrap(),
            vec![(0, 10), (10, 10), (20, 5)]
        );
    }

    #[test]
    fn windows_are_cut_on_their_own() {
        let w = |ws: &[(u64, u64)]| plan_windows(96, 30, Records::Fixed(12), Some(ws));
        assert_eq!(
            w(&[(24, 36), (84, 12)]).unwrap(),
            vec![(24, 24), (48, 12), (84, 12)]
        );
        assert!(w(&[(5, 12)]).is_err());
        assert!(w(&[(84, 24)]).is_err());
        assert_eq!(w(&[]).unwrap(), vec![]);
        let lines = plan_windows(100, 10, Records::Lines, Some(&[(95, 5), (3, 12)])).unwrap();
        assert_eq!(lines, vec![(95, 5), (3, 10), (13, 2)]);
    }
}
