//! What "healthy" and "ready" mean, computed in one place from flags the stages set: the
//! writer's heartbeat, low disk, a failing commit, shutdown.
//!
//! `/readyz` (the admin listener) and systemd's watchdog (`serve`) both ask [`Health`]; the
//! connections read the same flags to answer 503 fast.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::timestamp;

/// The writer loop passes at least every 100 ms, idle or not; a heartbeat older than this
/// means it is wedged (a commit stuck in fsync, a deadlock): not ready, and no watchdog ping.
pub const WRITER_STALL: Duration = Duration::from_secs(5);

/// Conditions the connections, `/readyz` and the watchdog must know about.
#[derive(Debug)]
pub struct Health {
    /// SIGTERM or SIGINT was received: new requests get 503.
    shutting_down: AtomicBool,
    /// Free disk is below `min_free_disk_bytes`: new events are refused with 503.
    pub disk_low: AtomicBool,
    /// The last commit failed.
    pub commit_failing: AtomicBool,
    /// Milliseconds since the epoch of the writer loop's last pass (idle ticks included).
    writer_heartbeat_ms: AtomicU64,
    /// The served TLS certificate's expiry (Unix seconds); [`TLS_OFF`] without TLS,
    /// [`TLS_NO_CERTIFICATE`] while ACME has none yet.
    tls_not_after: AtomicI64,
}

impl Default for Health {
    /// Alive from the start: `/readyz` and the watchdog read the heartbeat before the writer's
    /// first pass.
    fn default() -> Self {
        let health = Health {
            shutting_down: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            commit_failing: AtomicBool::new(false),
            writer_heartbeat_ms: AtomicU64::new(0),
            tls_not_after: AtomicI64::new(TLS_OFF),
        };
        health.beat();
        health
    }
}

impl Health {
    /// The writer loop passed now.
    pub fn beat(&self) {
        let now = u64::try_from(timestamp::now_ms()).unwrap_or(0);
        self.writer_heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// When the writer loop last passed, milliseconds since the epoch.
    pub fn heartbeat_ms(&self) -> u64 {
        self.writer_heartbeat_ms.load(Ordering::Relaxed)
    }

    /// How long the writer loop has not passed.
    pub fn writer_silent_for(&self) -> Duration {
        let now = u64::try_from(timestamp::now_ms()).unwrap_or(0);
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms()))
    }

    /// Whether the writer loop has been silent for longer than `limit`: [`WRITER_STALL`] for
    /// readiness; the watchdog uses half systemd's `WatchdogSec`, so that a wedged writer stops
    /// the pings within one ping period and systemd restarts the service at `WatchdogSec`.
    pub fn writer_stalled(&self, limit: Duration) -> bool {
        self.writer_silent_for() > limit
    }

    /// Marks the gateway as shutting down (new requests get 503).
    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Whether free disk is below the floor.
    pub fn is_disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Records the served certificate's expiry (Unix seconds); `None`: TLS is on but there is
    /// no certificate yet.
    pub fn set_tls_not_after(&self, not_after: Option<i64>) {
        let v = not_after.map_or(TLS_NO_CERTIFICATE, |t| t.max(TLS_NO_CERTIFICATE + 1));
        self.tls_not_after.store(v, Ordering::Relaxed);
    }

    /// The served certificate's expiry: `None` without TLS, `Some(None)` with no certificate.
    pub fn tls_not_after(&self) -> Option<Option<i64>> {
        match self.tls_not_after.load(Ordering::Relaxed) {
            TLS_OFF => None,
            TLS_NO_CERTIFICATE => Some(None),
            t => Some(Some(t)),
        }
    }

    /// Why the gateway cannot take events now; empty when it is ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        match self.tls_not_after() {
            Some(None) => why.push("no TLS certificate yet (the ACME order has not succeeded)"),
            Some(Some(t)) if t <= crate::timestamp::now_ms() / 1000 => {
                why.push("the TLS certificate has expired");
            }
            _ => {}
        }
        if self.is_shutting_down() {
            why.push("shutting down");
        }
        if self.is_disk_low() {
            why.push("free disk space below min_free_disk_bytes");
        }
        if self.commit_failing.load(Ordering::Relaxed) {
            why.push("the last commit failed");
        }
        if self.writer_stalled(WRITER_STALL) {
            why.push("the writer has not run for over 5 s");
        }
        why
    }
}

/// `tls_not_after` without TLS.
const TLS_OFF: i64 = i64::MIN;
/// `tls_not_after` while TLS is on without a certificate.
const TLS_NO_CERTIFICATE: i64 = i64::MIN + 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_a_flag_or_a_silent_writer_says_otherwise() {
        let h = Health::default();
        assert!(h.not_ready().is_empty());
        h.disk_low.store(true, Ordering::Relaxed);
        assert_eq!(h.not_ready(), ["free disk space below min_free_disk_bytes"]);
        h.disk_low.store(false, Ordering::Relaxed);
        h.writer_heartbeat_ms.store(0, Ordering::Relaxed);
        assert!(h.writer_stalled(WRITER_STALL));
        assert_eq!(h.not_ready(), ["the writer has not run for over 5 s"]);
        h.beat();
        h.set_tls_not_after(None);
        assert_eq!(
            h.not_ready(),
            ["no TLS certificate yet (the ACME order has not succeeded)"]
        );
        h.set_tls_not_after(Some(1));
        assert_eq!(h.not_ready(), ["the TLS certificate has expired"]);
        h.set_tls_not_after(Some(crate::timestamp::now_ms() / 1000 + 60));
        assert!(h.not_ready().is_empty());
        h.start_shutdown();
        assert_eq!(h.not_ready(), ["shutting down"]);
    }
}
