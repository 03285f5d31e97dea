//! Virtualenvs built from a function's `requirements.txt`, cached by content.
//!
//! `venvs/<sha256(interpreter, requirements)>` is complete once it holds the
//! marker file; anything else under that name is a leftover of an interrupted
//! build and is rebuilt. A venv is built in place, not renamed into place:
//! virtualenvs are not relocatable (scripts pip installs embed the absolute
//! path). Concurrent builds of the same hash are serialized.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use shoal_runtime::{Error, Prepared, Result};

use crate::lock;

/// Written last: its presence means the venv is complete.
const MARKER: &str = ".shoal-complete";
/// How much of pip's output an error keeps.
const OUTPUT_TAIL: usize = 4000;

pub(crate) struct Venvs {
    root: PathBuf,
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Venvs {
    pub(crate) fn new(root: PathBuf) -> Venvs {
        Venvs {
            root,
            building: Mutex::new(HashMap::new()),
        }
    }

    /// Builds (or reuses) the venv for `code_dir/requirements.txt`.
    pub(crate) async fn prepare(&self, python: &Path, code_dir: &Path) -> Result<Prepared> {
        let requirements = code_dir.join("requirements.txt");
        let contents = match tokio::fs::read(&requirements).await {
            Ok(contents) => contents,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prepared::default()),
            Err(e) => {
                return Err(Error::Prepare(format!(
                    "cannot read {}: {e}",
                    requirements.display()
                )));
            }
        };
        check_requirements(&contents)?;
        let hash = env_hash(python, &contents);
        let dir = self.root.join(&hash);
        let build_lock = lock(&self.building).entry(hash).or_default().clone();
        let _building = build_lock.lock().await;
        if tokio::fs::try_exists(dir.join(MARKER))
            .await
            .unwrap_or(false)
        {
            return Ok(Prepared {
                env_dir: Some(dir),
                reused: true,
            });
        }
        if let Err(e) = build(
            python,
            &dir,
            &requirements,
            has_requirements(&contents),
            code_dir,
        )
        .await
        {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        Ok(Prepared {
            env_dir: Some(dir),
            reused: false,
        })
    }
}

async fn build(
    python: &Path,
    dir: &Path,
    requirements: &Path,
    install: bool,
    code_dir: &Path,
) -> Result<()> {
    if tokio::fs::try_exists(dir).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(dir)
            .await
            .map_err(|e| Error::Prepare(format!("cannot remove {}: {e}", dir.display())))?;
    }
    let mut venv = tokio::process::Command::new(python);
    venv.arg("-m").arg("venv");
    if !install {
        // Nothing to install: skip bootstrapping pip (seconds).
        venv.arg("--without-pip");
    }
    venv.arg(dir);
    run(venv, "creating the virtualenv").await?;
    if install {
        let mut pip = tokio::process::Command::new(dir.join("bin").join("python"));
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(requirements)
        .current_dir(code_dir);
        run(pip, "pip install").await?;
    }
    tokio::fs::write(dir.join(MARKER), b"")
        .await
        .map_err(|e| Error::Prepare(format!("cannot write to {}: {e}", dir.display())))
}

/// How long creating a virtualenv or installing requirements may take.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Variables pip and venv get from the node's environment: what every
/// process of a function gets (`template::passed_on`: locale, proxies,
/// certificates), and the operator's choice of package index. No token or
/// secret of the node reaches a package's build scripts.
fn passed_to_pip(name: &std::ffi::OsStr) -> bool {
    const PIP: &[&str] = &[
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "PIP_CERT",
        "PIP_FIND_LINKS",
        "PIP_NO_INDEX",
    ];
    crate::template::passed_on(name) || name.to_str().is_some_and(|n| PIP.contains(&n))
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<()> {
    cmd.stdin(Stdio::null())
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| passed_to_pip(name)))
        .env("HOME", std::env::temp_dir())
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .kill_on_drop(true);
    let output = match tokio::time::timeout(PREPARE_TIMEOUT, cmd.output()).await {
        Ok(output) => output.map_err(|e| Error::Prepare(format!("{what} could not start: {e}")))?,
        Err(_) => {
            return Err(Error::Prepare(format!(
                "{what} took longer than {} minutes and was stopped",
                PREPARE_TIMEOUT.as_secs() / 60
            )));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(Error::Prepare(format!(
        "{what} failed ({}):\n{}",
        output.status,
        tail(text.trim(), OUTPUT_TAIL)
    )))
}

/// The cache key: the interpreter and the exact requirements text.
fn env_hash(python: &Path, requirements: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(python.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(requirements);
    hex::encode(hasher.finalize())
}

/// Refuses requirement lines that choose where packages come from or read
/// files of the node: the index is the operator's choice (`PIP_INDEX_URL`
/// on the node), not a function's.
fn check_requirements(contents: &[u8]) -> Result<()> {
    const OPTIONS: &[&str] = &[
        "-i",
        "--index-url",
        "--extra-index-url",
        "--no-index",
        "-f",
        "--find-links",
        "--trusted-host",
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-e",
        "--editable",
    ];
    let text = std::str::from_utf8(contents)
        .map_err(|_| Error::Prepare("requirements.txt is not UTF-8 text".into()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split([' ', '=', '\t']).next().unwrap_or("");
        let refused = OPTIONS.contains(&first)
            || line.contains("file:")
            || line.starts_with('/')
            || line.starts_with('.')
            || line.starts_with('~');
        if refused {
            return Err(Error::Prepare(format!(
                "requirements.txt line {}: `{line}` is not allowed; list packages only (name and version); the node's operator chooses the package index",
                n + 1
            )));
        }
    }
    Ok(())
}

/// True when the file names anything to install (not only blanks and comments).
fn has_requirements(contents: &[u8]) -> bool {
    String::from_utf8_lossy(contents).lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#')
    })
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blanks_need_no_install() {
        assert!(!has_requirements(b""));
        assert!(!has_requirements(b"# nothing\n\n   # really\n"));
        assert!(has_requirements(b"# deps\nrequests==2.0\n"));
    }

    #[test]
    fn hash_depends_on_interpreter_and_contents() {
        let a = env_hash(Path::new("/usr/bin/python3"), b"x==1");
        assert_eq!(a.len(), 64);
        assert_ne!(a, env_hash(Path::new("/usr/bin/python3"), b"x==2"));
        assert_ne!(a, env_hash(Path::new("/opt/python3"), b"x==1"));
    }

    #[test]
    fn requirements_name_packages_only() {
        assert!(check_requirements(b"numpy==2.1\nrequests>=2 # http\n\n# c\n").is_ok());
        for bad in [
            "--index-url https://evil.example/simple",
            "-i https://evil.example/simple",
            "--extra-index-url=https://evil.example",
            "-f /root/wheels",
            "--find-links https://evil.example",
            "--trusted-host evil.example",
            "-r /etc/shadow",
            "-e git+https://evil.example/x.git#egg=x",
            "x @ file:///etc/passwd",
            "/root/pkg.whl",
            "./local",
        ] {
            let err = check_requirements(format!("numpy\n{bad}\n").as_bytes()).unwrap_err();
            assert!(err.to_string().contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
    }
}
