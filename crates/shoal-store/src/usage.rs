//! Usage rollups: what finished invocations cost, summed per time bucket.
//!
//! Each adapter keeps, for every (bucket, function, token), a [`Rollup`] of
//! the invocations *created* in that bucket whose record is final: counts
//! by final status, cold starts, GB-seconds (in whole nano GB-seconds, so
//! sums are exact integers in every store) and a histogram of durations.
//! Three grains: minutes, hours and UTC days (a long range reads the
//! coarse rows, its edges the fine ones). A rollup changes in the same atomic
//! write as the record write that makes an invocation final, and only when
//! the record stored before was not final (or absent): a redelivered or
//! repeated final write adds nothing, and a crash loses both or neither.
//! Rollups outlive the records (the retention sweep never touches them).
//!
//! Each grain also keeps rows of every function together
//! ([`ALL_FUNCTIONS`], per token), so a total or a token's spend reads one
//! row per bucket and token, not one per function.
//!
//! Every adapter adds the same [`UsageDelta`] (from [`delta`]) so the
//! semantics live here once; adapters only store rows of `FIELDS` integers.

use shoal_types::InvocationStatus;

use crate::{InvocationFilter, InvocationRecord, Pending};

/// Duration histogram buckets: bucket 0 is `[0, 1)` ms, bucket `i ≥ 1`
/// is `[2^((i-1)/3), 2^(i/3))` ms (±12% around its geometric middle); the
/// last one is open-ended, from 2^(62/3) ms ≈ 28 min (past any timeout).
pub const HISTOGRAM: usize = 64;
/// Index of the first histogram field.
pub const FIRST_BUCKET: usize = 6;
/// Integers in one rollup row.
pub const FIELDS: usize = FIRST_BUCKET + HISTOGRAM;

/// The `function` of the rows that sum every function (no function name
/// is `*`).
pub const ALL_FUNCTIONS: &str = "*";

/// Field indexes of a [`Rollup`].
pub const SUCCEEDED: usize = 0;
pub const FAILED: usize = 1;
pub const TIMED_OUT: usize = 2;
pub const CANCELLED: usize = 3;
pub const COLD_STARTS: usize = 4;
/// Billed GB-seconds × 10⁹, rounded per record.
pub const GB_NS: usize = 5;

/// The size of a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    /// The bucket's length in milliseconds.
    pub fn ms(self) -> u64 {
        match self {
            Grain::Minute => 60_000,
            Grain::Hour => 3_600_000,
            Grain::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `t_ms`.
    pub fn start(self, t_ms: u64) -> u64 {
        t_ms - t_ms % self.ms()
    }

    /// A stable one-letter tag (store keys).
    pub fn tag(self) -> &'static str {
        match self {
            Grain::Minute => "m",
            Grain::Hour => "h",
            Grain::Day => "d",
        }
    }
}

/// One row: counters of the invocations of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub fields: [u64; FIELDS],
}

impl Default for Rollup {
    fn default() -> Rollup {
        Rollup {
            fields: [0; FIELDS],
        }
    }
}

impl Rollup {
    /// Finished invocations (every final status).
    pub fn invocations(&self) -> u64 {
        self.fields[SUCCEEDED]
            + self.fields[FAILED]
            + self.fields[TIMED_OUT]
            + self.fields[CANCELLED]
    }

    /// How many ended in `status` (0 for a status that is not final).
    pub fn of_status(&self, status: InvocationStatus) -> u64 {
        status_field(status).map_or(0, |f| self.fields[f])
    }

    /// Failed and timed out (what a dashboard calls errors).
    pub fn failed(&self) -> u64 {
        self.fields[FAILED] + self.fields[TIMED_OUT]
    }

    pub fn cold_starts(&self) -> u64 {
        self.fields[COLD_STARTS]
    }

    pub fn gb_s(&self) -> f64 {
        self.fields[GB_NS] as f64 / 1e9
    }

    /// Adds another row (or a delta) into this one.
    pub fn add(&mut self, other: &Rollup) {
        for (a, b) in self.fields.iter_mut().zip(other.fields.iter()) {
            *a += b;
        }
    }

    /// Adds `by` to one field.
    pub fn bump(&mut self, field: usize, by: u64) {
        self.fields[field] += by;
    }

    /// The `q` quantile (0..=1) of the durations, from the histogram: the
    /// geometric middle of the bucket that holds it (±12%). `None` with no
    /// duration recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let hist = &self.fields[FIRST_BUCKET..];
        let total: u64 = hist.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_middle_ms(i));
            }
        }
        Some(bucket_middle_ms(HISTOGRAM - 1))
    }

    /// The fields that are not 0, each as its index (one byte) and its
    /// value (LEB128): a row is mostly zeros (redb values).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        for (i, &v) in self.fields.iter().enumerate() {
            if v == 0 {
                continue;
            }
            out.push(i as u8);
            let mut v = v;
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        out
    }

    /// The inverse of [`Rollup::to_bytes`]; fields it does not know (a
    /// later layout) are skipped.
    pub fn from_bytes(bytes: &[u8]) -> Rollup {
        let mut r = Rollup::default();
        let mut i = 0;
        while i < bytes.len() {
            let field = bytes[i] as usize;
            i += 1;
            let (mut v, mut shift) = (0u64, 0);
            while i < bytes.len() {
                let b = bytes[i];
                i += 1;
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if field < FIELDS {
                r.fields[field] = v;
            }
        }
        r
    }
}

/// The field counting a final status.
pub fn status_field(status: InvocationStatus) -> Option<usize> {
    match status {
        InvocationStatus::Succeeded => Some(SUCCEEDED),
        InvocationStatus::Failed => Some(FAILED),
        InvocationStatus::TimedOut => Some(TIMED_OUT),
        InvocationStatus::Cancelled => Some(CANCELLED),
        InvocationStatus::Queued | InvocationStatus::Running => None,
    }
}

/// The histogram bucket of a duration.
pub fn bucket_of(ms: f64) -> usize {
    // Below 1 ms, and NaN, fall in bucket 0.
    if ms.is_nan() || ms < 1.0 {
        return 0;
    }
    let i = (ms.log2() * 3.0).floor() as usize + 1;
    i.min(HISTOGRAM - 1)
}

/// The geometric middle of a bucket, in ms (0.5 for bucket 0).
pub fn bucket_middle_ms(i: usize) -> f64 {
    if i == 0 {
        return 0.5;
    }
    2f64.powf((i as f64 - 0.5) / 3.0)
}

/// What one record that became final adds: the same increments to its
/// minute, hour and day rows, keyed by `function` and `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub function: String,
    /// The token id, or `""` for work no token started.
    pub token: String,
    /// When the record was created; its buckets start at its minute,
    /// hour and day.
    pub created_at_ms: u64,
    /// (field, increment) pairs, each field once, increments above 0.
    pub fields: Vec<(usize, u64)>,
}

impl UsageDelta {
    /// The delta as a row.
    pub fn rollup(&self) -> Rollup {
        let mut r = Rollup::default();
        for &(f, by) in &self.fields {
            r.bump(f, by);
        }
        r
    }

    /// (grain, bucket start) of the rows it changes, one per grain.
    pub fn buckets(&self) -> [(Grain, u64); 3] {
        Grain::ALL.map(|g| (g, g.start(self.created_at_ms)))
    }

    /// Every row it adds to: (grain, start, function, token), for its
    /// function and for [`ALL_FUNCTIONS`].
    pub fn rows(&self) -> Vec<(Grain, u64, &str, &str)> {
        let mut out = Vec::with_capacity(6);
        for (g, start) in self.buckets() {
            out.push((g, start, self.function.as_str(), self.token.as_str()));
            out.push((g, start, ALL_FUNCTIONS, self.token.as_str()));
        }
        out
    }
}

/// The delta of `record` when it is final; `None` while it is not. The
/// adapter applies it only when the record stored before is not final.
pub fn delta(record: &InvocationRecord) -> Option<UsageDelta> {
    let status = status_field(record.status)?;
    let mut fields = vec![(status, 1)];
    if record.cold_start {
        fields.push((COLD_STARTS, 1));
    }
    let gb_ns = (record.billed_gb_s.max(0.0) * 1e9).round() as u64;
    if gb_ns > 0 {
        fields.push((GB_NS, gb_ns));
    }
    if let Some(ms) = record.duration_ms {
        fields.push((FIRST_BUCKET + bucket_of(ms), 1));
    }
    Some(UsageDelta {
        function: record.function.to_string(),
        token: record.token.clone().unwrap_or_default(),
        created_at_ms: record.created_at_ms,
        fields,
    })
}

/// Which rows [`Usage::rollups`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupQuery {
    pub grain: Grain,
    /// Buckets starting at or after this time.
    pub since_ms: u64,
    /// Buckets starting before this time.
    pub until_ms: u64,
    /// `Some(name)`: that function's rows; `None`: the rows of every
    /// function together ([`ALL_FUNCTIONS`]), or with `each_function`,
    /// every function's own rows.
    pub function: Option<String>,
    pub each_function: bool,
    /// A token id; `Some("")` = work no token started.
    pub token: Option<String>,
}

impl RollupQuery {
    /// Whether a row of `function` and `token` answers the query.
    pub fn wants(&self, function: &str, token: &str) -> bool {
        let f = match (&self.function, self.each_function) {
            (Some(w), _) => w == function,
            (None, true) => function != ALL_FUNCTIONS,
            (None, false) => function == ALL_FUNCTIONS,
        };
        f && self.token.as_deref().is_none_or(|w| w == token)
    }
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub start_ms: u64,
    pub function: String,
    /// `""` for work no token started.
    pub token: String,
    pub rollup: Rollup,
}

/// Reading the rollups, and exact counts from the invocation indexes.
pub trait Usage: Send + Sync + 'static {
    /// The rows of `query`, in (start, function, token) order.
    fn rollups(&self, query: &RollupQuery) -> Pending<Vec<RollupRow>>;
    /// How many stored records match `filter` (its `mode` is ignored),
    /// counted on the indexes without reading records: cheap for a short
    /// time range or a rare status, a scan of the range otherwise.
    fn count_indexed(&self, filter: &InvocationFilter) -> Pending<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_the_middle() {
        assert_eq!(bucket_of(0.2), 0);
        assert_eq!(bucket_of(1.0), 1);
        assert_eq!(bucket_of(f64::NAN), 0);
        let mut last = 0;
        for ms in [
            1.0, 1.3, 2.0, 10.0, 100.0, 1000.0, 30_000.0, 900_000.0, 1e12,
        ] {
            let b = bucket_of(ms);
            assert!(b >= last, "{ms}");
            last = b;
            let mid = bucket_middle_ms(b);
            if b < HISTOGRAM - 1 {
                assert!(mid / ms < 1.3 && ms / mid < 1.3, "{ms} → {mid}");
            }
        }
    }

    #[test]
    fn quantiles_from_the_histogram() {
        let mut r = Rollup::default();
        for _ in 0..98 {
            r.bump(FIRST_BUCKET + bucket_of(10.0), 1);
        }
        for _ in 0..2 {
            r.bump(FIRST_BUCKET + bucket_of(1000.0), 1);
        }
        let p50 = r.quantile_ms(0.5).unwrap();
        let p99 = r.quantile_ms(0.99).unwrap();
        assert!((8.0..12.0).contains(&p50), "{p50}");
        assert!((800.0..1200.0).contains(&p99), "{p99}");
        assert_eq!(Rollup::default().quantile_ms(0.5), None);
        assert_eq!(Rollup::from_bytes(&r.to_bytes()), r);
        r.bump(GB_NS, u64::MAX - 5);
        assert_eq!(Rollup::from_bytes(&r.to_bytes()), r);
        assert!(Rollup::default().to_bytes().is_empty());
    }
}
