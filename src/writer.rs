//! The single writer: an OS thread that takes every queued event (up to a batch cap), writes
//! them in one LMDB write transaction, commits, and only then wakes each waiting request.
//!
//! Owns batching, the dedup decision, what a failed commit means for the requests in it, and
//! the hand-off to waiting coroutines. It does not own keys or records (`store.rs`) or HTTP
//! statuses (`response.rs`).
//!
//! Why an OS thread and not a coroutine: a write transaction can block on LMDB's mutex and the
//! commit blocks in fsync; either would stall a worker of the coroutine runtime and every
//! connection on it. Why one: LMDB allows one writer at a time anyway, and group commit turns
//! one fsync into many acknowledged events.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use may::sync::Blocker;

use crate::event::Event;
use crate::store::{self, Store};
use crate::timestamp;

/// How often an idle writer wakes to check whether it should stop.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Exit status when LMDB declares the environment unusable (`MDB_PANIC`): only a restart of
/// the process recovers, and systemd's `Restart=on-failure` does that. (EX_SOFTWARE.)
pub const EXIT_STORE_PANIC: i32 = 70;

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
/// worker thread (and parks a plain thread when used outside the runtime, as in tests).
pub struct Reply {
    outcome: OnceLock<Outcome>,
    blocker: Blocker,
}

impl Reply {
    /// A reply slot for the current coroutine (or thread).
    pub fn new() -> Arc<Reply> {
        Arc::new(Reply {
            outcome: OnceLock::new(),
            blocker: Blocker::new(false),
        })
    }

    /// Waits for the outcome until `deadline`; `None` when it did not come in time.
    pub fn wait(&self, deadline: Instant) -> Option<Outcome> {
        loop {
            if let Some(o) = self.outcome.get() {
                return Some(*o);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() || self.blocker.park(Some(left)).is_err() {
                return self.outcome.get().copied();
            }
        }
    }

    fn complete(&self, outcome: Outcome) {
        // Set before unpark: the waiter reads the outcome after waking.
        let _ = self.outcome.set(outcome);
        self.blocker.unpark();
    }
}

/// One event on its way to disk.
pub struct Job {
    pub event: Event,
    /// `Some(reason)` when the body did not decode and goes to quarantine.
    pub quarantine: Option<String>,
    pub reply: Arc<Reply>,
}

/// Tuning of the writer.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Most jobs in one write transaction.
    pub batch_max: usize,
    /// Jobs that may wait in the queue; past this, requests get 503 at once.
    pub queue_capacity: usize,
    /// How far back a byte-identical body counts as a duplicate.
    pub dedup_window: Duration,
}

/// Counters the writer keeps; read by the server for its shutdown summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful commits (each one fsync in the default durability mode).
    pub commits: AtomicU64,
    /// Jobs in successful commits.
    pub jobs: AtomicU64,
    pub duplicates: AtomicU64,
    pub quarantined: AtomicU64,
    /// Batches whose commit failed (their requests got 503).
    pub failed_batches: AtomicU64,
}

/// Why a job was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is at capacity.
    Full,
    /// The writer has stopped.
    Stopped,
}

/// The sending side, cloned into every connection.
#[derive(Clone)]
pub struct Queue {
    tx: Sender<Job>,
}

impl Queue {
    /// Queues a job without waiting.
    ///
    /// # Errors
    /// [`SubmitError`] when the queue is full or the writer is gone; the caller answers 503.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    /// Jobs waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

/// The running writer thread.
pub struct Writer {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer on an opened store.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(store: Store, settings: Settings) -> std::io::Result<(Writer, Queue)> {
        let (tx, rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("didgate-writer".into())
                .spawn(move || run(store, rx, settings, &stop, &stats))?
        };
        Ok((
            Writer {
                thread,
                stop,
                stats,
            },
            Queue { tx },
        ))
    }

    /// Commits everything already queued, then stops the thread and closes the store.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.thread.join().is_err() {
            crate::log::error(format_args!("writer thread panicked"));
        }
    }
}

fn run(store: Store, rx: Receiver<Job>, settings: Settings, stop: &AtomicBool, stats: &Stats) {
    let window_ms = i64::try_from(settings.dedup_window.as_millis()).unwrap_or(i64::MAX);
    let mut batch: Vec<Job> = Vec::with_capacity(settings.batch_max);
    let mut last_ms = i64::MIN;
    loop {
        match rx.recv_timeout(IDLE_TICK) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Stamps never go backwards, even if the wall clock does: readers binary-search by time.
        let now = timestamp::now_ms().max(last_ms);
        last_ms = now;
        match commit_batch(&store, &batch, now, now.saturating_sub(window_ms)) {
            Ok(outcomes) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    match outcome {
                        Outcome::Duplicate(_) => stats.duplicates.fetch_add(1, Ordering::Relaxed),
                        Outcome::Quarantined(_) => {
                            stats.quarantined.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => 0,
                    };
                    job.reply.complete(outcome);
                }
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                if e.is_fatal() {
                    crate::log::error(format_args!(
                        "storage is unusable ({e}); exiting so the service manager restarts didgate"
                    ));
                    std::process::exit(EXIT_STORE_PANIC);
                }
                crate::log::warn_limited(
                    "commit-failed",
                    format_args!("commit of {} events failed, answered 503: {e}", batch.len()),
                );
                for job in batch.drain(..) {
                    job.reply.complete(Outcome::Failed);
                }
            }
        }
    }
}

/// Writes one batch in one transaction. All or nothing: on any error the transaction is
/// dropped (aborted) and every job in the batch fails.
fn commit_batch(
    store: &Store,
    batch: &[Job],
    now_ms: i64,
    dedup_since_ms: i64,
) -> store::Result<Vec<Outcome>> {
    let mut txn = store.begin_write(now_ms)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = match &job.quarantine {
            Some(reason) => Outcome::Quarantined(txn.append_quarantine(reason, &job.event)?),
            None => match txn.find_duplicate(&job.event, dedup_since_ms)? {
                Some(seq) => {
                    txn.count_duplicate(&job.event.kind);
                    Outcome::Duplicate(seq)
                }
                None => Outcome::Stored(txn.append_event(&job.event)?),
            },
        };
        outcomes.push(outcome);
    }
    txn.commit()?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::BodyFormat;

    fn job(body: &str, quarantine: Option<&str>) -> Job {
        Job {
            event: Event {
                kind: "cdr".into(),
                format: BodyFormat::Json,
                peer: None,
                content_type: vec![],
                body: body.as_bytes().to_vec(),
                callid: None,
            },
            quarantine: quarantine.map(str::to_string),
            reply: Reply::new(),
        }
    }

    fn settings(queue: usize) -> Settings {
        Settings {
            batch_max: 64,
            queue_capacity: queue,
            dedup_window: Duration::from_secs(3600),
        }
    }

    #[test]
    fn stores_dedups_and_quarantines_then_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let (writer, queue) = Writer::spawn(store, settings(16)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let cases = [
            (job("{\"a\":1}", None), Outcome::Stored(1)),
            (job("{\"a\":1}", None), Outcome::Duplicate(1)),
            (job("{\"a\":2}", None), Outcome::Stored(2)),
            (job("{", Some("invalid JSON")), Outcome::Quarantined(1)),
        ];
        for (j, want) in cases {
            let reply = j.reply.clone();
            queue.submit(j).unwrap();
            assert_eq!(reply.wait(deadline), Some(want));
        }
        writer.stop();
        let reader = Store::open_reader(dir.path()).unwrap();
        assert_eq!(reader.last_seq().unwrap(), Some(2));
        let counts = reader.counts().unwrap();
        assert_eq!(counts.duplicates.get("cdr"), Some(&1));
        assert_eq!(counts.quarantined, 1);
    }

    #[test]
    fn stop_commits_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let (writer, queue) = Writer::spawn(store, settings(1000)).unwrap();
        let replies: Vec<_> = (0..500)
            .map(|i| {
                let j = job(&format!("{{\"i\":{i}}}"), None);
                let r = j.reply.clone();
                queue.submit(j).unwrap();
                r
            })
            .collect();
        writer.stop();
        let deadline = Instant::now();
        for r in replies {
            assert!(matches!(r.wait(deadline), Some(Outcome::Stored(_))));
        }
        assert_eq!(
            Store::open_reader(dir.path()).unwrap().last_seq().unwrap(),
            Some(500)
        );
    }

    #[test]
    fn full_queue_is_refused_at_once() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let queue = Queue { tx };
        queue.submit(job("{}", None)).unwrap();
        assert_eq!(queue.submit(job("{}", None)).err(), Some(SubmitError::Full));
        assert_eq!(queue.depth(), 1);
    }

    #[test]
    fn wait_times_out_without_an_outcome() {
        let r = Reply::new();
        assert_eq!(r.wait(Instant::now() + Duration::from_millis(20)), None);
        r.complete(Outcome::Failed);
        assert_eq!(r.wait(Instant::now()), Some(Outcome::Failed));
    }
}
