//! API tokens: created with a role, stored as sha256 hashes, revoked by id.
//!
//! Verified tokens are cached in memory (by hash) so a request does not pay a
//! store read; revoking clears the cache. The last admin token cannot be
//! revoked (revokes are serialized, so two cannot both pass that check).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};

use shoal_store::{TokenRecord, UserRecord};
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
    /// The user it belongs to, if any.
    pub user: Option<String>,
    /// Resource scopes (`function:`, `category:`, `queue:`); empty for an
    /// ordinary token.
    pub scopes: Vec<String>,
}

/// The kinds of resources a scope can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Function,
    Category,
    Queue,
    Channel,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Function => "function",
            ScopeKind::Category => "category",
            ScopeKind::Queue => "queue",
            ScopeKind::Channel => "channel",
        }
    }
}

/// A resource a request acts on, as scopes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Function(&'a str),
    Category(&'a str),
    Queue(&'a str),
    /// `action` is `subscribe` or `publish`.
    Channel {
        action: &'a str,
        name: &'a str,
    },
}

impl Resource<'_> {
    pub fn kind(&self) -> ScopeKind {
        match self {
            Resource::Function(_) => ScopeKind::Function,
            Resource::Category(_) => ScopeKind::Category,
            Resource::Queue(_) => ScopeKind::Queue,
            Resource::Channel { .. } => ScopeKind::Channel,
        }
    }

    /// The scope that would allow it (`function:resize`).
    pub fn scope(&self) -> String {
        match self {
            Resource::Function(n) => format!("function:{n}"),
            Resource::Category(n) => format!("category:{n}"),
            Resource::Queue(n) => format!("queue:{n}"),
            Resource::Channel { action, name } => format!("channel:{action}:{name}"),
        }
    }
}

/// Who started a piece of work, as invocation records keep it: the token's
/// id and its user. Children, retries and fan-ins carry their origin's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub token: Option<String>,
    pub user: Option<String>,
}

impl Origin {
    /// The origin an invocation record carries.
    pub fn of(record: &shoal_store::InvocationRecord) -> Origin {
        Origin {
            token: record.token.clone(),
            user: record.user.clone(),
        }
    }

    /// Writes it into a new record.
    pub(crate) fn stamp(&self, record: &mut shoal_store::InvocationRecord) {
        record.token.clone_from(&self.token);
        record.user.clone_from(&self.user);
    }
}

/// Who a bearer secret belongs to, as requests are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's role, at most its user's.
    pub role: Role,
    pub token_id: String,
    pub token_name: String,
    pub user: Option<String>,
    /// Channel scopes (`subscribe:PATTERN`, `publish:PATTERN`).
    pub channels: Arc<[String]>,
    /// Resource scopes (`function:PATTERN`, `category:PATTERN`,
    /// `queue:PATTERN`). With any scope at all (these or channel ones) the
    /// token may act only on the resources its scopes name.
    pub scopes: Arc<[String]>,
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

impl Caller {
    /// True when the token is limited by scopes (of any kind).
    pub fn scoped(&self) -> bool {
        !self.channels.is_empty() || !self.scopes.is_empty()
    }

    /// True when a scope allows `action` (`subscribe` or `publish`) on
    /// `channel`. A pattern is a name, or a prefix ending in `*`.
    pub fn scope_allows(&self, action: &str, channel: &str) -> bool {
        self.channels.iter().any(|scope| {
            let Some((a, pattern)) = scope.split_once(':') else {
                return false;
            };
            a == action && matches(pattern, channel)
        })
    }

    /// True when the token may act on `resource`: it has no scopes, or one
    /// of them names it.
    pub fn allows(&self, resource: Resource<'_>) -> bool {
        if !self.scoped() {
            return true;
        }
        let (kind, name) = match resource {
            Resource::Channel { action, name } => return self.scope_allows(action, name),
            // A version or alias (`resize@3`, `resize@live`) is of its
            // function.
            Resource::Function(n) => ("function", n.split_once('@').map_or(n, |(f, _)| f)),
            Resource::Category(n) => ("category", n),
            Resource::Queue(n) => ("queue", n),
        };
        self.scopes.iter().any(|scope| {
            scope
                .split_once(':')
                .is_some_and(|(k, pattern)| k == kind && matches(pattern, name))
        })
    }

    /// True when the token may act on some resource of `kind`: it has no
    /// scopes, or one of that kind (a list of that kind is then filtered
    /// with [`allows`](Self::allows)).
    pub fn covers(&self, kind: ScopeKind) -> bool {
        if !self.scoped() {
            return true;
        }
        match kind {
            ScopeKind::Channel => !self.channels.is_empty(),
            _ => self
                .scopes
                .iter()
                .any(|s| s.split_once(':').is_some_and(|(k, _)| k == kind.as_str())),
        }
    }

    /// Every scope, in the form `POST /v1/tokens` takes them.
    pub fn all_scopes(&self) -> Vec<String> {
        let mut all: Vec<String> = self.scopes.to_vec();
        all.extend(self.channels.iter().map(|c| format!("channel:{c}")));
        all
    }

    /// What invocations it starts record.
    pub fn origin(&self) -> Origin {
        Origin {
            token: Some(self.token_id.clone()),
            user: self.user.clone(),
        }
    }
}

/// The longest scope pattern.
const MAX_PATTERN: usize = 256;

fn pattern_ok(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN
        && pattern
            .strip_suffix('*')
            .unwrap_or(pattern)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/'))
}

/// The function an archive would deploy (its `shoal.toml`'s `name`), so a
/// scoped token's deploy is checked before anything is unpacked or run.
pub fn archive_function_name(archive: &[u8]) -> Result<String> {
    let files = crate::functions::read_archive(archive)?;
    let text = files
        .iter()
        .find(|(p, _)| p == std::path::Path::new("shoal.toml"))
        .and_then(|(_, data)| std::str::from_utf8(data).ok())
        .ok_or_else(|| {
            Error::InvalidFunction(
                "the archive has no shoal.toml (UTF-8) at its top level; deploy a directory that holds shoal.toml".into(),
            )
        })?;
    let manifest = crate::manifest::Manifest::parse(text).map_err(Error::InvalidFunction)?;
    Ok(manifest.name.to_string())
}

/// Checks channel scopes as given to `create`.
pub fn check_scopes(scopes: &[String]) -> Result<()> {
    split_scopes(scopes).map(|_| ())
}

/// Splits scopes as given to `POST /v1/tokens` into channel scopes
/// (`subscribe:P` / `publish:P`; also written `channel:subscribe:P`) and
/// resource scopes (`function:P`, `category:P`, `queue:P`), refusing any
/// other. Duplicates are dropped.
pub fn split_scopes(scopes: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut channels = Vec::new();
    let mut resources = Vec::new();
    for scope in scopes {
        let bare = scope.strip_prefix("channel:").unwrap_or(scope);
        let parsed = bare.split_once(':').and_then(|(kind, pattern)| {
            let channel = matches!(kind, "subscribe" | "publish");
            let resource =
                !scope.starts_with("channel:") && matches!(kind, "function" | "category" | "queue");
            let fits = if channel {
                pattern.len() <= crate::channels::MAX_CHANNEL_NAME + 1
            } else {
                true
            };
            ((channel || resource) && fits && pattern_ok(pattern)).then_some(channel)
        });
        match parsed {
            Some(true) => {
                if !channels.iter().any(|c| c == bare) {
                    channels.push(bare.to_string());
                }
            }
            Some(false) => {
                if !resources.iter().any(|c| c == bare) {
                    resources.push(bare.to_string());
                }
            }
            None => {
                return Err(Error::invalid(
                    "scopes",
                    format!(
                        "`{scope}` is not a scope; write `function:PATTERN`, `category:PATTERN`, `queue:PATTERN`, `channel:subscribe:PATTERN` or `channel:publish:PATTERN` (also `subscribe:PATTERN`, `publish:PATTERN`), where PATTERN is a name or a prefix ending in `*` (`function:resize-*`)"
                    ),
                ));
            }
        }
    }
    Ok((channels, resources))
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
    /// revoked (or its user was deleted). A user's token has at most its
    /// user's role now (a user's role lowered after the token was made
    /// lowers the token's).
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
        let mut role = record.role;
        if let Some(user) = &record.user {
            match self.env.backend.catalog.user(user).await? {
                Some(u) => role = role.min(u.role),
                None => return Ok(None),
            }
        }
        let caller = Caller {
            role,
            token_id: record.id,
            token_name: record.name,
            user: record.user,
            channels: record.channels.into(),
            scopes: record.scopes.into(),
        };
        self.by_hash.write().unwrap().insert(hash, caller.clone());
        Ok(Some(caller))
    }

    /// Creates a token; returns it with its secret (shown once). `scopes`
    /// may be of every kind (see [`split_scopes`]). A user's token has at
    /// most its user's role.
    pub(crate) async fn create(
        &self,
        role: Role,
        name: &str,
        user: Option<String>,
        scopes: Vec<String>,
    ) -> Result<(Token, String)> {
        let (channels, resources) = split_scopes(&scopes)?;
        if let Some(user) = &user {
            let Some(u) = self.env.backend.catalog.user(user).await? else {
                return Err(Error::not_found(Entity::User, user));
            };
            if !u.role.allows(role) {
                return Err(Error::invalid(
                    "role",
                    format!(
                        "user `{user}` is a {}; a token of theirs may be at most that, not {role}",
                        u.role
                    ),
                ));
            }
        }
        let (mut record, secret) = mint(role, name, self.env.now_ms());
        record.channels = channels;
        record.scopes = resources;
        record.user = user;
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
        self.check_admins_left(&[id], None).await?;
        let existed = self.env.backend.catalog.revoke_token(id).await?;
        self.by_hash.write().unwrap().clear();
        if existed {
            Ok(())
        } else {
            Err(Error::not_found(Entity::Token, id))
        }
    }

    /// Refuses when no admin token would be left once the tokens `gone`
    /// are revoked and (when given) user `lowered` is deleted or no longer
    /// an admin. Call with `revoking` held.
    async fn check_admins_left(&self, gone: &[&str], lowered: Option<&str>) -> Result<()> {
        let records = self.env.backend.catalog.tokens().await?;
        let users = self.env.backend.catalog.users().await?;
        // An admin token now; after the change when `after`.
        let admin = |t: &TokenRecord, after: bool| {
            t.role == Role::Admin
                && !(after && gone.contains(&t.id.as_str()))
                && match &t.user {
                    None => true,
                    Some(u) => {
                        !(after && Some(u.as_str()) == lowered)
                            && users.iter().any(|x| &x.name == u && x.role == Role::Admin)
                    }
                }
        };
        let admins_now = records.iter().filter(|t| admin(t, false)).count();
        let left = records.iter().filter(|t| admin(t, true)).count();
        if admins_now > 0 && left == 0 {
            let what = match (gone, lowered) {
                ([id], None) => format!("`{id}` is the last admin token"),
                (_, Some(user)) => format!("user `{user}` holds the last admin token"),
                _ => "these are the last admin tokens".to_string(),
            };
            return Err(Error::conflict(
                Conflict::LastAdminToken,
                format!(
                    "{what}: that would lock every admin out; create another admin token first (`shoal tokens create --role admin`)"
                ),
            ));
        }
        Ok(())
    }

    // ---- users ----

    pub(crate) async fn create_user(&self, name: &str, role: Role) -> Result<UserRecord> {
        check_user_name(name)?;
        let _one_at_a_time = self.revoking.lock().await;
        if self.env.backend.catalog.user(name).await?.is_some() {
            return Err(Error::conflict(
                Conflict::UserExists,
                format!(
                    "user `{name}` exists already; change its role with `shoal users set-role`"
                ),
            ));
        }
        let user = UserRecord {
            name: name.to_string(),
            role,
            created_at_ms: self.env.now_ms(),
        };
        self.env.backend.catalog.put_user(user.clone()).await?;
        Ok(user)
    }

    pub(crate) async fn users(&self) -> Result<Vec<(UserRecord, Vec<Token>)>> {
        let users = self.env.backend.catalog.users().await?;
        let tokens = self.env.backend.catalog.tokens().await?;
        Ok(users
            .into_iter()
            .map(|u| {
                let theirs = tokens
                    .iter()
                    .filter(|t| t.user.as_deref() == Some(u.name.as_str()))
                    .map(to_token)
                    .collect();
                (u, theirs)
            })
            .collect())
    }

    pub(crate) async fn user(&self, name: &str) -> Result<(UserRecord, Vec<Token>)> {
        let Some(user) = self.env.backend.catalog.user(name).await? else {
            return Err(Error::not_found(Entity::User, name));
        };
        let tokens = self.env.backend.catalog.tokens().await?;
        let theirs = tokens
            .iter()
            .filter(|t| t.user.as_deref() == Some(name))
            .map(to_token)
            .collect();
        Ok((user, theirs))
    }

    /// Changes a user's role. Its tokens keep theirs but act with at most
    /// the user's (see `verify`).
    pub(crate) async fn set_user_role(&self, name: &str, role: Role) -> Result<UserRecord> {
        let _one_at_a_time = self.revoking.lock().await;
        let Some(mut user) = self.env.backend.catalog.user(name).await? else {
            return Err(Error::not_found(Entity::User, name));
        };
        if role != Role::Admin {
            self.check_admins_left(&[], Some(name)).await?;
        }
        user.role = role;
        self.env.backend.catalog.put_user(user.clone()).await?;
        self.by_hash.write().unwrap().clear();
        Ok(user)
    }

    /// Deletes a user and revokes its tokens (the tokens first: a node
    /// dying in between leaves the user, with fewer tokens, to delete
    /// again). Returns the ids of the revoked tokens.
    pub(crate) async fn delete_user(&self, name: &str) -> Result<Vec<String>> {
        let _one_at_a_time = self.revoking.lock().await;
        if self.env.backend.catalog.user(name).await?.is_none() {
            return Err(Error::not_found(Entity::User, name));
        }
        self.check_admins_left(&[], Some(name)).await?;
        let tokens = self.env.backend.catalog.tokens().await?;
        let mut revoked = Vec::new();
        for t in tokens.iter().filter(|t| t.user.as_deref() == Some(name)) {
            self.env.backend.catalog.revoke_token(&t.id).await?;
            revoked.push(t.id.clone());
        }
        self.env.backend.catalog.delete_user(name).await?;
        self.by_hash.write().unwrap().clear();
        Ok(revoked)
    }
}

/// A user's name: 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`,
/// starting with a letter or digit.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "user name",
            format!(
                "{name:?} is not a user name: 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`, starting with a letter or digit"
            ),
        ))
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
        user: None,
        scopes: Vec::new(),
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
        user: record.user.clone(),
        scopes: record.scopes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(channels: &[&str], scopes: &[&str]) -> Caller {
        Caller {
            role: Role::Invoker,
            token_id: "tok_1".into(),
            token_name: "ci".into(),
            user: Some("ana".into()),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn scopes_allow_exact_names_and_prefixes_of_their_kind_only() {
        let c = caller(&["subscribe:board.*"], &["function:resize-*", "queue:jobs"]);
        assert!(c.scoped());
        assert!(c.allows(Resource::Function("resize-")));
        assert!(c.allows(Resource::Function("resize-png")));
        assert!(!c.allows(Resource::Function("resize")));
        assert!(c.allows(Resource::Function("resize-png@3")));
        assert!(!c.allows(Resource::Function("billing@resize-x")));
        assert!(!c.allows(Resource::Function("billing")));
        assert!(c.allows(Resource::Queue("jobs")));
        assert!(!c.allows(Resource::Queue("jobs2")));
        assert!(
            !c.allows(Resource::Category("resize-png")),
            "kinds do not mix"
        );
        assert!(c.allows(Resource::Channel {
            action: "subscribe",
            name: "board.1"
        }));
        assert!(!c.allows(Resource::Channel {
            action: "publish",
            name: "board.1"
        }));
        assert!(c.covers(ScopeKind::Function) && c.covers(ScopeKind::Queue));
        assert!(c.covers(ScopeKind::Channel));
        assert!(!c.covers(ScopeKind::Category));
        assert_eq!(Resource::Function("billing").scope(), "function:billing");

        let open = caller(&[], &[]);
        assert!(!open.scoped());
        assert!(open.allows(Resource::Category("anything")));
        assert!(open.covers(ScopeKind::Category));
        assert_eq!(
            open.origin(),
            Origin {
                token: Some("tok_1".into()),
                user: Some("ana".into())
            }
        );
    }

    #[test]
    fn scopes_split_into_channel_and_resource_scopes() {
        let given: Vec<String> = [
            "function:resize-*",
            "channel:subscribe:board.*",
            "publish:chat",
            "category:photos",
            "function:resize-*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (channels, resources) = split_scopes(&given).unwrap();
        assert_eq!(channels, vec!["subscribe:board.*", "publish:chat"]);
        assert_eq!(resources, vec!["function:resize-*", "category:photos"]);
        for bad in [
            "function:",
            "kv:x",
            "function:a b",
            "channel:function:x",
            "resize",
            "channel:subscribe:",
        ] {
            assert!(split_scopes(&[bad.to_string()]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn user_names() {
        for ok in ["ana", "ana.b-c_d@example.com", "7"] {
            check_user_name(ok).unwrap();
        }
        for bad in ["", "-ana", "a b", "ä", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?} accepted");
        }
    }

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
