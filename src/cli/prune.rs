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
    let done = retention::prune_all(
        &store,
        &Cutoffs::everything_before(before_ms),
        timestamp::now_ms(),
    )?;
    let mut buf = format!(
        "pruned {} events and {} quarantined bodies stored before {}\n",
        done.events_deleted,
        done.quarantined_deleted,
        timestamp::format_ms(before_ms)
    )
    .into_bytes();
    emit(out, &mut buf)
}
