//! `didgate calls`: one row per call, by the call's own time, joined with its recordings.
//!
//! Reads the call index (`store/calls.rs`) a page at a time, each page in one short read
//! transaction; the recordings of a page's calls are those the same index holds over the
//! page's time span widened by [`RECORDING_JOIN_MARGIN_MS`] on each side, with their archive
//! states. They are kept in a window that slides with the pages (each part of the index read
//! once), so memory stays a page and the margins whatever the range.

use std::io::Write;

use super::{Error, Result, SCAN_CHUNK, emit};
use crate::call::facts::{Facts, Kind};
use crate::call::report::{self, CallRow, Recording};
use crate::call::zone::Zone;
use crate::store::{Store, Unfiled};

/// How far from a CDR's call time its recordings are looked for. didlogic sends a recording
/// with its call's `calldate`, so they normally file under the same time; the margin covers
/// a recording whose time did not parse (filed under when it arrived, minutes later).
pub const RECORDING_JOIN_MARGIN_MS: i64 = 60 * 60 * 1000;

/// The default span: the last 24 hours.
pub const DEFAULT_SPAN_MS: i64 = 24 * 60 * 60 * 1000;

/// Output format of `calls` and `report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// An aligned table for people.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
    /// A header row, then one row per line.
    Csv,
}

/// What `calls` was asked.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// First call time included.
    pub since: Option<String>,
    /// First call time excluded.
    pub until: Option<String>,
    /// `in` or `out`.
    pub direction: Option<String>,
    /// A disposition (`ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`, ...), any case.
    pub disposition: Option<String>,
    /// A number or prefix matching either side.
    pub number: Option<String>,
    /// Only calls billed at least this many seconds.
    pub min_billsec: Option<u32>,
    /// How rows are written.
    pub format: Format,
    /// `--tz`.
    pub tz: Option<String>,
    /// The config's `timezone`.
    pub config_tz: Option<String>,
}

/// A disposition as typed or sent, for comparing: upper case, `_` as a space.
fn disposition_key(d: &str) -> String {
    d.trim().to_ascii_uppercase().replace('_', " ")
}

/// The time range and zone of `calls` and `report`.
pub(super) fn range(
    zone: &Zone,
    since: Option<&str>,
    until: Option<&str>,
    default_since: impl FnOnce(i64) -> i64,
) -> Result<(i64, i64)> {
    let now = crate::timestamp::now_ms();
    let parse = |s: &str| {
        zone.parse_time(s, now)
            .map_err(|e| Error::Usage(e.to_string()))
    };
    let since = match since {
        Some(s) => parse(s)?,
        None => default_since(now),
    };
    let until = match until {
        Some(s) => parse(s)?,
        None => i64::MAX,
    };
    if until <= since {
        return Err(Error::Usage(
            "--until must be later than --since (--since is included, --until excluded)".into(),
        ));
    }
    Ok((since, until))
}

/// Runs `calls`.
///
/// # Errors
/// [`Error::Usage`] for a bad time, zone or filter; store and output errors.
pub fn run(store: &Store, args: &Args, out: &mut impl Write) -> Result<()> {
    let query = Query::new(args)?;
    let zone = &query.zone;
    let mut buf = Vec::new();
    let table = Table::new(zone);
    match args.format {
        Format::Table => table.header(&mut buf),
        Format::Csv => csv_header(&mut buf)?,
        Format::Json => {}
    }
    let mut shown = 0u64;
    query.walk(store, (query.since, 0), |rows, _| {
        for row in rows {
            shown += 1;
            match args.format {
                Format::Table => table.row(&row, &mut buf),
                Format::Json => json_row(zone, &row, &mut buf),
                Format::Csv => csv_row(zone, &row, &mut buf)?,
            }
        }
        emit(out, &mut buf)?;
        Ok(true)
    })?;
    if args.format == Format::Table {
        buf.extend_from_slice(format!("{shown} calls\n").as_bytes());
        emit(out, &mut buf)?;
    }
    Ok(())
}

/// The calls an [`Args`] asks for: its zone, its range and its filters, checked.
pub struct Query {
    /// The zone times are shown in.
    pub zone: Zone,
    /// First call time included, ms.
    pub since: i64,
    /// First call time excluded, ms.
    pub until: i64,
    direction: Option<String>,
    disposition: Option<String>,
    number: Option<String>,
    min_billsec: Option<u32>,
}

impl Query {
    /// Checks the arguments: the zone, the times, the direction.
    ///
    /// # Errors
    /// [`Error::Usage`] naming what is wrong.
    pub fn new(args: &Args) -> Result<Query> {
        let zone = super::zone(args.tz.as_deref(), args.config_tz.as_deref())?;
        if let Some(d) = args.direction.as_deref()
            && d != "in"
            && d != "out"
        {
            return Err(Error::Usage(format!("--direction {d:?}: use in or out")));
        }
        let (since, until) = range(&zone, args.since.as_deref(), args.until.as_deref(), |now| {
            now - DEFAULT_SPAN_MS
        })?;
        Ok(Query {
            zone,
            since,
            until,
            direction: args.direction.clone(),
            disposition: args.disposition.as_deref().map(disposition_key),
            number: args.number.as_deref().map(report::digits),
            min_billsec: args.min_billsec,
        })
    }

    fn keeps(&self, f: &Facts) -> bool {
        f.kind == Kind::Cdr
            && self
                .direction
                .as_deref()
                .is_none_or(|d| report::direction_matches(&f.direction, d))
            && self
                .disposition
                .as_deref()
                .is_none_or(|d| disposition_key(&f.disposition) == d)
            && self.number.as_deref().is_none_or(|n| {
                report::digits(&f.src).starts_with(n) || report::digits(&f.dst).starts_with(n)
            })
            && self.min_billsec.is_none_or(|m| f.billed_seconds() >= m)
    }

    /// Walks the matching calls from `from` (a call time and sequence number, included), in
    /// call-time order, joined with their recordings, one index page at a time: `visit`
    /// gets each page's rows and where the page after it starts, and returns whether to go
    /// on.
    ///
    /// # Errors
    /// Store errors, and `visit`'s.
    pub fn walk(
        &self,
        store: &Store,
        from: (i64, u64),
        mut visit: impl FnMut(Vec<CallRow>, Option<(i64, u64)>) -> Result<bool>,
    ) -> Result<()> {
        let unfiled = store.unfiled()?;
        let mut recordings = Nearby::default();
        let mut from = (from.0.max(self.since), from.1);
        loop {
            let (page, next) = store.calls_page(&unfiled, from, self.until, SCAN_CHUNK)?;
            let cdrs: Vec<(i64, u64, Facts)> = page
                .into_iter()
                .filter(|e| self.keeps(&e.facts))
                .map(|e| (e.at_ms, e.seq, e.facts))
                .collect();
            let rows = match (cdrs.first(), cdrs.last()) {
                (Some(first), Some(last)) => {
                    recordings.cover(store, &unfiled, first.0, last.0)?;
                    report::join(cdrs, recordings.iter())
                }
                _ => Vec::new(),
            };
            if !visit(rows, next)? {
                return Ok(());
            }
            match next {
                Some(n) => from = n,
                None => return Ok(()),
            }
        }
    }
}

/// The recordings filed within the join margin of a page's calls, with their archive states,
/// for pages read in call-time order: each [`Nearby::cover`] drops those before the new
/// margin and reads the index only past where the last one stopped.
#[derive(Default)]
struct Nearby {
    /// (call time, callid, state), in call-time order.
    held: std::collections::VecDeque<(i64, String, Recording)>,
    /// Where the index was read up to (excluded): the next position to read.
    read_to: Option<(i64, u64)>,
}

impl Nearby {
    /// Holds the recordings of `[first_ms - margin, last_ms + margin]`; `first_ms` and
    /// `last_ms` never go back from one call to the next.
    fn cover(
        &mut self,
        store: &Store,
        unfiled: &Unfiled,
        first_ms: i64,
        last_ms: i64,
    ) -> Result<()> {
        let lo = first_ms.saturating_sub(RECORDING_JOIN_MARGIN_MS);
        let until = last_ms.saturating_add(RECORDING_JOIN_MARGIN_MS + 1);
        while self.held.front().is_some_and(|r| r.0 < lo) {
            self.held.pop_front();
        }
        let mut from = match self.read_to {
            Some(at) if at.0 >= lo => at,
            _ => (lo, 0),
        };
        if from.0 >= until {
            return Ok(());
        }
        let (mut seqs, mut found) = (Vec::new(), Vec::new());
        loop {
            let (page, next) = store.calls_page(unfiled, from, until, SCAN_CHUNK)?;
            for e in page {
                if e.facts.kind == Kind::Recording && !e.facts.callid.is_empty() {
                    seqs.push(e.seq);
                    found.push((e.at_ms, e.facts.callid));
                }
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        self.read_to = Some((until, 0));
        let states = store.archive_states(&seqs)?;
        self.held.extend(
            found
                .into_iter()
                .zip(states)
                .map(|((at, callid), s)| (at, callid, Recording::of_archive(s))),
        );
        Ok(())
    }

    /// The held recordings as `(callid, state)`.
    fn iter(&self) -> impl Iterator<Item = (&str, Recording)> {
        self.held.iter().map(|(_, c, s)| (c.as_str(), *s))
    }
}

/// Text from a webhook made safe for a terminal: control characters (escape sequences
/// among them) and direction controls become `?`, and it is cut to `width` characters
/// with `…`.
pub(super) fn cell(s: &str, width: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_control() || crate::untrusted::is_direction_control(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if clean.chars().count() <= width {
        clean
    } else {
        let mut cut: String = clean.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Pads `s` (already cut) to `width` characters.
pub(super) fn pad(s: &str, width: usize, right: bool) -> String {
    let n = s.chars().count();
    let fill = " ".repeat(width.saturating_sub(n));
    if right {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    }
}

/// The direction shown in the table: `in`, `out`, or what was sent, cut.
fn direction_cell(d: &str) -> String {
    match report::short_direction(d) {
        Some(short) => short.into(),
        None if d.is_empty() => report::NO_VALUE.into(),
        None => cell(d, 3),
    }
}

/// The aligned table: 95 columns with a 20-character zone name.
struct Table {
    zone: Zone,
    time_width: usize,
}

const NUMBER_WIDTH: usize = 15;
const DISPOSITION_WIDTH: usize = 11;

impl Table {
    fn new(zone: &Zone) -> Table {
        Table {
            zone: zone.clone(),
            time_width: format!("time ({})", zone.name()).chars().count().max(19),
        }
    }

    fn header(&self, buf: &mut Vec<u8>) {
        let line = format!(
            "{} {} {} {} {} {} {} recording\n",
            pad(
                &format!("time ({})", self.zone.name()),
                self.time_width,
                false
            ),
            pad("dir", 3, false),
            pad("from", NUMBER_WIDTH, false),
            pad("to", NUMBER_WIDTH, false),
            pad("disposition", DISPOSITION_WIDTH, false),
            pad("dur", 5, true),
            pad("bill", 5, true),
        );
        buf.extend_from_slice(line.as_bytes());
    }

    fn row(&self, r: &CallRow, buf: &mut Vec<u8>) {
        let f = &r.facts;
        let time = match f.at_ms {
            Some(ms) => self.zone.time(ms),
            None => cell(&format!("? {}", f.raw_time), self.time_width),
        };
        let line = format!(
            "{} {} {} {} {} {} {} {}\n",
            pad(&time, self.time_width, false),
            pad(&direction_cell(&f.direction), 3, false),
            pad(&cell(&f.src, NUMBER_WIDTH), NUMBER_WIDTH, false),
            pad(&cell(&f.dst, NUMBER_WIDTH), NUMBER_WIDTH, false),
            pad(
                &cell(&f.disposition, DISPOSITION_WIDTH),
                DISPOSITION_WIDTH,
                false
            ),
            pad(&f.duration.to_string(), 5, true),
            pad(&f.billed_seconds().to_string(), 5, true),
            r.recording.name(),
        );
        buf.extend_from_slice(line.as_bytes());
    }
}

/// The fields of a `calls` row, in the JSON and CSV order.
pub const FIELDS: [&str; 14] = [
    "callid",
    "calldate",
    "calldate_raw",
    "tz",
    "direction",
    "src",
    "dst",
    "disposition",
    "answered",
    "duration",
    "billsec",
    "recording",
    "recordings",
    "seq",
];

fn values(zone: &Zone, r: &CallRow) -> Vec<serde_json::Value> {
    use serde_json::Value;
    let f = &r.facts;
    let text = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::from(s)
        }
    };
    vec![
        text(&f.callid),
        f.at_ms
            .map_or(Value::Null, |ms| Value::from(zone.rfc3339(ms))),
        text(&f.raw_time),
        Value::from(zone.name()),
        text(&f.direction),
        text(&f.src),
        text(&f.dst),
        text(&f.disposition),
        Value::from(f.answered()),
        Value::from(f.duration),
        Value::from(f.billed_seconds()),
        Value::from(r.recording.name()),
        Value::from(r.recordings),
        Value::from(r.seq),
    ]
}

fn json_row(zone: &Zone, r: &CallRow, buf: &mut Vec<u8>) {
    let map: serde_json::Map<String, serde_json::Value> = FIELDS
        .iter()
        .map(|k| (*k).to_string())
        .zip(values(zone, r))
        .collect();
    buf.extend_from_slice(serde_json::Value::Object(map).to_string().as_bytes());
    buf.push(b'\n');
}

fn csv_header(buf: &mut Vec<u8>) -> Result<()> {
    let mut w = csv::Writer::from_writer(buf);
    w.write_record(FIELDS).map_err(csv_error)?;
    w.flush()?;
    Ok(())
}

fn csv_row(zone: &Zone, r: &CallRow, buf: &mut Vec<u8>) -> Result<()> {
    let cells: Vec<String> = values(zone, r)
        .into_iter()
        .map(|v| match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    let mut w = csv::Writer::from_writer(buf);
    w.write_record(&cells).map_err(csv_error)?;
    w.flush()?;
    Ok(())
}

pub(super) fn csv_error(e: csv::Error) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_terminal_safe_and_cut() {
        assert_eq!(cell("a\u{1b}[31mb", 10), "a?[31mb");
        assert_eq!(cell("\u{202e}evil", 10), "?evil");
        assert_eq!(cell("1234567890", 5), "1234…");
        assert_eq!(pad("ab", 4, true), "  ab");
    }

    /// Calls over six hours, read in several index pages, with recordings filed at the call's
    /// time, 50 minutes before it and 50 minutes after it: every one is joined to its call,
    /// whichever page it is read with.
    #[test]
    fn recordings_join_their_calls_across_index_pages() {
        use crate::event::{BodyFormat, Event};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 64 << 20).unwrap();
        let start_ms = 1_778_544_000_000; // 2026-05-12T00:00:00Z
        let time = crate::timestamp::format_ms;
        let event = |kind: &str, body: String| {
            Event {
                kind: kind.to_string(),
                format: BodyFormat::Json,
                peer: None,
                content_type: b"application/json".to_vec(),
                body: body.into_bytes(),
                callid: None,
                call: None,
            }
            .with_call_facts()
        };
        let calls = 3000;
        let mut w = store.begin_write(start_ms).unwrap();
        for i in 0..calls {
            let at = start_ms + 60_000 + i * 7_200;
            let cdr = format!(
                r#"{{"event":"cdr","calldate":"{}","callid":"c{i}","disposition":"ANSWERED","billsec":5}}"#,
                time(at)
            );
            let ev = event("cdr", cdr);
            w.append_event(&ev, crate::store::body_hash(&ev.body))
                .unwrap();
            let offset = match i % 4 {
                0 => continue,
                1 => 0,
                2 => -50 * 60_000,
                _ => 50 * 60_000,
            };
            let rec = format!(
                r#"{{"event":"recording","calldate":"{}","callid":"c{i}","recording_url":"https://example.com/{i}.mp3"}}"#,
                time(at + offset)
            );
            let ev = event("recording", rec);
            w.append_event(&ev, crate::store::body_hash(&ev.body))
                .unwrap();
        }
        w.commit().unwrap();
        let mut w = store.begin_write(start_ms).unwrap();
        w.index_calls(&mut std::collections::VecDeque::new(), usize::MAX)
            .unwrap();
        w.commit().unwrap();
        let args = Args {
            since: Some(time(start_ms)),
            until: Some(time(start_ms + 24 * 3_600_000)),
            direction: None,
            disposition: None,
            number: None,
            min_billsec: None,
            format: Format::Json,
            tz: Some("UTC".into()),
            config_tz: None,
        };
        let (mut rows, mut pages) = (Vec::new(), 0);
        Query::new(&args)
            .unwrap()
            .walk(&store, (0, 0), |page, _| {
                pages += 1;
                rows.extend(page);
                Ok(true)
            })
            .unwrap();
        assert!(pages >= 4, "{pages} index pages");
        assert_eq!(rows.len(), calls as usize);
        for r in &rows {
            let i: i64 = r.facts.callid[1..].parse().unwrap();
            let want = u32::from(i % 4 != 0);
            assert_eq!(r.recordings, want, "{}", r.facts.callid);
            let state = if want == 1 {
                Recording::Received
            } else {
                Recording::None
            };
            assert_eq!(r.recording, state, "{}", r.facts.callid);
        }
    }
}
