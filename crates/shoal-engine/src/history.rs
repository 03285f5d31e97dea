//! Finding past invocations: filtered lists, the feed of finished
//! invocations (what `shoal logs --follow` streams), and the node's stats.
//!
//! The feed is a broadcast owned by the `Dispatcher`, sent once an
//! attempt's record is durable, so a follower that then lists finds it. A
//! follower slower than the feed's capacity is told how many it missed
//! (`Feed::Lagged`) rather than slowing the dispatcher down.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::broadcast;

use shoal_store::InvocationRecord;

use crate::env::Tasks;

/// The most invocations a page lists.
pub const MAX_LIST_LIMIT: usize = 1_000;

/// How many finished attempts the feed holds for a slow follower.
const FEED_CAPACITY: usize = 1_024;

/// One finished attempt: its record as written, and the logs it printed.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub record: InvocationRecord,
    pub logs: Vec<u8>,
}

/// The sending side, owned by the `Dispatcher`.
pub(crate) struct FeedSender(broadcast::Sender<Arc<FinishedAttempt>>);

impl Default for FeedSender {
    fn default() -> FeedSender {
        FeedSender(broadcast::channel(FEED_CAPACITY).0)
    }
}

impl FeedSender {
    /// Whether anyone follows now (a finished attempt is copied for the
    /// feed only then; one who starts following in between misses it).
    pub(crate) fn followed(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// Tells every follower; nobody listening is fine.
    pub(crate) fn send(&self, attempt: FinishedAttempt) {
        let _ = self.0.send(Arc::new(attempt));
    }

    /// A follower that stops (`FeedItem::Closed`) when `tasks` stop.
    pub(crate) fn subscribe(&self, tasks: Tasks) -> Feed {
        Feed {
            rx: self.0.subscribe(),
            tasks,
        }
    }
}

/// A follower of finished attempts, from the moment it subscribed.
pub struct Feed {
    rx: broadcast::Receiver<Arc<FinishedAttempt>>,
    tasks: Tasks,
}

/// What a follower gets next.
#[derive(Debug)]
pub enum FeedItem {
    Attempt(Arc<FinishedAttempt>),
    /// The follower fell behind and this many attempts were dropped for it.
    Lagged(u64),
    /// The node is stopping: nothing more comes.
    Closed,
}

impl Feed {
    pub async fn next(&mut self) -> FeedItem {
        if self.tasks.is_stopping() {
            return FeedItem::Closed;
        }
        tokio::select! {
            _ = self.tasks.stopping() => FeedItem::Closed,
            got = self.rx.recv() => match got {
                Ok(a) => FeedItem::Attempt(a),
                Err(broadcast::error::RecvError::Lagged(n)) => FeedItem::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => FeedItem::Closed,
            },
        }
    }
}

/// What `GET /v1/stats` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Bytes of every file under the data directory (store, code, venvs).
    pub data_dir_bytes: u64,
    /// Invocation records stored.
    pub invocations: u64,
    /// How long finished invocations are kept (`None`: forever).
    pub retention: Option<std::time::Duration>,
}

/// The size of every regular file under `dir`, not following symlinks
/// (a venv links to the system's Python). Unreadable entries count 0.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::dir_size;

    #[test]
    fn dir_size_counts_files_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 100]).unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/d"), vec![0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
