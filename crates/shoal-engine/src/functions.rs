//! Functions: deploy an archive as a new immutable version, resolve, remove.
//!
//! A deploy unpacks the archive into a content-addressed directory, prepares
//! it on the runtime (virtualenv), and only then records the version, so a
//! recorded version always has its code and environment on disk.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use shoal_runtime::Deployment;
use shoal_store::FunctionRecord;
use shoal_types::{FunctionName, Limits};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// A function version ready to run.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub record: FunctionRecord,
    pub deployment: Deployment,
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
        };
        Deployed { record, deployment }
    }

    pub fn max_attempts(&self) -> u32 {
        self.record.retries + 1
    }
}

/// In-memory view of deployed functions: the latest version of each, and
/// every version seen (queued async invocations run the version they were
/// sent to).
#[derive(Default)]
pub(crate) struct Registry {
    latest: RwLock<HashMap<String, Arc<Deployed>>>,
    versions: RwLock<HashMap<(String, u64), Arc<Deployed>>>,
}

impl Registry {
    pub(crate) fn latest(&self, name: &str) -> Option<Arc<Deployed>> {
        self.latest.read().unwrap().get(name).cloned()
    }

    pub(crate) fn version(&self, name: &str, version: u64) -> Option<Arc<Deployed>> {
        self.versions
            .read()
            .unwrap()
            .get(&(name.to_string(), version))
            .cloned()
    }

    pub(crate) fn insert_latest(&self, d: Arc<Deployed>) {
        self.insert_version(d.clone());
        self.latest
            .write()
            .unwrap()
            .insert(d.record.name.clone(), d);
    }

    pub(crate) fn insert_version(&self, d: Arc<Deployed>) {
        self.versions
            .write()
            .unwrap()
            .insert((d.record.name.clone(), d.record.version), d);
    }

    /// Forgets a function; returns the versions it had, to retire their pools.
    pub(crate) fn remove(&self, name: &str) -> Vec<Arc<Deployed>> {
        self.latest.write().unwrap().remove(name);
        let mut versions = self.versions.write().unwrap();
        let keys: Vec<_> = versions
            .keys()
            .filter(|(n, _)| n == name)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| versions.remove(&k))
            .collect()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.latest.read().unwrap().keys().cloned().collect()
    }
}

/// A function archive, unpacked and checked, not yet recorded.
pub(crate) struct Unpacked {
    pub manifest: Manifest,
    /// Relative to the data directory.
    pub code_dir: String,
    pub sha256: String,
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
    if !final_dir.exists() {
        let parent = final_dir.parent().expect("has a parent");
        std::fs::create_dir_all(parent).map_err(io_err)?;
        let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
        let written = write_files(&tmp, &files).and_then(|()| {
            std::fs::rename(&tmp, &final_dir)?;
            std::fs::File::open(parent)?.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err(e));
        }
    }
    Ok(Unpacked {
        manifest,
        code_dir: rel,
        sha256,
    })
}

fn read_archive(archive: &[u8]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
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
    Error::Unavailable(format!("could not write function code: {e}"))
}

/// Checks a function name given in a URL.
pub(crate) fn parse_name(name: &str) -> Result<FunctionName> {
    Ok(FunctionName::parse(name)?)
}
