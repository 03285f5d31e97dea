//! Static sites (`shoal sites deploy NAME DIR --path /`): versions of a
//! directory of files, served at a mount path by the node's fallback.
//!
//! Storage, with no port of its own (keys users cannot write: theirs have
//! no control characters):
//! - every file is a blob under `\0site\0f\0<sha256>` (content-addressed:
//!   a file shared by versions or sites is stored once; a redeploy skips
//!   the files a live version names); a file over [`SITE_INLINE_BYTES`]
//!   is streamed into a blob of its own, `\0site\0b\0<id>`, before its
//!   hash is known, and its manifest entry names that blob;
//! - a version's manifest (path → sha256, size, `.gz`/`.br` siblings) is a
//!   blob under `\0site\0m\0<sha256 of the manifest>`;
//! - a site is one key-value entry `\0site\0<name>` holding its versions
//!   (mount path, settings, manifest hash of each) and the live one.
//!
//! A deploy uploads the files and the manifest first, then writes the
//! site's entry once (compare-and-set on its version): readers see the old
//! version whole until that write and the new one whole after it. A
//! rollback is that one write too.
//!
//! Serving reads no key-value entry: the live version of every site is
//! kept in memory ([`LiveSites`]), updated at once by this node's changes
//! and every [`REFRESH_EVERY`] from the store (another node's changes).
//!
//! Files no version of any site names are removed after a removal, after a
//! deploy that forgot its oldest version, and every [`COLLECT_EVERY`];
//! those younger than [`GARBAGE_AGE`] are kept (another node may be
//! deploying them), and this node's deploys hold the removal off until
//! their entry is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use shoal_store::{BlobRead, KvCondition, KvSet};

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Result};

/// The most files in one version.
pub const MAX_SITE_FILES: usize = 100_000;
/// The longest path of a file in a site, in bytes.
pub const MAX_SITE_PATH: usize = 1024;
/// The most versions a site keeps; a deploy past it forgets the oldest.
pub const MAX_SITE_VERSIONS: usize = 100;
/// How often the live sites are read again from the store.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Unused files younger than this are kept (another node's deploy may be
/// storing them before it names them).
const GARBAGE_AGE: Duration = Duration::from_secs(600);
/// How often unused files are removed besides after removals.
const COLLECT_EVERY: Duration = Duration::from_secs(3600);
/// The key-value prefix of the sites' entries.
const SITE_KEY: &str = "\0site\0";
/// The blob prefix of files and manifests.
const FILE_KEY: &str = "\0site\0f\0";
const MANIFEST_KEY: &str = "\0site\0m\0";
/// The blob prefix of files streamed in (over [`SITE_INLINE_BYTES`]).
const BIG_KEY: &str = "\0site\0b\0";
/// Files up to this size are read whole, hashed, then stored under their
/// hash; larger ones are streamed into a blob of their own.
pub const SITE_INLINE_BYTES: u64 = 8 * 1024 * 1024;
/// Uploads of one deploy running at once, and the bytes they may hold.
const UPLOADS_IN_FLIGHT: usize = 8;
const UPLOAD_BYTES_IN_FLIGHT: u64 = 32 * 1024 * 1024;
/// Path prefixes the node keeps for itself.
const RESERVED: [&str; 4] = ["/v1", "/healthz", "/metrics", "/ui"];

/// How a site version is served, as given at deploy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SiteOptions {
    /// Where the site is mounted: `/`, or `/a/b` (no trailing slash).
    pub path: String,
    /// Missing files are answered with the site's `/index.html` (200).
    pub spa: bool,
    /// `Cache-Control` of every file; by type when absent.
    pub cache_control: Option<String>,
    /// The most bytes of files the archive may hold.
    pub max_bytes: u64,
}

/// One version of a site, as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteVersion {
    pub version: u64,
    pub deployed_at_ms: u64,
    pub path: String,
    pub spa: bool,
    pub cache_control: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// sha256 of the manifest: equal manifests are equal file sets.
    pub manifest: String,
}

/// A site: its versions (oldest first) and the live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub name: String,
    pub live: u64,
    pub versions: Vec<SiteVersion>,
}

impl SiteRecord {
    /// The live version.
    pub fn live_version(&self) -> Option<&SiteVersion> {
        self.versions.iter().find(|v| v.version == self.live)
    }
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct SiteDeployed {
    pub site: SiteRecord,
    /// The live version had the same files and settings: nothing changed.
    pub unchanged: bool,
}

/// A stored variant of a file (the file itself, or a compressed sibling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteBody {
    pub sha256: String,
    pub size: u64,
    /// The blob holding it when that is not the one named by its hash (a
    /// file over [`SITE_INLINE_BYTES`] is streamed in before its hash is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SiteBody {
    fn blob_key(&self) -> String {
        match &self.key {
            Some(k) => k.clone(),
            None => format!("{FILE_KEY}{}", self.sha256),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestFile {
    sha256: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gz: Option<SiteBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    br: Option<SiteBody>,
}

/// A file to serve: its path in the site, its bytes and its compressed
/// siblings (`x.js.gz`, `x.js.br` in the deployed directory).
#[derive(Debug, Clone)]
pub struct SiteFile {
    pub site: Arc<str>,
    /// The path in the site, without a leading `/` (`index.html`).
    pub path: String,
    pub body: SiteBody,
    pub gz: Option<SiteBody>,
    pub br: Option<SiteBody>,
    /// The version's `Cache-Control`, when one was given.
    pub cache_control: Option<Arc<str>>,
}

/// What a path of a mounted site is.
#[derive(Debug, Clone)]
pub enum SiteLookup {
    /// This file (a `--spa` fallback too), answered 200.
    File(SiteFile),
    /// A directory asked without its trailing slash: go to this path.
    Redirect(String),
    /// No such file; the site's `404.html` when it has one.
    NotFound(Option<SiteFile>),
}

/// The live version of one site, as served.
struct LiveSite {
    name: Arc<str>,
    /// The store's version of the site's entry this was built from.
    entry_version: u64,
    mount: String,
    spa: bool,
    cache_control: Option<Arc<str>>,
    files: HashMap<String, ManifestFile>,
}

/// The live sites: by name, and by mount path longest first.
#[derive(Default)]
struct LiveSites {
    by_name: HashMap<String, Arc<LiveSite>>,
    mounts: Vec<Arc<LiveSite>>,
}

impl LiveSites {
    fn with(&self, change: impl FnOnce(&mut HashMap<String, Arc<LiveSite>>)) -> LiveSites {
        let mut by_name = self.by_name.clone();
        change(&mut by_name);
        let mut mounts: Vec<_> = by_name.values().cloned().collect();
        mounts.sort_by(|a, b| b.mount.len().cmp(&a.mount.len()).then(a.name.cmp(&b.name)));
        LiveSites { by_name, mounts }
    }
}

/// The sites service.
pub(crate) struct Sites {
    env: Arc<Env>,
    live: RwLock<Arc<LiveSites>>,
    /// Deploys, rollbacks and removals of this node, one at a time.
    rules: tokio::sync::Mutex<()>,
    /// Held shared by every deploy of this node from its first upload to
    /// its entry's write, and exclusively by the removal of unused files:
    /// a file a deploy found stored (and so did not upload) stays.
    uploads: tokio::sync::RwLock<()>,
}

impl Sites {
    pub(crate) fn new(env: Arc<Env>) -> Sites {
        Sites {
            env,
            live: RwLock::new(Arc::new(LiveSites::default())),
            rules: tokio::sync::Mutex::new(()),
            uploads: tokio::sync::RwLock::new(()),
        }
    }

    fn snapshot(&self) -> Arc<LiveSites> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, change: impl FnOnce(&mut HashMap<String, Arc<LiveSite>>)) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        *live = Arc::new(live.with(change));
    }

    /// Deploys the tar archive `body` as a new version of `name`, live at
    /// once.
    pub(crate) async fn deploy<S, E>(
        &self,
        name: &str,
        opts: SiteOptions,
        body: S,
    ) -> Result<SiteDeployed>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        check_name(name)?;
        let mount = check_mount(&opts.path)?;
        if let Some(cc) = &opts.cache_control {
            check_cache_control(cc)?;
        }
        self.env.accepting()?;
        let uploading = self.uploads.read().await;
        let (files, bytes) = self.unpack(body, opts.max_bytes).await?;
        let manifest = serde_json::to_vec(&files).map_err(Error::unavailable)?;
        let manifest_sha = hex::encode(Sha256::digest(&manifest));
        self.put_blob(
            &format!("{MANIFEST_KEY}{manifest_sha}"),
            Bytes::from(manifest),
        )
        .await?;
        let rules = self.rules.lock().await;
        let (record, entry_version) = match self.record(name).await? {
            Some((r, v)) => (Some(r), Some(v)),
            None => (None, None),
        };
        if let Some(record) = &record
            && let Some(live) = record.live_version()
            && live.manifest == manifest_sha
            && live.path == mount
            && live.spa == opts.spa
            && live.cache_control == opts.cache_control
        {
            return Ok(SiteDeployed {
                site: record.clone(),
                unchanged: true,
            });
        }
        self.check_mount_free(name, &mount).await?;
        let mut record = record.unwrap_or_else(|| SiteRecord {
            name: name.to_string(),
            live: 0,
            versions: Vec::new(),
        });
        let version = record.versions.last().map_or(1, |v| v.version + 1);
        record.versions.push(SiteVersion {
            version,
            deployed_at_ms: self.env.now_ms(),
            path: mount,
            spa: opts.spa,
            cache_control: opts.cache_control,
            files: files.len() as u64,
            bytes,
            manifest: manifest_sha,
        });
        let forgotten = record.versions.len() > MAX_SITE_VERSIONS;
        if forgotten {
            let extra = record.versions.len() - MAX_SITE_VERSIONS;
            record.versions.drain(..extra);
        }
        record.live = version;
        let written = self.write_record(&record, entry_version).await?;
        if let Some(v) = record.live_version() {
            self.install(live_site(&record, v, written, files));
        }
        drop((rules, uploading));
        if forgotten {
            self.collect_garbage().await;
        }
        Ok(SiteDeployed {
            site: record,
            unchanged: false,
        })
    }

    /// Makes `version` (the one before the live one when `None`) live.
    pub(crate) async fn rollback(&self, name: &str, version: Option<u64>) -> Result<SiteRecord> {
        check_name(name)?;
        self.env.accepting()?;
        let _rules = self.rules.lock().await;
        let (mut record, entry_version) = self
            .record(name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Site, name))?;
        let target = match version {
            Some(v) => v,
            None => record
                .versions
                .iter()
                .rev()
                .map(|v| v.version)
                .find(|v| *v < record.live)
                .ok_or_else(|| {
                    Error::invalid(
                        "version",
                        format!(
                            "site `{name}` has no version before the live one ({}); name one with --to",
                            record.live
                        ),
                    )
                })?,
        };
        let Some(chosen) = record.versions.iter().find(|v| v.version == target) else {
            let known: Vec<String> = record
                .versions
                .iter()
                .map(|v| v.version.to_string())
                .collect();
            return Err(Error::invalid(
                "version",
                format!(
                    "site `{name}` has no version {target}; it has {}",
                    known.join(", ")
                ),
            ));
        };
        let mount = chosen.path.clone();
        self.check_mount_free(name, &mount).await?;
        record.live = target;
        let written = self.write_record(&record, Some(entry_version)).await?;
        match self.build(&record, written).await {
            Ok(Some(site)) => self.install(site),
            Ok(None) => {}
            // Live in the store already: the refresh loop serves it.
            Err(e) => {
                warn!(site = %name, error = %e, "Loading the manifest of a rolled back static site failed; the next refresh tries again.")
            }
        }
        Ok(record)
    }

    /// Removes a site with all its versions.
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.env.accepting()?;
        let rules = self.rules.lock().await;
        let (_, entry_version) = self
            .record(name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Site, name))?;
        let now = self.env.now_ms();
        let key = site_key(name);
        if !self
            .env
            .backend
            .kv
            .kv_delete(&key, Some(entry_version), now)
            .await?
        {
            return Err(changed_meanwhile(name));
        }
        self.replace(|sites| {
            sites.remove(name);
        });
        drop(rules);
        self.collect_garbage().await;
        Ok(())
    }

    /// A site with its versions.
    pub(crate) async fn get(&self, name: &str) -> Result<SiteRecord> {
        check_name(name)?;
        Ok(self
            .record(name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Site, name))?
            .0)
    }

    /// Every site, by name.
    pub(crate) async fn list(&self) -> Result<Vec<SiteRecord>> {
        Ok(self
            .entries()
            .await?
            .into_iter()
            .map(|(record, _)| record)
            .collect())
    }

    /// What `path` (percent-decoded, starting with `/`) is in the site
    /// mounted on its longest prefix; `None` when no site covers it.
    pub(crate) fn lookup(&self, path: &str) -> Option<SiteLookup> {
        let live = self.snapshot();
        let site = live.mounts.iter().find(|s| covers(&s.mount, path))?;
        let rel = if site.mount == "/" {
            path.strip_prefix('/').unwrap_or(path)
        } else {
            path[site.mount.len()..].trim_start_matches('/')
        };
        let file = |p: &str| {
            site.files.get(p).map(|f| SiteFile {
                site: site.name.clone(),
                path: p.to_string(),
                body: SiteBody {
                    sha256: f.sha256.clone(),
                    size: f.size,
                    key: f.key.clone(),
                },
                gz: f.gz.clone(),
                br: f.br.clone(),
                cache_control: site.cache_control.clone(),
            })
        };
        let fallback = || match site.spa.then(|| file("index.html")).flatten() {
            Some(f) => SiteLookup::File(f),
            None => SiteLookup::NotFound(file("404.html")),
        };
        if rel.split('/').any(|s| s == ".." || s == ".") {
            return Some(SiteLookup::NotFound(file("404.html")));
        }
        let index = format!("{rel}index.html");
        Some(if rel.is_empty() || rel.ends_with('/') {
            if rel.is_empty() && !path.ends_with('/') && file("index.html").is_some() {
                SiteLookup::Redirect(format!("{path}/"))
            } else {
                match file(&index) {
                    Some(f) => SiteLookup::File(f),
                    None => fallback(),
                }
            }
        } else if let Some(f) = file(rel) {
            SiteLookup::File(f)
        } else if site.files.contains_key(&format!("{rel}/index.html")) {
            SiteLookup::Redirect(format!("{path}/"))
        } else {
            fallback()
        })
    }

    /// The bytes of a stored file.
    pub(crate) async fn read(&self, body: &SiteBody) -> Result<BlobRead> {
        self.env
            .backend
            .blobs
            .blob_read(&body.blob_key(), 0, body.size)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Blob, &body.sha256))
    }

    /// Loads the live sites, then keeps them fresh on the engine's tasks.
    pub(crate) async fn start(self: &Arc<Self>) {
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "Reading the static sites failed; they are served once a later try succeeds.");
        }
        let sites = self.clone();
        let env = self.env.clone();
        env.tasks.clone().spawn(async move {
            let mut since_collected = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                    _ = env.tasks.stopping() => return,
                }
                if let Err(e) = sites.refresh().await {
                    warn!(error = %e, "Reading the static sites failed; the sites served stay as they were until the next try.");
                }
                // Files of deploys that failed halfway are named by no
                // version: removed in time even when no site is removed.
                since_collected += REFRESH_EVERY;
                if since_collected >= COLLECT_EVERY {
                    since_collected = Duration::ZERO;
                    sites.collect_garbage().await;
                }
            }
        });
    }

    /// Reads every site's entry and loads the manifests that changed.
    async fn refresh(&self) -> Result<()> {
        // One at a time with this node's changes: what they installed is
        // in the store already when this reads it.
        let _rules = self.rules.lock().await;
        let entries = self.entries().await?;
        let current = self.snapshot();
        let mut fresh = HashMap::new();
        for (record, entry_version) in entries {
            if let Some(site) = current.by_name.get(&record.name)
                && site.entry_version >= entry_version
            {
                fresh.insert(record.name.clone(), site.clone());
                continue;
            }
            match self.build(&record, entry_version).await {
                Ok(Some(site)) => {
                    fresh.insert(record.name.clone(), Arc::new(site));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(site = %record.name, error = %e, "Loading a static site's manifest failed; its previous version stays served.");
                    if let Some(site) = current.by_name.get(&record.name) {
                        fresh.insert(record.name.clone(), site.clone());
                    }
                }
            }
        }
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        *live = Arc::new(LiveSites::default().with(|m| *m = fresh));
        Ok(())
    }

    /// Puts this node's change live in memory (after its store write).
    fn install(&self, site: LiveSite) {
        self.replace(|sites| {
            sites.insert(site.name.to_string(), Arc::new(site));
        });
    }

    /// The live version of `record` as served (its manifest read from the
    /// store); `None` when it has none.
    async fn build(&self, record: &SiteRecord, entry_version: u64) -> Result<Option<LiveSite>> {
        let Some(v) = record.live_version() else {
            return Ok(None);
        };
        let files = manifest(&self.env, &v.manifest).await?;
        Ok(Some(live_site(record, v, entry_version, files)))
    }

    /// Streams the tar archive in, storing each file; answers the manifest
    /// and the bytes of the files.
    async fn unpack<S, E>(
        &self,
        body: S,
        max_bytes: u64,
    ) -> Result<(BTreeMap<String, ManifestFile>, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut reader = TarReader::new(body);
        let live = self.live_hashes();
        let mut storing: HashSet<String> = HashSet::new();
        let mut found: BTreeMap<String, SiteBody> = BTreeMap::new();
        let mut total = 0u64;
        let mut uploads = FuturesUnordered::new();
        let mut in_flight_bytes = 0u64;
        while let Some(entry) = reader.next_file().await? {
            total += entry.size;
            if total > max_bytes {
                return Err(Error::TooLarge(format!(
                    "the site's files are over {max_bytes} bytes (at `{}`); this node takes sites up to that size (--max-site-bytes)",
                    entry.path
                )));
            }
            if found.len() >= MAX_SITE_FILES {
                return Err(Error::invalid(
                    "archive",
                    format!("has more than {MAX_SITE_FILES} files; a site has at most that many"),
                ));
            }
            if found.contains_key(&entry.path) {
                return Err(Error::invalid(
                    "archive",
                    format!("holds `{}` twice", entry.path),
                ));
            }
            if entry.size > SITE_INLINE_BYTES {
                let body = self.stream_in(&mut reader, entry.size).await?;
                found.insert(entry.path, body);
                continue;
            }
            let data = reader.read_data(entry.size).await?;
            let sha = hex::encode(Sha256::digest(&data));
            // Named by a live version (a redeploy's unchanged file), or
            // stored by this deploy already: nothing to store.
            let stored = live.contains(&sha) || !storing.insert(sha.clone());
            found.insert(
                entry.path,
                SiteBody {
                    sha256: sha.clone(),
                    size: entry.size,
                    key: None,
                },
            );
            if stored {
                continue;
            }
            while uploads.len() >= UPLOADS_IN_FLIGHT
                || (in_flight_bytes + entry.size > UPLOAD_BYTES_IN_FLIGHT && !uploads.is_empty())
            {
                if let Some(done) = uploads.next().await {
                    in_flight_bytes -= done?;
                }
            }
            in_flight_bytes += entry.size;
            let key = format!("{FILE_KEY}{sha}");
            uploads.push(async move {
                // Stored again even when present: an unnamed file may be
                // old enough for the removal of unused files, which a
                // fresh write holds off (GARBAGE_AGE).
                self.put_blob(&key, data).await?;
                Ok::<u64, Error>(entry.size)
            });
        }
        while let Some(done) = uploads.next().await {
            done?;
        }
        if found.is_empty() {
            return Err(Error::invalid(
                "archive",
                "holds no files; deploy a directory with at least an index.html",
            ));
        }
        let files = found
            .iter()
            .map(|(path, body)| {
                let sibling = |ext: &str| found.get(&format!("{path}.{ext}")).cloned();
                (
                    path.clone(),
                    ManifestFile {
                        sha256: body.sha256.clone(),
                        size: body.size,
                        key: body.key.clone(),
                        gz: sibling("gz"),
                        br: sibling("br"),
                    },
                )
            })
            .collect();
        Ok((files, total))
    }

    /// Streams a file over [`SITE_INLINE_BYTES`] into a blob of its own piece by
    /// piece, hashing it on the way; when a blob named by that hash exists
    /// already, that one is used and the new one deleted.
    async fn stream_in<S, E>(&self, reader: &mut TarReader<S>, size: u64) -> Result<SiteBody>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = format!("{BIG_KEY}{}", uuid::Uuid::now_v7().simple());
        let mut upload = self.env.backend.blobs.blob_upload(&key).await?;
        let mut hasher = Sha256::new();
        let mut left = size;
        while left > 0 {
            let piece = reader.read_some(left).await?;
            left -= piece.len() as u64;
            hasher.update(&piece);
            upload.write(piece).await?;
        }
        reader.skip_padding(size).await?;
        upload.commit(None, self.env.now_ms()).await?;
        let sha256 = hex::encode(hasher.finalize());
        // The same content stored already: under its hash, or streamed in
        // for a live version (a redeploy of an unchanged big file).
        let mut stored = vec![None];
        stored.extend(self.streamed_as(&sha256).into_iter().map(Some));
        for existing in stored {
            let body = SiteBody {
                sha256: sha256.clone(),
                size,
                key: existing,
            };
            if self
                .env
                .backend
                .blobs
                .blob_meta(&body.blob_key())
                .await?
                .is_some_and(|m| m.sha256.as_deref() == Some(sha256.as_str()))
            {
                self.env.backend.blobs.blob_delete(&key).await?;
                return Ok(body);
            }
        }
        Ok(SiteBody {
            sha256,
            size,
            key: Some(key),
        })
    }

    /// The blobs live versions hold streamed-in content with this hash in.
    fn streamed_as(&self, sha256: &str) -> Vec<String> {
        let live = self.snapshot();
        let mut keys: Vec<String> = live
            .mounts
            .iter()
            .flat_map(|site| site.files.values())
            .filter(|f| f.sha256 == sha256)
            .filter_map(|f| f.key.clone())
            .collect();
        keys.dedup();
        keys
    }

    /// The hashes of the files live versions name (stored under them).
    fn live_hashes(&self) -> HashSet<String> {
        self.snapshot()
            .mounts
            .iter()
            .flat_map(|site| site.files.values())
            .filter(|f| f.key.is_none())
            .map(|f| f.sha256.clone())
            .collect()
    }

    async fn put_blob(&self, key: &str, data: Bytes) -> Result<()> {
        let mut upload = self.env.backend.blobs.blob_upload(key).await?;
        if !data.is_empty() {
            upload.write(data).await?;
        }
        upload.commit(None, self.env.now_ms()).await?;
        Ok(())
    }

    /// The site's entry and its store version.
    async fn record(&self, name: &str) -> Result<Option<(SiteRecord, u64)>> {
        let now = self.env.now_ms();
        match self.env.backend.kv.kv_get(&site_key(name), now).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((decode(&entry.key, &entry.value)?, entry.version))),
        }
    }

    /// Every site's entry with its store version.
    async fn entries(&self) -> Result<Vec<(SiteRecord, u64)>> {
        self.read_entries(false).await
    }

    /// [`Sites::entries`]; `strict`: an unreadable entry is an error (not
    /// skipped with a warning).
    async fn read_entries(&self, strict: bool) -> Result<Vec<(SiteRecord, u64)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let now = self.env.now_ms();
            let page = self
                .env
                .backend
                .kv
                .kv_list(SITE_KEY, after.as_deref(), 1000, now)
                .await?;
            for entry in page.entries {
                match decode(&entry.key, &entry.value) {
                    Ok(record) => out.push((record, entry.version)),
                    Err(e) if strict => return Err(e),
                    // One unreadable entry does not hide the others.
                    Err(e) => warn!(error = %e, "Skipping a static site."),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Writes the site's entry if it is still at `expected` (absent when
    /// `None`); answers the entry's new store version.
    async fn write_record(&self, record: &SiteRecord, expected: Option<u64>) -> Result<u64> {
        let value = serde_json::to_vec(record).map_err(Error::unavailable)?;
        let cond = match expected {
            Some(v) => KvCondition::Version(v),
            None => KvCondition::Absent,
        };
        let now = self.env.now_ms();
        match self
            .env
            .backend
            .kv
            .kv_set(&site_key(&record.name), value, None, cond, now)
            .await?
        {
            KvSet::Written(entry) => Ok(entry.version),
            KvSet::Refused { .. } => Err(changed_meanwhile(&record.name)),
        }
    }

    /// Refuses a mount path another site's live version has.
    async fn check_mount_free(&self, name: &str, mount: &str) -> Result<()> {
        for (other, _) in self.entries().await? {
            if other.name != name
                && let Some(v) = other.live_version()
                && v.path == mount
            {
                return Err(Error::conflict(
                    Conflict::SitePathTaken,
                    format!(
                        "site `{}` is mounted on `{mount}`; remove it or mount `{name}` on another --path",
                        other.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Deletes stored files and manifests no version of any site names.
    /// Waits for this node's deploys to be written (and holds the next
    /// off); a file another node is deploying right now and has not named
    /// yet is spared by its age ([`GARBAGE_AGE`]). Called without the
    /// rules lock (a deploy waiting for it holds `uploads`).
    async fn collect_garbage(&self) {
        if let Err(e) = self.try_collect_garbage().await {
            warn!(error = %e, "Removing unused static site files failed; they stay until the next removal.");
        }
    }

    async fn try_collect_garbage(&self) -> Result<()> {
        let mut keep: HashSet<String> = HashSet::new();
        for (record, _) in self.read_entries(true).await? {
            for v in &record.versions {
                keep.insert(format!("{MANIFEST_KEY}{}", v.manifest));
                for f in manifest(&self.env, &v.manifest).await?.values() {
                    let main = SiteBody {
                        sha256: f.sha256.clone(),
                        size: f.size,
                        key: f.key.clone(),
                    };
                    for body in [Some(&main), f.gz.as_ref(), f.br.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        keep.insert(body.blob_key());
                    }
                }
            }
        }
        let _no_uploads = self.uploads.write().await;
        let young = self
            .env
            .now_ms()
            .saturating_sub(GARBAGE_AGE.as_millis() as u64);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .env
                .backend
                .blobs
                .blob_list(SITE_KEY, after.as_deref(), 1000)
                .await?;
            for meta in page.blobs {
                if !keep.contains(&meta.key) && meta.created_at_ms < young {
                    self.env.backend.blobs.blob_delete(&meta.key).await?;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// A manifest, read from the store.
async fn manifest(env: &Env, sha: &str) -> Result<BTreeMap<String, ManifestFile>> {
    let key = format!("{MANIFEST_KEY}{sha}");
    let read = env
        .backend
        .blobs
        .blob_read(&key, 0, u64::MAX)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Blob, format!("site manifest {sha}")))?;
    let mut body = read.body;
    let mut bytes = Vec::with_capacity(read.meta.size as usize);
    while let Some(piece) = body.next().await {
        bytes.extend_from_slice(&piece?);
    }
    serde_json::from_slice(&bytes).map_err(Error::unavailable)
}

fn live_site(
    record: &SiteRecord,
    v: &SiteVersion,
    entry_version: u64,
    files: BTreeMap<String, ManifestFile>,
) -> LiveSite {
    LiveSite {
        name: record.name.as_str().into(),
        entry_version,
        mount: v.path.clone(),
        spa: v.spa,
        cache_control: v.cache_control.as_deref().map(Arc::from),
        files: files.into_iter().collect(),
    }
}

fn site_key(name: &str) -> String {
    format!("{SITE_KEY}{name}")
}

fn decode(key: &str, value: &[u8]) -> Result<SiteRecord> {
    serde_json::from_slice(value).map_err(|e| {
        Error::unavailable(format!(
            "the stored static site {:?} is unreadable: {e}",
            key.trim_start_matches(SITE_KEY)
        ))
    })
}

fn changed_meanwhile(name: &str) -> Error {
    Error::unavailable(format!(
        "site `{name}` was changed on another node meanwhile; nothing was changed, try again"
    ))
}

/// Whether a site mounted on `mount` covers `path`.
fn covers(mount: &str, path: &str) -> bool {
    mount == "/"
        || path
            .strip_prefix(mount)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks a site name: the rule of function names.
pub(crate) fn check_name(name: &str) -> Result<()> {
    shoal_types::validate_name("site name", name)?;
    Ok(())
}

/// Checks and normalises a mount path: `/`, or `/seg/seg` of printable
/// ASCII segments (no `.`/`..`, no `?#%\`), outside the node's prefixes.
pub fn check_mount(path: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::invalid(
            "path",
            format!("{path:?} {why}; mount a site on `/` or a path such as `/docs`"),
        ))
    };
    if !path.starts_with('/') {
        return bad("does not start with `/`");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    if trimmed.len() > 512 {
        return bad("is longer than 512 bytes");
    }
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("has an empty, `.` or `..` segment");
        }
        if !seg
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"?#%\\".contains(&b))
        {
            return bad("has a character other than printable ASCII (or one of ?#%\\)");
        }
    }
    if RESERVED.iter().any(|r| covers(r, trimmed)) {
        return bad("is under a prefix the node keeps (/v1, /healthz, /metrics, /ui)");
    }
    Ok(trimmed.to_string())
}

fn check_cache_control(cc: &str) -> Result<()> {
    if cc.is_empty() || cc.len() > 255 || !cc.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::invalid(
            "cache_control",
            "must be 1 to 255 printable ASCII characters, e.g. `public, max-age=600`",
        ));
    }
    Ok(())
}

/// Checks a path inside the archive and gives it without `./`.
fn check_file_path(raw: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::invalid(
            "archive",
            format!("holds the path {raw:?}, which {why}; nothing was deployed"),
        ))
    };
    let path = raw.trim_start_matches("./");
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.is_empty() || path.len() > MAX_SITE_PATH {
        return bad(&format!("is empty or longer than {MAX_SITE_PATH} bytes"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("has a control character or a backslash");
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("has an empty, `.` or `..` segment");
    }
    Ok(path.to_string())
}

/// A file entry of the archive.
struct TarFile {
    path: String,
    size: u64,
}

/// Reads a tar archive from a stream of bytes, one entry at a time:
/// regular files and directories (skipped), with GNU long names and pax
/// paths; anything else (links, devices) is refused.
struct TarReader<S> {
    body: std::pin::Pin<Box<S>>,
    buf: BytesMut,
    ended: bool,
    /// Entries read (files, directories, long names, pax headers).
    entries: usize,
}

impl<S, E> TarReader<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    fn new(body: S) -> TarReader<S> {
        TarReader {
            body: Box::pin(body),
            buf: BytesMut::new(),
            ended: false,
            entries: 0,
        }
    }

    /// Fills the buffer to `n` bytes; false when the body ends first.
    async fn fill(&mut self, n: usize) -> Result<bool> {
        while self.buf.len() < n {
            if self.ended {
                return Ok(false);
            }
            match self.body.next().await {
                Some(Ok(piece)) => self.buf.extend_from_slice(&piece),
                Some(Err(e)) => {
                    return Err(Error::invalid(
                        "body",
                        format!("the upload was cut ({e}); nothing was deployed, send it again"),
                    ));
                }
                None => self.ended = true,
            }
        }
        Ok(true)
    }

    async fn take(&mut self, n: usize) -> Result<Bytes> {
        if !self.fill(n).await? {
            return Err(not_tar("ends in the middle of an entry"));
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Up to `most` bytes (at least one) of the entry being read.
    async fn read_some(&mut self, most: u64) -> Result<Bytes> {
        if !self.fill(1).await? {
            return Err(not_tar("ends in the middle of an entry"));
        }
        let n = usize::try_from(most)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Ok(self.buf.split_to(n).freeze())
    }

    /// Skips the padding after an entry's `size` bytes of data.
    async fn skip_padding(&mut self, size: u64) -> Result<()> {
        let pad = ((512 - size % 512) % 512) as usize;
        self.take(pad).await?;
        Ok(())
    }

    /// The data of the entry just read, without its padding.
    async fn read_data(&mut self, size: u64) -> Result<Bytes> {
        let size = usize::try_from(size).map_err(|_| not_tar("has an entry too large"))?;
        let padded = size.div_ceil(512) * 512;
        let mut data = self.take(padded).await?;
        data.truncate(size);
        Ok(data)
    }

    /// The next regular file, or `None` at the archive's end.
    async fn next_file(&mut self) -> Result<Option<TarFile>> {
        let mut long_name: Option<String> = None;
        loop {
            if !self.fill(512).await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(not_tar("ends in the middle of a header"));
            }
            let header = self.buf.split_to(512).freeze();
            if header.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            self.entries += 1;
            if self.entries > 4 * MAX_SITE_FILES {
                return Err(Error::invalid(
                    "archive",
                    format!(
                        "has more than {} entries; a site has at most {MAX_SITE_FILES} files",
                        4 * MAX_SITE_FILES
                    ),
                ));
            }
            check_checksum(&header)?;
            let size = octal(&header[124..136])?;
            let kind = header[156];
            let name = || -> Result<String> {
                let mut name = cstr(&header[0..100]);
                if &header[257..263] == b"ustar\0" {
                    let prefix = cstr(&header[345..500]);
                    if !prefix.is_empty() {
                        name = format!("{prefix}/{name}");
                    }
                }
                Ok(name)
            };
            match kind {
                b'0' | 0 | b'7' => {
                    let raw = match long_name.take() {
                        Some(n) => n,
                        None => name()?,
                    };
                    let path = check_file_path(&raw)?;
                    return Ok(Some(TarFile { path, size }));
                }
                b'5' => {
                    long_name = None;
                    self.read_data(size).await?;
                }
                b'L' => {
                    if size > MAX_SITE_PATH as u64 + 1 {
                        return Err(Error::invalid(
                            "archive",
                            format!("holds a path longer than {MAX_SITE_PATH} bytes"),
                        ));
                    }
                    let data = self.read_data(size).await?;
                    long_name = Some(cstr(&data));
                }
                b'x' => {
                    if size > 64 * 1024 {
                        return Err(not_tar("has a pax header over 64 KiB"));
                    }
                    let data = self.read_data(size).await?;
                    if let Some(p) = pax_path(&data) {
                        long_name = Some(p);
                    }
                }
                b'g' => {
                    if size > 64 * 1024 {
                        return Err(not_tar("has a pax header over 64 KiB"));
                    }
                    self.read_data(size).await?;
                }
                other => {
                    return Err(Error::invalid(
                        "archive",
                        format!(
                            "holds `{}`, which is not a regular file (tar type {:?}); a site holds files and directories only",
                            long_name.unwrap_or(name()?),
                            other as char
                        ),
                    ));
                }
            }
        }
    }
}

fn not_tar(why: &str) -> Error {
    Error::invalid(
        "archive",
        format!("is not a valid tar archive: it {why} (`shoal sites deploy NAME DIR` packs one)"),
    )
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn octal(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256 (GNU) for sizes over 8 GiB.
        let mut n: u64 = 0;
        for b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(*b)))
                .ok_or_else(|| not_tar("has an entry size out of range"))?;
        }
        return Ok(n);
    }
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| not_tar("has a header with a bad size"))
}

fn check_checksum(header: &[u8]) -> Result<()> {
    let want = octal(&header[148..156]).map_err(|_| not_tar("has a header with a bad checksum"))?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != want {
        return Err(not_tar("has a header whose checksum does not match"));
    }
    Ok(())
}

/// The `path` record of a pax extended header.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            return String::from_utf8(value.to_vec()).ok();
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths() {
        assert_eq!(check_mount("/").unwrap(), "/");
        assert_eq!(check_mount("/docs/").unwrap(), "/docs");
        assert_eq!(check_mount("/a/b").unwrap(), "/a/b");
        assert!(check_mount("docs").is_err());
        assert!(check_mount("/v1").is_err());
        assert!(check_mount("/v1/x").is_err());
        assert!(check_mount("/v10").is_ok());
        assert!(check_mount("/ui").is_err());
        assert!(check_mount("/a/../b").is_err());
        assert!(check_mount("/a b").is_err());
    }

    #[test]
    fn covering() {
        assert!(covers("/", "/x"));
        assert!(covers("/docs", "/docs"));
        assert!(covers("/docs", "/docs/a"));
        assert!(!covers("/docs", "/docsx"));
    }

    #[test]
    fn file_paths() {
        assert_eq!(check_file_path("./a/b.js").unwrap(), "a/b.js");
        assert!(check_file_path("/etc/passwd").is_err());
        assert!(check_file_path("a/../../b").is_err());
        assert!(check_file_path("a//b").is_err());
    }

    #[test]
    fn pax() {
        assert_eq!(
            pax_path(b"13 path=a/bc\n20 mtime=1700000000\n").as_deref(),
            Some("a/bc")
        );
    }
}
