//! API tokens: created with a role, stored as sha256 hashes, revoked by id.
//!
//! Verified tokens are cached in memory (by hash) so a request does not pay a
//! store read; revoking clears the cache. The last admin token cannot be
//! revoked (revokes are serialized, so two cannot both pass that check).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};

use shoal_store::TokenRecord;
use shoal_types::Role;

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Result};

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub created_at_ms: u64,
    /// Channel scopes; empty for an ordinary token.
    pub channels: Vec<String>,
}

/// Who a bearer secret belongs to, as requests are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// Channel scopes (`subscribe:PATTERN`, `publish:PATTERN`): when any,
    /// the token may do only those channel actions.
    pub channels: Arc<[String]>,
}

impl Caller {
    /// True when the token is limited to channel scopes.
    pub fn scoped(&self) -> bool {
        !self.channels.is_empty()
    }

    /// True when a scope allows `action` (`subscribe` or `publish`) on
    /// `channel`. A pattern is a name, or a prefix ending in `*`.
    pub fn scope_allows(&self, action: &str, channel: &str) -> bool {
        self.channels.iter().any(|scope| {
            let Some((a, pattern)) = scope.split_once(':') else {
                return false;
            };
            a == action
                && match pattern.strip_suffix('*') {
                    Some(prefix) => channel.starts_with(prefix),
                    None => channel == pattern,
                }
        })
    }
}

/// Checks channel scopes as given to `create`.
pub fn check_scopes(scopes: &[String]) -> Result<()> {
    for scope in scopes {
        let ok = scope.split_once(':').is_some_and(|(action, pattern)| {
            matches!(action, "subscribe" | "publish")
                && !pattern.is_empty()
                && pattern.len() <= crate::channels::MAX_CHANNEL_NAME + 1
                && pattern
                    .strip_suffix('*')
                    .unwrap_or(pattern)
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        });
        if !ok {
            return Err(Error::invalid(
                "channels",
                format!(
                    "`{scope}` is not a channel scope; write `subscribe:PATTERN` or `publish:PATTERN`, where PATTERN is a channel name or a prefix ending in `*` (`subscribe:board.*`)"
                ),
            ));
        }
    }
    Ok(())
}

/// Secrets look like `shoal_` + 64 hex digits.
pub const SECRET_PREFIX: &str = "shoal_";

/// API tokens: the store holds their hashes, this service a cache of the
/// roles of secrets already verified.
pub(crate) struct Tokens {
    env: Arc<Env>,
    by_hash: RwLock<HashMap<String, Caller>>,
    /// Held across a revoke's check-then-write.
    revoking: tokio::sync::Mutex<()>,
}

impl Tokens {
    pub(crate) fn new(env: Arc<Env>) -> Tokens {
        Tokens {
            env,
            by_hash: RwLock::new(HashMap::new()),
            revoking: tokio::sync::Mutex::new(()),
        }
    }

    /// Who a bearer secret belongs to, or `None` when it is unknown or
    /// revoked.
    pub(crate) async fn verify(&self, secret: &str) -> Result<Option<Caller>> {
        let hash = hash_secret(secret);
        if let Some(caller) = self.by_hash.read().unwrap().get(&hash) {
            return Ok(Some(caller.clone()));
        }
        let Some(record) = self
            .env
            .backend
            .catalog
            .token_by_secret_sha256(&hash)
            .await?
        else {
            return Ok(None);
        };
        let caller = Caller {
            role: record.role,
            channels: record.channels.into(),
        };
        self.by_hash.write().unwrap().insert(hash, caller.clone());
        Ok(Some(caller))
    }

    /// Creates a token; returns it with its secret (shown once).
    pub(crate) async fn create(
        &self,
        role: Role,
        name: &str,
        channels: Vec<String>,
    ) -> Result<(Token, String)> {
        check_scopes(&channels)?;
        let (mut record, secret) = mint(role, name, self.env.now_ms());
        record.channels = channels;
        self.env.backend.catalog.put_token(record.clone()).await?;
        Ok((to_token(&record), secret))
    }

    pub(crate) async fn list(&self) -> Result<Vec<Token>> {
        let records = self.env.backend.catalog.tokens().await?;
        Ok(records.iter().map(to_token).collect())
    }

    /// Forgets every verified token (another node sharing the store may
    /// have revoked one): the next request of each is checked again.
    pub(crate) fn forget_verified(&self) {
        self.by_hash.write().unwrap().clear();
    }

    pub(crate) async fn revoke(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.revoking.lock().await;
        let records = self.env.backend.catalog.tokens().await?;
        let admins = records.iter().filter(|t| t.role == Role::Admin).count();
        if admins == 1 && records.iter().any(|t| t.id == id && t.role == Role::Admin) {
            return Err(Error::conflict(
                Conflict::LastAdminToken,
                format!(
                    "`{id}` is the last admin token: revoking it would lock every admin out; create another admin token first (`shoal tokens create --role admin`)"
                ),
            ));
        }
        let existed = self.env.backend.catalog.revoke_token(id).await?;
        self.by_hash.write().unwrap().clear();
        if existed {
            Ok(())
        } else {
            Err(Error::not_found(Entity::Token, id))
        }
    }
}

/// A new token record of `role` and its secret (shown once). For the node,
/// and for `shoal tokens recover`, which writes one into a stopped node's
/// store.
pub fn mint(role: Role, name: &str, now_ms: u64) -> (TokenRecord, String) {
    let (id, secret) = new_secret();
    let record = TokenRecord {
        id,
        secret_sha256: hash_secret(&secret),
        role,
        name: name.to_string(),
        created_at_ms: now_ms,
        channels: Vec::new(),
    };
    (record, secret)
}

impl Tokens {
    /// The token a bearer secret belongs to (for who deployed a version).
    pub(crate) async fn who(&self, secret: &str) -> Result<Option<Token>> {
        let record = self
            .env
            .backend
            .catalog
            .token_by_secret_sha256(&hash_secret(secret))
            .await?;
        Ok(record.as_ref().map(to_token))
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret (from the operating system's generator: secrets are not
/// jitter, and are never faked) and its token id.
fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    #[allow(clippy::disallowed_methods)] // secrets need the real generator
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let id = format!(
        "tok_{}",
        &hex::encode(Sha256::digest(secret.as_bytes()))[..12]
    );
    (id, secret)
}

fn to_token(record: &TokenRecord) -> Token {
    Token {
        id: record.id.clone(),
        role: record.role,
        name: record.name.clone(),
        created_at_ms: record.created_at_ms,
        channels: record.channels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_and_hashed() {
        let (id1, s1) = new_secret();
        let (id2, s2) = new_secret();
        assert_ne!(s1, s2);
        assert_ne!(id1, id2);
        assert!(s1.starts_with(SECRET_PREFIX));
        assert_eq!(s1.len(), SECRET_PREFIX.len() + 64);
        assert_eq!(hash_secret(&s1).len(), 64);
        assert_ne!(hash_secret(&s1), s1);
    }
}
