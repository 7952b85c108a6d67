//! Every counter the gateway keeps, named once, and their Prometheus text rendering.
//!
//! Owns names, labels, buckets and the exposition format (Prometheus text format 0.0.4). The
//! hot path only does relaxed atomic adds on fixed arrays; label sets are closed (a kind
//! outside cdr/recording/sms counts as `other`), so a hostile sender cannot grow the label
//! space. Rendering (`/metrics`, `admin.rs`) is the only place that reads them together.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::event::Hook;
use crate::ingest::response::{Answer, Unavailable};
use crate::ops::health::Health;

/// Label of requests that reached no hook (a wrong path or token) and of stored kinds beyond
/// the three documented ones: a hostile sender cannot grow the label space.
const OTHER: &str = "other";

/// Index of a hook in the per-hook arrays; `None` (no hook, another kind) is the last slot.
fn hook_index(hook: Option<Hook>) -> usize {
    hook.map_or(Hook::ALL.len(), |h| h as usize)
}

/// The label of slot `i` of a per-hook array.
fn hook_label(i: usize) -> &'static str {
    Hook::ALL.get(i).map_or(OTHER, |h| h.name())
}

/// Slots of the per-hook arrays: the hooks, then [`OTHER`].
const HOOK_SLOTS: usize = Hook::ALL.len() + 1;

/// Statuses counted by their number; any other counts as `other` (the last slot).
const STATUSES: [u16; 13] = [
    200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 503, 505, 0,
];

/// Why a request or connection was not stored as a new event, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A path that is no hook, or a wrong token (404).
    NotFound,
    /// Not a POST to a hook (405).
    MethodNotAllowed,
    /// The request head did not arrive in time.
    HeadTimeout,
    /// Malformed framing (400).
    Framing,
    /// Over `max_body_bytes` (413).
    BodyTooLarge,
    /// Over the head, header or target limits (431, 414).
    HeadTooLarge,
    /// A transfer coding, expectation or version not supported (501, 417, 505).
    Unsupported,
    /// The writer's queue was full (503).
    QueueFull,
    /// The commit took longer than `commit_timeout` (503).
    CommitTimeout,
    /// The commit failed (503).
    CommitFailed,
    /// Received during shutdown (503).
    ShuttingDown,
    /// Free disk below the floor (503).
    DiskLow,
    /// A peer outside `allow_from`, closed unread.
    DeniedPeer,
    /// The body did not arrive in time; closed without an answer.
    BodyTimeout,
    /// Kept in quarantine, answered 200.
    Quarantined,
    /// A retry of a stored event, answered 200.
    Duplicate,
}

impl Rejection {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Rejection; 16] = [
        Rejection::NotFound,
        Rejection::MethodNotAllowed,
        Rejection::HeadTimeout,
        Rejection::Framing,
        Rejection::BodyTooLarge,
        Rejection::HeadTooLarge,
        Rejection::Unsupported,
        Rejection::QueueFull,
        Rejection::CommitTimeout,
        Rejection::CommitFailed,
        Rejection::ShuttingDown,
        Rejection::DiskLow,
        Rejection::DeniedPeer,
        Rejection::BodyTimeout,
        Rejection::Quarantined,
        Rejection::Duplicate,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::HeadTimeout => "head_timeout",
            Rejection::Framing => "framing",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::HeadTooLarge => "head_too_large",
            Rejection::Unsupported => "unsupported",
            Rejection::QueueFull => "queue_full",
            Rejection::CommitTimeout => "commit_timeout",
            Rejection::CommitFailed => "commit_failed",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::DiskLow => "disk_low",
            Rejection::DeniedPeer => "denied_peer",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Quarantined => "quarantined",
            Rejection::Duplicate => "duplicate",
        }
    }
}

/// Upper bounds of the commit-latency histogram, seconds: fsync on SSDs is 0.1-2 ms, on SD
/// cards 5-50 ms; past a second something is wrong.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of the batch-size histogram, events per commit.
/// Download time of one recording, in seconds.
const DOWNLOAD_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram with fixed buckets, lock-free.
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    /// Sum in micro-units, to keep it an integer atomic.
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub(crate) fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// The sum of what was observed, for a histogram of whole numbers (events per commit).
    pub fn sum_whole(&self) -> u64 {
        self.sum_micros.load(Ordering::Relaxed) / 1_000_000
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The bucket, sum and count lines, with `labels` (`a="b"`, or empty) on each.
    pub(crate) fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, braces) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

/// The gateway's counters and gauges.
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; HOOK_SLOTS],
    events: [AtomicU64; HOOK_SLOTS],
    rejections: [AtomicU64; Rejection::ALL.len()],
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Flushes to disk.
    pub fsyncs: AtomicU64,
    /// Commits that failed.
    pub failed_commits: AtomicU64,
    /// Time to write and commit one batch.
    pub commit_seconds: Histogram<12>,
    /// Events per commit.
    pub batch_events: Histogram<11>,
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Failed accepts.
    pub accept_errors: AtomicU64,
    /// Client connections open now (a gauge: the listener adds, the connection's end takes).
    pub open_connections: AtomicU64,
    /// Connections closed because their code panicked.
    pub panics: AtomicU64,
    /// Events deleted by retention.
    pub pruned_events: AtomicU64,
    /// Gauges refreshed by the writer's housekeeping.
    pub db_used_bytes: AtomicU64,
    /// The LMDB map's current size.
    pub map_bytes: AtomicU64,
    /// The most the map may grow to.
    pub map_max_bytes: AtomicU64,
    /// Free bytes on the data filesystem.
    pub disk_free_bytes: AtomicU64,
    /// Zero-filled bytes of the data file past the data.
    pub file_headroom_bytes: AtomicU64,
    /// Milliseconds since the epoch of the last successful commit.
    pub last_commit_ms: AtomicU64,
    /// Bytes of the writer's in-memory dedup table.
    pub dedup_memory_bytes: AtomicU64,
    /// How long ago the oldest event the dedup table remembers was stored.
    pub dedup_reach_seconds: AtomicU64,
    /// Committed events not filed in the call index yet.
    pub calls_unfiled: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (bad records, no shared protocol, no certificate).
    pub tls_handshake_failures: AtomicU64,
    /// TLS handshakes cut at `handshake_timeout`.
    pub tls_handshake_timeouts: AtomicU64,
    /// Plain HTTP refused: on the TLS port, or a non-challenge request on `http_redirect`.
    pub tls_plain_refused: AtomicU64,
    /// ACME validations answered (`tls-alpn-01` handshakes, `http-01` requests).
    pub tls_challenges_answered: AtomicU64,
    /// Certificates obtained by ACME.
    pub tls_certificates_issued: AtomicU64,
    /// ACME orders that failed (each is retried with backoff).
    pub tls_renewal_failures: AtomicU64,
    /// Certificate files reloaded.
    pub tls_reloads: AtomicU64,
    /// Certificate file reloads refused (the current certificate was kept).
    pub tls_reload_failures: AtomicU64,
    /// Recordings on the work list (pending, or failed with a next try): set by the writer.
    pub archive_pending: AtomicU64,
    /// Age in seconds of the oldest recording on the work list; 0 when none.
    pub archive_oldest_pending_seconds: AtomicU64,
    /// Downloads running now.
    pub archive_in_flight: AtomicU64,
    /// 1 while archiving is paused for disk room or the quota.
    pub archive_paused: AtomicU64,
    /// Bytes of the archive's files.
    pub archive_bytes: AtomicU64,
    /// Bytes downloaded.
    pub archive_bytes_fetched: AtomicU64,
    /// Outcomes of downloads, by the state they led to (`failed` split by a next try).
    archive_outcomes: [AtomicU64; ARCHIVE_OUTCOMES.len()],
    /// Time per download.
    pub archive_download_seconds: Histogram<10>,
    /// The forwarding destinations' series.
    pub forward: crate::forward::metrics::Registry,
    /// Each alert rule's name and whether it is firing, in the config's order.
    alerts: std::sync::Mutex<Vec<(String, bool)>>,
    /// Alert notifications delivered and failed tries.
    alert_notifications: [AtomicU64; 2],
}

/// The `outcome` label values of `didgate_recordings_total`.
const ARCHIVE_OUTCOMES: [&str; 7] = [
    "fetched",
    "suspicious",
    "retrying",
    "failed",
    "expired",
    "gone",
    "pending",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            batch_events: Histogram::new(BATCH_BUCKETS),
            connections_accepted: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            pruned_events: AtomicU64::new(0),
            db_used_bytes: AtomicU64::new(0),
            map_bytes: AtomicU64::new(0),
            map_max_bytes: AtomicU64::new(0),
            disk_free_bytes: AtomicU64::new(0),
            file_headroom_bytes: AtomicU64::new(0),
            last_commit_ms: AtomicU64::new(0),
            dedup_memory_bytes: AtomicU64::new(0),
            calls_unfiled: AtomicU64::new(0),
            dedup_reach_seconds: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_handshake_timeouts: AtomicU64::new(0),
            tls_plain_refused: AtomicU64::new(0),
            tls_challenges_answered: AtomicU64::new(0),
            tls_certificates_issued: AtomicU64::new(0),
            tls_renewal_failures: AtomicU64::new(0),
            tls_reloads: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
            archive_pending: AtomicU64::new(0),
            archive_oldest_pending_seconds: AtomicU64::new(0),
            archive_in_flight: AtomicU64::new(0),
            archive_paused: AtomicU64::new(0),
            archive_bytes: AtomicU64::new(0),
            archive_bytes_fetched: AtomicU64::new(0),
            archive_outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            archive_download_seconds: Histogram::new(DOWNLOAD_BUCKETS),
            forward: Default::default(),
            alerts: std::sync::Mutex::new(Vec::new()),
            alert_notifications: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

/// Writes one unlabelled series per row: its HELP and TYPE (`counter` or `gauge`) lines, then
/// its value.
fn series(o: &mut String, kind: &str, rows: &[(&str, &str, u64)]) {
    for (name, help, v) in rows {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// The rejection an answer stands for, if it is one.
fn rejection_of(answer: &Answer) -> Option<Rejection> {
    use crate::ingest::http::Error as H;
    Some(match answer {
        Answer::Stored | Answer::Continue => return None,
        Answer::Duplicate => Rejection::Duplicate,
        Answer::Quarantined => Rejection::Quarantined,
        Answer::NotFound => Rejection::NotFound,
        Answer::MethodNotAllowed => Rejection::MethodNotAllowed,
        Answer::Framing(H::BodyTooLarge) => Rejection::BodyTooLarge,
        Answer::Framing(H::HeadTooLarge | H::TooManyHeaders | H::UriTooLong) => {
            Rejection::HeadTooLarge
        }
        Answer::Framing(
            H::UnsupportedTransferEncoding | H::UnsupportedExpectation | H::Version,
        ) => Rejection::Unsupported,
        Answer::Framing(_) => Rejection::Framing,
        Answer::Unavailable(u) => match u {
            Unavailable::QueueFull => Rejection::QueueFull,
            Unavailable::CommitTimeout => Rejection::CommitTimeout,
            Unavailable::CommitFailed => Rejection::CommitFailed,
            Unavailable::ShuttingDown => Rejection::ShuttingDown,
            Unavailable::DiskLow => Rejection::DiskLow,
        },
    })
}

impl Metrics {
    /// Counts one download's outcome: the state it led to, `retrying` for a failure with a
    /// next try.
    pub fn archive_outcome(&self, state: crate::archive::record::State, retrying: bool) {
        let name = if retrying { "retrying" } else { state.name() };
        if let Some(i) = ARCHIVE_OUTCOMES.iter().position(|o| *o == name) {
            self.archive_outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one answered request, by the hook it was for (`None`: no hook).
    pub fn answered(&self, hook: Option<Hook>, answer: &Answer) {
        let status = answer.status().0;
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[hook_index(hook)][i].fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = rejection_of(answer) {
            self.reject(reason);
        }
    }

    /// Counts a refusal by reason.
    pub fn reject(&self, reason: Rejection) {
        self.rejections[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stored event of `kind`.
    pub fn stored(&self, kind: &str) {
        let i = hook_index(Hook::from_name(kind.as_bytes()));
        self.events[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals of one reason so far.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejections[reason as usize].load(Ordering::Relaxed)
    }

    /// Records one successful commit of `events` events that took `took`.
    pub fn committed(&self, events: usize, took: Duration, fsynced: bool, now_ms: i64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if fsynced {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.commit_seconds.observe(took.as_secs_f64());
        self.batch_events.observe(events as f64);
        self.last_commit_ms
            .store(u64::try_from(now_ms).unwrap_or(0), Ordering::Relaxed);
    }

    /// Replaces the alert gauges (the runner, after each evaluation).
    pub fn set_alerts(&self, rules: Vec<(String, bool)>) {
        if let Ok(mut a) = self.alerts.lock() {
            *a = rules;
        }
    }

    /// Counts one alert notification try.
    pub fn count_alert_notification(&self, delivered: bool) {
        self.alert_notifications[usize::from(!delivered)].fetch_add(1, Ordering::Relaxed);
    }

    fn render_alerts(&self, o: &mut String) {
        let rules = self.alerts.lock().map(|a| a.clone()).unwrap_or_default();
        let _ = writeln!(
            o,
            "# HELP didgate_alert_firing 1 while the alert rule is firing.\n# TYPE didgate_alert_firing gauge"
        );
        for (name, firing) in &rules {
            // Rule names are 1 to 64 of A-Z a-z 0-9 _ . - (checked at load): no escaping needed.
            let _ = writeln!(
                o,
                "didgate_alert_firing{{rule=\"{name}\"}} {}",
                u8::from(*firing)
            );
        }
        let _ = writeln!(
            o,
            "# HELP didgate_alert_notifications_total Alert notification tries, by result.\n# TYPE didgate_alert_notifications_total counter"
        );
        for (i, result) in ["delivered", "failed"].iter().enumerate() {
            let n = self.alert_notifications[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "didgate_alert_notifications_total{{result=\"{result}\"}} {n}"
            );
        }
    }

    /// The Prometheus text exposition, with the queue depth and the writer's heartbeat read
    /// at scrape time.
    pub fn render(&self, queue_depth: usize, health: &Health) -> String {
        let mut o = String::with_capacity(8192);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP didgate_requests_total Requests answered, by hook and status.\n# TYPE didgate_requests_total counter"
        );
        for (r, per_status) in self.requests.iter().enumerate() {
            let route = hook_label(r);
            for (status, n) in STATUSES.iter().zip(per_status) {
                let n = load(n);
                if n > 0 || (*status == 200 && r < Hook::ALL.len()) {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        o,
                        "didgate_requests_total{{hook=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            o,
            "# HELP didgate_events_stored_total Events committed, by kind (kinds beyond the three documented count as other).\n# TYPE didgate_events_stored_total counter"
        );
        for (i, n) in self.events.iter().enumerate() {
            let kind = hook_label(i);
            let _ = writeln!(
                o,
                "didgate_events_stored_total{{kind=\"{kind}\"}} {}",
                load(n)
            );
        }
        let _ = writeln!(
            o,
            "# HELP didgate_rejections_total Requests or connections not stored as new events, by reason (duplicates and quarantined bodies were still answered 200).\n# TYPE didgate_rejections_total counter"
        );
        for reason in Rejection::ALL {
            let _ = writeln!(
                o,
                "didgate_rejections_total{{reason=\"{}\"}} {}",
                reason.name(),
                self.rejected(reason)
            );
        }
        let counters: [(&str, &str, u64); 9] = [
            (
                "didgate_commits_total",
                "Write transactions committed.",
                load(&self.commits),
            ),
            (
                "didgate_fsyncs_total",
                "Flushes of the data file to disk: in fsync mode one per commit, plus one when the \
                 queue runs empty after a commit (it puts that commit's meta page on disk); in \
                 interval mode one per interval.",
                load(&self.fsyncs),
            ),
            (
                "didgate_commit_failures_total",
                "Commits that failed; their requests were answered 503.",
                load(&self.failed_commits),
            ),
            (
                "didgate_connections_accepted_total",
                "Connections accepted.",
                load(&self.connections_accepted),
            ),
            (
                "didgate_accept_errors_total",
                "Failed accepts (out of descriptors and the like).",
                load(&self.accept_errors),
            ),
            (
                "didgate_connection_panics_total",
                "Connections closed because their code panicked.",
                load(&self.panics),
            ),
            (
                "didgate_pruned_events_total",
                "Events deleted by retention.",
                load(&self.pruned_events),
            ),
            (
                "didgate_duplicates_total",
                "Retries recognised as duplicates and not stored again.",
                self.rejected(Rejection::Duplicate),
            ),
            (
                "didgate_quarantined_total",
                "Undecodable bodies kept in quarantine.",
                self.rejected(Rejection::Quarantined),
            ),
        ];
        series(&mut o, "counter", &counters);
        self.commit_seconds.render(
            &mut o,
            "didgate_commit_seconds",
            "Time to write and commit one batch.",
        );
        self.batch_events
            .render(&mut o, "didgate_batch_events", "Events per commit.");
        let gauges: [(&str, &str, u64); 12] = [
            (
                "didgate_queue_depth",
                "Events waiting for the writer.",
                queue_depth as u64,
            ),
            (
                "didgate_open_connections",
                "Open client connections.",
                load(&self.open_connections),
            ),
            (
                "didgate_db_used_bytes",
                "Bytes of the LMDB map in use.",
                load(&self.db_used_bytes),
            ),
            (
                "didgate_map_bytes",
                "Current LMDB map size.",
                load(&self.map_bytes),
            ),
            (
                "didgate_map_max_bytes",
                "Most the map may grow to.",
                load(&self.map_max_bytes),
            ),
            (
                "didgate_disk_free_bytes",
                "Free bytes on the data directory's filesystem.",
                load(&self.disk_free_bytes),
            ),
            (
                "didgate_file_headroom_bytes",
                "Zero-filled bytes of the data file past the data, ready for commits.",
                load(&self.file_headroom_bytes),
            ),
            (
                "didgate_last_commit_timestamp_seconds",
                "When the last commit succeeded (Unix time).",
                load(&self.last_commit_ms) / 1000,
            ),
            (
                "didgate_dedup_memory_bytes",
                "Bytes of the in-memory table that recognises retries.",
                load(&self.dedup_memory_bytes),
            ),
            (
                "didgate_calls_unfiled",
                "Committed events not filed in the call index yet (queries decode them from \
                 their bodies); filed whenever ingest is idle.",
                load(&self.calls_unfiled),
            ),
            (
                "didgate_dedup_reach_seconds",
                "Age of the oldest event the dedup table remembers: retries older than this \
                 (or than dedup_window) are stored again.",
                load(&self.dedup_reach_seconds),
            ),
            (
                "didgate_writer_heartbeat_timestamp_seconds",
                "When the writer loop last ran (Unix time).",
                health.heartbeat_ms() / 1000,
            ),
        ];
        series(&mut o, "gauge", &gauges);
        if let Some(not_after) = health.tls_not_after() {
            self.render_tls(&mut o, not_after);
        }
        self.render_archive(&mut o);
        self.forward.render(&mut o);
        self.render_alerts(&mut o);
        o
    }

    /// The recordings archive's series.
    fn render_archive(&self, o: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let name = "didgate_recordings_total";
        let _ = writeln!(
            o,
            "# HELP {name} Recording downloads by outcome (retrying: failed, with a next try).\n# TYPE {name} counter"
        );
        for (i, outcome) in ARCHIVE_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}{{outcome=\"{outcome}\"}} {}",
                load(&self.archive_outcomes[i])
            );
        }
        let name = "didgate_recordings_fetched_bytes_total";
        let _ = writeln!(
            o,
            "# HELP {name} Bytes of recordings downloaded.\n# TYPE {name} counter\n{name} {}",
            load(&self.archive_bytes_fetched)
        );
        self.archive_download_seconds.render(
            o,
            "didgate_recording_download_seconds",
            "Time to download one recording.",
        );
        let gauges = [
            (
                "didgate_recordings_pending",
                "Recordings waiting for a download (pending, or failed with a next try).",
                load(&self.archive_pending),
            ),
            (
                "didgate_recordings_oldest_pending_seconds",
                "Age of the oldest recording waiting for a download (0 when none).",
                load(&self.archive_oldest_pending_seconds),
            ),
            (
                "didgate_recordings_in_flight",
                "Recording downloads running now.",
                load(&self.archive_in_flight),
            ),
            (
                "didgate_recordings_paused",
                "1 while archiving is paused for disk room or max_archive_bytes.",
                load(&self.archive_paused),
            ),
            (
                "didgate_recordings_archive_bytes",
                "Bytes of the archived recordings on disk.",
                load(&self.archive_bytes),
            ),
        ];
        series(o, "gauge", &gauges);
    }

    /// The TLS block, present only when TLS is on (a missing expiry must not read as 1970).
    fn render_tls(&self, o: &mut String, not_after: Option<i64>) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "didgate_tls_handshakes_total",
                "TLS handshakes completed.",
                load(&self.tls_handshakes),
            ),
            (
                "didgate_tls_handshake_failures_total",
                "TLS handshakes that failed (bad records, no shared protocol, no certificate).",
                load(&self.tls_handshake_failures),
            ),
            (
                "didgate_tls_handshake_timeouts_total",
                "TLS handshakes cut at handshake_timeout.",
                load(&self.tls_handshake_timeouts),
            ),
            (
                "didgate_tls_plain_refused_total",
                "Plain HTTP refused: on the TLS port, or other than an ACME challenge on http_redirect.",
                load(&self.tls_plain_refused),
            ),
            (
                "didgate_tls_acme_challenges_answered_total",
                "ACME validations answered (tls-alpn-01 handshakes, http-01 requests).",
                load(&self.tls_challenges_answered),
            ),
            (
                "didgate_tls_certificates_issued_total",
                "Certificates obtained by ACME.",
                load(&self.tls_certificates_issued),
            ),
            (
                "didgate_tls_renewal_failures_total",
                "ACME orders that failed (the current certificate is kept; retried with backoff).",
                load(&self.tls_renewal_failures),
            ),
            (
                "didgate_tls_reloads_total",
                "Certificate files reloaded.",
                load(&self.tls_reloads),
            ),
            (
                "didgate_tls_reload_failures_total",
                "Certificate file reloads refused (the current certificate was kept).",
                load(&self.tls_reload_failures),
            ),
        ];
        series(o, "counter", &counters);
        let name = "didgate_tls_certificate_expiry_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} When the served certificate expires (Unix time; absent while there is none).\n# TYPE {name} gauge"
        );
        if let Some(t) = not_after {
            let _ = writeln!(o, "{name} {t}");
        }
        let name = "didgate_tls_certificate_present";
        let _ = writeln!(
            o,
            "# HELP {name} 1 when a certificate is served, 0 while ACME has none yet.\n# TYPE {name} gauge\n{name} {}",
            u8::from(not_after.is_some())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_closed_label_sets() {
        let m = Metrics::default();
        m.answered(Some(Hook::Cdr), &Answer::Stored);
        m.answered(None, &Answer::NotFound);
        m.open_connections.store(2, Ordering::Relaxed);
        m.stored("cdr");
        m.stored("voicemail");
        m.committed(3, Duration::from_micros(1500), true, 5_000);
        let text = m.render(7, &Health::default());
        for line in [
            "didgate_requests_total{hook=\"cdr\",status=\"200\"} 1",
            "didgate_requests_total{hook=\"other\",status=\"404\"} 1",
            "didgate_events_stored_total{kind=\"other\"} 1",
            "didgate_rejections_total{reason=\"not_found\"} 1",
            "didgate_commit_seconds_bucket{le=\"0.002\"} 1",
            "didgate_commit_seconds_bucket{le=\"0.001\"} 0",
            "didgate_batch_events_bucket{le=\"4\"} 1",
            "didgate_batch_events_count 1",
            "didgate_fsyncs_total 1",
            "didgate_queue_depth 7",
            "didgate_open_connections 2",
            "didgate_last_commit_timestamp_seconds 5",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }
}
