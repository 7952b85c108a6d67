//! Forwarding: every stored event delivered onward, at least once, to the operator's own
//! HTTP endpoints (`[[forward]]` destinations), signed the Standard Webhooks way, or to NATS
//! JetStream ([`nats`], `type = "nats"`), with retries on a schedule, dead letters, replay,
//! pause and resume.
//!
//! In the order of one event: the writer commits it (and publishes the last sequence number);
//! each destination's dispatcher thread ([`dispatch`]) reads committed events from the store
//! in short read transactions, hands them to its sender threads ([`send`], blocking HTTP with
//! a timeout) or its NATS publisher ([`nats`]), and settles each outcome: delivered, or a
//! [`state::RetryEntry`] due later ([`schedule`]), or a [`state::DeadEntry`]. What it settled
//! goes to the writer as a [`Report`], committed with the writer's next batch
//! (`writer/forward_feed.rs`), cursor and retry entries together: a kill -9 re-sends at most
//! what was in flight or not yet committed, never skips. A destination's backlog (its retry set) lives in LMDB, not memory.
//!
//! Nothing here runs on ingest's threads or writes the store: the writer does, in the
//! transactions it commits anyway.

pub mod dispatch;
pub mod metrics;
pub mod nats;
pub mod schedule;
pub mod send;
pub mod signature;
pub mod state;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::store::delivery::Progress;
use signature::Secret;

/// Longest one delivery attempt may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts under way at once per destination.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Most attempts an HTTP destination may have under way (one sender thread each).
pub const MAX_IN_FLIGHT: usize = 64;
/// How long an event is retried after its first attempt before it goes to the dead letters.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3 * 24 * 3600);
/// Most destinations.
pub const MAX_DESTINATIONS: usize = 32;
/// Reports that may wait for the writer (all destinations); a dispatcher waits beyond it.
/// The writer takes them with every commit or idle tick, so a full queue means a writer that
/// cannot commit; the channel's slots are allocated up front (~250 bytes each).
pub const REPORT_QUEUE: usize = 256;
/// Most extra headers a destination may set.
pub const MAX_HEADERS: usize = 32;
/// Events per commit (a moving average over commits) at or above which ingest counts as
/// saturated: requests are queueing for the disk. Forwarding then steps back (one sender, a
/// pause between batches) and catches up once the burst is over: it never takes the CPU a
/// 200 needs. At 20,000 events/s a 2-core x86 host commits about 22 events at a time; a
/// saturating burst, 50 to 90.
pub const PRESSURE_EVENTS_PER_COMMIT: u64 = 48;
/// While ingest is saturated, the pause between two batches of one destination.
pub const PRESSURE_PAUSE: Duration = Duration::from_millis(25);
/// Niceness of the forwarding threads: when the CPU is short, ingest (at the process's
/// niceness) goes first and deliveries wait, their backlog in the store.
pub const NICENESS: libc::c_int = 19;

/// How a destination is reached.
#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// HTTP POST to `url` (`type = "http"`, the default).
    Http,
    /// Publish to NATS JetStream (`type = "nats"`).
    Nats(Arc<nats::Settings>),
}

/// One `[[forward]]` destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    /// Its name: store key, metrics label, CLI argument.
    pub name: String,
    /// Where events go: the URL events are POSTed to (http or https), or a NATS
    /// destination's servers, comma-separated.
    pub url: String,
    /// How.
    pub transport: Transport,
    /// Kinds sent; empty: every kind.
    pub kinds: Vec<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Signing secrets; empty: no `webhook-signature`.
    pub secrets: Vec<Secret>,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Attempts under way at once (1 when `ordered`): HTTP requests, or NATS publishes
    /// awaiting their PubAck.
    pub max_in_flight: usize,
    /// Deliver strictly in sequence, one at a time: an event waits for the one before it to
    /// be delivered or dead.
    pub ordered: bool,
    /// Most attempts per second; `None`: no limit.
    pub rate_limit: Option<f64>,
    /// Waits between tries; the last repeats.
    pub retry: Vec<Duration>,
    /// Retried this long after the first attempt, then dead.
    pub max_age: Duration,
}

impl Destination {
    /// A destination with the defaults, for `url`.
    pub fn new(name: &str, url: &str) -> Destination {
        Destination {
            name: name.to_string(),
            url: url.to_string(),
            transport: Transport::Http,
            kinds: Vec::new(),
            headers: Vec::new(),
            secrets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ordered: false,
            rate_limit: None,
            retry: schedule::default_schedule(),
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// Whether events of `kind` go here.
    pub fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }

    /// Attempts under way at once, as it will run.
    pub fn in_flight_cap(&self) -> usize {
        let max = match self.transport {
            Transport::Http => MAX_IN_FLIGHT,
            Transport::Nats(_) => nats::MAX_IN_FLIGHT,
        };
        if self.ordered {
            1
        } else {
            self.max_in_flight.clamp(1, max)
        }
    }

    /// Most attempts in one batch handed to a lane: an HTTP sender thread sends its batch
    /// one request after the other; a NATS publisher sends a batch's messages back to back
    /// and then awaits their acks, so its batches are larger.
    pub fn batch(&self) -> usize {
        match self.transport {
            Transport::Http => send::SENDER_BATCH,
            Transport::Nats(_) => self.in_flight_cap().min(nats::PUBLISH_BATCH),
        }
    }

    /// Batches under way at once: one per HTTP sender thread; for NATS, as many as keep
    /// `max_in_flight` acks outstanding.
    pub fn lanes(&self) -> usize {
        match self.transport {
            Transport::Http => self.in_flight_cap(),
            Transport::Nats(_) => self.in_flight_cap().div_ceil(self.batch()),
        }
    }
}

/// A dispatcher's report to the writer; `ack` hears `generation` once it is committed.
pub struct Report {
    /// What it settled.
    pub progress: Progress,
    /// Its number, increasing per dispatcher.
    pub generation: u64,
    /// Where the writer says it committed it.
    pub ack: Sender<u64>,
}

/// The writer's side of forwarding.
pub struct Link {
    /// Reports to commit.
    pub reports: Receiver<Report>,
    /// The highest sequence number committed, published by the writer after each commit.
    pub committed: Arc<AtomicU64>,
    /// Events per commit, a moving average (0 when idle): how hard ingest is pressed.
    pub pressure: Arc<AtomicU64>,
    /// The destinations configured now: retention keeps what they have not delivered.
    pub destinations: Arc<Mutex<Vec<String>>>,
}

/// The running destinations.
pub struct Forwarder {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    reports: Sender<Report>,
    committed: Arc<AtomicU64>,
    pressure: Arc<AtomicU64>,
    destinations: Arc<Mutex<Vec<String>>>,
    running: BTreeMap<String, (Destination, dispatch::Handle)>,
}

impl Forwarder {
    /// Starts a dispatcher per destination. Returns the writer's [`Link`].
    ///
    /// # Errors
    /// A thread could not be spawned.
    pub fn start(
        store: Arc<Store>,
        destinations: &[Destination],
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Forwarder, Link)> {
        let (reports, rx) = crossbeam_channel::bounded(REPORT_QUEUE);
        let committed = Arc::new(AtomicU64::new(store.last_seq().ok().flatten().unwrap_or(0)));
        let names = Arc::new(Mutex::new(Vec::new()));
        let pressure = Arc::new(AtomicU64::new(0));
        let mut f = Forwarder {
            store,
            metrics,
            reports,
            committed: committed.clone(),
            pressure: pressure.clone(),
            destinations: names.clone(),
            running: BTreeMap::new(),
        };
        f.apply(destinations)?;
        Ok((
            f,
            Link {
                reports: rx,
                committed,
                pressure,
                destinations: names,
            },
        ))
    }

    /// Applies a new list of destinations (SIGHUP): removed ones stop, changed ones restart
    /// from their stored state, new ones start at the newest event. Returns what changed, for
    /// the log.
    ///
    /// # Errors
    /// A thread could not be spawned; the destinations started so far run.
    pub fn apply(&mut self, destinations: &[Destination]) -> std::io::Result<Vec<String>> {
        let mut changes = Vec::new();
        let wanted: BTreeMap<&str, &Destination> =
            destinations.iter().map(|d| (d.name.as_str(), d)).collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let keep = wanted.get(name.as_str()).is_some_and(|d| {
                self.running
                    .get(&name)
                    .is_some_and(|(running, _)| running == *d)
            });
            if !keep && let Some((_, handle)) = self.running.remove(&name) {
                handle.stop();
                if wanted.contains_key(name.as_str()) {
                    changes.push(format!("{name} changed"));
                } else {
                    self.metrics.forward.remove(&name);
                    changes.push(format!("{name} removed"));
                }
            }
        }
        for d in destinations {
            if self.running.contains_key(&d.name) {
                continue;
            }
            let handle = dispatch::Handle::start(
                Arc::new(d.clone()),
                self.store.clone(),
                self.metrics.forward.get(&d.name),
                self.reports.clone(),
                self.committed.clone(),
                self.pressure.clone(),
            )?;
            if !changes
                .iter()
                .any(|c| c.starts_with(&format!("{} ", d.name)))
            {
                changes.push(format!("{} added", d.name));
            }
            self.running.insert(d.name.clone(), (d.clone(), handle));
        }
        if let Ok(mut names) = self.destinations.lock() {
            *names = self.running.keys().cloned().collect();
        }
        Ok(changes)
    }

    /// Stops every dispatcher (their last reports are sent to the writer first); attempts
    /// under way are abandoned and sent again at the next start.
    pub fn stop(self) {
        // All at once: each may wait up to its drain time for attempts under way.
        for (_, handle) in self.running.values() {
            handle.signal();
        }
        for (_, (_, handle)) in self.running {
            handle.join();
        }
    }
}
