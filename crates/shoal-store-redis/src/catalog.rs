//! The catalog port: functions and their versions and refs, tokens, queue
//! and limiter records, all under the hash tag `{catalog}`.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::de::DeserializeOwned;

use shoal_store::{
    Catalog, Error, FunctionRecord, FunctionRefs, LimiterRecord, Pending, QueueRecord, Result,
    TokenRecord,
};

use crate::{RedisStore, decode, encode, unavailable};

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
