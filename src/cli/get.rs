//! `didgate get CALLID`: every event of one call (its CDR and recordings), oldest first, found
//! through the call index: one sorted record per 1,024 events, read with a binary search, so
//! no event body is read but the call's own (and those of the newest, not yet indexed, block).

use std::io::Write;

use super::{Error, Result, emit, tail};
use crate::event::BodyFormat;
use crate::ingest::decode::JsonDecoder;
use crate::store::Store;

/// Prints the call's events.
///
/// # Errors
/// [`Error::NoMatch`] (exit 1) when no event carries that callid; store and output errors.
pub fn run(store: &Store, callid: &str, raw: bool, out: &mut impl Write) -> Result<()> {
    // The index holds a hash of the callid: confirm each candidate from its body.
    let mut json = JsonDecoder::default();
    let events = store.call_events(callid, |rec| {
        rec.format == BodyFormat::Json
            && json
                .decode(rec.body)
                .is_ok_and(|f| f.callid.as_deref() == Some(callid))
    })?;
    if events.is_empty() {
        return Err(Error::NoMatch(format!("no events for call {callid:?}")));
    }
    let mut buf = Vec::new();
    tail::print(store, &events, raw, &mut buf);
    emit(out, &mut buf)
}
