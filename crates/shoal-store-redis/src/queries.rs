//! Partial results of queries whose shards run on several nodes (the
//! `Docs::put_query_part` family; the engine's `querydist`).
//!
//! | key | type | what |
//! |---|---|---|
//! | `NS:{q:QUERYID}:parts` | hash | shard number (decimal) → the shard's partial result, raw bytes |
//!
//! One hash per query, under a tag of its own, so a cluster spreads queries
//! over slots. A partial is written with `HSETNX` (the first write wins: a
//! shard run twice counts once) and the hash's expiry is pushed to `ttl_ms`
//! from now in the same script, so the partials of a query whose origin
//! died go away by themselves. The origin reads the shards it still waits
//! for with one `HMGET` and deletes the hash when it is done.

use std::sync::LazyLock;

use shoal_store::{Pending, Result};

use crate::RedisStore;
use crate::conn::{Lua, arg};

/// KEYS: the parts hash. ARGV: shard, body, ttl in ms. 1 when stored.
static PUT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local stored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return stored
",
    )
});

fn parts_key(store: &RedisStore, query_id: &str) -> String {
    format!("{}:{{q:{query_id}}}:parts", store.keys.ns)
}

pub(crate) fn put(
    store: &RedisStore,
    query_id: &str,
    shard: u32,
    part: Vec<u8>,
    ttl_ms: u64,
) -> Pending<bool> {
    let stored = store.conn.script::<i64>(
        &PUT,
        vec![parts_key(store, query_id)],
        vec![arg(shard), part, arg(ttl_ms.max(1))],
    );
    Box::pin(async move { Ok(stored.await? == 1) })
}

pub(crate) fn get(
    store: &RedisStore,
    query_id: &str,
    shards: Vec<u32>,
) -> Pending<Vec<Option<Vec<u8>>>> {
    if shards.is_empty() {
        return Box::pin(std::future::ready(Ok(Vec::new())));
    }
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(parts_key(store, query_id));
    for shard in &shards {
        cmd.arg(*shard);
    }
    let parts = store.conn.query::<Vec<Option<Vec<u8>>>>(cmd);
    Box::pin(async move {
        let parts: Result<Vec<Option<Vec<u8>>>> = parts.await;
        let parts = parts?;
        if parts.len() != shards.len() {
            return Err(shoal_store::Error::Corrupt(format!(
                "HMGET of {} shards answered {} values",
                shards.len(),
                parts.len()
            )));
        }
        Ok(parts)
    })
}

pub(crate) fn drop_all(store: &RedisStore, query_id: &str) -> Pending<()> {
    let done = store
        .conn
        .query::<i64>(redis::cmd("DEL").arg(parts_key(store, query_id)).clone());
    Box::pin(async move {
        done.await?;
        Ok(())
    })
}
