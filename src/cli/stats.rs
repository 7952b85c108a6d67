//! `didgate stats [--json]`: counts per kind and per day, quarantined and duplicate counts,
//! first and last event, database size. Reads counters kept by the writer, not a scan.

use std::io::Write;

use serde_json::json;

use super::{Result, emit};
use crate::store::{Store, StoredEvent};
use crate::timestamp;

/// Prints the statistics, as text or (with `json`) one JSON object.
///
/// # Errors
/// Store and output errors.
pub fn run(store: &Store, as_json: bool, out: &mut impl Write) -> Result<()> {
    let counts = store.counts()?;
    let space = store.space()?;
    let first = store.events_forward(0, 1, |_, _| true)?.items.pop();
    let last = store.events_backward(None, 1, |_, _| true)?.items.pop();
    let total: u64 = counts.by_kind.values().sum();
    let dups: u64 = counts.duplicates.values().sum();
    let mut buf = Vec::new();
    if as_json {
        let edge = |e: &Option<StoredEvent>| {
            e.as_ref().map(|e| {
                json!({"seq": e.seq, "stored_at": timestamp::format_ms(e.stored_at_ms), "kind": e.kind})
            })
        };
        let doc = json!({
            "events": total,
            "by_kind": counts.by_kind,
            "by_day": counts.by_day,
            "duplicates": counts.duplicates,
            "quarantined": counts.quarantined,
            "first_event": edge(&first),
            "last_event": edge(&last),
            "database": {
                "used_bytes": space.used_bytes,
                "file_bytes": space.file_bytes,
                "map_bytes": space.map_bytes,
            },
        });
        buf.extend_from_slice(doc.to_string().as_bytes());
        buf.push(b'\n');
        return emit(out, &mut buf);
    }
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(s, "events       {total}");
    for (kind, n) in &counts.by_kind {
        let _ = writeln!(s, "  {kind:<11}{n}");
    }
    let _ = writeln!(
        s,
        "duplicates   {dups} (retries recognised, not stored again)"
    );
    for (kind, n) in &counts.duplicates {
        let _ = writeln!(s, "  {kind:<11}{n}");
    }
    let _ = writeln!(
        s,
        "quarantined  {} (see `didgate quarantine list`)",
        counts.quarantined
    );
    for (label, e) in [("first event", &first), ("last event ", &last)] {
        match e {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "{label}  {} (seq {}, {})",
                    timestamp::format_ms(e.stored_at_ms),
                    e.seq,
                    e.kind
                );
            }
            None => {
                let _ = writeln!(s, "{label}  none");
            }
        }
    }
    let _ = writeln!(
        s,
        "database     {} used, {} on disk, map {}",
        bytes(space.used_bytes),
        bytes(space.file_bytes),
        bytes(space.map_bytes)
    );
    if !counts.by_day.is_empty() {
        let _ = writeln!(s, "per day (UTC)");
        for (day, kinds) in &counts.by_day {
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(s, "  {day}  {}", parts.join(", "));
        }
    }
    buf.extend_from_slice(s.as_bytes());
    emit(out, &mut buf)
}

/// Bytes in binary units, one decimal: `1.5 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
