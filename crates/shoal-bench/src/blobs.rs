//! The blob phase (issue 12): a large blob uploaded and downloaded over
//! loopback beside `dd` copying and reading the same file on the same disk.
//!
//! 1. A source file of pseudo-random bytes is written into memory
//!    (`/dev/shm` where there is one, so that the disk holds one large copy
//!    at a time) and hashed (SHA-256) as it is written.
//! 2. `dd if=SRC of=COPY bs=4M conv=fsync` onto the disk of the node's data
//!    directory, the disk's write limit, before the upload and after it
//!    (the blob deleted); the faster of the two is the reference. dd's reads
//!    (step 4) are of its first copy.
//! 3. The upload: `Client::put_blob_file`, a chunked body streamed from the
//!    source, answered once the node has stored, fsynced and committed it.
//!    The node's own RSS (the `shoal serve` process, not its Python
//!    workers) is sampled every 20 ms meanwhile, against its idle RSS just
//!    before. The answer's SHA-256 must be the source's.
//! 4. Reads with the files dropped from the page cache first
//!    (`posix_fadvise(DONTNEED)` on the blob's file in the data directory,
//!    and on dd's copy): `dd if=SRC of=/dev/null bs=4M`, the whole
//!    blob downloaded into a sink, and the whole blob again as ranges of
//!    `range` bytes with `in_flight` requests at a time. Then the same reads
//!    warm (from the page cache), reported beside them. `dd iflag=direct`
//!    (O_DIRECT, no page cache at all) is reported too.
//! 5. The same upload (smaller: Redis keeps blobs in memory), downloads and
//!    RSS on a second node on a `redis-server` (`redis_node.rs`), against
//!    the same dd figures.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use shoal_client::{ByteRange, Client};

use crate::cpu::Usage;
use crate::node::Ctx;
use crate::redis_node::{RedisNode, Spec};
use crate::report::{Figure, Section};
use crate::rss::{self, Sampler};
use crate::stats::thousands;

const KEY: &str = "bench-blob";

/// Sizes of the blob phase.
pub struct Plan {
    pub bytes: u64,
    /// The size of the blob on the Redis store (Redis holds it in memory).
    pub redis_bytes: u64,
    /// Bytes per ranged request.
    pub range: u64,
    pub in_flight: usize,
}

/// Seconds of one transfer of `bytes`.
#[derive(Clone, Copy, Debug, Default)]
struct Took {
    bytes: u64,
    s: f64,
}

impl Took {
    fn mib_s(self) -> f64 {
        rss::mib(self.bytes) / self.s
    }
}

struct Blobs {
    bytes: u64,
    range: u64,
    in_flight: usize,
    dd_write: Vec<Took>,
    upload: Took,
    idle_rss: u64,
    peak_rss: u64,
    rss_samples: u64,
    dd_read_cold: Took,
    dd_read_direct: Took,
    dd_read_warm: Took,
    download_cold: Took,
    download_warm: Took,
    ranges_cold: Took,
    ranges_warm: Took,
    cpu_upload: Usage,
    cpu_download: Usage,
}

/// What the node on Redis did with a smaller blob.
struct OnRedis {
    bytes: u64,
    upload: Took,
    idle_rss: u64,
    peak_rss: u64,
    rss_samples: u64,
    /// The first whole download after the upload, then a second one.
    download_first: Took,
    download_second: Took,
    ranges: Took,
    cpu_upload: Usage,
}

/// Where the source files go: memory (`/dev/shm`) where there is one, so
/// that the disk holds one copy at a time (dd's, then the blob), else `dir`.
fn source_dir(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub async fn run(ctx: &Ctx, plan: &Plan, spec: &Spec, dir: &Path) -> Result<Section> {
    let pid = std::process::id();
    let src = source_dir(dir).join(format!("shoal-bench-{pid}-blob-source.bin"));
    let copy = dir.join("dd-copy.bin");
    let result = measure(ctx, plan, dir, &src, &copy).await;
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&copy);
    let _ = ctx.client.delete_blob(KEY).await;
    let embedded = result?;
    crate::step("blobs: the Redis store");
    let src = source_dir(dir).join(format!("shoal-bench-{pid}-blob-source-redis.bin"));
    let redis = on_redis(plan, spec, dir, &src)
        .await
        .map_err(|e| format!("{e:#}"));
    let _ = std::fs::remove_file(&src);
    Ok(section(&embedded, &redis))
}

async fn on_redis(plan: &Plan, spec: &Spec, dir: &Path, src: &Path) -> Result<OnRedis> {
    let r = RedisNode::start(spec, &dir.join("blobs-redis")).await?;
    let ctx = &r.ctx;
    let bytes = plan.redis_bytes;
    let sha = write_random(src, bytes)?;
    let mut idle_rss = 0;
    for _ in 0..10 {
        idle_rss = idle_rss.max(rss::sample(ctx.node_pid).root);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sampler = Sampler::start(ctx.node_pid, Duration::from_millis(20));
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let view = ctx
        .client
        .put_blob_file(KEY, src, Some("application/octet-stream"), None)
        .await
        .context("uploading the blob to the node on Redis")?;
    let upload = Took {
        bytes,
        s: t.elapsed().as_secs_f64(),
    };
    let cpu_upload = cpu0.usage_until(&ctx.cpu());
    let peak = sampler.finish();
    if view.size != bytes || view.sha256.as_deref() != Some(sha.as_str()) {
        bail!(
            "the node on Redis stored {} bytes with SHA-256 {:?}; the file has {bytes} and {sha}",
            view.size,
            view.sha256
        );
    }
    let download_first = download(&ctx.client, bytes).await?;
    let download_second = download(&ctx.client, bytes).await?;
    let ranges = ranges(&ctx.client, bytes, plan.range, plan.in_flight).await?;
    let _ = ctx.client.delete_blob(KEY).await;
    Ok(OnRedis {
        bytes,
        upload,
        idle_rss,
        peak_rss: peak.root,
        rss_samples: peak.samples,
        download_first,
        download_second,
        ranges,
        cpu_upload,
    })
}

async fn measure(ctx: &Ctx, plan: &Plan, dir: &Path, src: &Path, copy: &Path) -> Result<Blobs> {
    crate::step(&format!(
        "blobs: writing a {} MiB source file",
        thousands(rss::mib(plan.bytes))
    ));
    let sha = write_random(src, plan.bytes)?;

    // dd copies the source onto the disk; its reads are of that copy.
    let mut dd_write = vec![dd_copy(src, copy)?];
    drop_cache(copy)?;
    let dd_read_cold = dd_read(copy, plan.bytes, false)?;
    let dd_read_direct = dd_read(copy, plan.bytes, true)?;
    let dd_read_warm = dd_read(copy, plan.bytes, false)?;
    std::fs::remove_file(copy)?;

    // The node's idle RSS: the largest of a few samples a second before.
    let mut idle_rss = 0;
    for _ in 0..10 {
        idle_rss = idle_rss.max(rss::sample(ctx.node_pid).root);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::step("blobs: upload");
    let sampler = Sampler::start(ctx.node_pid, Duration::from_millis(20));
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let view = ctx
        .client
        .put_blob_file(KEY, src, Some("application/octet-stream"), None)
        .await
        .context("uploading the blob")?;
    let upload = Took {
        bytes: plan.bytes,
        s: t.elapsed().as_secs_f64(),
    };
    let cpu_upload = cpu0.usage_until(&ctx.cpu());
    let peak = sampler.finish();
    if view.size != plan.bytes {
        bail!("the node stored {} bytes of {}", view.size, plan.bytes);
    }
    if view.sha256.as_deref() != Some(sha.as_str()) {
        bail!(
            "the stored blob's SHA-256 is {:?}, the file's {sha}",
            view.sha256
        );
    }

    let blob_file = blob_file(dir, plan.bytes)?;
    crate::step("blobs: reads, cold page cache");
    let cpu0 = ctx.cpu();
    drop_cache(&blob_file)?;
    let download_cold = download(&ctx.client, plan.bytes).await?;
    drop_cache(&blob_file)?;
    let ranges_cold = ranges(&ctx.client, plan.bytes, plan.range, plan.in_flight).await?;
    let cpu_download = cpu0.usage_until(&ctx.cpu());
    crate::step("blobs: reads, warm page cache");
    let download_warm = download(&ctx.client, plan.bytes).await?;
    let ranges_warm = ranges(&ctx.client, plan.bytes, plan.range, plan.in_flight).await?;
    // The second dd copy once the blob is gone (one copy on the disk at a time).
    ctx.client.delete_blob(KEY).await?;
    dd_write.push(dd_copy(src, copy)?);
    std::fs::remove_file(copy)?;
    Ok(Blobs {
        bytes: plan.bytes,
        range: plan.range,
        in_flight: plan.in_flight,
        dd_write,
        upload,
        idle_rss,
        peak_rss: peak.root,
        rss_samples: peak.samples,
        dd_read_cold,
        dd_read_direct,
        dd_read_warm,
        download_cold,
        download_warm,
        ranges_cold,
        ranges_warm,
        cpu_upload,
        cpu_download,
    })
}

/// Writes `bytes` pseudo-random bytes (xorshift) to `path`, fsynced;
/// returns their SHA-256 in lowercase hex.
pub fn write_random(path: &Path, bytes: u64) -> Result<String> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dd if=SRC of=COPY bs=4M conv=fsync`, timed.
fn dd_copy(src: &Path, copy: &Path) -> Result<Took> {
    let bytes = std::fs::metadata(src)?.len();
    let t = Instant::now();
    dd(&[
        format!("if={}", src.display()),
        format!("of={}", copy.display()),
        "bs=4M".into(),
        "conv=fsync".into(),
    ])?;
    Ok(Took {
        bytes,
        s: t.elapsed().as_secs_f64(),
    })
}

/// `dd if=SRC of=/dev/null bs=4M [iflag=direct]`, timed.
fn dd_read(src: &Path, bytes: u64, direct: bool) -> Result<Took> {
    let mut args = vec![
        format!("if={}", src.display()),
        "of=/dev/null".into(),
        "bs=4M".into(),
    ];
    if direct {
        args.push("iflag=direct".into());
    }
    let t = Instant::now();
    dd(&args)?;
    Ok(Took {
        bytes,
        s: t.elapsed().as_secs_f64(),
    })
}

fn dd(args: &[String]) -> Result<()> {
    let out = std::process::Command::new("dd")
        .args(args)
        .arg("status=none")
        .output()
        .context("running dd")?;
    if !out.status.success() {
        bail!(
            "dd {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Drops a file's pages from the page cache (`posix_fadvise(DONTNEED)`
/// after an `fdatasync`, so that no dirty page stays).
pub fn drop_cache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.sync_data()?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
        .with_context(|| format!("fadvise(DONTNEED) on {}", path.display()))?;
    Ok(())
}

/// The embedded store's file of the only blob of `size` bytes in the data
/// directory under `dir` (`DIR/data/blobs/<2 hex>/<content id>`).
pub fn blob_file(dir: &Path, size: u64) -> Result<PathBuf> {
    let root = dir.join("data").join("blobs");
    let mut found = Vec::new();
    for sub in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let sub = sub?;
        if sub.file_name() == "tmp" || !sub.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path())? {
            let f = f?;
            if f.metadata()?.len() == size {
                found.push(f.path());
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("{n} blob files of {size} bytes under {}", root.display()),
    }
}

/// The whole blob into a sink.
async fn download(client: &Client, bytes: u64) -> Result<Took> {
    let t = Instant::now();
    let d = client.get_blob(KEY, None).await?;
    let n = d.write_to(&mut tokio::io::sink(), None).await?;
    let s = t.elapsed().as_secs_f64();
    if n != bytes {
        bail!("downloaded {n} bytes of {bytes}");
    }
    Ok(Took { bytes, s })
}

/// The whole blob (`bytes`) as ranges of `range` bytes, `in_flight` at a
/// time, each into a sink; each answer must be the range asked for.
async fn ranges(client: &Client, bytes: u64, range: u64, in_flight: usize) -> Result<Took> {
    let t = Instant::now();
    let mut next = 0u64;
    let mut set: JoinSet<Result<u64>> = JoinSet::new();
    let mut done = 0u64;
    loop {
        while set.len() < in_flight && next < bytes {
            let (start, len) = (next, range.min(bytes - next));
            next += len;
            let client = client.clone();
            set.spawn(async move {
                let range = ByteRange::at(start, len).context("an empty range")?;
                let d = client.get_blob(KEY, Some(range)).await?;
                if d.range != Some((start, start + len - 1)) {
                    bail!("asked for {start}+{len}, got {:?}", d.range);
                }
                let n = d.write_to(&mut tokio::io::sink(), None).await?;
                if n != len {
                    bail!("range {start}+{len}: {n} bytes");
                }
                Ok(n)
            });
        }
        match set.join_next().await {
            Some(r) => done += r??,
            None => break,
        }
    }
    let s = t.elapsed().as_secs_f64();
    if done != bytes {
        bail!("the ranges brought {done} bytes of {bytes}");
    }
    Ok(Took { bytes, s })
}

fn section(b: &Blobs, redis: &Result<OnRedis, String>) -> Section {
    let mut s = Section::new("blobs");
    let size = format!("{} MiB", thousands(rss::mib(b.bytes)));
    let rate = |t: Took| format!("{} MiB/s", thousands(t.mib_s()));
    let dd_write = b
        .dd_write
        .iter()
        .copied()
        .max_by(|x, y| x.mib_s().total_cmp(&y.mib_s()))
        .unwrap_or_default();
    let dd_rates: Vec<String> = b.dd_write.iter().map(|t| rate(*t)).collect();
    s.add(
        Figure::new("blobs.upload", b.upload.mib_s())
            .setting(format!("{size}, embedded store"))
            .vs(Ok(dd_write.mib_s()))
            .note(format!(
                "{:.1} s; dd before and after: {}, the faster is the reference",
                b.upload.s,
                dd_rates.join(", ")
            )),
    );
    s.add(
        Figure::new("blobs.download", b.download_cold.mib_s())
            .setting(format!("{size}, embedded store"))
            .vs(Ok(b.dd_read_cold.mib_s()))
            .note(format!(
                "warm page cache: Shoal {} vs dd {}; dd `iflag=direct` {}",
                rate(b.download_warm),
                rate(b.dd_read_warm),
                rate(b.dd_read_direct)
            )),
    );
    s.add(
        Figure::new("blobs.ranges", b.ranges_cold.mib_s())
            .setting(format!(
                "{} MiB ranges, {} in flight",
                thousands(rss::mib(b.range)),
                b.in_flight
            ))
            .vs(Ok(b.dd_read_cold.mib_s()))
            .note(format!(
                "warm page cache: Shoal {} vs dd {}",
                rate(b.ranges_warm),
                rate(b.dd_read_warm)
            )),
    );
    s.add(
        Figure::new("blobs.rss", rss::mib(b.peak_rss))
            .setting(format!("{size} upload"))
            .vs(Ok(rss::mib(b.idle_rss)))
            .note(format!(
                "+{} MiB; {} samples",
                thousands(rss::mib(b.peak_rss.saturating_sub(b.idle_rss))),
                b.rss_samples
            )),
    );
    s.detail(format!(
        "Blobs: a {size} file of pseudo-random bytes in memory (`/dev/shm`, so that the disk \
         holds one copy at a time); the upload streams it (256 KiB pieces of a chunked body) \
         and is timed until the node's 201, which comes after the node hashed, wrote, fsynced \
         and committed it (SHA-256 checked against the file's). `dd bs=4M conv=fsync` copied \
         the file onto the disk of the node's data directory in {:.1} s before and {:.1} s \
         after the upload (the blob deleted by then). Reads: each file dropped from the page \
         cache first with `posix_fadvise(DONTNEED)` (dd's copy for dd, the blob's file in the \
         data directory for Shoal), then read once more warm; dd reads to /dev/null, \
         downloads go into a sink in the bench; cold: dd \
         {:.1} s, whole download {:.1} s, ranges {:.1} s. The node's RSS (its own process, \
         sampled every 20 ms) was {} MiB idle and {} MiB at most during the upload.",
        b.dd_write.first().map_or(f64::NAN, |t| t.s),
        b.dd_write.get(1).map_or(f64::NAN, |t| t.s),
        b.dd_read_cold.s,
        b.download_cold.s,
        b.ranges_cold.s,
        thousands(rss::mib(b.idle_rss)),
        thousands(rss::mib(b.peak_rss)),
    ));
    s.cpu("blobs: upload", &b.cpu_upload);
    s.cpu("blobs: cold downloads", &b.cpu_download);
    let ids = [
        "blobs.upload_redis",
        "blobs.download_redis",
        "blobs.ranges_redis",
        "blobs.rss_redis",
    ];
    let r = match redis {
        Ok(r) => r,
        Err(e) => {
            for id in ids {
                s.add(Figure::unmeasured(id, e));
            }
            return s;
        }
    };
    let size = format!("{} MiB", thousands(rss::mib(r.bytes)));
    s.add(
        Figure::new(ids[0], r.upload.mib_s())
            .setting(size.clone())
            .vs(Ok(dd_write.mib_s()))
            .note(format!("{:.1} s", r.upload.s)),
    );
    s.add(
        Figure::new(ids[1], r.download_first.mib_s())
            .setting(size.clone())
            .vs(Ok(b.dd_read_cold.mib_s()))
            .note(format!("a second download: {}", rate(r.download_second))),
    );
    s.add(
        Figure::new(ids[2], r.ranges.mib_s())
            .setting(format!(
                "{} MiB ranges, {} in flight, after the whole downloads",
                thousands(rss::mib(b.range)),
                b.in_flight
            ))
            .vs(Ok(b.dd_read_cold.mib_s())),
    );
    s.add(
        Figure::new(ids[3], rss::mib(r.peak_rss))
            .setting(format!("{size} upload"))
            .vs(Ok(rss::mib(r.idle_rss)))
            .note(format!(
                "+{} MiB; {} samples",
                thousands(rss::mib(r.peak_rss.saturating_sub(r.idle_rss))),
                r.rss_samples
            )),
    );
    s.detail(format!(
        "Blobs on Redis: a second node on a redis-server of its own (`--appendonly yes \
         --appendfsync everysec`, as in the cluster phase), a {size} blob (Redis holds blobs in \
         memory, in 1 MiB chunks); the references are the dd figures above (the same disk); \
         the first download after the upload took {:.1} s, the second {:.1} s (its chunks then \
         in the node's local chunk cache); the node's RSS was {} MiB idle and {} MiB at most \
         during the upload.",
        r.download_first.s,
        r.download_second.s,
        thousands(rss::mib(r.idle_rss)),
        thousands(rss::mib(r.peak_rss)),
    ));
    s.cpu("blobs: upload, Redis (in Other)", &r.cpu_upload);
    s
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let gib = 4u64 << 30;
    let took = |s| Took { bytes: gib, s };
    let redis = OnRedis {
        bytes: 1 << 30,
        upload: Took {
            bytes: 1 << 30,
            s: 4.0,
        },
        idle_rss: 40 << 20,
        peak_rss: 200 << 20,
        rss_samples: 200,
        download_first: Took {
            bytes: 1 << 30,
            s: 2.0,
        },
        download_second: Took {
            bytes: 1 << 30,
            s: 1.0,
        },
        ranges: Took {
            bytes: 1 << 30,
            s: 1.0,
        },
        cpu_upload: Usage::default(),
    };
    vec![section(
        &Blobs {
            bytes: gib,
            range: 16 << 20,
            in_flight: 4,
            dd_write: vec![took(8.0), took(7.5)],
            upload: took(12.0),
            idle_rss: 40 << 20,
            peak_rss: 60 << 20,
            rss_samples: 600,
            dd_read_cold: took(6.0),
            dd_read_direct: took(3.0),
            dd_read_warm: took(0.6),
            download_cold: took(7.0),
            download_warm: took(2.0),
            ranges_cold: took(13.0),
            ranges_warm: took(2.5),
            cpu_upload: Usage::default(),
            cpu_download: Usage::default(),
        },
        &Ok(redis),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_random_bytes_and_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let sha = write_random(&p, (4 << 20) + 5).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), (4 << 20) + 5);
        assert_eq!(sha, hex(&Sha256::digest(&data)));
        assert_ne!(data[..8], data[8..16]);
        drop_cache(&p).unwrap();
    }

    #[test]
    fn finds_the_blob_file_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("data/blobs");
        std::fs::create_dir_all(blobs.join("ab")).unwrap();
        std::fs::create_dir_all(blobs.join("tmp")).unwrap();
        std::fs::write(blobs.join("ab/x"), [0u8; 10]).unwrap();
        std::fs::write(blobs.join("tmp/y"), [0u8; 10]).unwrap();
        std::fs::write(blobs.join("ab/z"), [0u8; 3]).unwrap();
        assert_eq!(blob_file(dir.path(), 10).unwrap(), blobs.join("ab/x"));
        assert!(blob_file(dir.path(), 7).is_err());
    }
}
