//! Shared fixture of the runtime's tests: a `PythonRuntime` on a temp work
//! directory, and function directories written from a code string.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::Deployment;
use shoal_runtime_python::{Options, PythonRuntime, Sandbox};
use shoal_types::Limits;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rt: Arc<PythonRuntime>,
}

pub fn fixture() -> Fixture {
    fixture_with(|_| {})
}

pub fn fixture_with(configure: impl FnOnce(&mut Options)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(dir.path().join("work"));
    // Tests record what functions did in temporary files: let them write
    // there (tests/sandbox.rs checks the standard sandbox on its own).
    options.sandbox = Some(Sandbox::standard().allow_write(std::env::temp_dir()));
    configure(&mut options);
    let rt = PythonRuntime::new(options).unwrap();
    Fixture { dir, rt }
}

pub fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        memory_mb: 256,
        concurrency: 2,
    }
}

impl Fixture {
    /// Writes `main.py` into a fresh function directory and returns its deployment.
    pub fn deploy(&self, key: &str, code: &str) -> Deployment {
        self.deploy_with(key, code, limits())
    }

    pub fn deploy_with(&self, key: &str, code: &str, limits: Limits) -> Deployment {
        let code_dir = self
            .dir
            .path()
            .join("functions")
            .join(key.replace('@', "-"));
        std::fs::create_dir_all(&code_dir).unwrap();
        std::fs::write(code_dir.join("main.py"), code).unwrap();
        Deployment {
            key: key.to_string(),
            code_dir,
            handler: "main:handler".into(),
            env_dir: None,
            limits,
            network: shoal_types::Network::Host,
            code_digest: None,
            env: Default::default(),
            max_invocations_per_worker: None,
        }
    }
}
