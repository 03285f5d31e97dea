//! `/ui`: the dashboard, a page and its assets embedded in the binary.
//!
//! The assets live in `crates/shoal-server/ui/` (plain ES module, CSS,
//! uPlot vendored from npm); no build step. Each compressible asset has a
//! `.gz` sibling made by `scripts/ui-gzip` and committed (a router test
//! checks every sibling against its file), answered to clients that accept
//! gzip. `index.html` names the other assets with `?v=VERSION` (a hash of
//! all of them, filled in at startup), so they are cached for a year and
//! a new binary's page loads new ones; the page itself is revalidated on
//! every load (`no-cache` with an `ETag`).
//!
//! The page needs no token to load; everything it shows comes from the API
//! with the token the user signs in with.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use shoal_protocol::ErrorCode;

use crate::error::ApiError;

/// One embedded file: its bytes and, for compressible ones, their gzip.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    gzip: Option<&'static [u8]>,
}

macro_rules! asset {
    ($name:literal, $ct:literal) => {
        Asset {
            name: $name,
            content_type: $ct,
            bytes: include_bytes!(concat!("../../ui/", $name)),
            gzip: Some(include_bytes!(concat!("../../ui/", $name, ".gz"))),
        }
    };
}

/// Every asset but `index.html`.
static ASSETS: [Asset; 5] = [
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    Asset {
        name: "vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../../ui/vendor/uPlot.LICENSE"),
        gzip: None,
    },
];

const INDEX: &str = include_str!("../../ui/index.html");

/// The page with its assets' version filled in, and that version.
struct Built {
    version: String,
    index: String,
    index_etag: String,
}

static BUILT: LazyLock<Built> = LazyLock::new(|| {
    // Deterministic in a build (SipHash with fixed keys): every node of one
    // release names the same version.
    let mut h = std::hash::DefaultHasher::new();
    INDEX.hash(&mut h);
    for a in &ASSETS {
        a.name.hash(&mut h);
        a.bytes.hash(&mut h);
    }
    let version = format!("{:016x}", h.finish());
    let index = INDEX.replace("{{V}}", &version);
    let index_etag = format!("\"i-{}\"", hash_of(index.as_bytes()));
    Built {
        version,
        index,
        index_etag,
    }
});

fn hash_of(bytes: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `/ui` → `/ui/` (the page's relative asset paths need the slash).
pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `/ui/`: the page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    let built = &*BUILT;
    if not_modified(&headers, &built.index_etag) {
        return answer_304(&built.index_etag, "no-cache");
    }
    let mut r = built.index.clone().into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set(h, header::ETAG, &built.index_etag);
    page_headers(h);
    r
}

/// `/ui/{path}`: an asset (or the page again as `/ui/index.html`).
pub(crate) async fn asset(
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if path == "index.html" {
        return index(headers).await;
    }
    let Some(asset) = ASSETS.iter().find(|a| a.name == path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RouteNotFound,
            format!("the dashboard has no file {path}; open /ui/ (the API: see /v1/openapi.json)"),
        )
        .into_response();
    };
    // Named with this build's version: the bytes never change under it.
    let versioned = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix("v=") == Some(BUILT.version.as_str()))
    });
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let gzip = asset.gzip.filter(|_| accepts_gzip(&headers));
    let etag = format!(
        "\"{}{}\"",
        hash_of(asset.bytes),
        if gzip.is_some() { "-gz" } else { "" }
    );
    if not_modified(&headers, &etag) {
        return answer_304(&etag, cache);
    }
    let mut r = gzip.unwrap_or(asset.bytes).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    set(h, header::ETAG, &etag);
    if asset.gzip.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if gzip.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The page may load only its own assets and talk only to this node.
fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn answer_304(etag: &str, cache: &'static str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    set(r.headers_mut(), header::ETAG, etag);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// `Accept-Encoding` names gzip without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        })
}
