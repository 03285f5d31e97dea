//! The digest of a function's code: what was deployed, checked again when
//! the code is loaded, so code changed on disk after its deploy is not run.
//!
//! The digest covers every regular file by its path relative to the
//! function's directory and its bytes, in path order; directories named
//! `__pycache__` are left out (Python may write bytecode there when it runs
//! without the sandbox).

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The digest of `(relative path, bytes)` pairs (any order).
pub fn code_digest<'a>(files: impl IntoIterator<Item = (String, &'a [u8])>) -> String {
    let mut files: Vec<(String, &[u8])> = files
        .into_iter()
        .filter(|(path, _)| !path.split('/').any(|part| part == "__pycache__"))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Sha256::new();
    for (path, bytes) in files {
        hash.update((path.len() as u64).to_be_bytes());
        hash.update(path.as_bytes());
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    hex::encode(hash.finalize())
}

/// The digest of the code under `dir` as it is on disk now.
pub fn code_digest_of_dir(dir: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    collect(dir, "", &mut files)?;
    Ok(code_digest(
        files
            .iter()
            .map(|(path, bytes)| (path.clone(), bytes.as_slice())),
    ))
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name != "__pycache__" {
                collect(&entry.path(), &rel, out)?;
            }
        } else if kind.is_file() {
            out.push((rel, std::fs::read(entry.path())?));
        } else {
            // Deploys never write links or devices: one here was put there.
            out.push((rel, b"\0not a regular file".to_vec()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_digest_is_the_deployed_one_until_a_byte_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pkg/__pycache__")).unwrap();
        std::fs::write(dir.path().join("main.py"), b"x = 1\n").unwrap();
        std::fs::write(dir.path().join("pkg/util.py"), b"y = 2\n").unwrap();
        std::fs::write(dir.path().join("pkg/__pycache__/util.pyc"), b"junk").unwrap();
        let deployed = code_digest([
            ("pkg/util.py".to_string(), &b"y = 2\n"[..]),
            ("main.py".to_string(), &b"x = 1\n"[..]),
        ]);
        assert_eq!(code_digest_of_dir(dir.path()).unwrap(), deployed);
        std::fs::write(dir.path().join("main.py"), b"x = 2\n").unwrap();
        assert_ne!(code_digest_of_dir(dir.path()).unwrap(), deployed);
        std::fs::write(dir.path().join("main.py"), b"x = 1\n").unwrap();
        std::fs::write(dir.path().join("extra.py"), b"").unwrap();
        assert_ne!(code_digest_of_dir(dir.path()).unwrap(), deployed);
    }
}
