//! What every client command shares: printing (human or `--json`), errors
//! (one line, or `{"error": {"code", "message"}}` on stderr with the API's
//! codes), event input (argument, `@file`, `-` or piped stdin), readable
//! times and durations, and confirmation of destructive commands.
//!
//! New commands use these helpers so the CLI stays one CLI.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result};
use serde::Serialize;

use shoal_client::Removal;
use shoal_client::protocol::ErrorCode;

/// `println!` for a command's answers: when the reader went away (`shoal
/// invocations | head`), the command ends quietly (exit 0) instead of
/// panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for a command's answers (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

/// Writes to stdout; a closed pipe ends the process quietly, another error
/// with a message.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Prints a command's answer: `human()` by default, the value as one line of
/// JSON with `--json`.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            outln!("{}", serde_json::to_string(value).expect("serializable"));
        } else {
            outln!("{}", human());
        }
    }

    /// One item of a stream: an NDJSON line with `--json`, `human()`
    /// otherwise (the same as `print`, named for readers of stream code).
    #[allow(dead_code)] // for commands that stream (`shoal logs --follow`)
    pub(crate) fn item<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        self.print(value, human)
    }
}

/// An error the CLI itself raises, with the API code it stands for
/// (`invalid_input` for a bad argument, for example).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// A line telling the user what to do, printed after the message.
    pub(crate) hint: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error with an API code, to return from a command.
pub(crate) fn fail(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
        hint: None,
    }
    .into()
}

/// Like [`fail`], with a hint line for the human output.
pub(crate) fn fail_hint(
    code: ErrorCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
        hint: Some(hint.into()),
    }
    .into()
}

/// Prints a command's error to stderr: `error: <message>` (and a hint), or
/// with `--json` one line `{"error": {"code", "message"}}`.
pub(crate) fn report(err: &anyhow::Error, json: bool) {
    let (code, message, hint) = describe(err);
    if json {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        eprintln!("{body}");
    } else {
        eprintln!("error: {message}");
        if let Some(h) = hint {
            eprintln!("hint: {h}");
        }
    }
}

/// The code, the one-line message and the hint of an error.
fn describe(err: &anyhow::Error) -> (ErrorCode, String, Option<String>) {
    // Context added on the way up ("reading dir: ...") stays in the message.
    // Multi-line messages (a user's traceback) keep their lines.
    let message = format!("{err:#}");
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return (f.code, message, f.hint.clone());
        }
        if let Some(e) = cause.downcast_ref::<shoal_client::Error>() {
            return match e {
                shoal_client::Error::Api {
                    code: ErrorCode::Unauthorized,
                    ..
                } => (
                    ErrorCode::Unauthorized,
                    message,
                    Some(
                        "give a token with --token or SHOAL_TOKEN (the admin's is DATA_DIR/admin.token); lost the admin token? see `shoal tokens recover --help`"
                            .to_string(),
                    ),
                ),
                shoal_client::Error::Api { code, .. } => (*code, message, None),
                shoal_client::Error::Transport(_) => (ErrorCode::Unavailable, message, None),
            };
        }
    }
    // Whatever else fails on this side is input the user gave us: a file
    // that cannot be read, JSON that does not parse.
    (ErrorCode::InvalidInput, message, None)
}

/// The JSON text of an event given as an argument, `@file`, `-` (stdin), or
/// nothing: then stdin when it is not a terminal (empty stdin means `{}`),
/// else `{}`. Every command that takes an event or a body uses this.
pub(crate) fn read_event(arg: Option<&str>) -> Result<String> {
    let text = read_input(arg, "the event")?.unwrap_or_else(|| "{}".to_string());
    check_json(&text, "the event")?;
    Ok(text)
}

/// Like [`read_event`] for an input that has no default: `None` when no
/// argument was given and stdin is a terminal or empty.
pub(crate) fn read_input(arg: Option<&str>, what: &str) -> Result<Option<String>> {
    match arg {
        Some("-") => read_stdin(what).map(Some),
        Some(s) if s.starts_with('@') => {
            let path = &s[1..];
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {what} from {path}"))?;
            Ok(Some(text))
        }
        Some(s) => Ok(Some(s.to_string())),
        None if std::io::stdin().is_terminal() => Ok(None),
        None => {
            let text = read_stdin(what)?;
            Ok((!text.trim().is_empty()).then_some(text))
        }
    }
}

fn read_stdin(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .with_context(|| format!("reading {what} from stdin"))?;
    Ok(s)
}

/// Fails with `invalid_input` unless `text` is one JSON value.
pub(crate) fn check_json(text: &str, what: &str) -> Result<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
        let head: String = text.trim().chars().take(80).collect();
        fail_hint(
            ErrorCode::InvalidInput,
            format!("{what} is not valid JSON ({e}): {head}"),
            "give it as an argument ('{\"k\": 1}'), as @FILE, or on stdin (- or a pipe)",
        )
    })
}

/// Asks before a destructive command: `what` says what would be lost. With
/// `force`, yes; on a terminal, the user's answer; otherwise (a script) a
/// `force_required` error naming `--force`.
pub(crate) fn confirm(what: &str, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(fail_hint(
            ErrorCode::ForceRequired,
            format!("{what}; not confirmed, nothing was changed"),
            "run it again with --force (no terminal to ask on)",
        ));
    }
    eprint!("{what}. Go ahead? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
        Ok(())
    } else {
        Err(fail(
            ErrorCode::ForceRequired,
            "not confirmed: nothing was changed",
        ))
    }
}

/// Runs a removal the node guards: first as `IfEmpty`; when the node answers
/// `force_required`, asks (or needs `--force`) and runs it again as `Force`.
/// With `force`, runs it as `Force` at once.
pub(crate) async fn guarded<T, F, Fut>(force: bool, op: F) -> Result<T>
where
    F: Fn(Removal) -> Fut,
    Fut: std::future::Future<Output = shoal_client::Result<T>>,
{
    if force {
        return Ok(op(Removal::Force).await?);
    }
    match op(Removal::IfEmpty).await {
        Err(shoal_client::Error::Api {
            code: ErrorCode::ForceRequired,
            message,
            ..
        }) => {
            confirm(&message, false)?;
            Ok(op(Removal::Force).await?)
        }
        other => Ok(other?),
    }
}

/// A time in milliseconds since the epoch as `2026-12-04 17:03:12 UTC`.
pub(crate) fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || format!("{ms} ms after 1970"),
            |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// A duration in milliseconds as `350 ms`, `1.2 s`, `4 min 10 s`, `2 h 5 min`.
pub(crate) fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0).round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    } else if ms < 86_400_000.0 {
        let m = (ms / 60_000.0).round() as u64;
        format!("{} h {} min", m / 60, m % 60)
    } else {
        let h = (ms / 3_600_000.0).round() as u64;
        format!("{} d {} h", h / 24, h % 24)
    }
}

/// Rows as left-aligned columns two spaces apart, under a header (widths
/// by characters, trailing spaces trimmed).
pub fn columns<H: AsRef<str>, R: AsRef<[String]>>(header: &[H], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.as_ref().chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s += "  ";
            }
            s += &format!("{cell:<w$}", w = widths[i]);
        }
        s.trim_end().to_string()
    };
    let mut s = line(&mut header.iter().map(AsRef::as_ref));
    for row in rows {
        s += "\n";
        s += &line(&mut row.as_ref().iter().map(String::as_str));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_796_403_792_000), "2026-12-04 17:03:12 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.42), "0.42 ms");
        assert_eq!(duration(3.25), "3.2 ms");
        assert_eq!(duration(350.0), "350 ms");
        assert_eq!(duration(1234.0), "1.2 s");
        assert_eq!(duration(250_000.0), "4 min 10 s");
        assert_eq!(duration(7_500_000.0), "2 h 5 min");
        assert_eq!(duration(90_000_000.0), "1 d 1 h");
    }
}
