//! Static sites (`/v1/sites`): pack a directory, deploy it, list, versions,
//! rollback, remove.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use shoal_protocol::{ARCHIVE_CONTENT_TYPE, RollbackRequest, SiteList, SiteVersions, SiteView};

use bytes::Bytes;

use crate::{Client, Error, Result, decode, seg, transport};

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
    let files = site_files(dir)?;
    let mut out = Vec::new();
    pack_into(dir, &files, &mut out)?;
    Ok(out)
}

/// The files of a site's directory, relative to it, sorted.
fn site_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    files.sort();
    Ok(files)
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

/// A `Write` that hands what is written to a channel in pieces of
/// [`PIECE`] bytes (from a plain thread: it blocks while the channel is full).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const PIECE: usize = 256 << 10;

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A file's bytes, exactly `left` of them: a file that shrinks while it is
/// read is an error, not a broken archive.
struct Exact<R> {
    inner: io::Take<R>,
    left: u64,
    path: PathBuf,
}

impl<R: io::Read> io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while it was read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the tar archive of `files` (relative to `dir`) into `out`.
fn pack_into(dir: &Path, files: &[PathBuf], out: impl io::Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    for rel in files {
        let full = dir.join(rel);
        let file = std::fs::File::open(&full)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", full.display())))?;
        let size = file.metadata()?.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let name = rel.to_string_lossy().replace('\\', "/");
        let data = Exact {
            inner: io::Read::take(file, size),
            left: size,
            path: full,
        };
        builder.append_data(&mut header, name, data)?;
    }
    builder.into_inner()?.flush()
}

impl Client {
    /// Deploys the directory `dir` as a new version of site `name`,
    /// streaming its tar archive as it is read (memory stays small whatever
    /// the site's size). The files are listed before anything is sent.
    pub async fn deploy_site_dir(
        &self,
        name: &str,
        dir: &Path,
        opts: &SiteDeploy,
    ) -> Result<SiteView> {
        let files =
            site_files(dir).map_err(|e| Error::Transport(format!("{}: {e}", dir.display())))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let root = dir.to_path_buf();
        let packer = std::thread::spawn(move || {
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(PIECE),
            };
            let done = pack_into(&root, &files, &mut out);
            if let Err(e) = &done {
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            done
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let sent = self
            .send_site(name, reqwest::Body::wrap_stream(body), opts)
            .await;
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("packing the site panicked")));
        match (sent, packed) {
            // The packer's own words say best why the upload stopped.
            (Err(Error::Transport(_)), Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(Error::Transport(e.to_string()))
            }
            (sent, _) => sent,
        }
    }

    /// Deploys a site from a tar archive (see [`pack_site`]): a new
    /// version, live at once.
    pub async fn deploy_site(
        &self,
        name: &str,
        archive: Vec<u8>,
        opts: &SiteDeploy,
    ) -> Result<SiteView> {
        self.send_site(name, reqwest::Body::from(archive), opts)
            .await
    }

    async fn send_site(
        &self,
        name: &str,
        body: reqwest::Body,
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
            .body(body)
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
