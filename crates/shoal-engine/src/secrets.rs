//! Secrets: named values a function gets as environment variables when its
//! `shoal.toml` names them (`secrets = ["STRIPE_KEY"]`), stored encrypted.
//!
//! At rest they are one file, `DATA_DIR/secrets.enc`: a format byte, a
//! random 12-byte nonce and the ChaCha20-Poly1305 encryption of the JSON map
//! name → value, under a 256-bit key kept in `DATA_DIR/secrets.key` (mode
//! 0600, created on first use). A copy of the store or of `secrets.enc`
//! alone reveals nothing; the key file is what to guard (and to back up).
//! Every change rewrites the file (temporary file, fsync, rename): secrets
//! are few and small. A node on Redis will keep the ciphertext in the store.
//!
//! Values never leave the engine except into the environment of the
//! functions that name them; what those functions return or print is
//! redacted (`redact`) before it is stored or answered.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use crate::error::{Entity, Error, Result};

const FORMAT_V1: u8 = 1;
/// Names: like environment variables.
const MAX_NAME: usize = 128;
/// Values: 64 KiB each.
pub const MAX_VALUE: usize = 64 * 1024;
const MAX_SECRETS: usize = 1_000;

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at_ms: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    secrets: BTreeMap<String, StoredSecret>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSecret {
    value: String,
    updated_at_ms: u64,
}

/// The node's secrets.
pub(crate) struct Secrets {
    dir: PathBuf,
    state: Mutex<Option<Stored>>,
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

impl Secrets {
    pub(crate) fn new(data_dir: PathBuf) -> Secrets {
        Secrets {
            dir: data_dir,
            state: Mutex::new(None),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Stored) -> Result<T>) -> Result<T> {
        let mut state = self.state.lock().unwrap();
        if state.is_none() {
            *state = Some(self.load()?);
        }
        f(state.as_mut().expect("loaded"))
    }

    /// Sets a secret (durable when this returns).
    pub(crate) fn set(&self, name: &str, value: &str, now_ms: u64) -> Result<()> {
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
        self.with(|stored| {
            if !stored.secrets.contains_key(name) && stored.secrets.len() >= MAX_SECRETS {
                return Err(Error::invalid(
                    "secret name",
                    format!("a node keeps at most {MAX_SECRETS} secrets; remove some first"),
                ));
            }
            let mut next = Stored {
                secrets: stored.secrets.clone(),
            };
            next.secrets.insert(
                name.to_string(),
                StoredSecret {
                    value: value.to_string(),
                    updated_at_ms: now_ms,
                },
            );
            self.save(&next)?;
            *stored = next;
            Ok(())
        })
    }

    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.with(|stored| {
            if !stored.secrets.contains_key(name) {
                return Err(Error::not_found(Entity::Secret, name));
            }
            let mut next = Stored {
                secrets: stored.secrets.clone(),
            };
            next.secrets.remove(name);
            self.save(&next)?;
            *stored = next;
            Ok(())
        })
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

    /// The values of `names`; the first missing name is an error.
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

    fn key(&self) -> Result<Key> {
        let path = self.dir.join("secrets.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => return Ok(*Key::from_slice(&bytes)),
            Ok(_) => {
                return Err(Error::unavailable(std::io::Error::other(format!(
                    "{} is not a 32-byte key; restore it from a backup",
                    path.display()
                ))));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::unavailable(e)),
        }
        if self.dir.join("secrets.enc").exists() {
            return Err(Error::unavailable(std::io::Error::other(format!(
                "{} is missing but secrets.enc exists; restore the key from a backup",
                path.display()
            ))));
        }
        let mut key = [0u8; 32];
        fill_random(&mut key);
        write_private(&path, &key)?;
        Ok(*Key::from_slice(&key))
    }

    fn load(&self) -> Result<Stored> {
        let path = self.dir.join("secrets.enc");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
            Err(e) => return Err(Error::unavailable(e)),
        };
        let corrupt = |why: &str| {
            Error::unavailable(std::io::Error::other(format!(
                "{} cannot be read: {why}",
                path.display()
            )))
        };
        if bytes.len() < 1 + 12 || bytes[0] != FORMAT_V1 {
            return Err(corrupt("unknown format"));
        }
        let cipher = ChaCha20Poly1305::new(&self.key()?);
        let plain = cipher
            .decrypt(Nonce::from_slice(&bytes[1..13]), &bytes[13..])
            .map_err(|_| corrupt("it does not decrypt with secrets.key"))?;
        serde_json::from_slice(&plain).map_err(|_| corrupt("not a secrets map"))
    }

    fn save(&self, stored: &Stored) -> Result<()> {
        let cipher = ChaCha20Poly1305::new(&self.key()?);
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let plain = serde_json::to_vec(stored).expect("secrets encode");
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| Error::unavailable(std::io::Error::other("encrypting secrets failed")))?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        write_private(&self.dir.join("secrets.enc"), &out)
    }
}

/// Writes a file readable by the node's user only, atomically and durably.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
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
        std::fs::File::open(path.parent().expect("in a directory"))?.sync_all()
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

    #[test]
    fn values_are_stored_encrypted_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path().to_path_buf());
        s.set("API_KEY", "sk-live-123456", 7).unwrap();
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
        again.remove("API_KEY").unwrap();
        assert!(again.values(&["API_KEY".to_string()]).is_err());
        assert!(matches!(
            again.remove("API_KEY"),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn a_wrong_key_is_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        Secrets::new(dir.path().to_path_buf())
            .set("A", "value-1", 1)
            .unwrap();
        std::fs::write(dir.path().join("secrets.key"), [7u8; 32]).unwrap();
        let err = Secrets::new(dir.path().to_path_buf()).list().unwrap_err();
        assert!(err.to_string().contains("does not decrypt"), "{err}");
    }

    #[test]
    fn names_and_values_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path().to_path_buf());
        assert!(s.set("9LIVES", "x", 1).is_err());
        assert!(s.set("A-B", "x", 1).is_err());
        assert!(s.set("OK", "", 1).is_err());
        assert!(s.set("OK", &"x".repeat(MAX_VALUE + 1), 1).is_err());
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
