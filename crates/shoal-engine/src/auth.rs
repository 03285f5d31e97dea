//! API tokens: created with a role, stored as sha256 hashes, revoked by id.
//!
//! Verified tokens are cached in memory (by hash) so a request does not pay a
//! store read; revoking clears the cache.

use std::collections::HashMap;
use std::sync::RwLock;

use rand::RngCore;
use sha2::{Digest, Sha256};

use shoal_store::{Catalog, TokenRecord};
use shoal_types::Role;

use crate::error::{Error, Result};

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub created_at_ms: u64,
}

/// Secrets look like `shoal_` + 64 hex digits.
pub const SECRET_PREFIX: &str = "shoal_";

#[derive(Default)]
pub(crate) struct TokenCache {
    by_hash: RwLock<HashMap<String, Role>>,
}

impl TokenCache {
    pub(crate) fn clear(&self) {
        self.by_hash.write().unwrap().clear();
    }
}

pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let id = format!(
        "tok_{}",
        &hex::encode(Sha256::digest(secret.as_bytes()))[..12]
    );
    (id, secret)
}

pub(crate) async fn verify(
    cache: &TokenCache,
    catalog: &dyn Catalog,
    secret: &str,
) -> Result<Option<Role>> {
    let hash = hash_secret(secret);
    if let Some(role) = cache.by_hash.read().unwrap().get(&hash) {
        return Ok(Some(*role));
    }
    let Some(record) = catalog.token_by_secret_sha256(&hash).await? else {
        return Ok(None);
    };
    let role = Role::parse(&record.role)
        .map_err(|_| Error::Unavailable(format!("token {} has a corrupt role", record.id)))?;
    cache.by_hash.write().unwrap().insert(hash, role);
    Ok(Some(role))
}

pub(crate) fn to_token(record: &TokenRecord) -> Option<Token> {
    Some(Token {
        id: record.id.clone(),
        role: Role::parse(&record.role).ok()?,
        name: record.name.clone(),
        created_at_ms: record.created_at_ms,
    })
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
