//! Time for the engine: every deadline, backoff and timestamp reads a `Clock`.
//!
//! The engine never calls `SystemTime::now()` itself, so tests can control time.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Wall time that follows tokio's clock from a fixed start: with tokio's
/// paused time (`start_paused = true`) time moves only when the test
/// advances it or every task waits, so timers and timestamps agree and a
/// test of backoff or leases never sleeps for real.
pub struct TokioClock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base_ms: u64) -> TokioClock {
        TokioClock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}
