//! [`Reply`]: where the writer leaves one job's [`Outcome`] and wakes the request waiting for
//! it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use may::sync::Blocker;

/// What happened to one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed as event `seq`.
    Stored(u64),
    /// Identical to event `seq`, already committed; not stored again.
    Duplicate(u64),
    /// Committed to quarantine as `seq`.
    Quarantined(u64),
    /// The batch's commit failed; nothing of it is stored.
    Failed,
}

/// Where the writer leaves a job's outcome and wakes its waiter.
///
/// The waiter parks with `may`'s [`Blocker`], which parks a coroutine without blocking its
/// worker thread (and parks a plain thread when used outside the runtime, as in tests). It
/// parks without a timeout; the commit deadline is kept by [`crate::ingest::deadline::Deadlines`].
pub struct Reply {
    outcome: OnceLock<Outcome>,
    /// Set by the deadline sweeper: the waiter gives up (unless the outcome came first).
    timed_out: AtomicBool,
    blocker: Blocker,
}

impl Reply {
    /// A reply slot for the current coroutine (or thread).
    pub fn new() -> Arc<Reply> {
        Arc::new(Reply {
            outcome: OnceLock::new(),
            timed_out: AtomicBool::new(false),
            blocker: Blocker::new(false),
        })
    }

    /// Waits for the outcome; `None` when the reply was timed out first (see
    /// [`crate::ingest::deadline`]) or the waiting coroutine was cancelled.
    pub fn wait(&self) -> Option<Outcome> {
        loop {
            if let Some(o) = self.outcome.get() {
                return Some(*o);
            }
            if self.timed_out.load(Ordering::Acquire) || self.blocker.park(None).is_err() {
                return self.outcome.get().copied();
            }
        }
    }

    /// Whether the outcome is set.
    pub fn is_settled(&self) -> bool {
        self.outcome.get().is_some()
    }

    /// Makes the waiter give up.
    pub(crate) fn time_out(&self) {
        self.timed_out.store(true, Ordering::Release);
        self.wake();
    }

    pub(crate) fn complete(&self, outcome: Outcome) {
        self.settle(outcome);
        self.wake();
    }

    /// Sets the outcome without waking the waiter; [`Reply::wake`] must follow.
    pub(super) fn settle(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
    }

    /// Wakes the waiter (after the outcome is set: the waiter reads it on waking).
    pub(crate) fn wake(&self) {
        self.blocker.unpark();
    }
}
