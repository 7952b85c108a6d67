//! The single writer: an OS thread that takes every queued event (up to a batch cap), writes
//! them in one LMDB write transaction, commits, and only then wakes each waiting request.
//!
//! In the order a job meets them: [`queue`] (bounded, never blocking the sender), the batch
//! loop here with the dedup decision ([`dedup`]), the commit, then [`reply`] and [`wakeup`]
//! (answers wait until the commit is on disk, and are woken from inside the coroutine
//! runtime); between batches, [`housekeeping`] and [`retention`]. It does not own keys or
//! records (the store) or HTTP statuses (ingest).
//!
//! Why an OS thread and not a coroutine: a write transaction can block on LMDB's mutex and the
//! commit blocks in fsync; either would stall a worker of the coroutine runtime and every
//! connection on it. Why one: LMDB allows one writer at a time anyway, and group commit turns
//! one fsync into many acknowledged events.

mod archive_feed;
mod call_index;
pub mod dedup;
mod forward_feed;
mod housekeeping;
mod queue;
mod reply;
pub mod retention;
mod wakeup;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use archive_feed::Feed;
use call_index::CallIndexer;
use dedup::Recent;
use forward_feed::Feed as ForwardFeed;
use housekeeping::Housekeeping;
use retention::Policy;
use wakeup::{Unsynced, Wakeup};

pub use call_index::CALL_INDEX_CHUNK;
pub use housekeeping::HEADROOM_STEP;
pub use queue::{Job, Queue, SubmitError};
pub use reply::{Outcome, Reply};

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::store::{self, Store};
use crate::timestamp;

/// How often an idle writer wakes: to stop when asked, sync in interval mode, keep house, and
/// show it is alive (the systemd watchdog follows this heartbeat).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Jobs that may wait for the writer. A burst beyond this gets fast 503s (retried by the sender)
/// instead of unbounded memory. 4096 events is ~100 ms of peak commit throughput.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Most events in one write transaction (one fsync).
pub const DEFAULT_BATCH_MAX: usize = 512;
/// Byte-identical retries within this window are recognised as duplicates. The sender retries
/// for ~16 minutes; 7 days also catches a replay from its dead-letter store.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The dedup window may not be shorter than the sender's retry window (about 16 minutes).
pub const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(16 * 60);
/// Events the in-memory dedup table remembers at least (up to twice as many): two tables of
/// 2 MiB. At the default, retries are recognised for 16 minutes up to 204 events/s sustained
/// (17 million events a day); `didgate_dedup_reach_seconds` shows the reach at the live rate.
pub const DEFAULT_DEDUP_MEMORY_EVENTS: usize = 196_608;
/// Fewest events the dedup table may be sized for.
pub const MIN_DEDUP_MEMORY_EVENTS: usize = 1024;
/// Most events the dedup table may be sized for on a host with `pointer_bits`: two tables of
/// 512 MiB on 64-bit hosts, of 64 MiB on 32-bit ones (armv7), whose whole process lives in a
/// 3 GiB address space beside the map.
pub const fn max_dedup_memory_events(pointer_bits: u32) -> usize {
    if pointer_bits >= 64 {
        48 << 20
    } else {
        6 << 20
    }
}

/// The largest LMDB map allowed on a host with `pointer_bits`: 16 TiB on 64-bit hosts; 1 GiB
/// on 32-bit ones, where the map, the dedup table, the heap and the coroutine stacks share a
/// 3 GiB address space (a 3-4 GiB map cannot be mapped at all there).
pub const fn max_map_limit(pointer_bits: u32) -> u64 {
    if pointer_bits >= 64 { 1 << 44 } else { 1 << 30 }
}
/// Below this much free space on the data filesystem, new events get 503 (the sender retries)
/// rather than letting LMDB meet ENOSPC; room is left for the map to grow and for the OS.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 << 20;
/// Zero-filled space the writer keeps in the data file past the data, filled while idle, so a
/// burst's commits overwrite existing blocks instead of growing the file (see
/// `Store::zero_fill`). 64 MiB holds about 200,000 events of the mixed workload.
pub const DEFAULT_FILE_HEADROOM_BYTES: u64 = 64 << 20;
/// In `durability = "interval"` mode, how often committed data is flushed to disk.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Initial LMDB map size. The map grows by doubling before it fills (between write
/// transactions, as LMDB requires), so this only sets where growth starts.
pub const DEFAULT_MAP_SIZE_BYTES: u64 = 64 << 20;
/// Most the LMDB map (and so the data file) may grow to. 64-bit hosts: 16 GiB. 32-bit hosts
/// (armv7 Raspberry Pi OS): 768 MiB, as the whole map must fit the process's 3 GiB address
/// space beside everything else.
pub const DEFAULT_MAX_MAP_SIZE_BYTES: u64 = if usize::BITS >= 64 {
    16 << 30
} else {
    768 << 20
};

/// Before the writer returns a fatal error, the requests of the failed batch and of the queue
/// are answered 503; `serve` then gives them this long to be written before it exits (a closed
/// connection would also make the sender retry, but a 503 says why).
pub const FATAL_EXIT_GRACE: Duration = Duration::from_millis(300);

/// When an event counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk before its requests are answered (the default).
    Fsync,
    /// Commits are answered once written to the file (they survive a crash of the process);
    /// a sync to disk runs every interval, so a power cut may lose that much.
    Interval(Duration),
}

impl Durability {
    /// How the store must be opened for this mode.
    pub fn store_sync(self) -> store::Sync {
        match self {
            Durability::Fsync => store::Sync::EveryCommit,
            Durability::Interval(_) => store::Sync::Deferred,
        }
    }
}

/// Tuning of the writer; the default is production's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Most jobs in one write transaction.
    pub batch_max: usize,
    /// Jobs that may wait in the queue; past this, requests get 503 at once.
    pub queue_capacity: usize,
    /// How far back a byte-identical body counts as a duplicate.
    pub dedup_window: Duration,
    /// Events the in-memory dedup table remembers at least (it holds up to twice as many).
    pub dedup_memory_events: usize,
    /// When commits reach the disk; the store must be opened with
    /// [`Durability::store_sync`] of the same mode.
    pub durability: Durability,
    /// Below this many free bytes on the data filesystem, ingest answers 503. Changed live
    /// with [`Writer::set_min_free_disk_bytes`].
    pub min_free_disk_bytes: u64,
    /// The map size the store is opened with; it grows up to `max_map_bytes`.
    pub map_bytes: u64,
    /// The most the LMDB map may grow to.
    pub max_map_bytes: u64,
    /// Zero-filled bytes to keep in the data file past the data (`Store::zero_fill`), filled
    /// while idle; 0: none.
    pub file_headroom_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_max: DEFAULT_BATCH_MAX,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            dedup_memory_events: DEFAULT_DEDUP_MEMORY_EVENTS,
            durability: Durability::Fsync,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            map_bytes: DEFAULT_MAP_SIZE_BYTES,
            max_map_bytes: DEFAULT_MAX_MAP_SIZE_BYTES,
            file_headroom_bytes: DEFAULT_FILE_HEADROOM_BYTES,
        }
    }
}

impl Settings {
    /// `Some(interval)` in interval mode: commits do not fsync, a sync runs every interval.
    pub fn sync_interval(&self) -> Option<Duration> {
        match self.durability {
            Durability::Fsync => None,
            Durability::Interval(d) => Some(d),
        }
    }
}

/// Why the writer stopped on its own: only a restart of the process recovers.
#[derive(Debug)]
pub enum Fatal {
    /// The storage became unusable (LMDB's `MDB_PANIC`).
    Store(store::Error),
    /// The writer thread panicked (a bug): nothing more can be committed.
    Panic,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::Store(e) => write!(f, "storage is unusable ({e})"),
            Fatal::Panic => f.write_str("the writer thread panicked"),
        }
    }
}

impl std::error::Error for Fatal {}

/// The running writer thread.
pub struct Writer {
    thread: JoinHandle<Result<(), Fatal>>,
    stop: Arc<AtomicBool>,
    /// Disconnected when the thread ends (see [`Writer::ended`]).
    ended: Receiver<()>,
    /// Retention, replaceable on reload.
    pub retention: Arc<Mutex<Policy>>,
    /// The free-disk floor in force, replaceable on reload.
    min_free_disk_bytes: Arc<AtomicU64>,
}

/// The background jobs whose state the writer commits.
#[derive(Default)]
pub struct Background {
    /// The recordings archive, when on.
    pub archive: Option<crate::archive::Link>,
    /// Forwarding (always present in `serve`, so a reload can add destinations).
    pub forward: Option<crate::forward::Link>,
}

/// What the writer thread owns and shares.
pub(crate) struct Ctx {
    settings: Settings,
    min_free_disk_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    retention: Arc<Mutex<Policy>>,
}

impl Writer {
    /// Starts the writer on an opened store, counting into `metrics`, reporting into `health`,
    /// pruning under `retention`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(
        store: Arc<Store>,
        settings: Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        retention: Policy,
        background: Background,
    ) -> std::io::Result<(Writer, Queue)> {
        let (queue, rx) = Queue::bounded(settings.queue_capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let retention = Arc::new(Mutex::new(retention));
        let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
        let min_free_disk_bytes = Arc::new(AtomicU64::new(settings.min_free_disk_bytes));
        let ctx = Ctx {
            min_free_disk_bytes: min_free_disk_bytes.clone(),
            settings,
            stop: stop.clone(),
            health,
            metrics,
            retention: retention.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("didgate-writer".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends: `ended` then disconnects.
                let _ended = ended_tx;
                Batcher::new(store, ctx, background).run(&rx)
            })?;
        let writer = Writer {
            thread,
            stop,
            ended,
            retention,
            min_free_disk_bytes,
        };
        Ok((writer, queue))
    }

    /// Changes the free-disk floor; the writer applies it at its next disk check (before the
    /// next batch, or within a second when idle).
    pub fn set_min_free_disk_bytes(&self, bytes: u64) {
        self.min_free_disk_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Disconnects when the writer thread has ended (stopped, or a [`Fatal`] error): wait on it
    /// beside other events with `crossbeam_channel::select!`.
    pub fn ended(&self) -> &Receiver<()> {
        &self.ended
    }

    /// Commits everything already queued, then stops the thread and closes the store.
    ///
    /// # Errors
    /// The thread had ended with a [`Fatal`] error.
    pub fn stop(self) -> Result<(), Fatal> {
        self.stop.store(true, Ordering::SeqCst);
        // A panicked writer commits nothing more: the process must end non-zero so the
        // service manager restarts it, as for an unusable store.
        self.thread.join().unwrap_or(Err(Fatal::Panic))
    }
}

impl Ctx {
    /// The free-disk floor in force.
    fn min_free_disk_bytes(&self) -> u64 {
        self.min_free_disk_bytes.load(Ordering::Relaxed)
    }
}

/// The writer thread's state across batches.
struct Batcher {
    store: Arc<Store>,
    ctx: Ctx,
    house: Housekeeping,
    recent: Recent,
    wakeup: Wakeup,
    /// Committed, but the commit's meta page is not known to be on disk yet.
    unsynced: Unsynced,
    batch: Vec<Job>,
    /// The last stamp given: stamps never go backwards, even if the wall clock does, since
    /// readers binary-search by time.
    last_ms: i64,
    /// The recordings archive, when it is on.
    archive: Option<Feed>,
    /// Forwarding, when on.
    forward: Option<ForwardFeed>,
    /// Committed events waiting to be filed in the call index.
    calls: CallIndexer,
}

impl Batcher {
    fn new(store: Arc<Store>, ctx: Ctx, background: Background) -> Batcher {
        let mut house = Housekeeping::new(&store, &ctx);
        if let Some(link) = &background.forward {
            // From the first slice on: retention may run after the very first batch.
            house.protect(link.destinations.clone());
        }
        let recent = load_recent(&store, &ctx);
        let calls = CallIndexer::new(&store);
        ctx.metrics
            .calls_unfiled
            .store(calls.waiting(), Ordering::Relaxed);
        Batcher {
            calls,
            batch: Vec::with_capacity(ctx.settings.batch_max),
            house,
            recent,
            wakeup: Wakeup::start(),
            unsynced: Unsynced::default(),
            last_ms: i64::MIN,
            store,
            ctx,
            archive: background.archive.map(Feed::new),
            forward: background.forward.map(ForwardFeed::new),
        }
    }

    fn run(mut self, rx: &Receiver<Job>) -> Result<(), Fatal> {
        loop {
            self.ctx.health.beat();
            if let Some(feed) = &mut self.archive {
                feed.collect();
                let now = timestamp::now_ms().max(self.last_ms);
                feed.feed(&self.store, now, &self.ctx.metrics);
            }
            if let Some(feed) = &mut self.forward {
                feed.collect();
            }
            match rx.recv_timeout(IDLE_TICK) {
                Ok(job) => self.batch.push(job),
                Err(RecvTimeoutError::Timeout) if self.ctx.stop.load(Ordering::SeqCst) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.idle(rx);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while self.batch.len() < self.ctx.settings.batch_max {
                match rx.try_recv() {
                    Ok(job) => self.batch.push(job),
                    Err(_) => break,
                }
            }
            if let Err(fatal) = self.write_batch(rx) {
                self.fail_batch();
                for job in rx.try_iter() {
                    job.reply.complete(Outcome::Failed);
                }
                return Err(fatal);
            }
            if self.calls.is_due() {
                self.file_calls();
            }
            self.ctx
                .metrics
                .calls_unfiled
                .store(self.calls.waiting(), Ordering::Relaxed);
            self.house.run(&self.store, &self.ctx, rx.is_empty());
            self.house
                .dedup_reach(&self.store, &self.ctx, &self.recent, self.last_ms);
        }
        self.unsynced
            .sync_and_wake(&self.store, &self.ctx.metrics, &self.wakeup);
        // The dispatchers' last reports (they stop before the writer).
        if let Some(feed) = &mut self.forward {
            feed.collect();
        }
        self.commit_background();
        self.house.sync(&self.store, &self.ctx);
        Ok(())
    }

    /// A whole tick without work: keep house. Not right after a commit, when the requests
    /// just answered are about to send their next ones.
    fn idle(&mut self, rx: &Receiver<Job>) {
        if let Some(feed) = &mut self.archive {
            feed.collect();
        }
        if let Some(feed) = &mut self.forward {
            feed.pressure(0, true);
            feed.collect();
        }
        if !self.ctx.health.is_disk_low() {
            self.commit_background();
            while self.calls.has_work() && rx.is_empty() {
                if !self.file_calls() {
                    break;
                }
            }
            self.ctx
                .metrics
                .calls_unfiled
                .store(self.calls.waiting(), Ordering::Relaxed);
        }
        self.house.run(&self.store, &self.ctx, rx.is_empty());
        if self
            .house
            .fill_headroom(&self.store, &self.ctx, || rx.is_empty())
        {
            // The fill's fdatasync also flushed the last commit's meta page.
            self.unsynced.wake(&self.wakeup);
        }
    }

    /// Files a chunk of committed events in the call index; false when that failed (logged,
    /// and tried again later: readers decode what is not filed).
    fn file_calls(&mut self) -> bool {
        if self.ctx.health.is_disk_low() {
            return false;
        }
        let now = timestamp::now_ms().max(self.last_ms);
        self.last_ms = now;
        let result = self.calls.step(&self.store, now);
        self.house.mapped = true;
        match result {
            Ok(()) => {
                self.house.dirty = true;
                // This commit's fdatasync also flushed the previous commit's meta page.
                self.unsynced.wake(&self.wakeup);
                true
            }
            Err(e) => {
                crate::ops::log::warn_limited(
                    "call-index",
                    format_args!("cannot file events in the call index: {e}"),
                );
                false
            }
        }
    }

    /// Commits what the background jobs sent (archive outcomes, forwarding reports) in one
    /// transaction of its own, when there is any: ingest is idle, or stopping.
    fn commit_background(&mut self) {
        let archive = self.archive.as_ref().filter(|f| f.has_updates());
        let forward = self.forward.as_ref().filter(|f| f.has_reports());
        if archive.is_none() && forward.is_none() {
            return;
        }
        let now = timestamp::now_ms().max(self.last_ms);
        self.last_ms = now;
        let result = self.store.begin_write(now).and_then(|mut txn| {
            if let Some(feed) = archive {
                feed.write(&mut txn)?;
            }
            if let Some(feed) = forward {
                feed.write(&mut txn, now)?;
            }
            txn.commit()
        });
        if let Err(e) = &result {
            crate::ops::log::warn_limited(
                "background-commit",
                format_args!("cannot commit the archive's and forwarding's state: {e}"),
            );
        }
        if let Some(feed) = &mut self.archive {
            feed.settled(result.is_ok());
        }
        if let Some(feed) = &mut self.forward {
            feed.settled(result.is_ok());
        }
        self.house.mapped = true;
        self.house.dirty = true;
    }

    /// Commits the batch and queues its answers; a failed commit answers 503.
    ///
    /// # Errors
    /// [`Fatal`] when the storage became unusable; the batch is then not answered yet.
    fn write_batch(&mut self, rx: &Receiver<Job>) -> Result<(), Fatal> {
        let now = timestamp::now_ms().max(self.last_ms);
        self.last_ms = now;
        let incoming: usize = self.batch.iter().map(|j| j.event.body.len()).sum();
        // Free space is checked before every batch (one statvfs): a burst can fill a small
        // disk within one housekeeping interval.
        self.house.check_disk(&self.store, &self.ctx);
        if self.ctx.health.is_disk_low() {
            self.unsynced
                .sync_and_wake(&self.store, &self.ctx.metrics, &self.wakeup);
            self.fail_batch();
            return Ok(());
        }
        self.house.ensure_room(&self.store, &self.ctx, incoming);
        if self.house.fill_headroom(&self.store, &self.ctx, || false) {
            // The step's fdatasync also flushed the last commit's meta page.
            self.unsynced.wake(&self.wakeup);
        }
        let window_ms =
            i64::try_from(self.ctx.settings.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let since = now.saturating_sub(window_ms);
        let started = Instant::now();
        let jobs = (self.archive.as_ref(), self.forward.as_ref());
        let mut result = commit_batch(
            &self.store,
            &mut self.recent,
            &self.batch,
            (now, since),
            jobs,
        );
        if result.as_ref().is_err_and(store::Error::is_map_full)
            && self.house.grow(&self.store, &self.ctx)
        {
            result = commit_batch(
                &self.store,
                &mut self.recent,
                &self.batch,
                (now, since),
                jobs,
            );
        }
        if let Some(feed) = &mut self.archive {
            feed.settled(result.is_ok());
        }
        if let Some(feed) = &mut self.forward {
            feed.settled(result.is_ok());
        }
        // Its reads and writes went through the map, whatever the outcome.
        self.house.mapped = true;
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.unsynced
                    .sync_and_wake(&self.store, &self.ctx.metrics, &self.wakeup);
                self.ctx
                    .metrics
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                self.ctx
                    .health
                    .commit_failing
                    .store(true, Ordering::Relaxed);
                if e.is_fatal() || self.store.is_unusable() {
                    return Err(Fatal::Store(e));
                }
                crate::ops::log::warn_limited(
                    "commit-failed",
                    format_args!(
                        "commit of {} events failed, answered 503: {e}",
                        self.batch.len()
                    ),
                );
                self.fail_batch();
                return Ok(());
            }
        };
        // This commit's fdatasync also flushed the previous commit's meta page.
        self.unsynced.wake(&self.wakeup);
        self.house.dirty = true;
        self.ctx
            .health
            .commit_failing
            .store(false, Ordering::Relaxed);
        let fsynced = self.ctx.settings.sync_interval().is_none();
        self.ctx
            .metrics
            .committed(self.batch.len(), started.elapsed(), fsynced, now);
        if let Some(feed) = &self.forward {
            feed.pressure(self.batch.len(), false);
            if let Some(last) = outcomes.iter().rev().find_map(|o| match o {
                Outcome::Stored(seq) => Some(*seq),
                _ => None,
            }) {
                feed.published(last);
            }
        }
        for (mut job, outcome) in self.batch.drain(..).zip(outcomes) {
            if let Outcome::Stored(seq) = outcome {
                self.calls.committed(seq, now, job.event.call.take());
                self.ctx.metrics.stored(&job.event.kind);
                if job.event.kind == crate::event::Hook::Recording.name()
                    && let Some(feed) = &mut self.archive
                {
                    feed.wake();
                }
            }
            self.unsynced.replies.push((job.reply, outcome));
        }
        if !fsynced {
            // Interval mode: answers never wait for a flush.
            self.unsynced.wake(&self.wakeup);
        } else if rx.is_empty() {
            // Nothing queued to carry the next fdatasync: flush the meta page now.
            self.unsynced
                .sync_and_wake(&self.store, &self.ctx.metrics, &self.wakeup);
        }
        Ok(())
    }

    /// Answers every job of the batch 503: nothing of it is stored.
    fn fail_batch(&mut self) {
        for job in self.batch.drain(..) {
            job.reply.complete(Outcome::Failed);
        }
    }
}

/// The dedup table, filled with the newest events' digests so retries of events stored before
/// a restart are still recognised.
fn load_recent(store: &Store, ctx: &Ctx) -> Recent {
    let per_generation = ctx.settings.dedup_memory_events;
    let mut recent = Recent::new(per_generation);
    // At most one generation is loaded, so the order of inserts does not matter.
    let loaded = store.recent_digests(per_generation, |seq, hash| recent.insert(hash, seq));
    if let Err(e) = loaded {
        crate::ops::log::warn(format_args!(
            "cannot read recent digests ({e}); retries of events stored before this start \
             will not be recognised"
        ));
    }
    // The walk mapped the digests' pages and, through the kernel's fault-around, the cached
    // pages beside them (tens of MiB on a large store). Released now rather than at the first
    // housekeeping pass, so the resident size never shows it.
    let _ = store.release_mapped_pages();
    ctx.metrics
        .dedup_memory_bytes
        .store(recent.memory_bytes() as u64, Ordering::Relaxed);
    recent
}

/// Writes one batch in one transaction. All or nothing: on any error the transaction is
/// dropped (aborted) and every job in the batch fails.
///
/// A body is a duplicate when the dedup table proposes an earlier event (or one earlier in this
/// batch) that has the same kind and the byte-identical body and was stored inside the window.
/// Entries of a batch that then fails stay in the table; they point at sequence numbers that
/// the next batch reuses for other bodies, so the byte comparison turns them down.
fn commit_batch(
    store: &Store,
    recent: &mut Recent,
    batch: &[Job],
    (now_ms, dedup_since_ms): (i64, i64),
    (archive, forward): (Option<&Feed>, Option<&ForwardFeed>),
) -> store::Result<Vec<Outcome>> {
    let mut txn = store.begin_write(now_ms)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = match &job.quarantine {
            Some(reason) => Outcome::Quarantined(txn.append_quarantine(reason, &job.event)?),
            None => {
                let hash = store::body_hash(&job.event.body);
                let mut earlier = None;
                for seq in recent.candidates(hash) {
                    if txn.is_same_event(seq, &job.event, dedup_since_ms)? {
                        earlier = Some(seq);
                        break;
                    }
                }
                match earlier {
                    Some(seq) => {
                        txn.count_duplicate(&job.event.kind);
                        Outcome::Duplicate(seq)
                    }
                    None => {
                        let seq = txn.append_event(&job.event, hash)?;
                        recent.insert(hash, seq);
                        if archive.is_some()
                            && job.event.kind == crate::event::Hook::Recording.name()
                        {
                            // On the archive's work list, due at once.
                            txn.queue_archive(seq, now_ms)?;
                        }
                        Outcome::Stored(seq)
                    }
                }
            }
        };
        outcomes.push(outcome);
    }
    if let Some(feed) = archive {
        feed.write(&mut txn)?;
    }
    if let Some(feed) = forward {
        feed.write(&mut txn, now_ms)?;
    }
    txn.commit()?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests;
