//! Fixed-size blobs' bytes in `blob_pages`: rows of `PAGE` bytes keyed by
//! (pages id, page index), an absent row being zeros. A batch reads the
//! rows it touches into a `Window`, applies its operations there and
//! writes back the rows it changed, in the writer's transaction. A read
//! takes its bytes from one read transaction: a range of up to `EAGER`
//! bytes is copied at once and the transaction let go; a larger one is read
//! lazily, keeping the transaction (and the pages redb may not reuse while
//! it lives) until the stream ends.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use redb::{ReadOnlyTable, ReadableTable, StorageError, Table};
use shoal_store::blobs::ByteWindow;
use shoal_store::{BlobOp, BlobStream, Result};

use crate::unavailable;

/// Bytes per row: a row with its key and the leaf's header fits one 4 KiB
/// redb page (4096-byte rows took two pages each, doubling the file).
pub(super) const PAGE: u64 = 4000;

/// Bytes a read hands out at a time.
const PIECE: u64 = 64 << 10;

/// A read of at most this many bytes is copied when it starts (a 1000×1000
/// board of 4-bit pixels is 500 KB), so a slow consumer does not hold a
/// read transaction while writes go on.
const EAGER: u64 = 1 << 20;

pub(super) type PageTable<'txn> = Table<'txn, (u64, u64), &'static [u8]>;
pub(super) type ReadPages = ReadOnlyTable<(u64, u64), &'static [u8]>;

/// The rows a batch touches, sorted by index.
pub(super) struct Window {
    pages: Vec<Page>,
}

struct Page {
    index: u64,
    bytes: Vec<u8>,
    dirty: bool,
}

impl Window {
    /// Reads every row the (validated) operations touch, of a blob of
    /// `size` bytes.
    pub(super) fn load(
        table: &PageTable<'_>,
        id: u64,
        size: u64,
        ops: &[BlobOp],
    ) -> std::result::Result<Window, StorageError> {
        let mut touched = BTreeSet::new();
        for op in ops {
            let (start, end) = op.byte_span();
            if end > start {
                touched.extend(start / PAGE..=(end - 1) / PAGE);
            }
        }
        let mut pages = Vec::with_capacity(touched.len());
        for index in touched {
            let len = (size - index * PAGE).min(PAGE) as usize;
            let mut bytes = vec![0u8; len];
            if let Some(stored) = table.get((id, index))? {
                let stored = stored.value();
                let n = stored.len().min(len);
                bytes[..n].copy_from_slice(&stored[..n]);
            }
            pages.push(Page {
                index,
                bytes,
                dirty: false,
            });
        }
        Ok(Window { pages })
    }

    /// Writes back the rows that changed.
    pub(super) fn store(
        &self,
        table: &mut PageTable<'_>,
        id: u64,
    ) -> std::result::Result<(), StorageError> {
        for page in self.pages.iter().filter(|p| p.dirty) {
            table.insert((id, page.index), page.bytes.as_slice())?;
        }
        Ok(())
    }

    fn at(&self, at: u64) -> usize {
        self.pages
            .binary_search_by_key(&(at / PAGE), |p| p.index)
            .expect("validated operations stay in the pages they touch")
    }
}

impl ByteWindow for Window {
    fn byte(&self, at: u64) -> u8 {
        self.pages[self.at(at)].bytes[(at % PAGE) as usize]
    }

    fn set_byte(&mut self, at: u64, value: u8) {
        let i = self.at(at);
        let page = &mut self.pages[i];
        let slot = &mut page.bytes[(at % PAGE) as usize];
        if *slot != value {
            *slot = value;
            page.dirty = true;
        }
    }
}

/// Deletes every row of a blob.
pub(super) fn delete(table: &mut PageTable<'_>, id: u64) -> std::result::Result<(), StorageError> {
    table.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
}

/// Streams `start..end` of a blob from its rows in one read transaction
/// (the table keeps it open), a piece at a time.
pub(super) fn stream(table: ReadPages, id: u64, start: u64, end: u64) -> BlobStream {
    if end.saturating_sub(start) <= EAGER {
        let read = if end > start {
            read(&table, id, start, end)
        } else {
            Ok(Bytes::new())
        };
        drop(table);
        let pieces: Vec<Result<Bytes>> = match read {
            Ok(all) => (0..all.len())
                .step_by(PIECE as usize)
                .map(|at| Ok(all.slice(at..(at + PIECE as usize).min(all.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        return futures_util::stream::iter(pieces).boxed();
    }
    let table = Arc::new(table);
    futures_util::stream::unfold(start, move |at| {
        let table = table.clone();
        async move {
            if at >= end {
                return None;
            }
            let to = (at + PIECE).min(end);
            match read(&table, id, at, to) {
                Ok(piece) => Some((Ok(piece), to)),
                Err(e) => Some((Err(e), end)),
            }
        }
    })
    .boxed()
}

fn read(table: &ReadPages, id: u64, at: u64, to: u64) -> Result<Bytes> {
    let mut out = vec![0u8; (to - at) as usize];
    let rows = table
        .range((id, at / PAGE)..=(id, (to - 1) / PAGE))
        .map_err(unavailable)?;
    for row in rows {
        let (k, v) = row.map_err(unavailable)?;
        let page_start = k.value().1 * PAGE;
        let bytes = v.value();
        let lo = at.max(page_start);
        let hi = to.min(page_start + bytes.len() as u64);
        if lo < hi {
            out[(lo - at) as usize..(hi - at) as usize]
                .copy_from_slice(&bytes[(lo - page_start) as usize..(hi - page_start) as usize]);
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece read across row edges, with rows absent (zeros) and a short
    /// last row.
    #[test]
    fn reads_across_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        const T: redb::TableDefinition<(u64, u64), &[u8]> = redb::TableDefinition::new("p");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            t.insert((7, 0), vec![1u8; PAGE as usize].as_slice())
                .unwrap();
            t.insert((7, 2), vec![3u8; 10].as_slice()).unwrap();
            // Another blob's row right after: never read.
            t.insert((8, 0), vec![9u8; PAGE as usize].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        let table = redb::ReadableDatabase::begin_read(&db)
            .unwrap()
            .open_table(T)
            .unwrap();
        let size = 2 * PAGE + 10;
        let got = read(&table, 7, PAGE - 2, size).unwrap();
        let mut want = vec![1, 1];
        want.extend(vec![0; PAGE as usize]);
        want.extend(vec![3; 10]);
        assert_eq!(got.as_ref(), want.as_slice());
    }

    /// Space a table of `n` full rows of `len` bytes takes, per stored byte.
    fn overhead(len: usize) -> f64 {
        use redb::ReadableTableMetadata;
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        const T: redb::TableDefinition<(u64, u64), &[u8]> = redb::TableDefinition::new("p");
        let txn = db.begin_write().unwrap();
        let stats = {
            let mut t = txn.open_table(T).unwrap();
            for i in 0..512 {
                t.insert((3, i), vec![7u8; len].as_slice()).unwrap();
            }
            t.stats().unwrap()
        };
        txn.commit().unwrap();
        let total = stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        total as f64 / stats.stored_bytes() as f64
    }

    /// Why `PAGE` is not 4096: such a row and its key overflow a 4 KiB
    /// redb page, and each takes two.
    #[test]
    fn a_row_fits_one_redb_page() {
        let (ours, power_of_two) = (overhead(PAGE as usize), overhead(4096));
        println!("space per stored byte: {ours:.3} ({PAGE}-byte rows), {power_of_two:.3} (4096)");
        assert!(ours < 1.1, "{ours}");
        assert!(power_of_two > 1.8, "{power_of_two}");
    }
}
