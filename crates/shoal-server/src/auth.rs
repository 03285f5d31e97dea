//! Bearer-token authentication: the `Auth<R>` extractor admits a request only
//! when its token's role allows `R` and, for a token with scopes, when the
//! route's resource is one its scopes name.
//!
//! It runs before any body extractor, so an unauthenticated request is
//! answered 401/403 without reading its body.
//!
//! Scopes are checked here, for every route at once, from the route's
//! template ([`MatchedPath`]) and its path parameters (see [`need`]):
//! a route naming a function, category or queue needs a scope naming it;
//! an invocation's or a job's route needs a scope naming its function; a
//! list of functions, categories or queues (and the routes that name theirs
//! in the body: deploy, create a category, start a job) needs a scope of
//! that kind and is filtered (or checked) by its handler with
//! [`Auth::allows`]; every other route (kv, blobs, tokens, users, nodes,
//! ...) names no resource a scope covers and is refused to scoped tokens.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};

use shoal_engine::{Caller, Resource, ScopeKind};
use shoal_protocol::ErrorCode;
use shoal_types::Role;

use crate::AppState;
use crate::error::ApiError;

/// The role a route needs.
pub trait Needs: Send + Sync + 'static {
    const ROLE: Role;
}

pub struct Reader;
pub struct Invoker;
pub struct Developer;
pub struct Admin;

impl Needs for Reader {
    const ROLE: Role = Role::Reader;
}
impl Needs for Invoker {
    const ROLE: Role = Role::Invoker;
}
impl Needs for Developer {
    const ROLE: Role = Role::Developer;
}
impl Needs for Admin {
    const ROLE: Role = Role::Admin;
}

/// An authenticated caller whose role allows `R` (and whose scopes, if
/// any, allow the route's resource).
pub struct Auth<R: Needs> {
    #[allow(dead_code)]
    pub role: Role,
    /// Who called: the token, its user and scopes.
    pub caller: Caller,
    _needs: PhantomData<R>,
}

impl<R: Needs> Auth<R> {
    /// True when the caller may act on `resource` (always, without scopes):
    /// for filtering lists and checking names given in a body.
    pub fn allows(&self, resource: Resource<'_>) -> bool {
        self.caller.allows(resource)
    }

    /// `Ok` when the caller may act on `resource`, else 403 naming the
    /// scope it lacks.
    pub fn check(&self, resource: Resource<'_>) -> Result<(), ApiError> {
        check(&self.caller, resource)
    }

    /// What invocations the caller starts record.
    pub fn origin(&self) -> shoal_engine::Origin {
        self.caller.origin()
    }

    /// Authenticates for a route of its own (a function's `[[route]]`),
    /// checking the role and then `resource` against the scopes.
    pub async fn for_resource(
        parts: &mut Parts,
        state: &AppState,
        resource: Resource<'_>,
    ) -> Result<Self, ApiError> {
        let caller = authenticate::<R>(parts, state).await?;
        check(&caller, resource)?;
        Ok(Auth {
            role: caller.role,
            caller,
            _needs: PhantomData,
        })
    }
}

/// 403 unless `caller` may act on `resource`.
pub(crate) fn check(caller: &Caller, resource: Resource<'_>) -> Result<(), ApiError> {
    if caller.allows(resource) {
        return Ok(());
    }
    Err(forbidden(format!(
        "this token's scopes {:?} do not allow `{}`; it needs the scope `{}`",
        caller.all_scopes(),
        resource_name(resource),
        resource.scope()
    )))
}

fn resource_name(r: Resource<'_>) -> String {
    match r {
        Resource::Function(n) => format!("function {n}"),
        Resource::Category(n) => format!("category {n}"),
        Resource::Queue(n) => format!("queue {n}"),
        Resource::Channel { action, name } => format!("{action} on channel {name}"),
    }
}

fn forbidden(m: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m)
}

/// The token's caller, if its role allows `R`.
async fn authenticate<R: Needs>(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let unauthorized =
        |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m);
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header; the admin token is in the node's data directory (admin.token)"))?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let caller = state
        .handle
        .caller(secret)
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked token"))?;
    if !caller.role.allows(R::ROLE) {
        return Err(forbidden(format!(
            "this needs a {} token; yours is {}",
            R::ROLE,
            caller.role
        )));
    }
    Ok(caller)
}

/// What a route needs of a scoped token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// The resource its path names.
    Named(ScopeKind, String),
    /// The function of the invocation its path names.
    Invocation(String),
    /// The function of the job its path names.
    Job(String),
    /// A scope of this kind; the handler filters its list or checks the
    /// name its body gives.
    Kind(ScopeKind),
    /// Nothing a scope can allow: refused to scoped tokens.
    Nothing,
}

/// What a route (its template and path parameters) needs of a scoped
/// token. Templates under a resource's path (`/v1/functions/{name}/...`)
/// need that resource, so routes added later under them are covered; any
/// other route needs what no scope gives.
pub(crate) fn need(method: &Method, template: &str, params: &[(&str, &str)]) -> Need {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let under = |prefix: &str| template == prefix || template.starts_with(&format!("{prefix}/"));
    let named = |kind, p: &str| param(p).map_or(Need::Nothing, |v| Need::Named(kind, v));
    if under("/v1/functions/{name}") {
        return named(ScopeKind::Function, "name");
    }
    if under("/v1/schedules/{function}") {
        return named(ScopeKind::Function, "function");
    }
    if under("/v1/categories/{cat}") {
        return named(ScopeKind::Category, "cat");
    }
    if under("/v1/queues/{name}") {
        return named(ScopeKind::Queue, "name");
    }
    if under("/v1/invocations/{id}") {
        return param("id").map_or(Need::Nothing, Need::Invocation);
    }
    if under("/v1/jobs/{id}") {
        return param("id").map_or(Need::Nothing, Need::Job);
    }
    match (method.as_str(), template) {
        ("GET" | "POST", "/v1/functions") => Need::Kind(ScopeKind::Function),
        ("GET", "/v1/invocations") => Need::Kind(ScopeKind::Function),
        ("GET", "/v1/schedules") => Need::Kind(ScopeKind::Function),
        ("GET", "/v1/triggers") => Need::Kind(ScopeKind::Function),
        ("GET" | "POST", "/v1/jobs") => Need::Kind(ScopeKind::Function),
        ("GET" | "POST", "/v1/categories") => Need::Kind(ScopeKind::Category),
        ("GET", "/v1/queues") => Need::Kind(ScopeKind::Queue),
        _ => Need::Nothing,
    }
}

/// Checks a scoped caller against what the request's route needs.
async fn check_route(caller: &Caller, parts: &mut Parts, state: &AppState) -> Result<(), ApiError> {
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let raw = RawPathParams::from_request_parts(parts, state).await.ok();
    let params: Vec<(&str, &str)> = raw.as_ref().map_or_else(Vec::new, |r| r.iter().collect());
    let need = match &template {
        Some(t) => need(&parts.method, t, &params),
        None => Need::Nothing,
    };
    let function_of = |f: &str| check(caller, Resource::Function(f));
    match need {
        Need::Named(kind, name) => {
            let resource = match kind {
                ScopeKind::Function => Resource::Function(&name),
                ScopeKind::Category => Resource::Category(&name),
                ScopeKind::Queue => Resource::Queue(&name),
                ScopeKind::Channel => return Err(refused(caller)),
            };
            check(caller, resource)
        }
        Need::Invocation(id) => {
            let record = state.handle.invocation(&id).await?;
            function_of(record.function.as_str())
        }
        Need::Job(id) => {
            let job = state.handle.job(&id).await?;
            function_of(job.record.function.as_str())
        }
        Need::Kind(kind) if caller.covers(kind) => Ok(()),
        Need::Kind(kind) => Err(forbidden(format!(
            "this token's scopes {:?} name no {}; it needs a scope `{}:PATTERN`",
            caller.all_scopes(),
            kind.as_str(),
            kind.as_str()
        ))),
        Need::Nothing => Err(refused(caller)),
    }
}

fn refused(caller: &Caller) -> ApiError {
    forbidden(format!(
        "this token is limited to the scopes {:?}, and this route names no function, category, queue or channel they could allow; use a token without scopes here",
        caller.all_scopes()
    ))
}

impl<R: Needs> FromRequestParts<AppState> for Auth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticate::<R>(parts, state).await?;
        if caller.scoped() {
            check_route(&caller, parts, state).await?;
        }
        Ok(Auth {
            role: caller.role,
            caller,
            _needs: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_their_path_names() {
        let get = Method::GET;
        assert_eq!(
            need(&get, "/v1/functions/{name}/invoke", &[("name", "resize")]),
            Need::Named(ScopeKind::Function, "resize".into())
        );
        assert_eq!(
            need(&get, "/v1/functions/{name}", &[("name", "resize")]),
            Need::Named(ScopeKind::Function, "resize".into())
        );
        assert_eq!(
            need(
                &get,
                "/v1/categories/{cat}/docs/{id}",
                &[("cat", "p"), ("id", "1")]
            ),
            Need::Named(ScopeKind::Category, "p".into())
        );
        assert_eq!(
            need(&get, "/v1/invocations/{id}/logs", &[("id", "x")]),
            Need::Invocation("x".into())
        );
        assert_eq!(
            need(&get, "/v1/functions", &[]),
            Need::Kind(ScopeKind::Function)
        );
        assert_eq!(need(&get, "/v1/kv/{key}", &[("key", "a")]), Need::Nothing);
        assert_eq!(need(&get, "/v1/functionsx", &[]), Need::Nothing);
        assert_eq!(need(&get, "/v1/invocations/count", &[]), Need::Nothing);
        assert_eq!(need(&Method::DELETE, "/v1/functions", &[]), Need::Nothing);
    }
}
