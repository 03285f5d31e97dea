//! `shoal sites ...`: static sites (client side only).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use shoal_client::protocol::{ErrorCode, SiteVersions, SiteView};
use shoal_client::{Client, SiteDeploy};

use crate::output::{Out, fail, time};

#[derive(Subcommand)]
pub enum SitesCommand {
    /// Deploy DIR as a new version of site NAME, live at once (every file
    /// switches together).
    Deploy {
        name: String,
        dir: PathBuf,
        /// Where the site is served: `/` or a path such as `/docs`.
        #[arg(long, default_value = "/")]
        path: String,
        /// Answer missing files with the site's /index.html (single-page
        /// apps).
        #[arg(long)]
        spa: bool,
        /// Cache-Control of every file (default: `no-cache` for HTML,
        /// `public, max-age=3600` for the rest).
        #[arg(long)]
        cache_control: Option<String>,
    },
    /// List the sites with their live version.
    Ls,
    /// A site's versions; which one is live.
    Versions { name: String },
    /// Make another version live: --to N, or the one before the live one.
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Remove a site with all its versions.
    Rm { name: String },
}

pub async fn run(client: &Client, command: SitesCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        SitesCommand::Deploy {
            name,
            dir,
            path,
            spa,
            cache_control,
        } => {
            if !dir.is_dir() {
                return Err(fail(
                    ErrorCode::InvalidInput,
                    format!("{} is not a directory", dir.display()),
                ));
            }
            let opts = SiteDeploy {
                path: Some(path),
                spa,
                cache_control,
            };
            let s = client.deploy_site_dir(&name, &dir, &opts).await?;
            out.print(&s, || {
                if s.unchanged {
                    format!(
                        "{}: unchanged, version {} stays live at {}.",
                        s.name, s.live, s.path
                    )
                } else {
                    format!(
                        "{}: version {} is live at {} ({} files, {} bytes).",
                        s.name, s.live, s.path, s.files, s.bytes
                    )
                }
            });
        }
        SitesCommand::Ls => {
            let sites = client.sites().await?;
            out.print(&sites, || render_list(&sites));
        }
        SitesCommand::Versions { name } => {
            let v = client.site_versions(&name).await?;
            out.print(&v, || render_versions(&v));
        }
        SitesCommand::Rollback { name, to } => {
            let s = client.site_rollback(&name, to).await?;
            out.print(&s, || {
                format!("{}: version {} is live at {}.", s.name, s.live, s.path)
            });
        }
        SitesCommand::Rm { name } => {
            client.remove_site(&name).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed site {name}.")
            });
        }
    }
    Ok(())
}

fn render_list(sites: &[SiteView]) -> String {
    if sites.is_empty() {
        return "No sites. Deploy one with `shoal sites deploy NAME DIR --path /`.".to_string();
    }
    let mut s = format!(
        "{:<24} {:<20} {:>7} {:>7} {:>12} {:<4} DEPLOYED",
        "NAME", "PATH", "VERSION", "FILES", "BYTES", "SPA"
    );
    for v in sites {
        s += &format!(
            "\n{:<24} {:<20} {:>7} {:>7} {:>12} {:<4} {}",
            v.name,
            v.path,
            v.live,
            v.files,
            v.bytes,
            if v.spa { "yes" } else { "" },
            time(v.deployed_at_ms)
        );
    }
    s
}

fn render_versions(v: &SiteVersions) -> String {
    let mut s = format!(
        "{:<5} {:>7} {:<24} {:<20} {:>7} {:>12} CACHE-CONTROL",
        "", "VERSION", "DEPLOYED", "PATH", "FILES", "BYTES"
    );
    for r in v.versions.iter().rev() {
        s += &format!(
            "\n{:<5} {:>7} {:<24} {:<20} {:>7} {:>12} {}",
            if r.live { "live" } else { "" },
            r.version,
            time(r.deployed_at_ms),
            r.path,
            r.files,
            r.bytes,
            r.cache_control.as_deref().unwrap_or("(by type)")
        );
    }
    s
}
