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

/// One index entry as the tests hand it over: time, seq, facts, and for a recording its
/// state.
pub type Entry = (i64, u64, Facts, Recording);

/// Most destinations a `burst` rule counts per evaluation; beyond, new ones are not counted
/// (a window of hundreds of thousands of distinct numbers), and the summary says so.
pub const MAX_BURST_GROUPS: usize = 100_000;

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

/// A rule's evaluation over a stream of index entries in call-time order, in bounded
/// memory: counters, at most [`MAX_TRIGGERS`] calls, and what a check must remember
/// (a `burst` rule's count per destination, a `recording_missing` rule's recordings).
///
/// A `burst` rule needs two passes: the runner feeds the window again after
/// [`Judge::second_pass`] returns true, and only then are the calls of the destinations over
/// the limit collected.
pub struct Judge<'r> {
    rule: &'r Rule,
    zone: Zone,
    now_ms: i64,
    since_ms: i64,
    pass: u8,
    last: Option<i64>,
    calls: u64,
    answered: u64,
    triggers: Vec<Trigger>,
    found: u64,
    groups: std::collections::HashMap<String, u64>,
    groups_full: bool,
    recorded: std::collections::HashMap<String, Recording>,
    billed: Vec<Trigger>,
}

impl<'r> Judge<'r> {
    /// A judge of `rule` at `now_ms`.
    pub fn new(rule: &'r Rule, zone: &Zone, now_ms: i64) -> Judge<'r> {
        let back = match &rule.check {
            Check::RecordingMissing { delay, window, .. } => ms(*window) + ms(*delay),
            other => ms(other.lookback()),
        };
        Judge {
            rule,
            zone: zone.clone(),
            now_ms,
            since_ms: now_ms.saturating_sub(back),
            pass: 0,
            last: None,
            calls: 0,
            answered: 0,
            triggers: Vec::new(),
            found: 0,
            groups: std::collections::HashMap::new(),
            groups_full: false,
            recorded: std::collections::HashMap::new(),
            billed: Vec::new(),
        }
    }

    fn burst_key(&self, f: &Facts) -> Option<String> {
        let Check::Burst {
            prefix_len,
            prefixes,
            max_billsec,
            ..
        } = &self.rule.check
        else {
            return None;
        };
        if f.kind != Kind::Cdr
            || !matches_prefix(&f.dst, prefixes)
            || max_billsec.is_some_and(|m| f.billed_seconds() > m)
        {
            return None;
        }
        let d = report::digits(&f.dst);
        Some(match prefix_len {
            Some(n) => d.chars().take(*n).collect(),
            None => d,
        })
    }

    /// Takes one entry (`recording`: a recording's state, else ignored).
    pub fn feed(&mut self, at: i64, seq: u64, f: &Facts, recording: Recording) {
        if at < self.since_ms {
            return;
        }
        match &self.rule.check {
            Check::Silence { kind, .. } if f.kind == *kind => {
                self.last = Some(self.last.map_or(at, |t| t.max(at)));
            }
            Check::AsrBelow { .. } if f.kind == Kind::Cdr => {
                self.calls += 1;
                if f.answered() {
                    self.answered += 1;
                } else if self.triggers.len() < MAX_TRIGGERS {
                    self.triggers.push(Trigger::of(seq, at, f));
                }
            }
            Check::Burst { max_calls, .. } => {
                let Some(key) = self.burst_key(f) else { return };
                if self.pass == 0 {
                    let full = self.groups.len() >= MAX_BURST_GROUPS;
                    match self.groups.get_mut(&key) {
                        Some(n) => *n += 1,
                        None if !full => {
                            self.groups.insert(key, 1);
                        }
                        None => self.groups_full = true,
                    }
                } else if self.groups.get(&key).is_some_and(|n| n > max_calls)
                    && self.triggers.len() < MAX_TRIGGERS
                {
                    self.triggers.push(Trigger::of(seq, at, f));
                }
            }
            Check::OffHours { prefixes, .. }
                if f.kind == Kind::Cdr
                    && matches_prefix(&f.dst, prefixes)
                    && !self
                        .rule
                        .schedule
                        .as_ref()
                        .is_some_and(|s| s.contains(&self.zone, at)) =>
            {
                self.found += 1;
                if self.triggers.len() < MAX_TRIGGERS {
                    self.triggers.push(Trigger::of(seq, at, f));
                }
            }
            Check::RecordingMissing { delay, .. } => match f.kind {
                Kind::Recording if !f.callid.is_empty() => {
                    let e = self.recorded.entry(f.callid.clone()).or_insert(recording);
                    *e = (*e).max(recording);
                }
                Kind::Cdr => {
                    let ended = at + i64::from(f.duration) * 1000;
                    if f.billed_seconds() > 0 && ended + ms(*delay) <= self.now_ms {
                        self.billed.push(Trigger::of(seq, at, f));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// After the first pass: whether the runner must feed the window once more.
    pub fn second_pass(&mut self) -> bool {
        let again = self.pass == 0
            && matches!(&self.rule.check, Check::Burst { max_calls, .. }
                if self.groups.values().any(|n| n > max_calls));
        if again {
            self.pass = 1;
        }
        again
    }

    /// Whether the rule needs recordings' archive states.
    pub fn needs_recordings(&self) -> bool {
        matches!(self.rule.check, Check::RecordingMissing { .. })
    }

    /// What the rule says.
    pub fn finish(self) -> Finding {
        match &self.rule.check {
            Check::Silence { kind, duration } => {
                let firing = self.last.is_none();
                let summary = if firing {
                    format!("no {} for more than {}", kind.name(), human(*duration))
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
                let asr = if self.calls == 0 {
                    100.0
                } else {
                    self.answered as f64 * 100.0 / self.calls as f64
                };
                let firing = self.calls >= *min_attempts && asr < *percent;
                Finding {
                    firing,
                    summary: format!(
                        "ASR {asr:.1}% over the last {} ({} of {} calls answered; the rule fires \
                         under {percent}% with at least {min_attempts} calls)",
                        human(*window),
                        self.answered,
                        self.calls
                    ),
                    calls: if firing { self.triggers } else { Vec::new() },
                }
            }
            Check::Burst {
                max_calls, window, ..
            } => {
                let mut over: Vec<(&String, &u64)> =
                    self.groups.iter().filter(|(_, n)| *n > max_calls).collect();
                over.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let firing = !over.is_empty();
                let mut summary = if firing {
                    let list: Vec<String> = over
                        .iter()
                        .take(5)
                        .map(|(k, n)| format!("{n} calls to {k}"))
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
                if self.groups_full {
                    summary.push_str(&format!(
                        "; only the first {MAX_BURST_GROUPS} destinations were counted"
                    ));
                }
                Finding {
                    firing,
                    summary,
                    calls: self.triggers,
                }
            }
            Check::OffHours { prefixes, window } => {
                let firing = self.found > 0;
                Finding {
                    firing,
                    summary: if firing {
                        format!(
                            "{} calls to {} outside the allowed hours within {}",
                            self.found,
                            prefixes.join(", "),
                            human(*window)
                        )
                    } else {
                        format!(
                            "no call to {} outside the allowed hours",
                            prefixes.join(", ")
                        )
                    },
                    calls: self.triggers,
                }
            }
            Check::RecordingMissing {
                delay,
                window,
                min_missing,
            } => {
                let recorded = &self.recorded;
                let missing: Vec<Trigger> = self
                    .billed
                    .into_iter()
                    .filter(|t| {
                        t.callid.is_empty()
                            || matches!(
                                recorded.get(&t.callid).copied().unwrap_or(Recording::None),
                                Recording::None | Recording::Failed | Recording::Expired
                            )
                    })
                    .collect();
                let n = missing.len() as u64;
                let firing = n >= *min_missing;
                Finding {
                    firing,
                    summary: format!(
                        "{n} billed calls of the last {} without a recording {} after they ended",
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

impl Rule {
    /// Judges a slice of entries (all passes): what the runner does over the store.
    pub fn judge(&self, zone: &Zone, now_ms: i64, entries: &[Entry]) -> Finding {
        let mut j = Judge::new(self, zone, now_ms);
        loop {
            for (at, seq, f, r) in entries {
                j.feed(*at, *seq, f, *r);
            }
            if !j.second_pass() {
                break;
            }
        }
        j.finish()
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
        assert!(!r.judge(&z, NOW, &two).firing);
        let mut three = two.to_vec();
        three.push(call(NOW - 800, "c", "1", "ANSWERED", 9));
        let f = r.judge(&z, NOW, &three);
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
        assert!(r.judge(&z, NOW, &e).firing);
        e[0].2.billsec = Some(60);
        assert!(
            !r.judge(&z, NOW, &e).firing,
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
            r.judge(&Zone::named("Europe/Berlin").unwrap(), NOW, &at)
                .firing
        );
        assert!(
            !r.judge(&Zone::named("Asia/Singapore").unwrap(), NOW, &at)
                .firing
        );
        let other = [call(NOW - 60_000, "p", "4930123", "ANSWERED", 30)];
        assert!(
            !r.judge(&Zone::named("Europe/Berlin").unwrap(), NOW, &other)
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
        let cdr_at = |t: i64| [call(t, "s", "1", "ANSWERED", 1)];
        assert!(s.judge(&z, NOW, &cdr_at(NOW - 4 * 3_600_000)).firing);
        assert!(!s.judge(&z, NOW, &cdr_at(NOW - 3_600_000)).firing);
        assert!(s.judge(&z, NOW, &[]).firing);
        let m = rule(
            Check::RecordingMissing {
                delay: Duration::from_secs(600),
                window: Duration::from_secs(3600),
                min_missing: 1,
            },
            None,
        );
        let mut e = vec![call(NOW - 1_200_000, "a", "1", "ANSWERED", 60)];
        assert!(m.judge(&z, NOW, &e).firing);
        let mut rec = e[0].clone();
        rec.2.kind = Kind::Recording;
        rec.3 = Recording::Archived;
        e.push(rec);
        assert!(!m.judge(&z, NOW, &e).firing);
        // Too recent to expect the recording yet.
        let fresh = [call(NOW - 60_000, "b", "1", "ANSWERED", 10)];
        assert!(!m.judge(&z, NOW, &fresh).firing);
    }
}
