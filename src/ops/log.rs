//! Log lines to stderr (journald keeps them), with a settable level and rate-limited repeats.
//!
//! Owns the line format and the limiting; callers decide what is worth a line. No line ever
//! carries the hook token: callers pass reasons and peers, never request targets (the one
//! start-up line that prints the URLs goes to stdout, from `serve.rs`).

use std::collections::HashMap;
use std::fmt::Arguments;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Severity, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Failures that need an operator.
    Error = 0,
    /// Trouble the gateway works around.
    Warn = 1,
    /// Start, stop, reload, retention.
    Info = 2,
    /// Detail for diagnosis.
    Debug = 3,
}

impl Level {
    /// Parses `error`, `warn`, `info`, `debug`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// A warning with the same key is written at most once per this interval; the suppressed count
/// is reported with the next one. Long enough that a flood of bad requests cannot fill the
/// journal, short enough that an operator watching sees the problem continue.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Per key: when a line was last written, and how many were suppressed since.
type Repeats = HashMap<&'static str, (Option<Instant>, u64)>;

static LIMITS: Mutex<Option<Repeats>> = Mutex::new(None);

/// Sets the most verbose level written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level`.
pub fn write(level: Level, args: Arguments<'_>) {
    if enabled(level) {
        // One write per line: stderr is unbuffered, and a line written in pieces could be
        // split by stdout's output when both go to the same file.
        let line = format!("didgate: {}: {args}\n", level.name());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Logs at error level.
pub fn error(args: Arguments<'_>) {
    write(Level::Error, args);
}

/// Logs at warn level.
pub fn warn(args: Arguments<'_>) {
    write(Level::Warn, args);
}

/// Logs at info level.
pub fn info(args: Arguments<'_>) {
    write(Level::Info, args);
}

/// A warning that may repeat at high rate (bad requests, failed commits): written at most once
/// per [`REPEAT_INTERVAL`] per `key`, with how many were suppressed since.
pub fn warn_limited(key: &'static str, args: Arguments<'_>) {
    if !enabled(Level::Warn) {
        return;
    }
    let suppressed = {
        let Ok(mut guard) = LIMITS.lock() else { return };
        let map = guard.get_or_insert_with(HashMap::new);
        let now = Instant::now();
        let entry = map.entry(key).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|last| now.duration_since(last) < REPEAT_INTERVAL)
        {
            entry.1 += 1;
            return;
        }
        let suppressed = entry.1;
        *entry = (Some(now), 0);
        suppressed
    };
    if suppressed > 0 {
        warn(format_args!("{args} ({suppressed} similar suppressed)"));
    } else {
        warn(args);
    }
}
