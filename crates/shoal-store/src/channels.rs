//! Channels: numbered messages with a bounded history, the store side of
//! live updates (`ctx.publish`, `/v1/channels`).
//!
//! Every message of a channel gets the next offset (1, 2, 3, ...) when it
//! is stored, in one order every node sees. A channel's *epoch* names one
//! unbroken history: offsets of the same epoch never repeat or go back. A
//! store that loses a channel's history (a Redis flush) starts a new epoch,
//! so a subscriber that remembers `(epoch, offset)` can always tell whether
//! "every message after my offset" is still answerable.
//!
//! The history keeps at most `history_len` messages and none older than
//! `history_age_ms`; reads honour both bounds at the caller's `now_ms`
//! whatever trimming the store has done yet. A read that cannot answer
//! every message after the asked offset says so ([`ChannelRead::gap`])
//! instead of answering a partial run.

use serde::{Deserialize, Serialize};

use crate::Pending;
use crate::blobs::{Applied, BlobMeta, BlobOp};

/// A channel's settings. Absent settings are [`ChannelSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelSettings {
    /// Subscribing needs no token (publishing always does).
    pub public: bool,
    /// Messages kept for resuming subscribers (at least 1).
    pub history_len: u64,
    /// Messages older than this leave the history; 0: no age bound.
    pub history_age_ms: u64,
    /// Deliveries to subscribers are gathered into one frame per this many
    /// milliseconds; 0: each message at once.
    pub coalesce_ms: u32,
}

impl Default for ChannelSettings {
    fn default() -> ChannelSettings {
        ChannelSettings {
            public: false,
            history_len: 10_000,
            history_age_ms: 86_400_000,
            coalesce_ms: 0,
        }
    }
}

impl ChannelSettings {
    /// The lowest offset the history length keeps when the last message is
    /// `head`.
    pub fn first_kept(&self, head: u64) -> u64 {
        head.saturating_sub(self.history_len.max(1)) + 1
    }

    /// True when a message stored at `at_ms` is still young enough for the
    /// history at `now_ms`.
    pub fn young(&self, at_ms: u64, now_ms: u64) -> bool {
        self.history_age_ms == 0 || at_ms.saturating_add(self.history_age_ms) > now_ms
    }
}

/// Most messages a history may keep.
pub const MAX_HISTORY_LEN: u64 = 1_000_000;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannelMessage {
    /// `data` is opaque bytes rather than JSON text.
    pub binary: bool,
    /// JSON text (checked by the engine), or bytes when `binary`.
    pub data: Vec<u8>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    pub offset: u64,
    /// When it was stored (the publisher's `now_ms`).
    pub at_ms: u64,
    pub binary: bool,
    pub data: Vec<u8>,
}

/// Bitfield operations on a fixed-size blob, applied in the same atomic
/// step as a publish (see [`Channels::channel_publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWrite {
    pub key: String,
    pub ops: Vec<BlobOp>,
}

/// What [`Channels::channel_publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The messages are stored with offsets `first..=last` of `epoch`;
    /// with a [`BlobWrite`], its results and the blob's metadata after it.
    Done {
        epoch: String,
        first: u64,
        last: u64,
        applied: Option<(Vec<Option<i64>>, BlobMeta)>,
    },
    /// The [`BlobWrite`] was refused (the blob is absent, not fixed-size, or
    /// an op does not fit): nothing was written, no offset was used. Never
    /// `Applied::Done`.
    BlobRefused(Applied),
}

/// What [`Channels::channel_read`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRead {
    /// The channel's epoch; empty when nothing was ever published on it
    /// (and `head` is 0).
    pub epoch: String,
    /// The offset of the last message published (0: none yet).
    pub head: u64,
    /// Messages after the asked offset, in offset order, consecutive, at
    /// most the asked limit: the first is `after + 1`. Empty when `gap`.
    pub messages: Vec<ChannelMessage>,
    /// Some message after the asked offset has left the history (or the
    /// asked offset is past `head`): the run cannot be answered whole, and
    /// no message is answered.
    pub gap: bool,
}

impl ChannelRead {
    /// Adds the next stored message of a read asked from offset `from`:
    /// the first must be `from` itself and young enough, each next one
    /// follow the one before. One that does not makes the read a gap (no
    /// messages) and answers false: stop reading.
    pub fn take_next(
        &mut self,
        from: u64,
        settings: &ChannelSettings,
        now_ms: u64,
        message: ChannelMessage,
    ) -> bool {
        let expected = from + self.messages.len() as u64;
        let whole = message.offset == expected
            && (message.offset != from || settings.young(message.at_ms, now_ms));
        if whole {
            self.messages.push(message);
        } else {
            self.messages.clear();
            self.gap = true;
        }
        whole
    }
}

/// One channel in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    pub epoch: String,
    pub head: u64,
    /// Stored settings, `None` when the channel was never configured.
    pub settings: Option<ChannelSettings>,
}

/// Channels by name (names the engine has checked). Every write is atomic
/// and durable when its future resolves.
pub trait Channels: Send + Sync + 'static {
    /// Stores a channel's settings. A shorter `history_len` or
    /// `history_age_ms` applies to the messages already kept.
    fn channel_configure(&self, name: &str, settings: ChannelSettings) -> Pending<()>;
    /// The stored settings of a channel.
    fn channel_settings(&self, name: &str) -> Pending<Option<ChannelSettings>>;
    /// Appends `messages` (at least one) with the next offsets, trimming
    /// the history to the channel's settings (the defaults when it has
    /// none) — with `blob`, only when its ops apply, and then in the same
    /// atomic, durable step: a reader never sees the messages without the
    /// blob's change nor the change without the messages, and concurrent
    /// publishes with ops on the same blob store their messages in the
    /// order their ops were applied. Creates the channel's epoch on its
    /// first message.
    fn channel_publish(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<BlobWrite>,
        now_ms: u64,
    ) -> Pending<Published>;
    /// Up to `limit` messages after offset `after` (0: from the first ever;
    /// 0 is taken as 1), see [`ChannelRead`].
    fn channel_read(
        &self,
        name: &str,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Pending<ChannelRead>;
    /// Channels with a message or settings whose name starts with
    /// `prefix`, in name order, strictly after `after`, at most `limit`.
    fn channel_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<ChannelInfo>>;
    /// For stores several nodes share: resolves as soon as one of the
    /// channels has a message after the given offset (or its epoch differs
    /// from the given one), answering those channels' `(name, epoch,
    /// head)`, or with nothing after `timeout_ms`. `None` (not a future)
    /// from a store only one node uses, where the engine sees every publish
    /// itself.
    fn channel_wait(
        &self,
        positions: Vec<(String, String, u64)>,
        timeout_ms: u64,
    ) -> Option<Pending<Vec<(String, String, u64)>>>;
}
