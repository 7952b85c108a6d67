//! `didgate check`: verifies the store's invariants (records decode, stamps in order, indexes
//! and counters agree with the events) in one read transaction, beside a running `serve`.

use std::io::Write;

use super::{Error, Result, emit};
use crate::store::Store;

/// Prints the report; any problem makes the exit status 1.
///
/// # Errors
/// [`Error::NoMatch`] (exit 1) when the store is inconsistent; store and output errors.
pub fn run(store: &Store, out: &mut impl Write) -> Result<()> {
    let report = store.check()?;
    let mut buf = format!(
        "{} events, {} quarantined, {} call index entries: {}\n",
        report.events,
        report.quarantined,
        report.call_entries,
        if report.problems.is_empty() {
            "consistent"
        } else {
            "INCONSISTENT"
        }
    )
    .into_bytes();
    for p in &report.problems {
        buf.extend_from_slice(format!("  {p}\n").as_bytes());
    }
    emit(out, &mut buf)?;
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(Error::NoMatch(format!(
            "{} problems found",
            report.problems.len()
        )))
    }
}
