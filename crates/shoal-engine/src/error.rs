//! The engine's error type: named for what the caller can do about it.
//!
//! Every variant is typed: what was not found is an [`Entity`], what
//! conflicted is a [`Conflict`], so the HTTP layer maps errors to codes with
//! one exhaustive `match` and never by comparing strings. Wrapped errors keep
//! their source.

use std::fmt;

use shoal_types::Invalid;

pub type Result<T> = std::result::Result<T, Error>;

/// The kinds of things a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    Function,
    Invocation,
    Token,
    Category,
    Document,
    Queue,
    Limiter,
    Job,
    Secret,
    /// A key of the key-value store.
    Key,
    Blob,
    /// A static site.
    Site,
    /// A `[[schedule]]` of a function (`name[index]`).
    Schedule,
    /// A named user (issue 14).
    User,
    /// A token's budget (`/v1/tokens/{id}/budget`).
    Budget,
    /// A webhook notification (`/v1/notifications/{name}`).
    Notification,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Function => "function",
            Entity::Invocation => "invocation",
            Entity::Token => "token",
            Entity::Category => "category",
            Entity::Document => "document",
            Entity::Queue => "queue",
            Entity::Limiter => "limiter",
            Entity::Job => "job",
            Entity::Secret => "secret",
            Entity::Key => "key",
            Entity::Blob => "blob",
            Entity::Site => "site",
            Entity::Schedule => "schedule",
            Entity::User => "user",
            Entity::Notification => "notification",
            Entity::Budget => "budget",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a removal may lose data: a queue's messages or subscription, a
/// category's documents. `IfEmpty` refuses with `Conflict::ForceRequired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    IfEmpty,
    Force,
}

/// Why a create or remove conflicts with what exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// The category to create exists already.
    CategoryExists,
    /// The queue already feeds another function.
    QueueTaken,
    /// The limiter to remove is still named by a function.
    LimiterInUse,
    /// The secret to remove is still named by a function.
    SecretInUse,
    /// The removal would lose data (waiting messages, documents, a
    /// subscription) and was not asked with `force=true`.
    ForceRequired,
    /// The token to revoke is the last admin token.
    LastAdminToken,
    /// A key-value write's condition (`nx`, `xx`, a version) does not
    /// hold; the message names the key's current version.
    KeyVersion,
    /// `incr` of a key whose value is not an integer, or whose sum would
    /// not fit in a 64-bit integer.
    NotAnInteger,
    /// A bit or byte operation on a blob that was uploaded (operations
    /// apply to blobs created with a fixed size).
    NotFixedSize,
    /// Another static site is mounted on the path.
    SitePathTaken,
    /// A `[[route]]` overlaps a live route of another function.
    RouteTaken,
    /// The user to create exists already.
    UserExists,
}

/// A failure of the platform underneath (storage, runtime, task).
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing named does not exist.
    #[error("{entity} `{name}` not found")]
    NotFound { entity: Entity, name: String },
    /// A name, parameter or body field is not acceptable.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// The uploaded function (archive or manifest) is not acceptable.
    #[error("{0}")]
    InvalidFunction(String),
    /// Preparing the function failed (pip's message).
    #[error("deploy failed: {0}")]
    DeployFailed(#[source] shoal_runtime::Error),
    /// The request conflicts with what exists.
    #[error("{message}")]
    Conflict { kind: Conflict, message: String },
    /// A part of the request (a document) is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The queue holds as many messages as the node allows
    /// (`--max-queue-messages`); a send is refused until it drains.
    #[error("{0}")]
    QueueFull(String),
    /// The node is shutting down and takes no new work.
    #[error("the node is shutting down; retry on another node or later")]
    ShuttingDown,
    /// Storage or the runtime failed; the source says how.
    #[error("{0}")]
    Unavailable(#[source] Source),
    /// The disk under the store is full: writes are refused until the
    /// operator frees space (then they resume without a restart). Every
    /// write acknowledged before is kept.
    #[error("{0}")]
    StorageFull(String),
    /// The token that starts the work is past its enforced budget; the
    /// message names the budget and when it resets.
    #[error("{0}")]
    BudgetExceeded(String),
}

impl Error {
    pub(crate) fn not_found(entity: Entity, name: impl Into<String>) -> Error {
        Error::NotFound {
            entity,
            name: name.into(),
        }
    }

    pub(crate) fn conflict(kind: Conflict, message: impl Into<String>) -> Error {
        Error::Conflict {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid(Invalid {
            field,
            reason: reason.into(),
        })
    }

    pub(crate) fn unavailable(source: impl Into<Source>) -> Error {
        Error::Unavailable(source.into())
    }

    /// A store error where the store's `NotFound` means `entity` (`name`)
    /// is missing; any other store error is the platform failing.
    pub(crate) fn from_store(e: shoal_store::Error, entity: Entity, name: &str) -> Error {
        match e {
            shoal_store::Error::NotFound(_) => Error::not_found(entity, name),
            other => other.into(),
        }
    }
}

/// Storage failed. A full disk is `StorageFull`; a store `NotFound` that
/// reaches this conversion was not expected by the caller (those that
/// expect one use [`Error::from_store`]), so it is a platform failure too,
/// with the store's message kept.
impl From<shoal_store::Error> for Error {
    fn from(e: shoal_store::Error) -> Error {
        match e {
            shoal_store::Error::Full(_) => Error::StorageFull(e.to_string()),
            other => Error::unavailable(other),
        }
    }
}

impl From<shoal_runtime::Error> for Error {
    fn from(e: shoal_runtime::Error) -> Error {
        match e {
            shoal_runtime::Error::Prepare(_) => Error::DeployFailed(e),
            shoal_runtime::Error::ShuttingDown => Error::ShuttingDown,
            other => Error::unavailable(other),
        }
    }
}
