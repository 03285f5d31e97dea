//! The node in its cluster: its identity, its heartbeat into the store, the
//! list of nodes sharing the store.
//!
//! Nodes sharing a store (Redis) need no coordinator: each writes its own
//! heartbeat record every `heartbeat` and lists the others from the store.
//! A node whose heartbeat is older than three intervals is shown as `lost`
//! (its leased work is redelivered when the leases lapse, whatever the list
//! says); records silent for a day are removed by whichever node looks.
//! With a store only one node uses, the list is that node.

use std::sync::Arc;
use std::time::Duration;

use shoal_store::NodeRecord;

use crate::env::Env;
use crate::error::Result;

/// How long a node's record stays after its last heartbeat.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub record: NodeRecord,
    /// This very node.
    pub this: bool,
    /// Its heartbeat is recent.
    pub alive: bool,
}

/// This node's identity and heartbeat.
pub(crate) struct Cluster {
    env: Arc<Env>,
    id: String,
    started_at_ms: u64,
}

impl Cluster {
    pub(crate) fn new(env: Arc<Env>) -> Cluster {
        let started_at_ms = env.now_ms();
        Cluster {
            env,
            // The random end of a v7 UUID (its start is the time).
            id: uuid::Uuid::now_v7().simple().to_string()[20..].to_string(),
            started_at_ms,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// This node's record as of now.
    pub(crate) fn record(&self, running: u64, workers: u64) -> NodeRecord {
        NodeRecord {
            id: self.id.clone(),
            address: self.env.opts.node.address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: self.started_at_ms,
            last_seen_ms: self.env.now_ms(),
            running,
            workers,
            load: load_average(),
        }
    }

    /// Every node sharing the store (this one first), with whether each is
    /// alive. Forgets records silent for a day.
    pub(crate) async fn nodes(&self, me: NodeRecord) -> Result<Vec<NodeView>> {
        let now = self.env.now_ms();
        let heartbeat = self.env.opts.node.heartbeat.as_millis() as u64;
        let mut out = vec![NodeView {
            record: me,
            this: true,
            alive: true,
        }];
        for record in self.env.backend.catalog.nodes().await? {
            if record.id == self.id {
                continue;
            }
            let silent = now.saturating_sub(record.last_seen_ms);
            if silent > FORGET_AFTER.as_millis() as u64 {
                let _ = self.env.backend.catalog.remove_node(&record.id).await;
                continue;
            }
            out.push(NodeView {
                alive: silent <= 3 * heartbeat,
                record,
                this: false,
            });
        }
        Ok(out)
    }
}

/// The one-minute load average, from /proc/loadavg.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
