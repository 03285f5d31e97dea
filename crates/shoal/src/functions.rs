//! `shoal deploy`, `shoal init` and the version commands of `shoal
//! functions`: show, rollback, alias, unalias.
//!
//! A deploy whose code is what the live version runs says so and changes
//! nothing; `--dry-run` only checks that the code loads.

use std::path::Path;

use anyhow::{Context, Result};

use shoal_client::Client;
use shoal_client::protocol::{ErrorCode, FunctionVersions};

use crate::output::{Out, fail, time};

/// `shoal deploy DIR [--dry-run]`.
pub(crate) async fn deploy(client: &Client, dir: &Path, dry_run: bool, out: Out) -> Result<()> {
    let archive =
        shoal_client::pack_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if dry_run {
        let f = client.deploy_dry_run(archive).await?;
        out.print(&f, || {
            format!(
                "{}: checked, it loads ({}); nothing was deployed.",
                f.name, f.handler
            )
        });
        return Ok(());
    }
    let f = client.deploy(archive).await?;
    out.print(&f, || {
        if f.unchanged {
            format!("{}: unchanged, still version {}.", f.name, f.version)
        } else {
            format!("Deployed {} version {} ({}).", f.name, f.version, f.handler)
        }
    });
    Ok(())
}

/// `shoal functions show NAME`: the versions, which is live, the aliases.
pub(crate) async fn show(client: &Client, name: &str, out: Out) -> Result<()> {
    let v = client.function_versions(name).await?;
    out.print(&v, || render(&v));
    Ok(())
}

/// `shoal functions rollback NAME [VERSION]`.
pub(crate) async fn rollback(
    client: &Client,
    name: &str,
    version: Option<u64>,
    out: Out,
) -> Result<()> {
    let f = client.rollback(name, version).await?;
    out.print(&f, || format!("{}: version {} is live.", f.name, f.version));
    Ok(())
}

/// `shoal functions alias NAME ALIAS VERSION`.
pub(crate) async fn alias(
    client: &Client,
    name: &str,
    alias: &str,
    version: u64,
    out: Out,
) -> Result<()> {
    let a = client.set_alias(name, alias, version).await?;
    out.print(&a, || {
        format!(
            "{}@{} → version {} (invoke it as `shoal invoke {}@{}`).",
            a.function, a.alias, a.version, a.function, a.alias
        )
    });
    Ok(())
}

/// `shoal functions unalias NAME ALIAS`.
pub(crate) async fn unalias(client: &Client, name: &str, alias: &str, out: Out) -> Result<()> {
    client.remove_alias(name, alias).await?;
    out.print(&serde_json::json!({"deleted": true}), || {
        format!("Removed alias {name}@{alias}.")
    });
    Ok(())
}

/// `shoal init NAME [DIR]`: a function directory that deploys and answers
/// as it is. Refuses to write over an existing file.
pub(crate) fn init(name: &str, dir: Option<&Path>, out: Out) -> Result<()> {
    if let Err(e) = shoal_types::FunctionName::parse(name) {
        return Err(fail(
            ErrorCode::InvalidName,
            format!("not a function name: {}", e.reason),
        ));
    }
    let dir = dir.map_or_else(|| Path::new(name).to_path_buf(), Path::to_path_buf);
    let files = [
        ("shoal.toml", manifest(name)),
        ("main.py", MAIN_PY.to_string()),
    ];
    for (file, _) in &files {
        let path = dir.join(file);
        if path.exists() {
            return Err(fail(
                ErrorCode::InvalidInput,
                format!(
                    "{} exists already; pick another directory (shoal init NAME DIR)",
                    path.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in &files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let shown = dir.display().to_string();
    out.print(
        &serde_json::json!({"name": name, "dir": shown}),
        || {
            format!(
                "Created {shown}/shoal.toml and {shown}/main.py.\nNext: shoal deploy {shown} && shoal invoke {name} '{{\"name\": \"you\"}}'"
            )
        },
    );
    Ok(())
}

fn manifest(name: &str) -> String {
    format!(
        "# The function's settings; see docs/functions.md for every key.\n\
         name = \"{name}\"\n\
         handler = \"main:handler\"\n\
         # timeout = \"30s\"\n\
         # memory_mb = 256\n"
    )
}

const MAIN_PY: &str = r#"def handler(event, ctx):
    """Called once per invocation with the JSON event; returns JSON."""
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {"hello": name}
"#;

/// The versions as a table, newest first.
fn render(v: &FunctionVersions) -> String {
    let rows: Vec<[String; 6]> = v
        .versions
        .iter()
        .rev()
        .map(|r| {
            let code = r.code_digest.as_deref().unwrap_or(&r.code_sha256);
            [
                if r.live { "live" } else { "" }.to_string(),
                r.version.to_string(),
                time(r.deployed_at_ms),
                code.chars().take(12).collect(),
                r.deployed_by
                    .as_ref()
                    .map_or("-".to_string(), |b| b.token_name.clone()),
                r.aliases.join(", "),
            ]
        })
        .collect();
    let head = ["", "VERSION", "DEPLOYED", "CODE", "BY", "ALIASES"];
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len(), 4])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 6]| {
        let mut s = format!(
            "{:<w$} {:>v$}",
            cells[0],
            cells[1],
            w = widths[0],
            v = widths[1]
        );
        for (i, cell) in cells.iter().enumerate().skip(2) {
            s += &format!("  {:<w$}", cell, w = widths[i]);
        }
        s.trim_end().to_string()
    };
    let mut out = format!("{}: version {} is live\n{}", v.name, v.live, line(head));
    for r in &rows {
        out += "\n";
        out += &line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    if !v.routes.is_empty() {
        out += "\nroutes:";
        for r in &v.routes {
            out += &format!("\n  {:<7} {}  {}", r.method, r.path, r.auth);
            if let Some(l) = &r.rate_limit {
                out += &format!(", {}/s per client (burst {})", l.per_second, l.burst);
            }
            if let Some(c) = &r.cors {
                out += &format!(", cors {}", c.origins.join(" "));
            }
        }
    }
    out
}
