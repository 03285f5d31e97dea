//! The documents of the query benchmarks: deterministic "orders" of about
//! 200 bytes of JSON each, generated from their index alone, so that Shoal and
//! the Python baselines see exactly the same data (the baselines read the
//! NDJSON file this module writes).
//!
//! Prices are multiples of 0.25 and quantities small integers, so every
//! product, and every partial sum in any order, is exact in a double: all
//! systems must compute *exactly* the same total.

use std::fmt::Write as _;

const ADJECTIVES: [&str; 8] = [
    "blue", "small", "heavy", "bright", "quiet", "sturdy", "modern", "classic",
];
const NOUNS: [&str; 8] = [
    "widget", "lamp", "kettle", "chair", "backpack", "notebook", "speaker", "blanket",
];
const TAGS: [&str; 8] = [
    "sale",
    "new",
    "gift",
    "eco",
    "bulk",
    "import",
    "limited",
    "clearance",
];
const STATUSES: [&str; 4] = ["pending", "shipped", "delivered", "returned"];
const CITIES: [&str; 8] = [
    "Lisbon",
    "Amsterdam",
    "Berlin",
    "Nairobi",
    "Osaka",
    "Montreal",
    "Santiago",
    "Auckland",
];

/// A set of generated documents as NDJSON.
pub struct Docs {
    /// One compact JSON document per line, each line ending in `\n`.
    pub ndjson: Vec<u8>,
    /// Where each document's line ends (exclusive, including the newline).
    pub ends: Vec<usize>,
    /// Sum of `price * qty` over all documents, times 4 (an integer).
    pub total_quarters: u64,
}

impl Docs {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The expected result of the sum queries: `Σ price × qty`.
    pub fn total(&self) -> f64 {
        self.total_quarters as f64 / 4.0
    }

    /// The NDJSON bytes of documents `from..to`.
    pub fn lines(&self, from: usize, to: usize) -> &[u8] {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        let end = if to == 0 { 0 } else { self.ends[to - 1] };
        &self.ndjson[start..end]
    }

    /// The byte size of the first `n` documents.
    pub fn bytes_of_first(&self, n: usize) -> usize {
        self.lines(0, n).len()
    }

    /// The expected result of the sum queries over the first `n` documents.
    pub fn total_of_first(&self, n: usize) -> f64 {
        if n == self.len() {
            return self.total();
        }
        let quarters: u64 = (0..n as u64)
            .map(|i| {
                let o = order(i);
                o.quarters * o.qty
            })
            .sum();
        quarters as f64 / 4.0
    }
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Order {
    /// Price × 4 (0 to 39,999: prices 0.00 to 9,999.75).
    quarters: u64,
    qty: u64,
    r: u64,
    s: u64,
}

fn order(i: u64) -> Order {
    let r = mix(i);
    let s = mix(r ^ 0x5bd1_e995);
    Order {
        quarters: r % 40_000,
        qty: 1 + (r >> 20) % 10,
        r,
        s,
    }
}

/// Appends document `i` as one JSON line.
fn write_doc(out: &mut String, i: u64) -> (u64, u64) {
    let o = order(i);
    let pick = |v: u64, k: u32| (v >> k) as usize % 8;
    let _ = write!(
        out,
        "{{\"id\":\"o{i:07}\",\"price\":{}.{:02},\"qty\":{},\"name\":\"{} {} {i:07}\",\"tags\":[",
        o.quarters / 4,
        (o.quarters % 4) * 25,
        o.qty,
        ADJECTIVES[pick(o.r, 32)],
        NOUNS[pick(o.r, 35)],
    );
    let n_tags = 1 + pick(o.r, 38) % 3;
    for t in 0..n_tags {
        if t > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\"", TAGS[(pick(o.s, 0) + 3 * t) % 8]);
    }
    let _ = writeln!(
        out,
        "],\"city\":\"{}\",\"status\":\"{}\",\"sku\":\"SKU-{:08X}\",\"ts\":{},\"customer\":\"c{:06}\",\"paid\":{}}}",
        CITIES[pick(o.r, 41)],
        STATUSES[pick(o.r, 44) % 4],
        (o.s >> 16) as u32,
        1_700_000_000_000u64 + i * 997,
        o.s % 1_000_000,
        !(o.s >> 50).is_multiple_of(4),
    );
    (o.quarters, o.qty)
}

/// Generates documents `0..n`.
pub fn generate(n: usize) -> Docs {
    let mut text = String::with_capacity(n * 210);
    let mut ends = Vec::with_capacity(n);
    let mut total_quarters = 0u64;
    for i in 0..n as u64 {
        let (q, qty) = write_doc(&mut text, i);
        total_quarters += q * qty;
        ends.push(text.len());
    }
    Docs {
        ndjson: text.into_bytes(),
        ends,
        total_quarters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_json_of_about_200_bytes() {
        let a = generate(1000);
        let b = generate(1000);
        assert_eq!(a.ndjson, b.ndjson);
        assert_eq!(a.len(), 1000);
        let mut sum = 0.0;
        for line in a.ndjson.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            sum += v["price"].as_f64().unwrap() * v["qty"].as_f64().unwrap();
        }
        assert_eq!(sum, a.total());
        let avg = a.ndjson.len() / a.len();
        assert!((170..=230).contains(&avg), "{avg} bytes per document");
        assert_eq!(a.lines(0, 2).iter().filter(|c| **c == b'\n').count(), 2);
        assert_eq!(a.lines(999, 1000).last(), Some(&b'\n'));
        assert_eq!(a.total_of_first(1000), a.total());
        let first_ten: f64 = generate(10).total();
        assert_eq!(a.total_of_first(10), first_ten);
        let first = std::str::from_utf8(a.lines(0, 1)).unwrap();
        assert!(
            first.starts_with("{\"id\":\"o0000000\",\"price\":"),
            "{first}"
        );
    }
}
