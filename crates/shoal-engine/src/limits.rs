//! Shared rate limiters: `N per second, burst B`, by name, used by any number
//! of functions (`limiter = "vendor-api"` in `shoal.toml`).
//!
//! GCRA (the generic cell rate algorithm): one "theoretical arrival time" per
//! limiter. A token is available when `tat - burst_window <= now`; taking it
//! moves `tat` one interval on. Work over the limit waits — the consumer
//! sleeps until the next token is due (no busy loop) and leases nothing
//! meanwhile, so messages wait in their queue. Settings change at run time.
//! The state is in memory on a store one node uses; nodes sharing a store
//! that keeps limiter state (Redis) draw from one `tat` there, on the
//! store's clock (`Catalog::take_tokens`, one round trip per admission and
//! one per lease), so the limit holds across the cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_store::{LimiterRecord, TokenRate};
use shoal_types::validate_name;

use crate::env::Env;
use crate::error::{Entity, Error, Result};

/// The slowest limiter: one call in 1000 s. Slower rates are refused (a
/// rate of 1e-300 would never let a call through).
pub const MIN_PER_SECOND: f64 = 0.001;
pub const MAX_PER_SECOND: f64 = 1_000_000.0;

/// The limiters of a node: their settings in the store, their state here.
pub(crate) struct Limiters {
    env: Arc<Env>,
    rates: Rates,
}

impl Limiters {
    pub(crate) fn new(env: Arc<Env>) -> Limiters {
        Limiters {
            env,
            rates: Rates::default(),
        }
    }

    /// Installs every stored limiter, and drops those no longer stored
    /// (removed through another node sharing the store).
    pub(crate) async fn load(&self) -> Result<()> {
        let stored = self.env.backend.catalog.limiters().await?;
        self.rates
            .retain(|name| stored.iter().any(|l| l.name == name));
        for limiter in stored {
            self.rates.set(&limiter);
        }
        Ok(())
    }

    /// Creates or changes a limiter; takes effect at once.
    pub(crate) async fn put(
        &self,
        name: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<LimiterRecord> {
        validate_name("limiter name", name)?;
        if !(MIN_PER_SECOND..=MAX_PER_SECOND).contains(&per_second) {
            return Err(Error::invalid(
                "per_second",
                format!(
                    "must be above 0: at least 0.001 (one call in 1000 s) and at most 1,000,000 (it is {per_second})"
                ),
            ));
        }
        if !(1..=1_000_000).contains(&burst) {
            return Err(Error::invalid("burst", "must be between 1 and 1,000,000"));
        }
        let record = LimiterRecord {
            name: name.to_string(),
            per_second,
            burst,
            updated_at_ms: self.env.now_ms(),
        };
        self.env.backend.catalog.put_limiter(record.clone()).await?;
        self.rates.set(&record);
        Ok(record)
    }

    pub(crate) async fn list(&self) -> Result<Vec<LimiterRecord>> {
        Ok(self.env.backend.catalog.limiters().await?)
    }

    /// Removes a limiter (the caller checked that no function uses it).
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        if !self.env.backend.catalog.remove_limiter(name).await? {
            return Err(Error::not_found(Entity::Limiter, name));
        }
        self.rates.remove(name);
        Ok(())
    }

    /// How many tokens (up to `max`) could be taken now, without taking
    /// them; or how long until one can. From the store's shared state when
    /// it keeps one (nodes sharing a Redis), else from this node's.
    pub(crate) async fn available(
        &self,
        name: &str,
        max: usize,
        now_ms: u64,
    ) -> std::result::Result<usize, Duration> {
        match self.shared(name, max, true).await {
            Some(answer) => answer,
            None => self.rates.available(name, max, now_ms),
        }
    }

    /// Waits until a token of `name` is available, then takes it.
    pub(crate) async fn acquire(&self, name: &str) {
        loop {
            let taken = match self.shared(name, 1, false).await {
                Some(answer) => answer,
                None => self.rates.take(name, 1, self.env.now_ms()),
            };
            match taken {
                Ok(_) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Asks the store's shared limiter state: `None` when the store keeps
    /// none (or the limiter is unknown here, so it does not limit). While
    /// the store fails, no token is granted: work waits rather than run
    /// past a limit the store can no longer count.
    async fn shared(
        &self,
        name: &str,
        want: usize,
        peek: bool,
    ) -> Option<std::result::Result<usize, Duration>> {
        let rate = self.rates.rate(name)?;
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        match self
            .env
            .backend
            .catalog
            .take_tokens(name, rate, want, peek)
            .await
        {
            Ok(None) => None,
            Ok(Some(t)) if t.granted > 0 => Some(Ok(t.granted as usize)),
            Ok(Some(t)) => Some(Err(Duration::from_millis(t.wait_ms.max(1)))),
            Err(e) => {
                tracing::warn!(limiter = name, error = %e, "The store's rate limiter state is unavailable; waiting.");
                Some(Err(Duration::from_millis(200)))
            }
        }
    }
}

/// GCRA state of every limiter, by name.
#[derive(Default)]
pub(crate) struct Rates {
    state: Mutex<HashMap<String, Gcra>>,
}

#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Milliseconds between tokens.
    interval: f64,
    /// How far `tat` may run ahead of now: (burst - 1) intervals.
    window: f64,
    /// Theoretical arrival time of the next token, in ms.
    tat: f64,
}

impl Rates {
    /// Installs or changes a limiter; keeps its position when it exists.
    pub(crate) fn set(&self, record: &LimiterRecord) {
        let interval = 1000.0 / record.per_second;
        let window = interval * f64::from(record.burst.max(1) - 1);
        let mut state = self.state.lock().unwrap();
        let entry = state.entry(record.name.clone()).or_insert(Gcra {
            interval,
            window,
            tat: 0.0,
        });
        entry.interval = interval;
        entry.window = window;
    }

    pub(crate) fn remove(&self, name: &str) {
        self.state.lock().unwrap().remove(name);
    }

    /// A limiter's pace, if it is known here.
    pub(crate) fn rate(&self, name: &str) -> Option<TokenRate> {
        self.state.lock().unwrap().get(name).map(|g| TokenRate {
            interval_ms: g.interval,
            window_ms: g.window,
        })
    }

    /// Keeps only the limiters `keep` says yes to.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.state.lock().unwrap().retain(|name, _| keep(name));
    }

    /// Takes up to `want` tokens from `name` at `now_ms`. Returns how many
    /// were taken, or, when none is available, how long until one is. An
    /// unknown limiter does not limit.
    pub(crate) fn take(
        &self,
        name: &str,
        want: usize,
        now_ms: u64,
    ) -> std::result::Result<usize, Duration> {
        let mut state = self.state.lock().unwrap();
        let Some(g) = state.get_mut(name) else {
            return Ok(want);
        };
        let now = now_ms as f64;
        let mut taken = 0;
        while taken < want {
            let tat = g.tat.max(now);
            if tat - g.window > now {
                break;
            }
            g.tat = tat + g.interval;
            taken += 1;
        }
        if taken == 0 {
            return Err(g.wait(now));
        }
        Ok(taken)
    }

    /// How many tokens (up to `max`) could be taken at `now_ms`, without
    /// taking them; or how long until one can.
    pub(crate) fn available(
        &self,
        name: &str,
        max: usize,
        now_ms: u64,
    ) -> std::result::Result<usize, Duration> {
        let state = self.state.lock().unwrap();
        let Some(g) = state.get(name) else {
            return Ok(max);
        };
        let now = now_ms as f64;
        let tat = g.tat.max(now);
        if tat - g.window > now {
            return Err(g.wait(now));
        }
        // Tokens until `tat` would run past `now + window`.
        let n = ((now + g.window - tat) / g.interval).floor() as usize + 1;
        Ok(n.min(max))
    }
}

impl Gcra {
    /// Time until the next token is due (at least a millisecond).
    fn wait(&self, now: f64) -> Duration {
        let wait = self.tat.max(now) - self.window - now;
        Duration::from_micros((wait * 1000.0).ceil().max(1000.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> Rates {
        let l = Rates::default();
        l.set(&LimiterRecord {
            name: "v".into(),
            per_second,
            burst,
            updated_at_ms: 0,
        });
        l
    }

    #[test]
    fn never_more_than_rate_plus_burst_in_any_second() {
        let l = limiter(10.0, 3);
        // Ask greedily every millisecond for 5 seconds.
        let mut grants = Vec::new();
        for now in 0..5000u64 {
            if let Ok(n) = l.take("v", 100, now) {
                grants.extend(std::iter::repeat_n(now, n));
            }
        }
        // Rate: about 10/s over 5 s, plus the burst at the start.
        assert!((50..=53).contains(&grants.len()), "{}", grants.len());
        for w in 0..4000u64 {
            let in_window = grants.iter().filter(|t| **t >= w && **t < w + 1000).count();
            assert!(in_window <= 10 + 3, "window at {w}: {in_window}");
        }
    }

    #[test]
    fn tells_how_long_to_wait() {
        let l = limiter(2.0, 1);
        assert_eq!(l.take("v", 5, 1000), Ok(1));
        let wait = l.take("v", 1, 1000).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(l.take("v", 1, 1500), Ok(1));
        assert_eq!(l.take("nope", 7, 0), Ok(7));
    }

    #[test]
    fn available_counts_without_taking() {
        let l = limiter(10.0, 3);
        assert_eq!(l.available("v", 100, 0), Ok(3));
        assert_eq!(l.available("v", 2, 0), Ok(2));
        assert_eq!(l.take("v", 2, 0), Ok(2));
        assert_eq!(l.available("v", 100, 0), Ok(1));
        assert_eq!(l.take("v", 1, 0), Ok(1));
        assert_eq!(l.available("v", 100, 0), Err(Duration::from_millis(100)));
    }

    #[test]
    fn settings_change_at_run_time() {
        let l = limiter(1.0, 1);
        assert_eq!(l.take("v", 1, 0), Ok(1));
        assert!(l.take("v", 1, 10).is_err());
        l.set(&LimiterRecord {
            name: "v".into(),
            per_second: 1000.0,
            burst: 10,
            updated_at_ms: 0,
        });
        assert!(l.take("v", 5, 1000).unwrap() >= 5);
    }
}
