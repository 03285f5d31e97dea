//! The store ports over Redis 7 / Valkey (issue 11), so several nodes can
//! share one store. **In progress**: the catalog port (functions and their
//! versions and refs, tokens, queue and limiter records) is here and passes
//! the catalog cases of the conformance suite against a real
//! `redis-server`; invocations, queues, documents and jobs are not yet, so
//! a node cannot run on Redis yet.
//!
//! Keys live under a namespace (`shoal` by default). Every key of the
//! catalog carries the hash tag `{catalog}`, so each Lua script touches one
//! cluster slot (the catalog is small; one slot holds it):
//!
//! | key | type | what |
//! |---|---|---|
//! | `NS:{catalog}:fn:NAME` | hash | version → function record (JSON) |
//! | `NS:{catalog}:fn-last` | hash | name → last version given out (kept after a remove: versions are never reused) |
//! | `NS:{catalog}:fn-names` | set | names of deployed functions |
//! | `NS:{catalog}:fn-refs` | hash | name → live pin and aliases (JSON) |
//! | `NS:{catalog}:tokens` | hash | token id → record (JSON) |
//! | `NS:{catalog}:token-secrets` | hash | secret's SHA-256 → token id |
//! | `NS:{catalog}:queues`, `:limiters` | hash | name → record (JSON) |
//!
//! Multi-key changes are Lua scripts (`redis::Script`: EVALSHA, loaded on
//! first use), so each is atomic.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use shoal_store::{
    Catalog, Error, FunctionRecord, FunctionRefs, LimiterRecord, Pending, QueueRecord, Result,
    TokenRecord,
};

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
    conn: MultiplexedConnection,
    keys: Keys,
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

#[derive(Clone)]
struct Keys {
    ns: String,
}

impl Keys {
    fn catalog(&self, what: &str) -> String {
        format!("{}:{{catalog}}:{what}", self.ns)
    }
    fn function(&self, name: &str) -> String {
        self.catalog(&format!("fn:{name}"))
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// A function's versions from its hash (version → JSON), oldest first. The
/// version is the hash field: the stored JSON's own is not trusted.
fn versions_of(name: &str, fields: BTreeMap<String, String>) -> Result<Vec<FunctionRecord>> {
    let mut out = Vec::with_capacity(fields.len());
    for (field, json) in fields {
        let version: u64 = field
            .parse()
            .map_err(|_| Error::Corrupt(format!("function {name}: version field {field:?}")))?;
        let mut record: FunctionRecord = decode(&format!("function {name}@{version}"), &json)?;
        record.version = version;
        out.push(record);
    }
    out.sort_by_key(|r| r.version);
    Ok(out)
}

/// Every value of a hash, decoded, in the order of its fields.
async fn hash_values<T: DeserializeOwned>(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<Vec<T>> {
    let all: BTreeMap<String, String> = conn.hgetall(key).await.map_err(unavailable)?;
    all.iter()
        .map(|(field, json)| decode(&format!("{key} {field}"), json))
        .collect()
}

/// Gives the next version of a function (never reused) and stores it.
const DEPLOY: &str = r"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[2], v, ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return v
";

/// Removes every version of a function and its refs; 1 when it existed.
const REMOVE_FUNCTION: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
";

/// Stores a token and its secret's index entry; a token stored again with
/// a new secret no longer answers to the old one.
const PUT_TOKEN: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local previous = cjson.decode(old).secret_sha256
  if previous ~= ARGV[2] then redis.call('HDEL', KEYS[2], previous) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
";

/// Removes a token and its secret's index entry; 1 when it existed.
const REVOKE_TOKEN: &str = r"
local json = redis.call('HGET', KEYS[1], ARGV[1])
if not json then return 0 end
local token = cjson.decode(json)
redis.call('HDEL', KEYS[2], token.secret_sha256)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
";

impl Catalog for RedisStore {
    fn deploy_function(&self, record: FunctionRecord) -> Pending<u64> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move {
            let name = record.name.to_string();
            let json = encode(&record)?;
            redis::Script::new(DEPLOY)
                .key(keys.catalog("fn-last"))
                .key(keys.function(&name))
                .key(keys.catalog("fn-names"))
                .arg(&name)
                .arg(json)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>> {
        let versions = self.function_versions(name);
        Box::pin(async move { Ok(versions.await?.pop()) })
    }

    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>> {
        let (mut conn, keys, name) = (self.conn.clone(), self.keys.clone(), name.to_string());
        Box::pin(async move {
            let json: Option<String> = conn
                .hget(keys.function(&name), version)
                .await
                .map_err(unavailable)?;
            let Some(json) = json else { return Ok(None) };
            let fields = BTreeMap::from([(version.to_string(), json)]);
            Ok(versions_of(&name, fields)?.pop())
        })
    }

    fn functions(&self) -> Pending<Vec<FunctionRecord>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move {
            let mut names: Vec<String> = conn
                .smembers(keys.catalog("fn-names"))
                .await
                .map_err(unavailable)?;
            names.sort();
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let fields: BTreeMap<String, String> = conn
                    .hgetall(keys.function(&name))
                    .await
                    .map_err(unavailable)?;
                // Removed between the two reads: not listed.
                if let Some(latest) = versions_of(&name, fields)?.pop() {
                    out.push(latest);
                }
            }
            Ok(out)
        })
    }

    fn remove_function(&self, name: &str) -> Pending<bool> {
        let (mut conn, keys, name) = (self.conn.clone(), self.keys.clone(), name.to_string());
        Box::pin(async move {
            let removed: i64 = redis::Script::new(REMOVE_FUNCTION)
                .key(keys.function(&name))
                .key(keys.catalog("fn-names"))
                .key(keys.catalog("fn-refs"))
                .arg(&name)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(removed > 0)
        })
    }

    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>> {
        let (mut conn, keys, name) = (self.conn.clone(), self.keys.clone(), name.to_string());
        Box::pin(async move {
            let fields: BTreeMap<String, String> = conn
                .hgetall(keys.function(&name))
                .await
                .map_err(unavailable)?;
            versions_of(&name, fields)
        })
    }

    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move {
            let json = encode(&refs)?;
            let () = conn
                .hset(keys.catalog("fn-refs"), refs.name.to_string(), json)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn function_refs(&self) -> Pending<Vec<FunctionRefs>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move { hash_values(&mut conn, &keys.catalog("fn-refs")).await })
    }

    fn put_token(&self, token: TokenRecord) -> Pending<()> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move {
            let json = encode(&token)?;
            let _: i64 = redis::Script::new(PUT_TOKEN)
                .key(keys.catalog("tokens"))
                .key(keys.catalog("token-secrets"))
                .arg(&token.id)
                .arg(&token.secret_sha256)
                .arg(json)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        let sha = secret_sha256.to_string();
        Box::pin(async move {
            let id: Option<String> = conn
                .hget(keys.catalog("token-secrets"), &sha)
                .await
                .map_err(unavailable)?;
            let Some(id) = id else { return Ok(None) };
            let json: Option<String> = conn
                .hget(keys.catalog("tokens"), &id)
                .await
                .map_err(unavailable)?;
            let token: Option<TokenRecord> = json
                .map(|j| decode(&format!("token {id}"), &j))
                .transpose()?;
            // The index and the record are written together; a record that
            // answers to another secret is not this one's.
            Ok(token.filter(|t| t.secret_sha256 == sha))
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move { hash_values(&mut conn, &keys.catalog("tokens")).await })
    }

    fn revoke_token(&self, id: &str) -> Pending<bool> {
        let (mut conn, keys, id) = (self.conn.clone(), self.keys.clone(), id.to_string());
        Box::pin(async move {
            let removed: i64 = redis::Script::new(REVOKE_TOKEN)
                .key(keys.catalog("tokens"))
                .key(keys.catalog("token-secrets"))
                .arg(&id)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(removed > 0)
        })
    }

    fn put_queue(&self, queue: QueueRecord) -> Pending<()> {
        self.put_record("queues", queue.name.clone(), encode(&queue))
    }

    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>> {
        self.get_record("queues", name)
    }

    fn queues(&self) -> Pending<Vec<QueueRecord>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move { hash_values(&mut conn, &keys.catalog("queues")).await })
    }

    fn remove_queue(&self, name: &str) -> Pending<bool> {
        self.remove_record("queues", name)
    }

    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()> {
        self.put_record("limiters", limiter.name.clone(), encode(&limiter))
    }

    fn limiters(&self) -> Pending<Vec<LimiterRecord>> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move { hash_values(&mut conn, &keys.catalog("limiters")).await })
    }

    fn remove_limiter(&self, name: &str) -> Pending<bool> {
        self.remove_record("limiters", name)
    }
}

impl RedisStore {
    /// Stores a named record in one of the catalog's hashes.
    fn put_record(&self, hash: &'static str, name: String, json: Result<String>) -> Pending<()> {
        let (mut conn, keys) = (self.conn.clone(), self.keys.clone());
        Box::pin(async move {
            let () = conn
                .hset(keys.catalog(hash), name, json?)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    /// A named record from one of the catalog's hashes.
    fn get_record<T: DeserializeOwned + Send + 'static>(
        &self,
        hash: &'static str,
        name: &str,
    ) -> Pending<Option<T>> {
        let (mut conn, keys, name) = (self.conn.clone(), self.keys.clone(), name.to_string());
        Box::pin(async move {
            let json: Option<String> = conn
                .hget(keys.catalog(hash), &name)
                .await
                .map_err(unavailable)?;
            json.map(|j| decode(&format!("{hash} {name}"), &j))
                .transpose()
        })
    }

    /// Removes a named record; true when it existed.
    fn remove_record(&self, hash: &'static str, name: &str) -> Pending<bool> {
        let (mut conn, keys, name) = (self.conn.clone(), self.keys.clone(), name.to_string());
        Box::pin(async move {
            let n: i64 = conn
                .hdel(keys.catalog(hash), &name)
                .await
                .map_err(unavailable)?;
            Ok(n > 0)
        })
    }
}
