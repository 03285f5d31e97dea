//! `examples/heatmap` (seed 004 on Shoal) end to end, on the embedded store
//! and on a real `redis-server`: a real `shoal serve` with the example's
//! three functions deployed from their directories as they are (their
//! `requirements.txt` installs numpy and Pillow from PyPI into one
//! virtualenv, which this test then also uses for its own python work). The
//! example's `generate.py` writes 200,000 points sorted by tile (16×16
//! tiles); the CLI uploads them and their index as blobs; requests for
//! regions come back as density grids and PNG heatmaps, each compared with a
//! straight numpy computation over the whole file (every cell, every pixel,
//! and the pixel sums); a request reads only the tiles its region touches;
//! an identical request is a cache hit; and a subtask whose worker is
//! SIGKILLed mid-request (by itself, the example's failure drill, or by this
//! test from outside, by pid) is retried, the answer still exact.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestNode, repo_root};
use serde_json::{Value, json};
use shoal_client::{Answer, Binary, Client};
use shoal_store_redis::testing::RedisServer;

const POINTS: u64 = 200_000;
const RECORD: u64 = 12;
/// `generate.py`'s default domain.
const DOMAIN: [f64; 4] = [0.0, 0.0, 1024.0, 1024.0];

/// The straight computation, run with the functions' own numpy and Pillow:
/// every point of the file (no tiles, no index), binned as the example's
/// README defines a grid cell, rendered as its README defines a pixel's
/// level. `grid PARAMS`: compares a grid answered by `heatmap`; `png
/// PARAMS`: decodes a PNG with Pillow and compares it pixel by pixel.
/// Prints a JSON report.
const CHECK_PY: &str = r#"
import base64, json, sys, zlib
import numpy as np

mode, params = sys.argv[1], json.load(open(sys.argv[2]))

def straight_grid(p):
    rec = np.fromfile(p["data"], dtype=[("x", "<f4"), ("y", "<f4"), ("value", "<f4")])
    x, y = rec["x"].astype(np.float64), rec["y"].astype(np.float64)
    x0, y0, x1, y1 = p["region"]
    w, h = p["width"], p["height"]
    m = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    col = np.clip(np.floor((x[m] - x0) * w / (x1 - x0)), 0, w - 1).astype(np.int64)
    row = h - 1 - np.clip(np.floor((y[m] - y0) * h / (y1 - y0)), 0, h - 1).astype(np.int64)
    if p["weight"] == "value":
        g = np.zeros((h, w), np.float64)
        np.add.at(g, (row, col), rec["value"][m].astype(np.float64))
    else:
        g = np.zeros((h, w), np.int64)
        np.add.at(g, (row, col), 1)
    return g, int(m.sum())

def tile_bytes(p):
    """The bytes of the records in the tiles whose rectangles overlap the
    region: what a request must read, no more."""
    rec = np.fromfile(p["data"], dtype=[("x", "<f4"), ("y", "<f4"), ("value", "<f4")])
    t, (dx0, dy0, dx1, dy1) = p["tiles"], p["domain"]
    tx = np.clip(np.floor((rec["x"].astype(np.float64) - dx0) * t / (dx1 - dx0)), 0, t - 1)
    ty = np.clip(np.floor((rec["y"].astype(np.float64) - dy0) * t / (dy1 - dy0)), 0, t - 1)
    tw, th = (dx1 - dx0) / t, (dy1 - dy0) / t
    x0, y0, x1, y1 = p["region"]
    overlaps = ((dx0 + tx * tw < x1) & (dx0 + (tx + 1) * tw > x0)
                & (dy0 + ty * th < y1) & (dy0 + (ty + 1) * th > y0))
    return 12 * int(overlaps.sum())

def levels(g, scale):
    g = g.astype(np.float64)
    top = g.max()
    if not top > 0:
        return np.zeros(g.shape, np.uint8)
    t = np.log1p(g) / np.log1p(top) if scale == "log" else g / top
    return np.clip(np.floor(t * 255.0 + 0.5), 0, 255).astype(np.uint8)

want, points = straight_grid(params)
report = {"points": points, "nonzero_cells": int((want != 0).sum())}
if mode == "grid":
    enc = params["got"]
    got = np.frombuffer(zlib.decompress(base64.b64decode(enc["zlib_base64"])),
                        dtype=np.dtype(enc["dtype"])).reshape(enc["shape"])
    report["tile_bytes"] = tile_bytes(params)
    report["shape"] = list(got.shape)
    report["dtype"] = enc["dtype"]
    if got.shape == want.shape:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        report["exact"] = bool((got == want).all())
        report["max_abs_diff"] = float(diff.max())
        report["max_rel_diff"] = float((diff / np.maximum(np.abs(want), 1e-300)).max())
        report["got_total"] = float(got.sum())
        report["want_total"] = float(want.sum())
else:
    from PIL import Image
    image = Image.open(params["png"])
    image.load()
    px = np.asarray(image)
    report["mode"] = image.mode
    report["size"] = list(image.size)
    lv = levels(want, params["scale"])
    if params["colormap"] == "grey":
        expect = lv
    else:
        # The colours of the levels: the example's table (render.py).
        sys.path.insert(0, params["render_dir"])
        from render import colormap
        expect = colormap(params["colormap"])[lv]
    report["pixel_sum"] = int(px.astype(np.int64).sum())
    report["want_pixel_sum"] = int(expect.astype(np.int64).sum())
    if px.shape == expect.shape:
        per_pixel = (px != expect).reshape(px.shape[0], px.shape[1], -1).any(axis=2)
        report["pixels_differing"] = int(per_pixel.sum())
    report["lit_pixels"] = int((lv > 0).sum())
print(json.dumps(report))
"#;

/// Attempts of heatmap-part that crashed (killed by a signal), from
/// `/metrics`.
async fn part_crashes(c: &Client) -> u64 {
    let text = c.get_text("/metrics").await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("shoal_invocations_total{"))
        .filter(|l| l.contains("function=\"heatmap-part\"") && l.contains("outcome=\"crashed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The pids of `function`'s warm workers on `node`: python processes
/// forked from its template, whose command line names the function's code
/// directory (`DATA_DIR/functions/NAME/...`); the template itself (and the
/// `unshare` above it) is left alone.
fn workers_of(node: &TestNode, function: &str) -> Vec<u32> {
    let marker = format!(
        "{}/",
        node.data_dir.join("functions").join(function).display()
    );
    // pid -> (parent pid, is python)
    let mut ours: HashMap<u32, (u32, bool)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a == "template") || !args.iter().any(|a| a.contains(&marker)) {
            continue;
        }
        // `pid (comm) state ppid ...`: the parent is the second field after `)`.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        else {
            continue;
        };
        let python = Path::new(&args[0])
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"));
        ours.insert(pid, (ppid, python));
    }
    ours.iter()
        .filter(|(_, (ppid, python))| *python && ours.get(ppid).is_some_and(|p| p.1))
        .map(|(pid, _)| *pid)
        .collect()
}

fn example() -> PathBuf {
    repo_root().join("examples/heatmap")
}

/// The python of the virtualenv the node built for the example's
/// `requirements.txt` (shared by the three functions: one venv).
fn venv_python(node: &TestNode) -> PathBuf {
    let root = node.data_dir.join("runtime/venvs");
    let venvs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("the node's venvs")
        .map(|e| e.expect("venv entry").path())
        .filter(|p| p.join(".shoal-complete").exists())
        .collect();
    assert_eq!(
        venvs.len(),
        1,
        "the three functions share one requirements.txt, so one venv: {venvs:?}"
    );
    venvs[0].join("bin/python")
}

fn python(python: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python {args:?} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `CHECK_PY` in `mode` with `params` (written to a file in `work`).
fn check(py: &Path, work: &Path, mode: &str, params: Value) -> Value {
    let script = work.join("check.py");
    if !script.exists() {
        std::fs::write(&script, CHECK_PY).expect("write check.py");
    }
    let file = work.join("params.json");
    std::fs::write(&file, params.to_string()).expect("write params");
    let out = python(
        py,
        &[script.to_str().unwrap(), mode, file.to_str().unwrap()],
    );
    let report: Value = serde_json::from_str(out.trim()).expect("check.py's report");
    eprintln!("{mode} check: {report}");
    report
}

async fn grid(c: &Client, event: Value) -> Value {
    let done = c
        .invoke("heatmap", &event.to_string())
        .await
        .expect("invoke heatmap");
    match done.result {
        Ok(v) => v,
        Err(e) => panic!("heatmap {event} failed: {e:?}"),
    }
}

async fn image(c: &Client, event: Value) -> Binary {
    match c
        .invoke_answer("heatmap", &event.to_string())
        .await
        .expect("invoke heatmap")
    {
        Answer::Binary(b) => b,
        Answer::Value(v) => panic!("expected a PNG for {event}, got {:?}", v.result),
    }
}

fn header<'a>(b: &'a Binary, name: &str) -> &'a str {
    b.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no header {name}: {:?}", b.headers))
}

/// A PNG's width, height, bit depth and colour type, from its IHDR chunk.
fn png_header(png: &[u8]) -> (u32, u32, u8, u8) {
    assert!(png.len() > 33, "too short for a PNG: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&png[8..16], b"\x00\x00\x00\x0dIHDR", "IHDR comes first");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20), png[24], png[25])
}

/// What a grid answer says about the bytes it read: its windows are
/// record-aligned runs inside the file, their lengths add up to the bytes
/// read, and those are the bytes of the tiles the region overlaps
/// (`report["tile_bytes"]`, from the whole file), less than the file.
fn check_windows(got: &Value, report: &Value) {
    let windows = got["windows"].as_array().expect("windows");
    assert!(!windows.is_empty(), "{got}");
    let mut total = 0;
    let mut last_end = None;
    for w in windows {
        let (offset, length) = (w[0].as_u64().unwrap(), w[1].as_u64().unwrap());
        assert!(offset.is_multiple_of(RECORD), "{w}");
        assert!(length.is_multiple_of(RECORD), "{w}");
        assert!(length > 0, "{windows:?}");
        // In order, apart: adjacent runs are merged.
        assert!(last_end.is_none_or(|end| offset > end), "{windows:?}");
        last_end = Some(offset + length);
        total += length;
    }
    assert!(last_end.unwrap() <= POINTS * RECORD);
    assert_eq!(got["bytes_read"], total, "every byte of the windows, once");
    assert_eq!(
        report["tile_bytes"], total,
        "reads just the tiles the region overlaps"
    );
    assert!(total < POINTS * RECORD, "{total}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heatmap_example_on_the_embedded_store() {
    run_example(&TestNode::start()).await;
}

/// On Redis the records are fixed-size chunks in Redis, and the subtasks
/// read them from the node's local chunk cache.
#[tokio::test(flavor = "multi_thread")]
async fn the_heatmap_example_on_redis() {
    let redis = RedisServer::start(&[]);
    run_example(&TestNode::start_with(&["--store", &redis.url()])).await;
}

/// The whole example on `node`: deploy, generate, upload, then every check.
async fn run_example(node: &TestNode) {
    let c = node.client();
    // The example's functions, from their directories as they are (the
    // first deploy builds the venv: pip installs numpy and Pillow).
    for name in ["heatmap-part", "heatmap-reduce", "heatmap"] {
        let dir = example().join("functions").join(name);
        let archive = shoal_client::pack_dir(&dir).expect("pack the function directory");
        let view = c
            .deploy(archive)
            .await
            .unwrap_or_else(|e| panic!("deploy {name}: {e:?}"));
        assert_eq!(view.name, name);
    }
    let py = venv_python(node);

    // The dataset, made by the example's generator, uploaded with the CLI.
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("points.bin");
    let generate = example().join("generate.py");
    python(
        &py,
        &[
            generate.to_str().unwrap(),
            "--points",
            &POINTS.to_string(),
            "--tiles",
            "16",
            "--out",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::metadata(&data).unwrap().len(), POINTS * RECORD);
    let index = work.path().join("points.index.json");
    for (key, file) in [
        ("heatmap/points.bin", &data),
        ("heatmap/points.index.json", &index),
    ] {
        let out = node.cli(&["blobs", "put", key, file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "shoal blobs put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data_path = data.to_str().unwrap().to_string();

    // Counts per cell: exactly numpy's.
    let region = json!([200.5, 130.25, 700.0, 610.75]);
    let got = grid(
        &c,
        json!({"region": region, "width": 200, "height": 150, "format": "grid",
               "chunk_bytes": 65536}),
    )
    .await;
    let r = check(
        &py,
        work.path(),
        "grid",
        json!({"data": data_path, "region": region, "width": 200, "height": 150,
               "weight": "count", "got": got["grid"], "tiles": 16, "domain": DOMAIN}),
    );
    check_windows(&got, &r);
    assert!(
        got["subtasks"].as_u64().unwrap() >= 4,
        "{}",
        got["subtasks"]
    );
    assert_eq!(r["shape"], json!([150, 200]), "{r}");
    assert_eq!(r["exact"], true, "{r}");
    assert_eq!(got["points"], r["points"]);
    assert!(r["points"].as_u64().unwrap() > 20_000, "{r}");
    assert!(r["nonzero_cells"].as_u64().unwrap() > 10_000, "{r}");

    // Sums of values per cell: numpy's up to float rounding (the subtasks
    // add in another order). The region's edges are tile edges (64 units
    // a tile): the tiles beyond them are not read.
    let region = json!([256, 128, 512, 640]);
    let got = grid(
        &c,
        json!({"region": region, "width": 200, "height": 150, "format": "grid",
               "weight": "value", "chunk_bytes": 65536}),
    )
    .await;
    let r = check(
        &py,
        work.path(),
        "grid",
        json!({"data": data_path, "region": region, "width": 200, "height": 150,
               "weight": "value", "got": got["grid"], "tiles": 16, "domain": DOMAIN}),
    );
    check_windows(&got, &r);
    assert_eq!(r["dtype"], "<f8", "{r}");
    assert!(r["max_rel_diff"].as_f64().unwrap() < 1e-9, "{r}");
    assert!(r["got_total"].as_f64().unwrap() > 0.0, "{r}");

    // PNGs: greyscale and linear (a pixel is its level), then the default
    // colour map on a log scale; pixel by pixel and their sums.
    let render_dir = example().join("functions/heatmap");
    let mut hits = Vec::new();
    for (event, colour_type) in [
        (
            json!({"region": [0, 0, 1024, 1024], "width": 160, "height": 120,
                   "colormap": "grey", "scale": "linear"}),
            0u8,
        ),
        (
            json!({"region": [100, 50, 900.5, 700], "width": 300, "height": 200}),
            2u8,
        ),
    ] {
        let png = image(&c, event.clone()).await;
        assert_eq!(png.status, 200);
        assert_eq!(png.content_type, "image/png");
        let (w, h, depth, colour) = png_header(&png.body);
        let (want_w, want_h) = (
            event["width"].as_u64().unwrap(),
            event["height"].as_u64().unwrap(),
        );
        assert_eq!(
            (w as u64, h as u64, depth, colour),
            (want_w, want_h, 8, colour_type)
        );
        let file = work.path().join("map.png");
        std::fs::write(&file, &png.body).unwrap();
        let r = check(
            &py,
            work.path(),
            "png",
            json!({"data": data_path, "region": event["region"], "width": want_w,
                   "height": want_h, "weight": "count",
                   "scale": event.get("scale").cloned().unwrap_or(json!("log")),
                   "colormap": event.get("colormap").cloned().unwrap_or(json!("heat")),
                   "png": file.to_str().unwrap(),
                   "render_dir": render_dir.to_str().unwrap()}),
        );
        assert_eq!(r["size"], json!([want_w, want_h]), "{r}");
        assert_eq!(r["pixels_differing"], 0, "{r}");
        assert_eq!(r["pixel_sum"], r["want_pixel_sum"], "{r}");
        assert!(r["lit_pixels"].as_u64().unwrap() > 1000, "{r}");
        assert_eq!(header(&png, "x-heatmap-points"), r["points"].to_string());

        // The same request again: answered from the cache, byte for byte.
        let again = image(&c, event.clone()).await;
        assert_eq!(again.body, png.body);
        assert_ne!(again.id, png.id);
        assert!(c.invocation(&again.id).await.unwrap().cache_hit, "{event}");
        assert!(!c.invocation(&png.id).await.unwrap().cache_hit, "{event}");
        hits.push(again.id);
    }
    // The hits are listed too (their records are written behind the
    // answer): succeeded, never run.
    common::until(
        "the cache hits listed",
        Duration::from_secs(10),
        async || {
            let listed = c
                .list_invocations(&[("function", "heatmap")])
                .await
                .unwrap();
            hits.iter().all(|id| {
                listed
                    .invocations
                    .iter()
                    .any(|i| &i.id == id && i.status == "succeeded" && i.attempts == 0)
            })
        },
    )
    .await;

    // A failure drill: subtask 1 kills its own worker (SIGKILL) on its
    // first attempt, mid-request; it is retried and the answer is exact.
    let region = json!([300, 300, 1000, 800]);
    let got = grid(
        &c,
        json!({"region": region, "width": 128, "height": 96, "format": "grid",
               "chunk_bytes": 32768, "max_in_flight": 2, "kill_part": 1}),
    )
    .await;
    let r = check(
        &py,
        work.path(),
        "grid",
        json!({"data": data_path, "region": region, "width": 128, "height": 96,
               "weight": "count", "got": got["grid"], "tiles": 16, "domain": DOMAIN}),
    );
    check_windows(&got, &r);
    assert_eq!(r["exact"], true, "{r}");
    assert_eq!(got["points"], r["points"]);
    let job = got["job"].as_str().expect("the job's id");
    let children = c.job_results(job, 0, 1000).await.expect("job results");
    assert_eq!(
        children.results.len() as u64,
        got["subtasks"].as_u64().unwrap()
    );
    let killed = children
        .results
        .iter()
        .find(|r| r.index == 1)
        .expect("child 1");
    let record = c.invocation(&killed.invocation).await.unwrap();
    assert_eq!(record.status, "succeeded");
    assert_eq!(
        record.attempts, 2,
        "the killed subtask ran again: {record:?}"
    );

    // A worker killed from outside: while a request over the whole file
    // runs, the test SIGKILLs heatmap-part's workers (by pid) until one of
    // them dies in the middle of a subtask; that subtask runs again on a
    // new worker and the answer is still exact.
    let crashed_before = part_crashes(&c).await;
    let region = json!([0, 0, 1024, 1024]);
    let event = json!({"region": region, "width": 64, "height": 48, "format": "grid",
                       "chunk_bytes": 2400, "max_in_flight": 2});
    #[allow(clippy::disallowed_methods)] // the test awaits this handle
    let request = tokio::spawn({
        let c = c.clone();
        async move { grid(&c, event).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = 0;
    'kill: while !request.is_finished() {
        assert!(Instant::now() < deadline, "the request does not finish");
        for pid in workers_of(node, "heatmap-part") {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            killed += 1;
        }
        // Did one die mid-subtask? Its attempt is counted as crashed.
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until && !request.is_finished() {
            if part_crashes(&c).await > crashed_before {
                break 'kill;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let got = request.await.expect("the request");
    eprintln!("killed {killed} heatmap-part workers");
    assert!(killed > 0, "no worker of heatmap-part found to kill");
    assert!(part_crashes(&c).await > crashed_before, "no crash counted");
    let r = check(
        &py,
        work.path(),
        "grid",
        json!({"data": data_path, "region": region, "width": 64, "height": 48,
               "weight": "count", "got": got["grid"], "tiles": 16, "domain": DOMAIN}),
    );
    assert_eq!(r["exact"], true, "{r}");
    assert_eq!(got["points"], POINTS);
    assert_eq!(got["bytes_read"], POINTS * RECORD);
    let job = got["job"].as_str().expect("the job's id");
    let mut retried = 0;
    let mut children = 0;
    let mut offset = Some(0);
    while let Some(at) = offset {
        let page = c.job_results(job, at, 1000).await.unwrap();
        for child in page.results {
            assert_eq!(child.status, "succeeded", "{child:?}");
            children += 1;
            let record = c.invocation(&child.invocation).await.unwrap();
            if record.attempts >= 2 {
                retried += 1;
            }
        }
        offset = page.next;
    }
    assert_eq!(children, got["subtasks"].as_u64().unwrap());
    eprintln!("{children} subtasks, {retried} retried after {killed} kills");
    assert!(
        retried >= 1,
        "no subtask was killed mid-run ({killed} kills)"
    );

    // Outside the data: nothing read, an empty grid; a bad request is a 400.
    let got = grid(
        &c,
        json!({"region": [2000, 2000, 3000, 3000], "width": 8, "height": 8, "format": "grid"}),
    )
    .await;
    assert_eq!(got["points"], 0);
    assert_eq!(got["subtasks"], 0);
    assert_eq!(got["windows"], json!([]));
    let bad = image(&c, json!({"region": [5, 5, 1, 1]})).await;
    assert_eq!(bad.status, 400);
    assert!(
        String::from_utf8_lossy(&bad.body).contains("x0 < x1"),
        "{:?}",
        bad.body
    );
}
