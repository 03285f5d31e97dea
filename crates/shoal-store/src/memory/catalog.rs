//! Functions, tokens, queue and limiter records.
//!
//! A function's versions count up from 1 per name and are never reused: the
//! last version given out is kept after the function is removed.

use std::collections::{BTreeMap, HashMap};

use crate::{
    Catalog, FunctionRecord, FunctionRefs, LimiterRecord, NodeRecord, Pending, QueueRecord,
    SealedSecrets, TokenRecord, UserRecord,
};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct CatalogState {
    /// Stored versions of each function, by name then version.
    functions: BTreeMap<String, BTreeMap<u64, FunctionRecord>>,
    /// The last version given to each name, removed functions included.
    last_version: HashMap<String, u64>,
    /// Live pins and aliases, by function name.
    refs: BTreeMap<String, FunctionRefs>,
    /// By id.
    tokens: BTreeMap<String, TokenRecord>,
    /// By name.
    users: BTreeMap<String, UserRecord>,
    queues: BTreeMap<String, QueueRecord>,
    limiters: BTreeMap<String, LimiterRecord>,
    /// Bumped by every write above.
    generation: u64,
    /// Code archives by SHA-256.
    code: HashMap<String, Vec<u8>>,
    /// By id.
    nodes: BTreeMap<String, NodeRecord>,
    /// The sealed secrets (writes bump `generation`).
    secrets: SealedSecrets,
}

impl Catalog for MemoryStore {
    fn deploy_function(&self, mut record: FunctionRecord) -> Pending<u64> {
        self.run(|s| {
            s.catalog.generation += 1;
            let c = &mut s.catalog;
            let last = c.last_version.entry(record.name.to_string()).or_insert(0);
            *last += 1;
            record.version = *last;
            let version = record.version;
            let versions = c.functions.entry(record.name.to_string()).or_default();
            versions.insert(version, record);
            Ok(version)
        })
    }

    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>> {
        self.run(|s| Ok(s.catalog.functions.get(name).and_then(latest)))
    }

    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>> {
        self.run(|s| {
            let versions = s.catalog.functions.get(name);
            Ok(versions.and_then(|v| v.get(&version)).cloned())
        })
    }

    fn functions(&self) -> Pending<Vec<FunctionRecord>> {
        self.run(|s| Ok(s.catalog.functions.values().filter_map(latest).collect()))
    }

    fn remove_function(&self, name: &str) -> Pending<bool> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.refs.remove(name);
            Ok(s.catalog.functions.remove(name).is_some())
        })
    }

    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>> {
        self.run(|s| {
            let versions = s.catalog.functions.get(name);
            Ok(versions
                .map(|v| v.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.refs.insert(refs.name.to_string(), refs);
            Ok(())
        })
    }

    fn function_refs(&self) -> Pending<Vec<FunctionRefs>> {
        self.run(|s| Ok(s.catalog.refs.values().cloned().collect()))
    }

    fn put_token(&self, token: TokenRecord) -> Pending<()> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.tokens.insert(token.id.clone(), token);
            Ok(())
        })
    }

    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>> {
        self.run(|s| {
            let mut tokens = s.catalog.tokens.values();
            Ok(tokens.find(|t| t.secret_sha256 == secret_sha256).cloned())
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        self.run(|s| Ok(s.catalog.tokens.values().cloned().collect()))
    }

    fn revoke_token(&self, id: &str) -> Pending<bool> {
        self.run(|s| {
            s.catalog.generation += 1;
            Ok(s.catalog.tokens.remove(id).is_some())
        })
    }

    fn put_user(&self, user: UserRecord) -> Pending<()> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.users.insert(user.name.clone(), user);
            Ok(())
        })
    }

    fn user(&self, name: &str) -> Pending<Option<UserRecord>> {
        self.run(|s| Ok(s.catalog.users.get(name).cloned()))
    }

    fn users(&self) -> Pending<Vec<UserRecord>> {
        self.run(|s| Ok(s.catalog.users.values().cloned().collect()))
    }

    fn delete_user(&self, name: &str) -> Pending<bool> {
        self.run(|s| {
            let existed = s.catalog.users.remove(name).is_some();
            if existed {
                s.catalog.generation += 1;
            }
            Ok(existed)
        })
    }

    fn put_queue(&self, queue: QueueRecord) -> Pending<()> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.queues.insert(queue.name.clone(), queue);
            Ok(())
        })
    }

    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>> {
        self.run(|s| Ok(s.catalog.queues.get(name).cloned()))
    }

    fn queues(&self) -> Pending<Vec<QueueRecord>> {
        self.run(|s| Ok(s.catalog.queues.values().cloned().collect()))
    }

    fn remove_queue(&self, name: &str) -> Pending<bool> {
        self.run(|s| {
            s.catalog.generation += 1;
            Ok(s.catalog.queues.remove(name).is_some())
        })
    }

    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()> {
        self.run(|s| {
            s.catalog.generation += 1;
            s.catalog.limiters.insert(limiter.name.clone(), limiter);
            Ok(())
        })
    }

    fn limiters(&self) -> Pending<Vec<LimiterRecord>> {
        self.run(|s| Ok(s.catalog.limiters.values().cloned().collect()))
    }

    fn put_code(&self, sha256: &str, archive: Vec<u8>) -> Pending<()> {
        self.run(|s| {
            s.catalog.code.insert(sha256.to_string(), archive);
            Ok(())
        })
    }

    fn code(&self, sha256: &str) -> Pending<Option<Vec<u8>>> {
        self.run(|s| Ok(s.catalog.code.get(sha256).cloned()))
    }

    fn catalog_generation(&self) -> Pending<u64> {
        self.run(|s| Ok(s.catalog.generation))
    }

    fn secrets(&self) -> Pending<Option<SealedSecrets>> {
        self.run(|s| Ok(Some(s.catalog.secrets.clone())))
    }

    fn put_secrets(&self, expected: u64, sealed: Vec<u8>) -> Pending<Option<u64>> {
        self.run(move |s| {
            let c = &mut s.catalog;
            if c.secrets.version != expected {
                return Ok(None);
            }
            c.generation += 1;
            c.secrets = SealedSecrets {
                version: expected + 1,
                sealed,
            };
            Ok(Some(expected + 1))
        })
    }

    fn put_node(&self, node: NodeRecord) -> Pending<()> {
        self.run(|s| {
            s.catalog.nodes.insert(node.id.clone(), node);
            Ok(())
        })
    }

    fn nodes(&self) -> Pending<Vec<NodeRecord>> {
        self.run(|s| Ok(s.catalog.nodes.values().cloned().collect()))
    }

    fn remove_node(&self, id: &str) -> Pending<bool> {
        self.run(|s| Ok(s.catalog.nodes.remove(id).is_some()))
    }

    fn remove_limiter(&self, name: &str) -> Pending<bool> {
        self.run(|s| {
            s.catalog.generation += 1;
            Ok(s.catalog.limiters.remove(name).is_some())
        })
    }
}

/// The latest of a function's versions.
fn latest(versions: &BTreeMap<u64, FunctionRecord>) -> Option<FunctionRecord> {
    versions.last_key_value().map(|(_, record)| record.clone())
}
