//! Static sites (`/v1/sites`): pack a directory, deploy it, list, versions,
//! rollback, remove.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use shoal_protocol::{ARCHIVE_CONTENT_TYPE, RollbackRequest, SiteList, SiteVersions, SiteView};

use crate::{Client, Result, decode, seg, transport};

/// How a deploy serves the site.
#[derive(Debug, Clone, Default)]
pub struct SiteDeploy {
    /// The mount path (`/` when `None`).
    pub path: Option<String>,
    /// Answer missing files with `/index.html`.
    pub spa: bool,
    /// `Cache-Control` of every file.
    pub cache_control: Option<String>,
}

/// Packs a site's directory into a deterministic tar archive: every file
/// (links to files followed), sorted, without timestamps or owners;
/// `.git` folders are left out.
pub fn pack_site(dir: &Path) -> io::Result<Vec<u8>> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    for rel in files {
        let data = std::fs::read(dir.join(&rel))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let name = rel.to_string_lossy().replace('\\', "/");
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = rel.join(&name);
        let full = root.join(&path);
        let kind = entry.file_type()?;
        if kind.is_dir() || (kind.is_symlink() && full.is_dir()) {
            collect(root, &path, out)?;
        } else if kind.is_file() || (kind.is_symlink() && full.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

impl Client {
    /// Deploys a site from a tar archive (see [`pack_site`]): a new
    /// version, live at once.
    pub async fn deploy_site(
        &self,
        name: &str,
        archive: Vec<u8>,
        opts: &SiteDeploy,
    ) -> Result<SiteView> {
        let mut query: Vec<String> = Vec::new();
        if let Some(p) = &opts.path {
            query.push(format!("path={}", seg(p)));
        }
        if opts.spa {
            query.push("spa=true".into());
        }
        if let Some(cc) = &opts.cache_control {
            query.push(format!("cache_control={}", seg(cc)));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let resp = self
            .http
            .put(format!("{}/v1/sites/{}{query}", self.base, seg(name)))
            .header(CONTENT_TYPE, ARCHIVE_CONTENT_TYPE)
            .body(archive)
            .send()
            .await
            .map_err(transport)?;
        decode(resp).await
    }

    /// Every site with its live version.
    pub async fn sites(&self) -> Result<Vec<SiteView>> {
        let list: SiteList = self.json(Method::GET, "/v1/sites", None::<&()>).await?;
        Ok(list.sites)
    }

    pub async fn site(&self, name: &str) -> Result<SiteView> {
        self.json(
            Method::GET,
            &format!("/v1/sites/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn site_versions(&self, name: &str) -> Result<SiteVersions> {
        self.json(
            Method::GET,
            &format!("/v1/sites/{}/versions", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Makes `version` (by default the one before the live one) live.
    pub async fn site_rollback(&self, name: &str, version: Option<u64>) -> Result<SiteView> {
        self.json(
            Method::POST,
            &format!("/v1/sites/{}/rollback", seg(name)),
            Some(&RollbackRequest { version }),
        )
        .await
    }

    pub async fn remove_site(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/sites/{}", seg(name))).await
    }
}
