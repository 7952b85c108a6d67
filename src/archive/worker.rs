//! An archiver thread: takes a due recording, decides from its event and the download what
//! its state becomes, puts the file in place, and has the writer commit the state.
//!
//! The file is in place (written, fsynced, renamed, directory fsynced) before its state is
//! sent: a crash in between leaves a `pending` recording whose file already exists, and the
//! next download replaces it with the same bytes. A crash during a download leaves a file in
//! `.partial/`, removed at the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::fetch::{Fetch, Fetcher};
use super::record::{ArchiveRecord, State};
use super::{ArchiveUpdate, CLIENT_ERROR_TRIES, ETAG_TRIES, PARTIAL_DIR, RETRY_MAX, Settings, url};
use crate::ops::metrics::Metrics;
use crate::store::archive::DueRecording;

/// How often a paused archiver looks again at the disk.
const PAUSE_CHECK: Duration = Duration::from_secs(5);

/// How often a paused archiver measures the archive's size again.
const REMEASURE_WHILE_PAUSED: Duration = Duration::from_secs(60);

/// Longest a callid is kept in a file name.
const MAX_NAME_CALLID: usize = 64;

/// The disk limits in force (a reload may change them).
pub struct Limits {
    /// The store's floor.
    pub min_free_disk_bytes: AtomicU64,
    /// Kept free beyond it.
    pub disk_margin_bytes: AtomicU64,
    /// The quota; `u64::MAX`: none.
    pub max_archive_bytes: AtomicU64,
}

/// What every archiver thread shares.
pub struct Shared {
    pub(super) settings: Settings,
    pub(super) fetcher: Fetcher,
    pub(super) metrics: std::sync::Arc<Metrics>,
    pub(super) updates: Sender<ArchiveUpdate>,
    pub(super) stop: std::sync::Arc<AtomicBool>,
    pub(super) limits: std::sync::Arc<Limits>,
    /// Set while paused, so the pause is logged once.
    pub(super) paused: AtomicBool,
}

/// Bytes of the files under `dir` (the archive's size at start).
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// A callid as a file-name part: `[A-Za-z0-9_-]` kept, anything else `_` (so no `.`, `/` or
/// NUL), at most [`MAX_NAME_CALLID`] bytes. It comes from a request body: it must never name
/// a path outside the archive, nor a hidden file.
pub fn safe_name(callid: &str) -> String {
    let mut s: String = callid
        .chars()
        .take(MAX_NAME_CALLID)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push_str("call");
    }
    s
}

/// Where a recording goes: `DIR/YYYY-MM-DD/CALLID-SEQ.mp3` (the day it was stored, UTC).
pub fn file_path(dir: &Path, stored_at_ms: i64, callid: Option<&str>, seq: u64) -> PathBuf {
    let day = crate::timestamp::day_of_ms(stored_at_ms);
    dir.join(day)
        .join(format!("{}-{seq}.mp3", safe_name(callid.unwrap_or("call"))))
}

impl Shared {
    /// Why archiving must wait now, if it must.
    fn pause_reason(&self) -> Option<String> {
        let used = self.metrics.archive_bytes.load(Ordering::Relaxed);
        let quota = self.limits.max_archive_bytes.load(Ordering::Relaxed);
        if used >= quota {
            return Some(format!(
                "the archive holds {used} bytes, max_archive_bytes is {quota}"
            ));
        }
        let floor = self
            .limits
            .min_free_disk_bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.limits.disk_margin_bytes.load(Ordering::Relaxed));
        match crate::store::free_bytes(&self.settings.dir) {
            Ok(free) if free < floor => Some(format!(
                "{free} bytes free under {}, below min_free_disk_bytes + disk_margin_bytes ({floor})",
                self.settings.dir.display()
            )),
            _ => None,
        }
    }
}

/// The thread's loop: until stopped, take a due recording (unless paused), archive it.
pub fn run(shared: &Shared, tasks: &Receiver<DueRecording>) {
    crate::ops::lower_priority(ARCHIVER_NICENESS);
    let m = &shared.metrics;
    let mut last_measured = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(why) = shared.pause_reason() {
            // `didgate prune` in another process frees files this process does not hear of:
            // while paused, the archive is measured again now and then.
            if last_measured.elapsed() >= REMEASURE_WHILE_PAUSED {
                last_measured = Instant::now();
                m.archive_bytes
                    .store(du(&shared.settings.dir), Ordering::Relaxed);
            }
            if !shared.paused.swap(true, Ordering::Relaxed) {
                m.archive_paused.store(1, Ordering::Relaxed);
                crate::ops::log::warn(format_args!("archiving paused (ingest goes on): {why}"));
            }
            std::thread::sleep(PAUSE_CHECK);
            continue;
        }
        if shared.paused.swap(false, Ordering::Relaxed) {
            m.archive_paused.store(0, Ordering::Relaxed);
            crate::ops::log::info(format_args!("archiving resumed"));
        }
        let task = match tasks.recv_timeout(Duration::from_secs(1)) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // The limits may have been reached while this thread waited for the task: hand it
        // back unchanged (it stays due), then pause above.
        let record = if shared.pause_reason().is_some() {
            task.record.clone()
        } else {
            m.archive_in_flight.fetch_add(1, Ordering::Relaxed);
            let record = archive_one(shared, &task, crate::timestamp::now_ms());
            m.archive_in_flight.fetch_sub(1, Ordering::Relaxed);
            m.archive_outcome(record.state, record.next_try_ms.is_some());
            record
        };
        let (done, committed) = crossbeam_channel::bounded(1);
        let update = ArchiveUpdate {
            seq: task.seq,
            record,
            done,
        };
        if shared.updates.send(update).is_err() {
            return;
        }
        // The writer commits within its idle tick; a stopped writer drops the sender.
        let _ = committed.recv_timeout(Duration::from_secs(30));
    }
}

/// Niceness of the archiver threads: when the CPU is short, ingest (the workers and the
/// writer, at the process's niceness) goes first and downloads wait.
const ARCHIVER_NICENESS: libc::c_int = 10;

/// A recording event's `recording_url` and `callid`, from its JSON body.
pub fn fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    (s("recording_url"), s("callid"))
}

/// What one due recording becomes.
pub fn archive_one(shared: &Shared, task: &DueRecording, now: i64) -> ArchiveRecord {
    let mut rec = task.record.clone();
    rec.attempts = rec.attempts.saturating_add(1);
    rec.updated_ms = now;
    rec.next_try_ms = None;
    let (url, callid) = fields(&task.body);
    let Some(url) = url else {
        rec.state = State::Failed;
        rec.error = Some("the event has no recording_url".into());
        return rec;
    };
    let expires = url::expiry_ms(&url, task.stored_at_ms);
    rec.expires_ms = Some(expires);
    if now >= expires {
        rec.state = State::Expired;
        rec.error = Some(format!(
            "the URL expired at {} before a download succeeded{}",
            crate::timestamp::format_ms(expires),
            rec.error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        ));
        return rec;
    }
    let dir = &shared.settings.dir;
    let tmp = dir.join(PARTIAL_DIR).join(format!("{}.part", task.seq));
    let started = Instant::now();
    let fetched = shared.fetcher.fetch(&url, &tmp);
    shared
        .metrics
        .archive_download_seconds
        .observe(started.elapsed().as_secs_f64());
    let retry = |mut rec: ArchiveRecord, error: String, after: Option<Duration>| {
        let backoff =
            crate::backoff::doubling(shared.settings.retry_initial, rec.attempts, RETRY_MAX);
        let wait = after.unwrap_or_default().max(backoff);
        let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        if next >= expires {
            rec.state = State::Expired;
            rec.error = Some(format!("{error}; the URL expires before another try"));
        } else {
            rec.state = State::Failed;
            rec.error = Some(error);
            rec.next_try_ms = Some(next);
        }
        rec
    };
    let result = match fetched {
        Fetch::Done {
            bytes,
            sha256,
            content_type,
            audio,
            first_bytes,
            etag_mismatch,
        } => {
            if etag_mismatch && rec.attempts < ETAG_TRIES {
                retry(rec, "the body does not match its ETag (MD5)".into(), None)
            } else {
                let path = file_path(dir, task.stored_at_ms, callid.as_deref(), task.seq);
                match place(&tmp, &path) {
                    Ok(()) => {
                        shared
                            .metrics
                            .archive_bytes
                            .fetch_add(bytes, Ordering::Relaxed);
                        shared
                            .metrics
                            .archive_bytes_fetched
                            .fetch_add(bytes, Ordering::Relaxed);
                        rec.bytes = Some(bytes);
                        rec.sha256 = Some(sha256);
                        rec.content_type = content_type;
                        rec.fetched_at_ms = Some(now);
                        rec.path = Some(path.to_string_lossy().into_owned());
                        rec.error = None;
                        rec.state = State::Fetched;
                        if etag_mismatch {
                            rec.state = State::Suspicious;
                            rec.error = Some("the body does not match its ETag (MD5)".into());
                        } else if !audio {
                            rec.state = State::Suspicious;
                            rec.error = Some("the body does not look like audio".into());
                            rec.first_bytes = Some(first_bytes);
                        }
                        rec
                    }
                    Err(e) => retry(rec, format!("cannot store {}: {e}", path.display()), None),
                }
            }
        }
        Fetch::Retry { error, after } => retry(rec, error, after),
        Fetch::Expired(error) => {
            rec.state = State::Expired;
            rec.error = Some(error);
            rec
        }
        Fetch::NotFound(error) if rec.attempts >= CLIENT_ERROR_TRIES => {
            rec.state = State::Gone;
            rec.error = Some(error);
            rec
        }
        Fetch::Forbidden(error) if rec.attempts >= CLIENT_ERROR_TRIES => {
            rec.state = State::Failed;
            rec.error = Some(error);
            rec
        }
        Fetch::NotFound(error) | Fetch::Forbidden(error) => retry(rec, error, None),
        Fetch::Refused(error) => {
            rec.state = State::Failed;
            rec.error = Some(error);
            rec
        }
    };
    let _ = std::fs::remove_file(&tmp);
    if result.state != State::Fetched && result.state != State::Suspicious {
        crate::ops::log::warn_limited(
            "archive",
            format_args!(
                "recording of event {}: {} ({})",
                task.seq,
                result.state.name(),
                result.error.as_deref().unwrap_or("")
            ),
        );
    }
    result
}

/// Moves a complete, fsynced download to its place, then makes the rename durable.
fn place(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    std::fs::rename(tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        // The day's folder may be new: its entry in the archive directory too.
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callids_never_leave_the_archive() {
        assert_eq!(safe_name("82xg86dv6jhl0p8xu0l3"), "82xg86dv6jhl0p8xu0l3");
        assert_eq!(safe_name("../../etc/passwd"), "______etc_passwd");
        assert_eq!(safe_name("a\0b/c"), "a_b_c");
        assert_eq!(safe_name(".."), "__");
        assert_eq!(safe_name(""), "call");
        assert_eq!(safe_name(&"x".repeat(300)).len(), MAX_NAME_CALLID);
        let p = file_path(Path::new("/a"), 0, Some("../x"), 7);
        assert_eq!(p, Path::new("/a/1970-01-01/___x-7.mp3"));
    }
}
