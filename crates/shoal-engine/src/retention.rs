//! Retention: finished invocation records and their logs are kept for
//! `Options::retention` after they finish, then a background sweep deletes
//! them. Records still queued or running are never deleted.
//!
//! The sweep walks the records in small steps (`Invocations::
//! purge_invocations`), yielding between steps, so it never holds the store
//! for long, and stops at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::env::Env;

/// Records looked at per step of a sweep.
const STEP: usize = 1_000;

/// Starts the sweep on the engine's task set, one every
/// `Options::retention_sweep`, unless retention is off.
pub(crate) fn start(env: Arc<Env>) {
    let Some(keep) = env.opts.retention else {
        return;
    };
    let tasks = env.tasks.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(env.opts.retention_sweep) => {}
                _ = env.tasks.stopping() => return,
            }
            sweep(&env, keep).await;
        }
    });
}

/// One sweep over every record: deletes those that finished more than
/// `keep` ago. Returns how many it deleted.
async fn sweep(env: &Env, keep: Duration) -> u64 {
    let before_ms = env.now_ms().saturating_sub(keep.as_millis() as u64);
    let (mut deleted, mut after) = (0, None::<String>);
    while !env.tasks.is_stopping() {
        let step = env
            .backend
            .invocations
            .purge_invocations(before_ms, after.as_deref(), STEP)
            .await;
        match step {
            Ok(p) => {
                deleted += p.deleted;
                after = p.next;
                if after.is_none() {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "Deleting invocation records past retention failed; the next sweep tries again.");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    if deleted > 0 {
        info!(
            deleted,
            retention_s = keep.as_secs(),
            "Deleted invocation records past retention."
        );
        metrics::counter!("shoal_invocations_expired_total").increment(deleted);
    }
    deleted
}
