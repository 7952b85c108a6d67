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
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use may::sync::Blocker;

pub mod dedup;
pub mod retention;
mod wakeup;

use dedup::Recent;
use wakeup::Wakeup;

use crate::event::Event;
use crate::ops::metrics::Metrics;
use crate::store::{self, Store};
use crate::timestamp;
use retention::{Cutoffs, Policy};

/// How often an idle writer wakes: to stop when asked, sync in interval mode, keep house, and
/// show it is alive (the systemd watchdog follows this heartbeat).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// How often free disk space and map usage are checked.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// How often this process's mapping of the data file is released (`Store::release_mapped_pages`)
/// while the writer works: under load the pages a commit reads through the map are new each
/// time, about 13 MB/s at 40k events/s, and stay in the resident size until released. One
/// release reads `/proc/self/maps` (two lines per connection): ~1 ms of the writer's time with
/// a thousand connections open. At 250 ms the peak RSS with 1,000 connections and load was
/// 41-43 MiB, at 100 ms 39 MiB. Nothing is released when nothing was read or written since.
pub const MAP_RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// How often reader slots of dead reader processes are cleared.
pub const READER_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Pause between retention passes once a pass reached the end.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The map grows when more than this share of it is in use (checked before every batch, and
/// between batches), so a commit never meets `MDB_MAP_FULL` below the configured maximum.
const MAP_GROW_AT: f64 = 0.75;

/// Zero-filled headroom is added this much at a time: one write and one fdatasync, 0.7 ms on
/// the benchmark machine. An idle fill starts once the writer had nothing to do for an
/// `IDLE_TICK`, and looks at the queue between steps, so a request that arrives meanwhile waits
/// for one step at most. Under load a step is taken before a batch only when less than this is
/// left, about every 3,000 events of the mixed workload.
pub const HEADROOM_STEP: u64 = 1 << 20;

/// Free space must rise this much above the threshold before ingest resumes, so it does not
/// flap around the limit.
const DISK_HYSTERESIS: f64 = 1.10;

/// Exit status when LMDB declares the environment unusable (`MDB_PANIC`): only a restart of
/// the process recovers, and systemd's `Restart=on-failure` does that. (EX_SOFTWARE.)
pub const EXIT_STORE_PANIC: i32 = 70;

/// Before that exit, the requests of the failed batch get this long to have their 503s
/// written (a closed connection would also make the sender retry, but a 503 says why).
const FATAL_EXIT_GRACE: Duration = Duration::from_millis(300);

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
    fn settle(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
    }

    /// Wakes the waiter (after the outcome is set: the waiter reads it on waking).
    pub(crate) fn wake(&self) {
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
#[derive(Clone, Debug)]
pub struct Settings {
    /// Most jobs in one write transaction.
    pub batch_max: usize,
    /// Jobs that may wait in the queue; past this, requests get 503 at once.
    pub queue_capacity: usize,
    /// How far back a byte-identical body counts as a duplicate.
    pub dedup_window: Duration,
    /// Events the in-memory dedup table remembers at least (it holds up to twice as many).
    pub dedup_memory_events: usize,
    /// `Some(interval)`: commits do not fsync, a sync runs every interval (the store must be
    /// opened with `store::Sync::Deferred`). `None`: every commit fsyncs.
    pub sync_interval: Option<Duration>,
    /// Below this many free bytes on the data filesystem, ingest answers 503.
    pub min_free_disk_bytes: u64,
    /// The most the LMDB map may grow to.
    pub max_map_bytes: u64,
    /// Zero-filled bytes to keep in the data file past the data (`Store::zero_fill`), filled
    /// while idle; 0: none.
    pub file_headroom_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_max: 512,
            queue_capacity: 4096,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            dedup_memory_events: crate::config::DEFAULT_DEDUP_MEMORY_EVENTS,
            sync_interval: None,
            min_free_disk_bytes: 0,
            max_map_bytes: 1 << 30,
            file_headroom_bytes: 0,
        }
    }
}

/// Conditions the connections and `/readyz` must know about.
#[derive(Debug, Default)]
pub struct Health {
    /// Free disk is below the headroom: new events are refused with 503.
    pub disk_low: AtomicBool,
    /// The last commit failed.
    pub commit_failing: AtomicBool,
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
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Retention, replaceable on reload.
    pub retention: Arc<Mutex<Policy>>,
}

/// What the writer thread owns and shares.
struct Ctx {
    settings: Settings,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    retention: Arc<Mutex<Policy>>,
}

impl Writer {
    /// Starts the writer on an opened store.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(store: Store, settings: Settings) -> std::io::Result<(Writer, Queue)> {
        Self::spawn_with(store, settings, Arc::default(), Policy::default())
    }

    /// Starts the writer, counting into `metrics`, pruning under `retention`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn_with(
        store: Store,
        settings: Settings,
        metrics: Arc<Metrics>,
        retention: Policy,
    ) -> std::io::Result<(Writer, Queue)> {
        let (tx, rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        // Alive from the start: /readyz and the watchdog read this before the first loop pass.
        metrics.writer_heartbeat_ms.store(
            u64::try_from(timestamp::now_ms()).unwrap_or(0),
            Ordering::Relaxed,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let health = Arc::new(Health::default());
        let retention = Arc::new(Mutex::new(retention));
        let ctx = Ctx {
            settings,
            stop: stop.clone(),
            stats: stats.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            retention: retention.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("didgate-writer".into())
            .spawn(move || run(store, rx, ctx))?;
        let writer = Writer {
            thread,
            stop,
            stats,
            health,
            metrics,
            retention,
        };
        Ok((writer, Queue { tx }))
    }

    /// Commits everything already queued, then stops the thread and closes the store.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.thread.join().is_err() {
            crate::ops::log::error(format_args!("writer thread panicked"));
        }
    }
}

fn run(store: Store, rx: Receiver<Job>, ctx: Ctx) {
    let window_ms = i64::try_from(ctx.settings.dedup_window.as_millis()).unwrap_or(i64::MAX);
    let mut batch: Vec<Job> = Vec::with_capacity(ctx.settings.batch_max);
    let mut house = Housekeeping::new(&store, &ctx);
    let mut last_ms = i64::MIN;
    let wakeup = Wakeup::start();
    let mut recent = load_recent(&store, &ctx);
    // Committed, but the commit's meta page is not known to be on disk yet (see `Unsynced`).
    let mut unsynced = Unsynced::default();
    let defer = ctx.settings.sync_interval.is_none();
    loop {
        ctx.metrics.writer_heartbeat_ms.store(
            u64::try_from(timestamp::now_ms()).unwrap_or(0),
            Ordering::Relaxed,
        );
        match rx.recv_timeout(IDLE_TICK) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) if ctx.stop.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => {
                house.run(&store, &ctx, rx.is_empty());
                // Idle for a whole tick: not right after a commit, when the requests just
                // answered are about to send their next ones.
                if house.fill_headroom(&store, &ctx, || rx.is_empty()) {
                    unsynced.wake(&wakeup);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < ctx.settings.batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Stamps never go backwards, even if the wall clock does: readers binary-search by time.
        let now = timestamp::now_ms().max(last_ms);
        last_ms = now;
        let incoming: usize = batch.iter().map(|j| j.event.body.len()).sum();
        // Free space is checked before every batch (one statvfs): a burst can fill a small
        // disk within one housekeeping interval.
        house.check_disk(&store, &ctx);
        if ctx.health.disk_low.load(Ordering::Relaxed) {
            unsynced.sync_and_wake(&store, &ctx, &wakeup);
            for job in batch.drain(..) {
                job.reply.complete(Outcome::Failed);
            }
            house.run(&store, &ctx, rx.is_empty());
            continue;
        }
        house.ensure_room(&store, &ctx, incoming);
        if house.fill_headroom(&store, &ctx, || false) {
            // The step's fdatasync also flushed the last commit's meta page.
            unsynced.wake(&wakeup);
        }
        let since = now.saturating_sub(window_ms);
        let started = Instant::now();
        let mut result = commit_batch(&store, &mut recent, &batch, now, since);
        if result.as_ref().is_err_and(store::Error::is_map_full) && house.grow(&store, &ctx) {
            result = commit_batch(&store, &mut recent, &batch, now, since);
        }
        // Its reads and writes went through the map, whatever the outcome.
        house.mapped = true;
        match result {
            Ok(outcomes) => {
                // This commit's fdatasync also flushed the previous commit's meta page.
                unsynced.wake(&wakeup);
                house.dirty = true;
                ctx.health.commit_failing.store(false, Ordering::Relaxed);
                let fsynced = ctx.settings.sync_interval.is_none();
                ctx.metrics
                    .committed(batch.len(), started.elapsed(), fsynced, now);
                ctx.stats.commits.fetch_add(1, Ordering::Relaxed);
                ctx.stats
                    .jobs
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    match outcome {
                        Outcome::Duplicate(_) => {
                            ctx.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Quarantined(_) => {
                            ctx.stats.quarantined.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Stored(_) => ctx.metrics.stored(&job.event.kind),
                        Outcome::Failed => {}
                    }
                    unsynced.replies.push((job.reply, outcome));
                }
                if !defer {
                    // Interval mode: answers never waited for a flush.
                    unsynced.wake(&wakeup);
                } else if rx.is_empty() {
                    // Nothing queued to carry the next fdatasync: flush the meta page now.
                    unsynced.sync_and_wake(&store, &ctx, &wakeup);
                }
            }
            Err(e) => {
                unsynced.sync_and_wake(&store, &ctx, &wakeup);
                ctx.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                ctx.metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
                ctx.health.commit_failing.store(true, Ordering::Relaxed);
                if e.is_fatal() || store.is_unusable() {
                    crate::ops::log::error(format_args!(
                        "storage is unusable ({e}); exiting so the service manager restarts didgate"
                    ));
                    for job in batch.drain(..) {
                        job.reply.complete(Outcome::Failed);
                    }
                    std::thread::sleep(FATAL_EXIT_GRACE);
                    std::process::exit(EXIT_STORE_PANIC);
                }
                crate::ops::log::warn_limited(
                    "commit-failed",
                    format_args!("commit of {} events failed, answered 503: {e}", batch.len()),
                );
                for job in batch.drain(..) {
                    job.reply.complete(Outcome::Failed);
                }
            }
        }
        house.run(&store, &ctx, rx.is_empty());
        house.dedup_reach(&store, &ctx, &recent, now);
    }
    unsynced.sync_and_wake(&store, &ctx, &wakeup);
    house.sync(&store, &ctx);
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
struct Unsynced {
    replies: Vec<(Arc<Reply>, Outcome)>,
}

impl Unsynced {
    /// The last fdatasync covered these commits: answer their requests.
    fn wake(&mut self, wakeup: &Wakeup) {
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
    fn sync_and_wake(&mut self, store: &Store, ctx: &Ctx, wakeup: &Wakeup) {
        if self.replies.is_empty() {
            return;
        }
        match store.sync() {
            Ok(()) => {
                ctx.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
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
    // pages beside them: 52 MiB of a 76 MB store, measured. Released now rather than at the
    // first housekeeping pass, so the resident size never shows it.
    let _ = store.release_mapped_pages();
    ctx.metrics
        .dedup_memory_bytes
        .store(recent.memory_bytes() as u64, Ordering::Relaxed);
    recent
}

/// The writer's chores between batches: sync in interval mode, watch disk and map, clear
/// stale readers, prune by retention. Each is cheap or sliced, and ingest comes first.
struct Housekeeping {
    /// Commits since the last sync (interval mode).
    dirty: bool,
    last_sync: Instant,
    last_check: Option<Instant>,
    last_map_release: Instant,
    /// Pages were read or written through the map since the last release.
    mapped: bool,
    last_reader_check: Instant,
    next_prune: Instant,
    prune_cursor: retention::Cursor,
    last_reach: Option<Instant>,
    /// Map and file sizes as last looked up (before every batch); `map_bytes` is also kept
    /// current when this writer grows the map.
    space: store::SpaceInfo,
    /// Free bytes on the data filesystem as last looked up; `None` when unknown.
    disk_free: Option<u64>,
    /// After a failed zero fill, no other is tried before this.
    fill_paused_until: Option<Instant>,
}

impl Housekeeping {
    fn new(store: &Store, ctx: &Ctx) -> Housekeeping {
        ctx.metrics
            .map_max_bytes
            .store(ctx.settings.max_map_bytes, Ordering::Relaxed);
        let now = Instant::now();
        Housekeeping {
            dirty: false,
            last_sync: now,
            last_check: None,
            last_map_release: now,
            mapped: true,
            last_reader_check: now,
            next_prune: now,
            prune_cursor: retention::Cursor::default(),
            last_reach: None,
            // `space` fails only when the map's size cannot be read either.
            space: store.space().unwrap_or(store::SpaceInfo {
                map_bytes: 0,
                used_bytes: 0,
                file_bytes: 0,
            }),
            disk_free: None,
            fill_paused_until: None,
        }
    }

    /// Runs what is due. `idle`: nothing is queued, so slower chores (pruning) may run.
    fn run(&mut self, store: &Store, ctx: &Ctx, idle: bool) {
        let now = Instant::now();
        if let Some(interval) = ctx.settings.sync_interval
            && self.dirty
            && now.duration_since(self.last_sync) >= interval
        {
            self.sync(store, ctx);
        }
        if self
            .last_check
            .is_none_or(|t| now.duration_since(t) >= HOUSEKEEPING_INTERVAL)
        {
            self.last_check = Some(now);
            self.check_disk(store, ctx);
            self.ensure_room(store, ctx, 0);
        }
        if self.mapped && now.duration_since(self.last_map_release) >= MAP_RELEASE_INTERVAL {
            self.last_map_release = now;
            self.mapped = false;
            if let Err(e) = store.release_mapped_pages() {
                crate::ops::log::warn_limited(
                    "map-release",
                    format_args!("cannot release mapped pages of the store: {e}"),
                );
            }
        }
        if now.duration_since(self.last_reader_check) >= READER_CHECK_INTERVAL {
            self.last_reader_check = now;
            let cleared = store.clear_stale_readers();
            if cleared > 0 {
                crate::ops::log::info(format_args!(
                    "cleared {cleared} reader slots left by dead processes"
                ));
            }
        }
        if idle && now >= self.next_prune {
            self.prune(store, ctx);
        }
    }

    /// Publishes how far back the dedup table reaches (at most every housekeeping interval),
    /// and warns when that is shorter than the sender's retry window and the configured one.
    fn dedup_reach(&mut self, store: &Store, ctx: &Ctx, recent: &Recent, now_ms: i64) {
        let now = Instant::now();
        if self
            .last_reach
            .is_some_and(|t| now.duration_since(t) < HOUSEKEEPING_INTERVAL)
        {
            return;
        }
        self.last_reach = Some(now);
        let Some(Ok(Some(oldest_ms))) = recent.oldest_seq().map(|seq| store.stored_at_of(seq))
        else {
            return;
        };
        let reach = Duration::from_millis(u64::try_from(now_ms - oldest_ms).unwrap_or(0));
        ctx.metrics
            .dedup_reach_seconds
            .store(reach.as_secs(), Ordering::Relaxed);
        let full = recent.len() >= ctx.settings.dedup_memory_events;
        if full && reach < crate::config::MIN_DEDUP_WINDOW.min(ctx.settings.dedup_window) {
            crate::ops::log::warn_limited(
                "dedup-reach",
                format_args!(
                    "the dedup table reaches back only {} s at this event rate, less than the \
                     sender's 16-minute retry window; raise dedup_memory_events",
                    reach.as_secs()
                ),
            );
        }
    }

    /// In interval mode, flushes what was committed since the last sync.
    fn sync(&mut self, store: &Store, ctx: &Ctx) {
        if ctx.settings.sync_interval.is_none() || !self.dirty {
            return;
        }
        match store.sync() {
            Ok(()) => {
                self.dirty = false;
                ctx.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                crate::ops::log::warn_limited("sync-failed", format_args!("sync failed: {e}"))
            }
        }
        self.last_sync = Instant::now();
    }

    fn check_disk(&mut self, store: &Store, ctx: &Ctx) {
        let Ok(free) = store.disk_free_bytes() else {
            self.disk_free = None;
            return;
        };
        self.disk_free = Some(free);
        ctx.metrics.disk_free_bytes.store(free, Ordering::Relaxed);
        let min = ctx.settings.min_free_disk_bytes;
        let was_low = ctx.health.disk_low.load(Ordering::Relaxed);
        let low = if was_low {
            (free as f64) < min as f64 * DISK_HYSTERESIS
        } else {
            free < min
        };
        if low != was_low {
            ctx.health.disk_low.store(low, Ordering::Relaxed);
            if low {
                crate::ops::log::error(format_args!(
                    "free disk space {free} bytes is below min_free_disk_bytes ({min}): new events get 503 until space is freed"
                ));
            } else {
                crate::ops::log::info(format_args!(
                    "free disk space recovered ({free} bytes): accepting events again"
                ));
            }
        }
    }

    /// Grows the map ahead of need: before a batch of `incoming` body bytes (records and
    /// index entries take roughly twice the body), and on every housekeeping pass.
    fn ensure_room(&mut self, store: &Store, ctx: &Ctx, incoming: usize) {
        let Ok(space) = store.space() else {
            return;
        };
        self.space = space;
        self.publish_headroom(ctx);
        ctx.metrics
            .db_used_bytes
            .store(space.used_bytes, Ordering::Relaxed);
        ctx.metrics
            .map_bytes
            .store(space.map_bytes, Ordering::Relaxed);
        let needed = space.used_bytes + 2 * incoming as u64 + 64 * 1024;
        if needed as f64 > space.map_bytes as f64 * MAP_GROW_AT {
            self.grow(store, ctx);
        }
    }

    /// Adds zero-filled headroom to the data file past the data (see `Store::zero_fill`), a
    /// `HEADROOM_STEP` at a time. While `idle()` holds (nothing queued), up to
    /// `file_headroom_bytes`, starting only once a whole step is missing; otherwise one step,
    /// and only when less than a step is left. Never takes free disk space below
    /// `min_free_disk_bytes` (with the hysteresis that lets ingest resume) and never writes
    /// past the map. Returns whether it flushed the file, which also flushed the last commit's
    /// meta page.
    fn fill_headroom(&mut self, store: &Store, ctx: &Ctx, idle: impl Fn() -> bool) -> bool {
        let want = ctx.settings.file_headroom_bytes;
        if want == 0 || self.fill_paused_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        if idle() {
            // The sizes looked up before the last batch do not count that batch's pages.
            if let Ok(space) = store.space() {
                self.space = space;
            }
        }
        let floor =
            (ctx.settings.min_free_disk_bytes as f64 * DISK_HYSTERESIS) as u64 + HEADROOM_STEP;
        let mut flushed = false;
        loop {
            let space = self.space;
            let end = space.file_bytes.max(space.used_bytes);
            let headroom = end - space.used_bytes;
            let wanted = if idle() && !ctx.stop.load(Ordering::Relaxed) {
                headroom + HEADROOM_STEP <= want
            } else {
                !flushed && headroom < HEADROOM_STEP.min(want)
            };
            if !wanted || end >= space.map_bytes || self.disk_free.is_none_or(|f| f < floor) {
                break;
            }
            match store.zero_fill(HEADROOM_STEP) {
                Ok(0) => break,
                Ok(n) => {
                    flushed = true;
                    self.space.file_bytes = end + n;
                    self.disk_free = self.disk_free.map(|f| f.saturating_sub(n));
                }
                Err(e) => {
                    crate::ops::log::warn_limited(
                        "zero-fill",
                        format_args!("cannot add zero-filled room to the data file: {e}"),
                    );
                    self.fill_paused_until = Some(Instant::now() + HOUSEKEEPING_INTERVAL);
                    break;
                }
            }
        }
        self.publish_headroom(ctx);
        flushed
    }

    fn publish_headroom(&self, ctx: &Ctx) {
        let headroom = self.space.file_bytes.saturating_sub(self.space.used_bytes);
        ctx.metrics
            .file_headroom_bytes
            .store(headroom, Ordering::Relaxed);
    }

    /// Doubles the map, up to the maximum. Returns whether it grew.
    fn grow(&mut self, store: &Store, ctx: &Ctx) -> bool {
        let max = ctx.settings.max_map_bytes;
        if self.space.map_bytes >= max {
            crate::ops::log::warn_limited(
                "map-max",
                format_args!(
                    "the LMDB map is at its maximum ({max} bytes); raise max_map_size_bytes or prune"
                ),
            );
            return false;
        }
        let target = self.space.map_bytes.saturating_mul(2).clamp(1 << 20, max);
        match store.grow_map(target) {
            Ok(()) => {
                crate::ops::log::info(format_args!(
                    "grew the LMDB map from {} to {target} bytes",
                    self.space.map_bytes
                ));
                self.space.map_bytes = target;
                ctx.metrics.map_bytes.store(target, Ordering::Relaxed);
                true
            }
            Err(e) => {
                crate::ops::log::warn_limited(
                    "map-grow",
                    format_args!("could not grow the LMDB map: {e}"),
                );
                false
            }
        }
    }

    /// One retention slice, when a policy is set.
    fn prune(&mut self, store: &Store, ctx: &Ctx) {
        self.mapped = true;
        let policy = match ctx.retention.lock() {
            Ok(p) if !p.is_keep_all() => p.clone(),
            _ => {
                self.next_prune = Instant::now() + PRUNE_INTERVAL;
                return;
            }
        };
        let now = timestamp::now_ms();
        let cutoffs = Cutoffs::at(&policy, now);
        match retention::prune_slice(store, &cutoffs, &mut self.prune_cursor, now) {
            Ok(slice) => {
                ctx.metrics
                    .pruned_events
                    .fetch_add(slice.events_deleted, Ordering::Relaxed);
                if slice.events_deleted + slice.quarantined_deleted > 0 {
                    crate::ops::log::info(format_args!(
                        "retention pruned {} events and {} quarantined bodies",
                        slice.events_deleted, slice.quarantined_deleted
                    ));
                }
                if slice.done {
                    self.next_prune = Instant::now() + PRUNE_INTERVAL;
                }
            }
            Err(e) => {
                crate::ops::log::warn_limited(
                    "prune",
                    format_args!("retention pruning failed: {e}"),
                );
                self.next_prune = Instant::now() + PRUNE_INTERVAL;
            }
        }
    }
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
    now_ms: i64,
    dedup_since_ms: i64,
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
                        Outcome::Stored(seq)
                    }
                }
            }
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
            ..Settings::default()
        }
    }

    #[test]
    fn stores_dedups_and_quarantines_then_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let (writer, queue) = Writer::spawn(store, settings(16)).unwrap();
        let cases = [
            (job("{\"a\":1}", None), Outcome::Stored(1)),
            (job("{\"a\":1}", None), Outcome::Duplicate(1)),
            (job("{\"a\":2}", None), Outcome::Stored(2)),
            (job("{", Some("invalid JSON")), Outcome::Quarantined(1)),
        ];
        for (j, want) in cases {
            let reply = j.reply.clone();
            queue.submit(j).unwrap();
            assert_eq!(reply.wait(), Some(want));
        }
        writer.stop();
        let reader = Store::open_reader(dir.path()).unwrap();
        assert_eq!(reader.last_seq().unwrap(), Some(2));
        let counts = reader.counts().unwrap();
        assert_eq!(counts.duplicates.get("cdr"), Some(&1));
        assert_eq!(counts.quarantined, 1);
    }

    #[test]
    fn keeps_zero_filled_room_ahead_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let metrics: Arc<Metrics> = Arc::default();
        let want = 4 * HEADROOM_STEP;
        let s = Settings {
            file_headroom_bytes: want,
            ..settings(1000)
        };
        let (writer, queue) =
            Writer::spawn_with(store, s, metrics.clone(), Policy::default()).unwrap();
        let headroom = || metrics.file_headroom_bytes.load(Ordering::Relaxed);
        let file_len = || {
            std::fs::metadata(dir.path().join("data.mdb"))
                .unwrap()
                .len()
        };
        let until = Instant::now() + Duration::from_secs(10);
        while headroom() < want && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(headroom(), want, "filled while idle");
        let filled = file_len();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        for i in 0..500 {
            let j = job(&format!("{body}{i}"), None);
            let reply = j.reply.clone();
            queue.submit(j).unwrap();
            assert!(matches!(reply.wait(), Some(Outcome::Stored(_))));
        }
        // The events went into the filled room; idle again, the writer tops it up by whole
        // steps until less than a step is missing (the gauge is set once a fill is done). The
        // file grew only by those steps: no commit wrote past its end.
        let until = Instant::now() + Duration::from_secs(10);
        while (file_len() == filled || headroom() + HEADROOM_STEP <= want) && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let grown = file_len() - filled;
        assert!(grown > 0 && grown % HEADROOM_STEP == 0, "{grown}");
        assert!(headroom() + HEADROOM_STEP > want, "{}", headroom());
        writer.stop();
        let reader = Store::open_reader(dir.path()).unwrap();
        assert_eq!(reader.last_seq().unwrap(), Some(500));
        assert!(reader.check().unwrap().problems.is_empty());
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
        // Every reply is settled by now: none of these waits parks.
        for r in replies {
            assert!(r.is_settled());
            assert!(matches!(r.wait(), Some(Outcome::Stored(_))));
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
}
