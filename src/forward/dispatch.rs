//! One destination's dispatcher: a thread that picks what to send next (due retries first,
//! then new events after the cursor, or strictly the lowest pending event when `ordered`),
//! hands attempts to the sender threads, settles their outcomes, and reports what it settled
//! to the writer.
//!
//! What it keeps in memory is bounded: the events read ahead and not yet settled (at most
//! [`MAX_WINDOW`]), the attempts under way, and the sequence numbers whose retry-set change
//! the writer has not committed yet. Everything else (the retry set, the dead letters, the
//! cursor) is in the store, so a destination that is down for a day costs no memory.
//!
//! A destination that fails [`CIRCUIT_FAILURES`](super::schedule::CIRCUIT_FAILURES) attempts
//! in a row is held: nothing is sent until the hold ends, then one attempt at a time probes
//! it, on the retry schedule. The first success releases it and makes its whole retry set due
//! at once, so a destination back after a day gets its backlog within seconds rather than at
//! each entry's hourly try.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use super::metrics::DestMetrics;
use super::nats;
use super::schedule::{self, Next, Outcome};
use super::send::{self, Attempt, Client, Done, Lane, Source};
use super::state::{DeadEntry, RetryEntry};
use super::{Destination, Report, Transport};

mod pick;
use crate::ops::log;
use crate::store::delivery::{DueRetry, Progress};
use crate::store::{Store, StoredEvent};
use crate::timestamp::now_ms;

/// How often a dispatcher wakes without results: to look for newly committed events, due
/// retries, acknowledgements and its stop flag.
pub const POLL: Duration = Duration::from_millis(10);
/// Longest a settled outcome waits before it is reported to the writer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Most changes in one report.
pub const FLUSH_MAX: usize = 4096;
/// Events read per read transaction.
pub const READ_AHEAD: usize = 512;
/// Most events read and not yet settled (the memory a slow attempt at the head can hold up).
pub const MAX_WINDOW: usize = 16_384;
/// Retry entries looked at per read transaction.
pub const RETRY_SCAN_BUDGET: usize = 1024;
/// Due retry entries taken per read transaction.
pub const RETRY_BATCH: usize = 64;
/// Longest wait before the retry set is looked at again.
pub const RETRY_IDLE: Duration = Duration::from_secs(1);
/// How often the stored state (pause, resume, counts) is read back, and the lag measured.
pub const CONTROL_EVERY: Duration = Duration::from_millis(250);
/// On stop, how long attempts under way may finish (their outcomes are then reported
/// instead of being sent again at the next start).
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(2);

/// A running dispatcher.
pub struct Handle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Starts the sender threads and the dispatcher of `dest`.
    ///
    /// # Errors
    /// A thread could not be spawned.
    pub fn start(
        dest: Arc<Destination>,
        store: Arc<Store>,
        metrics: Arc<DestMetrics>,
        reports: Sender<Report>,
        committed: Arc<AtomicU64>,
        pressure: Arc<AtomicU64>,
    ) -> std::io::Result<Handle> {
        let lanes = dest.lanes();
        let (done_tx, results) = crossbeam_channel::unbounded();
        let attempts = match &dest.transport {
            Transport::Http => {
                let (tx, rx) = crossbeam_channel::bounded(lanes);
                send::spawn(&Arc::new(Client::new(dest.clone())), lanes, &rx, &done_tx)?;
                Lane::Threads(tx)
            }
            Transport::Nats(settings) => {
                let (tx, rx) = tokio::sync::mpsc::channel(lanes);
                nats::spawn(&dest, settings.clone(), rx, done_tx)?;
                Lane::Nats(tx)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        let d = Dispatcher {
            progress: Progress::new(&dest.name),
            dest,
            store,
            m: metrics,
            reports,
            ack_tx,
            acks,
            attempts,
            results,
            committed,
            pressure,
            last_launch: Instant::now(),
            stop: stop.clone(),
            cursor: 0,
            reported_cursor: 0,
            next_read: 1,
            window: BTreeMap::new(),
            ahead: VecDeque::new(),
            retry_from: 0,
            retry_at: Instant::now(),
            sweep: false,
            due: VecDeque::new(),
            busy: HashSet::new(),
            settling: HashMap::new(),
            pending: Vec::new(),
            in_report: VecDeque::new(),
            generation: 0,
            acked: 0,
            in_flight: 0,
            busy_senders: 0,
            streak: 0,
            hold_until: None,
            quiet_until: None,
            paused: None,
            pause_generation: None,
            control_at: Instant::now(),
            tokens: 1.0,
            tokens_at: Instant::now(),
            flushed_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("didgate-forward".into())
            .spawn(move || {
                crate::ops::lower_priority(super::NICENESS);
                d.run();
            })?;
        Ok(Handle {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the dispatcher after its last report; its sender threads end after their
    /// attempt under way.
    pub fn stop(self) {
        self.signal();
        self.join();
    }

    /// Tells the dispatcher to stop (it lets attempts under way finish for up to
    /// [`DRAIN_ON_STOP`], then reports).
    pub fn signal(&self) {
        self.stop.store(true, Relaxed);
    }

    /// Waits for the dispatcher to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Dispatcher {
    dest: Arc<Destination>,
    store: Arc<Store>,
    m: Arc<DestMetrics>,
    reports: Sender<Report>,
    ack_tx: Sender<u64>,
    acks: Receiver<u64>,
    attempts: Lane,
    results: Receiver<Vec<Done>>,
    committed: Arc<AtomicU64>,
    /// How hard ingest is pressed (the writer's events per commit).
    pressure: Arc<AtomicU64>,
    last_launch: Instant,
    stop: Arc<AtomicBool>,
    /// Every event up to here is settled (in memory; the store's may be behind).
    cursor: u64,
    reported_cursor: u64,
    /// The next event to read from the store.
    next_read: u64,
    /// Events read (of the kinds sent) above the cursor: settled or not.
    window: BTreeMap<u64, bool>,
    /// Events read and not sent yet.
    ahead: VecDeque<StoredEvent>,
    /// Where the next look at the retry set starts, and when.
    retry_from: u64,
    retry_at: Instant,
    /// Take every retry entry, due or not, until the end of the set (after a recovery).
    sweep: bool,
    due: VecDeque<DueRetry>,
    /// Retry entries under way.
    busy: HashSet<u64>,
    /// Events whose retry-set change is reported (or about to be) but not committed: the
    /// store does not show it yet, so a look at the retry set must skip them.
    settling: HashMap<u64, u32>,
    /// Those of the report being gathered.
    pending: Vec<u64>,
    /// Those of each report sent, by generation.
    in_report: VecDeque<(u64, Vec<u64>)>,
    generation: u64,
    acked: u64,
    /// Events handed to the sender threads and not settled yet.
    in_flight: usize,
    /// Sender threads with a batch.
    busy_senders: usize,
    /// Failed attempts in a row.
    streak: u32,
    /// Held until then after failures in a row; still `Some` (probing) until a success.
    hold_until: Option<Instant>,
    /// The destination's last `Retry-After`: nothing is sent before it.
    quiet_until: Option<Instant>,
    paused: Option<String>,
    /// The report that carries this dispatcher's own pause (a 410), until committed.
    pause_generation: Option<u64>,
    control_at: Instant,
    tokens: f64,
    tokens_at: Instant,
    progress: Progress,
    flushed_at: Instant,
}

impl Dispatcher {
    fn name(&self) -> &str {
        &self.dest.name
    }

    fn run(mut self) {
        while let Err(e) = self.load() {
            log::warn_limited(
                "forward-load",
                format_args!("forward {}: cannot read its state: {e}", self.name()),
            );
            for _ in 0..100 {
                if self.stop.load(Relaxed) {
                    return;
                }
                std::thread::sleep(POLL);
            }
        }
        while !self.stop.load(Relaxed) {
            self.take_acks();
            self.control();
            self.fill();
            self.flush(false);
            match self.results.recv_timeout(POLL) {
                Ok(batch) => {
                    self.settle_batch(batch);
                    while let Ok(batch) = self.results.try_recv() {
                        self.settle_batch(batch);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.advance();
        }
        let until = Instant::now() + DRAIN_ON_STOP;
        while self.in_flight > 0 && Instant::now() < until {
            if let Ok(batch) = self.results.recv_timeout(POLL) {
                self.settle_batch(batch);
            }
        }
        self.advance();
        self.flush(true);
    }

    /// Reads the stored state; a destination seen for the first time starts after the
    /// newest event (earlier ones are sent with `didgate replay`).
    fn load(&mut self) -> crate::store::Result<()> {
        match self.store.dest_state(&self.dest.name)? {
            Some(s) => {
                self.cursor = s.cursor;
                self.reported_cursor = s.cursor;
                self.paused = s.paused;
            }
            None => {
                self.cursor = self.store.last_seq()?.unwrap_or(0);
                self.progress.cursor = Some(self.cursor);
                self.reported_cursor = self.cursor;
                log::info(format_args!(
                    "forward {}: new destination, starting after event {} (`didgate replay \
                     --dest {}` sends earlier ones)",
                    self.dest.name, self.cursor, self.dest.name
                ));
            }
        }
        self.next_read = self.cursor + 1;
        if let Some(why) = &self.paused {
            log::warn(format_args!("forward {}: paused ({why})", self.dest.name));
        }
        Ok(())
    }

    fn take_acks(&mut self) {
        while let Ok(g) = self.acks.try_recv() {
            self.acked = self.acked.max(g);
        }
        while self
            .in_report
            .front()
            .is_some_and(|(g, _)| *g <= self.acked)
        {
            if let Some((_, seqs)) = self.in_report.pop_front() {
                for s in seqs {
                    if let Some(n) = self.settling.get_mut(&s) {
                        *n -= 1;
                        if *n == 0 {
                            self.settling.remove(&s);
                        }
                    }
                }
            }
        }
    }

    /// Every [`CONTROL_EVERY`]: pause and resume from the store, the gauges, the lag.
    fn control(&mut self) {
        let now = Instant::now();
        if now < self.control_at {
            return;
        }
        self.control_at = now + CONTROL_EVERY;
        if let Ok(Some(s)) = self.store.dest_state(&self.dest.name) {
            let own_pause_pending = self.pause_generation.is_some_and(|g| self.acked < g);
            if !own_pause_pending {
                self.pause_generation = None;
                let was = self.paused.is_some();
                self.paused = s.paused.clone();
                if was && self.paused.is_none() {
                    log::info(format_args!("forward {}: resumed", self.dest.name));
                    self.release();
                } else if !was && let Some(why) = &self.paused {
                    log::warn(format_args!("forward {}: paused ({why})", self.dest.name));
                }
            }
            self.m.retrying.store(s.retrying, Relaxed);
            self.m.dead.store(s.dead, Relaxed);
        }
        self.m
            .paused
            .store(u64::from(self.paused.is_some()), Relaxed);
        let committed = self.committed.load(Relaxed);
        self.m
            .lag_events
            .store(committed.saturating_sub(self.cursor), Relaxed);
        self.m
            .lag_seconds
            .store(self.lag_seconds(committed), Relaxed);
    }

    /// Age of the oldest event not yet sent successfully: the first retry entry, or the first
    /// unsettled event above the cursor.
    fn lag_seconds(&self, committed: u64) -> u64 {
        let unsettled = self
            .window
            .iter()
            .find(|(_, settled)| !**settled)
            .map(|(s, _)| *s)
            .or((committed > self.cursor).then_some(self.cursor + 1));
        let from = self.store.oldest_owed_ms(&self.dest.name, unsettled);
        from.ok()
            .flatten()
            .map_or(0, |t| u64::try_from((now_ms() - t) / 1000).unwrap_or(0))
    }

    /// Resumed, or answering again: send at once, and make the whole retry set due.
    fn release(&mut self) {
        self.hold_until = None;
        self.streak = 0;
        self.m.held.store(0, Relaxed);
        self.sweep = true;
        self.retry_from = 0;
        self.retry_at = Instant::now();
        self.due.clear();
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let Some(rate) = self.dest.rate_limit else {
            return true;
        };
        let elapsed = now.duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn fill(&mut self) {
        if self.paused.is_some() {
            return;
        }
        let now = Instant::now();
        if self.hold_until.is_some_and(|t| now < t) || self.quiet_until.is_some_and(|t| now < t) {
            return;
        }
        // Probing a destination that looks down, or ordered: one event at a time.
        let single = self.hold_until.is_some() || self.dest.ordered;
        // Ingest saturated: one sender, and a pause between batches.
        let pressed = self.pressure.load(Relaxed) >= super::PRESSURE_EVENTS_PER_COMMIT;
        if pressed && now.duration_since(self.last_launch) < super::PRESSURE_PAUSE {
            return;
        }
        let senders = if single || pressed {
            1
        } else {
            self.dest.lanes()
        };
        while self.busy_senders < senders {
            if self.ahead.is_empty() && !single {
                self.read_ahead();
            }
            // Share what is waiting among the idle senders.
            let waiting = self.ahead.len() + self.due.len();
            // Pressed, batches are no larger than an HTTP sender's, whatever the transport:
            // a NATS batch of 256 every pause was still a tenth of a saturated ingest rate.
            let most = if pressed {
                self.dest.batch().min(send::SENDER_BATCH)
            } else {
                self.dest.batch()
            };
            let size = if single {
                1
            } else {
                waiting.div_ceil(senders - self.busy_senders).clamp(1, most)
            };
            let mut batch = Vec::with_capacity(size);
            while batch.len() < size && self.take_token(now) {
                let next = if self.dest.ordered {
                    self.next_ordered()
                } else {
                    match self.next_retry() {
                        Some(a) => Some(a),
                        None => self.next_stream(),
                    }
                };
                let Some(a) = next else {
                    self.tokens += 1.0;
                    break;
                };
                batch.push(a);
            }
            if batch.is_empty() {
                break;
            }
            self.launch(batch);
        }
    }

    fn launch(&mut self, batch: Vec<Attempt>) {
        let n = batch.len();
        let retries: Vec<u64> = batch
            .iter()
            .filter(|a| matches!(a.source, Source::Retry(_)))
            .map(|a| a.seq)
            .collect();
        match self.attempts.try_send(batch) {
            Ok(()) => {
                self.last_launch = Instant::now();
                self.busy_senders += 1;
                self.in_flight += n;
                self.m.in_flight.store(self.in_flight as u64, Relaxed);
            }
            // Cannot happen (one batch per idle sender, the channel holds one per sender);
            // the events stay unsettled and are taken again after a restart.
            Err(_) => {
                for seq in retries {
                    self.busy.remove(&seq);
                }
            }
        }
    }

    fn note(&mut self, seq: u64) {
        *self.settling.entry(seq).or_insert(0) += 1;
        self.pending.push(seq);
    }

    fn note_done(&mut self, seq: u64) {
        self.progress.done.push(seq);
        self.note(seq);
    }

    fn note_dead(&mut self, seq: u64, e: DeadEntry) {
        log::warn_limited(
            "forward-dead",
            format_args!(
                "forward {}: gave up on event {seq} after {} attempts ({}); `didgate \
                 deliveries dead --dest {}` lists it",
                self.dest.name, e.attempts, e.last_error, self.dest.name
            ),
        );
        self.m.dead_total.fetch_add(1, Relaxed);
        self.progress.dead.push((seq, e));
        self.note(seq);
    }

    fn note_retry(&mut self, seq: u64, e: RetryEntry) {
        self.progress.retry.push((seq, e));
        self.note(seq);
    }

    fn settle_batch(&mut self, batch: Vec<Done>) {
        self.busy_senders = self.busy_senders.saturating_sub(1);
        for d in batch {
            self.settle(d);
        }
    }

    fn settle(&mut self, d: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.m.in_flight.store(self.in_flight as u64, Relaxed);
        self.m.attempt_seconds.observe(d.took.as_secs_f64());
        let now = now_ms();
        let from_retry = match &d.source {
            Source::Stream => {
                self.window.insert(d.seq, true);
                None
            }
            Source::Retry(e) => {
                self.busy.remove(&d.seq);
                Some(e.clone())
            }
        };
        match d.outcome {
            Outcome::Delivered(_) | Outcome::Duplicate => {
                if d.outcome == Outcome::Duplicate {
                    self.m.duplicates.fetch_add(1, Relaxed);
                }
                self.m.delivered.fetch_add(1, Relaxed);
                self.streak = 0;
                if self.hold_until.is_some() {
                    log::info(format_args!(
                        "forward {}: the destination answers again; sending its retries now",
                        self.dest.name
                    ));
                    self.release();
                }
                self.progress.delivered += 1;
                self.progress.last_delivered_at_ms = Some(now);
                if from_retry.is_some() {
                    self.note_done(d.seq);
                }
            }
            Outcome::Failed(f) => {
                self.m.failed(f.class);
                self.streak = self.streak.saturating_add(1);
                self.progress.last_error = Some((format!("event {}: {}", d.seq, f.error), now));
                if f.is_gone() && self.paused.is_none() {
                    let why = format!("{} answered 410 Gone", self.dest.url);
                    log::warn(format_args!(
                        "forward {}: {why}; paused (`didgate deliveries resume --dest {}` \
                         resumes it)",
                        self.dest.name, self.dest.name
                    ));
                    self.paused = Some(why.clone());
                    self.progress.pause = Some(why);
                    self.pause_generation = Some(self.generation + 1);
                    self.m.paused.store(1, Relaxed);
                }
                let entry = from_retry.unwrap_or_default();
                let next = schedule::after_failure(
                    entry,
                    d.started_ms,
                    now,
                    &f,
                    &self.dest.retry,
                    self.dest.max_age,
                );
                match next {
                    Next::Retry(e) => self.note_retry(d.seq, e),
                    Next::Dead(e) => self.note_dead(d.seq, e),
                }
                if let Some(after) = f.retry_after {
                    let until = Instant::now() + after;
                    self.quiet_until = Some(self.quiet_until.map_or(until, |q| q.max(until)));
                }
                if let Some(hold) = schedule::hold_for(self.streak, &self.dest.retry) {
                    if self.hold_until.is_none() {
                        log::warn(format_args!(
                            "forward {}: {} failed attempts in a row (last: {}); holding new \
                             events, probing again in {}",
                            self.dest.name,
                            self.streak,
                            f.error,
                            humantime::format_duration(hold)
                        ));
                    }
                    self.hold_until = Some(Instant::now() + hold);
                    self.m.held.store(1, Relaxed);
                }
            }
        }
    }

    /// Moves the cursor over the settled prefix of the window.
    fn advance(&mut self) {
        while let Some((_, true)) = self.window.first_key_value() {
            self.window.pop_first();
        }
        let settled_to = match self.window.first_key_value() {
            Some((s, _)) => s - 1,
            None => self.next_read - 1,
        };
        if settled_to > self.cursor {
            self.cursor = settled_to;
        }
        if self.cursor > self.reported_cursor {
            self.progress.cursor = Some(self.cursor);
        }
    }

    fn changes(&self) -> usize {
        self.progress.retry.len() + self.progress.done.len() + self.progress.dead.len()
    }

    /// Sends the gathered report to the writer, at most every [`FLUSH_EVERY`] (or when it is
    /// large, or `force`).
    fn flush(&mut self, force: bool) {
        let now = Instant::now();
        let time = now.duration_since(self.flushed_at) >= FLUSH_EVERY;
        if self.progress.is_empty() || !(force || time || self.changes() >= FLUSH_MAX) {
            return;
        }
        self.flushed_at = now;
        self.generation += 1;
        let mut progress = std::mem::replace(&mut self.progress, Progress::new(&self.dest.name));
        progress.in_flight = self.in_flight as u64;
        if let Some(c) = progress.cursor {
            self.reported_cursor = c;
        }
        self.in_report
            .push_back((self.generation, std::mem::take(&mut self.pending)));
        let mut report = Report {
            progress,
            generation: self.generation,
            ack: self.ack_tx.clone(),
        };
        // The writer drains reports with every commit; while it cannot commit (a full disk),
        // this waits, and stops waiting when told to stop.
        loop {
            match self.reports.send_timeout(report, Duration::from_secs(1)) {
                Ok(()) => return,
                Err(SendTimeoutError::Timeout(r)) if !self.stop.load(Relaxed) => report = r,
                Err(_) => return,
            }
        }
    }
}
