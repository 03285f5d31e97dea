//! Channels (`shoal_store::Channels`) on two tables, written through the
//! writer thread (group commit: concurrent publishes share one fsync), read
//! inline.
//!
//! | table | key | value |
//! |---|---|---|
//! | `channels` | name | `[1] ++ u64 LE head ++ u8 epoch length ++ epoch ++ u8 has settings ++` (settings: `u8 public ++ u64 LE history_len ++ u64 LE history_age_ms ++ u32 LE coalesce_ms`) |
//! | `channel_messages` | (name, offset) | `[1] ++ u8 binary ++ u64 LE at_ms ++ data` |
//!
//! Both tables are created when missing at open (like `kv`): no layout
//! change.
//!
//! A channel's epoch is 16 random hex digits, made (and stored) with its
//! first message; a configured channel nobody published on has none. A
//! publish is one writer operation: it reads the channel's row, applies the
//! `BlobWrite` (if any) to the fixed-size blob's pages exactly as
//! `blob_apply` does (`blobs::apply_batch`), then appends the messages and
//! the new head, all in the batch's transaction, so a reader (and a crash)
//! sees both or neither. A refused batch writes nothing at all.
//!
//! Trimming: a publish or a configure removes messages beyond
//! `history_len` and, from the front, those older than `history_age_ms`,
//! at most `TRIM_MAX` rows per operation (the rest go with later ones). A
//! read never relies on it: it compares the offset it needs with
//! `head - history_len` and its age with the caller's `now_ms`.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use shoal_store::channels::{
    BlobWrite, ChannelInfo, ChannelMessage, ChannelRead, ChannelSettings, Channels,
    NewChannelMessage, Published,
};
use shoal_store::{Applied, Error, Pending, Result};
use tokio::sync::oneshot;

use crate::blobs::Reader;
use crate::codec::FORMAT_V1;
use crate::writer::{self, Command, Effect, Reply, Tables, Value, ok};
use crate::{RedbStore, blobs, unavailable};

pub(crate) const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
pub(crate) const CHANNEL_MESSAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("channel_messages");

/// The most rows one publish or configure trims.
const TRIM_MAX: usize = 1_000;

/// The message row's header: format, binary, at_ms.
const MESSAGE_HEAD: usize = 1 + 1 + 8;

/// Creates the tables (at open, when missing).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(CHANNELS).map_err(unavailable)?;
    txn.open_table(CHANNEL_MESSAGES).map_err(unavailable)?;
    Ok(())
}

/// The channel tables, opened by the first channel write of a batch.
pub(crate) struct ChannelTables<'txn> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    messages: Table<'txn, (&'static str, u64), &'static [u8]>,
}

impl<'txn> ChannelTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(ChannelTables {
            meta: txn.open_table(CHANNELS)?,
            messages: txn.open_table(CHANNEL_MESSAGES)?,
        })
    }
}

/// A channel's row.
#[derive(Debug, Clone, Default, PartialEq)]
struct Meta {
    epoch: String,
    head: u64,
    settings: Option<ChannelSettings>,
}

impl Meta {
    fn settings(&self) -> ChannelSettings {
        self.settings.clone().unwrap_or_default()
    }

    /// The lowest offset the history length still keeps.
    fn first_kept(&self) -> u64 {
        self.settings().first_kept(self.head)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.epoch.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.head.to_le_bytes());
        out.push(self.epoch.len() as u8);
        out.extend_from_slice(self.epoch.as_bytes());
        match &self.settings {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.push(u8::from(s.public));
                out.extend_from_slice(&s.history_len.to_le_bytes());
                out.extend_from_slice(&s.history_age_ms.to_le_bytes());
                out.extend_from_slice(&s.coalesce_ms.to_le_bytes());
            }
        }
        out
    }

    fn decode(name: &str, bytes: &[u8]) -> Result<Meta> {
        let corrupt = |why: &str| Error::Corrupt(format!("channel {name:?}: {why}"));
        let mut r = Reader(bytes);
        let truncated = || corrupt("truncated");
        let format = r.u8().ok_or_else(truncated)?;
        if format != FORMAT_V1 {
            return Err(corrupt(&format!("unknown format {format}")));
        }
        let head = r.u64().ok_or_else(truncated)?;
        let len = r.u8().ok_or_else(truncated)?;
        let epoch = r.take(usize::from(len)).ok_or_else(truncated)?;
        let epoch = std::str::from_utf8(epoch).map_err(|_| corrupt("epoch"))?;
        let settings = match r.u8().ok_or_else(truncated)? {
            0 => None,
            _ => Some(ChannelSettings {
                public: r.u8().ok_or_else(truncated)? != 0,
                history_len: r.u64().ok_or_else(truncated)?,
                history_age_ms: r.u64().ok_or_else(truncated)?,
                coalesce_ms: r.u32().ok_or_else(truncated)?,
            }),
        };
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Meta {
            epoch: epoch.to_string(),
            head,
            settings,
        })
    }

    fn info(self, name: &str) -> ChannelInfo {
        ChannelInfo {
            name: name.to_string(),
            epoch: self.epoch,
            head: self.head,
            settings: self.settings,
        }
    }
}

fn encode_message(binary: bool, at_ms: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_HEAD + data.len());
    out.push(FORMAT_V1);
    out.push(u8::from(binary));
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn decode_message(name: &str, offset: u64, bytes: &[u8]) -> Result<ChannelMessage> {
    if bytes.len() < MESSAGE_HEAD || bytes[0] != FORMAT_V1 {
        return Err(Error::Corrupt(format!(
            "channel {name:?} message {offset}: truncated or unknown format"
        )));
    }
    Ok(ChannelMessage {
        offset,
        at_ms: u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes")),
        binary: bytes[1] != 0,
        data: bytes[MESSAGE_HEAD..].to_vec(),
    })
}

/// The `at_ms` of an encoded message, without copying its data.
fn at_ms_of(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(2..10)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// A new epoch: 16 random hex digits.
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A channel write, done by the writer thread.
pub(crate) enum ChannelCmd {
    Configure {
        name: String,
        settings: ChannelSettings,
    },
    Publish {
        name: String,
        messages: Vec<NewChannelMessage>,
        blob: Option<BlobWrite>,
        now_ms: u64,
    },
}

impl ChannelCmd {
    /// About how many bytes it writes.
    pub(crate) fn weight(&self) -> usize {
        match self {
            ChannelCmd::Configure { .. } => 64,
            ChannelCmd::Publish { messages, blob, .. } => {
                let ops = blob.as_ref().map_or(0, |b| {
                    b.ops
                        .iter()
                        .map(|op| {
                            let (start, end) = op.byte_span();
                            64 + (end.saturating_sub(start) as usize).min(1 << 30)
                        })
                        .sum()
                });
                ops + messages.iter().map(|m| 64 + m.data.len()).sum::<usize>()
            }
        }
    }
}

/// What a channel write answers.
pub(crate) enum ChannelDone {
    Configured,
    Published(Published),
}

/// Where a channel write's answer goes (`Reply::Channel`).
pub(crate) type ChannelSender = oneshot::Sender<Result<ChannelDone>>;

type Storage<T> = std::result::Result<T, redb::Error>;

/// The stored row of `name`: `Err` inside when it does not decode.
fn stored(t: &mut Tables<'_>, name: &str) -> Storage<Result<Option<Meta>>> {
    let tables = t.channels()?;
    Ok(match tables.meta.get(name)? {
        None => Ok(None),
        Some(v) => Meta::decode(name, v.value()).map(Some),
    })
}

/// Removes (at most `TRIM_MAX`) messages the history no longer keeps:
/// below the length bound, then from the front while older than the age.
fn trim(t: &mut Tables<'_>, name: &str, meta: &Meta, now_ms: u64) -> Storage<()> {
    let tables = t.channels()?;
    let first_kept = meta.first_kept();
    let settings = meta.settings();
    let mut gone = Vec::new();
    for row in tables.messages.range((name, 0)..=(name, meta.head))? {
        if gone.len() == TRIM_MAX {
            break;
        }
        let (k, v) = row?;
        let offset = k.value().1;
        if offset >= first_kept && at_ms_of(v.value()).is_none_or(|at| settings.young(at, now_ms)) {
            break;
        }
        gone.push(offset);
    }
    for offset in gone {
        tables.messages.remove((name, offset))?;
    }
    Ok(())
}

/// Applies a channel write inside the batch's transaction.
pub(crate) fn apply(t: &mut Tables<'_>, cmd: ChannelCmd) -> writer::Applied {
    let done = match cmd {
        ChannelCmd::Configure { name, settings } => {
            // A corrupt row is replaced: its head is lost, so a new epoch
            // starts with the next message.
            let mut meta = stored(t, &name)?.unwrap_or_default().unwrap_or_default();
            meta.settings = Some(settings);
            t.channels()?
                .meta
                .insert(name.as_str(), meta.encode().as_slice())?;
            // Trims by length only: the caller's clock is not known here.
            trim(t, &name, &meta, 0)?;
            ChannelDone::Configured
        }
        ChannelCmd::Publish {
            name,
            messages,
            blob,
            now_ms,
        } => {
            // Everything that may refuse comes before the first write.
            let mut meta = match stored(t, &name)? {
                Ok(meta) => meta.unwrap_or_default(),
                Err(e) => return Ok(Err(e)),
            };
            let applied = match blob {
                None => None,
                Some(BlobWrite { key, ops }) => match blobs::apply_batch(t, &key, &ops)? {
                    Ok(Applied::Done { results, meta }) => Some((results, meta)),
                    Ok(refused) => {
                        let done = ChannelDone::Published(Published::BlobRefused(refused));
                        return ok(Value::Channel(done), Effect::None);
                    }
                    Err(e) => return Ok(Err(e)),
                },
            };
            if meta.epoch.is_empty() {
                meta.epoch = new_epoch();
            }
            let first = meta.head + 1;
            let tables = t.channels()?;
            for m in &messages {
                meta.head += 1;
                let row = encode_message(m.binary, now_ms, &m.data);
                tables
                    .messages
                    .insert((name.as_str(), meta.head), row.as_slice())?;
            }
            tables
                .meta
                .insert(name.as_str(), meta.encode().as_slice())?;
            trim(t, &name, &meta, now_ms)?;
            ChannelDone::Published(Published::Done {
                epoch: meta.epoch,
                first,
                last: meta.head,
                applied,
            })
        }
    };
    ok(Value::Channel(done), Effect::None)
}

fn read_meta(txn: &ReadTransaction, name: &str) -> Result<Option<Meta>> {
    let table = txn.open_table(CHANNELS).map_err(unavailable)?;
    match table.get(name).map_err(unavailable)? {
        None => Ok(None),
        Some(v) => Meta::decode(name, v.value()).map(Some),
    }
}

impl RedbStore {
    fn channel_write<T: Send + 'static>(
        &self,
        cmd: ChannelCmd,
        pick: fn(ChannelDone) -> Option<T>,
    ) -> Pending<T> {
        let done = self.submit(Command::Channel(cmd), Reply::Channel);
        Box::pin(async move {
            pick(done.await?)
                .ok_or_else(|| Error::Unavailable("internal: mismatched channel reply".to_string()))
        })
    }
}

impl Channels for RedbStore {
    fn channel_configure(&self, name: &str, settings: ChannelSettings) -> Pending<()> {
        let cmd = ChannelCmd::Configure {
            name: name.to_string(),
            settings,
        };
        self.channel_write(cmd, |d| match d {
            ChannelDone::Configured => Some(()),
            ChannelDone::Published(_) => None,
        })
    }

    fn channel_settings(&self, name: &str) -> Pending<Option<ChannelSettings>> {
        self.read(|txn| Ok(read_meta(txn, name)?.and_then(|m| m.settings)))
    }

    fn channel_publish(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<BlobWrite>,
        now_ms: u64,
    ) -> Pending<Published> {
        let cmd = ChannelCmd::Publish {
            name: name.to_string(),
            messages,
            blob,
            now_ms,
        };
        self.channel_write(cmd, |d| match d {
            ChannelDone::Published(p) => Some(p),
            ChannelDone::Configured => None,
        })
    }

    fn channel_read(
        &self,
        name: &str,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Pending<ChannelRead> {
        self.read(|txn| {
            let Some(meta) = read_meta(txn, name)? else {
                return Ok(ChannelRead {
                    epoch: String::new(),
                    head: 0,
                    messages: Vec::new(),
                    gap: after > 0,
                });
            };
            let mut read = ChannelRead {
                epoch: meta.epoch.clone(),
                head: meta.head,
                messages: Vec::new(),
                gap: after > meta.head,
            };
            if after >= meta.head {
                return Ok(read);
            }
            let from = after + 1;
            if from < meta.first_kept() {
                read.gap = true;
                return Ok(read);
            }
            let settings = meta.settings();
            let table = txn.open_table(CHANNEL_MESSAGES).map_err(unavailable)?;
            let rows = table
                .range((name, from)..=(name, meta.head))
                .map_err(unavailable)?;
            for row in rows.take(limit.max(1)) {
                let (k, v) = row.map_err(unavailable)?;
                let offset = k.value().1;
                let m = decode_message(name, offset, v.value())?;
                if !read.take_next(from, &settings, now_ms, m) {
                    return Ok(read);
                }
            }
            if read.messages.is_empty() {
                read.gap = true;
            }
            Ok(read)
        })
    }

    fn channel_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<ChannelInfo>> {
        self.read(|txn| {
            let table = txn.open_table(CHANNELS).map_err(unavailable)?;
            let start = match after {
                Some(a) if a >= prefix => Bound::Excluded(a),
                _ => Bound::Included(prefix),
            };
            let mut out = Vec::new();
            let rows = table
                .range::<&str>((start, Bound::Unbounded))
                .map_err(unavailable)?;
            for row in rows {
                let (k, v) = row.map_err(unavailable)?;
                let name = k.value();
                if !name.starts_with(prefix) || out.len() == limit.max(1) {
                    break;
                }
                out.push(Meta::decode(name, v.value())?.info(name));
            }
            Ok(out)
        })
    }

    fn channel_wait(
        &self,
        _positions: Vec<(String, String, u64)>,
        _timeout_ms: u64,
    ) -> Option<Pending<Vec<(String, String, u64)>>> {
        // One node per file: the engine sees every publish itself.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        for meta in [
            Meta::default(),
            Meta {
                epoch: new_epoch(),
                head: u64::MAX - 1,
                settings: Some(ChannelSettings {
                    public: true,
                    history_len: 7,
                    history_age_ms: 0,
                    coalesce_ms: 40,
                }),
            },
        ] {
            assert_eq!(Meta::decode("c", &meta.encode()).unwrap(), meta);
        }
        assert!(Meta::decode("c", &[1, 0]).is_err());
        assert!(Meta::decode("c", &[9; 20]).is_err());
        let row = encode_message(true, 42, b"\0\xff");
        let m = decode_message("c", 3, &row).unwrap();
        assert_eq!(
            (m.offset, m.at_ms, m.binary, m.data),
            (3, 42, true, vec![0, 0xff])
        );
        assert_eq!(at_ms_of(&row), Some(42));
    }
}
