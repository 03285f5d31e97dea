//! Blobs (`/v1/blobs`): uploads streamed from any reader, downloads
//! streamed into any writer (whole or one byte range), metadata, listing,
//! deletion, fixed-size blobs and their bitfield batches.
//!
//! Memory stays constant whatever the size: an upload is sent as a chunked
//! body read [`UPLOAD_PIECE`] bytes at a time, and a download is written
//! out piece by piece as it arrives.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use shoal_protocol::{
    BitfieldOp, BitfieldRequest, BitfieldResponse, BlobList, BlobView, ErrorCode,
};

use crate::{Client, Error, Result, api_error, decode, seg, transport};

/// Bytes an upload reads from its source at a time.
pub const UPLOAD_PIECE: usize = 256 << 10;

/// Called with the number of bytes sent or received so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// One byte range of a blob, as `Range: bytes=...` asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `start..=end` (an `end` past the blob's end is clamped).
    Span { start: u64, end: u64 },
    /// From `start` to the end.
    From(u64),
    /// The last `n` bytes.
    Last(u64),
}

impl ByteRange {
    /// Parses the forms `START-END`, `START-` and `-LENGTH` (what follows
    /// `bytes=` in a `Range` header).
    pub fn parse(text: &str) -> std::result::Result<ByteRange, String> {
        let bad = || {
            format!(
                "range {text:?} is not START-END, START- or -LENGTH (byte offsets, END included)"
            )
        };
        let number = |s: &str| -> std::result::Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        match (first.is_empty(), last.is_empty()) {
            (true, true) => Err(bad()),
            (true, false) => Ok(ByteRange::Last(number(last)?)),
            (false, true) => Ok(ByteRange::From(number(first)?)),
            (false, false) => {
                let (start, end) = (number(first)?, number(last)?);
                if end < start {
                    return Err(format!("range {text:?} ends before it starts"));
                }
                Ok(ByteRange::Span { start, end })
            }
        }
    }

    /// `length` bytes from `offset` (`None` when `length` is 0).
    pub fn at(offset: u64, length: u64) -> Option<ByteRange> {
        let end = offset.checked_add(length.checked_sub(1)?)?;
        Some(ByteRange::Span { start: offset, end })
    }

    /// The `Range` header's value.
    pub fn header(&self) -> String {
        match self {
            ByteRange::Span { start, end } => format!("bytes={start}-{end}"),
            ByteRange::From(start) => format!("bytes={start}-"),
            ByteRange::Last(n) => format!("bytes=-{n}"),
        }
    }
}

/// What a `HEAD /v1/blobs/{key}` says of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHead {
    pub size: u64,
    /// Unquoted.
    pub etag: String,
    pub content_type: String,
}

/// A download under way: the answer's headers are read, the bytes not yet.
/// Write them out with [`write_to`](Self::write_to) or take them whole with
/// [`bytes`](Self::bytes).
pub struct BlobDownload {
    resp: reqwest::Response,
    /// Bytes this answer carries (the range's length, or the blob's size).
    pub length: u64,
    /// The blob's whole size.
    pub size: u64,
    /// The range served as `(start, end)` inclusive, for a 206; `None`
    /// when the whole blob comes.
    pub range: Option<(u64, u64)>,
    /// Unquoted.
    pub etag: String,
    pub content_type: String,
}

impl BlobDownload {
    /// Streams the bytes into `out` (then flushes it), calling `progress`
    /// with the bytes written so far; returns how many were written. Fails
    /// when the answer ends short of its length.
    pub async fn write_to<W: AsyncWrite + Unpin>(
        self,
        out: &mut W,
        progress: Option<Progress>,
    ) -> Result<u64> {
        let expected = self.length;
        let mut body = self.resp.bytes_stream();
        let mut written = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(transport)?;
            out.write_all(&piece)
                .await
                .map_err(|e| Error::Transport(format!("cannot write the blob's bytes: {e}")))?;
            written += piece.len() as u64;
            if let Some(p) = &progress {
                p(written);
            }
        }
        out.flush()
            .await
            .map_err(|e| Error::Transport(format!("cannot write the blob's bytes: {e}")))?;
        if written != expected {
            return Err(Error::Transport(format!(
                "the download ended after {written} of {expected} bytes"
            )));
        }
        Ok(written)
    }

    /// Streams the bytes into the file at `path` (see
    /// [`write_to`](Self::write_to)), written beside as `path.part` and
    /// renamed into place once complete and synced: a failed download
    /// leaves `path` as it was.
    pub async fn write_file(self, path: &Path, progress: Option<Progress>) -> Result<u64> {
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let io = |what: &str, e: std::io::Error| {
            Error::Transport(format!("cannot {what} {}: {e}", part.display()))
        };
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io("create", e))?;
        let written = match self.write_to(&mut file, progress).await {
            Ok(n) => n,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        file.sync_all().await.map_err(|e| io("sync", e))?;
        drop(file);
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| io("rename", e))?;
        Ok(written)
    }

    /// The bytes, in memory.
    pub async fn bytes(self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.length.min(64 << 20) as usize);
        self.write_to(&mut out, None).await?;
        Ok(out)
    }
}

impl Client {
    /// Uploads `body` as the blob `key`, replacing any blob there; the
    /// node stores it whole once all of it has arrived, or not at all.
    pub async fn put_blob(
        &self,
        key: &str,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> Result<BlobView> {
        let mut req = self
            .http
            .put(format!("{}/v1/blobs/{}", self.base, seg(key)))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        decode(req.send().await.map_err(transport)?).await
    }

    /// Uploads everything `reader` yields as the blob `key`, streamed as a
    /// chunked body (constant memory whatever the size), calling
    /// `progress` with the bytes read so far.
    pub async fn put_blob_reader<R>(
        &self,
        key: &str,
        reader: R,
        content_type: Option<&str>,
        progress: Option<Progress>,
    ) -> Result<BlobView>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let pieces = futures_util::stream::try_unfold(
            (reader, 0u64, progress),
            |(mut reader, sent, progress)| async move {
                let mut buf = BytesMut::zeroed(UPLOAD_PIECE);
                let mut filled = 0;
                // Fill a whole piece when the source gives less at a time
                // (a pipe): fewer, larger chunks on the wire.
                while filled < buf.len() {
                    let n = reader.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                buf.truncate(filled);
                let sent = sent + filled as u64;
                if let Some(p) = &progress {
                    p(sent);
                }
                Ok(Some((Bytes::from(buf), (reader, sent, progress))))
            },
        );
        self.put_blob(key, reqwest::Body::wrap_stream(pieces), content_type)
            .await
            .map_err(|e| match e {
                // reqwest names the source's error as the body's.
                Error::Transport(m) => Error::Transport(format!("uploading {key}: {m}")),
                other => other,
            })
    }

    /// Uploads the file at `path` as the blob `key` (see
    /// [`put_blob_reader`](Self::put_blob_reader)).
    pub async fn put_blob_file(
        &self,
        key: &str,
        path: &Path,
        content_type: Option<&str>,
        progress: Option<Progress>,
    ) -> Result<BlobView> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Transport(format!("cannot open {}: {e}", path.display())))?;
        self.put_blob_reader(key, file, content_type, progress)
            .await
    }

    /// Starts reading the blob `key`, whole or one range. A range starting
    /// at or past the end is `range_not_satisfiable` (416), a missing blob
    /// `blob_not_found` (404).
    pub async fn get_blob(&self, key: &str, range: Option<ByteRange>) -> Result<BlobDownload> {
        let mut req = self
            .http
            .get(format!("{}/v1/blobs/{}", self.base, seg(key)));
        if let Some(r) = range {
            req = req.header(RANGE, r.header());
        }
        let resp = req.send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        let length = header_u64(&resp, CONTENT_LENGTH.as_str())?;
        let (size, range) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let text = header_text(&resp, CONTENT_RANGE.as_str());
            let parsed = parse_content_range(&text).ok_or_else(|| {
                Error::Transport(format!("unreadable Content-Range from the node: {text:?}"))
            })?;
            (parsed.2, Some((parsed.0, parsed.1)))
        } else {
            (length, None)
        };
        Ok(BlobDownload {
            length,
            size,
            range,
            etag: unquote(&header_text(&resp, ETAG.as_str())),
            content_type: header_text(&resp, CONTENT_TYPE.as_str()),
            resp,
        })
    }

    /// The bytes of the blob `key` (or of one range), in memory.
    pub async fn blob_bytes(&self, key: &str, range: Option<ByteRange>) -> Result<Vec<u8>> {
        self.get_blob(key, range).await?.bytes().await
    }

    /// Downloads the blob `key` (or one range) into the file at `path`,
    /// streamed (see [`BlobDownload::write_file`]); returns the bytes
    /// written.
    pub async fn download_blob(
        &self,
        key: &str,
        range: Option<ByteRange>,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<u64> {
        self.get_blob(key, range)
            .await?
            .write_file(path, progress)
            .await
    }

    /// A blob's size, entity tag and content type (`HEAD`).
    pub async fn blob_head(&self, key: &str) -> Result<BlobHead> {
        let resp = self
            .http
            .head(format!("{}/v1/blobs/{}", self.base, seg(key)))
            .send()
            .await
            .map_err(transport)?;
        if resp.status() == StatusCode::NOT_FOUND {
            // A HEAD answer has no body to carry the error.
            return Err(Error::Api {
                status: 404,
                code: ErrorCode::BlobNotFound,
                message: format!("blob `{key}` not found"),
            });
        }
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(BlobHead {
            size: header_u64(&resp, CONTENT_LENGTH.as_str())?,
            etag: unquote(&header_text(&resp, ETAG.as_str())),
            content_type: header_text(&resp, CONTENT_TYPE.as_str()),
        })
    }

    /// A blob's whole metadata (version, SHA-256, whether fixed-size,
    /// creation time): the first entry of a listing by the key itself as
    /// prefix (the key sorts before every longer key it begins).
    pub async fn blob_meta(&self, key: &str) -> Result<BlobView> {
        let page = self.list_blobs(key, None, 1).await?;
        page.blobs
            .into_iter()
            .find(|b| b.key == key)
            .ok_or_else(|| Error::Api {
                status: 404,
                code: ErrorCode::BlobNotFound,
                message: format!("blob `{key}` not found"),
            })
    }

    /// A page of blobs whose key starts with `prefix`, in key order, after
    /// `cursor` (the previous page's `next`); `limit` 1 to 1000.
    pub async fn list_blobs(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BlobList> {
        let mut path = format!("/v1/blobs?prefix={}&limit={limit}", seg(prefix));
        if let Some(c) = cursor {
            path = format!("{path}&cursor={}", seg(c));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// Deletes the blob `key` (`blob_not_found` when absent).
    pub async fn delete_blob(&self, key: &str) -> Result<()> {
        self.delete_no_content(&format!("/v1/blobs/{}", seg(key)))
            .await
    }

    /// Creates a zero-filled blob of `size` bytes that bitfield batches
    /// can change, replacing any blob under the key; with `if_absent`, an
    /// existing blob is kept and the answer is `precondition_failed` (412).
    pub async fn create_fixed_blob(
        &self,
        key: &str,
        size: u64,
        if_absent: bool,
    ) -> Result<BlobView> {
        let mut req = self
            .http
            .put(format!(
                "{}/v1/blobs/{}?fixed_size={size}",
                self.base,
                seg(key)
            ))
            .body(Vec::new());
        if if_absent {
            req = req.header(IF_NONE_MATCH, "*");
        }
        decode(req.send().await.map_err(transport)?).await
    }

    /// Applies a batch of bit and byte operations to a fixed-size blob, all
    /// or nothing (an invalid operation is `invalid_input` and changes
    /// nothing).
    pub async fn bitfield(&self, key: &str, ops: Vec<BitfieldOp>) -> Result<BitfieldResponse> {
        self.json(
            Method::POST,
            &format!("/v1/blobs/{}/bitfield", seg(key)),
            Some(&BitfieldRequest { ops }),
        )
        .await
    }
}

fn header_text(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Result<u64> {
    let text = header_text(resp, name);
    text.parse()
        .map_err(|_| Error::Transport(format!("unreadable {name} from the node: {text:?}")))
}

fn unquote(tag: &str) -> String {
    tag.trim_start_matches("W/").trim_matches('"').to_string()
}

/// `bytes START-END/SIZE` as `(start, end, size)`.
fn parse_content_range(text: &str) -> Option<(u64, u64, u64)> {
    let rest = text.strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_the_header_writes_them() {
        assert_eq!(
            ByteRange::parse("0-9"),
            Ok(ByteRange::Span { start: 0, end: 9 })
        );
        assert_eq!(ByteRange::parse("10-"), Ok(ByteRange::From(10)));
        assert_eq!(ByteRange::parse("-10"), Ok(ByteRange::Last(10)));
        for bad in ["", "-", "5-1", "a-b", "1", "+1-2", "1-2-3", "0-1,3-4"] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteRange::parse("5-9").unwrap().header(), "bytes=5-9");
        assert_eq!(ByteRange::Last(3).header(), "bytes=-3");
        assert_eq!(ByteRange::From(3).header(), "bytes=3-");
        assert_eq!(
            ByteRange::at(10, 5),
            Some(ByteRange::Span { start: 10, end: 14 })
        );
        assert_eq!(ByteRange::at(10, 0), None);
        assert_eq!(ByteRange::at(u64::MAX, 2), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("W/\"abc\""), "abc");
    }
}
