//! `/v1/sites`: static sites (`shoal sites deploy NAME DIR --path /`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A site and its live version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteView {
    pub name: String,
    /// The version served.
    pub live: u64,
    /// The mount path of the live version (`/`, `/docs`).
    pub path: String,
    /// Missing files are answered with the site's `/index.html`.
    pub spa: bool,
    /// `Cache-Control` of every file; absent: `no-cache` for HTML,
    /// `public, max-age=3600` for the rest.
    pub cache_control: Option<String>,
    /// Files in the live version (compressed siblings counted).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    pub deployed_at_ms: u64,
    /// A deploy whose files and settings equal the live version's made no
    /// new version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

/// `GET /v1/sites`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteList {
    pub sites: Vec<SiteView>,
}

/// One version of a site.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteVersionView {
    pub version: u64,
    pub deployed_at_ms: u64,
    pub path: String,
    pub spa: bool,
    pub cache_control: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub live: bool,
}

/// `GET /v1/sites/{name}/versions`: oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteVersions {
    pub name: String,
    pub live: u64,
    pub versions: Vec<SiteVersionView>,
}
