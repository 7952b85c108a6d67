//! `didgate export [--since T] [--until T] [--kind K] [--format jsonl|csv]`: events in a time
//! range, as JSON lines or as CSV.
//!
//! `--since` is inclusive and `--until` exclusive, so `--since 2026-05-12 --until 2026-05-13`
//! is one UTC day. The start is found by binary search (stamps never decrease along the
//! sequence); the scan stops at the first event at or past `--until`.

use std::io::Write;

use super::render::{self, PayloadFields};
use super::{Error, Result, SCAN_CHUNK, emit, tail};
use crate::store::{Store, StoredEvent};
use crate::timestamp;

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per event (one kind only).
    Csv,
}

/// What `export` was asked.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// First stamp included (RFC 3339 or a date).
    pub since: Option<String>,
    /// First stamp excluded (RFC 3339 or a date).
    pub until: Option<String>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// How each event is written.
    pub format: Format,
    /// Print each stored body as received instead of JSON lines.
    pub raw: bool,
}

/// Runs the export.
///
/// # Errors
/// [`Error::Usage`] for a bad time, an unknown kind, or CSV without `--kind`; store and output
/// errors.
pub fn run(store: &Store, args: &Args, out: &mut impl Write) -> Result<()> {
    let parse = |t: &Option<String>| -> Result<Option<i64>> {
        t.as_deref()
            .map(timestamp::parse_time_arg)
            .transpose()
            .map_err(|e| Error::Usage(e.to_string()))
    };
    let (since, until) = (parse(&args.since)?, parse(&args.until)?);
    if let Some(k) = &args.kind {
        super::check_kind(store, k)?;
    }
    if args.format == Format::Csv && args.kind.is_none() {
        return Err(Error::Usage(
            "--format csv needs --kind (each kind has its own columns)".into(),
        ));
    }
    let start = match since {
        None => 0,
        // Nothing stamped at or after `--since`: an empty export.
        Some(ms) => store.first_seq_at(ms)?.unwrap_or(u64::MAX),
    };
    let range = Range {
        start,
        until,
        kind: args.kind.as_deref(),
    };
    let mut buf = Vec::new();
    match args.format {
        Format::Jsonl => range.each_chunk(store, |events| {
            tail::print(store, events, args.raw, &mut buf);
            emit(out, &mut buf)
        }),
        Format::Csv => {
            let kind = args.kind.as_deref().unwrap_or_default();
            let mut columns: Vec<String> = render::documented_fields(kind)
                .iter()
                .map(|s| s.to_string())
                .collect();
            // First pass: the columns, documented ones first, then others as first seen.
            range.each_chunk(store, |events| {
                for ev in events {
                    for name in PayloadFields::of(ev).names() {
                        if !columns.iter().any(|c| c == name) {
                            columns.push(name.to_string());
                        }
                    }
                }
                Ok(())
            })?;
            let mut csv = csv::Writer::from_writer(out);
            let mut header = vec!["seq".to_string(), "stored_at".to_string()];
            header.extend(columns.iter().cloned());
            csv.write_record(&header).map_err(csv_error)?;
            range.each_chunk(store, |events| {
                for ev in events {
                    let fields = PayloadFields::of(ev);
                    let mut row = vec![ev.seq.to_string(), timestamp::format_ms(ev.stored_at_ms)];
                    row.extend(
                        columns
                            .iter()
                            .map(|c| render::csv_cell(&fields, c).into_owned()),
                    );
                    csv.write_record(&row).map_err(csv_error)?;
                }
                Ok(csv.flush()?)
            })
        }
    }
}

fn csv_error(e: csv::Error) -> Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::from(io),
        other => Error::Usage(format!("CSV: {other:?}")),
    }
}

/// The events of one export, visited a read transaction at a time.
struct Range<'a> {
    start: u64,
    until: Option<i64>,
    kind: Option<&'a str>,
}

impl Range<'_> {
    fn each_chunk(
        &self,
        store: &Store,
        mut f: impl FnMut(&[StoredEvent]) -> Result<()>,
    ) -> Result<()> {
        let mut from = self.start;
        if from == u64::MAX {
            return Ok(());
        }
        loop {
            let mut past_until = false;
            let page = store.events_forward(from, SCAN_CHUNK, |_, r| {
                past_until |= self.until.is_some_and(|u| r.stored_at_ms >= u);
                !past_until && self.kind.is_none_or(|k| k == r.kind)
            })?;
            f(&page.items)?;
            match page.next {
                Some(next) if !past_until => from = next,
                _ => return Ok(()),
            }
        }
    }
}
