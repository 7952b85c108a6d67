//! `didgate consume NAME`: feeds events after a named, durable cursor to a script, batch by
//! batch, at least once.
//!
//! With `--exec CMD`, each batch goes as JSON lines (the `export` format) to the standard
//! input of `sh -c CMD`; the cursor moves past the batch only when the command exits 0. A
//! non-zero exit, a crash or a signal sends the same batch again after a backoff (1 s, doubling
//! to a minute), logged with the end of the command's stderr. Without `--exec` the batches are
//! printed; the cursor moves only with `--commit`, once the batch is written to stdout: a
//! reader that dies after that loses the batch (at most once).
//!
//! The cursor is written in a short transaction of this process's own (beside `serve`,
//! serialised by LMDB's write lock), at most every [`CURSOR_COMMIT_EVERY`] and always when
//! caught up or stopping: one fsync a second instead of one per batch keeps it off ingest's
//! commits. A consumer killed in between sends the batches of that last second again (at
//! least once). The process runs at niceness [`NICENESS`], so ingest goes first.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Error, Result, SCAN_CHUNK, check_kind, emit};
use crate::forward::state::check_name;
use crate::store::{Store, StoredEvent};

/// Events per batch when `--batch` is not given.
pub const DEFAULT_BATCH: usize = 100;
/// Most events per batch.
pub const MAX_BATCH: usize = 100_000;
/// First wait after a failed batch; doubled per failure in a row up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a batch.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often `--follow` looks for new events.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes of the command's stderr kept for the log.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// Longest the stored cursor may trail the batches consumed.
pub const CURSOR_COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Niceness of `consume` and its commands.
pub const NICENESS: libc::c_int = 19;

/// `consume`'s options.
pub struct Args {
    /// The consumer (cursor) name.
    pub name: String,
    /// The command, run by `sh -c`.
    pub exec: Option<String>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Events per batch.
    pub batch: usize,
    /// Keep waiting for new events.
    pub follow: bool,
    /// Without `--exec`: move the cursor once a batch is printed.
    pub commit: bool,
}

/// One batch: its events, and the last sequence number looked at (the cursor's next value,
/// past events of other kinds too).
struct Batch {
    events: Vec<StoredEvent>,
    through: u64,
}

fn next_batch(store: &Store, after: u64, args: &Args) -> Result<Option<Batch>> {
    let mut events = Vec::new();
    let mut through = None;
    let mut from = after + 1;
    loop {
        let room = args.batch - events.len();
        let (mut taken, mut full, mut last_seen) = (0, false, None);
        let page = store.events_forward(from, SCAN_CHUNK, |seq, rec| {
            if full {
                return false;
            }
            let keep = args.kind.as_deref().is_none_or(|k| k == rec.kind);
            if keep {
                taken += 1;
                full = taken == room;
            }
            last_seen = Some(seq);
            keep
        })?;
        events.extend(page.items);
        if last_seen.is_some() {
            through = last_seen;
        }
        match page.next {
            Some(n) if !full => from = n,
            _ => break,
        }
    }
    Ok(through.map(|through| Batch { events, through }))
}

/// Runs the consumer until caught up (or forever with `--follow`).
///
/// # Errors
/// Usage, store and output errors; a command that cannot be started at all.
pub fn run(data: &Path, args: &Args, out: &mut impl Write) -> Result<()> {
    check_name(&args.name).map_err(|e| Error::Usage(format!("consumer {e}")))?;
    if !(1..=MAX_BATCH).contains(&args.batch) {
        return Err(Error::Usage(format!("--batch must be 1 to {MAX_BATCH}")));
    }
    if args.exec.is_some() && args.commit {
        return Err(Error::Usage(
            "--commit is for printing; with --exec the cursor moves when the command exits 0"
                .into(),
        ));
    }
    let persist = args.exec.is_some() || args.commit;
    // A writer environment only when the cursor moves: one environment per process (LMDB's
    // locks are per process), used for reading too.
    let store = if persist {
        Store::open_existing_writer(data)?
    } else {
        super::open(data)?
    };
    if let Some(k) = &args.kind {
        check_kind(&store, k)?;
    }
    crate::ops::lower_priority(NICENESS);
    let mut position = store.cursor(&args.name)?.map_or(0, |c| c.seq);
    let mut stored = position;
    let mut stored_at = std::time::Instant::now();
    let stop = stop_flag();
    let mut failures = 0u32;
    loop {
        let batch = if stop.load(std::sync::atomic::Ordering::Relaxed) {
            None
        } else {
            next_batch(&store, position, args)?
        };
        let Some(batch) = batch else {
            // Caught up (or told to stop): the cursor is stored before waiting or leaving.
            if persist && position != stored {
                super::cursor::put(&store, &args.name, position)?;
                (stored, stored_at) = (position, std::time::Instant::now());
            }
            if !args.follow || stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(FOLLOW_POLL);
            continue;
        };
        let mut buf = Vec::new();
        super::tail::print(&store, &batch.events, false, &mut buf);
        let ok = match &args.exec {
            Some(cmd) if !batch.events.is_empty() => {
                match run_command(cmd, &args.name, &batch, &buf) {
                    Ok(()) => true,
                    Err(why) => {
                        failures += 1;
                        let wait = crate::backoff::doubling(RETRY_FIRST, failures, RETRY_MAX);
                        let (first, last) = span(&batch);
                        eprintln!(
                            "didgate: consume {}: batch of events {first} to {last} not \
                             consumed ({why}); sending it again in {}",
                            args.name,
                            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                        );
                        let until = std::time::Instant::now() + wait;
                        while std::time::Instant::now() < until
                            && !stop.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            std::thread::sleep(FOLLOW_POLL);
                        }
                        false
                    }
                }
            }
            Some(_) => true,
            None => {
                emit(out, &mut buf)?;
                true
            }
        };
        if ok {
            failures = 0;
            position = batch.through;
            if persist && stored_at.elapsed() >= CURSOR_COMMIT_EVERY {
                super::cursor::put(&store, &args.name, position)?;
                (stored, stored_at) = (position, std::time::Instant::now());
            }
        }
    }
}

/// Set by SIGTERM or SIGINT: the batch under way finishes, the cursor is stored, and the
/// consumer ends (exit 0). A second signal ends it at once.
fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

fn span(b: &Batch) -> (u64, u64) {
    (
        b.events.first().map_or(b.through, |e| e.seq),
        b.events.last().map_or(b.through, |e| e.seq),
    )
}

/// Runs `sh -c cmd` with the batch on its stdin; `Err` says why it did not succeed, with the
/// end of its stderr.
fn run_command(
    cmd: &str,
    name: &str,
    batch: &Batch,
    lines: &[u8],
) -> std::result::Result<(), String> {
    let (first, last) = span(batch);
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("DIDGATE_CONSUMER", name)
        .env("DIDGATE_FIRST_SEQ", first.to_string())
        .env("DIDGATE_LAST_SEQ", last.to_string())
        .env("DIDGATE_COUNT", batch.events.len().to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    // Stderr is read beside the write, so a command that writes much to it never blocks.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = e.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
            tail
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A command that exits without reading it all is judged by its exit status alone.
        let _ = stdin.write_all(lines);
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    let tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let how = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => format!("the command exited with status {c}"),
        (None, Some(s)) => format!("the command was killed by signal {s}"),
        (None, None) => "the command failed".to_string(),
    };
    let text = String::from_utf8_lossy(&tail);
    let text = text.trim_end();
    if text.is_empty() {
        Err(how)
    } else {
        Err(format!("{how}; its stderr ended with:\n{text}\n"))
    }
}
