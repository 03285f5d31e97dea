//! The engine: functions, dispatch, queues, jobs, limits, categories, auth.
//!
//! Depends only on `shoal-types`, `shoal-store` and `shoal-runtime`: it never
//! names a concrete adapter, knows no HTTP status, and reads time from a
//! [`Clock`] and randomness from a [`Random`]. See `engine.rs` for the
//! services it is made of.

mod auth;
mod blobs;
mod cache;
mod categories;
mod channels;
mod clock;
mod cluster;
mod consumers;
mod dispatch;
mod documents;
mod engine;
mod env;
mod error;
mod functions;
mod history;
mod host;
mod invocation;
mod jobgate;
mod jobs;
mod kv;
mod limits;
pub mod manifest;
pub mod notifications;
mod outcomes;
mod querydist;
mod queues;
mod ranges;
mod retention;
mod routes;
mod schedules;
mod search;
mod secrets;
mod sites;
mod triggers;
pub mod usage;

/// Keys of the key-value store and blobs starting with `\0` are the
/// node's own (static sites, channel presence): a user's key has no control
/// characters, so none is one, and user listings leave them out.
pub(crate) fn is_internal_key(key: &str) -> bool {
    key.starts_with('\0')
}

/// Where a user listing starts: past the node's own keys (which sort
/// first) when it lists every key from the beginning.
pub(crate) fn user_cursor<'a>(prefix: &str, cursor: Option<&'a str>) -> Option<&'a str> {
    match cursor {
        None if prefix.is_empty() => Some("\u{1}"),
        other => other,
    }
}

pub use auth::{
    Caller, Origin, Resource, SECRET_PREFIX, ScopeKind, Token, archive_function_name, check_scopes,
    check_user_name, mint as mint_token, split_scopes,
};
pub use blobs::{BatchResult, MAX_BLOB_KEY_BYTES, MAX_BLOB_LIST, MAX_BLOB_OPS};
pub use categories::{Category, CategoryOptions, NewDoc, RunningQuery, shard_of};
pub use channels::{
    ChannelView, Event as ChannelEvent, MAX_CHANNEL_NAME, MAX_MESSAGE_BYTES, Position,
    PublishResult, Subscription, check_name as check_channel_name, is_feed,
};
pub use clock::{Clock, SystemClock, TokioClock};
pub use cluster::NodeView;
pub use dispatch::Completed;
pub use documents::{MAX_DOC_DEPTH, check_document};
pub use engine::{DeployOutcome, Handle, Parts, start, start_with};
pub use env::{NodeOptions, Options, Random, SystemRandom};
pub use error::{Conflict, Entity, Error, Removal, Result};
pub use functions::{
    DeployOptions, Deployed, FunctionFile, FunctionFiles, MAX_SHOWN_FILE_BYTES, Versions,
};
pub use history::{Feed, FeedItem, FinishedAttempt, MAX_LIST_LIMIT, NodeStats};
pub use jobs::{JobCounts, JobNode, JobPage, JobSpec, JobSummary, JobView, MAX_CHILDREN};
pub use kv::{
    KvWhen, MAX_KEY_BYTES, MAX_KV_LIST, MAX_TTL, MAX_VALUE_BYTES, check_key, check_value,
};
pub use notifications::{
    DeliveryLog, DeliveryPage, DeliveryStatus, Event as NotificationEvent, Notification,
    NotificationSpec, Notifications, RecordingWebhook, Webhook, WebhookRequest,
};
pub use outcomes::{OutcomeSink, Outcomes};
pub use queues::{OutMessage, QueueHistoryPoint, QueueInfo, QueueSettings, Sent};
pub use routes::{RESERVED_PREFIXES, RouteHit, RouteMatch, is_reserved};
pub use schedules::{
    LastTick, MAX_HISTORY_PAGE, MAX_SCHEDULES, NEXT_SHOWN, ScheduleView, TickRecord, parse_cron,
};
pub use search::{FAILED_STATUSES, Found, MAX_SCAN, Search};
pub use secrets::SecretInfo;
pub use shoal_runtime::response::BinaryResult;
pub use shoal_runtime::{DocFailure, QueryEvent, QueryOutcome, QueryResult};
pub use shoal_store::UserRecord;
pub use shoal_store::{
    BlobMeta, BlobOp, BlobPage, BlobRead, CategoryRecord, ChannelMessage, ChannelSettings,
    ChildResult, DeadLetter, DeployedBy, ErrorRecord, FunctionRecord, InvocationCursor,
    InvocationFilter, InvocationPage, InvocationRecord, JobProgress, JobRecord, JobSlot, KvEntry,
    KvPage, LimiterRecord, NewChannelMessage, OpSpec, OutcomeWhen, QueueCounters, QueueDepth,
    QueueRecord, QueueSample, RouteCors, RouteRate, RouteRecord, ScheduleRecord, ShardStats,
    StoreHealth, StoredDoc, TriggerRecord,
};
pub use sites::{
    MAX_SITE_FILES, SITE_INLINE_BYTES, SiteBody, SiteDeployed, SiteFile, SiteLookup, SiteOptions,
    SiteRecord, SiteVersion,
};
pub use triggers::{
    DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WINDOW_MS, MAX_BATCH_SIZE, MAX_BATCH_WINDOW_MS, MAX_TRIGGERS,
    TriggerView,
};
