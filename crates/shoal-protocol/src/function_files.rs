//! `GET /v1/functions/{name}/files`: a version's files as deployed (the
//! dashboard's code editor starts from them).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer to `GET /v1/functions/{name}/files`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionFilesView {
    pub name: String,
    pub version: u64,
    pub code_sha256: String,
    /// By path.
    pub files: Vec<FunctionFileView>,
}

/// One file of a version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionFileView {
    /// Relative to the function's directory, with `/` (`shoal.toml`,
    /// `lib/util.py`).
    pub path: String,
    pub size: u64,
    /// The file's text; absent for a file that is not UTF-8 or is larger
    /// than 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}
