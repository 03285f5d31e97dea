//! Route handlers, one module per resource.

pub(crate) mod blobs;
pub(crate) mod categories;
pub(crate) mod channels;
pub(crate) mod functions;
pub(crate) mod health;
pub(crate) mod invocations;
pub(crate) mod jobs;
pub(crate) mod kv;
pub(crate) mod limiters;
pub(crate) mod nodes;
pub(crate) mod notifications;
pub(crate) mod queues;
pub(crate) mod schedules;
pub(crate) mod secrets;
pub(crate) mod sites;
pub(crate) mod tokens;
pub(crate) mod triggers;
pub(crate) mod ui;
pub(crate) mod usage;
pub(crate) mod user_routes;
pub(crate) mod users;
