//! The router tier: every route's answers to bad and unauthorised requests,
//! checked on the real router over a real engine (in-memory store, fake
//! runtime) without a socket or python3. Tables, one test per table, one
//! row per case.

mod app;
mod blobs;
mod edge;
mod errors;
mod invocation_lists;
mod invocation_search;
mod invocations;
mod jobs;
mod kv;
mod limits;
mod nodes;
mod notifications;
mod removals;
mod routes;
mod schedules;
mod sites;
mod status_codes;
mod triggers;
mod ui;
mod usage;
mod user_routes;
mod users;
mod versions;
