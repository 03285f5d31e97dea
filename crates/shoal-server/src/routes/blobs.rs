//! `/v1/blobs`: blobs of any size, streamed in and read back by byte range,
//! and fixed-size blobs changed by bit and byte operations. A key is one
//! path segment: a key holding `/` is sent percent-encoded (`%2F`). Reads
//! need a reader token, writes an invoker's.
//!
//! `GET` follows RFC 9110 for one range: `Range: bytes=a-b`, `bytes=a-`,
//! `bytes=-n` (the last n bytes) answer 206 with `Content-Range`; a range
//! starting at or past the end is a 416 naming the size; `If-Range` with a
//! matching entity tag keeps the range (else the whole blob, 200);
//! `If-None-Match` with a matching tag is a 304. Where RFC 9110 lets a
//! server ignore a `Range` it cannot parse, this API answers 400 with what
//! is wrong (a silent 200 of a large blob hides the client's bug); several
//! ranges in one request are a 400 too. Ranges in other units are ignored.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::{BlobMeta, BlobOp, OpSpec};
use shoal_protocol::{
    BitfieldOp, BitfieldRequest, BitfieldResponse, BlobList, BlobView, ErrorBody, ErrorCode,
};

use crate::AppState;
use crate::auth::{Auth, Invoker, Reader};
use crate::error::ApiError;

/// The API's view of a blob's metadata.
pub(crate) fn blob_view(m: BlobMeta) -> BlobView {
    BlobView {
        etag: m.etag(),
        key: m.key,
        size: m.size,
        sha256: m.sha256,
        content_type: m.content_type,
        version: m.version,
        fixed_size: m.mutable,
        created_at_ms: m.created_at_ms,
    }
}

fn quoted_etag(m: &BlobMeta) -> HeaderValue {
    // An etag is hex or `v<digits>`: always a valid header value.
    HeaderValue::from_str(&format!("\"{}\"", m.etag())).unwrap_or(HeaderValue::from_static("\"\""))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutParams {
    /// Create a zero-filled blob of this many bytes (1 B to 256 MiB) that
    /// bit and byte operations can change, instead of uploading the body
    /// (which must then be empty).
    fixed_size: Option<u64>,
}

/// Uploads a blob: the body, streamed, of any size (chunked bodies are
/// fine), replacing the blob whole once it has arrived; a cut upload
/// stores nothing. `Content-Type` is kept and answered on reads. With
/// `fixed_size=N`, creates a zero-filled fixed-size blob instead;
/// `If-None-Match: *` then keeps a blob that exists (412).
#[utoipa::path(put, path = "/v1/blobs/{key}", tag = "blobs",
    params(("key" = String, Path, description = "percent-encoded key"), PutParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bytes"),
    responses((status = 201, body = BlobView), (status = 400, body = ErrorBody),
        (status = 412, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn put(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<PutParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let Query(p) = params?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Content-Type must be printable ASCII"))?
                .to_string(),
        ),
    };
    let if_none_match = headers.get(header::IF_NONE_MATCH).is_some();
    let meta = match p.fixed_size {
        Some(size) => {
            let mut body = body.into_data_stream();
            while let Some(piece) = futures_util::StreamExt::next(&mut body).await {
                if piece.map(|b| !b.is_empty()).unwrap_or(true) {
                    return Err(ApiError::invalid(
                        "a blob created with fixed_size starts zero-filled: send an empty body, then write with POST /v1/blobs/{key}/bitfield",
                    ));
                }
            }
            match state
                .handle
                .blob_create_fixed(&key, size, !if_none_match)
                .await?
            {
                Ok(meta) => meta,
                Err(existing) => {
                    return Err(ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        ErrorCode::PreconditionFailed,
                        format!(
                            "blob `{key}` exists (If-None-Match: *), {} bytes at version {}; it was left as it is",
                            existing.size, existing.version
                        ),
                    ));
                }
            }
        }
        None => {
            if if_none_match {
                return Err(ApiError::invalid(
                    "If-None-Match applies to creating a fixed-size blob (fixed_size=N); an upload always replaces the blob",
                ));
            }
            state
                .handle
                .blob_upload(&key, content_type, body.into_data_stream())
                .await?
        }
    };
    let etag = quoted_etag(&meta);
    Ok((
        StatusCode::CREATED,
        [(header::ETAG, etag)],
        Json(blob_view(meta)),
    )
        .into_response())
}

/// What a `Range` header asks of a blob of some size.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// The whole blob (no range, or a range in another unit).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing of it can be served: 416.
    Unsatisfiable,
}

/// Parses one `Range` header value against a blob of `size` bytes.
fn parse_range(value: &str, size: u64) -> Result<Ranged, String> {
    let value = value.trim();
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Ok(Ranged::Whole);
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return Err(format!(
            "Range {value:?} asks for several ranges; ask for one range per request"
        ));
    }
    let malformed = || {
        format!("Range {value:?} is malformed; use bytes=START-END, bytes=START- or bytes=-LENGTH")
    };
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    if first.is_empty() {
        let n = number(last)?;
        if n == 0 || size == 0 {
            return Ok(Ranged::Unsatisfiable);
        }
        return Ok(Ranged::Part {
            start: size - n.min(size),
            end: size - 1,
        });
    }
    let start = number(first)?;
    let end = if last.is_empty() {
        u64::MAX
    } else {
        number(last)?
    };
    if end < start {
        return Err(format!("Range {value:?} ends before it starts"));
    }
    if start >= size {
        return Ok(Ranged::Unsatisfiable);
    }
    Ok(Ranged::Part {
        start,
        end: end.min(size - 1),
    })
}

/// Whether an `If-None-Match`/`If-Range` list names this content's tag
/// (weak comparison for `If-None-Match`, as RFC 9110 asks).
fn tag_listed(list: &str, etag: &str, weak_ok: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return weak_ok;
        }
        let t = match t.strip_prefix("W/") {
            Some(rest) if weak_ok => rest,
            Some(_) => return false,
            None => t,
        };
        t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(etag)
    })
}

fn meta_headers(meta: &BlobMeta) -> [(header::HeaderName, HeaderValue); 3] {
    let ct = meta
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    [
        (header::ETAG, quoted_etag(meta)),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (header::CONTENT_TYPE, ct),
    ]
}

/// Reads a blob, whole or one byte range (see the module docs).
#[utoipa::path(get, path = "/v1/blobs/{key}", tag = "blobs",
    params(("key" = String, Path, description = "percent-encoded key")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>), (status = 304),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(crate) async fn get(
    _: Auth<Reader>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let header_text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| ApiError::invalid(format!("{name} must be printable ASCII")))
            })
            .transpose()
    };
    let range = header_text(header::RANGE)?;
    let if_range = header_text(header::IF_RANGE)?;
    let if_none_match = header_text(header::IF_NONE_MATCH)?;
    // The range is resolved against the metadata; the read must then be
    // of that same content (a replace in between is read again).
    for _ in 0..3 {
        let meta = state.handle.blob_meta(&key).await?;
        let etag = meta.etag();
        if let Some(list) = &if_none_match
            && tag_listed(list, &etag, true)
        {
            return Ok((
                StatusCode::NOT_MODIFIED,
                [(header::ETAG, quoted_etag(&meta))],
            )
                .into_response());
        }
        let honour_range = match &if_range {
            None => true,
            Some(tag) => tag_listed(tag, &etag, false) && !tag.contains(','),
        };
        let ranged = match (&range, honour_range) {
            (Some(r), true) => parse_range(r, meta.size).map_err(ApiError::invalid)?,
            _ => Ranged::Whole,
        };
        let (status, start, len) = match ranged {
            Ranged::Whole => (StatusCode::OK, 0, meta.size),
            Ranged::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            Ranged::Unsatisfiable => {
                let mut response = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::RangeNotSatisfiable,
                    format!(
                        "the range starts at or past the end of blob `{key}` ({} bytes)",
                        meta.size
                    ),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        };
        let read = state.handle.blob_read(&key, start, len).await?;
        if read.meta.version != meta.version {
            continue;
        }
        let mut response =
            (status, meta_headers(&meta), Body::from_stream(read.body)).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, meta.size))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        return Ok(response);
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        format!("blob `{key}` changed three times while it was being read; read it again"),
    ))
}

/// A blob's headers (`Content-Length`, `ETag`, `Content-Type`) without
/// its bytes.
#[utoipa::path(head, path = "/v1/blobs/{key}", tag = "blobs",
    params(("key" = String, Path, description = "percent-encoded key")),
    responses((status = 200), (status = 404)))]
pub(crate) async fn head(
    _: Auth<Reader>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let meta = state.handle.blob_meta(&key).await?;
    let mut response = (StatusCode::OK, meta_headers(&meta)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(response)
}

/// Deletes a blob: 204; 404 when absent.
#[utoipa::path(delete, path = "/v1/blobs/{key}", tag = "blobs",
    params(("key" = String, Path, description = "percent-encoded key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(key) = key?;
    state.handle.blob_delete(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only keys starting with this (default: every key).
    prefix: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Blobs per page (1 to 1000; default 100).
    limit: Option<usize>,
}

/// Lists blobs by key prefix, in key order, a page at a time.
#[utoipa::path(get, path = "/v1/blobs", tag = "blobs", params(ListParams),
    responses((status = 200, body = BlobList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<BlobList>, ApiError> {
    let Query(p) = params?;
    let page = state
        .handle
        .blob_list(
            p.prefix.as_deref().unwrap_or(""),
            p.cursor.as_deref(),
            p.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(BlobList {
        blobs: page.blobs.into_iter().map(blob_view).collect(),
        next: page.next,
    }))
}

/// Turns one API operation into the store's, or says what is wrong with it.
fn parse_op(op: &BitfieldOp) -> Result<BlobOp, String> {
    OpSpec {
        op: op.op.clone(),
        ty: op.ty.clone(),
        offset: op.offset.clone(),
        value: op.value,
        by: op.by,
        overflow: op.overflow.clone(),
        data_base64: op.data_base64.clone(),
    }
    .parse()
}

/// Applies a batch of bit and byte operations to a fixed-size blob, all or
/// nothing, in order (like Redis `BITFIELD`; bit 0 is the most significant
/// bit of byte 0). An operation past the blob's end, or malformed, is a 400
/// naming it, and nothing changes.
#[utoipa::path(post, path = "/v1/blobs/{key}/bitfield", tag = "blobs",
    params(("key" = String, Path, description = "percent-encoded key")),
    request_body = BitfieldRequest,
    responses((status = 200, body = BitfieldResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn bitfield(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Json<BitfieldRequest>, JsonRejection>,
) -> Result<Json<BitfieldResponse>, ApiError> {
    let Path(key) = key?;
    let Json(req) = body?;
    let ops = req
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            parse_op(op).map_err(|e| {
                ApiError::invalid(format!("ops[{i}] ({}): {e}; nothing was changed", op.op))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let done = state.handle.blob_apply(&key, ops).await?;
    Ok(Json(BitfieldResponse {
        results: done.results,
        version: done.meta.version,
        etag: done.meta.etag(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str| parse_range(s, 100);
        assert_eq!(r("bytes=0-9"), Ok(Ranged::Part { start: 0, end: 9 }));
        assert_eq!(r("bytes=90-"), Ok(Ranged::Part { start: 90, end: 99 }));
        assert_eq!(r("bytes=90-1000"), Ok(Ranged::Part { start: 90, end: 99 }));
        assert_eq!(r("bytes=-10"), Ok(Ranged::Part { start: 90, end: 99 }));
        assert_eq!(r("bytes=-1000"), Ok(Ranged::Part { start: 0, end: 99 }));
        assert_eq!(r("bytes=100-"), Ok(Ranged::Unsatisfiable));
        assert_eq!(r("bytes=-0"), Ok(Ranged::Unsatisfiable));
        assert_eq!(parse_range("bytes=-5", 0), Ok(Ranged::Unsatisfiable));
        assert_eq!(r("items=0-1"), Ok(Ranged::Whole));
        for bad in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=0-1,5-6",
            "bytes=+1-2",
            "bytes=1-2-3",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(tag_listed("\"abc\"", "abc", false));
        assert!(tag_listed("W/\"abc\", \"x\"", "abc", true));
        assert!(!tag_listed("W/\"abc\"", "abc", false));
        assert!(tag_listed("*", "abc", true));
        assert!(!tag_listed("\"abd\"", "abc", true));
    }
}
