//! Alerts: `[[alert]]` rules evaluated by `serve` every `alert_interval` (a minute) over the
//! call index, with a log line, a gauge and a notification on each transition.
//!
//! [`rule`] judges (pure), [`state`] remembers (the file `DATA/alerts.json` that `didgate
//! alerts` reads), [`notify`] POSTs transitions with retries. The runner ([`Alerts`]) is one
//! thread at niceness 19 reading the store in short read transactions beside the writer: it
//! never writes the store and never waits on ingest, so a slow rule or a dead notify URL costs
//! ingest nothing.

pub mod notify;
pub mod rule;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::call::facts::Kind;
use crate::call::report::Recording;
use crate::call::zone::Zone;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use rule::Rule;
use state::{RuleState, Snapshot, Transition};

/// How often rules are evaluated by default (`alert_interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Most `[[alert]]` rules.
pub const MAX_RULES: usize = 64;

/// Default `window` of an `off_hours` rule.
pub const DEFAULT_OFF_HOURS_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Default `delay` of a `recording_missing` rule: didlogic sends recordings "typically within
/// 3 minutes", and archiving takes a few more.
pub const DEFAULT_RECORDING_DELAY: Duration = Duration::from_secs(15 * 60);

/// Default `window` of a `recording_missing` rule.
pub const DEFAULT_RECORDING_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Default `min_attempts` of an `asr_below` rule.
pub const DEFAULT_MIN_ATTEMPTS: u64 = 10;

/// How far past now a call's time may be and still count (a sender's clock ahead of ours).
pub const FUTURE_SLACK: Duration = Duration::from_secs(15 * 60);

/// The alert state file in the data directory.
pub fn state_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("alerts.json")
}

/// What the runner is told.
enum Control {
    Reload(Vec<Rule>, Option<String>),
    Stop,
}

/// The running alerts thread.
pub struct Alerts {
    control: Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
    notifier: notify::Notifier,
}

impl Alerts {
    /// Starts the runner (and its notifier) for `rules`; with no rules it only keeps the
    /// state file current, so a reload can add some.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(
        store: Arc<Store>,
        rules: Vec<Rule>,
        timezone: Option<String>,
        interval: Duration,
        data_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Alerts> {
        let notifier = notify::Notifier::start(metrics.clone())?;
        let (control, rx) = bounded(4);
        let outbox = notifier.sender();
        let thread = std::thread::Builder::new()
            .name("didgate-alerts".into())
            .spawn(move || {
                crate::ops::lower_priority(19);
                run(
                    &store, rules, timezone, interval, &data_dir, &metrics, &rx, &outbox,
                );
            })?;
        Ok(Alerts {
            control,
            thread: Some(thread),
            notifier,
        })
    }

    /// Replaces the rules (SIGHUP): a rule whose definition is unchanged keeps its state.
    pub fn reload(&self, rules: Vec<Rule>, timezone: Option<String>) {
        let _ = self.control.send(Control::Reload(rules, timezone));
    }

    /// Stops the runner, then the notifier (which gives pending notifications a moment).
    pub fn stop(mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.notifier.stop();
    }
}

fn zone_of(timezone: Option<&str>) -> Zone {
    Zone::resolve(None, timezone).unwrap_or_else(|e| {
        crate::ops::log::warn(format_args!("alerts: {e}; using UTC"));
        Zone::utc()
    })
}

#[allow(clippy::too_many_arguments)]
fn run(
    store: &Store,
    mut rules: Vec<Rule>,
    timezone: Option<String>,
    interval: Duration,
    data_dir: &std::path::Path,
    metrics: &Metrics,
    control: &Receiver<Control>,
    outbox: &Sender<notify::Message>,
) {
    let path = state_path(data_dir);
    let mut zone = zone_of(timezone.as_deref());
    // A restart keeps what was firing: no second "firing" for a condition already announced.
    let mut snapshot = Snapshot::load(&path).unwrap_or_default();
    snapshot.retain(&rules);
    loop {
        let now = crate::timestamp::now_ms();
        for r in &rules {
            let previous = snapshot.rules.get(&r.name).cloned();
            let outcome = evaluate(store, r, &zone, now);
            let finding = match outcome {
                Ok(Some(f)) => f,
                // Outside its hours: the rule keeps its state.
                Ok(None) => continue,
                Err(e) => {
                    crate::ops::log::warn_limited(
                        "alerts",
                        format_args!("alert {}: cannot read the store: {e}", r.name),
                    );
                    continue;
                }
            };
            let (st, transition) = RuleState::next(previous.as_ref(), r, &finding, now);
            if let Some(t) = transition {
                announce(r, &st, t, &zone, outbox);
            }
            snapshot.rules.insert(r.name.clone(), st);
        }
        // The index pages the rules read are the page cache's to keep, not this process's
        // resident memory.
        let _ = store.release_mapped_pages();
        snapshot.evaluated_at_ms = now;
        snapshot.interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        snapshot.timezone = zone.name().to_string();
        metrics.set_alerts(
            rules
                .iter()
                .map(|r| {
                    let firing = snapshot.rules.get(&r.name).is_some_and(|s| s.firing);
                    (r.name.clone(), firing)
                })
                .collect(),
        );
        if let Err(e) = snapshot.save(&path) {
            crate::ops::log::warn_limited(
                "alerts-state",
                format_args!("alerts: cannot write {}: {e}", path.display()),
            );
        }
        match control.recv_timeout(interval) {
            Ok(Control::Reload(new, tz)) => {
                zone = zone_of(tz.as_deref());
                // A changed rule starts again from "not firing".
                snapshot.rules.retain(|name, _| {
                    let old = rules.iter().find(|r| &r.name == name);
                    let new = new.iter().find(|r| &r.name == name);
                    matches!((old, new), (Some(a), Some(b)) if a == b)
                });
                rules = new;
            }
            Ok(Control::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// A transition: the log line, and the notification when the rule has a `notify_url`.
fn announce(
    r: &Rule,
    st: &RuleState,
    t: Transition,
    zone: &Zone,
    outbox: &Sender<notify::Message>,
) {
    match t {
        Transition::Firing => crate::ops::log::warn(format_args!(
            "alert {} ({}) firing: {}",
            r.name,
            r.check.type_name(),
            st.summary
        )),
        Transition::Cleared { fired_ms } => crate::ops::log::info(format_args!(
            "alert {} ({}) cleared after {}: {}",
            r.name,
            r.check.type_name(),
            humantime::format_duration(Duration::from_secs((fired_ms.max(0) / 1000) as u64)),
            st.summary
        )),
    }
    if let Some(url) = &r.notify_url {
        let body = notify::body(r, st, t, zone);
        if outbox
            .try_send(notify::Message {
                url: url.clone(),
                body,
                rule: r.name.clone(),
            })
            .is_err()
        {
            crate::ops::log::warn_limited(
                "alerts-notify",
                format_args!(
                    "alert {}: the notification queue is full; this one is dropped",
                    r.name
                ),
            );
        }
    }
}

/// Reads what a rule needs and judges it, a page of the call index at a time (memory stays
/// bounded whatever the window holds); `None` outside the rule's hours (an `off_hours` rule
/// always runs: its hours are the allowed ones).
fn evaluate(
    store: &Store,
    r: &Rule,
    zone: &Zone,
    now: i64,
) -> crate::store::Result<Option<rule::Finding>> {
    let always = matches!(r.check, rule::Check::OffHours { .. });
    if !always && r.schedule.as_ref().is_some_and(|s| !s.contains(zone, now)) {
        return Ok(None);
    }
    let back = i64::try_from(r.check.lookback().as_millis()).unwrap_or(i64::MAX);
    let since = now.saturating_sub(back);
    // Calls a little in the future (a sender's clock ahead of ours) count as now.
    let until = now.saturating_add(i64::try_from(FUTURE_SLACK.as_millis()).unwrap_or(0));
    let mut judge = rule::Judge::new(r, zone, now);
    let unfiled = store.unfiled()?;
    loop {
        let mut from = (since, 0u64);
        loop {
            let (page, next) = store.calls_page(&unfiled, from, until, crate::cli::SCAN_CHUNK)?;
            let states = if judge.needs_recordings() {
                let seqs: Vec<u64> = page
                    .iter()
                    .filter(|e| e.facts.kind == Kind::Recording)
                    .map(|e| e.seq)
                    .collect();
                store.archive_states(&seqs)?
            } else {
                Vec::new()
            };
            let mut states = states.into_iter();
            for e in &page {
                let state = if e.facts.kind == Kind::Recording && judge.needs_recordings() {
                    Recording::of_archive(states.next().flatten())
                } else {
                    Recording::None
                };
                judge.feed(e.at_ms, e.seq, &e.facts, state);
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        if !judge.second_pass() {
            break;
        }
    }
    Ok(Some(judge.finish()))
}
