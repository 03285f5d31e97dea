//! Channels: per channel its epoch, last offset and kept messages.
//!
//! Trimming by length happens at publish; age is compared at every read,
//! so an old message is gone at once whatever was trimmed.

use crate::Pending;
use crate::blobs::Applied;
use crate::channels::{
    BlobWrite, ChannelInfo, ChannelMessage, ChannelRead, ChannelSettings, Channels,
    NewChannelMessage, Published,
};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use super::{MemoryStore, State};

#[derive(Default)]
pub(super) struct ChannelState {
    channels: BTreeMap<String, Channel>,
    /// Epochs handed out by this store: a fresh store (a restarted node
    /// with the memory store) must not repeat one, so they also carry the
    /// time the store was made.
    epochs: u64,
    born_ns: u128,
}

#[derive(Default)]
struct Channel {
    epoch: String,
    head: u64,
    kept: VecDeque<ChannelMessage>,
    settings: Option<ChannelSettings>,
}

impl Channel {
    fn settings(&self) -> ChannelSettings {
        self.settings.clone().unwrap_or_default()
    }

    fn trim(&mut self) {
        let keep = self.settings().history_len.max(1);
        while self.kept.len() as u64 > keep {
            self.kept.pop_front();
        }
    }

    /// The first offset a read may still answer at `now_ms`.
    fn oldest(&self, now_ms: u64) -> u64 {
        let settings = self.settings();
        self.kept
            .iter()
            .find(|m| settings.young(m.at_ms, now_ms))
            .map_or(self.head + 1, |m| m.offset)
    }
}

impl ChannelState {
    fn new_epoch(&mut self) -> String {
        if self.born_ns == 0 {
            self.born_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos());
        }
        self.epochs += 1;
        format!("m{:x}{:x}", self.born_ns, self.epochs)
    }
}

fn publish(
    s: &mut State,
    name: &str,
    messages: Vec<NewChannelMessage>,
    blob: Option<BlobWrite>,
    now_ms: u64,
) -> Published {
    let applied = match blob {
        None => None,
        Some(BlobWrite { key, ops }) => match s.blobs.apply(&key, &ops) {
            Applied::Done { results, meta } => Some((results, meta)),
            refused => return Published::BlobRefused(refused),
        },
    };
    let needs_epoch = s
        .channels
        .channels
        .get(name)
        .is_none_or(|c| c.epoch.is_empty());
    let epoch = needs_epoch.then(|| s.channels.new_epoch());
    let channel = s.channels.channels.entry(name.to_string()).or_default();
    if let Some(epoch) = epoch {
        channel.epoch = epoch;
    }
    let first = channel.head + 1;
    for m in messages {
        channel.head += 1;
        channel.kept.push_back(ChannelMessage {
            offset: channel.head,
            at_ms: now_ms,
            binary: m.binary,
            data: m.data,
        });
    }
    channel.trim();
    Published::Done {
        epoch: channel.epoch.clone(),
        first,
        last: channel.head,
        applied,
    }
}

impl Channels for MemoryStore {
    fn channel_configure(&self, name: &str, settings: ChannelSettings) -> Pending<()> {
        self.run(|s| {
            let channel = s.channels.channels.entry(name.to_string()).or_default();
            channel.settings = Some(settings);
            channel.trim();
            Ok(())
        })
    }

    fn channel_settings(&self, name: &str) -> Pending<Option<ChannelSettings>> {
        self.run(|s| {
            Ok(s.channels
                .channels
                .get(name)
                .and_then(|c| c.settings.clone()))
        })
    }

    fn channel_publish(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<BlobWrite>,
        now_ms: u64,
    ) -> Pending<Published> {
        self.run(|s| Ok(publish(s, name, messages, blob, now_ms)))
    }

    fn channel_read(
        &self,
        name: &str,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Pending<ChannelRead> {
        self.run(|s| {
            let Some(channel) = s.channels.channels.get(name) else {
                return Ok(ChannelRead {
                    epoch: String::new(),
                    head: 0,
                    messages: Vec::new(),
                    gap: after > 0,
                });
            };
            let gap = after > channel.head || channel.oldest(now_ms) > after + 1;
            let messages = if gap {
                Vec::new()
            } else {
                channel
                    .kept
                    .iter()
                    .filter(|m| m.offset > after)
                    .take(limit.max(1))
                    .cloned()
                    .collect()
            };
            Ok(ChannelRead {
                epoch: channel.epoch.clone(),
                head: channel.head,
                messages,
                gap,
            })
        })
    }

    fn channel_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<ChannelInfo>> {
        self.run(|s| {
            // From the prefix, or past `after` when that is further on.
            let start = match after {
                Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
                _ => Bound::Included(prefix.to_string()),
            };
            Ok(s.channels
                .channels
                .range((start, Bound::Unbounded))
                .take_while(|(name, _)| name.starts_with(prefix))
                .take(limit.max(1))
                .map(|(name, c)| ChannelInfo {
                    name: name.clone(),
                    epoch: c.epoch.clone(),
                    head: c.head,
                    settings: c.settings.clone(),
                })
                .collect())
        })
    }

    fn channel_wait(
        &self,
        _positions: Vec<(String, String, u64)>,
        _timeout_ms: u64,
    ) -> Option<Pending<Vec<(String, String, u64)>>> {
        None
    }
}
