//! Packs a function directory into the deterministic tar archive that
//! `POST /v1/functions` takes.
//!
//! Entries are sorted and carry no timestamps or owners, so the same files
//! always give the same archive (and the node reuses the unpacked code).
//! Hidden files and folders, `__pycache__`, and virtualenvs are left out.

use std::io;
use std::path::{Path, PathBuf};

pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
    if !dir.join("shoal.toml").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} has no shoal.toml; a function directory needs one",
                dir.display()
            ),
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
        builder.append_data(&mut header, &rel, data.as_slice())?;
    }
    builder.into_inner()
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || name_str == "__pycache__" || name_str == "venv" {
            continue;
        }
        let path = rel.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        } else if kind.is_symlink() && root.join(&path).is_file() {
            // Follow links to files: the archive holds their content.
            out.push(path);
        }
    }
    Ok(())
}
