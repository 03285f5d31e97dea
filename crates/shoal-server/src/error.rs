//! `ApiError`: *the* place where errors become HTTP statuses and JSON bodies.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use shoal_engine::{Conflict, Entity, Error as EngineError};
use shoal_protocol::{ErrorBody, ErrorCode};

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), message = %self.message, "Request failed.");
        }
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let (status, code) = status_and_code(&e);
        ApiError::new(status, code, e.to_string())
    }
}

/// Every engine error's HTTP status and stable code: one exhaustive match,
/// so a new variant cannot reach a client unmapped.
pub(crate) fn status_and_code(e: &EngineError) -> (StatusCode, ErrorCode) {
    match e {
        EngineError::NotFound { entity, .. } => (
            StatusCode::NOT_FOUND,
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
                Entity::User => ErrorCode::UserNotFound,
                Entity::Budget => ErrorCode::BudgetNotFound,
                Entity::Notification => ErrorCode::NotificationNotFound,
                Entity::Schedule => ErrorCode::ScheduleNotFound,
            },
        ),
        EngineError::Invalid(inv) if inv.field.ends_with("name") => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidName)
        }
        EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
        EngineError::InvalidFunction(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidFunction),
        EngineError::Conflict { kind, .. } => (
            StatusCode::CONFLICT,
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
        EngineError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::DocumentTooLarge),
        EngineError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull),
        EngineError::BudgetExceeded(_) => {
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::BudgetExceeded)
        }
        EngineError::DeployFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::DeployFailed),
        EngineError::ShuttingDown | EngineError::Unavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        EngineError::StorageFull(_) => (
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::InsufficientStorage,
        ),
    }
}

fn body_error(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            ErrorCode::PayloadTooLarge,
            "the request body is larger than this node accepts; send less or raise --max-body-bytes",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiError::invalid(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        body_error(r.status(), format!("invalid JSON body: {}", r.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        body_error(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::invalid(format!("invalid query parameters: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::invalid(format!("invalid path: {}", r.body_text()))
    }
}
