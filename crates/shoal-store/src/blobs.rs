//! The blob port: named byte strings of any size, streamed in and read back
//! by byte range, plus fixed-size *mutable* blobs changed in place by
//! batches of bit and byte operations (the semantics of Redis `BITFIELD`,
//! shared here so every store computes them the same way).
//!
//! Two kinds of blob live under one key space:
//! - **uploaded** (`mutable == false`): written once by a [`BlobUpload`] and
//!   committed atomically; the content never changes until the key is
//!   replaced or deleted. `sha256` is the content's hash.
//! - **fixed-size** (`mutable == true`): created zero-filled with a size by
//!   [`Blobs::blob_create_fixed`], changed by [`Blobs::blob_apply`]. Every
//!   applied batch gives the blob a new `version`; `sha256` is `None`.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::{Pending, Result};

/// The most bytes a fixed-size blob may have (the stores keep its pages in
/// their database, and an operation batch may touch any of them).
pub const MAX_FIXED_BLOB_BYTES: u64 = 256 << 20;

/// What is known of one stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content, for an uploaded blob; `None`
    /// for a fixed-size blob (its content changes in place).
    pub sha256: Option<String>,
    /// The content type given at upload, if any.
    pub content_type: Option<String>,
    /// Taken from one store-wide counter by every write of the blob (the
    /// commit of an upload, the creation of a fixed-size blob, every applied
    /// operation batch that changes a byte or not): it is never given twice,
    /// so `(key, version)` names one content. Always at least 1.
    pub version: u64,
    pub mutable: bool,
    /// The `now_ms` of the write that created this content (the commit, the
    /// creation; operation batches do not change it).
    pub created_at_ms: u64,
}

impl BlobMeta {
    /// The entity tag of this content (without quotes): the content hash
    /// of an uploaded blob, so the same bytes uploaded again keep their
    /// tag; `v<version>` for a fixed-size blob.
    pub fn etag(&self) -> String {
        match &self.sha256 {
            Some(sha) => sha.clone(),
            None => format!("v{}", self.version),
        }
    }
}

/// A stream of a blob's bytes, in order, in pieces of any size.
pub type BlobStream = BoxStream<'static, Result<Bytes>>;

/// An answer of [`Blobs::blob_read`]: the blob's metadata and the bytes
/// asked for, of that same content.
pub struct BlobRead {
    pub meta: BlobMeta,
    /// Exactly the bytes of the range that was asked for (clamped to the
    /// blob's end). If the blob is replaced or deleted while the stream is
    /// read, the stream either goes on with the old content or ends with an
    /// error; it never mixes two contents.
    pub body: BlobStream,
}

/// A piece of a blob in a file on this node's disk: `len` bytes at
/// `file_offset` of `path` are the blob's bytes from the piece's place in
/// the range asked for. The file is never written again while it exists
/// (a replaced blob gets a new file), but it may be removed once the blob
/// is replaced, deleted, or evicted from a cache: a reader that cannot open
/// it asks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePiece {
    pub path: PathBuf,
    pub file_offset: u64,
    pub len: u64,
}

/// What [`Blobs::blob_files`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFiles {
    pub meta: BlobMeta,
    /// The files holding the range asked for, in order, covering it
    /// exactly (clamped to the blob's end); `None` when this blob's bytes
    /// are not in files (a fixed-size blob): read it with `blob_read`.
    pub pieces: Option<Vec<FilePiece>>,
}

/// One page of [`Blobs::blob_list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobPage {
    /// Blobs in key order (byte order of the keys).
    pub blobs: Vec<BlobMeta>,
    /// The last key of this page, to pass as `after` for the next one, when
    /// more keys with the prefix may follow; `None` at the end.
    pub next: Option<String>,
}

/// An upload in progress ([`Blobs::blob_upload`]). Nothing of it is visible
/// until `commit` resolves; dropping it without committing (a cut upload)
/// discards what was written, and so does a crash of the node: no partial
/// blob is ever readable. Space of an upload the node could not clean up
/// (a `kill -9`) is reclaimed by [`Blobs::blob_sweep`].
pub trait BlobUpload: Send {
    /// Appends bytes. Resolves when the bytes are handed to the store (not
    /// necessarily durable yet); callers wait for it before writing more,
    /// which bounds the memory an upload holds.
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Makes the upload the blob's content, durably and atomically,
    /// replacing any blob under the key (uploaded or fixed-size). Resolves
    /// with the new metadata once it is durable.
    fn commit(self: Box<Self>, content_type: Option<String>, now_ms: u64) -> Pending<BlobMeta>;
}

/// The width and signedness of a bitfield integer: `u1`..`u32`, `i1`..`i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitType {
    pub signed: bool,
    /// 1..=32.
    pub bits: u8,
}

impl BitType {
    /// Parses `u4`, `i8`, ...; `None` for anything else (widths 1..=32).
    pub fn parse(text: &str) -> Option<BitType> {
        let (signed, digits) = match text.as_bytes().first()? {
            b'u' => (false, &text[1..]),
            b'i' => (true, &text[1..]),
            _ => return None,
        };
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let bits: u8 = digits.parse().ok()?;
        (1..=32).contains(&bits).then_some(BitType { signed, bits })
    }

    pub fn min(self) -> i64 {
        if self.signed {
            -(1i64 << (self.bits - 1))
        } else {
            0
        }
    }

    pub fn max(self) -> i64 {
        if self.signed {
            (1i64 << (self.bits - 1)) - 1
        } else {
            (1i64 << self.bits) - 1
        }
    }

    /// Redis's name of the type (`u4`).
    pub fn name(self) -> String {
        format!("{}{}", if self.signed { 'i' } else { 'u' }, self.bits)
    }
}

/// What `set` and `incrby` do with a value out of the type's range (Redis
/// `OVERFLOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Modulo the type's range (two's complement for signed types).
    #[default]
    Wrap,
    /// Clamp to the type's minimum or maximum.
    Sat,
    /// Leave the field as it is and answer `None` for this operation.
    Fail,
}

/// One operation of a batch on a fixed-size blob ([`Blobs::blob_apply`]).
/// Bit offsets count from the most significant bit of byte 0 (Redis's
/// order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOp {
    /// Answers the field's value.
    Get { ty: BitType, offset: u64 },
    /// Stores `value` (after `overflow`) and answers the field's old value.
    Set {
        ty: BitType,
        offset: u64,
        value: i64,
        overflow: Overflow,
    },
    /// Adds `by` (after `overflow`) and answers the new value.
    IncrBy {
        ty: BitType,
        offset: u64,
        by: i64,
        overflow: Overflow,
    },
    /// Writes bytes at a byte offset; answers `None`.
    WriteAt { offset: u64, data: Vec<u8> },
}

/// The largest `|value|` of a `set` or `|by|` of an `incrby`: every store
/// computes in integers that hold it exactly (the Redis store in Lua's
/// doubles).
pub const MAX_BIT_ARGUMENT: i64 = 1 << 40;

impl BlobOp {
    /// The byte range `[start, end)` this operation reads or writes.
    pub fn byte_span(&self) -> (u64, u64) {
        match self {
            BlobOp::Get { ty, offset }
            | BlobOp::Set { ty, offset, .. }
            | BlobOp::IncrBy { ty, offset, .. } => {
                let end_bit = offset.saturating_add(u64::from(ty.bits));
                (offset / 8, end_bit.div_ceil(8))
            }
            BlobOp::WriteAt { offset, data } => (*offset, offset.saturating_add(data.len() as u64)),
        }
    }

    /// Whether the operation can change the blob.
    pub fn writes(&self) -> bool {
        !matches!(self, BlobOp::Get { .. })
    }
}

/// One operation as clients write it (HTTP `POST /v1/blobs/{key}/bitfield`
/// and `ctx.blob_apply`), like one of Redis `BITFIELD`:
/// `{"op": "set", "type": "u4", "offset": "#12", "value": 7}`. Turned into a
/// [`BlobOp`] by [`OpSpec::parse`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpSpec {
    /// `get`, `set`, `incrby` or `write_at`.
    pub op: String,
    /// `u1`..`u32` or `i1`..`i32` (not for `write_at`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// A bit offset (a number), or `"#N"`: the N-th field of the type's
    /// width. For `write_at`: a byte offset.
    pub offset: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<i64>,
    /// `wrap` (default), `sat` or `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// `write_at`: the bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl OpSpec {
    /// The operation, or what is wrong with it.
    pub fn parse(&self) -> std::result::Result<BlobOp, String> {
        use base64::Engine as _;
        let op = self;
        let unexpected = |field: &str| format!("{} takes no `{field}`", op.op);
        let refuse = |given: &[(bool, &str)]| match given.iter().find(|(g, _)| *g) {
            Some((_, name)) => Err(unexpected(name)),
            None => Ok(()),
        };
        if op.op == "write_at" {
            refuse(&[
                (op.ty.is_some(), "type"),
                (op.value.is_some(), "value"),
                (op.by.is_some(), "by"),
                (op.overflow.is_some(), "overflow"),
            ])?;
            let data = op
                .data_base64
                .as_deref()
                .ok_or("write_at needs `data_base64`")?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| format!("`data_base64` is not base64: {e}"))?;
            let offset = op
                .offset
                .as_u64()
                .ok_or("`offset` must be a byte offset (a non-negative integer)")?;
            return Ok(BlobOp::WriteAt { offset, data });
        }
        refuse(&[(op.data_base64.is_some(), "data_base64")])?;
        let ty = op
            .ty
            .as_deref()
            .ok_or("needs a `type` (u1..u32 or i1..i32)")?;
        let ty = BitType::parse(ty)
            .ok_or_else(|| format!("type {ty:?} is not one of u1..u32, i1..i32"))?;
        let offset = match &op.offset {
            serde_json::Value::Number(n) => n
                .as_u64()
                .ok_or("`offset` must be a non-negative integer")?,
            serde_json::Value::String(s) => {
                let index: u64 = s
                    .strip_prefix('#')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        format!("offset {s:?} must be a bit offset or \"#N\" (the N-th field)")
                    })?;
                index
                    .checked_mul(u64::from(ty.bits))
                    .ok_or("`offset` is too large")?
            }
            _ => return Err("`offset` must be a bit offset or \"#N\" (the N-th field)".to_string()),
        };
        let overflow = match op.overflow.as_deref() {
            None | Some("wrap") => Overflow::Wrap,
            Some("sat") => Overflow::Sat,
            Some("fail") => Overflow::Fail,
            Some(other) => return Err(format!("overflow {other:?} is not wrap, sat or fail")),
        };
        match op.op.as_str() {
            "get" => {
                refuse(&[
                    (op.value.is_some(), "value"),
                    (op.by.is_some(), "by"),
                    (op.overflow.is_some(), "overflow"),
                ])?;
                Ok(BlobOp::Get { ty, offset })
            }
            "set" => {
                refuse(&[(op.by.is_some(), "by")])?;
                let value = op.value.ok_or("set needs a `value`")?;
                Ok(BlobOp::Set {
                    ty,
                    offset,
                    value,
                    overflow,
                })
            }
            "incrby" => {
                refuse(&[(op.value.is_some(), "value")])?;
                let by = op.by.ok_or("incrby needs `by`")?;
                Ok(BlobOp::IncrBy {
                    ty,
                    offset,
                    by,
                    overflow,
                })
            }
            other => Err(format!("op {other:?} is not get, set, incrby or write_at")),
        }
    }
}

/// Why [`validate_ops`] refused a batch: the index of the first bad
/// operation and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOp {
    pub index: usize,
    pub reason: String,
}

/// Checks a batch against a blob of `size` bytes: every operation inside
/// the blob, arguments within [`MAX_BIT_ARGUMENT`]. Every store checks this
/// (against the size it holds, in the same atomic step as the batch)
/// before changing anything.
pub fn validate_ops(ops: &[BlobOp], size: u64) -> std::result::Result<(), BadOp> {
    for (index, op) in ops.iter().enumerate() {
        let bad = |reason: String| Err(BadOp { index, reason });
        let (start, end) = op.byte_span();
        if end > size || start > end {
            return bad(format!(
                "bytes {start}..{end} are past the end of the blob ({size} bytes)"
            ));
        }
        match op {
            BlobOp::Set { value: n, .. } | BlobOp::IncrBy { by: n, .. }
                if n.unsigned_abs() > MAX_BIT_ARGUMENT as u64 =>
            {
                return bad(format!("{n} is out of range (at most ±{MAX_BIT_ARGUMENT})"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bytes a batch is applied to, addressed by absolute byte offset within
/// the blob (a store may hold only the pages the batch touches).
pub trait ByteWindow {
    fn byte(&self, at: u64) -> u8;
    fn set_byte(&mut self, at: u64, value: u8);
}

impl ByteWindow for Vec<u8> {
    fn byte(&self, at: u64) -> u8 {
        self[at as usize]
    }
    fn set_byte(&mut self, at: u64, value: u8) {
        self[at as usize] = value;
    }
}

fn read_field(window: &impl ByteWindow, ty: BitType, offset: u64) -> i64 {
    let mut raw: u64 = 0;
    for bit in offset..offset + u64::from(ty.bits) {
        let byte = window.byte(bit / 8);
        raw = (raw << 1) | u64::from((byte >> (7 - bit % 8)) & 1);
    }
    if ty.signed && raw >> (ty.bits - 1) & 1 == 1 {
        raw as i64 - (1i64 << ty.bits)
    } else {
        raw as i64
    }
}

fn write_field(window: &mut impl ByteWindow, ty: BitType, offset: u64, value: i64) {
    let raw = value as u64;
    for (i, bit) in (offset..offset + u64::from(ty.bits)).enumerate() {
        let one = (raw >> (u64::from(ty.bits) - 1 - i as u64)) & 1 == 1;
        let mask = 1u8 << (7 - bit % 8);
        let byte = window.byte(bit / 8);
        window.set_byte(bit / 8, if one { byte | mask } else { byte & !mask });
    }
}

/// `value` brought into the type's range, or `None` under `Fail`.
fn fit(ty: BitType, value: i128, overflow: Overflow) -> Option<i64> {
    let (min, max) = (i128::from(ty.min()), i128::from(ty.max()));
    if (min..=max).contains(&value) {
        return Some(value as i64);
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(value.clamp(min, max) as i64),
        Overflow::Wrap => {
            let span = 1i128 << ty.bits;
            let mut wrapped = value.rem_euclid(span);
            if ty.signed && wrapped > max {
                wrapped -= span;
            }
            Some(wrapped as i64)
        }
    }
}

/// Applies a batch that [`validate_ops`] accepted, in order, and answers
/// one value per operation (see [`BlobOp`]).
pub fn apply_ops(window: &mut impl ByteWindow, ops: &[BlobOp]) -> Vec<Option<i64>> {
    ops.iter()
        .map(|op| match *op {
            BlobOp::Get { ty, offset } => Some(read_field(window, ty, offset)),
            BlobOp::Set {
                ty,
                offset,
                value,
                overflow,
            } => {
                let old = read_field(window, ty, offset);
                let new = fit(ty, i128::from(value), overflow)?;
                write_field(window, ty, offset, new);
                Some(old)
            }
            BlobOp::IncrBy {
                ty,
                offset,
                by,
                overflow,
            } => {
                let old = read_field(window, ty, offset);
                let new = fit(ty, i128::from(old) + i128::from(by), overflow)?;
                write_field(window, ty, offset, new);
                Some(new)
            }
            BlobOp::WriteAt { offset, ref data } => {
                for (i, b) in data.iter().enumerate() {
                    window.set_byte(offset + i as u64, *b);
                }
                None
            }
        })
        .collect()
}

/// What [`Blobs::blob_apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The batch ran: one answer per operation, and the blob's metadata
    /// after it (a new version).
    Done {
        results: Vec<Option<i64>>,
        meta: BlobMeta,
    },
    /// No blob has the key.
    NotFound,
    /// The blob is an uploaded one: operations apply to fixed-size blobs.
    NotMutable,
    /// The batch failed [`validate_ops`] against the blob's size; nothing
    /// changed.
    Invalid(BadOp),
}

/// What [`Blobs::blob_create_fixed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The new zero-filled blob.
    Created(BlobMeta),
    /// `replace` was false and a blob has the key: it is left as it is.
    Exists(BlobMeta),
}

/// Blobs by key. Keys are strings the engine has checked. Every write is
/// atomic on its key and durable when its future resolves.
pub trait Blobs: Send + Sync + 'static {
    /// Starts an upload for `key` (see [`BlobUpload`]).
    fn blob_upload(&self, key: &str) -> Pending<Box<dyn BlobUpload>>;
    /// The blob's metadata.
    fn blob_meta(&self, key: &str) -> Pending<Option<BlobMeta>>;
    /// `len` bytes from `offset` (clamped to the blob's end; an offset at
    /// or past the end gives an empty body), `None` when absent. Memory
    /// held by the stream is bounded whatever the range (it reads a piece at
    /// a time as the consumer polls).
    fn blob_read(&self, key: &str, offset: u64, len: u64) -> Pending<Option<BlobRead>>;
    /// Where this node's disk holds the bytes of the range (see
    /// [`BlobFiles`]), fetching them into a local cache first where the
    /// store keeps blobs elsewhere. `None` (not a future) from a store that
    /// never has files (the in-memory one).
    fn blob_files(&self, key: &str, offset: u64, len: u64) -> Option<Pending<Option<BlobFiles>>>;
    /// Deletes the blob; true when there was one.
    fn blob_delete(&self, key: &str) -> Pending<bool>;
    /// Blobs whose key starts with `prefix`, in key order, strictly after
    /// `after` when given, at most `limit` (0 taken as 1).
    fn blob_list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Pending<BlobPage>;
    /// Creates a zero-filled fixed-size blob of `size` bytes (at most
    /// [`MAX_FIXED_BLOB_BYTES`], checked by the engine), replacing any
    /// blob under the key when `replace`.
    fn blob_create_fixed(
        &self,
        key: &str,
        size: u64,
        replace: bool,
        now_ms: u64,
    ) -> Pending<Created>;
    /// Validates and applies a batch of operations to a fixed-size blob, all
    /// or nothing, atomically with respect to every other write of it.
    fn blob_apply(&self, key: &str, ops: Vec<BlobOp>) -> Pending<Applied>;
    /// Reclaims the space of uploads abandoned before `older_than_ms` (a
    /// node killed mid-upload) and of replaced or deleted content no reader
    /// can reach anymore; answers how many it removed. The engine calls it
    /// at start and periodically.
    fn blob_sweep(&self, older_than_ms: u64) -> Pending<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(bits: u8) -> BitType {
        BitType {
            signed: false,
            bits,
        }
    }
    fn i(bits: u8) -> BitType {
        BitType { signed: true, bits }
    }

    #[test]
    fn types_parse_like_redis() {
        assert_eq!(BitType::parse("u4"), Some(u(4)));
        assert_eq!(BitType::parse("i32"), Some(i(32)));
        for bad in ["u0", "u33", "i64", "x4", "u", "u04", "u-1", ""] {
            assert_eq!(BitType::parse(bad), None, "{bad}");
        }
        assert_eq!((i(8).min(), i(8).max(), u(4).max()), (-128, 127, 15));
    }

    #[test]
    fn fields_follow_redis_bit_order() {
        let mut buf = vec![0u8; 4];
        // 4-bit pixels: pixel 1 is the low nibble of byte 0.
        let ops = [
            BlobOp::Set {
                ty: u(4),
                offset: 4,
                value: 0xA,
                overflow: Overflow::Wrap,
            },
            BlobOp::Set {
                ty: u(8),
                offset: 12,
                value: 0xFF,
                overflow: Overflow::Wrap,
            },
            BlobOp::Get {
                ty: i(4),
                offset: 4,
            },
        ];
        validate_ops(&ops, 4).unwrap();
        assert_eq!(apply_ops(&mut buf, &ops), vec![Some(0), Some(0), Some(-6)]);
        assert_eq!(buf, vec![0x0A, 0x0F, 0xF0, 0]);
    }

    #[test]
    fn overflow_modes() {
        let mut buf = vec![0u8; 1];
        let incr = |by, overflow| BlobOp::IncrBy {
            ty: u(2),
            offset: 0,
            by,
            overflow,
        };
        let out = apply_ops(
            &mut buf,
            &[
                incr(5, Overflow::Wrap),
                incr(9, Overflow::Sat),
                incr(1, Overflow::Fail),
            ],
        );
        assert_eq!(out, vec![Some(1), Some(3), None]);
        let mut buf = vec![0u8; 1];
        let set = BlobOp::Set {
            ty: i(4),
            offset: 0,
            value: 9,
            overflow: Overflow::Wrap,
        };
        assert_eq!(
            apply_ops(
                &mut buf,
                &[
                    set,
                    BlobOp::Get {
                        ty: i(4),
                        offset: 0
                    }
                ]
            ),
            vec![Some(0), Some(-7)]
        );
    }

    #[test]
    fn specs_parse() {
        let op = |v: serde_json::Value| serde_json::from_value::<OpSpec>(v).unwrap().parse();
        assert_eq!(
            op(serde_json::json!({"op": "set", "type": "u4", "offset": "#3", "value": 5})),
            Ok(BlobOp::Set {
                ty: u(4),
                offset: 12,
                value: 5,
                overflow: Overflow::Wrap
            })
        );
        assert!(
            op(serde_json::json!({"op": "get", "type": "u4", "offset": 1, "value": 5})).is_err()
        );
        assert!(
            op(serde_json::json!({"op": "set", "type": "u64", "offset": 1, "value": 5})).is_err()
        );
        assert!(
            op(serde_json::json!({"op": "write_at", "offset": 1, "data_base64": "!!"})).is_err()
        );
        assert!(op(serde_json::json!({"op": "get", "type": "u4", "offset": -1})).is_err());
        assert_eq!(
            op(serde_json::json!({"op": "write_at", "offset": 2, "data_base64": "AQI="})),
            Ok(BlobOp::WriteAt {
                offset: 2,
                data: vec![1, 2]
            })
        );
    }

    #[test]
    fn validation_names_the_first_bad_op() {
        let ops = [
            BlobOp::WriteAt {
                offset: 2,
                data: vec![1, 2],
            },
            BlobOp::Get {
                ty: u(8),
                offset: 25,
            },
        ];
        let bad = validate_ops(&ops, 4).unwrap_err();
        assert_eq!(bad.index, 1);
        let big = BlobOp::Set {
            ty: u(8),
            offset: 0,
            value: i64::MAX,
            overflow: Overflow::Sat,
        };
        assert_eq!(validate_ops(&[big], 4).unwrap_err().index, 0);
    }
}
