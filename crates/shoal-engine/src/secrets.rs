//! Secrets: named values a function gets as environment variables when its
//! `shoal.toml` names them (`secrets = ["STRIPE_KEY"]`), stored encrypted.
//!
//! Sealed, they are one blob: a format byte, a random 12-byte nonce and the
//! ChaCha20-Poly1305 encryption of the JSON map name → value, under a
//! 256-bit key kept in a file (`--secrets-key-file`; by default
//! `DATA_DIR/secrets.key`, mode 0600, created on first use). A copy of the
//! store or of the blob alone reveals nothing; the key file is what to guard
//! (and to back up). Every change rewrites the whole blob: secrets are few
//! and small.
//!
//! Where the blob lives depends on the store:
//! - A store only this node uses (the embedded one) keeps no secrets
//!   (`Catalog::secrets` answers `None`): the blob is the file
//!   `DATA_DIR/secrets.enc` (temporary file, fsync, rename).
//! - A store nodes share (Redis) keeps it for all of them
//!   (`Catalog::secrets`/`put_secrets`). Every node must then use the same
//!   key file. A set or remove reads the blob, changes the map and writes it
//!   back with a compare-and-set on the blob's version, retrying on a
//!   conflict: two nodes changing secrets at once both take effect. The
//!   write moves the catalog generation; the other nodes re-read the blob
//!   when they sync (`refresh`) and rebuild the versions that name a
//!   changed secret. A node whose key does not open the blob says so on
//!   every use (listing, setting, deploying or running a function that
//!   names a secret) and never runs such a function without its secrets.
//!
//! Values never leave the engine except into the environment of the
//! functions that name them; what those functions return or print is
//! redacted (`redact`) before it is stored or answered.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use shoal_store::{Catalog, SealedSecrets};

use crate::error::{Entity, Error, Result};

const FORMAT_V1: u8 = 1;
/// Names: like environment variables.
const MAX_NAME: usize = 128;
/// Values: 64 KiB each.
pub const MAX_VALUE: usize = 64 * 1024;
const MAX_SECRETS: usize = 1_000;
/// Compare-and-set attempts of one change before giving up.
const MAX_TRIES: usize = 16;

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at_ms: u64,
}

#[derive(Default, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    secrets: BTreeMap<String, StoredSecret>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct StoredSecret {
    value: String,
    updated_at_ms: u64,
}

/// The node's secrets.
pub(crate) struct Secrets {
    dir: PathBuf,
    key_file: PathBuf,
    /// The store, which may keep the secrets for every node sharing it.
    catalog: Option<Arc<dyn Catalog>>,
    state: Mutex<State>,
    /// This node's changes, one at a time.
    writes: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The store keeps the secrets (decided by `start`).
    shared: bool,
    /// The map, once read.
    stored: Option<Stored>,
    /// Shared: the store's version of `stored`.
    version: u64,
    /// Shared: why this node cannot open the store's secrets.
    unreadable: Option<String>,
}

/// Checks a secret's name: letters, digits and `_`, not starting with a
/// digit (it becomes an environment variable).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "secret name",
            format!(
                "{name:?} must be 1-{MAX_NAME} letters, digits and _, not starting with a digit"
            ),
        ))
    }
}

fn unavailable(message: String) -> Error {
    Error::unavailable(std::io::Error::other(message))
}

impl Secrets {
    /// The secrets of a node that keeps them in its data directory.
    pub(crate) fn new(data_dir: PathBuf) -> Secrets {
        let key_file = data_dir.join("secrets.key");
        Secrets {
            dir: data_dir,
            key_file,
            catalog: None,
            state: Mutex::new(State::default()),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The secrets of a node on `catalog`: in the store when it keeps
    /// secrets (see [`start`](Self::start)), else in `data_dir`. The key is
    /// `key_file`, by default `DATA_DIR/secrets.key`.
    pub(crate) fn with_store(
        data_dir: PathBuf,
        key_file: Option<PathBuf>,
        catalog: Arc<dyn Catalog>,
    ) -> Secrets {
        let mut secrets = Secrets::new(data_dir);
        if let Some(k) = key_file {
            secrets.key_file = k;
        }
        secrets.catalog = Some(catalog);
        secrets
    }

    /// Asks the store whether it keeps the secrets and, when it does, reads
    /// them. A key that does not open them is logged, not fatal: the node
    /// serves everything else and refuses what needs a secret.
    pub(crate) async fn start(&self) -> Result<()> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        let Some(sealed) = catalog.secrets().await? else {
            return Ok(());
        };
        self.state.lock().unwrap().shared = true;
        self.adopt(sealed);
        Ok(())
    }

    /// True when the store keeps the secrets for every node sharing it.
    fn shared(&self) -> bool {
        self.state.lock().unwrap().shared
    }

    /// Takes the store's sealed secrets as this node's; returns the names
    /// whose value changed (added, changed or removed, or every known one
    /// when they can no longer be opened).
    fn adopt(&self, sealed: SealedSecrets) -> Vec<String> {
        let opened = self.open_sealed(&sealed);
        let mut state = self.state.lock().unwrap();
        let old = state.stored.take().unwrap_or_default();
        state.version = sealed.version;
        match opened {
            Ok(new) => {
                state.unreadable = None;
                let changed = changed_names(&old, &new);
                state.stored = Some(new);
                changed
            }
            Err(why) => {
                if state.unreadable.is_none() {
                    tracing::error!(error = %why, "The cluster's secrets cannot be read on this node; functions naming a secret will not run here.");
                }
                state.unreadable = Some(why);
                old.secrets.into_keys().collect()
            }
        }
    }

    /// Re-reads the secrets when the store keeps them and their version
    /// moved (after the catalog generation moved); returns the names whose
    /// value changed here.
    pub(crate) async fn refresh(&self) -> Result<Vec<String>> {
        let Some(catalog) = self.catalog.as_ref().filter(|_| self.shared()) else {
            return Ok(Vec::new());
        };
        // Not across a change of this node: its read could be older.
        let _one = self.writes.lock().await;
        let Some(sealed) = catalog.secrets().await? else {
            return Ok(Vec::new());
        };
        if self.state.lock().unwrap().version == sealed.version {
            return Ok(Vec::new());
        }
        Ok(self.adopt(sealed))
    }

    /// Opens the store's blob; the error says why this node cannot.
    fn open_sealed(&self, sealed: &SealedSecrets) -> std::result::Result<Stored, String> {
        if sealed.version == 0 || sealed.sealed.is_empty() {
            return Ok(Stored::default());
        }
        let mismatch = |why: &str| {
            format!(
                "this node's secrets key ({}: {why}) does not match the cluster's; start it with --secrets-key-file pointing at the same key as the other nodes",
                self.key_file.display()
            )
        };
        let key = match std::fs::read(&self.key_file) {
            Ok(bytes) if bytes.len() == 32 => *Key::from_slice(&bytes),
            Ok(_) => return Err(mismatch("not a 32-byte key")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(mismatch("missing"));
            }
            Err(e) => return Err(format!("{}: {e}", self.key_file.display())),
        };
        match open(&key, &sealed.sealed) {
            Ok(stored) => Ok(stored),
            Err(Opened::WrongKey) => Err(mismatch("it does not decrypt the stored secrets")),
            Err(Opened::Garbled(why)) => Err(format!("the stored secrets cannot be read: {why}")),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Stored) -> Result<T>) -> Result<T> {
        let mut state = self.state.lock().unwrap();
        if let Some(why) = &state.unreadable {
            return Err(unavailable(why.clone()));
        }
        if state.stored.is_none() {
            // Shared secrets are read by `start`; this is the file.
            state.stored = Some(if state.shared {
                Stored::default()
            } else {
                self.load()?
            });
        }
        f(state.stored.as_mut().expect("loaded"))
    }

    /// Applies `change` to the secrets and makes it durable: the file, or
    /// the store's blob by compare-and-set (re-reading it on a conflict).
    /// Returns the names whose value changed on this node (other nodes'
    /// changes read on the way included).
    async fn change(&self, change: impl Fn(&mut Stored) -> Result<()>) -> Result<Vec<String>> {
        let _one = self.writes.lock().await;
        let Some(catalog) = self.catalog.as_ref().filter(|_| self.shared()) else {
            return self.with(|stored| {
                let mut next = stored.clone();
                change(&mut next)?;
                self.save_file(&next)?;
                let changed = changed_names(stored, &next);
                *stored = next;
                Ok(changed)
            });
        };
        for _ in 0..MAX_TRIES {
            let Some(sealed) = catalog.secrets().await? else {
                return Err(unavailable("the store no longer keeps secrets".into()));
            };
            let version = sealed.version;
            let current = self.open_sealed(&sealed).map_err(unavailable)?;
            let mut next = current.clone();
            change(&mut next)?;
            let bytes = self.seal(&next, Some(version))?;
            if let Some(version) = catalog.put_secrets(version, bytes).await? {
                let mut state = self.state.lock().unwrap();
                let old = state.stored.take().unwrap_or_default();
                state.unreadable = None;
                state.version = version;
                let changed = changed_names(&old, &next);
                state.stored = Some(next);
                return Ok(changed);
            }
            // Another node wrote since the read: read again.
        }
        Err(unavailable(
            "secrets are being changed by other nodes too often; retry".into(),
        ))
    }

    /// Sets a secret (durable when this returns). Returns the names whose
    /// value changed on this node (this one, and any another node changed).
    pub(crate) async fn set(&self, name: &str, value: &str, now_ms: u64) -> Result<Vec<String>> {
        check_name(name)?;
        if value.len() > MAX_VALUE {
            return Err(Error::invalid(
                "value",
                format!("a secret is at most {MAX_VALUE} bytes"),
            ));
        }
        if value.is_empty() {
            return Err(Error::invalid("value", "a secret cannot be empty"));
        }
        self.change(|stored| {
            if !stored.secrets.contains_key(name) && stored.secrets.len() >= MAX_SECRETS {
                return Err(Error::invalid(
                    "secret name",
                    format!("a node keeps at most {MAX_SECRETS} secrets; remove some first"),
                ));
            }
            stored.secrets.insert(
                name.to_string(),
                StoredSecret {
                    value: value.to_string(),
                    updated_at_ms: now_ms,
                },
            );
            Ok(())
        })
        .await
    }

    /// Removes a secret; returns the names whose value changed on this node.
    pub(crate) async fn remove(&self, name: &str) -> Result<Vec<String>> {
        check_name(name)?;
        self.change(|stored| {
            if stored.secrets.remove(name).is_none() {
                return Err(Error::not_found(Entity::Secret, name));
            }
            Ok(())
        })
        .await
    }

    pub(crate) fn list(&self) -> Result<Vec<SecretInfo>> {
        self.with(|stored| {
            Ok(stored
                .secrets
                .iter()
                .map(|(name, s)| SecretInfo {
                    name: name.clone(),
                    updated_at_ms: s.updated_at_ms,
                })
                .collect())
        })
    }

    /// The values of `names`; the first missing name is an error (and so is
    /// a key that cannot open the cluster's secrets).
    pub(crate) fn values(&self, names: &[String]) -> Result<BTreeMap<String, String>> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.with(|stored| {
            names
                .iter()
                .map(|n| {
                    stored
                        .secrets
                        .get(n)
                        .map(|s| (n.clone(), s.value.clone()))
                        .ok_or_else(|| Error::not_found(Entity::Secret, n))
                })
                .collect()
        })
    }

    /// The key, created on first use. On a shared store a missing key is
    /// created only while the store holds no secrets yet (else it could
    /// never open them).
    ///
    /// `shared` is the store's version of the secrets when the store keeps
    /// them, `None` for the file.
    fn key(&self, shared: Option<u64>) -> Result<Key> {
        let path = &self.key_file;
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => return Ok(*Key::from_slice(&bytes)),
            Ok(_) => {
                return Err(unavailable(format!(
                    "{} is not a 32-byte key; restore it from a backup",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::unavailable(e)),
        }
        if shared.is_none() && self.dir.join("secrets.enc").exists() {
            return Err(unavailable(format!(
                "{} is missing but secrets.enc exists; restore the key from a backup",
                path.display()
            )));
        }
        if shared.is_some_and(|version| version > 0) {
            return Err(unavailable(format!(
                "this node's secrets key ({} is missing) does not match the cluster's; start it with --secrets-key-file pointing at the same key as the other nodes",
                path.display()
            )));
        }
        let mut key = [0u8; 32];
        fill_random(&mut key);
        write_private(path, &key)?;
        Ok(*Key::from_slice(&key))
    }

    fn load(&self) -> Result<Stored> {
        let path = self.dir.join("secrets.enc");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
            Err(e) => return Err(Error::unavailable(e)),
        };
        let corrupt = |why: &str| unavailable(format!("{} cannot be read: {why}", path.display()));
        if bytes.len() < 1 + 12 || bytes[0] != FORMAT_V1 {
            return Err(corrupt("unknown format"));
        }
        match open(&self.key(None)?, &bytes) {
            Ok(stored) => Ok(stored),
            Err(Opened::WrongKey) => Err(corrupt(&format!(
                "it does not decrypt with {}",
                self.key_file.display()
            ))),
            Err(Opened::Garbled(why)) => Err(corrupt(why)),
        }
    }

    /// The sealed blob of `stored` (`shared` as for [`key`](Self::key)).
    fn seal(&self, stored: &Stored, shared: Option<u64>) -> Result<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(&self.key(shared)?);
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let plain = serde_json::to_vec(stored).expect("secrets encode");
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| unavailable("encrypting secrets failed".into()))?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Seals one value (a notification's signing secret) under the same
    /// key as the secrets: a format byte, a random nonce, the ciphertext.
    pub(crate) fn seal_value(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let shared = self.shared().then(|| self.state.lock().unwrap().version);
        let cipher = ChaCha20Poly1305::new(&self.key(shared)?);
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| unavailable("encrypting a value failed".into()))?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value [`seal_value`](Self::seal_value) sealed.
    pub(crate) fn open_value(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        if bytes.len() < 1 + 12 || bytes[0] != FORMAT_V1 {
            return Err(unavailable("a sealed value has an unknown format".into()));
        }
        let shared = self.shared().then(|| self.state.lock().unwrap().version);
        ChaCha20Poly1305::new(&self.key(shared)?)
            .decrypt(Nonce::from_slice(&bytes[1..13]), &bytes[13..])
            .map_err(|_| {
                unavailable(format!(
                    "a sealed value does not decrypt with {}; nodes sharing a store must use the same --secrets-key-file",
                    self.key_file.display()
                ))
            })
    }

    fn save_file(&self, stored: &Stored) -> Result<()> {
        let out = self.seal(stored, None)?;
        write_private(&self.dir.join("secrets.enc"), &out)
    }
}

/// Why a blob did not open.
enum Opened {
    WrongKey,
    Garbled(&'static str),
}

/// Opens a sealed blob with `key`.
fn open(key: &Key, bytes: &[u8]) -> std::result::Result<Stored, Opened> {
    if bytes.len() < 1 + 12 || bytes[0] != FORMAT_V1 {
        return Err(Opened::Garbled("unknown format"));
    }
    let plain = ChaCha20Poly1305::new(key)
        .decrypt(Nonce::from_slice(&bytes[1..13]), &bytes[13..])
        .map_err(|_| Opened::WrongKey)?;
    serde_json::from_slice(&plain).map_err(|_| Opened::Garbled("not a secrets map"))
}

/// Names added, removed or given another value between `old` and `new`.
fn changed_names(old: &Stored, new: &Stored) -> Vec<String> {
    let mut names: Vec<String> = old
        .secrets
        .iter()
        .filter(|(n, s)| new.secrets.get(*n).is_none_or(|t| t.value != s.value))
        .map(|(n, _)| n.clone())
        .collect();
    names.extend(
        new.secrets
            .keys()
            .filter(|n| !old.secrets.contains_key(*n))
            .cloned(),
    );
    names
}

/// Writes a file readable by the node's user only, atomically and durably.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::unavailable(e)
    })
}

/// Key material and nonces come from the operating system's generator.
fn fill_random(buf: &mut [u8]) {
    use rand::RngCore;
    #[allow(clippy::disallowed_methods)] // keys are not jitter: never faked
    rand::rng().fill_bytes(buf);
}

/// Replaces every occurrence of the values in `text` with `***`.
pub(crate) fn redact(text: &str, values: &[&str]) -> Option<String> {
    let mut out: Option<String> = None;
    for v in values.iter().filter(|v| v.len() >= 4) {
        let current = out.as_deref().unwrap_or(text);
        if current.contains(v) {
            out = Some(current.replace(v, "***"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_are_stored_encrypted_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path().to_path_buf());
        s.set("API_KEY", "sk-live-123456", 7).await.unwrap();
        let on_disk = std::fs::read(dir.path().join("secrets.enc")).unwrap();
        assert!(!on_disk.windows(14).any(|w| w == b"sk-live-123456"));
        let key = std::fs::metadata(dir.path().join("secrets.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        // A fresh service (a restart) reads it back.
        let again = Secrets::new(dir.path().to_path_buf());
        let values = again.values(&["API_KEY".to_string()]).unwrap();
        assert_eq!(values["API_KEY"], "sk-live-123456");
        assert_eq!(
            again.list().unwrap(),
            vec![SecretInfo {
                name: "API_KEY".into(),
                updated_at_ms: 7
            }]
        );
        again.remove("API_KEY").await.unwrap();
        assert!(again.values(&["API_KEY".to_string()]).is_err());
        assert!(matches!(
            again.remove("API_KEY").await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_wrong_key_is_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        Secrets::new(dir.path().to_path_buf())
            .set("A", "value-1", 1)
            .await
            .unwrap();
        std::fs::write(dir.path().join("secrets.key"), [7u8; 32]).unwrap();
        let err = Secrets::new(dir.path().to_path_buf()).list().unwrap_err();
        assert!(err.to_string().contains("does not decrypt"), "{err}");
    }

    #[tokio::test]
    async fn names_and_values_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path().to_path_buf());
        assert!(s.set("9LIVES", "x", 1).await.is_err());
        assert!(s.set("A-B", "x", 1).await.is_err());
        assert!(s.set("OK", "", 1).await.is_err());
        assert!(s.set("OK", &"x".repeat(MAX_VALUE + 1), 1).await.is_err());
    }

    /// Two nodes on one store that keeps secrets, each with its data
    /// directory, `key` the key file of both (`None`: each its own).
    async fn two_on_one_store(key: Option<&Path>) -> (Secrets, Secrets, Vec<tempfile::TempDir>) {
        let store: Arc<dyn Catalog> = Arc::new(shoal_store::memory::MemoryStore::new());
        let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let node = |d: &tempfile::TempDir| {
            Secrets::with_store(
                d.path().to_path_buf(),
                key.map(Path::to_path_buf),
                store.clone(),
            )
        };
        let (a, b) = (node(&dirs[0]), node(&dirs[1]));
        a.start().await.unwrap();
        b.start().await.unwrap();
        (a, b, dirs)
    }

    #[tokio::test]
    async fn nodes_sharing_a_store_and_a_key_share_secrets() {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("cluster.key");
        let (a, b, dirs) = two_on_one_store(Some(&key)).await;
        assert_eq!(a.set("A", "value-a", 1).await.unwrap(), vec!["A"]);
        // Both change the map: neither undoes the other.
        assert_eq!(b.set("B", "value-b", 2).await.unwrap(), vec!["A", "B"]);
        assert_eq!(a.refresh().await.unwrap(), vec!["B"]);
        assert_eq!(a.refresh().await.unwrap(), Vec::<String>::new());
        let both = ["A".to_string(), "B".to_string()];
        assert_eq!(a.values(&both).unwrap(), b.values(&both).unwrap());
        b.remove("A").await.unwrap();
        assert_eq!(a.refresh().await.unwrap(), vec!["A"]);
        assert!(a.values(&["A".to_string()]).is_err());
        // Nothing in the data directories: the store holds the ciphertext.
        for d in &dirs {
            assert!(!d.path().join("secrets.enc").exists());
            assert!(!d.path().join("secrets.key").exists());
        }
    }

    #[tokio::test]
    async fn a_node_with_another_key_says_so() {
        let (a, b, _dirs) = two_on_one_store(None).await;
        a.set("A", "value-a", 1).await.unwrap();
        assert_eq!(b.refresh().await.unwrap(), Vec::<String>::new());
        for err in [
            b.list().unwrap_err(),
            b.values(&["A".to_string()]).unwrap_err(),
            b.set("B", "value-b", 2).await.unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("does not match the cluster's")
                    && err.to_string().contains("--secrets-key-file"),
                "{err}"
            );
        }
        // A is untouched by B's refused write.
        assert_eq!(a.list().unwrap().len(), 1);
    }

    #[test]
    fn redaction_hides_every_occurrence() {
        assert_eq!(
            redact("key=sk-123456 and sk-123456", &["sk-123456"]).as_deref(),
            Some("key=*** and ***")
        );
        assert_eq!(redact("nothing here", &["sk-123456"]), None);
    }
}
