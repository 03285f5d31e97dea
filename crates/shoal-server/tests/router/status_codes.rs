//! The one mapping from engine errors to HTTP: every `Error` variant, every
//! `Entity` and every `Conflict` gets its status and stable code, and the
//! message is the engine's own text.

use axum::http::StatusCode;
use axum::response::IntoResponse;

use shoal_engine::{Conflict, Entity, Error};
use shoal_protocol::ErrorCode;
use shoal_server::ApiError;
use shoal_types::Invalid;

/// The status and code `e` must map to. Written as a `match` without a
/// wildcard, so a new variant, entity or conflict fails to compile here
/// until its row is added.
fn expected(e: &Error) -> (u16, ErrorCode) {
    match e {
        Error::NotFound { entity, .. } => (
            404,
            match entity {
                Entity::Function => ErrorCode::FunctionNotFound,
                Entity::Invocation => ErrorCode::InvocationNotFound,
                Entity::Token => ErrorCode::TokenNotFound,
                Entity::Category => ErrorCode::CategoryNotFound,
                Entity::Document => ErrorCode::DocumentNotFound,
                Entity::Queue => ErrorCode::QueueNotFound,
                Entity::Limiter => ErrorCode::LimiterNotFound,
                Entity::Job => ErrorCode::JobNotFound,
                Entity::Secret => ErrorCode::SecretNotFound,
                Entity::Key => ErrorCode::KeyNotFound,
                Entity::Blob => ErrorCode::BlobNotFound,
                Entity::Site => ErrorCode::SiteNotFound,
                Entity::Schedule => ErrorCode::ScheduleNotFound,
                Entity::User => ErrorCode::UserNotFound,
                Entity::Budget => ErrorCode::BudgetNotFound,
                Entity::Notification => ErrorCode::NotificationNotFound,
            },
        ),
        Error::Invalid(inv) if inv.field.ends_with("name") => (400, ErrorCode::InvalidName),
        Error::Invalid(_) => (400, ErrorCode::InvalidInput),
        Error::InvalidFunction(_) => (400, ErrorCode::InvalidFunction),
        Error::DeployFailed(_) => (422, ErrorCode::DeployFailed),
        Error::Conflict { kind, .. } => (
            409,
            match kind {
                Conflict::CategoryExists => ErrorCode::CategoryExists,
                Conflict::QueueTaken => ErrorCode::QueueTaken,
                Conflict::LimiterInUse => ErrorCode::LimiterInUse,
                Conflict::SecretInUse => ErrorCode::SecretInUse,
                Conflict::ForceRequired => ErrorCode::ForceRequired,
                Conflict::LastAdminToken => ErrorCode::LastAdminToken,
                Conflict::KeyVersion => ErrorCode::KeyConflict,
                Conflict::NotAnInteger => ErrorCode::NotAnInteger,
                Conflict::NotFixedSize => ErrorCode::NotFixedSize,
                Conflict::SitePathTaken => ErrorCode::SitePathTaken,
                Conflict::RouteTaken => ErrorCode::RouteTaken,
                Conflict::UserExists => ErrorCode::UserExists,
            },
        ),
        Error::TooLarge(_) => (413, ErrorCode::DocumentTooLarge),
        Error::QueueFull(_) => (429, ErrorCode::QueueFull),
        Error::BudgetExceeded(_) => (429, ErrorCode::BudgetExceeded),
        Error::ShuttingDown => (503, ErrorCode::Unavailable),
        Error::Unavailable(_) => (503, ErrorCode::Unavailable),
        Error::StorageFull(_) => (507, ErrorCode::InsufficientStorage),
    }
}

const ENTITIES: [Entity; 15] = [
    Entity::Function,
    Entity::Invocation,
    Entity::Token,
    Entity::Category,
    Entity::Document,
    Entity::Queue,
    Entity::Limiter,
    Entity::Job,
    Entity::Secret,
    Entity::Key,
    Entity::Blob,
    Entity::Site,
    Entity::User,
    Entity::Budget,
    Entity::Notification,
];

const CONFLICTS: [Conflict; 12] = [
    Conflict::CategoryExists,
    Conflict::QueueTaken,
    Conflict::LimiterInUse,
    Conflict::SecretInUse,
    Conflict::ForceRequired,
    Conflict::LastAdminToken,
    Conflict::KeyVersion,
    Conflict::NotAnInteger,
    Conflict::NotFixedSize,
    Conflict::SitePathTaken,
    Conflict::RouteTaken,
    Conflict::UserExists,
];

/// One error of every kind the engine can return.
fn every_error() -> Vec<Error> {
    let mut all: Vec<Error> = ENTITIES
        .iter()
        .map(|&entity| Error::NotFound {
            entity,
            name: "nope".into(),
        })
        .collect();
    for field in ["function name", "category name", "queue name", "name"] {
        all.push(Error::Invalid(Invalid {
            field,
            reason: "\"Bad Name\" contains a character that is not allowed".into(),
        }));
    }
    for field in ["shards", "delay", "per_second", "cursor", "names"] {
        all.push(Error::Invalid(Invalid {
            field,
            reason: "is out of range".into(),
        }));
    }
    all.push(Error::InvalidFunction("shoal.toml is missing".into()));
    all.push(Error::DeployFailed(shoal_runtime::Error::Prepare(
        "pip: no matching distribution".into(),
    )));
    all.extend(CONFLICTS.iter().map(|&kind| Error::Conflict {
        kind,
        message: "it conflicts".into(),
    }));
    all.push(Error::TooLarge("document 3 is too large".into()));
    all.push(Error::QueueFull("queue `q` holds 10 messages".into()));
    all.push(Error::BudgetExceeded(
        "token tok_1 is past its daily budget: spent 2 of 1 GB-s".into(),
    ));
    all.push(Error::ShuttingDown);
    all.push(Error::Unavailable("disk on fire".into()));
    all.push(Error::StorageFull(
        "storage full: the disk holding /data/shoal.redb is full; free space".into(),
    ));
    all
}

#[tokio::test]
async fn every_engine_error_has_its_status_and_code() {
    let errors = every_error();
    // + 2: the secret entity and the secret-in-use conflict; + 2: the
    // force-required and last-admin-token conflicts; + 3: the key entity
    // and the key-version and not-an-integer conflicts; + 2: the blob
    // entity and the not-fixed-size conflict; + 2: the site entity and the
    // site-path-taken conflict; + 1: the route-taken conflict.
    // Every entity, 9 invalid inputs, 2 bad functions, every conflict and
    // 6 others (too large, queue full, budget exceeded, shutting down,
    // unavailable, storage full).
    assert_eq!(errors.len(), ENTITIES.len() + 9 + 2 + CONFLICTS.len() + 6);
    let mut failures = Vec::new();
    for e in errors {
        let (status, code) = expected(&e);
        let text = e.to_string();
        let api = ApiError::from(e);
        if (api.status.as_u16(), api.code) != (status, code) {
            failures.push(format!(
                "{text}: want {status} {code}, got {} {}",
                api.status, api.code
            ));
        }
        assert_eq!(api.message, text, "the message is the engine's text");
        assert!(!api.message.is_empty());
        // And on the wire: the same status, `{"error": {"code", "message"}}`.
        let resp = api.into_response();
        assert_eq!(resp.status(), StatusCode::from_u16(status).unwrap());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code.to_string(), "{v}");
        assert_eq!(v["error"]["message"], text, "{v}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Not-found messages name the kind of thing and the name asked for.
#[test]
fn not_found_messages_name_what_is_missing() {
    for entity in ENTITIES {
        let api = ApiError::from(Error::NotFound {
            entity,
            name: "nope".into(),
        });
        assert_eq!(api.message, format!("{} `nope` not found", entity.as_str()));
    }
}
