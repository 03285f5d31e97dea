//! The engine's error type: named for what the caller can do about it.

use shoal_types::Invalid;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing named does not exist.
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    /// A name, parameter or body field is not acceptable.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// The uploaded function (archive or manifest) is not acceptable.
    #[error("{0}")]
    InvalidFunction(String),
    /// Preparing the function failed (pip's message).
    #[error("deploy failed: {0}")]
    DeployFailed(String),
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// The thing to remove is still used.
    #[error("{0}")]
    InUse(String),
    /// The queue already feeds another function.
    #[error("{0}")]
    QueueTaken(String),
    /// A part of the request (a document) is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Storage or the runtime failed, or the node is shutting down.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub(crate) fn not_found(what: &'static str, name: impl Into<String>) -> Error {
        Error::NotFound {
            what,
            name: name.into(),
        }
    }
}

impl From<shoal_store::Error> for Error {
    fn from(e: shoal_store::Error) -> Error {
        match e {
            shoal_store::Error::NotFound(what) => Error::NotFound {
                what: "category",
                name: what,
            },
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<shoal_runtime::Error> for Error {
    fn from(e: shoal_runtime::Error) -> Error {
        match e {
            shoal_runtime::Error::Prepare(msg) => Error::DeployFailed(msg),
            other => Error::Unavailable(other.to_string()),
        }
    }
}
