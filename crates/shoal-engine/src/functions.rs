//! Functions: deploy an archive as a new immutable version, resolve, roll
//! back, alias, remove.
//!
//! A deploy unpacks the archive into a content-addressed directory, prepares
//! it on the runtime (virtualenv), loads it in a real worker (`check`), and
//! only then records the version and makes it live, so a recorded version
//! always has its code and environment on disk and a version that does not
//! load never replaces the live one. Which version is live (after a
//! rollback) and the aliases are stored as the function's refs.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::num::NonZeroU32;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use shoal_runtime::{Check, Deployment};
use shoal_store::{
    ConcurrencyKey, DeployedBy, FunctionRecord, FunctionRefs, PinnedLive, SubscriptionRecord,
};
use shoal_types::{FunctionName, Limits};

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Result};
use crate::manifest::Manifest;
use crate::routes::{RouteHit, RouteLimits, RouteMatch, RouteTable};
use crate::secrets::Secrets;

/// A function version ready to run.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub record: FunctionRecord,
    pub deployment: Deployment,
    /// Why the secrets it names could not be read on this node (its key
    /// does not open the cluster's secrets); it is not run then.
    pub secrets_unreadable: Option<String>,
}

impl Deployed {
    pub fn from_record(data_dir: &Path, record: FunctionRecord) -> Deployed {
        let deployment = Deployment {
            key: format!("{}@{}", record.name, record.version),
            code_dir: data_dir.join(&record.code_dir),
            handler: record.handler.clone(),
            env_dir: record.env_dir.as_ref().map(|d| data_dir.join(d)),
            limits: Limits {
                timeout: Duration::from_millis(record.timeout_ms),
                memory_mb: record.memory_mb,
                concurrency: record.concurrency,
            },
            network: record.network,
            code_digest: record.code_digest.clone(),
            env: record.env.clone(),
            max_invocations_per_worker: record.max_invocations_per_worker.and_then(NonZeroU32::new),
        };
        Deployed {
            record,
            deployment,
            secrets_unreadable: None,
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.record.retries + 1
    }
}

/// The deployed functions: the latest version of each and every version
/// seen (queued asynchronous invocations run the version they were sent
/// to), with the deploy rules.
///
/// Deploys and limiter removals take `rules` for their whole
/// check-then-write, so two deploys cannot both claim one queue and a
/// limiter cannot be removed while a deploy that names it is under way.
pub(crate) struct Functions {
    env: Arc<Env>,
    secrets: Arc<Secrets>,
    registry: RwLock<Registry>,
    rules: tokio::sync::Mutex<()>,
    /// The catalog generation the registry was last synced to.
    pub(crate) synced_generation: AtomicU64,
    /// Syncs done on a lookup miss, for the engine's sync loop to apply
    /// (consumers, pools).
    unapplied: Mutex<Vec<Synced>>,
    /// Wakes the sync loop.
    pub(crate) sync_wanted: tokio::sync::Notify,
    /// Wakes the schedules loop: the live versions changed.
    pub(crate) live_changed: tokio::sync::Notify,
    /// The live versions' `[[route]]`s, rebuilt whenever they change.
    routes: RwLock<Arc<RouteTable>>,
    route_limits: RouteLimits,
}

#[derive(Default)]
struct Registry {
    /// The live version of each function: the latest, unless a rollback
    /// chose another.
    latest: HashMap<FunctionName, Arc<Deployed>>,
    /// The latest version number of each function.
    newest: HashMap<String, u64>,
    /// Live pins and aliases, for functions that have any.
    refs: HashMap<String, FunctionRefs>,
    versions: HashMap<(String, u64), Arc<Deployed>>,
}

impl Registry {
    fn insert_version(&mut self, d: Arc<Deployed>) {
        self.versions
            .insert((d.record.name.to_string(), d.record.version), d);
    }

    /// Forgets a removed function; returns the versions it had.
    fn forget(&mut self, name: &str) -> Vec<Arc<Deployed>> {
        self.latest.remove(name);
        self.newest.remove(name);
        self.refs.remove(name);
        let keys: Vec<_> = self
            .versions
            .keys()
            .filter(|(n, _)| n == name)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.versions.remove(&k))
            .collect()
    }
}

/// What a deploy changed.
pub(crate) struct DeployedNow {
    pub(crate) current: Arc<Deployed>,
    /// The version it replaced as the live one, if any.
    pub(crate) previous: Option<Arc<Deployed>>,
}

/// What a catalog sync changed on this node.
#[derive(Default)]
pub(crate) struct Synced {
    /// Versions that became live.
    pub(crate) live: Vec<DeployedNow>,
    /// Functions removed through another node, with the versions this node
    /// had of them.
    pub(crate) removed: Vec<(String, Vec<Arc<Deployed>>)>,
}

/// How a deploy ended.
pub(crate) enum Deploy {
    /// A new version, now live.
    New(DeployedNow),
    /// The live version has this very code (and so this `shoal.toml`):
    /// nothing was recorded.
    Unchanged(Arc<Deployed>),
    /// A dry run: the version loads; nothing was recorded or kept. Its
    /// record has version 0.
    Checked(Box<FunctionRecord>),
}

/// How to deploy.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Check the version (it loads in a real worker) without recording or
    /// activating it, and leave nothing behind.
    pub dry_run: bool,
    /// The token deploying it, recorded with the version.
    pub by: Option<DeployedBy>,
}

/// A function's versions as `show` lists them.
#[derive(Debug, Clone)]
pub struct Versions {
    pub name: String,
    /// Oldest first.
    pub versions: Vec<FunctionRecord>,
    pub live: u64,
    /// Alias → version, sorted.
    pub aliases: Vec<(String, u64)>,
}

impl Functions {
    pub(crate) fn new(env: Arc<Env>, secrets: Arc<Secrets>) -> Functions {
        Functions {
            env,
            secrets,
            registry: RwLock::new(Registry::default()),
            rules: tokio::sync::Mutex::new(()),
            synced_generation: AtomicU64::new(0),
            unapplied: Mutex::new(Vec::new()),
            sync_wanted: tokio::sync::Notify::new(),
            live_changed: tokio::sync::Notify::new(),
            routes: RwLock::new(Arc::new(RouteTable::default())),
            route_limits: RouteLimits::new(crate::routes::MAX_LIMIT_ENTRIES),
        }
    }

    /// Loads every deployed function from the store; returns them.
    pub(crate) async fn load(&self) -> Result<Vec<Arc<Deployed>>> {
        let catalog = &self.env.backend.catalog;
        let records = catalog.functions().await?;
        let mut refs: HashMap<String, FunctionRefs> = catalog
            .function_refs()
            .await?
            .into_iter()
            .map(|r| (r.name.to_string(), r))
            .collect();
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let name = record.name.to_string();
            let newest = record.version;
            let function_refs = refs.remove(&name);
            let live = function_refs.as_ref().map_or(newest, |r| r.live(newest));
            let record = match live {
                v if v == newest => record,
                v => catalog.function_version(&name, v).await?.unwrap_or(record),
            };
            let d = match self.fetched(record).await {
                Ok(d) => d,
                Err(e) => {
                    // One function whose code cannot be had does not keep
                    // the node from serving the others; the next catalog
                    // sync tries again.
                    tracing::error!(function = %name, error = %e, "Cannot load the live version of a function; it is not served by this node.");
                    continue;
                }
            };
            let mut registry = self.registry.write().unwrap();
            registry.insert_version(d.clone());
            registry.latest.insert(d.record.name.clone(), d.clone());
            registry.newest.insert(name.clone(), newest);
            if let Some(r) = function_refs {
                registry.refs.insert(name, r);
            }
            out.push(d);
        }
        self.rebuild_routes();
        Ok(out)
    }

    /// Deploys a function archive (tar of a directory with `shoal.toml`)
    /// as a new live version, once it loads in a real worker; or, with
    /// `dry_run`, only checks that it would.
    pub(crate) async fn deploy(&self, archive: Vec<u8>, opts: DeployOptions) -> Result<Deploy> {
        self.env.accepting()?;
        let data_dir = self.env.opts.data_dir.clone();
        let (unpacked, archive) = tokio::task::spawn_blocking(move || {
            unpack(&data_dir, &archive).map(|unpacked| (unpacked, archive))
        })
        .await
        .map_err(Error::unavailable)??;
        if !opts.dry_run
            && let Some(live) = self.latest(unpacked.manifest.name.as_str())
            && live.record.code_digest.as_deref() == Some(unpacked.digest.as_str())
            && intact(&live).await
        {
            return Ok(Deploy::Unchanged(live));
        }
        let code_dir = self.env.opts.data_dir.join(&unpacked.code_dir);
        let prepared = self
            .env
            .runtime
            .prepare(unpacked.staged.path(&code_dir).to_path_buf())
            .await?;
        let env_dir = prepared.env_dir.map(|p| {
            p.strip_prefix(&self.env.opts.data_dir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.to_string_lossy().into_owned())
        });
        let mut record = unpacked.record(env_dir, self.env.now_ms());
        record.deployed_by = opts.by;
        let staged = unpacked.staged;

        let _rules = self.rules.lock().await;
        self.check_rules(&record).await?;
        self.check_loads(&record, staged.path(&code_dir)).await?;
        if opts.dry_run {
            return Ok(Deploy::Checked(Box::new(record)));
        }
        // The code is in place (on this node's disk, and in the store for
        // the other nodes) before the version that names it is recorded.
        staged.install().map_err(io_err)?;
        self.env
            .backend
            .catalog
            .put_code(&record.code_sha256, archive)
            .await?;
        record.version = self
            .env
            .backend
            .catalog
            .deploy_function(record.clone())
            .await?;
        let current = self.deployed(record);
        let mut registry = self.registry.write().unwrap();
        registry.insert_version(current.clone());
        registry
            .newest
            .insert(current.record.name.to_string(), current.record.version);
        let previous = registry
            .latest
            .insert(current.record.name.clone(), current.clone());
        drop(registry);
        self.rebuild_routes();
        Ok(Deploy::New(DeployedNow { current, previous }))
    }

    /// The rules a version must meet to be live: the limiter and secrets
    /// it names exist, and its queue has no other subscriber. The caller
    /// holds the rules lock.
    async fn check_rules(&self, record: &FunctionRecord) -> Result<()> {
        if let Some(l) = &record.limiter
            && !self
                .env
                .backend
                .catalog
                .limiters()
                .await?
                .iter()
                .any(|x| &x.name == l)
        {
            return Err(Error::InvalidFunction(format!(
                "shoal.toml names limiter `{l}`, which does not exist; create it first with `shoal limiters set {l} --per-second N`"
            )));
        }
        if !record.secrets.is_empty() {
            // Set through another node moments ago: read them now.
            self.sync_secrets().await?;
            match self.secrets.values(&record.secrets) {
                Ok(_) => {}
                Err(Error::NotFound { name: missing, .. }) => {
                    return Err(Error::InvalidFunction(format!(
                        "shoal.toml names secret `{missing}`, which does not exist; set it first with `shoal secrets set {missing}`"
                    )));
                }
                // This node cannot read them (another cluster key).
                Err(e) => return Err(e),
            }
        }
        self.check_routes(record)?;
        if let Some(sub) = &record.subscribe
            && let Some(other) = self.subscriber_of(&sub.queue)
            && other.record.name != record.name
        {
            return Err(Error::conflict(
                Conflict::QueueTaken,
                format!(
                    "queue `{}` already has a subscriber, function `{}`; a queue feeds one function",
                    sub.queue, other.record.name
                ),
            ));
        }
        Ok(())
    }

    /// Loads the candidate version (its code in `code_dir`, not yet in its
    /// place) in a real worker, with the environment it will run with; a
    /// module that does not import or lacks its handler is refused with the
    /// user's own traceback.
    async fn check_loads(&self, record: &FunctionRecord, code_dir: &Path) -> Result<()> {
        let mut candidate = Deployed::from_record(&self.env.opts.data_dir, record.clone());
        if let Ok(values) = self.secrets.values(&record.secrets) {
            candidate.deployment.env.extend(values);
        }
        candidate.deployment.code_dir = code_dir.to_path_buf();
        candidate.deployment.key = format!("{}@check-{}", record.name, uuid::Uuid::now_v7());
        match self.env.runtime.check(&candidate.deployment).await? {
            Check::Loads => Ok(()),
            Check::Fails { failure, logs } => {
                let live = self
                    .latest(record.name.as_str())
                    .map(|d| format!("; version {} stays live", d.record.version))
                    .unwrap_or_default();
                let mut detail = failure
                    .traceback
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| match &failure.exception {
                        Some(e) => format!("{e}: {}", failure.message),
                        None => failure.message.clone(),
                    });
                // Paths as the user wrote them: relative to the function's
                // directory, not the node's temporary copy.
                let prefix = format!("{}/", code_dir.display());
                detail = detail.replace(&prefix, "");
                let mut message = format!(
                    "{} does not load, so it was not deployed{live}:\n{}",
                    record.name,
                    detail.trim_end()
                );
                let logs = String::from_utf8_lossy(&logs);
                if !logs.trim().is_empty() {
                    message.push_str("\noutput while loading:\n");
                    message.push_str(logs.trim_end());
                }
                Err(Error::InvalidFunction(message))
            }
        }
    }

    /// Makes `to` (by default the version before the live one) the live
    /// version of a function; the version it replaced is returned too.
    pub(crate) async fn rollback(&self, name: &str, to: Option<u64>) -> Result<DeployedNow> {
        let name = parse_name(name)?;
        self.env.accepting()?;
        let _rules = self.rules.lock().await;
        let (live, versions) = self.live_and_versions(&name).await?;
        let newest = versions.last().map_or(live.record.version, |v| v.version);
        let target = match to {
            Some(v) => versions
                .into_iter()
                .find(|r| r.version == v)
                .ok_or_else(|| Error::not_found(Entity::Function, format!("{name}@{v}")))?,
            None => versions
                .into_iter()
                .rev()
                .find(|r| r.version < live.record.version)
                .ok_or_else(|| {
                    Error::invalid(
                        "version",
                        format!(
                            "{name} has no version before version {}, the live one; name the version to make live",
                            live.record.version
                        ),
                    )
                })?,
        };
        if target.version == live.record.version {
            return Ok(DeployedNow {
                current: live.clone(),
                previous: Some(live),
            });
        }
        self.check_rules(&target).await?;
        let mut refs = self.refs_of(&name);
        refs.pinned = (target.version != newest).then_some(PinnedLive {
            version: target.version,
            latest: newest,
        });
        self.env
            .backend
            .catalog
            .put_function_refs(refs.clone())
            .await?;
        let current = self.cached(target);
        let mut registry = self.registry.write().unwrap();
        registry.refs.insert(name.to_string(), refs);
        let previous = registry.latest.insert(name, current.clone());
        drop(registry);
        self.rebuild_routes();
        Ok(DeployedNow { current, previous })
    }

    /// Points `alias` at `version` (moving it if it exists).
    pub(crate) async fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()> {
        let name = parse_name(name)?;
        check_alias(alias)?;
        let _rules = self.rules.lock().await;
        if self.latest(name.as_str()).is_none() {
            return Err(Error::not_found(Entity::Function, name.as_str()));
        }
        if self.version(name.as_str(), version).await?.is_none() {
            return Err(Error::not_found(
                Entity::Function,
                format!("{name}@{version}"),
            ));
        }
        let mut refs = self.refs_of(&name);
        refs.aliases.insert(alias.to_string(), version);
        self.put_refs(refs).await
    }

    /// Removes an alias.
    pub(crate) async fn remove_alias(&self, name: &str, alias: &str) -> Result<()> {
        let name = parse_name(name)?;
        let _rules = self.rules.lock().await;
        let mut refs = self.refs_of(&name);
        if refs.aliases.remove(alias).is_none() {
            return Err(Error::not_found(
                Entity::Function,
                format!("{name}@{alias}"),
            ));
        }
        self.put_refs(refs).await
    }

    /// A function's live version and every version it has.
    async fn live_and_versions(
        &self,
        name: &FunctionName,
    ) -> Result<(Arc<Deployed>, Vec<FunctionRecord>)> {
        let live = self
            .latest(name.as_str())
            .ok_or_else(|| Error::not_found(Entity::Function, name.as_str()))?;
        let versions = self
            .env
            .backend
            .catalog
            .function_versions(name.as_str())
            .await?;
        Ok((live, versions))
    }

    /// Every version of a function, which is live, and its aliases.
    pub(crate) async fn versions(&self, name: &str) -> Result<Versions> {
        let name = parse_name(name)?;
        let (live, versions) = self.live_and_versions(&name).await?;
        let mut aliases: Vec<(String, u64)> = self.refs_of(&name).aliases.into_iter().collect();
        aliases.sort();
        Ok(Versions {
            name: name.to_string(),
            versions,
            live: live.record.version,
            aliases,
        })
    }

    /// The files of one version (the live one by default) as deployed,
    /// from the code the store keeps by content hash: for the dashboard's
    /// editor. Files that are not UTF-8 text (or larger than
    /// [`MAX_SHOWN_FILE_BYTES`]) come without their text.
    pub(crate) async fn files(&self, name: &str, version: Option<u64>) -> Result<FunctionFiles> {
        let name = parse_name(name)?;
        let (live, versions) = self.live_and_versions(&name).await?;
        let record = match version {
            None => live.record.clone(),
            Some(v) => versions
                .into_iter()
                .find(|r| r.version == v)
                .ok_or_else(|| Error::not_found(Entity::Function, format!("{name}@{v}")))?,
        };
        // The store keeps the archive (Redis) or this node has it unpacked
        // (the embedded store keeps code in the data directory only).
        let archive = self.env.backend.catalog.code(&record.code_sha256).await?;
        let dir = self.env.opts.data_dir.join(&record.code_dir);
        let what = format!("{}@{}", record.name, record.version);
        let files = tokio::task::spawn_blocking(move || match archive {
            Some(archive) => read_archive(&archive),
            None => read_code_dir(&dir).map_err(|e| {
                Error::unavailable(format!(
                    "the code of {what} is neither in the store nor readable on this node ({e})"
                ))
            }),
        })
        .await
        .map_err(Error::unavailable)??;
        let mut files: Vec<FunctionFile> = files
            .into_iter()
            .map(|(path, data)| {
                let size = data.len() as u64;
                let text = (data.len() <= MAX_SHOWN_FILE_BYTES)
                    .then(|| String::from_utf8(data).ok())
                    .flatten();
                FunctionFile {
                    path: path.to_string_lossy().replace('\\', "/"),
                    size,
                    text,
                }
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(FunctionFiles { record, files })
    }

    /// The function's refs as they are now (empty when it has none).
    fn refs_of(&self, name: &FunctionName) -> FunctionRefs {
        self.registry
            .read()
            .unwrap()
            .refs
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| FunctionRefs {
                name: name.clone(),
                pinned: None,
                aliases: Default::default(),
            })
    }

    /// Stores refs, then serves them. The caller holds the rules lock.
    async fn put_refs(&self, refs: FunctionRefs) -> Result<()> {
        self.env
            .backend
            .catalog
            .put_function_refs(refs.clone())
            .await?;
        self.registry
            .write()
            .unwrap()
            .refs
            .insert(refs.name.to_string(), refs);
        Ok(())
    }

    /// A version from the store ready to run on this node: its code is
    /// fetched from the store by content hash when this node does not have
    /// it (a version deployed through another node), and its environment
    /// prepared here.
    async fn fetched(&self, record: FunctionRecord) -> Result<Arc<Deployed>> {
        let data_dir = self.env.opts.data_dir.clone();
        let code_dir = data_dir.join(&record.code_dir);
        let have_code = tokio::fs::try_exists(&code_dir).await.unwrap_or(false);
        if !have_code {
            let archive = self
                .env
                .backend
                .catalog
                .code(&record.code_sha256)
                .await?
                .ok_or_else(|| {
                    Error::unavailable(format!(
                        "the code of {}@{} is not on this node and the store does not have it (sha256 {})",
                        record.name, record.version, record.code_sha256
                    ))
                })?;
            let unpacked = tokio::task::spawn_blocking(move || unpack(&data_dir, &archive))
                .await
                .map_err(Error::unavailable)??;
            if unpacked.code_dir != record.code_dir {
                return Err(Error::unavailable(format!(
                    "the stored code of {}@{} unpacks to {}, not {}",
                    record.name, record.version, unpacked.code_dir, record.code_dir
                )));
            }
            unpacked.staged.install().map_err(io_err)?;
            tracing::info!(function = %record.name, version = record.version, "Fetched a function's code from the store.");
        }
        let env_ready = match &record.env_dir {
            None => true,
            Some(dir) => tokio::fs::try_exists(self.env.opts.data_dir.join(dir))
                .await
                .unwrap_or(false),
        };
        let mut d = Arc::unwrap_or_clone(self.deployed(record));
        if !env_ready {
            // Built here from the same requirements (a cache by content).
            let prepared = self.env.runtime.prepare(code_dir).await?;
            d.deployment.env_dir = prepared.env_dir;
        }
        Ok(Arc::new(d))
    }

    /// Syncs made on lookup misses, not yet applied by the engine.
    pub(crate) fn take_unapplied(&self) -> Vec<Synced> {
        std::mem::take(&mut *self.unapplied.lock().unwrap())
    }

    /// Brings this node's registry up to what the store holds, after other
    /// nodes sharing it deployed, rolled back or removed functions: returns
    /// the versions that became live here and the functions removed, for
    /// the engine to start and stop their consumers and pools.
    pub(crate) async fn sync(&self) -> Result<Synced> {
        let _rules = self.rules.lock().await;
        let catalog = &self.env.backend.catalog;
        let records = catalog.functions().await?;
        let mut refs: HashMap<String, FunctionRefs> = catalog
            .function_refs()
            .await?
            .into_iter()
            .map(|r| (r.name.to_string(), r))
            .collect();
        let mut synced = Synced::default();
        let mut stored = std::collections::HashSet::new();
        for record in records {
            let name = record.name.to_string();
            stored.insert(name.clone());
            let newest = record.version;
            let function_refs = refs.remove(&name);
            let live = function_refs.as_ref().map_or(newest, |r| r.live(newest));
            let current = self.latest(&name);
            {
                let mut registry = self.registry.write().unwrap();
                registry.newest.insert(name.clone(), newest);
                match function_refs {
                    Some(r) => registry.refs.insert(name.clone(), r),
                    None => registry.refs.remove(&name),
                };
            }
            if current.as_ref().is_some_and(|c| c.record.version == live) {
                continue;
            }
            let record = match live {
                v if v == newest => record,
                v => match catalog.function_version(&name, v).await? {
                    Some(r) => r,
                    None => record,
                },
            };
            let known = self
                .registry
                .read()
                .unwrap()
                .versions
                .get(&(name.clone(), record.version))
                .cloned();
            let d = match known {
                Some(d) => d,
                None => match self.fetched(record).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, "Cannot load a version another node made live; trying again at the next sync.");
                        continue;
                    }
                },
            };
            let mut registry = self.registry.write().unwrap();
            registry.insert_version(d.clone());
            let previous = registry.latest.insert(d.record.name.clone(), d.clone());
            synced.live.push(DeployedNow {
                current: d,
                previous,
            });
        }
        let mut registry = self.registry.write().unwrap();
        let gone: Vec<FunctionName> = registry
            .latest
            .keys()
            .filter(|n| !stored.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            let versions = registry.forget(name.as_str());
            synced.removed.push((name.to_string(), versions));
        }
        drop(registry);
        self.rebuild_routes();
        Ok(synced)
    }

    /// A version from the registry's cache, or built from its record.
    fn cached(&self, record: FunctionRecord) -> Arc<Deployed> {
        let key = (record.name.to_string(), record.version);
        if let Some(d) = self.registry.read().unwrap().versions.get(&key) {
            return d.clone();
        }
        let d = self.deployed(record);
        self.registry.write().unwrap().insert_version(d.clone());
        d
    }

    /// A version ready to run: its record, with the values of the secrets
    /// it names in its environment.
    ///
    /// When they cannot be read (this node's key does not open the
    /// cluster's secrets), the version carries why, and new calls of it are
    /// refused with that (`resolve`, `version`): it never runs without
    /// them. A secret removed since (allowed once no live version names
    /// it) is only warned about: queued calls of an older version run.
    fn deployed(&self, record: FunctionRecord) -> Arc<Deployed> {
        let mut d = Deployed::from_record(&self.env.opts.data_dir, record);
        match self.secrets.values(&d.record.secrets) {
            Ok(values) => d.deployment.env.extend(values),
            Err(e @ Error::NotFound { .. }) => tracing::warn!(
                function = %d.record.name,
                error = %e,
                "A secret the function names was removed; it runs without it."
            ),
            Err(e) => {
                tracing::error!(
                    function = %d.record.name,
                    error = %e,
                    "A secret the function names cannot be read; it does not run on this node."
                );
                d.secrets_unreadable = Some(e.to_string());
            }
        }
        Arc::new(d)
    }

    /// `d`, unless its secrets could not be read.
    fn runnable(d: Arc<Deployed>) -> Result<Arc<Deployed>> {
        match &d.secrets_unreadable {
            None => Ok(d),
            Some(why) => Err(Error::unavailable(std::io::Error::other(format!(
                "function `{}` cannot run on this node: {why}",
                d.record.name
            )))),
        }
    }

    /// Brings the secrets up to what the store holds when nodes share it;
    /// versions naming a changed one are rebuilt.
    pub(crate) async fn sync_secrets(&self) -> Result<()> {
        let changed = self.secrets.refresh().await?;
        self.secrets_changed(&changed);
        Ok(())
    }

    /// After secrets changed: rebuilds the versions naming them and retires
    /// their workers (which hold the old values in their environment).
    pub(crate) fn secrets_changed(&self, names: &[String]) {
        for name in names {
            for old in self.refresh_secret(name) {
                self.env.runtime.retire(&old.deployment.key);
            }
        }
    }

    /// After a secret changed: every version that names it, rebuilt with the
    /// new value. Returns the versions replaced, to retire their workers
    /// (which hold the old value in their environment).
    pub(crate) fn refresh_secret(&self, name: &str) -> Vec<Arc<Deployed>> {
        let mut registry = self.registry.write().unwrap();
        let stale: Vec<Arc<Deployed>> = registry
            .versions
            .values()
            .filter(|d| d.record.secrets.iter().any(|s| s == name))
            .cloned()
            .collect();
        for old in &stale {
            let fresh = self.deployed(old.record.clone());
            let is_latest = registry
                .latest
                .get(&old.record.name)
                .is_some_and(|l| Arc::ptr_eq(l, old));
            registry.insert_version(fresh.clone());
            if is_latest {
                registry.latest.insert(fresh.record.name.clone(), fresh);
            }
        }
        stale
    }

    /// Runs `remove` unless a deployed function names the secret; deploys
    /// wait meanwhile.
    pub(crate) async fn unless_secret_used(
        &self,
        secret: &str,
        remove: impl std::future::Future<Output = Result<Vec<String>>>,
    ) -> Result<()> {
        let _rules = self.rules.lock().await;
        self.refuse_if_named(Conflict::SecretInUse, "secret", secret, |d| {
            d.record.secrets.iter().any(|s| s == secret)
        })?;
        let changed = remove.await?;
        self.secrets_changed(&changed);
        Ok(())
    }

    /// A conflict naming the deployed functions for which `names` holds,
    /// if any. The caller holds the rules lock.
    fn refuse_if_named(
        &self,
        kind: Conflict,
        what: &str,
        name: &str,
        names: impl Fn(&Deployed) -> bool,
    ) -> Result<()> {
        let mut users: Vec<String> = self
            .registry
            .read()
            .unwrap()
            .latest
            .values()
            .filter(|d| names(d))
            .map(|d| d.record.name.to_string())
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        users.sort();
        Err(Error::conflict(
            kind,
            format!(
                "{what} `{name}` is used by {}; change their shoal.toml first",
                users.join(", ")
            ),
        ))
    }

    /// Removes a function and all its versions; returns the versions it had,
    /// to retire their pools.
    pub(crate) async fn remove(&self, name: &str) -> Result<Vec<Arc<Deployed>>> {
        let name = parse_name(name)?;
        let _rules = self.rules.lock().await;
        let existed = self
            .env
            .backend
            .catalog
            .remove_function(name.as_str())
            .await?;
        let removed = self.registry.write().unwrap().forget(name.as_str());
        self.rebuild_routes();
        if existed {
            Ok(removed)
        } else {
            Err(Error::not_found(Entity::Function, name.as_str()))
        }
    }

    /// The live route serving `method` `path` (`[[route]]`).
    pub(crate) fn match_route(&self, method: &str, path: &str) -> RouteMatch {
        let table = self.routes.read().unwrap().clone();
        table.find(method, path)
    }

    /// Takes a call of a route's per-client rate limit for `client`; or
    /// how long until the client may call again. A route without a limit
    /// always admits.
    pub(crate) fn admit_route(
        &self,
        hit: &RouteHit,
        client: &str,
    ) -> std::result::Result<(), Duration> {
        let Some(rate) = hit.route.rate_limit else {
            return Ok(());
        };
        let key = format!(
            "{}\0{}\0{}\0{client}",
            hit.function, hit.route.method, hit.route.path
        );
        self.route_limits.take(&key, rate, self.env.now_ms())
    }

    /// The version's routes overlap no live route of another function.
    /// The caller holds the rules lock.
    fn check_routes(&self, record: &FunctionRecord) -> Result<()> {
        if record.routes.is_empty() {
            return Ok(());
        }
        let others = self.live_by_age();
        let (table, _) = RouteTable::build(
            others
                .iter()
                .filter(|d| d.record.name != record.name)
                .map(|d| (d.record.name.as_str(), d.record.routes.as_slice())),
        );
        match table.overlap(record.name.as_str(), &record.routes) {
            None => Ok(()),
            Some(o) => Err(Error::conflict(
                Conflict::RouteTaken,
                format!(
                    "route {} {} overlaps route {} {} of function `{}`; change the path, or remove that route (or function) first",
                    o.method, o.path, o.method, o.other_path, o.function
                ),
            )),
        }
    }

    /// Builds the route table again from the live versions. Routes that
    /// overlap (two nodes deployed them at once) are served first come,
    /// first served: the older version's. Wakes the schedules loop.
    fn rebuild_routes(&self) {
        let live = self.live_by_age();
        let (table, left_out) = RouteTable::build(
            live.iter()
                .map(|d| (d.record.name.as_str(), d.record.routes.as_slice())),
        );
        for o in left_out {
            tracing::warn!(route = %format!("{} {}", o.method, o.path), other = %o.function, "A route overlaps a live route of another function; it is not served.");
        }
        *self.routes.write().unwrap() = Arc::new(table);
        self.live_changed.notify_one();
    }

    /// The live versions, oldest deploy first.
    fn live_by_age(&self) -> Vec<Arc<Deployed>> {
        let mut live: Vec<Arc<Deployed>> = self
            .registry
            .read()
            .unwrap()
            .latest
            .values()
            .cloned()
            .collect();
        live.sort_by(|a, b| {
            (a.record.deployed_at_ms, a.record.name.as_str())
                .cmp(&(b.record.deployed_at_ms, b.record.name.as_str()))
        });
        live
    }

    /// The live version of a function, if it is deployed.
    pub(crate) fn latest(&self, name: &str) -> Option<Arc<Deployed>> {
        self.registry.read().unwrap().latest.get(name).cloned()
    }

    /// The version a client named for a new call: `NAME` is the live
    /// version, `NAME@3` version 3, `NAME@prod` the version of alias `prod`.
    pub(crate) async fn resolve(&self, name: &str) -> Result<Arc<Deployed>> {
        let (base, reference) = match name.split_once('@') {
            Some((base, r)) => (base, Some(r)),
            None => (name, None),
        };
        let fname = parse_name(base)?;
        self.env.accepting()?;
        let found = match self.resolve_here(&fname, name, reference).await {
            // Deployed (or aliased) through another node sharing the store
            // since this node last synced: sync now, then look again.
            Err(Error::NotFound { .. }) if self.sync_on_miss().await => {
                self.resolve_here(&fname, name, reference).await
            }
            found => found,
        };
        found.and_then(Functions::runnable)
    }

    /// After a miss: syncs the registry with the store, unless the
    /// generation did not move since the last sync. True when it synced;
    /// the changes are handed to the engine's sync loop to apply.
    async fn sync_on_miss(&self) -> bool {
        let Ok(generation) = self.env.backend.catalog.catalog_generation().await else {
            return false;
        };
        if generation == self.synced_generation.load(Ordering::Acquire) {
            return false;
        }
        if let Err(e) = self.sync_secrets().await {
            tracing::warn!(error = %e, "Reading the secrets failed.");
        }
        match self.sync().await {
            Ok(synced) => {
                self.synced_generation.store(generation, Ordering::Release);
                self.unapplied.lock().unwrap().push(synced);
                self.sync_wanted.notify_one();
                true
            }
            Err(_) => false,
        }
    }

    /// [`resolve`](Self::resolve) in this node's registry.
    async fn resolve_here(
        &self,
        fname: &FunctionName,
        name: &str,
        reference: Option<&str>,
    ) -> Result<Arc<Deployed>> {
        let live = self
            .latest(fname.as_str())
            .ok_or_else(|| Error::not_found(Entity::Function, fname.as_str()))?;
        let Some(reference) = reference else {
            return Ok(live);
        };
        let version = match reference.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => self
                .registry
                .read()
                .unwrap()
                .refs
                .get(fname.as_str())
                .and_then(|r| r.aliases.get(reference).copied()),
        };
        let found = match version {
            Some(v) => self.version(fname.as_str(), v).await?,
            None => None,
        };
        found.ok_or_else(|| Error::not_found(Entity::Function, name))
    }

    /// A given version of a function (queued invocations run the version
    /// they were sent to); `None` once the function was removed.
    pub(crate) async fn version(&self, name: &str, version: u64) -> Result<Option<Arc<Deployed>>> {
        {
            let registry = self.registry.read().unwrap();
            if let Some(d) = registry.versions.get(&(name.to_string(), version)) {
                return Functions::runnable(d.clone()).map(Some);
            }
            if !registry.latest.contains_key(name) {
                return Ok(None);
            }
        }
        let Some(record) = self
            .env
            .backend
            .catalog
            .function_version(name, version)
            .await?
        else {
            return Ok(None);
        };
        let d = self.fetched(record).await?;
        self.registry.write().unwrap().insert_version(d.clone());
        Functions::runnable(d).map(Some)
    }

    /// The live versions that have `[[trigger]]`s, by name: read under
    /// one lock, so the paths that look for triggers on every document
    /// write, blob write and finished invocation cost nothing when no
    /// function has any.
    pub(crate) fn with_triggers(&self) -> Vec<Arc<Deployed>> {
        let mut live: Vec<Arc<Deployed>> = self
            .registry
            .read()
            .unwrap()
            .latest
            .values()
            .filter(|d| !d.record.triggers.is_empty())
            .cloned()
            .collect();
        live.sort_by(|a, b| a.record.name.as_str().cmp(b.record.name.as_str()));
        live
    }

    /// Names of the deployed functions, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .read()
            .unwrap()
            .latest
            .keys()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    /// The function subscribed to a queue, if any.
    pub(crate) fn subscriber_of(&self, queue: &str) -> Option<Arc<Deployed>> {
        self.registry
            .read()
            .unwrap()
            .latest
            .values()
            .find(|d| {
                d.record
                    .subscribe
                    .as_ref()
                    .is_some_and(|s| s.queue == queue)
            })
            .cloned()
    }

    /// Runs `remove` unless a deployed function names the limiter; deploys
    /// wait meanwhile, so none can start naming it in between.
    pub(crate) async fn unless_limiter_used<T>(
        &self,
        limiter: &str,
        remove: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let _rules = self.rules.lock().await;
        self.refuse_if_named(Conflict::LimiterInUse, "limiter", limiter, |d| {
            d.record.limiter.as_deref() == Some(limiter)
        })?;
        remove.await
    }
}

/// The files under an unpacked version's directory (`__pycache__` left
/// out), relative to it.
fn read_code_dir(root: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "__pycache__" {
                continue;
            }
            let path = rel.join(&name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                if out.len() >= MAX_FILES {
                    break;
                }
                out.push((path.clone(), std::fs::read(root.join(&path))?));
            }
        }
    }
    Ok(out)
}

/// Largest file whose text [`Functions::files`] answers.
pub const MAX_SHOWN_FILE_BYTES: usize = 1024 * 1024;

/// A version's files, as deployed.
#[derive(Debug, Clone)]
pub struct FunctionFiles {
    pub record: FunctionRecord,
    /// By path.
    pub files: Vec<FunctionFile>,
}

/// One file of a version.
#[derive(Debug, Clone)]
pub struct FunctionFile {
    /// Relative to the function's directory, with `/`.
    pub path: String,
    pub size: u64,
    /// The text; `None` for a binary or too large file.
    pub text: Option<String>,
}

/// A function archive, unpacked and checked, not yet recorded.
pub(crate) struct Unpacked {
    manifest: Manifest,
    /// Relative to the data directory (where the code is once installed).
    code_dir: String,
    sha256: String,
    /// The digest of the files (`shoal_runtime::code_digest`).
    digest: String,
    staged: Staged,
}

impl Unpacked {
    /// The version's record (its number is assigned by the store).
    fn record(&self, env_dir: Option<String>, now_ms: u64) -> FunctionRecord {
        let m = &self.manifest;
        FunctionRecord {
            name: m.name.clone(),
            version: 0,
            runtime: m.runtime.clone(),
            handler: m.handler.clone(),
            timeout_ms: m.limits.timeout.as_millis() as u64,
            memory_mb: m.limits.memory_mb,
            concurrency: m.limits.concurrency,
            retries: m.retries,
            retry_delay_ms: m.retry_delay.as_millis() as u64,
            code_dir: self.code_dir.clone(),
            env_dir,
            code_sha256: self.sha256.clone(),
            deployed_at_ms: now_ms,
            limiter: m.limiter.clone(),
            concurrency_key: m
                .concurrency_key
                .as_ref()
                .map(|(field, per_key)| ConcurrencyKey {
                    field: field.clone(),
                    per_key: *per_key,
                }),
            network: m.network,
            code_digest: Some(self.digest.clone()),
            env: m.env.clone(),
            secrets: m.secrets.clone(),
            subscribe: m.subscribe.as_ref().map(|s| SubscriptionRecord {
                queue: s.queue.clone(),
                batch_size: s.batch_size,
                concurrency: s.concurrency,
            }),
            deployed_by: None,
            cache: m.cache.map(|c| shoal_store::CacheSettings {
                ttl_ms: c.ttl.as_millis() as u64,
                max_bytes: u64::from(c.max_mb) << 20,
            }),
            max_invocations_per_worker: m.max_invocations_per_worker.map(NonZeroU32::get),
            max_jobs_in_flight: m.max_jobs_in_flight.map(NonZeroU32::get),
            routes: m.routes.clone(),
            schedules: m.schedules.clone(),
            triggers: m.triggers.clone(),
        }
    }
}

const MAX_FILES: usize = 10_000;

/// Checks a tar archive and unpacks it under `data_dir/functions/NAME/SHA`.
/// Nothing is left behind when the archive is rejected.
pub(crate) fn unpack(data_dir: &Path, archive: &[u8]) -> Result<Unpacked> {
    let sha256 = hex::encode(Sha256::digest(archive));
    let files = read_archive(archive)?;
    let manifest_text = files
        .iter()
        .find(|(p, _)| p == Path::new("shoal.toml"))
        .map(|(_, data)| data)
        .ok_or_else(|| {
            Error::InvalidFunction(
                "the archive has no shoal.toml at its top level; deploy a directory that holds shoal.toml"
                    .into(),
            )
        })?;
    let manifest_text = std::str::from_utf8(manifest_text)
        .map_err(|_| Error::InvalidFunction("shoal.toml is not UTF-8 text".into()))?;
    let manifest = Manifest::parse(manifest_text).map_err(Error::InvalidFunction)?;
    let module = manifest.handler.split(':').next().unwrap_or_default();
    let module_path = module.replace('.', "/");
    let has_module = files.iter().any(|(p, _)| {
        p == Path::new(&format!("{module_path}.py"))
            || p == Path::new(&format!("{module_path}/__init__.py"))
    });
    if !has_module {
        return Err(Error::InvalidFunction(format!(
            "handler {:?} names module {module:?}, but the archive has no {module_path}.py",
            manifest.handler
        )));
    }

    let rel = format!("functions/{}/{}", manifest.name, &sha256[..32]);
    let final_dir = data_dir.join(&rel);
    let digest = shoal_runtime::code_digest(
        files
            .iter()
            .map(|(path, bytes)| (path.to_string_lossy().into_owned(), bytes.as_slice())),
    );
    // The same archive deployed before left this directory; it is reused
    // only if nobody changed it since (then it is written again).
    let intact = final_dir.exists()
        && shoal_runtime::code_digest_of_dir(&final_dir).is_ok_and(|d| d == digest);
    let staged = if intact {
        Staged::default()
    } else {
        // Written beside its final place and moved there only once the
        // deploy is accepted (`Staged::install`); a refused deploy leaves
        // nothing behind.
        let parent = final_dir.parent().expect("has a parent");
        std::fs::create_dir_all(parent).map_err(io_err)?;
        let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
        let staged = Staged {
            dir: Some((tmp.clone(), final_dir)),
        };
        write_files(&tmp, &files).map_err(io_err)?;
        staged
    };
    Ok(Unpacked {
        manifest,
        code_dir: rel,
        sha256,
        digest,
        staged,
    })
}

/// Function code written to a temporary directory, not yet in its place.
/// Dropped without `install`, it is removed (and its function's directory
/// too, when that is left empty).
#[derive(Default)]
pub(crate) struct Staged {
    /// (temporary, final) directories; `None` when the code was in place
    /// already (a deploy of the same archive).
    dir: Option<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Where the code is readable now.
    fn path<'a>(&'a self, in_place: &'a Path) -> &'a Path {
        self.dir.as_ref().map_or(in_place, |(tmp, _)| tmp)
    }

    /// Moves the code to its final place (durably).
    fn install(mut self) -> std::io::Result<()> {
        let Some((tmp, final_dir)) = self.dir.take() else {
            return Ok(());
        };
        if final_dir.exists() {
            // Changed on disk since the same archive's deploy (or deployed
            // meanwhile): replaced by what was uploaded now.
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        std::fs::File::open(final_dir.parent().expect("has a parent"))?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&tmp);
            if let Some(parent) = tmp.parent() {
                // Only succeeds when empty: other versions stay.
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

pub(crate) fn read_archive(archive: &[u8]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let bad = |msg: String| Error::InvalidFunction(format!("invalid function archive: {msg}"));
    let mut files = Vec::new();
    let mut ar = tar::Archive::new(archive);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad path ({e})")))?
            .into_owned();
        let clean: PathBuf = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        if clean
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!(
                "path {} leaves the function directory",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "{} is not a regular file; links are not allowed",
                path.display()
            )));
        }
        if files.len() >= MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("truncated ({e})")))?;
        files.push((clean, data));
    }
    Ok(files)
}

fn write_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (path, data) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&target)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

fn io_err(e: std::io::Error) -> Error {
    Error::unavailable(std::io::Error::new(
        e.kind(),
        format!("could not write function code: {e}"),
    ))
}

/// Checks a function name given in a URL.
pub(crate) fn parse_name(name: &str) -> Result<FunctionName> {
    Ok(FunctionName::parse(name)?)
}

/// An alias: 1 to 64 of `a-z 0-9 - _`, not all digits (`NAME@3` is a
/// version).
fn check_alias(alias: &str) -> Result<()> {
    let ok_chars = alias
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if alias.is_empty() || alias.len() > 64 || !ok_chars {
        return Err(Error::invalid(
            "alias",
            format!("alias {alias:?} must be 1 to 64 of a-z, 0-9, '-' and '_'"),
        ));
    }
    if alias.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            "alias",
            format!(
                "alias {alias:?} is all digits, which names a version (NAME@{alias}); pick a name with a letter"
            ),
        ));
    }
    Ok(())
}

/// Whether a version's code on disk is still what was deployed.
async fn intact(d: &Deployed) -> bool {
    let (Some(expected), dir) = (d.record.code_digest.clone(), d.deployment.code_dir.clone())
    else {
        return false;
    };
    tokio::task::spawn_blocking(move || shoal_runtime::code_digest_of_dir(&dir))
        .await
        .is_ok_and(|r| r.is_ok_and(|found| found == expected))
}
