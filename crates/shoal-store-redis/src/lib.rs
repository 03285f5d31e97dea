//! The store ports over Redis 7 / Valkey (issue 11), so several nodes can
//! share one store.
//!
//! Every key lives under a namespace (`shoal` by default, so several Shoal
//! clusters can share a Redis) and carries a hash tag, so each Lua script
//! touches one cluster slot (ready for Redis Cluster):
//!
//! | tag | module | what |
//! |---|---|---|
//! | `{catalog}` | `catalog` | functions, versions, refs, tokens, queue and limiter records, code archives, nodes |
//! | `{w}` | `invocations`, `queues`, `jobs` | invocation records, their indexes and logs; every queue's messages, leases, dead letters, counters, samples; jobs and their children's results |
//! | `{d:CATEGORY}` | `docs` | one category's record, shards and documents |
//!
//! The work state shares one slot because one job write touches invocation
//! records and the messages of several queues atomically; a cluster spreads
//! categories, not work. Each module's docs list its keys.
//!
//! Multi-key changes are Lua scripts (`redis::Script`: EVALSHA, loaded on
//! first use), so each is atomic. Scripts that several modules need (an
//! invocation record written with its indexes, a message enqueued) are Lua
//! snippets (`const &str`) the modules prepend to their own scripts.

mod catalog;
mod docs;
mod invocations;
mod jobs;
mod queues;
#[cfg(feature = "testing")]
pub mod testing;

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use shoal_store::{Error, Result};

/// What a Redis store needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://[user:pass@]host:port/db` (or `rediss://`).
    pub url: String,
    /// The prefix of every key, so several Shoal clusters can share a Redis.
    pub namespace: String,
}

/// The store ports on one Redis server (see the crate docs for what is
/// there so far).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) keys: Keys,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.keys.ns)
            .finish_non_exhaustive()
    }
}

/// What `check_server` found worth saying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNotes {
    /// False when the server keeps no append-only file: a crash of Redis
    /// loses what it acknowledged since its last snapshot.
    pub append_only: bool,
}

impl RedisStore {
    /// Connects (one multiplexed connection, shared by every call) and
    /// checks the server may hold Shoal's data.
    pub async fn connect(options: &Options) -> Result<(RedisStore, ServerNotes)> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| Error::Unavailable(format!("bad Redis URL: {e}")))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(unavailable)?;
        let store = RedisStore {
            conn,
            keys: Keys {
                ns: options.namespace.clone(),
            },
        };
        let notes = store.check_server().await?;
        Ok((store, notes))
    }

    /// Refuses a server that may evict keys (`maxmemory-policy` other than
    /// `noeviction`): an evicted key is lost data. Reports whether the
    /// append-only file is on.
    pub async fn check_server(&self) -> Result<ServerNotes> {
        let mut conn = self.conn.clone();
        let policy = config_get(&mut conn, "maxmemory-policy").await?;
        if policy != "noeviction" {
            return Err(Error::Unavailable(format!(
                "Redis has maxmemory-policy {policy}, which evicts keys (data would be lost); set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)"
            )));
        }
        let aof = config_get(&mut conn, "appendonly").await?;
        Ok(ServerNotes {
            append_only: aof == "yes",
        })
    }
}

async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    pair.into_iter()
        .nth(1)
        .ok_or_else(|| Error::Unavailable(format!("Redis did not answer CONFIG GET {name}")))
}

/// Key names: `NS:{tag}:what`.
#[derive(Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn catalog(&self, what: &str) -> String {
        format!("{}:{{catalog}}:{what}", self.ns)
    }
    pub(crate) fn function(&self, name: &str) -> String {
        self.catalog(&format!("fn:{name}"))
    }
    /// A key of the work state (invocations, queues, jobs): one slot.
    pub(crate) fn work(&self, what: &str) -> String {
        format!("{}:{{w}}:{what}", self.ns)
    }
    /// A key of one category's slot.
    pub(crate) fn category(&self, category: &str, what: &str) -> String {
        format!("{}:{{d:{category}}}:{what}", self.ns)
    }
}

pub(crate) fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("encoding a record: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}
