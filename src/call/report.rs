//! Calls and reports from index entries and rollups: the recording join, the `--by`
//! groupings and their rows. Pure; the store reads, the CLI draws.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::facts::{Facts, Kind};

use super::tally::{BUCKET_MS, Tally};
use super::zone::Zone;
use crate::archive::record::State;

/// What `calls` says about a call's recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recording {
    /// No recording webhook has arrived for the call (yet).
    None,
    /// Its archive gave up (`failed`, `gone`).
    Failed,
    /// Its URL expired before it was fetched: lost.
    Expired,
    /// Arrived; archiving is off, so only the URL is kept.
    Received,
    /// Arrived; waiting to be archived.
    Pending,
    /// The file is in the archive.
    Archived,
}

impl Recording {
    /// The state string of `calls` rows.
    pub fn name(self) -> &'static str {
        match self {
            Recording::None => "none",
            Recording::Failed => "failed",
            Recording::Expired => "expired",
            Recording::Received => "received",
            Recording::Pending => "pending",
            Recording::Archived => "archived",
        }
    }

    /// What a recording event's archive state (none: archiving off) says.
    pub fn of_archive(state: Option<State>) -> Recording {
        match state {
            None => Recording::Received,
            Some(State::Pending) => Recording::Pending,
            Some(State::Fetched | State::Suspicious) => Recording::Archived,
            Some(State::Expired) => Recording::Expired,
            Some(State::Failed | State::Gone) => Recording::Failed,
        }
    }
}

/// One row of `calls`: a CDR with what is known of its recordings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRow {
    /// The CDR's sequence number.
    pub seq: u64,
    /// The time it is filed under (its `calldate`, else when it was stored).
    pub at_ms: i64,
    /// The CDR's facts (`at_ms` inside is `None` when its calldate did not parse).
    pub facts: Facts,
    /// The best state among its recordings.
    pub recording: Recording,
    /// How many recording webhooks arrived for it.
    pub recordings: u32,
}

/// Joins CDRs with recordings by callid. `recordings` are `(callid, state)`; a recording
/// may have been filed before or after its CDR in call time: the caller reads a margin
/// around the range for them.
pub fn join<'a>(
    cdrs: Vec<(i64, u64, Facts)>,
    recordings: impl IntoIterator<Item = (&'a str, Recording)>,
) -> Vec<CallRow> {
    let mut by_call: HashMap<&str, (Recording, u32)> = HashMap::new();
    for (callid, state) in recordings {
        if callid.is_empty() {
            continue;
        }
        let e = by_call.entry(callid).or_insert((Recording::None, 0));
        e.0 = e.0.max(state);
        e.1 += 1;
    }
    cdrs.into_iter()
        .map(|(at_ms, seq, facts)| {
            let (recording, recordings) = if facts.callid.is_empty() {
                (Recording::None, 0)
            } else {
                by_call
                    .get(facts.callid.as_str())
                    .copied()
                    .unwrap_or((Recording::None, 0))
            };
            CallRow {
                seq,
                at_ms,
                facts,
                recording,
                recordings,
            }
        })
        .collect()
}

/// `in` or `out`, the short name of a direction [`direction_matches`] knows; `None` for any
/// other.
pub fn short_direction(direction: &str) -> Option<&'static str> {
    ["in", "out"]
        .into_iter()
        .find(|w| direction_matches(direction, w))
}

/// `in` / `out` as `--direction` means them: didlogic's `inbound` / `outbound` (and the
/// short and Asterisk-ish spellings).
pub fn direction_matches(direction: &str, wanted: &str) -> bool {
    let d = direction.to_ascii_lowercase();
    match wanted {
        "in" => matches!(d.as_str(), "in" | "inbound" | "incoming"),
        "out" => matches!(d.as_str(), "out" | "outbound" | "outgoing"),
        _ => false,
    }
}

/// A number as typed or sent, for matching: no `+`, spaces or dashes.
pub fn digits(n: &str) -> String {
    n.chars()
        .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
        .collect()
}

/// A `--by` grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Calendar day in the zone.
    Day,
    /// Hour in the zone.
    Hour,
    /// ISO week in the zone.
    Week,
    /// Month in the zone.
    Month,
    /// `direction` as sent.
    Direction,
    /// `disposition` as sent.
    Disposition,
    /// The first `--prefix-len` digits of `dst`.
    DstPrefix,
    /// `src`: the caller, or the SMS sender.
    Src,
    /// `dst`.
    Dst,
}

impl By {
    /// Every grouping, in the order `--help` lists them.
    pub const ALL: [By; 9] = [
        By::Day,
        By::Hour,
        By::Week,
        By::Month,
        By::Direction,
        By::Disposition,
        By::DstPrefix,
        By::Src,
        By::Dst,
    ];

    /// The `--by` value and the JSON key of the group.
    pub fn name(self) -> &'static str {
        match self {
            By::Day => "day",
            By::Hour => "hour",
            By::Week => "week",
            By::Month => "month",
            By::Direction => "direction",
            By::Disposition => "disposition",
            By::DstPrefix => "dst-prefix",
            By::Src => "src",
            By::Dst => "dst",
        }
    }

    /// The grouping named `s`.
    pub fn parse(s: &str) -> Option<By> {
        By::ALL.into_iter().find(|b| b.name() == s)
    }

    /// Whether it groups by time alone, which the rollups answer.
    pub fn is_time(self) -> bool {
        matches!(self, By::Day | By::Hour | By::Week | By::Month)
    }

    fn time_key(self, zone: &Zone, ms: i64) -> String {
        match self {
            By::Day => zone.day(ms),
            By::Hour => zone.hour(ms),
            By::Week => zone.week(ms),
            By::Month => zone.month(ms),
            _ => String::new(),
        }
    }
}

/// The group keys of a report, one per `--by`, and how long a `dst-prefix` is.
#[derive(Clone, Debug)]
pub struct Grouping {
    /// The groupings, in the order given.
    pub by: Vec<By>,
    /// Digits of `dst` that `dst-prefix` keeps.
    pub prefix_len: usize,
    /// The zone of the time groupings.
    pub zone: Zone,
}

/// Shown for a group whose field the event does not carry.
pub const NO_VALUE: &str = "-";

impl Grouping {
    /// Whether the rollups answer it (time groupings only).
    pub fn rollups_suffice(&self) -> bool {
        self.by.iter().all(|b| b.is_time())
    }

    fn key_of_time(&self, ms: i64) -> Vec<String> {
        self.by.iter().map(|b| b.time_key(&self.zone, ms)).collect()
    }

    /// The group of one entry, borrowing its text; `times` caches the time keys of the
    /// last quarter hour seen (they are the same for every entry in it).
    fn key_of<'f>(
        &self,
        at_ms: i64,
        f: &'f Facts,
        times: &mut (i64, Vec<String>),
    ) -> Vec<Cow<'f, str>> {
        let or_dash = |s: &'f str| Cow::Borrowed(if s.is_empty() { NO_VALUE } else { s });
        let bucket = super::tally::bucket_of(at_ms);
        if self.by.iter().any(|b| b.is_time()) && (times.1.is_empty() || times.0 != bucket) {
            *times = (bucket, self.key_of_time(at_ms));
        }
        self.by
            .iter()
            .enumerate()
            .map(|(i, b)| match b {
                By::Direction => or_dash(&f.direction),
                By::Disposition => or_dash(&f.disposition),
                By::Src => or_dash(&f.src),
                By::Dst => or_dash(&f.dst),
                By::DstPrefix => {
                    let d: String = digits(&f.dst).chars().take(self.prefix_len).collect();
                    if d.is_empty() {
                        Cow::Borrowed(NO_VALUE)
                    } else {
                        Cow::Owned(d)
                    }
                }
                _ => Cow::Owned(times.1[i].clone()),
            })
            .collect()
    }
}

/// Report rows: group key → tally, in key order (times sort as text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows(pub BTreeMap<Vec<String>, Tally>);

impl Rows {
    /// Adds the rollup of the quarter hour `bucket` (time groupings only).
    pub fn add_rollup(&mut self, g: &Grouping, bucket: i64, t: &Tally) {
        self.0
            .entry(g.key_of_time(bucket * BUCKET_MS))
            .or_default()
            .add(t);
    }

    /// Adds index entries one by one. A recording is counted in its call's group (found by
    /// callid among `entries`), or in its own when its CDR is not among them.
    pub fn add_entries(&mut self, g: &Grouping, entries: &[(i64, Facts, bool)]) {
        let mut times = (0, Vec::new());
        // Keys borrow the entries' text; only a group's first entry makes an owned key.
        let keys: Vec<Vec<Cow<'_, str>>> = entries
            .iter()
            .map(|(at, f, _)| g.key_of(*at, f, &mut times))
            .collect();
        let mut call_key: HashMap<&str, usize> = HashMap::new();
        for (i, (_, f, _)) in entries.iter().enumerate() {
            if f.kind == Kind::Cdr && !f.callid.is_empty() {
                call_key.insert(f.callid.as_str(), i);
            }
        }
        let mut local: HashMap<&[Cow<'_, str>], Tally> = HashMap::new();
        for (i, (_, f, archived)) in entries.iter().enumerate() {
            let joined = (f.kind == Kind::Recording && !f.callid.is_empty())
                .then(|| call_key.get(f.callid.as_str()))
                .flatten();
            let k = joined.copied().unwrap_or(i);
            local
                .entry(keys[k].as_slice())
                .or_default()
                .add(&Tally::of(f, *archived));
        }
        for (k, t) in local {
            let owned: Vec<String> = k.iter().map(|c| c.to_string()).collect();
            self.0.entry(owned).or_default().add(&t);
        }
    }

    /// The sum of every row.
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for v in self.0.values() {
            t.add(v);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(callid: &str, dst: &str, disp: &str, billsec: u32) -> Facts {
        Facts {
            kind: Kind::Cdr,
            at_ms: Some(0),
            raw_time: String::new(),
            direction: "outbound".into(),
            disposition: disp.into(),
            src: "441273004315".into(),
            dst: dst.into(),
            duration: billsec,
            billsec: Some(billsec),
            callid: callid.into(),
        }
    }

    #[test]
    fn a_recording_joins_its_call_before_or_after_it() {
        let rows = join(
            vec![
                (0, 1, cdr("a", "1900", "ANSWERED", 5)),
                (0, 2, cdr("", "1", "BUSY", 0)),
            ],
            [
                ("a", Recording::Pending),
                ("a", Recording::Archived),
                ("", Recording::Archived),
            ],
        );
        assert_eq!(
            (rows[0].recording, rows[0].recordings),
            (Recording::Archived, 2)
        );
        assert_eq!(
            (rows[1].recording, rows[1].recordings),
            (Recording::None, 0)
        );
    }

    #[test]
    fn groups_by_prefix_and_disposition_with_recordings_in_their_calls_group() {
        let g = Grouping {
            by: vec![By::DstPrefix, By::Disposition],
            prefix_len: 3,
            zone: Zone::utc(),
        };
        let mut rec = cdr("a", "", "", 0);
        rec.kind = Kind::Recording;
        let mut rows = Rows::default();
        rows.add_entries(
            &g,
            &[
                (0, cdr("a", "+1 900 555", "ANSWERED", 61), false),
                (0, rec, true),
                (0, cdr("b", "1900", "NO ANSWER", 0), false),
            ],
        );
        let answered = &rows.0[&vec!["190".to_string(), "ANSWERED".to_string()]];
        assert_eq!(
            (answered.calls, answered.billed_minutes, answered.archived),
            (1, 2, 1)
        );
        assert_eq!(rows.0.len(), 2);
        assert!(direction_matches("Outbound", "out") && !direction_matches("inbound", "out"));
        assert_eq!(short_direction("Inbound"), Some("in"));
        assert_eq!(short_direction("outgoing"), Some("out"));
        assert_eq!(short_direction("transfer"), None);
    }
}
