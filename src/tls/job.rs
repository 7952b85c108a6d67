//! The `didgate-tls` thread: keeps the served certificate current without interrupting
//! serving. With files, it reloads them when they change (checked every `reload_interval`)
//! and on SIGHUP; a file that does not load is reported and the current certificate kept.
//! With ACME, it orders a certificate when none is stored, renews two thirds into its life,
//! and after a failure keeps the current certificate and retries with a doubling backoff.
//!
//! Handshakes never wait for this thread: it swaps the certificate in the resolver whole.
//! Shutdown does not wait for it either: an order in progress holds no state of the store,
//! and its files are written atomically.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::tls::certificate::Loaded;
use crate::tls::resolver::Resolver;
use crate::tls::{Settings, Source, TLS_DIR, acme};

enum Command {
    Reload,
    Stop,
}

/// Handle on the running job.
pub struct Job {
    tx: Sender<Command>,
}

impl Job {
    /// Starts the thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(
        settings: Settings,
        data_dir: &Path,
        tls: &crate::tls::Tls,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> std::io::Result<Job> {
        let resolver = tls.resolver.clone();
        let installed = tls.installed.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let state = State {
            resolver,
            metrics,
            health,
        };
        let tls_dir = data_dir.join(TLS_DIR);
        std::thread::Builder::new()
            .name("didgate-tls".into())
            .spawn(move || match settings.source {
                Source::Files { cert, key } => {
                    watch_files(&rx, &state, &cert, &key, settings.reload_interval);
                }
                Source::Acme(acme) => renew(&rx, &state, &tls_dir, &acme, installed),
            })?;
        Ok(Job { tx })
    }

    /// Reloads certificate files now (SIGHUP).
    pub fn reload(&self) {
        let _ = self.tx.send(Command::Reload);
    }

    /// Asks the thread to end; does not wait for an order in progress.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

struct State {
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl State {
    fn install(&self, loaded: &Loaded, how: &str) {
        crate::tls::install(&self.resolver, &self.health, loaded, how);
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn watch_files(rx: &Receiver<Command>, state: &State, cert: &Path, key: &Path, every: Duration) {
    let stamp = || (modified(cert), modified(key));
    let mut seen = stamp();
    loop {
        let forced = match rx.recv_timeout(every) {
            Ok(Command::Reload) => true,
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => false,
        };
        let now = stamp();
        if !forced && now == seen {
            continue;
        }
        // Remembered whatever the outcome: a bad file is reported once per change, and a
        // key written a moment after its certificate is a change of its own.
        seen = now;
        match crate::tls::certificate::load(cert, key) {
            Ok(loaded) => {
                state.metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
                state.install(&loaded, "certificate files reloaded");
            }
            Err(e) => {
                state
                    .metrics
                    .tls_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                crate::ops::log::error(format_args!(
                    "certificate reload failed, still serving the current certificate: {e}"
                ));
            }
        }
    }
}

fn unix_now() -> i64 {
    crate::timestamp::now_ms() / 1000
}

/// Orders and renews; `current` is the certificate installed at start (the stored one, when
/// it was still good).
fn renew(
    rx: &Receiver<Command>,
    state: &State,
    tls_dir: &Path,
    settings: &acme::Settings,
    mut current: Option<Loaded>,
) {
    let mut failures = 0u32;
    let mut next = current.as_ref().map_or(0, Loaded::renew_at);
    loop {
        let wait = u64::try_from(next.saturating_sub(unix_now())).unwrap_or(0);
        if wait > 0 {
            match rx.recv_timeout(Duration::from_secs(wait)) {
                Ok(Command::Reload) | Err(RecvTimeoutError::Timeout) => continue,
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Ok(Command::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) =
            rx.try_recv()
        {
            return;
        }
        let what = if current.is_some() {
            "renewal"
        } else {
            "first certificate"
        };
        crate::ops::log::info(format_args!(
            "ACME: ordering a certificate for {} from {} ({what})",
            settings.domains.join(", "),
            settings.directory
        ));
        match acme::obtain(tls_dir, settings, &state.resolver) {
            Ok(loaded) => {
                failures = 0;
                state
                    .metrics
                    .tls_certificates_issued
                    .fetch_add(1, Ordering::Relaxed);
                state.install(&loaded, "ACME certificate issued");
                next = loaded.renew_at();
                current = Some(loaded);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state
                    .metrics
                    .tls_renewal_failures
                    .fetch_add(1, Ordering::Relaxed);
                let delay = crate::backoff::doubling(
                    settings.renewal_retry,
                    failures,
                    acme::RENEWAL_RETRY_MAX,
                );
                let keeping = match &current {
                    Some(c) => format!(
                        "still serving certificate {} (expires {})",
                        c.serial,
                        crate::timestamp::format_ms(c.not_after.saturating_mul(1000))
                    ),
                    None => "no certificate to serve yet".to_string(),
                };
                crate::ops::log::error(format_args!(
                    "ACME {what} failed (attempt {failures}): {e}; {keeping}; retrying in {}s",
                    delay.as_secs()
                ));
                next =
                    unix_now().saturating_add(i64::try_from(delay.as_secs()).unwrap_or(i64::MAX));
            }
        }
    }
}
