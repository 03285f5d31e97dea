//! Architecture checks: each crate depends only on the workspace crates the
//! layer table in ARCHITECTURE.md allows.

use std::path::Path;

const ALLOWED: &[(&str, &[&str])] = &[
    ("shoal-types", &[]),
    ("shoal-protocol", &[]),
    ("shoal-store", &["shoal-types"]),
    ("shoal-runtime", &["shoal-types"]),
    ("shoal-store-redb", &["shoal-store", "shoal-types"]),
    ("shoal-store-redis", &["shoal-store", "shoal-types"]),
    ("shoal-runtime-python", &["shoal-runtime", "shoal-types"]),
    (
        "shoal-engine",
        &["shoal-store", "shoal-runtime", "shoal-types"],
    ),
    (
        "shoal-server",
        &["shoal-engine", "shoal-protocol", "shoal-types"],
    ),
    ("shoal-client", &["shoal-protocol"]),
];

/// Workspace crates named in a manifest's `[dependencies]` section.
fn workspace_deps(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        let name = line.split(['.', '=', ' ']).next().unwrap_or("");
        if in_deps && name.starts_with("shoal") {
            deps.push(name.to_string());
        }
    }
    deps
}

#[test]
fn crates_respect_the_layer_table() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, allowed) in ALLOWED {
        let manifest = std::fs::read_to_string(crates.join(name).join("Cargo.toml")).unwrap();
        for dep in workspace_deps(&manifest) {
            assert!(
                allowed.contains(&dep.as_str()),
                "{name} depends on {dep}; ARCHITECTURE.md allows only {allowed:?}"
            );
        }
    }
}

#[test]
fn every_crate_is_in_the_table() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(crates).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "shoal" || name == "shoal-bench" {
            continue;
        }
        assert!(
            ALLOWED.iter().any(|(n, _)| *n == name),
            "add {name} to the layer table"
        );
    }
}
