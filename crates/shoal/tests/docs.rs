//! The documentation's command blocks, run against a real node.
//!
//! A fenced block opened with ```` ```sh runnable ```` in README.md, docs/*.md,
//! python/README.md or an example's README is run: its command lines in one
//! bash session per file (variables set by one block reach the next), from a
//! directory that looks like the repository root (`examples/`, `python/`,
//! `.shoal/` is the node's data directory, `target/release/shoal` is the
//! binary under test, also first on `PATH`), with `SHOAL_URL` and `SHOAL_TOKEN` set and
//! `127.0.0.1:7700` replaced by the node's address (in commands and in
//! their expected output).
//!
//! Lines of the form `# text` right after a command are its expected output.
//! They are compared with what the command printed (stdout and stderr),
//! line by line, where `...` in a line stands for any text, a line that is
//! only `...` for any number of lines, and durations and timestamps are
//! compared by shape, not value. A command with no expected output must
//! exit 0; one with expected output is judged by its output alone (so a
//! block may show an error).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestNode, repo_root};

/// One command of a block and what the docs say it prints.
#[derive(Debug)]
struct Step {
    /// Where it is: `file:line`.
    at: String,
    command: String,
    expected: Vec<String>,
}

/// The runnable blocks of a Markdown file, as steps.
fn steps_of(path: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path
        .strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if !in_block {
            in_block = trimmed.starts_with("```sh runnable");
            continue;
        }
        if trimmed.starts_with("```") {
            in_block = false;
            continued = false;
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(trimmed);
            continued = trimmed.ends_with('\\');
            continue;
        }
        if trimmed == "#" || trimmed.starts_with("# ") {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("{name}:{}: output before any command", n + 1));
            step.expected
                .push(trimmed.strip_prefix("# ").unwrap_or("").to_string());
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        steps.push(Step {
            at: format!("{name}:{}", n + 1),
            command: trimmed.to_string(),
            expected: Vec::new(),
        });
        continued = trimmed.ends_with('\\');
    }
    steps
}

/// Replaces durations (`141.4 ms`, `2 s`, `350µs`) and timestamps
/// (`2026-12-04 17:03:12`, RFC 3339) by placeholders.
fn shape(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let starts_number = b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if starts_number {
            if let Some(end) = timestamp_end(b, i) {
                out.push_str("<time>");
                i = end;
                continue;
            }
            if let Some(end) = duration_end(b, i) {
                out.push_str("<duration>");
                i = end;
                continue;
            }
        }
        let ch = line[i..].chars().next().expect("a char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.f]][Z|±HH:MM]` starting at `i`.
fn timestamp_end(b: &[u8], i: usize) -> Option<usize> {
    let expect = |j: usize, c: u8| (j < b.len() && b[j] == c).then_some(j + 1);
    let two = |j: usize| (digits(b, j) == j + 2).then_some(j + 2);
    let j = (digits(b, i) == i + 4).then_some(i + 4)?;
    let j = two(expect(j, b'-')?)?;
    let j = two(expect(j, b'-')?)?;
    let j = if j < b.len() && (b[j] == b' ' || b[j] == b'T') {
        j + 1
    } else {
        return None;
    };
    let j = two(j)?;
    let mut j = two(expect(j, b':')?)?;
    if let Some(k) = expect(j, b':').and_then(two) {
        j = k;
        if let Some(k) = expect(j, b'.') {
            j = digits(b, k);
        }
    }
    if let Some(k) = expect(j, b'Z') {
        j = k;
    }
    Some(j)
}

/// A number with a time unit (`ms`, `µs`, `s`, `min`, `h`) starting at `i`.
fn duration_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = digits(b, i);
    if j < b.len() && b[j] == b'.' && j + 1 < b.len() && b[j + 1].is_ascii_digit() {
        j = digits(b, j + 1);
    }
    let unit_at = if j < b.len() && b[j] == b' ' {
        j + 1
    } else {
        j
    };
    let rest = &b[unit_at..];
    for unit in ["ms", "µs", "min", "s", "h"] {
        let u = unit.as_bytes();
        if rest.starts_with(u) && rest.get(u.len()).is_none_or(|c| !c.is_ascii_alphanumeric()) {
            return Some(unit_at + u.len());
        }
    }
    None
}

/// Does `line` match `pattern`, where `...` stands for any text?
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let Some(mut rest) = line.strip_prefix(parts[0]) else {
        return false;
    };
    let last = parts.len() - 1;
    for (k, part) in parts.iter().enumerate().skip(1) {
        if k == last {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Do the printed lines match the expected ones (`...` alone: any lines)?
fn output_matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| output_matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual.split_first().is_some_and(|(line, more)| {
            line_matches(&shape(first), &shape(line)) && output_matches(rest, more)
        }),
    }
}

/// A directory that looks like the repository root to the docs' commands.
fn workdir(node: &TestNode) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    for name in ["examples", "python"] {
        std::os::unix::fs::symlink(root.join(name), dir.path().join(name)).expect("symlink");
    }
    std::os::unix::fs::symlink(&node.data_dir, dir.path().join(".shoal")).expect("symlink");
    let bin = dir.path().join("target/release");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shoal"), bin.join("shoal")).expect("symlink");
    dir
}

/// `PATH` with `dir` first, so the docs' `shoal` is the binary under test.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs the runnable blocks of `file` (relative to the repository root).
fn run_doc(file: &str) {
    let path: PathBuf = repo_root().join(file);
    let steps = steps_of(&path);
    assert!(!steps.is_empty(), "{file} has no runnable blocks");
    let node = TestNode::start();
    let work = workdir(&node);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let address = node.url.trim_start_matches("http://").to_string();

    let mut script = String::from("shopt -s expand_aliases\nexport PYTHONDONTWRITEBYTECODE=1\n");
    for (k, step) in steps.iter().enumerate() {
        let command = step.command.replace("127.0.0.1:7700", &address);
        let out = out_dir.path().join(k.to_string());
        script.push_str(&format!(
            "{{\n{command}\n}} >'{o}' 2>&1 </dev/null; echo $? >'{o}.rc'\n",
            o = out.display()
        ));
    }
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("PATH", path_with(&work.path().join("target/release")))
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .env("COLUMNS", "100")
        .status()
        .expect("run bash");
    assert!(status.success(), "the docs' script of {file} failed to run");

    let mut failures = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let out = out_dir.path().join(k.to_string());
        let printed = std::fs::read_to_string(&out).unwrap_or_default();
        let rc = std::fs::read_to_string(out.with_extension("rc"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let actual: Vec<String> = printed.lines().map(|l| l.trim_end().to_string()).collect();
        let expected: Vec<String> = step
            .expected
            .iter()
            .map(|l| l.replace("127.0.0.1:7700", &address))
            .collect();
        let ok = if expected.is_empty() {
            rc == "0"
        } else {
            output_matches(&expected, &actual)
        };
        if !ok {
            failures.push(format!(
                "{}: `{}` (exit {rc})\n  expected:\n    {}\n  printed:\n    {}",
                step.at,
                step.command,
                step.expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{file}: the docs do not match:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_matcher_compares_by_shape_and_wildcards() {
    let lines = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(output_matches(
        &lines(&["2 documents over 2 shards (0 resident) in 141.4 ms; 0 values"]),
        &lines(&["2 documents over 2 shards (0 resident) in 3.2 ms; 0 values"]),
    ));
    assert!(!output_matches(
        &lines(&["2 documents over 2 shards"]),
        &lines(&["3 documents over 2 shards"]),
    ));
    assert!(output_matches(
        &lines(&["id: ...", "...", "status: succeeded"]),
        &lines(&["id: 0193-ab", "mode: async", "x", "status: succeeded"]),
    ));
    assert!(!output_matches(
        &lines(&["status: succeeded"]),
        &lines(&["status: failed"]),
    ));
    assert!(output_matches(
        &lines(&["started 2026-12-04 17:03:12 took 1.2 s"]),
        &lines(&["started 2025-01-01 00:00:59 took 350 ms"]),
    ));
    assert!(!output_matches(&lines(&["a"]), &lines(&["a", "b"])));
}

#[test]
fn readme() {
    run_doc("README.md");
}

#[test]
fn docs_categories() {
    run_doc("docs/categories.md");
}

#[test]
fn docs_functions() {
    run_doc("docs/functions.md");
}

#[test]
fn docs_queues() {
    run_doc("docs/queues.md");
}

#[test]
fn docs_jobs() {
    run_doc("docs/jobs.md");
}

#[test]
fn docs_blobs() {
    run_doc("docs/blobs.md");
}

#[test]
fn docs_routes() {
    run_doc("docs/routes.md");
}

#[test]
fn docs_sites() {
    run_doc("docs/sites.md");
}

#[test]
fn docs_operations() {
    run_doc("docs/operations.md");
}
