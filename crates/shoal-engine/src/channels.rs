//! Channels (`ctx.publish`, `/v1/channels`): checks names and messages,
//! publishes into the store's [`Channels`](shoal_store::Channels) port and
//! delivers to this node's subscribers without ever skipping a message.
//!
//! Delivery, per channel with subscribers on this node, goes through one
//! *hub* task. The hub hands frames (runs of consecutive messages) to a
//! `broadcast` channel in offset order: a publish on this node hands its
//! messages to the hub once the store has them; when a run arrives ahead
//! of one still missing (two publishes finishing out of order, a publisher
//! dropped between its write and its hand-over, a publish on another node)
//! the hub reads the missing run from the store. Other nodes' publishes
//! reach the hub through [`follow`], which waits on the store
//! (`channel_wait`) where several nodes share it.
//!
//! A [`Subscription`] subscribes to its hub first and then reads the
//! history from its resume point, so nothing published in between is
//! lost; frames it already has are skipped by offset. A subscriber that
//! falls behind the broadcast buffer (a slow client) reads what it missed
//! from the store; when that is older than the history, it gets an explicit
//! [`Event::Reset`] — never a silent gap.
//!
//! Presence: each node counts its subscribers per channel and writes the
//! count under a reserved key-value key with a short expiry, refreshed
//! while it has subscribers; the channel's presence is the sum.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use shoal_store::{
    BlobOp, BlobWrite, ChannelMessage, ChannelRead, ChannelSettings, KvCondition,
    NewChannelMessage, Published,
};

use crate::blobs::{BatchResult, refused};
use crate::env::Env;
use crate::error::{Error, Result};

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 200;
/// The largest message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Frames a hub buffers for its subscribers; one further behind reads the
/// store.
const BROADCAST_FRAMES: usize = 4096;
/// Messages read from the store at a time.
const READ_PAGE: usize = 1000;
/// How long a hub waits for a missing run to be handed over before it
/// reads the run from the store.
const GAP_WAIT: Duration = Duration::from_millis(40);
/// Presence keys live this long unless refreshed.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often presence counts are written.
const PRESENCE_EVERY: Duration = Duration::from_secs(2);
/// How often, where several nodes share the store, hubs' settings are
/// read again (another node may have changed them).
const SETTINGS_EVERY: Duration = Duration::from_secs(2);
/// The reserved key-value prefix of presence counts.
const PRESENCE_PREFIX: &str = "\0P\0";

/// Checks a channel name: 1 to [`MAX_CHANNEL_NAME`] bytes of
/// `[A-Za-z0-9_.:-]`. Names starting with `_` are the node's feeds: users
/// may subscribe to them but not publish.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_CHANNEL_NAME {
        return Err(Error::invalid(
            "channel",
            format!(
                "has {} bytes; a channel name has 1 to {MAX_CHANNEL_NAME}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(Error::invalid(
            "channel",
            format!("`{name}` has {bad:?}; a channel name uses letters, digits and _ . : -"),
        ));
    }
    Ok(())
}

/// True for the node's own feeds (`_invocations.f`, `_docs.c`, ...).
pub fn is_feed(name: &str) -> bool {
    name.starts_with('_')
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stream is live from `offset` of `epoch` (the resume point when
    /// the resume was whole).
    Ready { epoch: String, offset: u64 },
    /// Consecutive messages, in order.
    Messages {
        epoch: Arc<str>,
        messages: Arc<[ChannelMessage]>,
        /// The run's wire form, encoded once for every subscriber that
        /// gets the same run (see [`Encoded`]).
        encoded: Encoded,
    },
    /// The messages between the resume point and `offset` cannot be
    /// answered: resync from a snapshot; the stream goes on after `offset`.
    Reset {
        epoch: String,
        offset: u64,
        reason: String,
    },
}

/// A cache of a run's wire form (the SSE bytes): the first subscriber
/// that sends a whole frame encodes it, the others reuse the bytes. A run
/// cut for one subscriber (or read from the store) has no cache. Equal to
/// any other: it never changes what an event says.
#[derive(Clone, Default)]
pub struct Encoded(Option<Arc<std::sync::OnceLock<bytes::Bytes>>>);

impl Encoded {
    /// The cached bytes, or `encode()`'s (cached when shared).
    pub fn get_or_init(&self, encode: impl FnOnce() -> bytes::Bytes) -> bytes::Bytes {
        match &self.0 {
            Some(cache) => cache.get_or_init(encode).clone(),
            None => encode(),
        }
    }
}

impl PartialEq for Encoded {
    fn eq(&self, _: &Encoded) -> bool {
        true
    }
}

impl Eq for Encoded {}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

/// A channel's position: the offset of its last message in its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a publish stored.
#[derive(Debug, Clone)]
pub struct PublishResult {
    pub epoch: String,
    pub first: u64,
    pub last: u64,
    /// The blob operations' answers, when the publish carried some.
    pub applied: Option<BatchResult>,
}

/// A channel as `GET /v1/channels/{name}` shows it.
#[derive(Debug, Clone)]
pub struct ChannelView {
    pub name: String,
    pub settings: ChannelSettings,
    pub position: Position,
    /// Subscribers on every node (as their nodes last wrote it).
    pub presence: u64,
}

/// A run of consecutive messages, as hubs broadcast it.
#[derive(Debug)]
struct Frame {
    epoch: Arc<str>,
    messages: Arc<[ChannelMessage]>,
    encoded: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl Frame {
    fn new(epoch: Arc<str>, messages: Arc<[ChannelMessage]>) -> Frame {
        Frame {
            epoch,
            messages,
            encoded: Arc::default(),
        }
    }

    fn first(&self) -> u64 {
        self.messages.first().map_or(0, |m| m.offset)
    }
    fn last(&self) -> u64 {
        self.messages.last().map_or(0, |m| m.offset)
    }
}

enum HubInput {
    /// Messages this node published (or a feed).
    Published(Arc<Frame>),
    /// The store has messages this hub may not have seen (another node).
    Look,
    /// The channel's settings changed on this node.
    Settings(ChannelSettings),
}

/// One channel's delivery on this node.
struct Hub {
    frames: broadcast::Sender<Arc<Frame>>,
    input: mpsc::UnboundedSender<HubInput>,
    subscribers: AtomicUsize,
    /// Cancelled when the hub's last subscriber left: its task ends.
    released: tokio_util::sync::CancellationToken,
    /// The last offset (and its epoch) handed to subscribers.
    delivered: Mutex<(String, u64)>,
}

/// The channel service.
pub(crate) struct Channels {
    env: Arc<Env>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    /// This process's presence tag.
    node_tag: String,
    pub(crate) feeds: Feeds,
}

impl Channels {
    pub(crate) fn new(env: Arc<Env>) -> Arc<Channels> {
        let node_tag = format!("{:x}", env.random.up_to(u64::MAX));
        let (feeds, feed_rx) = Feeds::new();
        let channels = Arc::new(Channels {
            env: env.clone(),
            hubs: Mutex::new(HashMap::new()),
            node_tag,
            feeds,
        });
        let me = Arc::downgrade(&channels);
        env.tasks
            .spawn(record_feeds(env.clone(), me.clone(), feed_rx));
        env.tasks.spawn(presence(env.clone(), me.clone()));
        env.tasks.spawn(follow(env.clone(), me));
        channels
    }

    fn hubs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn configure(&self, name: &str, settings: ChannelSettings) -> Result<()> {
        check_name(name)?;
        check_settings(&settings)?;
        self.env.accepting()?;
        self.env
            .backend
            .channels
            .channel_configure(name, settings.clone())
            .await?;
        if let Some(hub) = self.hubs().get(name) {
            let _ = hub.input.send(HubInput::Settings(settings));
        }
        Ok(())
    }

    pub(crate) async fn settings(&self, name: &str) -> Result<ChannelSettings> {
        check_name(name)?;
        Ok(self
            .env
            .backend
            .channels
            .channel_settings(name)
            .await?
            .unwrap_or_default())
    }

    pub(crate) async fn position(&self, name: &str) -> Result<Position> {
        check_name(name)?;
        let read = self.head(name).await?;
        Ok(Position {
            epoch: read.epoch,
            offset: read.head,
        })
    }

    async fn head(&self, name: &str) -> Result<ChannelRead> {
        // An offset past any head answers the position and no message.
        let now = self.env.now_ms();
        Ok(self
            .env
            .backend
            .channels
            .channel_read(name, u64::MAX, 1, now)
            .await?)
    }

    pub(crate) async fn view(&self, name: &str) -> Result<ChannelView> {
        let settings = self.settings(name).await?;
        let position = self.position(name).await?;
        let presence = self.presence(name).await?;
        Ok(ChannelView {
            name: name.to_string(),
            settings,
            position,
            presence,
        })
    }

    pub(crate) async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelView>> {
        let infos = self
            .env
            .backend
            .channels
            .channel_list(prefix, cursor, limit.clamp(1, 1000))
            .await?;
        let mut views = Vec::with_capacity(infos.len());
        for info in infos {
            let presence = self.presence(&info.name).await?;
            views.push(ChannelView {
                position: Position {
                    epoch: info.epoch,
                    offset: info.head,
                },
                settings: info.settings.unwrap_or_default(),
                name: info.name,
                presence,
            });
        }
        Ok(views)
    }

    async fn presence(&self, name: &str) -> Result<u64> {
        let prefix = format!("{PRESENCE_PREFIX}{name}\0");
        let now = self.env.now_ms();
        let page = self
            .env
            .backend
            .kv
            .kv_list(&prefix, None, 1000, now)
            .await?;
        Ok(page
            .entries
            .iter()
            .filter_map(|e| shoal_store::kv_integer(&e.value))
            .map(|n| n.max(0) as u64)
            .sum())
    }

    /// Publishes `messages` on `name` (a user channel), with `blob`'s
    /// operations applied in the same atomic step when given.
    pub(crate) async fn publish(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<(String, Vec<BlobOp>)>,
    ) -> Result<PublishResult> {
        check_name(name)?;
        if is_feed(name) {
            return Err(Error::invalid(
                "channel",
                format!(
                    "`{name}` is one of the node's feeds (names starting with `_`); publish on a channel of your own"
                ),
            ));
        }
        self.publish_any(name, messages, blob).await
    }

    /// Publishes on any channel, feeds included.
    pub(crate) async fn publish_any(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<(String, Vec<BlobOp>)>,
    ) -> Result<PublishResult> {
        if messages.is_empty() || messages.len() > READ_PAGE {
            return Err(Error::invalid(
                "messages",
                format!(
                    "has {} messages; publish 1 to {READ_PAGE} at a time",
                    messages.len()
                ),
            ));
        }
        for m in &messages {
            if m.data.len() > MAX_MESSAGE_BYTES {
                return Err(Error::TooLarge(format!(
                    "a message of {} bytes is over the {MAX_MESSAGE_BYTES}-byte limit; publish a blob key instead",
                    m.data.len()
                )));
            }
        }
        let blob = match blob {
            Some((key, ops)) => {
                crate::blobs::check_batch(&key, &ops)?;
                Some(BlobWrite { key, ops })
            }
            None => None,
        };
        self.env.accepting()?;
        let now = self.env.now_ms();
        let key = blob.as_ref().map(|b| b.key.clone());
        let kept = messages.clone();
        let published = self
            .env
            .backend
            .channels
            .channel_publish(name, messages, blob, now)
            .await?;
        let Published::Done {
            epoch,
            first,
            last,
            applied,
        } = published
        else {
            let Published::BlobRefused(refusal) = published else {
                unreachable!("matched above")
            };
            return Err(refused(key.as_deref().unwrap_or_default(), refusal));
        };
        self.hand_over(name, &epoch, first, now, kept);
        Ok(PublishResult {
            epoch,
            first,
            last,
            applied: applied.map(|(results, meta)| BatchResult { results, meta }),
        })
    }

    /// Hands published messages to the channel's hub, if it has one.
    fn hand_over(
        &self,
        name: &str,
        epoch: &str,
        first: u64,
        at_ms: u64,
        messages: Vec<NewChannelMessage>,
    ) {
        let Some(hub) = self.hubs().get(name).cloned() else {
            return;
        };
        let messages: Arc<[ChannelMessage]> = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| ChannelMessage {
                offset: first + i as u64,
                at_ms,
                binary: m.binary,
                data: m.data,
            })
            .collect();
        let _ = hub.input.send(HubInput::Published(Arc::new(Frame::new(
            epoch.into(),
            messages,
        ))));
    }

    /// Opens a subscription resuming after `since` (`None`: live from now).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        name: &str,
        since: Option<Position>,
    ) -> Result<Subscription> {
        check_name(name)?;
        self.env.accepting()?;
        if is_feed(name) {
            // A feed is recorded from its first subscriber on.
            if self
                .env
                .backend
                .channels
                .channel_settings(name)
                .await?
                .is_none()
            {
                self.env
                    .backend
                    .channels
                    .channel_configure(name, ChannelSettings::default())
                    .await?;
            }
            self.feeds.want(name);
        }
        let hub = self.hub(name).await?;
        let mut sub = Subscription {
            channels: self.clone(),
            name: name.to_string(),
            hub: hub.clone(),
            frames: hub.frames.subscribe(),
            epoch: String::new(),
            offset: 0,
            queue: VecDeque::new(),
            catching_up: false,
        };
        let now = self.env.now_ms();
        match since {
            None => {
                let head = self.head(name).await?;
                sub.epoch = head.epoch.clone();
                sub.offset = head.head;
                sub.queue.push_back(Event::Ready {
                    epoch: head.epoch,
                    offset: head.head,
                });
            }
            Some(since) => {
                let read = self
                    .env
                    .backend
                    .channels
                    .channel_read(name, since.offset, READ_PAGE, now)
                    .await?;
                let other_epoch = since.offset > 0 && since.epoch != read.epoch;
                if other_epoch || read.gap {
                    let reason = if other_epoch {
                        format!(
                            "the channel's history is epoch `{}`, not `{}`: resync from a snapshot",
                            read.epoch, since.epoch
                        )
                    } else {
                        format!(
                            "messages after offset {} are no longer in the channel's history: resync from a snapshot",
                            since.offset
                        )
                    };
                    sub.epoch = read.epoch.clone();
                    sub.offset = read.head;
                    sub.queue.push_back(Event::Reset {
                        epoch: read.epoch,
                        offset: read.head,
                        reason,
                    });
                } else {
                    sub.epoch = read.epoch.clone();
                    sub.offset = since.offset;
                    sub.queue.push_back(Event::Ready {
                        epoch: read.epoch,
                        offset: since.offset,
                    });
                    sub.take_read(read.messages);
                }
            }
        }
        Ok(sub)
    }

    /// The channel's hub, started if it has none.
    /// The caller is counted as one of its subscribers (under the map's
    /// lock, so a hub being released is never handed out).
    async fn hub(self: &Arc<Self>, name: &str) -> Result<Arc<Hub>> {
        let counted = |hub: &Arc<Hub>| {
            hub.subscribers.fetch_add(1, Ordering::AcqRel);
            hub.clone()
        };
        if let Some(hub) = self.hubs().get(name) {
            return Ok(counted(hub));
        }
        let head = self.head(name).await?;
        let settings = self.settings(name).await?;
        let mut hubs = self.hubs();
        if let Some(hub) = hubs.get(name) {
            return Ok(counted(hub));
        }
        let (input, inbox) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            frames: broadcast::channel(BROADCAST_FRAMES).0,
            input,
            subscribers: AtomicUsize::new(1),
            released: tokio_util::sync::CancellationToken::new(),
            delivered: Mutex::new((head.epoch, head.head)),
        });
        hubs.insert(name.to_string(), hub.clone());
        drop(hubs);
        self.env.tasks.spawn(run_hub(
            self.env.clone(),
            name.to_string(),
            hub.clone(),
            inbox,
            settings,
        ));
        Ok(hub)
    }

    /// Drops the hub of `name` when its last subscriber left.
    fn release(&self, name: &str, hub: &Arc<Hub>) {
        let mut hubs = self.hubs();
        if hub.subscribers.fetch_sub(1, Ordering::AcqRel) == 1
            && hubs.get(name).is_some_and(|h| Arc::ptr_eq(h, hub))
        {
            hubs.remove(name);
            hub.released.cancel();
        }
    }

    fn counts(&self) -> Vec<(String, usize)> {
        self.hubs()
            .iter()
            .map(|(name, hub)| (name.clone(), hub.subscribers.load(Ordering::Relaxed)))
            .collect()
    }

    fn positions(&self) -> Vec<(String, String, u64)> {
        self.hubs()
            .iter()
            .map(|(name, hub)| {
                let (epoch, offset) = hub
                    .delivered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                (name.clone(), epoch, offset)
            })
            .collect()
    }

    /// Reads every hub's settings again and hands them over.
    async fn refresh_settings(&self) {
        let hubs: Vec<(String, Arc<Hub>)> = self
            .hubs()
            .iter()
            .map(|(name, hub)| (name.clone(), hub.clone()))
            .collect();
        for (name, hub) in hubs {
            match self.env.backend.channels.channel_settings(&name).await {
                Ok(settings) => {
                    let _ = hub
                        .input
                        .send(HubInput::Settings(settings.unwrap_or_default()));
                }
                Err(e) => {
                    warn!(channel = %name, error = %e, "Reading a channel's settings failed; keeping the ones known.");
                }
            }
        }
    }

    fn look(&self, name: &str) {
        if let Some(hub) = self.hubs().get(name) {
            let _ = hub.input.send(HubInput::Look);
        }
    }
}

/// Settings a client may set.
fn check_settings(s: &ChannelSettings) -> Result<()> {
    if s.history_len == 0 || s.history_len > shoal_store::channels::MAX_HISTORY_LEN {
        return Err(Error::invalid(
            "history_len",
            format!(
                "is {}; keep 1 to {} messages",
                s.history_len,
                shoal_store::channels::MAX_HISTORY_LEN
            ),
        ));
    }
    if s.coalesce_ms > 10_000 {
        return Err(Error::invalid(
            "coalesce_ms",
            format!("is {}; coalesce at most 10000 ms", s.coalesce_ms),
        ));
    }
    Ok(())
}

/// A hub's loop: orders frames, fills gaps from the store, coalesces.
async fn run_hub(
    env: Arc<Env>,
    name: String,
    hub: Arc<Hub>,
    mut inbox: mpsc::UnboundedReceiver<HubInput>,
    mut settings: ChannelSettings,
) {
    // Frames ahead of a missing run, by first offset.
    let mut ahead: BTreeMap<u64, Arc<Frame>> = BTreeMap::new();
    let mut gap_since: Option<tokio::time::Instant> = None;
    // Messages held for the next coalesced frame.
    let mut held: Vec<ChannelMessage> = Vec::new();
    let mut held_epoch: Arc<str> = Arc::from("");
    let mut flush_at: Option<tokio::time::Instant> = None;
    let (mut epoch, mut last) = hub
        .delivered
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    loop {
        let mut look = false;
        tokio::select! {
            input = inbox.recv() => match input {
                None => return,
                Some(HubInput::Published(frame)) => {
                    if *frame.epoch != *epoch && !(epoch.is_empty() && last == 0) {
                        // A new epoch (the store lost the history): what
                        // is ahead of the old one is moot.
                        look = true;
                    } else if frame.last() > last {
                        ahead.insert(frame.first(), frame);
                    }
                }
                Some(HubInput::Look) => look = true,
                Some(HubInput::Settings(s)) => {
                    // A shorter hold applies to what is held already.
                    if let Some(at) = flush_at {
                        let sooner = tokio::time::Instant::now()
                            + Duration::from_millis(s.coalesce_ms.into());
                        flush_at = Some(at.min(sooner));
                    }
                    settings = s;
                }
            },
            _ = sleep_until(gap_since.map(|t| t + GAP_WAIT)) => look = true,
            _ = sleep_until(flush_at) => {
                flush_at = None;
                if !held.is_empty() {
                    let messages: Arc<[ChannelMessage]> = std::mem::take(&mut held).into();
                    let _ = hub.frames.send(Arc::new(Frame::new(held_epoch.clone(), messages)));
                }
            }
            _ = hub.released.cancelled() => return,
            _ = env.tasks.stopping() => return,
        }
        // Hand over every frame that continues the delivered run.
        let mut out: Vec<Arc<Frame>> = Vec::new();
        while let Some(entry) = ahead.first_entry() {
            let frame = entry.get();
            if frame.last() <= last {
                entry.remove();
            } else if frame.first() <= last + 1 {
                let frame = entry.remove();
                epoch = frame.epoch.to_string();
                let skip = (last + 1 - frame.first()) as usize;
                let messages: Arc<[ChannelMessage]> = frame.messages[skip..].into();
                last = frame.last();
                out.push(Arc::new(Frame::new(frame.epoch.clone(), messages)));
            } else {
                break;
            }
        }
        if look {
            gap_since = None;
            match fill(&env, &name, &epoch, last).await {
                Ok(Fill::Run(frames)) => {
                    for frame in frames {
                        if !epoch.is_empty() && *frame.epoch != *epoch {
                            // A new history: what waits is of the old one.
                            ahead.clear();
                        }
                        epoch = frame.epoch.to_string();
                        last = frame.last();
                        out.push(frame);
                    }
                }
                Ok(Fill::Jump { epoch: e, head }) => {
                    epoch = e;
                    last = head;
                    ahead.clear();
                }
                Err(e) => {
                    warn!(channel = %name, error = %e, "Reading a channel's history for its subscribers failed; trying again.");
                    gap_since = Some(tokio::time::Instant::now());
                }
            }
            ahead.retain(|_, f| f.last() > last);
        }
        if !ahead.is_empty() && gap_since.is_none() {
            gap_since = Some(tokio::time::Instant::now());
        } else if ahead.is_empty() {
            gap_since = None;
        }
        if out.is_empty() {
            continue;
        }
        *hub.delivered.lock().unwrap_or_else(PoisonError::into_inner) = (epoch.clone(), last);
        if settings.coalesce_ms == 0 {
            for frame in out {
                let _ = hub.frames.send(frame);
            }
        } else {
            for frame in out {
                if *held_epoch != *frame.epoch && !held.is_empty() {
                    let messages: Arc<[ChannelMessage]> = std::mem::take(&mut held).into();
                    let _ = hub
                        .frames
                        .send(Arc::new(Frame::new(held_epoch.clone(), messages)));
                }
                held_epoch = frame.epoch.clone();
                held.extend(frame.messages.iter().cloned());
            }
            if flush_at.is_none() {
                flush_at = Some(
                    tokio::time::Instant::now()
                        + Duration::from_millis(settings.coalesce_ms.into()),
                );
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Fill {
    /// The messages after the hub's last one, in frames; when the store
    /// started a new epoch, the new epoch's from its first message.
    Run(Vec<Arc<Frame>>),
    /// The hub cannot continue its run (the run left the history): it goes
    /// on from the channel's head; subscribers behind it read the store and
    /// get a reset.
    Jump { epoch: String, head: u64 },
}

/// Reads every message after `last` of `epoch` from the store (`epoch`
/// empty and `last` 0: a channel that had no message yet).
async fn fill(env: &Env, name: &str, epoch: &str, mut last: u64) -> Result<Fill> {
    let mut epoch = epoch.to_string();
    let mut frames = Vec::new();
    loop {
        let now = env.now_ms();
        let read = env
            .backend
            .channels
            .channel_read(name, last, READ_PAGE, now)
            .await?;
        let fresh = epoch.is_empty() && last == 0;
        if read.epoch != epoch && !fresh {
            // The store started the history over (it lost the old one):
            // hand over the new one from its first message, which every
            // subscriber takes as a reset to offset 0 of the new epoch.
            // Jumping to its head instead would tell no one until the
            // next publish, and never deliver the messages before it.
            epoch = read.epoch;
            last = 0;
            continue;
        }
        if read.gap {
            return Ok(Fill::Jump {
                epoch: read.epoch,
                head: read.head,
            });
        }
        // The next page continues this epoch (a fresh hub learns it here).
        epoch.clone_from(&read.epoch);
        let full = read.messages.len() == READ_PAGE;
        if let Some(m) = read.messages.last() {
            last = m.offset;
            frames.push(Arc::new(Frame::new(
                read.epoch.as_str().into(),
                read.messages.into(),
            )));
        }
        if !full {
            return Ok(Fill::Run(frames));
        }
    }
}

/// Writes this node's subscriber counts while it has subscribers.
async fn presence(env: Arc<Env>, channels: std::sync::Weak<Channels>) {
    let mut written: HashMap<String, usize> = HashMap::new();
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRESENCE_EVERY) => {}
            _ = env.tasks.stopping() => return,
        }
        let Some(me) = channels.upgrade() else { return };
        let counts: HashMap<String, usize> = me.counts().into_iter().collect();
        let refresh = last_refresh.elapsed() >= PRESENCE_TTL / 3;
        if refresh {
            last_refresh = tokio::time::Instant::now();
        }
        let now = env.now_ms();
        for (name, count) in &counts {
            if !refresh && written.get(name) == Some(count) {
                continue;
            }
            let key = format!("{PRESENCE_PREFIX}{name}\0{}", me.node_tag);
            let _ = env
                .backend
                .kv
                .kv_set(
                    &key,
                    count.to_string().into_bytes(),
                    Some(PRESENCE_TTL.as_millis() as u64),
                    KvCondition::Always,
                    now,
                )
                .await;
        }
        for name in written.keys().filter(|n| !counts.contains_key(*n)) {
            let key = format!("{PRESENCE_PREFIX}{name}\0{}", me.node_tag);
            let _ = env.backend.kv.kv_delete(&key, None, now).await;
        }
        written = counts;
    }
}

/// Where several nodes share the store: wakes this node's hubs when
/// another node published on their channels.
async fn follow(env: Arc<Env>, channels: std::sync::Weak<Channels>) {
    // Heads the store answered, which hubs may not have caught up with yet:
    // waiting from a hub's older position would answer at once, again and
    // again, until it does.
    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    let mut settings_read = tokio::time::Instant::now();
    loop {
        let Some(me) = channels.upgrade() else { return };
        let mut positions = me.positions();
        if !positions.is_empty() && settings_read.elapsed() >= SETTINGS_EVERY {
            // Settings changed through another node reach this node's hubs
            // (a node's own changes are handed to them at once).
            settings_read = tokio::time::Instant::now();
            me.refresh_settings().await;
        }
        drop(me);
        seen.retain(|name, _| positions.iter().any(|(n, _, _)| n == name));
        for (name, epoch, offset) in &mut positions {
            if let Some((e, head)) = seen.get(name.as_str())
                && (e != epoch || *head > *offset)
            {
                *epoch = e.clone();
                *offset = *head;
            }
        }
        if positions.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = env.tasks.stopping() => return,
            }
        }
        let Some(wait) = env.backend.channels.channel_wait(positions, 250) else {
            // A store only this node uses: every publish is seen here.
            return;
        };
        let changed = tokio::select! {
            changed = wait => changed,
            _ = env.tasks.stopping() => return,
        };
        match changed {
            Ok(changed) => {
                let Some(me) = channels.upgrade() else { return };
                for (name, epoch, head) in changed {
                    me.look(&name);
                    seen.insert(name, (epoch, head));
                }
            }
            Err(e) => {
                warn!(error = %e, "Following other nodes' channel messages failed; retrying in a second.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = env.tasks.stopping() => return,
                }
            }
        }
    }
}

/// One subscriber's stream of [`Event`]s.
pub struct Subscription {
    channels: Arc<Channels>,
    name: String,
    hub: Arc<Hub>,
    frames: broadcast::Receiver<Arc<Frame>>,
    epoch: String,
    /// The last offset handed out.
    offset: u64,
    queue: VecDeque<Event>,
    /// Reading the store until caught up with the hub.
    catching_up: bool,
}

impl Subscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.name
    }

    /// The next event; `None` when the node shuts down.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.catching_up {
                if let Err(e) = self.catch_up().await {
                    warn!(channel = %self.name, error = %e, "A subscriber could not read the channel's history; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.channels.env.tasks.stopping() => return None,
                    }
                }
                continue;
            }
            let received = tokio::select! {
                received = self.frames.recv() => received,
                // The hub ends with the node: so does the subscription.
                _ = self.channels.env.tasks.stopping() => return None,
            };
            match received {
                Ok(frame) => self.take_frame(&frame),
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready now (without waiting or reading the
    /// store): lets a transport write a burst in one go.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.catching_up {
                return None;
            }
            match self.frames.try_recv() {
                Ok(frame) => self.take_frame(&frame),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.catching_up = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    fn take_frame(&mut self, frame: &Frame) {
        if self.epoch.is_empty() && self.offset == 0 {
            // The channel had no message when this subscriber came.
            self.epoch = frame.epoch.to_string();
        }
        if *frame.epoch != *self.epoch {
            let first = frame.first();
            self.queue.push_back(Event::Reset {
                epoch: frame.epoch.to_string(),
                offset: first.saturating_sub(1),
                reason: format!(
                    "the channel's history started over (epoch `{}`): resync from a snapshot",
                    frame.epoch
                ),
            });
            self.epoch = frame.epoch.to_string();
            self.offset = first.saturating_sub(1);
        }
        if frame.last() <= self.offset {
            return;
        }
        if frame.first() > self.offset + 1 {
            // Something between is missing here: read it.
            self.catching_up = true;
            return;
        }
        let skip = (self.offset + 1 - frame.first()) as usize;
        let (messages, encoded): (Arc<[ChannelMessage]>, Encoded) = if skip == 0 {
            (frame.messages.clone(), Encoded(Some(frame.encoded.clone())))
        } else {
            (frame.messages[skip..].into(), Encoded::default())
        };
        self.offset = frame.last();
        self.queue.push_back(Event::Messages {
            epoch: frame.epoch.clone(),
            messages,
            encoded,
        });
    }

    fn take_read(&mut self, messages: Vec<ChannelMessage>) {
        let full = messages.len() == READ_PAGE;
        if let Some(last) = messages.last() {
            self.offset = last.offset;
            self.queue.push_back(Event::Messages {
                epoch: self.epoch.as_str().into(),
                messages: messages.into(),
                encoded: Encoded::default(),
            });
        }
        self.catching_up = full;
    }

    async fn catch_up(&mut self) -> Result<()> {
        let env = &self.channels.env;
        let now = env.now_ms();
        let read = env
            .backend
            .channels
            .channel_read(&self.name, self.offset, READ_PAGE, now)
            .await?;
        if self.epoch.is_empty() && self.offset == 0 {
            self.epoch = read.epoch.clone();
        }
        if read.epoch != self.epoch || read.gap {
            self.queue.push_back(Event::Reset {
                epoch: read.epoch.clone(),
                offset: read.head,
                reason: format!(
                    "this subscriber fell behind past the channel's history (it had offset {}): resync from a snapshot",
                    self.offset
                ),
            });
            self.epoch = read.epoch;
            self.offset = read.head;
            self.catching_up = false;
            // Frames still buffered for it are at or before the head, or
            // continue from it: `take_frame` sorts them out.
            return Ok(());
        }
        self.take_read(read.messages);
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.channels.release(&self.name, &self.hub);
    }
}

/// Feed messages waiting to be recorded, at most (more are dropped with a
/// warning: a feed is a view of the node's state, its source of truth is
/// the state itself).
const FEED_BACKLOG: usize = 65_536;
/// How often the set of wanted feeds is read again from the store.
const FEEDS_REFRESH: Duration = Duration::from_secs(2);

/// The node's feeds: messages about its own state on `_…` channels —
/// `_invocations.<function>` (each finished invocation) and
/// `_docs.<category>` (each document written or deleted). A feed is
/// recorded once it is *wanted*: it has stored settings, which its first
/// subscriber (on any node) stores. Until then nothing is written for it.
pub(crate) struct Feeds {
    wanted: std::sync::RwLock<std::collections::HashSet<String>>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl Feeds {
    fn new() -> (Feeds, mpsc::Receiver<(String, Vec<u8>)>) {
        let (tx, rx) = mpsc::channel(FEED_BACKLOG);
        let feeds = Feeds {
            wanted: Default::default(),
            tx,
        };
        (feeds, rx)
    }

    fn want(&self, channel: &str) {
        self.wanted
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.to_string());
    }

    fn wants(&self, channel: &str) -> bool {
        self.wanted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel)
    }

    /// True when some wanted feed starts with `prefix`.
    pub(crate) fn wants_any(&self, prefix: &str) -> bool {
        self.wanted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|c| c.starts_with(prefix))
    }

    /// Queues `data` (JSON) for the feed `channel` if it is wanted.
    pub(crate) fn note(&self, channel: String, data: serde_json::Value) {
        if !self.wants(&channel) {
            return;
        }
        let data = data.to_string().into_bytes();
        if self.tx.try_send((channel, data)).is_err() {
            warn!("The node's feeds are behind by {FEED_BACKLOG} messages; dropping one.");
        }
    }

    /// Documents written (or deleted, `deleted`) in `category`.
    pub(crate) fn docs(&self, category: &str, ids: &[String], deleted: bool) {
        let channel = format!("_docs.{category}");
        if !self.wants(&channel) {
            return;
        }
        let op = if deleted { "delete" } else { "put" };
        for id in ids {
            self.note(channel.clone(), serde_json::json!({"op": op, "id": id}));
        }
    }
}

/// Records queued feed messages, a batch per channel, and keeps the set of
/// wanted feeds current.
async fn record_feeds(
    env: Arc<Env>,
    channels: std::sync::Weak<Channels>,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
) {
    let mut refresh = tokio::time::interval(FEEDS_REFRESH);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut batch: BTreeMap<String, Vec<NewChannelMessage>> = BTreeMap::new();
                let mut next = Some(first);
                while let Some((channel, data)) = next {
                    batch.entry(channel).or_default().push(NewChannelMessage { binary: false, data });
                    next = rx.try_recv().ok();
                }
                for (channel, messages) in batch {
                    for chunk in messages.chunks(READ_PAGE) {
                        let Some(channels) = channels.upgrade() else { return };
                        if let Err(e) = channels.publish_any(&channel, chunk.to_vec(), None).await {
                            warn!(channel = %channel, error = %e, "Recording a feed message failed.");
                        }
                    }
                }
            }
            _ = refresh.tick() => {
                let Some(channels) = channels.upgrade() else { return };
                match env.backend.channels.channel_list("_", None, 10_000).await {
                    Ok(infos) => {
                        let wanted = infos
                            .into_iter()
                            .filter(|i| i.settings.is_some())
                            .map(|i| i.name)
                            .collect();
                        *channels.feeds.wanted.write().unwrap_or_else(PoisonError::into_inner) = wanted;
                    }
                    Err(e) => warn!(error = %e, "Reading which feeds are wanted failed; trying again."),
                }
            }
            _ = env.tasks.stopping() => return,
        }
    }
}

/// Feeds `_invocations.<function>` from the node's finished attempts while
/// some such feed is wanted (following costs a copy of each attempt).
pub(crate) async fn invocation_feed(
    env: Arc<Env>,
    channels: std::sync::Weak<Channels>,
    follow: impl Fn() -> crate::history::Feed + Send + 'static,
) {
    use crate::history::FeedItem;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FEEDS_REFRESH) => {}
            _ = env.tasks.stopping() => return,
        }
        let wanted = |channels: &std::sync::Weak<Channels>| {
            channels
                .upgrade()
                .map(|c| c.feeds.wants_any("_invocations."))
        };
        match wanted(&channels) {
            None => return,
            Some(false) => continue,
            Some(true) => {}
        }
        let mut feed = follow();
        let mut check = tokio::time::interval(FEEDS_REFRESH);
        loop {
            let item = tokio::select! {
                item = feed.next() => item,
                _ = check.tick() => {
                    if wanted(&channels) != Some(true) {
                        break;
                    }
                    continue;
                }
            };
            let attempt = match item {
                FeedItem::Attempt(a) => a,
                FeedItem::Lagged(n) => {
                    warn!(
                        dropped = n,
                        "The invocations feed fell behind the node's finished attempts."
                    );
                    continue;
                }
                FeedItem::Closed => return,
            };
            let Some(me) = channels.upgrade() else { return };
            let r = &attempt.record;
            me.feeds.note(
                format!("_invocations.{}", r.function),
                serde_json::json!({
                    "id": r.id,
                    "function": r.function.to_string(),
                    "status": r.status,
                    "attempt": r.attempts,
                    "duration_ms": r.duration_ms,
                    "finished_at_ms": r.finished_at_ms,
                }),
            );
        }
    }
}

/// How often state feeds (`_jobs.*`, `_queues.*`) look at their state.
const STATE_FEED_EVERY: Duration = Duration::from_millis(500);
/// The reserved key-value prefix of state feeds' publisher leases.
const STATE_FEED_LEASE: &str = "\0F\0";

/// What a state feed reads: the state of `id` as a JSON message and
/// whether it is final (a finished job), or `None` when `id` is unknown.
pub(crate) type StateRead = Box<
    dyn Fn(
            String,
        )
            -> futures_util::future::BoxFuture<'static, Result<Option<(serde_json::Value, bool)>>>
        + Send
        + Sync,
>;

/// Publishes the state behind each wanted feed `<prefix><id>` whenever it
/// changes (looked at every [`STATE_FEED_EVERY`]), until it is final. Where
/// several nodes share the store, one publishes each feed: the holder of a
/// short lease in the key-value store.
pub(crate) async fn state_feed(
    env: Arc<Env>,
    channels: std::sync::Weak<Channels>,
    prefix: &'static str,
    read: StateRead,
) {
    let mut last: HashMap<String, serde_json::Value> = HashMap::new();
    let mut finished: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATE_FEED_EVERY) => {}
            _ = env.tasks.stopping() => return,
        }
        let Some(me) = channels.upgrade() else { return };
        let wanted: Vec<String> = me
            .feeds
            .wanted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|c| c.starts_with(prefix) && !finished.contains(*c))
            .cloned()
            .collect();
        last.retain(|c, _| wanted.contains(c));
        for channel in wanted {
            if !me.hold_state_lease(&channel).await {
                last.remove(&channel);
                continue;
            }
            let id = channel[prefix.len()..].to_string();
            let state = match read(id).await {
                Ok(Some(state)) => state,
                Ok(None) => continue,
                Err(e) => {
                    warn!(channel = %channel, error = %e, "Reading a feed's state failed; trying again.");
                    continue;
                }
            };
            let (message, is_final) = state;
            if last.get(&channel) == Some(&message) {
                continue;
            }
            let data = message.to_string().into_bytes();
            match me
                .publish_any(
                    &channel,
                    vec![NewChannelMessage {
                        binary: false,
                        data,
                    }],
                    None,
                )
                .await
            {
                Ok(_) => {
                    last.insert(channel.clone(), message);
                    if is_final {
                        finished.insert(channel);
                    }
                }
                Err(e) => warn!(channel = %channel, error = %e, "Recording a feed message failed."),
            }
        }
    }
}

impl Channels {
    /// True when this node publishes the state feed `channel` (it holds,
    /// or just took, its lease).
    async fn hold_state_lease(&self, channel: &str) -> bool {
        let key = format!("{STATE_FEED_LEASE}{channel}");
        let now = self.env.now_ms();
        let kv = &self.env.backend.kv;
        let holder = match kv.kv_get(&key, now).await {
            Ok(entry) => entry.map(|e| e.value),
            Err(_) => return false,
        };
        let cond = match holder {
            Some(h) if h != self.node_tag.as_bytes() => return false,
            Some(_) => KvCondition::Always,
            // Two nodes may try at once: one takes it.
            None => KvCondition::Absent,
        };
        matches!(
            kv.kv_set(
                &key,
                self.node_tag.clone().into_bytes(),
                Some(5_000),
                cond,
                now
            )
            .await,
            Ok(shoal_store::KvSet::Written(_))
        )
    }
}
