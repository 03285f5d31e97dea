//! `/v1/notifications`: webhooks told about events, signed, retried and
//! logged (docs/notifications.md).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `PUT /v1/notifications/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNotification {
    /// Where events are POSTed (`http://`).
    pub url: String,
    /// Event types: `invocation.failed`, `invocation.succeeded`,
    /// `dead_letter`, `job.finished`, `budget.reached`. Absent or empty:
    /// every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Function names or prefixes ending in `*`; empty: every function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// The signing secret (8 to 1024 bytes); generated when absent and
    /// then answered once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A notification (never its secret, except right after it was generated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub functions: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Only in the answer to the `PUT` that generated it: keep it now, it
    /// is never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Answer to `GET /v1/notifications`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub items: Vec<NotificationView>,
}

/// One delivery in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The delivery's id (the `Shoal-Delivery` header).
    pub id: String,
    /// The notification's name.
    pub name: String,
    /// The event type.
    pub event: String,
    /// The event's id (the body's `id`).
    pub event_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
    /// When a pending delivery is tried next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
}

/// Answer to `GET /v1/notifications/deliveries`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}
