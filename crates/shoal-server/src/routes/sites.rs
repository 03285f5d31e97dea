//! Static sites: `/v1/sites` (deploy, list, show, versions, rollback,
//! remove) and [`serve`], which answers their files at any path outside the
//! node's own prefixes (the router's fallback calls it).
//!
//! Serving reads nothing from the store but the file's bytes: the engine
//! keeps the live version of every site in memory. A file is answered with
//! its content type (by extension), a strong entity tag (its sha256), `304`
//! on a matching `If-None-Match`, its `.br` or `.gz` sibling when the
//! client accepts it (`Vary: Accept-Encoding`), and `Cache-Control` (the
//! version's, else `no-cache` for HTML and `public, max-age=3600` for the
//! rest). Bodies are streamed from the store.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::{Error as EngineError, SiteBody, SiteFile, SiteLookup, SiteOptions, SiteRecord};
use shoal_protocol::{
    ARCHIVE_CONTENT_TYPE, Deleted, ErrorBody, ErrorCode, RollbackRequest, SiteList,
    SiteVersionView, SiteVersions, SiteView,
};

use crate::AppState;
use crate::auth::{Auth, Developer, Reader};
use crate::error::ApiError;

/// The default `Cache-Control` of HTML files: always revalidated, so a
/// redeploy is seen at once (the entity tag makes that a 304).
const HTML_CACHE: &str = "no-cache";
/// The default `Cache-Control` of every other file.
const ASSET_CACHE: &str = "public, max-age=3600";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployParams {
    /// Where the site is served: `/` (default) or a path such as `/docs`.
    path: Option<String>,
    /// Answer missing files with the site's `/index.html` (single-page apps).
    spa: Option<bool>,
    /// `Cache-Control` of every file (default: `no-cache` for HTML,
    /// `public, max-age=3600` for the rest).
    cache_control: Option<String>,
}

/// Deploys a static site: the body is a tar archive of the directory.
/// Each deploy makes a new version, live at once for every file together.
#[utoipa::path(put, path = "/v1/sites/{name}", tag = "sites",
    params(("name" = String, Path), DeployParams),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "tar archive of the site's directory"),
    responses(
        (status = 201, body = SiteView, description = "Deployed: the new version is live"),
        (status = 200, body = SiteView, description = "Unchanged: the live version has the same files and settings"),
        (status = 400, body = ErrorBody, description = "Invalid name, path or archive (absolute paths, `..`, links)"),
        (status = 409, body = ErrorBody, description = "Another site is mounted on the path"),
        (status = 413, body = ErrorBody, description = "The files are larger than the node takes (--max-site-bytes)"),
        (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn deploy(
    _: Auth<Developer>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<DeployParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let Query(params) = params?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with(ARCHIVE_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "send the site as a tar archive with `Content-Type: {ARCHIVE_CONTENT_TYPE}` (`shoal sites deploy NAME DIR` does this)"
            ),
        ));
    }
    let opts = SiteOptions {
        path: params.path.unwrap_or_else(|| "/".into()),
        spa: params.spa.unwrap_or(false),
        cache_control: params.cache_control,
        max_bytes: state.max_site_bytes,
    };
    let deployed = state
        .handle
        .site_deploy(&name, opts, body.into_data_stream())
        .await
        .map_err(|e| match e {
            EngineError::TooLarge(message) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            ),
            other => ApiError::from(other),
        })?;
    let mut view = site_view(&deployed.site);
    view.unchanged = deployed.unchanged;
    let status = if deployed.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

/// Lists every site with its live version.
#[utoipa::path(get, path = "/v1/sites", tag = "sites",
    responses((status = 200, body = SiteList)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<SiteList>, ApiError> {
    let sites = state.handle.sites().await?;
    Ok(Json(SiteList {
        sites: sites.iter().map(site_view).collect(),
    }))
}

/// Shows a site's live version.
#[utoipa::path(get, path = "/v1/sites/{name}", tag = "sites",
    params(("name" = String, Path)),
    responses((status = 200, body = SiteView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SiteView>, ApiError> {
    let Path(name) = name?;
    Ok(Json(site_view(&state.handle.site(&name).await?)))
}

/// Lists a site's versions, oldest first, and which one is live.
#[utoipa::path(get, path = "/v1/sites/{name}/versions", tag = "sites",
    params(("name" = String, Path)),
    responses((status = 200, body = SiteVersions), (status = 404, body = ErrorBody)))]
pub(crate) async fn versions(
    _: Auth<Reader>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SiteVersions>, ApiError> {
    let Path(name) = name?;
    let site = state.handle.site(&name).await?;
    Ok(Json(SiteVersions {
        name: site.name.clone(),
        live: site.live,
        versions: site
            .versions
            .iter()
            .map(|v| SiteVersionView {
                version: v.version,
                deployed_at_ms: v.deployed_at_ms,
                path: v.path.clone(),
                spa: v.spa,
                cache_control: v.cache_control.clone(),
                files: v.files,
                bytes: v.bytes,
                live: v.version == site.live,
            })
            .collect(),
    }))
}

/// Makes another version live, all its files at once: the one named in
/// the body, or the one before the live one.
#[utoipa::path(post, path = "/v1/sites/{name}/rollback", tag = "sites",
    params(("name" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = SiteView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn rollback(
    _: Auth<Developer>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SiteView>, ApiError> {
    let Path(name) = name?;
    let body = body?;
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the body must be {{\"version\": N}} or empty ({e})"
            ))
        })?
    };
    let site = state.handle.site_rollback(&name, req.version).await?;
    Ok(Json(site_view(&site)))
}

/// Removes a site with all its versions; its path is no longer served.
#[utoipa::path(delete, path = "/v1/sites/{name}", tag = "sites",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Developer>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let Path(name) = name?;
    state.handle.remove_site(&name).await?;
    Ok(Json(Deleted { deleted: true }))
}

fn site_view(site: &SiteRecord) -> SiteView {
    let live = site.live_version();
    SiteView {
        name: site.name.clone(),
        live: site.live,
        path: live.map(|v| v.path.clone()).unwrap_or_default(),
        spa: live.is_some_and(|v| v.spa),
        cache_control: live.and_then(|v| v.cache_control.clone()),
        files: live.map_or(0, |v| v.files),
        bytes: live.map_or(0, |v| v.bytes),
        deployed_at_ms: live.map_or(0, |v| v.deployed_at_ms),
        unchanged: false,
    }
}

/// Serves a file of the static site mounted on the longest prefix of the
/// path (GET and HEAD only). `None` when no site covers the path (or the
/// method is another).
pub(crate) async fn serve(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let head = *method == Method::HEAD;
    if !head && *method != Method::GET {
        return None;
    }
    let path = percent_decode(uri.path())?;
    Some(match state.handle.site_lookup(&path)? {
        SiteLookup::File(file) => respond(state, &file, StatusCode::OK, head, headers).await,
        SiteLookup::NotFound(Some(page)) => {
            respond(state, &page, StatusCode::NOT_FOUND, head, headers).await
        }
        SiteLookup::NotFound(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RouteNotFound,
            format!("no file at `{path}`"),
        )
        .into_response(),
        SiteLookup::Redirect(_) => {
            // To the directory: the raw path (still percent-encoded) with
            // its slash, and the query kept.
            let mut to = format!("{}/", uri.path());
            if let Some(q) = uri.query() {
                to.push('?');
                to.push_str(q);
            }
            match HeaderValue::from_str(&to) {
                // `//host/` would send the browser to another host.
                Ok(location) if !to.starts_with("//") => (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, location)],
                )
                    .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    })
}

/// The answer for one file: the representation the client accepts best,
/// or a 304 when it has it.
async fn respond(
    state: &AppState,
    file: &SiteFile,
    status: StatusCode,
    head: bool,
    headers: &HeaderMap,
) -> Response {
    let accepted = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (body, encoding): (&SiteBody, Option<&'static str>) = match (&file.br, &file.gz) {
        (Some(br), _) if accepts(accepted, "br") => (br, Some("br")),
        (_, Some(gz)) if accepts(accepted, "gzip") => (gz, Some("gzip")),
        _ => (&file.body, None),
    };
    let content_type = content_type(&file.path);
    let cache_control = match &file.cache_control {
        Some(cc) => cc.to_string(),
        None if content_type.starts_with("text/html") => HTML_CACHE.to_string(),
        None => ASSET_CACHE.to_string(),
    };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", body.sha256)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache_control) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if file.gz.is_some() || file.br.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if status == StatusCode::OK
        && let Some(inm) = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        && tag_listed(inm, &body.sha256)
    {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.size));
    if head {
        return (status, h).into_response();
    }
    match state.handle.site_read(body).await {
        Ok(read) => (status, h, Body::from_stream(read.body)).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "the file `{}` of site `{}` could not be read ({e}); try again",
                file.path, file.site
            ),
        )
        .into_response(),
    }
}

/// Whether `If-None-Match` names the tag (weak comparison, `*` too).
fn tag_listed(list: &str, sha: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).trim_matches('"') == sha)
}

/// Whether `Accept-Encoding` accepts `coding` (by name or `*`, with a
/// quality above 0).
fn accepts(header: &str, coding: &str) -> bool {
    let mut star = false;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q > 0.0;
        }
        if name == "*" {
            star = q > 0.0;
        }
    }
    star
}

/// `%XX` sequences decoded; `None` when one is malformed or the result is
/// not UTF-8 (no site serves such a path).
fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// The content type of a file, by its extension.
fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip, deflate, br", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(accepts("*", "gzip"));
        assert!(!accepts("*, gzip;q=0", "gzip"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("identity", "br"));
    }

    #[test]
    fn tags() {
        assert!(tag_listed("\"abc\"", "abc"));
        assert!(tag_listed("W/\"abc\", \"x\"", "abc"));
        assert!(tag_listed("*", "abc"));
        assert!(!tag_listed("\"abd\"", "abc"));
    }

    #[test]
    fn decoding_and_types() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%00"), None);
        assert_eq!(content_type("a/b.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
