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
//! | `{q:QUERYID}` | `queries` | the partial results of one query spread over nodes |
//! | `{kv}` | `kv` | the key-value store: entries, their listing and expiry indexes, the version counter |
//! | `{blobs}` | `blobs`, `channels` | blob metadata, their listing index, the version counter, uploads in progress, garbage; fixed-size blobs' chunks; channels' streams and hashes (a publish may change a fixed-size blob in the same script) |
//! | `{bc:CID}` | `blobs` | the chunks of one uploaded content |
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
mod conn;

pub use conn::ConnectError;
mod blobs;
mod channels;
mod docs;
mod invocations;
mod jobs;
mod kv;
mod queries;
mod queues;
#[cfg(feature = "testing")]
pub mod testing;

use serde::Serialize;
use serde::de::DeserializeOwned;

use shoal_store::{Error, Result};

/// What a Redis store needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://[user:pass@]host:port/db`, or `rediss://...` for TLS.
    pub url: String,
    /// The prefix of every key, so several Shoal clusters can share a Redis.
    pub namespace: String,
    /// With `rediss://`: the PEM file of the certificate authority that
    /// signed the server's certificate; `None` trusts the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A directory on this node's disk for its cache of blob chunks (see
    /// the `blobs` module); `None`: no cache (`blob_files` answers `None`).
    /// Chunk files an earlier run left in it are deleted at connect.
    pub blob_cache_dir: Option<std::path::PathBuf>,
    /// The most bytes the blob chunk cache holds (at least one 1 MiB chunk
    /// is kept whatever the cap).
    pub blob_cache_bytes: u64,
}

/// The default `Options::blob_cache_bytes`: 1 GiB.
pub const DEFAULT_BLOB_CACHE_BYTES: u64 = 1 << 30;

/// The store ports on one Redis server (see the crate docs for what is
/// there so far).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: conn::Conn,
    pub(crate) keys: Keys,
    pub(crate) blob_cache: Option<std::sync::Arc<blobs::ChunkCache>>,
    /// Connections of `channel_wait`'s blocking reads (see `channels`).
    pub(crate) waiters: std::sync::Arc<channels::Waiters>,
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
    /// Connects (one connection, owned by a task that pipelines every call
    /// and reconnects by itself) and checks the server may hold Shoal's
    /// data.
    pub async fn connect(
        options: &Options,
    ) -> std::result::Result<(RedisStore, ServerNotes), ConnectError> {
        let store = RedisStore {
            conn: conn::Conn::open(&options.url, options.ca_file.as_deref()).await?,
            keys: Keys {
                ns: options.namespace.clone(),
            },
            blob_cache: match &options.blob_cache_dir {
                Some(dir) => Some(std::sync::Arc::new(
                    blobs::ChunkCache::open(dir, options.blob_cache_bytes).map_err(|e| {
                        ConnectError::Rejected(format!(
                            "cannot use the blob cache directory {}: {e}",
                            dir.display()
                        ))
                    })?,
                )),
                None => None,
            },
            waiters: Default::default(),
        };
        let notes = store.check_server().await.map_err(|e| match e {
            Error::Unavailable(m) if m.contains("maxmemory-policy") => ConnectError::Rejected(m),
            Error::Unavailable(m)
                if ["NOAUTH", "WRONGPASS", "NOPERM"]
                    .iter()
                    .any(|c| m.contains(c)) =>
            {
                ConnectError::Rejected(format!(
                    "Redis refused the credentials ({m}); check the user and password in the URL"
                ))
            }
            other => ConnectError::Unreachable(other.to_string()),
        })?;
        Ok((store, notes))
    }

    /// Refuses a server that may evict keys (`maxmemory-policy` other than
    /// `noeviction`): an evicted key is lost data. Reports whether the
    /// append-only file is on. Reads `INFO` (allowed where `CONFIG` is not,
    /// as on managed services).
    pub async fn check_server(&self) -> Result<ServerNotes> {
        let memory = self.info("memory").await?;
        let policy = info_field(&memory, "maxmemory_policy").unwrap_or("noeviction");
        if policy != "noeviction" {
            return Err(Error::Unavailable(format!(
                "Redis has maxmemory-policy {policy}, which evicts keys (data would be lost); set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)"
            )));
        }
        let persistence = self.info("persistence").await?;
        Ok(ServerNotes {
            append_only: info_field(&persistence, "aof_enabled") == Some("1"),
        })
    }

    /// One section of `INFO`.
    pub async fn info(&self, section: &str) -> Result<String> {
        self.conn
            .query(redis::cmd("INFO").arg(section).clone())
            .await
    }
}

/// A `field:value` line of an `INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
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
    /// A key of the key-value store (one slot: see `kv`).
    pub(crate) fn kv(&self, what: &str) -> String {
        format!("{}:{{kv}}:{what}", self.ns)
    }
    /// A key of the blobs' slot (metadata, index, bookkeeping, fixed-size
    /// chunks: see `blobs`).
    pub(crate) fn blobs(&self, what: &str) -> String {
        format!("{}:{{blobs}}:{what}", self.ns)
    }
    /// Chunk `index` of an uploaded content, in the content's own slot.
    pub(crate) fn blob_chunk(&self, cid: &str, index: u64) -> String {
        format!("{}:{{bc:{cid}}}:{index}", self.ns)
    }
    /// A key of one category's slot.
    pub(crate) fn category(&self, category: &str, what: &str) -> String {
        format!("{}:{{d:{category}}}:{what}", self.ns)
    }
}

/// The `ZRANGEBYLEX` bounds of the members starting with `prefix`,
/// strictly after `after` when that sorts at or past the prefix. Members
/// are UTF-8 (keys, blob keys, channel names), which never holds the byte
/// 0xff: every member with the prefix sorts before prefix ++ 0xff, and no
/// other member between.
pub(crate) fn lex_range(prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let min = match after {
        Some(a) if a >= prefix => [b"(", a.as_bytes()].concat(),
        _ if prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", prefix.as_bytes()].concat(),
    };
    let max = if prefix.is_empty() {
        b"+".to_vec()
    } else {
        [b"(", prefix.as_bytes(), &[0xff]].concat()
    };
    (min, max)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("encoding a record: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}
