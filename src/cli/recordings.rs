//! `didgate recordings`: the archive's state per recording (`--state`, `--since`, `--json`);
//! `didgate recordings retry`: puts recordings back on the work list; `didgate recording
//! CALLID`: writes a call's archived mp3 to a file or a pipe.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::{Error, Result, emit};
use crate::archive::record::{ArchiveRecord, State};
use crate::store::Store;
use crate::store::archive::DueRecording;
use crate::timestamp;

/// Archive records looked at per read transaction.
const PAGE: usize = 4096;

/// What `recordings` lists.
pub struct ListArgs {
    /// Only this state.
    pub state: Option<String>,
    /// Only recordings stored at or after this time (RFC 3339 or YYYY-MM-DD).
    pub since: Option<String>,
    /// JSON lines instead of a table.
    pub json: bool,
}

fn callid_of(body: &[u8]) -> Option<String> {
    crate::archive::worker::fields(body).1
}

/// Lists the recordings' archive state, oldest first.
///
/// # Errors
/// [`Error::Usage`] for an unknown state or a bad time; store and output errors.
pub fn list(store: &Store, args: &ListArgs, out: &mut impl Write) -> Result<()> {
    let state = match &args.state {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            let names: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
            Error::Usage(format!(
                "unknown state {s:?} (states: {})",
                names.join(", ")
            ))
        })?),
    };
    let since = match &args.since {
        None => i64::MIN,
        Some(t) => timestamp::parse_time_arg(t).map_err(|e| Error::Usage(e.to_string()))?,
    };
    let mut buf = Vec::new();
    if !args.json {
        buf.extend_from_slice(b"SEQ\tSTORED_AT\tSTATE\tATTEMPTS\tBYTES\tCALLID\tPATH_OR_ERROR\n");
    }
    let mut from = 0;
    loop {
        let page = store.archive_entries(from, PAGE, |_, r| state.is_none_or(|s| r.state == s))?;
        for e in page.items.iter().filter(|e| e.stored_at_ms >= since) {
            line(e, args.json, &mut buf);
        }
        emit(out, &mut buf)?;
        match page.next {
            Some(n) => from = n,
            None => return Ok(()),
        }
    }
}

fn line(e: &DueRecording, json: bool, buf: &mut Vec<u8>) {
    let r = &e.record;
    let callid = callid_of(&e.body).unwrap_or_default();
    if json {
        let mut v = super::render::archive_json(r);
        if let Some(m) = v.as_object_mut() {
            m.insert("seq".into(), e.seq.into());
            m.insert(
                "stored_at".into(),
                timestamp::format_ms(e.stored_at_ms).into(),
            );
            m.insert("callid".into(), callid.into());
        }
        buf.extend_from_slice(v.to_string().as_bytes());
        buf.push(b'\n');
        return;
    }
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let detail = match (&r.path, &r.error) {
        (Some(p), None) => clean(p),
        (Some(p), Some(e)) => format!("{} ({})", clean(p), clean(e)),
        (None, Some(e)) => clean(e),
        (None, None) => String::new(),
    };
    let text = format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        e.seq,
        timestamp::format_ms(e.stored_at_ms),
        r.state.name(),
        r.attempts,
        r.bytes.map(|b| b.to_string()).unwrap_or_default(),
        clean(&callid),
        detail
    );
    buf.extend_from_slice(text.as_bytes());
}

/// Puts recordings back on the work list, due now: every `failed` one with `failed`, else the
/// given sequence numbers (any state; a fetched one is downloaded again). The running gateway
/// takes them within a second. A URL past its expiry comes back as `expired` at once.
///
/// # Errors
/// [`Error::Usage`] when neither is given or a number is no recording; store errors.
pub fn retry(data: &Path, failed: bool, seqs: &[u64], out: &mut impl Write) -> Result<()> {
    if !failed && seqs.is_empty() {
        return Err(Error::Usage(
            "say which: --failed, or the recordings' sequence numbers".into(),
        ));
    }
    let store = Store::open_existing_writer(data)?;
    let mut targets: Vec<u64> = seqs.to_vec();
    if failed {
        let mut from = 0;
        loop {
            let page = store.archive_page(from, PAGE, |_, r| r.state == State::Failed)?;
            targets.extend(page.items.iter().map(|(s, _)| *s));
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
    }
    let now = timestamp::now_ms();
    let mut txn = store.begin_write(now)?;
    let mut queued = 0;
    for seq in &targets {
        let Some(old) = txn.archive_record(*seq)? else {
            return Err(Error::Usage(format!(
                "event {seq} is not a recording with an archive state"
            )));
        };
        let record = ArchiveRecord {
            error: old.error.map(|e| format!("before the retry: {e}")),
            ..ArchiveRecord::pending(now)
        };
        txn.put_archive(*seq, &record)?;
        queued += 1;
    }
    txn.commit()?;
    let mut buf = format!("re-queued {queued} recordings\n").into_bytes();
    emit(out, &mut buf)
}

/// Writes the archived mp3 of call `callid` (its newest archived recording) to `output`, or
/// to stdout when that is not a terminal.
///
/// # Errors
/// [`Error::NoMatch`] (exit 1) when the call has no archived recording (the message says its
/// state); [`Error::Usage`] for a terminal; store and I/O errors.
pub fn fetch_file(
    store: &Store,
    callid: &str,
    output: Option<&PathBuf>,
    out: &mut impl Write,
) -> Result<()> {
    let mut found: Option<(u64, ArchiveRecord)> = None;
    let mut states = Vec::new();
    let events = store.call_events(callid, |rec| {
        rec.kind == crate::event::Hook::Recording.name()
            && callid_of(rec.body).as_deref() == Some(callid)
    })?;
    for ev in &events {
        if let Some(r) = store.archive_record(ev.seq)? {
            states.push(format!("event {}: {}", ev.seq, r.state.name()));
            if r.path.is_some() && r.state.holds_file() {
                found = Some((ev.seq, r));
            }
        }
    }
    let Some((_, record)) = found else {
        return Err(Error::NoMatch(if states.is_empty() {
            format!("no recording for call {callid:?}")
        } else {
            format!(
                "no archived recording for call {callid:?} ({})",
                states.join(", ")
            )
        }));
    };
    let path = record.path.unwrap_or_default();
    let mut file =
        std::fs::File::open(&path).map_err(|e| Error::Usage(format!("cannot open {path}: {e}")))?;
    match output {
        Some(dest) => {
            let mut f = std::fs::File::create(dest)
                .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dest.display())))?;
            std::io::copy(&mut file, &mut f)?;
            f.sync_all()?;
            Ok(())
        }
        None if std::io::stdout().is_terminal() => Err(Error::Usage(
            "stdout is a terminal: pass -o FILE, or pipe it (didgate recording CALLID | mpv -)"
                .into(),
        )),
        None => {
            std::io::copy(&mut file, out)?;
            out.flush()?;
            Ok(())
        }
    }
}
