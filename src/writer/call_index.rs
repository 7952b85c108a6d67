//! Filing committed events in the call index and rollups (`calltime`, `rollups`), in chunks of
//! their own transactions: after a chunk's worth of events waits, and whenever ingest is idle.
//!
//! An ingest commit then writes the pages it wrote before the index existed (each B-tree a
//! commit touches costs it pages to write and sync), and a chunk fills the index's pages
//! densely. Readers add the few events above the index's watermark from their bodies
//! (`Store::unfiled`), so no query misses one, and the watermark is committed with the entries
//! and rollups it covers, so they survive a kill -9 exactly.

use std::collections::VecDeque;

use crate::call::facts::Facts;
use crate::store::{self, KnownFacts, Store};

/// Events filed per index transaction; also how many may wait while ingest is busy. At the
/// mixed workload's size (about 125 bytes an entry) a chunk fills some 80 index pages; filing
/// one costs the writer about a millisecond between two batches (docs/performance.md).
pub const CALL_INDEX_CHUNK: usize = 2048;

/// Facts kept for events waiting to be filed; older ones are decoded from their bodies again
/// when filed (only after the index fell this far behind, e.g. while the disk was full).
const MAX_KNOWN: usize = 4 * CALL_INDEX_CHUNK;

/// What waits to be filed.
pub(super) struct CallIndexer {
    /// Facts the connections read from the bodies of committed events, oldest first.
    known: VecDeque<KnownFacts>,
    /// Events committed and not filed yet (as of the last chunk, plus those committed since).
    waiting: u64,
}

impl CallIndexer {
    /// Picks up where the store's watermark says filing stopped.
    pub(super) fn new(store: &Store) -> CallIndexer {
        let waiting = store.call_index_lag().unwrap_or_else(|e| {
            crate::ops::log::warn(format_args!(
                "cannot read the call index's watermark ({e}); filing from where it stands"
            ));
            1
        });
        CallIndexer {
            known: VecDeque::new(),
            waiting,
        }
    }

    /// An event the batch just committed, with the facts its connection read.
    pub(super) fn committed(&mut self, seq: u64, stored_at_ms: i64, facts: Option<Facts>) {
        if self.known.len() == MAX_KNOWN {
            self.known.pop_front();
        }
        self.known.push_back(KnownFacts {
            seq,
            stored_at_ms,
            facts,
        });
        self.waiting += 1;
    }

    /// A chunk's worth waits: file it before the next batch.
    pub(super) fn is_due(&self) -> bool {
        self.waiting >= CALL_INDEX_CHUNK as u64
    }

    /// Events committed and not filed yet.
    pub(super) fn waiting(&self) -> u64 {
        self.waiting
    }

    /// Anything waits.
    pub(super) fn has_work(&self) -> bool {
        self.waiting > 0
    }

    /// Files one chunk in a transaction of its own stamped `now_ms`.
    ///
    /// # Errors
    /// Store errors; nothing of the chunk is filed then, and the next step tries again.
    pub(super) fn step(&mut self, store: &Store, now_ms: i64) -> store::Result<()> {
        let mut txn = store.begin_write(now_ms)?;
        let left = txn.index_calls(&mut self.known, CALL_INDEX_CHUNK)?;
        txn.commit()?;
        self.waiting = left;
        Ok(())
    }
}
