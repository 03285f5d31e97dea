//! `/v1/users`: named users, their roles and tokens (issue 14).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::TokenView;

/// `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`, starting with a
    /// letter or digit.
    pub name: String,
    /// `reader`, `invoker`, `developer` or `admin`: the highest role any of
    /// the user's tokens may have.
    pub role: String,
}

/// `PATCH /v1/users/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    /// The new role. The user's tokens keep theirs, but act with at most
    /// this one from now on.
    pub role: String,
}

/// A user with its tokens (never their secrets).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: String,
    pub created_at_ms: u64,
    pub tokens: Vec<TokenView>,
}

/// Answer to `GET /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// Answer to `DELETE /v1/users/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedUser {
    pub deleted: bool,
    /// The ids of the tokens revoked with it.
    pub revoked_tokens: Vec<String>,
}
