//! `GET /v1/triggers`: the `[[trigger]]` entries of the live versions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every `[[trigger]]` of every live version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerList {
    pub items: Vec<TriggerView>,
}

/// One `[[trigger]]`: the function it runs and what runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TriggerView {
    /// The function the trigger runs (whose `shoal.toml` declares it).
    pub function: String,
    /// The live version declaring it.
    pub version: u64,
    /// Its place among the function's `[[trigger]]` entries, from 0.
    pub index: u64,
    /// `docs`, `blob` or `outcome`.
    pub on: String,
    /// `docs`: the category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `docs`: most changes per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// `docs`: how long a batch waits to fill, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window_ms: Option<u64>,
    /// `blob`: the key prefix (`""`: every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `blob`: `created`, `deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `outcome`: the source function (`function` in `shoal.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `outcome`: `success`, `failure` or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}
