//! Static sites: `/v1/sites` (deploy, list, versions, rollback, remove) and
//! the serving of their files at any path outside the node's own prefixes.

use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;

use crate::AppState;

/// Serves a file of the static site mounted on the longest prefix of the
/// path (GET and HEAD only). `None` when no site covers the path.
#[allow(dead_code)] // called by the fallback (part ROUTES)
pub(crate) async fn serve(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let _ = (state, method, uri, headers);
    None
}
