//! The reader tool: subcommands that read the store while `serve` writes it.
//!
//! Owns what every reader shares: opening the store read-only, output that treats a closed pipe
//! (`| head`) as a normal end, checking `--kind`, and the exit codes. Each subcommand is one
//! file; rendering is `render.rs`. Every read is a short transaction of the store whose results
//! are copied out before anything is written, so a reader blocked on its output never pins
//! pages the writer wants to reuse.

pub mod alerts;
pub mod backup;
pub mod calls;
pub mod check;
pub mod consume;
pub mod cursor;
pub mod deliveries;
pub mod export;
pub mod get;
pub mod prune;
pub mod quarantine;
pub mod recordings;
pub mod render;
pub mod report;
pub mod stats;
pub mod tail;
pub mod urls;

use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::ingest::route::Hook;
use crate::store::{self, Store};

/// Events looked at per read transaction: small enough that a transaction is short (a few
/// milliseconds), large enough that per-transaction cost is negligible.
pub const SCAN_CHUNK: usize = 1024;

/// The zone times are shown in: `--tz`, else the config's `timezone`, else the system's; a
/// name the time-zone database does not know is a usage error.
///
/// # Errors
/// [`Error::Usage`] naming the zone.
pub fn zone(flag: Option<&str>, config: Option<&str>) -> Result<crate::call::zone::Zone> {
    crate::call::zone::Zone::resolve(flag, config).map_err(|e| Error::Usage(e.to_string()))
}

/// Why a reader subcommand stopped early.
#[derive(Debug)]
pub enum Error {
    /// Bad arguments (bad time, unknown kind, CSV without a kind). Exit 2.
    Usage(String),
    /// The store could not be read (missing data directory among them). Exit 2.
    Store(store::Error),
    /// Writing the output failed for another reason than a closed pipe. Exit 2.
    Io(std::io::Error),
    /// The reader closed our output (`| head`): a normal end. Exit 0.
    Closed,
    /// The query matched nothing where that is the answer (`get`). Exit 1.
    NoMatch(String),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Store(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == ErrorKind::BrokenPipe {
            Error::Closed
        } else {
            Error::Io(e)
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(m) | Error::NoMatch(m) => f.write_str(m),
            Error::Store(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "writing output: {e}"),
            Error::Closed => f.write_str("output closed"),
        }
    }
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Closed => 0,
            Error::NoMatch(_) => 1,
            _ => 2,
        }
    }
}

/// A reader subcommand's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Opens the store at `data` read-only.
///
/// # Errors
/// [`Error::Store`] when there is no store there or it cannot be read.
pub fn open(data: &Path) -> Result<Store> {
    Ok(Store::open_reader(data)?)
}

/// Checks a `--kind` value: one of the three hooks' kinds, or a kind the store has seen.
///
/// # Errors
/// [`Error::Usage`] naming the known kinds.
pub fn check_kind(store: &Store, kind: &str) -> Result<()> {
    if Hook::ALL.iter().any(|h| h.name() == kind) {
        return Ok(());
    }
    let counts = store.counts()?;
    if counts.by_kind.contains_key(kind) {
        return Ok(());
    }
    let mut known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
    known.extend(counts.by_kind.keys().map(String::as_str));
    known.sort_unstable();
    known.dedup();
    Err(Error::Usage(format!(
        "unknown kind {kind:?} (known kinds: {})",
        known.join(", ")
    )))
}

/// Writes `buf` to `out` and flushes, so a follower sees lines as they come.
///
/// # Errors
/// [`Error::Closed`] when the pipe was closed, [`Error::Io`] otherwise.
pub fn emit(out: &mut impl Write, buf: &mut Vec<u8>) -> Result<()> {
    out.write_all(buf)?;
    out.flush()?;
    buf.clear();
    Ok(())
}
