//! `didgate prune --before T`: deletes events and quarantined bodies stamped before T, by hand,
//! in the same small slices the writer's retention uses. Works beside a running `serve`.

use std::io::Write;
use std::path::Path;

use super::{Error, Result, emit};
use crate::store::Store;
use crate::timestamp;
use crate::writer::retention::{self, Cutoffs};

/// Prunes and reports what was deleted.
///
/// # Errors
/// [`Error::Usage`] for a bad time; store and output errors.
pub fn run(data: &Path, before: &str, out: &mut impl Write) -> Result<()> {
    let before_ms = timestamp::parse_time_arg(before).map_err(|e| Error::Usage(e.to_string()))?;
    if before_ms > timestamp::now_ms() {
        return Err(Error::Usage(format!(
            "--before {before} is in the future: that would delete events still arriving"
        )));
    }
    let store = Store::open_existing_writer(data)?;
    // Asked by hand: everything before T goes, delivered or not; what a forwarding
    // destination had not delivered yet is named below.
    let protect = retention::Protect {
        destinations: store.dest_states()?.into_iter().map(|(d, _)| d).collect(),
        force: true,
    };
    let done = retention::prune_all(
        &store,
        &Cutoffs::everything_before(before_ms),
        &protect,
        timestamp::now_ms(),
    )?;
    let mut text = format!(
        "pruned {} events and {} quarantined bodies stored before {}\n",
        done.events_deleted,
        done.quarantined_deleted,
        timestamp::format_ms(before_ms)
    );
    for (dest, d) in &done.dropped {
        text.push_str(&format!(
            "  {} of them (seq {} to {}) had not been delivered to forward destination {dest}\n",
            d.events, d.first, d.last
        ));
    }
    let mut buf = text.into_bytes();
    emit(out, &mut buf)
}
