//! `shoal tokens recover`: a new admin token for a stopped node, written
//! straight into its store and its `admin.token` file.
//!
//! It works only on the node's machine, for whoever can open the data
//! directory (mode 0700, the node's owner): there is no HTTP path to it.
//! The store's lock refuses it while a node has the directory open.

use std::path::Path;

use anyhow::{Context, Result};

use shoal_store::Backend;
use shoal_store_redb::RedbStore;
use shoal_types::Role;

use crate::output::{Out, fail_hint};
use crate::serve::{TOKEN_FILE, write_private};
use shoal_client::protocol::ErrorCode;

/// Writes a new admin token into the stopped node's store under `data_dir`
/// and into `data_dir/admin.token`; prints where. The secret is only in
/// that file (mode 0600), never on the terminal.
pub async fn run(data_dir: &Path, name: &str, out: Out) -> Result<()> {
    let store_path = data_dir.join("shoal.redb");
    if !store_path.exists() {
        return Err(fail_hint(
            ErrorCode::InvalidInput,
            format!(
                "{} holds no node's data (no shoal.redb)",
                data_dir.display()
            ),
            "give the --data-dir the node runs with",
        ));
    }
    let store = RedbStore::open(&store_path).map_err(|e| {
        fail_hint(
            ErrorCode::Unavailable,
            format!("cannot open the store in {}: {e}", data_dir.display()),
            "stop the node first (recovery writes into its store), and run this as the user that owns the data directory",
        )
    })?;
    let backend = Backend::from_adapter(store.clone());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("reading the clock")?
        .as_millis() as u64;
    let (record, secret) = shoal_engine::mint_token(Role::Admin, name, now_ms);
    let id = record.id.clone();
    backend
        .catalog
        .put_token(record)
        .await
        .context("writing the new admin token")?;
    drop(backend);
    store.close();
    let path = data_dir.join(TOKEN_FILE);
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    out.print(
        &serde_json::json!({"id": id, "role": "admin", "token_file": path}),
        || {
            format!(
                "Created admin token {id} and wrote it to {} (mode 0600). Start the node again; the CLI reads that file when run in the data directory's parent, or pass it with --token.",
                path.display()
            )
        },
    );
    Ok(())
}
