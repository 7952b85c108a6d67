//! Housekeeping: the writer's chores between batches. Sync in interval mode, watch free disk
//! and the map, keep zero-filled room in the data file, release mapped pages, clear stale
//! reader slots, prune by retention. Each is cheap or sliced, and ingest comes first: it runs
//! on the writer thread only between batches.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::dedup::Recent;
use super::retention::{self, Cutoffs};
use super::{Ctx, MIN_DEDUP_WINDOW};
use crate::store::{self, Store};
use crate::timestamp;

/// How often free disk space and map usage are checked.
pub(super) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// How often this process's mapping of the data file is released (`Store::release_mapped_pages`)
/// while the writer works: under load the pages a commit reads through the map are new each
/// time and stay in the resident size until released. One release reads `/proc/self/maps` (two
/// lines per connection), about a millisecond with a thousand connections open; a shorter
/// interval keeps the peak resident size lower under load (docs/performance.md, "Memory").
/// Nothing is released when nothing was read or written since.
pub const MAP_RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// How often reader slots of dead reader processes are cleared.
pub const READER_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Pause between retention passes once a pass reached the end.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The map grows when more than this share of it is in use (checked before every batch, and
/// between batches), so a commit never meets `MDB_MAP_FULL` below the configured maximum.
const MAP_GROW_AT: f64 = 0.75;

/// Zero-filled headroom is added this much at a time: one write and one fdatasync (under a
/// millisecond on an SSD). An idle fill starts once the writer had nothing to do for an
/// `IDLE_TICK`, and looks at the queue between steps, so a request that arrives meanwhile waits
/// for one step at most. Under load a step is taken before a batch only when less than this is
/// left, about every 3,000 events of the mixed workload.
pub const HEADROOM_STEP: u64 = 1 << 20;

/// Free space must rise this much above the threshold before ingest resumes, so it does not
/// flap around the limit.
const DISK_HYSTERESIS: f64 = 1.10;

/// The writer's chores between batches: sync in interval mode, watch disk and map, clear
/// stale readers, prune by retention. Each is cheap or sliced, and ingest comes first.
pub(super) struct Housekeeping {
    /// Commits since the last sync (interval mode).
    pub(super) dirty: bool,
    last_sync: Instant,
    last_check: Option<Instant>,
    last_map_release: Instant,
    /// Pages were read or written through the map since the last release.
    pub(super) mapped: bool,
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
    /// The forwarding destinations configured now, whose undelivered events retention keeps
    /// (the forwarder replaces the list on reload).
    destinations: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Housekeeping {
    pub(super) fn new(store: &Store, ctx: &Ctx) -> Housekeeping {
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
            destinations: None,
        }
    }

    /// Keeps the events that the destinations of `list` have not delivered yet.
    pub(super) fn protect(&mut self, list: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        self.destinations = Some(list);
    }

    /// Runs what is due. `idle`: nothing is queued, so slower chores (pruning) may run.
    pub(super) fn run(&mut self, store: &Store, ctx: &Ctx, idle: bool) {
        let now = Instant::now();
        if let Some(interval) = ctx.settings.sync_interval()
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
    pub(super) fn dedup_reach(&mut self, store: &Store, ctx: &Ctx, recent: &Recent, now_ms: i64) {
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
        if full && reach < MIN_DEDUP_WINDOW.min(ctx.settings.dedup_window) {
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
    pub(super) fn sync(&mut self, store: &Store, ctx: &Ctx) {
        if ctx.settings.sync_interval().is_none() || !self.dirty {
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

    pub(super) fn check_disk(&mut self, store: &Store, ctx: &Ctx) {
        let Ok(free) = store.disk_free_bytes() else {
            self.disk_free = None;
            return;
        };
        self.disk_free = Some(free);
        ctx.metrics.disk_free_bytes.store(free, Ordering::Relaxed);
        let min = ctx.min_free_disk_bytes();
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
    pub(super) fn ensure_room(&mut self, store: &Store, ctx: &Ctx, incoming: usize) {
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
    pub(super) fn fill_headroom(
        &mut self,
        store: &Store,
        ctx: &Ctx,
        idle: impl Fn() -> bool,
    ) -> bool {
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
        // Saturating: a floor near u64::MAX (no disk is ever that free) must not wrap to a
        // small one, which would let the fill eat the space the floor protects.
        let floor = ((ctx.min_free_disk_bytes() as f64 * DISK_HYSTERESIS) as u64)
            .saturating_add(HEADROOM_STEP);
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
    pub(super) fn grow(&mut self, store: &Store, ctx: &Ctx) -> bool {
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
        let destinations = self
            .destinations
            .as_ref()
            .map(|l| l.lock().map(|d| d.clone()).unwrap_or_default())
            .unwrap_or_default();
        let protect = retention::Protect {
            destinations,
            force: ctx.health.is_disk_low(),
        };
        match retention::prune_slice(store, &cutoffs, &protect, &mut self.prune_cursor, now) {
            Ok(slice) => {
                for (dest, d) in &slice.dropped {
                    crate::ops::log::warn(format_args!(
                        "retention: the disk is below its floor; deleted {} expired events \
                         (seq {} to {}) that forward destination {dest} had not delivered",
                        d.events, d.first, d.last
                    ));
                }
                ctx.metrics
                    .pruned_events
                    .fetch_add(slice.events_deleted, Ordering::Relaxed);
                // The archive's size, as the quota sees it.
                let _ = ctx.metrics.archive_bytes.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |b| Some(b.saturating_sub(slice.freed_bytes)),
                );
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
