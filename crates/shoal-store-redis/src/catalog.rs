//! The catalog port: functions and their versions and refs, tokens, queue
//! and limiter records, code archives and node heartbeats, all under the
//! hash tag `{catalog}` (small: one slot holds it).
//!
//! | key | type | what |
//! |---|---|---|
//! | `NS:{catalog}:fn:NAME` | hash | version → function record (JSON) |
//! | `NS:{catalog}:fn-last` | hash | name → last version given out (kept after a remove: versions are never reused) |
//! | `NS:{catalog}:fn-names` | set | names of deployed functions |
//! | `NS:{catalog}:fn-refs` | hash | name → live pin and aliases (JSON) |
//! | `NS:{catalog}:tokens` | hash | token id → record (JSON) |
//! | `NS:{catalog}:token-secrets` | hash | secret's SHA-256 → token id |
//! | `NS:{catalog}:queues`, `:limiters`, `:users` | hash | name → record (JSON) |
//! | `NS:{catalog}:generation` | string | bumped by every write above, in the same script: nodes poll it to notice others' changes |
//! | `NS:{catalog}:code:SHA256` | string | a function's code archive (tar), by content |
//! | `NS:{catalog}:nodes` | hash | node id → heartbeat record (JSON) |
//! | `NS:{catalog}:secrets` | hash | `version` (a counter) and `sealed` (the engine's ciphertext of every secret, opaque bytes); written only by a compare-and-set on `version` that bumps `generation` in the same script |
//! | `NS:{catalog}:gcra:NAME` | string | a rate limiter's theoretical arrival time (GCRA, on Redis's clock; expires once idle) |

use std::collections::BTreeMap;

use std::sync::LazyLock;

use serde::de::DeserializeOwned;

use shoal_store::{
    Catalog, Error, FunctionRecord, FunctionRefs, LimiterRecord, NodeRecord, Pending, QueueRecord,
    Result, SealedSecrets, TokenRate, TokenRecord, Tokens, UserRecord,
};

use crate::conn::{Lua, arg};
use crate::{RedisStore, decode, encode};

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

/// Every value of a hash (field → JSON), decoded, in field order.
fn hash_values<T: DeserializeOwned>(key: &str, all: BTreeMap<String, String>) -> Result<Vec<T>> {
    all.iter()
        .map(|(field, json)| decode(&format!("{key} {field}"), json))
        .collect()
}

/// Gives the next version of a function (never reused) and stores it.
static DEPLOY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[2], v, ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return v
",
    )
});

/// Removes every version of a function and its refs; 1 when it existed.
static REMOVE_FUNCTION: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return n
",
    )
});

/// Stores a token and its secret's index entry; a token stored again with
/// a new secret no longer answers to the old one.
static PUT_TOKEN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local previous = cjson.decode(old).secret_sha256
  if previous ~= ARGV[2] then redis.call('HDEL', KEYS[2], previous) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
",
    )
});

/// Sets a field of a catalog hash; bumps the generation.
static SET_FIELD: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
",
    )
});

/// Removes a field of a catalog hash; bumps the generation when it
/// existed. 1 when it existed.
static REMOVE_FIELD: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[2]) end
return n
",
    )
});

/// GCRA on Redis's clock: KEYS[1] holds the limiter's theoretical arrival
/// time (ms, as text with three decimals). ARGV: interval ms, window ms,
/// tokens wanted, 1 to only count. Returns {granted, wait ms}.
static TAKE_TOKENS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - window > now then
  return {0, math.ceil(tat - window - now)}
end
local n = math.floor((now + window - tat) / interval) + 1
if n > want then n = want end
if ARGV[4] ~= '1' and n > 0 then
  local next = tat + n * interval
  -- Forgotten once it no longer holds anything back.
  local ttl = math.ceil(next - now) + 1000
  redis.call('SET', KEYS[1], string.format('%.3f', next), 'PX', ttl)
end
return {n, 0}
",
    )
});

/// Replaces the sealed secrets if their version is still ARGV[1]; bumps the
/// generation. The new version, or -1 when the version moved.
static PUT_SECRETS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
v = v + 1
redis.call('HSET', KEYS[1], 'version', v, 'sealed', ARGV[2])
redis.call('INCR', KEYS[2])
return v
",
    )
});

/// Removes a token and its secret's index entry; 1 when it existed.
static REVOKE_TOKEN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local json = redis.call('HGET', KEYS[1], ARGV[1])
if not json then return 0 end
local token = cjson.decode(json)
redis.call('HDEL', KEYS[2], token.secret_sha256)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
",
    )
});

impl Catalog for RedisStore {
    fn deploy_function(&self, record: FunctionRecord) -> Pending<u64> {
        let name = record.name.to_string();
        let json = match encode(&record) {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let keys = vec![
            self.keys.catalog("fn-last"),
            self.keys.function(&name),
            self.keys.catalog("fn-names"),
            self.keys.catalog("generation"),
        ];
        self.conn.script(&DEPLOY, keys, vec![arg(&name), arg(json)])
    }

    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>> {
        let versions = self.function_versions(name);
        Box::pin(async move { Ok(versions.await?.pop()) })
    }

    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>> {
        let json = self.conn.query::<Option<String>>(
            redis::cmd("HGET")
                .arg(self.keys.function(name))
                .arg(version)
                .clone(),
        );
        let name = name.to_string();
        Box::pin(async move {
            let Some(json) = json.await? else {
                return Ok(None);
            };
            let fields = BTreeMap::from([(version.to_string(), json)]);
            Ok(versions_of(&name, fields)?.pop())
        })
    }

    fn functions(&self) -> Pending<Vec<FunctionRecord>> {
        let names = self.conn.query::<Vec<String>>(
            redis::cmd("SMEMBERS")
                .arg(self.keys.catalog("fn-names"))
                .clone(),
        );
        let store = self.clone();
        Box::pin(async move {
            let mut names = names.await?;
            names.sort();
            // One pipeline: every function's versions asked at once.
            let reads: Vec<_> = names.iter().map(|n| store.function_versions(n)).collect();
            let mut out = Vec::with_capacity(names.len());
            for read in reads {
                // Removed between the two reads: not listed.
                if let Some(latest) = read.await?.pop() {
                    out.push(latest);
                }
            }
            Ok(out)
        })
    }

    fn remove_function(&self, name: &str) -> Pending<bool> {
        let keys = vec![
            self.keys.function(name),
            self.keys.catalog("fn-names"),
            self.keys.catalog("fn-refs"),
            self.keys.catalog("generation"),
        ];
        let removed = self
            .conn
            .script::<i64>(&REMOVE_FUNCTION, keys, vec![arg(name)]);
        Box::pin(async move { Ok(removed.await? > 0) })
    }

    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>> {
        let fields = self.conn.query::<BTreeMap<String, String>>(
            redis::cmd("HGETALL").arg(self.keys.function(name)).clone(),
        );
        let name = name.to_string();
        Box::pin(async move { versions_of(&name, fields.await?) })
    }

    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()> {
        self.put_record("fn-refs", refs.name.to_string(), encode(&refs))
    }

    fn function_refs(&self) -> Pending<Vec<FunctionRefs>> {
        self.records("fn-refs")
    }

    fn put_token(&self, token: TokenRecord) -> Pending<()> {
        let json = match encode(&token) {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let keys = vec![
            self.keys.catalog("tokens"),
            self.keys.catalog("token-secrets"),
            self.keys.catalog("generation"),
        ];
        let args = vec![arg(&token.id), arg(&token.secret_sha256), arg(json)];
        let put = self.conn.script::<i64>(&PUT_TOKEN, keys, args);
        Box::pin(async move {
            put.await?;
            Ok(())
        })
    }

    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>> {
        let id = self.conn.query::<Option<String>>(
            redis::cmd("HGET")
                .arg(self.keys.catalog("token-secrets"))
                .arg(secret_sha256)
                .clone(),
        );
        let (store, sha) = (self.clone(), secret_sha256.to_string());
        Box::pin(async move {
            let Some(id) = id.await? else { return Ok(None) };
            let token: Option<TokenRecord> = store.get_record("tokens", &id).await?;
            // The index and the record are written together; a record that
            // answers to another secret is not this one's.
            Ok(token.filter(|t| t.secret_sha256 == sha))
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        self.records("tokens")
    }

    fn revoke_token(&self, id: &str) -> Pending<bool> {
        let keys = vec![
            self.keys.catalog("tokens"),
            self.keys.catalog("token-secrets"),
            self.keys.catalog("generation"),
        ];
        let removed = self.conn.script::<i64>(&REVOKE_TOKEN, keys, vec![arg(id)]);
        Box::pin(async move { Ok(removed.await? > 0) })
    }

    fn put_user(&self, user: UserRecord) -> Pending<()> {
        self.put_record("users", user.name.clone(), encode(&user))
    }

    fn user(&self, name: &str) -> Pending<Option<UserRecord>> {
        self.get_record("users", name)
    }

    fn users(&self) -> Pending<Vec<UserRecord>> {
        self.records("users")
    }

    fn delete_user(&self, name: &str) -> Pending<bool> {
        self.remove_record("users", name)
    }

    fn put_queue(&self, queue: QueueRecord) -> Pending<()> {
        self.put_record("queues", queue.name.clone(), encode(&queue))
    }

    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>> {
        self.get_record("queues", name)
    }

    fn queues(&self) -> Pending<Vec<QueueRecord>> {
        self.records("queues")
    }

    fn remove_queue(&self, name: &str) -> Pending<bool> {
        self.remove_record("queues", name)
    }

    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()> {
        self.put_record("limiters", limiter.name.clone(), encode(&limiter))
    }

    fn limiters(&self) -> Pending<Vec<LimiterRecord>> {
        self.records("limiters")
    }

    fn remove_limiter(&self, name: &str) -> Pending<bool> {
        self.remove_record("limiters", name)
    }

    fn put_code(&self, sha256: &str, archive: Vec<u8>) -> Pending<()> {
        let put = self.conn.query::<()>(
            redis::cmd("SET")
                .arg(self.keys.catalog(&format!("code:{sha256}")))
                .arg(archive)
                .clone(),
        );
        Box::pin(put)
    }

    fn code(&self, sha256: &str) -> Pending<Option<Vec<u8>>> {
        self.conn.query(
            redis::cmd("GET")
                .arg(self.keys.catalog(&format!("code:{sha256}")))
                .clone(),
        )
    }

    fn catalog_generation(&self) -> Pending<u64> {
        let generation = self.conn.query::<Option<u64>>(
            redis::cmd("GET")
                .arg(self.keys.catalog("generation"))
                .clone(),
        );
        Box::pin(async move { Ok(generation.await?.unwrap_or(0)) })
    }

    fn secrets(&self) -> Pending<Option<SealedSecrets>> {
        let read = self.conn.query::<(Option<String>, Option<Vec<u8>>)>(
            redis::cmd("HMGET")
                .arg(self.keys.catalog("secrets"))
                .arg("version")
                .arg("sealed")
                .clone(),
        );
        Box::pin(async move {
            let (version, sealed) = read.await?;
            let version = match version {
                None => 0,
                Some(v) => v
                    .parse()
                    .map_err(|_| Error::Corrupt(format!("secrets version {v:?}")))?,
            };
            Ok(Some(SealedSecrets {
                version,
                sealed: sealed.unwrap_or_default(),
            }))
        })
    }

    fn put_secrets(&self, expected: u64, sealed: Vec<u8>) -> Pending<Option<u64>> {
        let keys = vec![
            self.keys.catalog("secrets"),
            self.keys.catalog("generation"),
        ];
        let args = vec![arg(expected.to_string()), arg(sealed)];
        let put = self.conn.script::<i64>(&PUT_SECRETS, keys, args);
        Box::pin(async move {
            let v = put.await?;
            Ok(u64::try_from(v).ok())
        })
    }

    fn take_tokens(
        &self,
        limiter: &str,
        rate: TokenRate,
        want: u32,
        peek: bool,
    ) -> Pending<Option<Tokens>> {
        let keys = vec![self.keys.catalog(&format!("gcra:{limiter}"))];
        let args = vec![
            arg(format!("{:.6}", rate.interval_ms)),
            arg(format!("{:.6}", rate.window_ms)),
            arg(want),
            arg(if peek { "1" } else { "0" }),
        ];
        let taken = self.conn.script::<(u32, u64)>(&TAKE_TOKENS, keys, args);
        Box::pin(async move {
            let (granted, wait_ms) = taken.await?;
            Ok(Some(Tokens { granted, wait_ms }))
        })
    }

    fn put_node(&self, node: NodeRecord) -> Pending<()> {
        let json = match encode(&node) {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // Not a catalog change: no generation bump.
        let put = self.conn.query::<i64>(
            redis::cmd("HSET")
                .arg(self.keys.catalog("nodes"))
                .arg(&node.id)
                .arg(json)
                .clone(),
        );
        Box::pin(async move {
            put.await?;
            Ok(())
        })
    }

    fn nodes(&self) -> Pending<Vec<NodeRecord>> {
        self.records("nodes")
    }

    fn remove_node(&self, id: &str) -> Pending<bool> {
        let n = self.conn.query::<i64>(
            redis::cmd("HDEL")
                .arg(self.keys.catalog("nodes"))
                .arg(id)
                .clone(),
        );
        Box::pin(async move { Ok(n.await? > 0) })
    }
}

impl RedisStore {
    /// Stores a named record in one of the catalog's hashes.
    fn put_record(&self, hash: &'static str, name: String, json: Result<String>) -> Pending<()> {
        let json = match json {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let keys = vec![self.keys.catalog(hash), self.keys.catalog("generation")];
        let put = self
            .conn
            .script::<i64>(&SET_FIELD, keys, vec![arg(name), arg(json)]);
        Box::pin(async move {
            put.await?;
            Ok(())
        })
    }

    /// A named record from one of the catalog's hashes.
    fn get_record<T: DeserializeOwned + Send + 'static>(
        &self,
        hash: &'static str,
        name: &str,
    ) -> Pending<Option<T>> {
        let json = self.conn.query::<Option<String>>(
            redis::cmd("HGET")
                .arg(self.keys.catalog(hash))
                .arg(name)
                .clone(),
        );
        let name = name.to_string();
        Box::pin(async move {
            json.await?
                .map(|j| decode(&format!("{hash} {name}"), &j))
                .transpose()
        })
    }

    /// Every record of one of the catalog's hashes, in name order.
    fn records<T: DeserializeOwned + Send + 'static>(&self, hash: &'static str) -> Pending<Vec<T>> {
        let key = self.keys.catalog(hash);
        let all = self
            .conn
            .query::<BTreeMap<String, String>>(redis::cmd("HGETALL").arg(&key).clone());
        Box::pin(async move { hash_values(&key, all.await?) })
    }

    /// Removes a named record; true when it existed.
    fn remove_record(&self, hash: &'static str, name: &str) -> Pending<bool> {
        let keys = vec![self.keys.catalog(hash), self.keys.catalog("generation")];
        let n = self
            .conn
            .script::<i64>(&REMOVE_FIELD, keys, vec![arg(name)]);
        Box::pin(async move { Ok(n.await? > 0) })
    }
}
