//! [`Rule`]: one `[[alert]]`, and what it says about the calls of a window ([`Rule::judge`]).
//! Pure: entries in, a [`Finding`] out; the runner reads the store and keeps the state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::facts::{Facts, Kind};
use crate::call::report::{self, Recording};
use crate::call::zone::Zone;

/// Calls listed with a finding, at most (the count is in the summary).
pub const MAX_TRIGGERS: usize = 20;

/// When a rule applies: minutes of the day (`from` included, `to` excluded; `from > to`
/// wraps past midnight) on the given weekdays, in the configured time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// First minute of the day included.
    pub from_min: u32,
    /// First minute of the day excluded.
    pub to_min: u32,
    /// Monday first.
    pub days: [bool; 7],
}

impl Schedule {
    /// Whether the moment `ms` is inside, in `zone`.
    pub fn contains(&self, zone: &Zone, ms: i64) -> bool {
        let (weekday, minute) = zone.weekday_minute(ms);
        let in_hours = if self.from_min <= self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        };
        // A span past midnight belongs to the day it started on.
        let day = if self.from_min > self.to_min && minute < self.to_min {
            (weekday + 6) % 7
        } else {
            weekday
        };
        in_hours && self.days[day as usize]
    }
}

/// What a rule watches.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// No event of `kind` for `duration`.
    Silence {
        /// The event kind.
        kind: Kind,
        /// How long without one.
        duration: Duration,
    },
    /// ASR under `percent` over `window`, with at least `min_attempts` calls.
    AsrBelow {
        /// The threshold.
        percent: f64,
        /// The window.
        window: Duration,
        /// Fewer calls say nothing.
        min_attempts: u64,
    },
    /// More than `max_calls` calls to one destination (or prefix) within `window`.
    Burst {
        /// The most calls allowed.
        max_calls: u64,
        /// The window.
        window: Duration,
        /// Group destinations by this many digits (`None`: the whole number).
        prefix_len: Option<usize>,
        /// Only destinations starting with one of these (empty: all).
        prefixes: Vec<String>,
        /// Only calls billed at most this many seconds ("many short calls").
        max_billsec: Option<u32>,
    },
    /// Calls to `prefixes` outside the rule's schedule, within `window`.
    OffHours {
        /// Destination prefixes (digits).
        prefixes: Vec<String>,
        /// How far back a call keeps the rule firing.
        window: Duration,
    },
    /// Billed calls older than `delay` (from their end) whose recording is not there.
    RecordingMissing {
        /// Time a recording gets after its call ends.
        delay: Duration,
        /// How far back calls are looked at.
        window: Duration,
        /// Fewer missing say nothing.
        min_missing: u64,
    },
}

impl Check {
    /// The `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Check::Silence { .. } => "silence",
            Check::AsrBelow { .. } => "asr_below",
            Check::Burst { .. } => "burst",
            Check::OffHours { .. } => "off_hours",
            Check::RecordingMissing { .. } => "recording_missing",
        }
    }

    /// How far back from now the rule needs the call index.
    pub fn lookback(&self) -> Duration {
        match self {
            Check::Silence { duration, .. } => *duration,
            Check::AsrBelow { window, .. }
            | Check::Burst { window, .. }
            | Check::OffHours { window, .. } => *window,
            Check::RecordingMissing { delay, window, .. } => *window + *delay,
        }
    }
}

/// One `[[alert]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its name (the metric's label, the log's subject).
    pub name: String,
    /// What it watches.
    pub check: Check,
    /// When it applies (`off_hours`: the allowed hours, outside which calls are reported).
    pub schedule: Option<Schedule>,
    /// Where each transition is POSTed.
    pub notify_url: Option<String>,
}

/// A call that made a rule fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The CDR's sequence number.
    pub seq: u64,
    /// Its callid (empty when none).
    pub callid: String,
    /// Its call time, ms.
    pub at_ms: i64,
    /// Caller.
    pub src: String,
    /// Number called.
    pub dst: String,
    /// Billed seconds.
    pub billsec: u32,
}

impl Trigger {
    fn of(seq: u64, at_ms: i64, f: &Facts) -> Trigger {
        Trigger {
            seq,
            callid: f.callid.clone(),
            at_ms,
            src: f.src.clone(),
            dst: f.dst.clone(),
            billsec: f.billed_seconds(),
        }
    }
}

/// What a rule says now.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Whether the condition holds.
    pub firing: bool,
    /// One sentence, with the figures.
    pub summary: String,
    /// The calls behind it (at most [`MAX_TRIGGERS`]).
    pub calls: Vec<Trigger>,
}

/// One index entry as the runner hands it over: time, seq, facts, and for a recording its
/// state.
pub type Entry = (i64, u64, Facts, Recording);

fn matches_prefix(dst: &str, prefixes: &[String]) -> bool {
    let d = report::digits(dst);
    prefixes.is_empty() || prefixes.iter().any(|p| d.starts_with(p.as_str()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Rule {
    /// Judges the entries of `[now - lookback, now]` (all kinds, call-time order); `last`
    /// is the newest event time of the silence rule's kind, when the runner found one.
    pub fn judge(&self, zone: &Zone, now_ms: i64, entries: &[Entry], last: Option<i64>) -> Finding {
        let cdrs = || entries.iter().filter(|(_, _, f, _)| f.kind == Kind::Cdr);
        match &self.check {
            Check::Silence { kind, duration } => {
                let since = now_ms - ms(*duration);
                let firing = last.is_none_or(|t| t < since);
                let summary = match last {
                    Some(t) => format!(
                        "no {} since {} ({} ago; the rule allows {})",
                        kind.name(),
                        zone.rfc3339(t),
                        human(Duration::from_secs(((now_ms - t).max(0) / 1000) as u64)),
                        human(*duration)
                    ),
                    None => format!("no {} for more than {}", kind.name(), human(*duration)),
                };
                let summary = if firing {
                    summary
                } else {
                    format!("a {} arrived within {}", kind.name(), human(*duration))
                };
                Finding {
                    firing,
                    summary,
                    calls: Vec::new(),
                }
            }
            Check::AsrBelow {
                percent,
                window,
                min_attempts,
            } => {
                let since = now_ms - ms(*window);
                let (mut calls, mut answered) = (0u64, 0u64);
                let mut failed = Vec::new();
                for (at, seq, f, _) in cdrs().filter(|(at, ..)| *at >= since) {
                    calls += 1;
                    if f.answered() {
                        answered += 1;
                    } else if failed.len() < MAX_TRIGGERS {
                        failed.push(Trigger::of(*seq, *at, f));
                    }
                }
                let asr = if calls == 0 {
                    100.0
                } else {
                    answered as f64 * 100.0 / calls as f64
                };
                let firing = calls >= *min_attempts && asr < *percent;
                Finding {
                    firing,
                    summary: format!(
                        "ASR {asr:.1}% over the last {} ({answered} of {calls} calls answered; \
                         the rule fires under {percent}% with at least {min_attempts} calls)",
                        human(*window)
                    ),
                    calls: if firing { failed } else { Vec::new() },
                }
            }
            Check::Burst {
                max_calls,
                window,
                prefix_len,
                prefixes,
                max_billsec,
            } => {
                let since = now_ms - ms(*window);
                let mut groups: std::collections::BTreeMap<String, Vec<Trigger>> =
                    std::collections::BTreeMap::new();
                for (at, seq, f, _) in cdrs().filter(|(at, ..)| *at >= since) {
                    if !matches_prefix(&f.dst, prefixes)
                        || max_billsec.is_some_and(|m| f.billed_seconds() > m)
                    {
                        continue;
                    }
                    let d = report::digits(&f.dst);
                    let key = match prefix_len {
                        Some(n) => d.chars().take(*n).collect(),
                        None => d,
                    };
                    groups
                        .entry(key)
                        .or_default()
                        .push(Trigger::of(*seq, *at, f));
                }
                let mut over: Vec<(String, Vec<Trigger>)> = groups
                    .into_iter()
                    .filter(|(_, v)| v.len() as u64 > *max_calls)
                    .collect();
                over.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
                let firing = !over.is_empty();
                let summary = if firing {
                    let list: Vec<String> = over
                        .iter()
                        .take(5)
                        .map(|(k, v)| format!("{} calls to {k}", v.len()))
                        .collect();
                    format!(
                        "{} within {} (the rule allows {max_calls})",
                        list.join(", "),
                        human(*window)
                    )
                } else {
                    format!(
                        "no destination over {max_calls} calls within {}",
                        human(*window)
                    )
                };
                let calls = over
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .take(MAX_TRIGGERS)
                    .collect();
                Finding {
                    firing,
                    summary,
                    calls,
                }
            }
            Check::OffHours { prefixes, window } => {
                let since = now_ms - ms(*window);
                let found: Vec<Trigger> = cdrs()
                    .filter(|(at, _, f, _)| {
                        *at >= since
                            && matches_prefix(&f.dst, prefixes)
                            && !self
                                .schedule
                                .as_ref()
                                .is_some_and(|s| s.contains(zone, *at))
                    })
                    .map(|(at, seq, f, _)| Trigger::of(*seq, *at, f))
                    .collect();
                let firing = !found.is_empty();
                Finding {
                    firing,
                    summary: if firing {
                        format!(
                            "{} calls to {} outside the allowed hours within {}",
                            found.len(),
                            prefixes.join(", "),
                            human(*window)
                        )
                    } else {
                        format!(
                            "no call to {} outside the allowed hours",
                            prefixes.join(", ")
                        )
                    },
                    calls: found.into_iter().take(MAX_TRIGGERS).collect(),
                }
            }
            Check::RecordingMissing {
                delay,
                window,
                min_missing,
            } => {
                let since = now_ms - ms(*window) - ms(*delay);
                let mut recorded: std::collections::HashMap<&str, Recording> =
                    std::collections::HashMap::new();
                for (_, _, f, state) in entries
                    .iter()
                    .filter(|(_, _, f, _)| f.kind == Kind::Recording)
                {
                    let e = recorded.entry(f.callid.as_str()).or_insert(*state);
                    *e = (*e).max(*state);
                }
                let missing: Vec<Trigger> = cdrs()
                    .filter(|(at, _, f, _)| {
                        let ended = at + i64::from(f.duration) * 1000;
                        *at >= since
                            && f.billed_seconds() > 0
                            && ended + ms(*delay) <= now_ms
                            && (f.callid.is_empty()
                                || matches!(
                                    recorded
                                        .get(f.callid.as_str())
                                        .copied()
                                        .unwrap_or(Recording::None),
                                    Recording::None | Recording::Failed | Recording::Expired
                                ))
                    })
                    .map(|(at, seq, f, _)| Trigger::of(*seq, *at, f))
                    .collect();
                let firing = missing.len() as u64 >= *min_missing;
                Finding {
                    firing,
                    summary: format!(
                        "{} billed calls of the last {} without a recording {} after they ended",
                        missing.len(),
                        human(*window),
                        human(*delay)
                    ),
                    calls: if firing {
                        missing.into_iter().take(MAX_TRIGGERS).collect()
                    } else {
                        Vec::new()
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_778_563_078_000; // Tuesday 2026-05-12 05:17:58 UTC

    fn call(at: i64, callid: &str, dst: &str, disposition: &str, billsec: u32) -> Entry {
        let f = Facts {
            kind: Kind::Cdr,
            at_ms: Some(at),
            raw_time: String::new(),
            direction: "outbound".into(),
            disposition: disposition.into(),
            src: "441273004315".into(),
            dst: dst.into(),
            duration: billsec + 3,
            billsec: Some(billsec),
            callid: callid.into(),
        };
        (at, at as u64, f, Recording::None)
    }

    fn rule(check: Check, schedule: Option<Schedule>) -> Rule {
        Rule {
            name: "r".into(),
            check,
            schedule,
            notify_url: None,
        }
    }

    #[test]
    fn asr_needs_enough_attempts() {
        let r = rule(
            Check::AsrBelow {
                percent: 50.0,
                window: Duration::from_secs(3600),
                min_attempts: 3,
            },
            None,
        );
        let z = Zone::utc();
        let two = [
            call(NOW - 1000, "a", "1", "BUSY", 0),
            call(NOW - 900, "b", "1", "FAILED", 0),
        ];
        assert!(!r.judge(&z, NOW, &two, None).firing);
        let mut three = two.to_vec();
        three.push(call(NOW - 800, "c", "1", "ANSWERED", 9));
        let f = r.judge(&z, NOW, &three, None);
        assert!(f.firing, "{}", f.summary);
        assert_eq!(f.calls.len(), 2);
        assert!(f.summary.starts_with("ASR 33.3%"));
    }

    #[test]
    fn burst_counts_short_calls_per_number() {
        let r = rule(
            Check::Burst {
                max_calls: 2,
                window: Duration::from_secs(600),
                prefix_len: None,
                prefixes: vec![],
                max_billsec: Some(10),
            },
            None,
        );
        let z = Zone::utc();
        let mut e: Vec<Entry> = (0..3)
            .map(|i| call(NOW - i * 1000, "x", "+1 876 555", "ANSWERED", 4))
            .collect();
        assert!(r.judge(&z, NOW, &e, None).firing);
        e[0].2.billsec = Some(60);
        assert!(
            !r.judge(&z, NOW, &e, None).firing,
            "a long call is not part of it"
        );
    }

    #[test]
    fn off_hours_uses_the_local_schedule() {
        let office = Schedule {
            from_min: 8 * 60,
            to_min: 18 * 60,
            days: [true, true, true, true, true, false, false],
        };
        let r = rule(
            Check::OffHours {
                prefixes: vec!["1900".into(), "1876".into()],
                window: Duration::from_secs(900),
            },
            Some(office),
        );
        // 05:17 UTC is 07:17 in Berlin: before opening; 13:17 in Singapore: inside.
        let at = [call(NOW - 60_000, "p", "19005550100", "ANSWERED", 30)];
        assert!(
            r.judge(&Zone::named("Europe/Berlin").unwrap(), NOW, &at, None)
                .firing
        );
        assert!(
            !r.judge(&Zone::named("Asia/Singapore").unwrap(), NOW, &at, None)
                .firing
        );
        let other = [call(NOW - 60_000, "p", "4930123", "ANSWERED", 30)];
        assert!(
            !r.judge(&Zone::named("Europe/Berlin").unwrap(), NOW, &other, None)
                .firing
        );
    }

    #[test]
    fn silence_and_missing_recordings() {
        let z = Zone::utc();
        let s = rule(
            Check::Silence {
                kind: Kind::Cdr,
                duration: Duration::from_secs(3 * 3600),
            },
            None,
        );
        assert!(s.judge(&z, NOW, &[], Some(NOW - 4 * 3_600_000)).firing);
        assert!(!s.judge(&z, NOW, &[], Some(NOW - 3_600_000)).firing);
        assert!(s.judge(&z, NOW, &[], None).firing);
        let m = rule(
            Check::RecordingMissing {
                delay: Duration::from_secs(600),
                window: Duration::from_secs(3600),
                min_missing: 1,
            },
            None,
        );
        let mut e = vec![call(NOW - 1_200_000, "a", "1", "ANSWERED", 60)];
        assert!(m.judge(&z, NOW, &e, None).firing);
        let mut rec = e[0].clone();
        rec.2.kind = Kind::Recording;
        rec.3 = Recording::Archived;
        e.push(rec);
        assert!(!m.judge(&z, NOW, &e, None).firing);
        // Too recent to expect the recording yet.
        let fresh = [call(NOW - 60_000, "b", "1", "ANSWERED", 10)];
        assert!(!m.judge(&z, NOW, &fresh, None).firing);
    }
}
