//! Waking the requests of committed batches: [`Unsynced`] holds them until their commit is
//! on disk, [`Wakeup`] wakes them from inside the coroutine runtime.
//!
//! A coroutine unparked from a thread outside `may` (the writer) goes through the runtime's
//! global queue, and each such unpark writes the worker's eventfd: one system call per request.
//! Under load those writes took a tenth of the writer's time (docs/performance.md), so the
//! writer hands a whole batch to one coroutine (one unpark, so at most one eventfd write per batch),
//! and that coroutine unparks each request from a worker, which only pushes onto the worker's
//! local run queue; the other worker steals from it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use may::sync::mpsc;

use super::reply::{Outcome, Reply};
use crate::ops::metrics::Metrics;
use crate::store::Store;

/// The writer's handle on the waking coroutine.
pub struct Wakeup {
    tx: Option<mpsc::Sender<Vec<Arc<Reply>>>>,
}

impl Wakeup {
    /// Starts the waking coroutine. If it cannot be started, replies are woken directly from
    /// the calling thread (correct, one system call each).
    pub fn start() -> Wakeup {
        let (tx, rx) = mpsc::channel::<Vec<Arc<Reply>>>();
        let body = move || {
            while let Ok(batch) = rx.recv() {
                for reply in batch {
                    reply.wake();
                }
            }
        };
        // SAFETY: spawning is unsafe because a coroutine must not block its worker thread or
        // rely on thread-local state across yields; this one only waits on may's channel,
        // which parks the coroutine, and unparks blockers.
        let spawned = unsafe {
            may::coroutine::Builder::new()
                .name("didgate-wakeup".into())
                .spawn(body)
        };
        match spawned {
            Ok(_) => Wakeup { tx: Some(tx) },
            Err(e) => {
                crate::ops::log::warn(format_args!(
                    "cannot start the wake-up coroutine ({e}); waking requests directly"
                ));
                Wakeup { tx: None }
            }
        }
    }

    /// Wakes every reply of a batch whose outcomes are already set.
    pub fn wake(&self, replies: Vec<Arc<Reply>>) {
        let replies = match &self.tx {
            Some(tx) => match tx.send(replies) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(back)) => back,
            },
            None => replies,
        };
        for reply in replies {
            reply.wake();
        }
    }
}

/// Requests of committed batches whose answers wait for the commit's meta page to be on disk.
///
/// The store opens with `MDB_NOMETASYNC` in the fsync mode: a commit fdatasyncs its data pages,
/// then writes its meta page (what makes the commit the current state) without a second flush.
/// That page is on disk after the next fdatasync of the file: the next batch's commit, when
/// requests are queued (one flush per commit under load instead of LMDB's two), or an explicit
/// [`Store::sync`] when nothing is queued. Only then are the requests answered. In interval
/// mode nothing is deferred: answers never waited for a flush there.
#[derive(Default)]
pub(super) struct Unsynced {
    pub(super) replies: Vec<(Arc<Reply>, Outcome)>,
}

impl Unsynced {
    /// The last fdatasync covered these commits: answer their requests.
    pub(super) fn wake(&mut self, wakeup: &Wakeup) {
        if self.replies.is_empty() {
            return;
        }
        let mut woken = Vec::with_capacity(self.replies.len());
        for (reply, outcome) in self.replies.drain(..) {
            reply.settle(outcome);
            woken.push(reply);
        }
        wakeup.wake(woken);
    }

    /// Flushes the file, then answers; if the flush fails, whether the commits survive a power
    /// cut is unknown, so their requests get 503 (a retry is then recognised as a duplicate if
    /// the commit did survive).
    pub(super) fn sync_and_wake(&mut self, store: &Store, metrics: &Metrics, wakeup: &Wakeup) {
        if self.replies.is_empty() {
            return;
        }
        match store.sync() {
            Ok(()) => {
                metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.wake(wakeup);
            }
            Err(e) => {
                crate::ops::log::warn_limited(
                    "sync-failed",
                    format_args!(
                        "flushing {} committed events failed: {e}",
                        self.replies.len()
                    ),
                );
                for (reply, _) in self.replies.drain(..) {
                    reply.complete(Outcome::Failed);
                }
            }
        }
    }
}
