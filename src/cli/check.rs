//! `didgate check`: verifies the store's invariants (records decode, stamps in order, indexes
//! and counters agree with the events) in one read transaction, beside a running `serve`.

use std::io::Write;

use super::{Error, Result, emit};
use crate::store::Store;

/// Prints the report, as text or (`json`) one JSON object; any problem makes the exit status 1.
///
/// # Errors
/// [`Error::NoMatch`] (exit 1) when the store is inconsistent; store and output errors.
pub fn run(store: &Store, json: bool, out: &mut impl Write) -> Result<()> {
    let report = store.check()?;
    let consistent = report.problems.is_empty();
    let mut buf = if json {
        let mut line = serde_json::json!({
            "events": report.events,
            "quarantined": report.quarantined,
            "call_index_entries": report.call_entries,
            "call_index_entries_unblocked": report.call_entries_unblocked,
            "calls_indexed": report.calls_indexed,
            "consistent": consistent,
            "problems": report.problems,
        })
        .to_string();
        line.push('\n');
        line.into_bytes()
    } else {
        let mut text = format!(
            "{} events, {} quarantined, {} call index entries ({} not yet in a complete block), \
             {} calls/recordings/SMS by call time with their rollups: {}\n",
            report.events,
            report.quarantined,
            report.call_entries,
            report.call_entries_unblocked,
            report.calls_indexed,
            if consistent {
                "consistent"
            } else {
                "INCONSISTENT"
            }
        );
        for p in &report.problems {
            text.push_str(&format!("  {p}\n"));
        }
        text.into_bytes()
    };
    emit(out, &mut buf)?;
    if consistent {
        Ok(())
    } else {
        Err(Error::NoMatch(format!(
            "{} problems found",
            report.problems.len()
        )))
    }
}
