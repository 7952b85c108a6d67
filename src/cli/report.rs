//! `didgate report`: calls, answer rate, durations, billed minutes, recordings and SMS per
//! group of call time, direction, disposition, destination prefix or number.
//!
//! Groupings by time alone (day, hour, week, month) add the quarter-hour rollups the writer
//! keeps: a year is 35,040 of them, whatever the traffic. A range that does not start or end
//! on a quarter hour reads its partial quarter hours from the call index. Any other grouping
//! reads the call index over the range (one entry per call, recording and SMS), a page per
//! short read transaction; recordings are counted in their call's group.

use std::io::Write;

use super::calls::{Format, cell, csv_error, pad, range};
use super::{Error, Result, SCAN_CHUNK, emit};
use crate::call::facts::{Facts, Kind};
use crate::call::report::{By, Grouping, Rows};
use crate::call::tally::{BUCKET_MS, Tally, bucket_of};
use crate::store::{Store, Unfiled};

/// Digits of `dst` that `--by dst-prefix` keeps by default.
pub const DEFAULT_PREFIX_LEN: usize = 3;

/// Days `report` covers by default: the last 30, today included.
pub const DEFAULT_DAYS: i64 = 30;

/// What `report` was asked.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// First call time included.
    pub since: Option<String>,
    /// First call time excluded.
    pub until: Option<String>,
    /// Groupings, in order (default: day).
    pub by: Vec<String>,
    /// Digits kept by `dst-prefix`.
    pub prefix_len: Option<usize>,
    /// How rows are written.
    pub format: Format,
    /// `--tz`.
    pub tz: Option<String>,
    /// The config's `timezone`.
    pub config_tz: Option<String>,
}

/// Reads the rows of a report over `[since, until)`.
///
/// # Errors
/// Store errors.
pub fn rows(store: &Store, g: &Grouping, since: i64, until: i64) -> Result<Rows> {
    let mut rows = Rows::default();
    let unfiled = store.unfiled()?;
    let scan =
        |from, until, join, rows: &mut Rows| scan(store, &unfiled, g, from, until, join, rows);
    if g.rollups_suffice() {
        // Whole quarter hours from the rollups, the partial ones at either end from the index.
        let first = bucket_of(since.saturating_add(BUCKET_MS - 1));
        let last = bucket_of(until);
        if first < last {
            for (bucket, t) in store.rollups(first, last)? {
                rows.add_rollup(g, bucket, &t);
            }
            scan(since, first * BUCKET_MS, false, &mut rows)?;
            scan(last.saturating_mul(BUCKET_MS), until, false, &mut rows)?;
        } else {
            scan(since, until, false, &mut rows)?;
        }
    } else {
        scan(since, until, true, &mut rows)?;
    }
    Ok(rows)
}

/// Adds the index entries of `[from, until)`; `join`: count recordings in their call's group.
fn scan(
    store: &Store,
    unfiled: &Unfiled,
    g: &Grouping,
    from: i64,
    until: i64,
    join: bool,
    rows: &mut Rows,
) -> Result<()> {
    if from >= until {
        return Ok(());
    }
    let mut at = (from, 0u64);
    // With `join`, entries are grouped a whole quarter hour at a time, so a recording filed
    // on the next page still finds its call; without, a page at a time.
    let mut pending = Pending::default();
    loop {
        let (page, next) = store.calls_page(unfiled, at, until, SCAN_CHUNK)?;
        for e in page {
            if join
                && let Some(first) = pending.entries.first()
                && bucket_of(first.0) != bucket_of(e.at_ms)
            {
                pending.flush(store, g, rows)?;
            }
            if e.facts.kind == Kind::Recording {
                pending.recordings.push((pending.entries.len(), e.seq));
            }
            pending.entries.push((e.at_ms, e.facts, false));
        }
        if !join {
            pending.flush(store, g, rows)?;
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    pending.flush(store, g, rows)
}

/// Index entries read and not added to the rows yet: (call time, facts, archived), and which
/// of them are recordings (position, sequence number), whose archive states are read at once.
#[derive(Default)]
struct Pending {
    entries: Vec<(i64, Facts, bool)>,
    recordings: Vec<(usize, u64)>,
}

impl Pending {
    fn flush(&mut self, store: &Store, g: &Grouping, rows: &mut Rows) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let seqs: Vec<u64> = self.recordings.iter().map(|(_, s)| *s).collect();
        for ((i, _), state) in self.recordings.iter().zip(store.archive_states(&seqs)?) {
            if let Some(e) = self.entries.get_mut(*i) {
                e.2 = state.is_some_and(|s| s.holds_file());
            }
        }
        rows.add_entries(g, &self.entries);
        self.entries.clear();
        self.recordings.clear();
        Ok(())
    }
}

/// Runs `report`.
///
/// # Errors
/// [`Error::Usage`] for a bad time, zone or grouping; store and output errors.
pub fn run(store: &Store, args: &Args, out: &mut impl Write) -> Result<()> {
    let zone = super::zone(args.tz.as_deref(), args.config_tz.as_deref())?;
    let mut by = Vec::new();
    for name in args.by.iter().flat_map(|b| b.split(',')) {
        let name = name.trim();
        let b = By::parse(name).ok_or_else(|| {
            Error::Usage(format!(
                "--by {name:?}: use {}",
                By::ALL.map(By::name).join(", ")
            ))
        })?;
        if !by.contains(&b) {
            by.push(b);
        }
    }
    if by.is_empty() {
        by.push(By::Day);
    }
    let prefix_len = args.prefix_len.unwrap_or(DEFAULT_PREFIX_LEN);
    if prefix_len == 0 || prefix_len > 15 {
        return Err(Error::Usage("--prefix-len: 1 to 15 digits".into()));
    }
    let (since, until) = range(&zone, args.since.as_deref(), args.until.as_deref(), |now| {
        zone.day_start(now, DEFAULT_DAYS - 1)
    })?;
    let g = Grouping {
        by,
        prefix_len,
        zone,
    };
    let rows = rows(store, &g, since, until)?;
    let mut buf = Vec::new();
    match args.format {
        Format::Table => table(&g, &rows, &mut buf),
        Format::Json => {
            for (key, t) in &rows.0 {
                let mut map = serde_json::Map::new();
                for (b, k) in g.by.iter().zip(key) {
                    map.insert(b.name().to_string(), k.clone().into());
                }
                for (name, v) in value_fields(t) {
                    map.insert(name.to_string(), v);
                }
                map.insert("tz".into(), g.zone.name().into());
                buf.extend_from_slice(serde_json::Value::Object(map).to_string().as_bytes());
                buf.push(b'\n');
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut buf);
            let mut header: Vec<&str> = g.by.iter().map(|b| b.name()).collect();
            header.extend(value_fields(&Tally::default()).iter().map(|(n, _)| *n));
            header.push("tz");
            w.write_record(&header).map_err(csv_error)?;
            for (key, t) in &rows.0 {
                let mut cells: Vec<String> = key.clone();
                cells.extend(value_fields(t).into_iter().map(|(_, v)| match v {
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                }));
                cells.push(g.zone.name().to_string());
                w.write_record(&cells).map_err(csv_error)?;
            }
            w.flush()?;
        }
    }
    emit(out, &mut buf)
}

/// One decimal, as reports show rates and means.
fn one_decimal(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64((x * 10.0).round() / 10.0)
        .map_or(serde_json::Value::Null, Into::into)
}

/// The value columns of a row, named as in JSON and CSV.
pub fn value_fields(t: &Tally) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("calls", t.calls.into()),
        ("answered", t.answered.into()),
        (
            "asr_percent",
            t.asr_percent().map_or(serde_json::Value::Null, one_decimal),
        ),
        (
            "acd_seconds",
            t.acd_seconds().map_or(serde_json::Value::Null, one_decimal),
        ),
        ("billsec", t.billsec.into()),
        ("billed_minutes", t.billed_minutes.into()),
        ("longest_billsec", t.longest.into()),
        ("recordings_archived", t.archived.into()),
        ("recordings_missing", t.recordings_missing().into()),
        ("sms", t.sms.into()),
    ]
}

/// `m:ss`.
fn minutes_seconds(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn table(g: &Grouping, rows: &Rows, buf: &mut Vec<u8>) {
    const KEY_MAX: usize = 24;
    let widths: Vec<usize> =
        g.by.iter()
            .enumerate()
            .map(|(i, b)| {
                rows.0
                    .keys()
                    .map(|k| cell(&k[i], KEY_MAX).chars().count())
                    .chain([b.name().len(), 5])
                    .max()
                    .unwrap_or(5)
            })
            .collect();
    let cols: [(&str, usize); 10] = [
        ("calls", 7),
        ("answered", 8),
        ("ASR%", 6),
        ("ACD", 6),
        ("bill_min", 9),
        ("billsec", 9),
        ("longest", 7),
        ("rec_ok", 6),
        ("rec_miss", 8),
        ("sms", 6),
    ];
    let mut line = String::new();
    for (b, w) in g.by.iter().zip(&widths) {
        line.push_str(&pad(b.name(), *w, false));
        line.push(' ');
    }
    for (name, w) in cols {
        line.push_str(&pad(name, w, true));
        line.push(' ');
    }
    let mut text = format!("{}\n", line.trim_end());
    let mut draw = |key: &[String], t: &Tally| {
        let mut line = String::new();
        for (k, w) in key.iter().zip(&widths) {
            line.push_str(&pad(&cell(k, KEY_MAX), *w, false));
            line.push(' ');
        }
        let values = [
            t.calls.to_string(),
            t.answered.to_string(),
            t.asr_percent().map_or("-".into(), |x| format!("{x:.1}")),
            t.acd_seconds().map_or("-".into(), minutes_seconds),
            t.billed_minutes.to_string(),
            t.billsec.to_string(),
            minutes_seconds(t.longest as f64),
            t.archived.to_string(),
            t.recordings_missing().to_string(),
            t.sms.to_string(),
        ];
        for (v, (_, w)) in values.iter().zip(cols) {
            line.push_str(&pad(v, w, true));
            line.push(' ');
        }
        text.push_str(line.trim_end());
        text.push('\n');
    };
    for (key, t) in &rows.0 {
        draw(key, t);
    }
    let total_key: Vec<String> =
        g.by.iter()
            .enumerate()
            .map(|(i, _)| {
                if i == 0 {
                    "total".to_string()
                } else {
                    String::new()
                }
            })
            .collect();
    draw(&total_key, &rows.total());
    text.push_str(&format!(
        "times in {}; ASR = answered / calls; ACD = billed seconds per answered call (m:ss); \
         bill_min = billed seconds rounded up to the minute per call, summed; billsec = exact \
         billed seconds; rec_miss = billed calls without an archived recording\n",
        g.zone.name()
    ));
    buf.extend_from_slice(text.as_bytes());
}
