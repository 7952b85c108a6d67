//! The writer's side of the recordings archive: new recordings go on the store's work list in
//! the commit that stores them, finished downloads' states are committed with the next batch
//! (or within an idle tick), and due recordings are handed to the archiver threads, a bounded
//! window at a time. The writer is the only thread that writes the store, so none of this
//! costs ingest a transaction or an fsync of its own under load.

use std::time::{Duration, Instant};

use crate::archive::{ArchiveUpdate, Link};
use crate::ops::metrics::Metrics;
use crate::store::{self, Store, WriteTxn};

/// Most download outcomes committed in one transaction.
const MAX_UPDATES_PER_COMMIT: usize = 256;
/// Work-list entries looked at per hand-out (a short read transaction).
const FEED_BUDGET: usize = 1024;
/// Longest wait before the work list is looked at again when nothing was due.
const FEED_IDLE: Duration = Duration::from_secs(1);
/// How often the backlog gauges are refreshed (a count and one lookup).
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The archive as the writer thread drives it.
pub(super) struct Feed {
    link: Link,
    updates: Vec<ArchiveUpdate>,
    /// Where the next look at the work list continues.
    from: u64,
    feed_at: Instant,
    backlog_at: Instant,
}

impl Feed {
    pub fn new(link: Link) -> Feed {
        Feed {
            link,
            updates: Vec::new(),
            from: 0,
            feed_at: Instant::now(),
            backlog_at: Instant::now(),
        }
    }

    /// Takes the outcomes the archiver threads sent since the last commit.
    pub fn collect(&mut self) {
        let room = MAX_UPDATES_PER_COMMIT.saturating_sub(self.updates.len());
        self.updates.extend(self.link.updates.try_iter().take(room));
    }

    pub fn has_updates(&self) -> bool {
        !self.updates.is_empty()
    }

    /// Writes the collected outcomes into `txn` (an event deleted meanwhile is skipped).
    ///
    /// # Errors
    /// Store errors: the transaction must be dropped.
    pub fn write(&self, txn: &mut WriteTxn<'_>) -> store::Result<()> {
        for u in &self.updates {
            if txn.has_event(u.seq)? {
                txn.put_archive(u.seq, &u.record)?;
            }
        }
        Ok(())
    }

    /// The transaction holding the outcomes ended: tell their threads, and look at the work
    /// list again soon (new recordings, or retries scheduled).
    pub fn settled(&mut self, committed: bool) {
        if self.updates.is_empty() {
            return;
        }
        for u in self.updates.drain(..) {
            self.link.busy.remove(&u.seq);
            let _ = u.done.send(committed);
        }
        self.feed_at = Instant::now();
    }

    /// A recording was stored: hand it out without waiting for the next look.
    pub fn wake(&mut self) {
        self.feed_at = Instant::now();
    }

    /// Hands due recordings to the archiver threads while their window has room.
    pub fn feed(&mut self, store: &Store, now_ms: i64, metrics: &Metrics) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        if now >= self.backlog_at {
            self.backlog_at = now + BACKLOG_EVERY;
            if let Ok(count) = store.archive_backlog() {
                metrics.archive_pending.store(count, Relaxed);
            }
            if let Ok(oldest) = store.archive_oldest() {
                let age = oldest.map_or(0, |t| u64::try_from((now_ms - t) / 1000).unwrap_or(0));
                metrics.archive_oldest_pending_seconds.store(age, Relaxed);
            }
        }
        let capacity = self.link.tasks.capacity().unwrap_or(1);
        let room = capacity.saturating_sub(self.link.tasks.len());
        if now < self.feed_at || room == 0 {
            return;
        }
        let busy = &self.link.busy;
        let scan =
            match store.archive_due(self.from, now_ms, room, FEED_BUDGET, |s| busy.contains(&s)) {
                Ok(scan) => scan,
                Err(e) => {
                    crate::ops::log::warn_limited(
                        "archive-feed",
                        format_args!("cannot read the recordings' work list: {e}"),
                    );
                    self.feed_at = now + FEED_IDLE;
                    return;
                }
            };
        let found = !scan.due.is_empty();
        for due in scan.due {
            let seq = due.seq;
            if self.link.tasks.try_send(due).is_err() {
                break;
            }
            self.link.busy.insert(seq);
        }
        self.from = scan.next.unwrap_or(0);
        self.feed_at = if found || scan.next.is_some() {
            now
        } else {
            let until_due = scan.next_due_ms.map_or(FEED_IDLE, |t| {
                Duration::from_millis(u64::try_from(t - now_ms).unwrap_or(0))
            });
            now + until_due.min(FEED_IDLE)
        };
    }
}
