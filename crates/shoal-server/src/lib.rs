//! The HTTP server: every route in one table, auth, errors, OpenAPI, metrics.
//!
//! The only crate that knows HTTP. Handlers are thin: parse, call the
//! engine's `Handle`, convert. Nothing a client sends produces a 500.

mod auth;
mod convert;
mod docsplit;
mod edge;
mod error;
mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler as _;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use shoal_engine::Handle;
use shoal_protocol::ErrorCode;

pub use edge::{BodyTimedOut, EdgeOptions, serve};
pub use error::ApiError;

/// Server settings, from node configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest request body (events, JSON) accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// Largest function archive accepted by deploy.
    pub max_archive_bytes: usize,
    /// Largest document write (one request, all its documents).
    pub max_write_bytes: usize,
    /// Most bytes of files in one static site deploy; more gets 413.
    pub max_site_bytes: u64,
    /// Serve `/metrics` without a token (`--metrics-public`); otherwise it
    /// needs a reader token.
    pub metrics_public: bool,
    /// How functions are isolated on this node, as `/healthz` and `shoal
    /// status` say it.
    pub sandbox: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_body_bytes: 6 * 1024 * 1024,
            max_archive_bytes: 64 * 1024 * 1024,
            max_write_bytes: 256 * 1024 * 1024,
            max_site_bytes: 1024 * 1024 * 1024,
            metrics_public: false,
            sandbox: "unknown".into(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub(crate) handle: Handle,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) metrics_public: bool,
    pub(crate) max_write_bytes: usize,
    pub(crate) max_site_bytes: u64,
    pub(crate) sandbox: std::sync::Arc<str>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal", description = "Shoal node HTTP API. Every /v1 route needs `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the node's router.
pub fn router(handle: Handle, opts: &Options, metrics: Option<PrometheusHandle>) -> Router {
    let state = AppState {
        handle,
        metrics,
        metrics_public: opts.metrics_public,
        max_write_bytes: opts.max_write_bytes,
        max_site_bytes: opts.max_site_bytes,
        sandbox: opts.sandbox.as_str().into(),
    };
    let deploy = OpenApiRouter::new()
        .routes(routes!(routes::functions::deploy))
        .layer(DefaultBodyLimit::max(opts.max_archive_bytes));
    let api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::functions::list))
        .routes(routes!(routes::functions::show, routes::functions::remove))
        .routes(routes!(routes::functions::versions))
        .routes(routes!(routes::functions::files))
        .routes(routes!(routes::functions::rollback))
        .routes(routes!(
            routes::functions::set_alias,
            routes::functions::remove_alias
        ))
        .routes(routes!(routes::invocations::invoke))
        .routes(routes!(routes::invocations::show))
        .routes(routes!(routes::invocations::logs))
        .routes(routes!(routes::invocations::replay))
        .routes(routes!(routes::invocations::list))
        .routes(routes!(routes::invocations::function_logs))
        .routes(routes!(routes::usage::stats))
        .routes(routes!(routes::usage::usage))
        .routes(routes!(
            routes::usage::get_prices,
            routes::usage::put_prices
        ))
        .routes(routes!(routes::usage::estimate))
        .routes(routes!(
            routes::usage::get_budget,
            routes::usage::put_budget,
            routes::usage::remove_budget
        ))
        .routes(routes!(routes::usage::count))
        .routes(routes!(routes::nodes::list))
        .routes(routes!(routes::schedules::list))
        .routes(routes!(routes::schedules::pause))
        .routes(routes!(routes::schedules::resume))
        .routes(routes!(routes::schedules::history))
        .routes(routes!(routes::triggers::list))
        .routes(routes!(routes::tokens::create, routes::tokens::list))
        .routes(routes!(routes::tokens::revoke))
        .routes(routes!(routes::users::create, routes::users::list))
        .routes(routes!(
            routes::users::show,
            routes::users::update,
            routes::users::remove
        ))
        .routes(routes!(routes::health::healthz))
        .routes(routes!(
            routes::categories::create,
            routes::categories::list
        ))
        .routes(routes!(
            routes::categories::show,
            routes::categories::remove
        ))
        .routes(routes!(routes::categories::write, routes::categories::scan))
        .routes(routes!(
            routes::categories::get_doc,
            routes::categories::put_doc,
            routes::categories::delete_doc
        ))
        .routes(routes!(routes::categories::query))
        .routes(routes!(routes::queues::list))
        .routes(routes!(
            routes::queues::put,
            routes::queues::show,
            routes::queues::remove
        ))
        .routes(routes!(routes::queues::send))
        .routes(routes!(routes::queues::purge))
        .routes(routes!(routes::queues::dead_letters))
        .routes(routes!(routes::queues::redrive))
        .routes(routes!(routes::queues::purge_dead))
        .routes(routes!(routes::queues::stats))
        .routes(routes!(routes::limiters::list))
        .routes(routes!(routes::limiters::put, routes::limiters::remove))
        .routes(routes!(routes::notifications::list))
        .routes(routes!(routes::notifications::deliveries))
        .routes(routes!(
            routes::notifications::put,
            routes::notifications::show,
            routes::notifications::remove
        ))
        .routes(routes!(routes::secrets::list))
        .routes(routes!(routes::secrets::set, routes::secrets::remove))
        .routes(routes!(routes::jobs::start, routes::jobs::list))
        .routes(routes!(routes::jobs::show))
        .routes(routes!(routes::jobs::results))
        .routes(routes!(routes::jobs::cancel))
        .routes(routes!(routes::kv::list))
        .routes(routes!(
            routes::kv::get,
            routes::kv::set,
            routes::kv::remove
        ))
        .routes(routes!(routes::kv::incr))
        .routes(routes!(routes::blobs::list))
        .routes(routes!(
            routes::blobs::put,
            routes::blobs::get,
            routes::blobs::head,
            routes::blobs::remove
        ))
        .routes(routes!(routes::blobs::bitfield))
        .routes(routes!(routes::sites::list))
        .routes(routes!(
            routes::sites::deploy,
            routes::sites::show,
            routes::sites::remove
        ))
        .routes(routes!(routes::sites::versions))
        .routes(routes!(routes::sites::rollback))
        .routes(routes!(routes::channels::list))
        .routes(routes!(routes::channels::show, routes::channels::configure))
        .routes(routes!(routes::channels::publish))
        .routes(routes!(routes::channels::events))
        .routes(routes!(routes::channels::ws))
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .merge(deploy);
    let (router, openapi) = api.split_for_parts();
    let openapi = std::sync::Arc::new(openapi);
    router
        .route(
            "/v1/openapi.json",
            get(move |_: auth::Auth<auth::Reader>| {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/metrics", get(routes::health::metrics))
        // The dashboard (docs/dashboard.md).
        .route("/ui", get(routes::ui::redirect))
        .route("/ui/", get(routes::ui::index))
        .route("/ui/{*path}", get(routes::ui::asset))
        // Function routes, then static sites; the API's 404 under its own
        // prefixes.
        .fallback(routes::user_routes::serve.layer(DefaultBodyLimit::max(opts.max_body_bytes)))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not take that method; see /v1/openapi.json",
            )
        })
        .with_state(state)
}
