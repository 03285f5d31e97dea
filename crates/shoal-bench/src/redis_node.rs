//! A second node on the Redis store, for the phases that measure both
//! stores (blobs, bitfield): a `redis-server` started by the bench with the
//! cluster phase's persistence (`--appendonly yes --appendfsync everysec`,
//! no RDB snapshots), and `shoal serve --store redis://...` on it with its
//! own data directory (its blob chunk cache lives there). Both stop on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::celery::Redis;
use crate::node::{Ctx, Node};

/// How to start the Redis side of a phase.
pub struct Spec {
    pub shoal: PathBuf,
    pub redis_server: PathBuf,
    /// Why redis-server could not be installed (`scripts/bench`).
    pub missing: Option<String>,
    pub node_log: String,
}

/// The persistence of the cluster phase's redis-server.
pub const AOF_EVERYSEC: [&str; 6] = [
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
];

pub struct RedisNode {
    pub ctx: Ctx,
    // Dropped in this order: the node first, then Redis.
    _node: Node,
    _redis: Redis,
}

impl RedisNode {
    /// Starts redis-server in `dir/redis` and a node on it in `dir/node`.
    pub async fn start(spec: &Spec, dir: &Path) -> Result<RedisNode> {
        if let Some(why) = spec.missing.as_ref().filter(|w| w.contains("redis-server")) {
            bail!("redis-server is missing: {why}");
        }
        let redis =
            Redis::start_with(&spec.redis_server, &dir.join("redis"), &AOF_EVERYSEC).await?;
        let node_dir = dir.join("node");
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let extra = vec!["--store".to_string(), redis.url.clone()];
        let node = Node::start(&spec.shoal, &node_dir, &spec.node_log, &extra)
            .context("starting a node on the redis-server")?;
        let ctx = Ctx::for_node(&node, true)?;
        Ok(RedisNode {
            ctx,
            _node: node,
            _redis: redis,
        })
    }
}
