//! The engine: functions, dispatch, asynchronous queues, auth and accounting.
//!
//! Depends only on `shoal-types`, `shoal-store` and `shoal-runtime`: it never
//! names a concrete adapter, knows no HTTP status, and reads time from a
//! [`Clock`].

mod auth;
mod categories;
mod clock;
mod dispatch;
mod engine;
mod error;
mod functions;
mod host;
mod jobs;
mod limits;
pub mod manifest;
mod queues;

pub use auth::{SECRET_PREFIX, Token};
pub use categories::{Category, CategoryOptions, NewDoc, RunningQuery, shard_of};
pub use clock::{Clock, SystemClock};
pub use dispatch::Completed;
pub use engine::{Handle, Options, start};
pub use error::{Error, Result};
pub use functions::Deployed;
pub use jobs::{JobNode, JobSpec, JobView, MAX_CHILDREN, status as job_status};
pub use queues::{OutMessage, QueueInfo, QueueSettings};
pub use shoal_runtime::{DocFailure, QueryEvent, QueryOutcome, QueryResult};
pub use shoal_store::{
    CategoryRecord, ChildResult, DeadLetter, ErrorRecord, FunctionRecord, InvocationRecord,
    JobProgress, JobRecord, JobSlot, LimiterRecord, QueueCounters, QueueDepth, QueueRecord,
    QueueSample, ShardStats, StoredDoc,
};
