//! The notifier: one JSON POST per transition to the rule's `notify_url`, in a thread of its
//! own, retried with a doubling backoff ([`ATTEMPTS`] tries over about an hour), never
//! blocking the runner (a bounded queue; full: dropped and logged).
//!
//! The body is Slack-compatible (a `text` field, which Slack, Mattermost, Rocket.Chat and
//! Teams' incoming webhooks show) plus structured fields for anything else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::rule::Rule;
use super::state::{RuleState, Transition};
use crate::call::zone::Zone;
use crate::ops::metrics::Metrics;

/// Tries per notification before it is given up (logged).
pub const ATTEMPTS: u32 = 8;

/// The first retry's wait; it doubles per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// The longest wait between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// Time for one POST, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Notifications waiting (new and retrying), at most.
pub const QUEUE: usize = 256;

/// The URL as logs show it: scheme and host only, since a chat webhook's path is its secret.
fn redacted(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}/…",
            u.scheme_str().unwrap_or("http"),
            u.host().unwrap_or("?")
        ),
        Err(_) => "the notify_url".to_string(),
    }
}

/// One notification.
#[derive(Clone, Debug)]
pub struct Message {
    /// Where it goes.
    pub url: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The rule, for the log.
    pub rule: String,
}

/// The body of a transition's POST.
pub fn body(r: &Rule, st: &RuleState, t: Transition, zone: &Zone) -> Vec<u8> {
    let host = crate::forward::nats::host_name();
    let (state, verb) = match t {
        Transition::Firing => ("firing", "FIRING"),
        Transition::Cleared { .. } => ("cleared", "cleared"),
    };
    let mut text = format!(
        "didgate {host}: alert {} ({}) {verb}: {}",
        r.name,
        r.check.type_name(),
        st.summary
    );
    for c in st.calls.iter().take(5) {
        text.push_str(&format!(
            "\n• {} {} → {} ({} s)",
            zone.rfc3339(c.at_ms),
            c.src,
            c.dst,
            c.billsec
        ));
    }
    let calls: Vec<serde_json::Value> = st
        .calls
        .iter()
        .map(|c| {
            serde_json::json!({
                "callid": c.callid,
                "calldate": zone.rfc3339(c.at_ms),
                "src": c.src,
                "dst": c.dst,
                "billsec": c.billsec,
                "seq": c.seq,
            })
        })
        .collect();
    let v = serde_json::json!({
        "text": text,
        "rule": r.name,
        "type": r.check.type_name(),
        "state": state,
        "since": zone.rfc3339(st.since_ms),
        "summary": st.summary,
        "appliance": host,
        "calls": calls,
        "fired_seconds": match t {
            Transition::Cleared { fired_ms } => Some(fired_ms / 1000),
            Transition::Firing => None,
        },
    });
    v.to_string().into_bytes()
}

/// The notifier thread.
pub struct Notifier {
    tx: Sender<Message>,
    stop: Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread.
    ///
    /// # Errors
    /// It could not be spawned.
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<Notifier> {
        let (tx, rx) = bounded(QUEUE);
        let (stop, stopped) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("didgate-notify".into())
            .spawn(move || {
                crate::ops::lower_priority(19);
                run(&rx, &stopped, &metrics);
            })?;
        Ok(Notifier {
            tx,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the runner puts notifications.
    pub fn sender(&self) -> Sender<Message> {
        self.tx.clone()
    }

    /// Stops the thread; what is still waiting for a retry is dropped (and logged).
    pub fn stop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Pending {
    msg: Message,
    failures: u32,
    due: Instant,
}

fn agent() -> ureq::Agent {
    crate::outbound::config(TIMEOUT).build().new_agent()
}

/// One POST: `Ok` on a 2xx, else what went wrong.
fn post(agent: &ureq::Agent, m: &Message) -> Result<(), String> {
    let resp = agent
        .post(&m.url)
        .header("content-type", "application/json")
        .send(&m.body[..])
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn run(rx: &Receiver<Message>, stop: &Receiver<()>, metrics: &Metrics) {
    let agent = agent();
    let mut waiting: Vec<Pending> = Vec::new();
    loop {
        let now = Instant::now();
        let next_due = waiting.iter().map(|p| p.due).min();
        let wait = next_due.map_or(Duration::from_millis(500), |d| {
            d.saturating_duration_since(now)
                .min(Duration::from_millis(500))
        });
        match rx.recv_timeout(wait) {
            Ok(msg) => waiting.push(Pending {
                msg,
                failures: 0,
                due: Instant::now(),
            }),
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if stop.try_recv().is_ok() {
            for p in &waiting {
                crate::ops::log::warn(format_args!(
                    "alert {}: notification to {} not sent before shutdown",
                    p.msg.rule,
                    redacted(&p.msg.url)
                ));
            }
            return;
        }
        // In order of arrival: a rule's "cleared" never overtakes its "firing" (a rule with
        // an earlier notification still waiting sends nothing newer).
        let mut blocked: Vec<String> = Vec::new();
        let mut i = 0;
        while i < waiting.len() {
            if blocked.contains(&waiting[i].msg.rule) {
                i += 1;
                continue;
            }
            if waiting[i].due > Instant::now() {
                blocked.push(waiting[i].msg.rule.clone());
                i += 1;
                continue;
            }
            let result = post(&agent, &waiting[i].msg);
            match result {
                Ok(()) => {
                    waiting.remove(i);
                    metrics.count_alert_notification(true);
                }
                Err(e) => {
                    metrics.count_alert_notification(false);
                    let p = &mut waiting[i];
                    p.failures += 1;
                    let url = redacted(&p.msg.url);
                    if p.failures >= ATTEMPTS {
                        crate::ops::log::error(format_args!(
                            "alert {}: gave up notifying {url} after {ATTEMPTS} tries: {e}",
                            p.msg.rule
                        ));
                        waiting.remove(i);
                    } else {
                        let wait = crate::backoff::doubling(FIRST_BACKOFF, p.failures, MAX_BACKOFF);
                        crate::ops::log::warn_limited(
                            "alerts-notify",
                            format_args!(
                                "alert {}: notifying {url} failed ({e}); try {} of {ATTEMPTS} in {}",
                                p.msg.rule,
                                p.failures + 1,
                                humantime::format_duration(Duration::from_secs(wait.as_secs()))
                            ),
                        );
                        p.due = Instant::now() + wait;
                        blocked.push(p.msg.rule.clone());
                        i += 1;
                    }
                }
            }
        }
    }
}
