//! Per-destination series: lag, deliveries, failed attempts by class, dead letters, attempt
//! latency, paused. Destinations are the operator's configured names (at most
//! [`super::MAX_DESTINATIONS`]), so the label space is closed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::schedule::Class;
use crate::ops::metrics::Histogram;

/// One attempt's time, in seconds.
const ATTEMPT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// One destination's series.
pub struct DestMetrics {
    /// Events delivered (2xx, or a NATS PubAck).
    pub delivered: AtomicU64,
    /// Of those, NATS PubAcks saying the stream already had the message.
    pub duplicates: AtomicU64,
    /// Failed attempts, by [`Class`].
    pub failed: [AtomicU64; Class::ALL.len()],
    /// Events given up on.
    pub dead_total: AtomicU64,
    /// Events in the dead letters now.
    pub dead: AtomicU64,
    /// Events in the retry set now.
    pub retrying: AtomicU64,
    /// Attempts under way now.
    pub in_flight: AtomicU64,
    /// Stored events after the destination's cursor.
    pub lag_events: AtomicU64,
    /// Age of the oldest event not yet delivered, seconds.
    pub lag_seconds: AtomicU64,
    /// 1 while paused.
    pub paused: AtomicU64,
    /// 1 while held after failures in a row (the destination looks down).
    pub held: AtomicU64,
    /// Time of one attempt.
    pub attempt_seconds: Histogram<10>,
}

impl Default for DestMetrics {
    fn default() -> Self {
        DestMetrics {
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failed: std::array::from_fn(|_| AtomicU64::new(0)),
            dead_total: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
            lag_seconds: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            held: AtomicU64::new(0),
            attempt_seconds: Histogram::new(ATTEMPT_BUCKETS),
        }
    }
}

impl DestMetrics {
    /// Counts a failed attempt.
    pub fn failed(&self, class: Class) {
        if let Some(i) = Class::ALL.iter().position(|c| *c == class) {
            self.failed[i].fetch_add(1, Relaxed);
        }
    }
}

/// Every destination's series, by name. A destination keeps its series across a restart of
/// its dispatcher (a reload), so counters never go back.
#[derive(Default)]
pub struct Registry {
    dests: Mutex<BTreeMap<String, Arc<DestMetrics>>>,
}

impl Registry {
    /// The series of `dest`, made on first use.
    pub fn get(&self, dest: &str) -> Arc<DestMetrics> {
        let mut m = self
            .dests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(dest.to_string()).or_default().clone()
    }

    /// Forgets a removed destination.
    pub fn remove(&self, dest: &str) {
        let mut m = self
            .dests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(dest);
    }

    /// Writes every destination's series (nothing when there is none).
    pub fn render(&self, o: &mut String) {
        let dests: Vec<(String, Arc<DestMetrics>)> = {
            let m = self
                .dests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if dests.is_empty() {
            return;
        }
        type Get = fn(&DestMetrics) -> u64;
        let rows: [(&str, &str, &str, Get); 10] = [
            (
                "didgate_forward_delivered_total",
                "counter",
                "Events delivered (2xx) per destination.",
                |m| m.delivered.load(Relaxed),
            ),
            (
                "didgate_forward_duplicates_total",
                "counter",
                "Events a NATS destination's stream already had (PubAck duplicate), counted as delivered.",
                |m| m.duplicates.load(Relaxed),
            ),
            (
                "didgate_forward_dead_letters_total",
                "counter",
                "Events given up on after max_age per destination.",
                |m| m.dead_total.load(Relaxed),
            ),
            (
                "didgate_forward_dead_letters",
                "gauge",
                "Events in the dead letters now per destination.",
                |m| m.dead.load(Relaxed),
            ),
            (
                "didgate_forward_retrying",
                "gauge",
                "Events waiting for another try per destination.",
                |m| m.retrying.load(Relaxed),
            ),
            (
                "didgate_forward_in_flight",
                "gauge",
                "Delivery attempts under way per destination.",
                |m| m.in_flight.load(Relaxed),
            ),
            (
                "didgate_forward_lag_events",
                "gauge",
                "Stored events after the destination's cursor (not yet attempted).",
                |m| m.lag_events.load(Relaxed),
            ),
            (
                "didgate_forward_lag_seconds",
                "gauge",
                "Age of the oldest event the destination has not yet been sent successfully (0 when none).",
                |m| m.lag_seconds.load(Relaxed),
            ),
            (
                "didgate_forward_paused",
                "gauge",
                "1 while the destination is paused (deliveries pause, or a 410 Gone).",
                |m| m.paused.load(Relaxed),
            ),
            (
                "didgate_forward_held",
                "gauge",
                "1 while the destination is left alone after failures in a row (probed on the retry schedule).",
                |m| m.held.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in rows {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (d, m) in &dests {
                let _ = writeln!(o, "{name}{{dest=\"{d}\"}} {}", get(m));
            }
        }
        let name = "didgate_forward_failed_attempts_total";
        let _ = writeln!(
            o,
            "# HELP {name} Failed delivery attempts per destination and class.\n# TYPE {name} counter"
        );
        for (d, m) in &dests {
            for (i, class) in Class::ALL.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{name}{{dest=\"{d}\",class=\"{}\"}} {}",
                    class.label(),
                    m.failed[i].load(Relaxed)
                );
            }
        }
        let name = "didgate_forward_attempt_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time of one delivery attempt per destination.\n# TYPE {name} histogram"
        );
        for (d, m) in &dests {
            m.attempt_seconds
                .render_series(o, name, &format!("dest=\"{d}\""));
        }
    }
}
