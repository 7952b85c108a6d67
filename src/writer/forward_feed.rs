//! The writer's side of forwarding: the dispatchers' reports are committed with the next
//! batch (or, when ingest is idle, within a tick, in the one transaction the writer commits
//! for the background jobs), each acknowledged once committed; the last committed sequence
//! number is published for the dispatchers. (Retention reads the configured destinations
//! from the same `Link`, given to housekeeping when the writer starts.)

use std::sync::atomic::Ordering::Relaxed;

use crate::forward::{Link, Report};
use crate::store::{self, WriteTxn};

/// Most reports committed in one transaction.
const MAX_REPORTS_PER_COMMIT: usize = 256;

/// Forwarding as the writer thread drives it.
pub(super) struct Feed {
    link: Link,
    reports: Vec<Report>,
}

impl Feed {
    pub fn new(link: Link) -> Feed {
        Feed {
            link,
            reports: Vec::new(),
        }
    }

    /// Takes the reports sent since the last commit.
    pub fn collect(&mut self) {
        let room = MAX_REPORTS_PER_COMMIT.saturating_sub(self.reports.len());
        self.reports.extend(self.link.reports.try_iter().take(room));
    }

    pub fn has_reports(&self) -> bool {
        !self.reports.is_empty()
    }

    /// Writes the collected reports into `txn`.
    ///
    /// # Errors
    /// Store errors: the transaction must be dropped.
    pub fn write(&self, txn: &mut WriteTxn<'_>, now_ms: i64) -> store::Result<()> {
        for r in &self.reports {
            txn.apply_progress(&r.progress, now_ms)?;
        }
        Ok(())
    }

    /// The transaction holding the reports ended: committed ones are acknowledged; after a
    /// failed commit they are kept for the next.
    pub fn settled(&mut self, committed: bool) {
        if committed {
            for r in self.reports.drain(..) {
                let _ = r.ack.send(r.generation);
            }
        }
    }

    /// Publishes the highest committed sequence number.
    pub fn published(&self, seq: u64) {
        self.link.committed.fetch_max(seq, Relaxed);
    }

    /// Counts a commit of `events` into the moving average the dispatchers read as ingest's
    /// pressure (an eighth of each new commit); `idle` resets it.
    pub fn pressure(&self, events: usize, idle: bool) {
        let p = &self.link.pressure;
        if idle {
            p.store(0, Relaxed);
        } else {
            let old = p.load(Relaxed);
            p.store((old * 7 + events as u64) / 8, Relaxed);
        }
    }
}
