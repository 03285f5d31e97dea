//! The versioned value encoding: one format byte, then the payload.
//!
//! Format 1:
//! - records (functions, tokens, invocations): `[1] ++ JSON`;
//! - logs: `[1] ++ raw bytes`;
//! - queue messages: `[1] ++ u32 LE header length ++ JSON header ++ raw body`,
//!   so bodies are stored as they are, not as JSON arrays of numbers (the
//!   header's `sent_ms` came later: absent means 0);
//! - dead letters: the same framing, with a `DeadHeader`;
//! - queue samples: `[1] ++ JSON` of `StoredSample`;
//! - categories: `[1] ++ u64 LE internal id ++ u32 LE shards ++ JSON record`,
//!   so the hot paths (every document read and write) find the category's
//!   key prefix and shard count without parsing JSON;
//! - documents: `[1] ++ the JSON text as given` (never re-encoded).
//! - key-value entries: `[1] ++ a fixed binary header ++ the value as given`
//!   (see `kv`).
//!
//! Document keys are `u64 BE internal category id ++ u32 BE shard ++ id
//! bytes`: one shard is one contiguous range in id byte order, and two
//! categories never share a prefix, whatever their names.
//!
//! A new format gets a new first byte; decoders keep reading every older one.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_store::{
    CategoryRecord, Error, InvocationRecord, LimiterRecord, QueueCounters, QueueDepth, QueueSample,
    Result,
};

pub(crate) const FORMAT_V1: u8 = 1;

/// `[1] ++ JSON`.
pub(crate) fn encode_record<T: Serialize>(what: &dyn Display, value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| Error::Corrupt(format!("{what}: cannot encode: {e}")))?;
    Ok(out)
}

pub(crate) fn decode_record<T: DeserializeOwned>(what: &dyn Display, bytes: &[u8]) -> Result<T> {
    let payload = payload(what, bytes)?;
    serde_json::from_slice(payload).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// Rejects what JSON cannot carry back: non-finite floats are written as
/// `null` by serde_json and would make the record unreadable.
pub(crate) fn check_invocation(record: &InvocationRecord) -> Result<()> {
    let finite = record.billed_gb_s.is_finite()
        && record.duration_ms.is_none_or(f64::is_finite)
        && record.queued_ms.is_none_or(f64::is_finite);
    if finite {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "invocation {}: billed_gb_s, duration_ms and queued_ms must be finite",
            record.id
        )))
    }
}

/// Rejects a rate that JSON cannot carry back (see `check_invocation`).
pub(crate) fn check_limiter(record: &LimiterRecord) -> Result<()> {
    if record.per_second.is_finite() {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "limiter {}: per_second must be finite",
            record.name
        )))
    }
}

/// `[1] ++ bytes`.
pub(crate) fn encode_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(FORMAT_V1);
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn decode_bytes(what: &dyn Display, bytes: &[u8]) -> Result<Vec<u8>> {
    payload(what, bytes).map(<[u8]>::to_vec)
}

fn payload<'a>(what: &dyn Display, bytes: &'a [u8]) -> Result<&'a [u8]> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => Ok(rest),
        Some((v, _)) => Err(Error::Corrupt(format!("{what}: unknown format {v}"))),
        None => Err(Error::Corrupt(format!("{what}: empty value"))),
    }
}

/// The stored state of a queue message, next to its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageHeader {
    pub due_ms: u64,
    pub failures: u32,
    /// Attempts begun (`started`); 0 in messages stored before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub starts: u32,
    /// Send order across all queues, so equal due times are delivered FIFO.
    pub seq: u64,
    /// When it was sent; 0 for messages stored before this field existed.
    #[serde(default)]
    pub sent_ms: u64,
    /// The concurrency key; absent when none (and in older messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The stored state of a dead letter, next to its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeadHeader {
    pub failures: u32,
    pub sent_ms: u64,
    pub dead_at_ms: u64,
    pub reason: String,
    /// The message's concurrency key, restored by a redrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `[1] ++ u32 LE header length ++ JSON header ++ body`.
fn encode_framed(header: &impl Serialize, body: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a struct of integers and strings serializes");
    let mut out = Vec::with_capacity(1 + 4 + json.len() + body.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out
}

fn decode_framed<'a, H: DeserializeOwned>(
    what: &dyn Display,
    bytes: &'a [u8],
) -> Result<(H, &'a [u8])> {
    let rest = payload(what, bytes)?;
    let corrupt = || Error::Corrupt(format!("{what}: truncated message"));
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt());
    }
    let (json, body) = rest.split_at(len);
    let header =
        serde_json::from_slice(json).map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    Ok((header, body))
}

pub(crate) fn encode_message(header: &MessageHeader, body: &[u8]) -> Vec<u8> {
    encode_framed(header, body)
}

/// The header and the body of a stored message.
pub(crate) fn decode_message<'a>(
    what: &dyn Display,
    bytes: &'a [u8],
) -> Result<(MessageHeader, &'a [u8])> {
    decode_framed(what, bytes)
}

pub(crate) fn encode_dead(header: &DeadHeader, body: &[u8]) -> Vec<u8> {
    encode_framed(header, body)
}

/// The header and the body of a stored dead letter.
pub(crate) fn decode_dead<'a>(
    what: &dyn Display,
    bytes: &'a [u8],
) -> Result<(DeadHeader, &'a [u8])> {
    decode_framed(what, bytes)
}

/// A queue sample as stored (its time is in the key).
#[derive(Serialize, Deserialize)]
struct StoredSample {
    waiting: u64,
    in_flight: u64,
    dead: u64,
    oldest_sent_ms: Option<u64>,
    sent: u64,
    acked: u64,
    nacked: u64,
    dead_lettered: u64,
}

pub(crate) fn encode_sample(sample: &QueueSample) -> Vec<u8> {
    let (d, c) = (sample.depth, sample.counters);
    let stored = StoredSample {
        waiting: d.waiting,
        in_flight: d.in_flight,
        dead: d.dead,
        oldest_sent_ms: d.oldest_sent_ms,
        sent: c.sent,
        acked: c.acked,
        nacked: c.nacked,
        dead_lettered: c.dead_lettered,
    };
    let mut out = Vec::with_capacity(160);
    out.push(FORMAT_V1);
    serde_json::to_writer(&mut out, &stored).expect("a struct of integers serializes");
    out
}

pub(crate) fn decode_sample(what: &dyn Display, at_ms: u64, bytes: &[u8]) -> Result<QueueSample> {
    let s: StoredSample = decode_record(what, bytes)?;
    Ok(QueueSample {
        at_ms,
        depth: QueueDepth {
            waiting: s.waiting,
            in_flight: s.in_flight,
            dead: s.dead,
            oldest_sent_ms: s.oldest_sent_ms,
        },
        counters: QueueCounters {
            sent: s.sent,
            acked: s.acked,
            nacked: s.nacked,
            dead_lettered: s.dead_lettered,
        },
    })
}

/// The binary head of a stored category: what document operations need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CategoryHead {
    /// The category's key prefix in the document tables. Never reused, so a
    /// category created again under a deleted one's name starts empty.
    pub id: u64,
    pub shards: u32,
}

const CATEGORY_HEAD_LEN: usize = 1 + 8 + 4;

pub(crate) fn encode_category(head: CategoryHead, record: &CategoryRecord) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(CATEGORY_HEAD_LEN + 64 + 4 * record.slots.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&head.id.to_le_bytes());
    out.extend_from_slice(&head.shards.to_le_bytes());
    serde_json::to_writer(&mut out, record)
        .map_err(|e| Error::Corrupt(format!("category {}: cannot encode: {e}", record.name)))?;
    Ok(out)
}

/// The head alone, without parsing the JSON.
pub(crate) fn decode_category_head(what: &dyn Display, bytes: &[u8]) -> Result<CategoryHead> {
    let rest = payload(what, bytes)?;
    let corrupt = || Error::Corrupt(format!("{what}: truncated category"));
    let (id, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (shards, _) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    Ok(CategoryHead {
        id: u64::from_le_bytes(*id),
        shards: u32::from_le_bytes(*shards),
    })
}

pub(crate) fn decode_category(
    what: &dyn Display,
    bytes: &[u8],
) -> Result<(CategoryHead, CategoryRecord)> {
    let head = decode_category_head(what, bytes)?;
    let record = serde_json::from_slice(&bytes[CATEGORY_HEAD_LEN..])
        .map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    Ok((head, record))
}

/// The length of a document key's (category, shard) prefix.
pub(crate) const SHARD_PREFIX_LEN: usize = 12;

/// `u64 BE category ++ u32 BE shard`.
pub(crate) fn shard_prefix(category: u64, shard: u32) -> [u8; SHARD_PREFIX_LEN] {
    let mut out = [0; SHARD_PREFIX_LEN];
    out[..8].copy_from_slice(&category.to_be_bytes());
    out[8..].copy_from_slice(&shard.to_be_bytes());
    out
}

/// The first key after every key of a shard, if there is one.
pub(crate) fn shard_end(category: u64, shard: u32) -> Option<[u8; SHARD_PREFIX_LEN]> {
    match shard.checked_add(1) {
        Some(next) => Some(shard_prefix(category, next)),
        None => category.checked_add(1).map(|c| shard_prefix(c, 0)),
    }
}

/// Writes a document key into `buf` (cleared first), reusing its allocation.
pub(crate) fn doc_key(buf: &mut Vec<u8>, category: u64, shard: u32, id: &str) {
    buf.clear();
    buf.extend_from_slice(&shard_prefix(category, shard));
    buf.extend_from_slice(id.as_bytes());
}

/// Writes a document value (`[1] ++ body`) into `buf` (cleared first).
pub(crate) fn encode_doc(buf: &mut Vec<u8>, body: &[u8]) {
    buf.clear();
    buf.push(FORMAT_V1);
    buf.extend_from_slice(body);
}

/// The JSON text of a stored document.
pub(crate) fn decode_doc<'a>(what: &dyn Display, bytes: &'a [u8]) -> Result<&'a [u8]> {
    payload(what, bytes)
}

/// The size a stored document counts for in the shard stats (its JSON text).
pub(crate) fn stored_doc_len(bytes: &[u8]) -> u64 {
    bytes.len().saturating_sub(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::conformance::sample_invocation;

    /// Format 1 as written today. If this test fails, the on-disk format
    /// changed: add a new format byte and keep decoding this one.
    #[test]
    fn format_1_is_stable() {
        let header = MessageHeader {
            due_ms: 5,
            failures: 2,
            starts: 0,
            seq: 9,
            sent_ms: 4,
            key: None,
        };
        let bytes = encode_message(&header, b"body");
        let golden: &[u8] =
            b"\x01\x2d\x00\x00\x00{\"due_ms\":5,\"failures\":2,\"seq\":9,\"sent_ms\":4}body";
        assert_eq!(bytes, golden);
        assert_eq!(
            decode_message(&"m", golden).unwrap(),
            (header.clone(), &b"body"[..])
        );
        // Written before `sent_ms` existed: it reads as 0.
        let old: &[u8] = b"\x01\x21\x00\x00\x00{\"due_ms\":5,\"failures\":2,\"seq\":9}body";
        assert_eq!(
            decode_message(&"m", old).unwrap(),
            (
                MessageHeader {
                    sent_ms: 0,
                    ..header.clone()
                },
                &b"body"[..]
            )
        );
        // With attempts begun, `starts` is written; zero is left out (so
        // the bytes above stay as they were).
        let started = MessageHeader {
            starts: 2,
            ..header.clone()
        };
        let bytes = encode_message(&started, b"body");
        assert_eq!(
            bytes,
            b"\x01\x38\x00\x00\x00{\"due_ms\":5,\"failures\":2,\"starts\":2,\"seq\":9,\"sent_ms\":4}body"
        );
        assert_eq!(
            decode_message(&"m", &bytes).unwrap(),
            (started, &b"body"[..])
        );

        let dead = DeadHeader {
            failures: 3,
            sent_ms: 4,
            dead_at_ms: 8,
            reason: "boom".to_string(),
            key: None,
        };
        let golden: &[u8] = concat!(
            "\x01\x39\x00\x00\x00",
            "{\"failures\":3,\"sent_ms\":4,\"dead_at_ms\":8,\"reason\":\"boom\"}body"
        )
        .as_bytes();
        assert_eq!(encode_dead(&dead, b"body"), golden);
        assert_eq!(decode_dead(&"d", golden).unwrap(), (dead, &b"body"[..]));

        let sample = QueueSample {
            at_ms: 9,
            depth: QueueDepth {
                waiting: 1,
                in_flight: 2,
                dead: 3,
                oldest_sent_ms: Some(4),
            },
            counters: QueueCounters {
                sent: 5,
                acked: 6,
                nacked: 7,
                dead_lettered: 8,
            },
        };
        let golden: &[u8] = concat!(
            "\x01{\"waiting\":1,\"in_flight\":2,\"dead\":3,\"oldest_sent_ms\":4,",
            "\"sent\":5,\"acked\":6,\"nacked\":7,\"dead_lettered\":8}"
        )
        .as_bytes();
        assert_eq!(encode_sample(&sample), golden);
        assert_eq!(decode_sample(&"s", 9, golden).unwrap(), sample);
        let empty = QueueSample {
            at_ms: 1,
            depth: QueueDepth::default(),
            counters: QueueCounters::default(),
        };
        assert_eq!(
            decode_sample(&"s", 1, &encode_sample(&empty)).unwrap(),
            empty
        );

        assert_eq!(encode_bytes(b"log"), b"\x01log");
        assert_eq!(decode_bytes(&"l", b"\x01log").unwrap(), b"log");

        let stored = concat!(
            "\x01{\"id\":\"i\",\"function\":\"f\",\"version\":1,\"mode\":\"async\",",
            "\"status\":\"queued\",\"input\":\"{}\",\"output\":null,\"error\":null,",
            "\"attempts\":0,\"max_attempts\":3,\"created_at_ms\":7,\"started_at_ms\":null,",
            "\"finished_at_ms\":null,\"duration_ms\":null,\"billed_gb_s\":0.5,",
            "\"cold_start\":false,\"next_attempt_at_ms\":null}"
        );
        // Written before `queued_ms` existed: fields added since default.
        let record: InvocationRecord = decode_record(&"i", stored.as_bytes()).unwrap();
        let expected = InvocationRecord {
            input: "{}".to_string(),
            created_at_ms: 7,
            billed_gb_s: 0.5,
            ..sample_invocation("i", "f")
        };
        assert_eq!(record, expected);
        let again = encode_record(&"i", &expected).unwrap();
        assert_eq!(again[0], FORMAT_V1);
        assert_eq!(
            decode_record::<InvocationRecord>(&"i", &again).unwrap(),
            expected
        );

        let category = CategoryRecord {
            name: "c".to_string(),
            shards: 2,
            slots: vec![3, 0],
            created_at_ms: 7,
        };
        let head = CategoryHead { id: 5, shards: 2 };
        let golden: &[u8] = concat!(
            "\x01\x05\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00",
            "{\"name\":\"c\",\"shards\":2,\"slots\":[3,0],\"created_at_ms\":7}"
        )
        .as_bytes();
        assert_eq!(encode_category(head, &category).unwrap(), golden);
        assert_eq!(decode_category(&"c", golden).unwrap(), (head, category));
        assert_eq!(decode_category_head(&"c", golden).unwrap(), head);

        let mut key = Vec::new();
        doc_key(&mut key, 0x0102, 3, "id");
        assert_eq!(key, b"\x00\x00\x00\x00\x00\x00\x01\x02\x00\x00\x00\x03id");
        assert_eq!(
            shard_end(0x0102, 3).unwrap()[..],
            key[..8]
                .iter()
                .chain(&[0, 0, 0, 4])
                .copied()
                .collect::<Vec<_>>()[..]
        );
        assert_eq!(shard_end(1, u32::MAX), Some(shard_prefix(2, 0)));
        assert_eq!(shard_end(u64::MAX, u32::MAX), None);
        let mut value = Vec::new();
        encode_doc(&mut value, b"{}");
        assert_eq!(value, b"\x01{}");
        assert_eq!(decode_doc(&"d", &value).unwrap(), b"{}");
        assert_eq!(stored_doc_len(&value), 2);
    }

    #[test]
    fn bad_values_are_corrupt() {
        for bad in [&b""[..], b"\x02{}", b"\x01{", b"\x01\x05\x00\x00\x00{}"] {
            assert!(matches!(decode_message(&"m", bad), Err(Error::Corrupt(_))));
        }
        assert!(matches!(
            decode_record::<InvocationRecord>(&"i", b"\x01{\"id\":1}"),
            Err(Error::Corrupt(_))
        ));
        let nan = InvocationRecord {
            billed_gb_s: f64::NAN,
            ..sample_invocation("i", "f")
        };
        assert!(matches!(check_invocation(&nan), Err(Error::Corrupt(_))));
        let inf = InvocationRecord {
            duration_ms: Some(f64::INFINITY),
            ..sample_invocation("i", "f")
        };
        assert!(check_invocation(&inf).is_err());
        assert!(check_invocation(&sample_invocation("i", "f")).is_ok());
        for bad in [
            &b"\x01\x05\x00"[..],
            b"\x01\x05\x00\x00\x00\x00\x00\x00\x00\x02\x00",
        ] {
            assert!(matches!(
                decode_category_head(&"c", bad),
                Err(Error::Corrupt(_))
            ));
        }
        assert!(matches!(
            decode_category(
                &"c",
                b"\x01\x05\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00{"
            ),
            Err(Error::Corrupt(_))
        ));
    }
}
