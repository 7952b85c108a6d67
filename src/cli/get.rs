//! `didgate get CALLID`: every event of one call (its CDR and recordings), oldest first, found
//! through the call index without a scan.

use std::io::Write;

use super::{Error, Result, emit, tail};
use crate::store::Store;

/// Prints the call's events.
///
/// # Errors
/// [`Error::NoMatch`] (exit 1) when no event carries that callid; store and output errors.
pub fn run(store: &Store, callid: &str, raw: bool, out: &mut impl Write) -> Result<()> {
    let events = store.call_events(callid)?;
    if events.is_empty() {
        return Err(Error::NoMatch(format!("no events for call {callid:?}")));
    }
    let mut buf = Vec::new();
    tail::print(&events, raw, &mut buf);
    emit(out, &mut buf)
}
