//! `didgate tail [-n N] [-f] [--kind K] [--raw]`: the last events, then (with `-f`) new ones
//! as they are committed.

use std::io::Write;
use std::time::Duration;

use super::{Result, SCAN_CHUNK, emit, render};
use crate::store::{Store, StoredEvent};

/// How often `-f` looks for new events. Commits are visible to readers at once; 200 ms keeps
/// a follower close behind at negligible cost.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What `tail` was asked.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// How many of the last events to print.
    pub lines: usize,
    /// Keep printing new events as they are committed.
    pub follow: bool,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Print each stored body as received instead of JSON lines.
    pub raw: bool,
}

/// Prints the last `lines` events (of `kind`), then follows if asked.
///
/// # Errors
/// Store errors, or a failed write (a closed pipe is [`super::Error::Closed`]).
pub fn run(store: &Store, args: &Args, out: &mut impl Write) -> Result<()> {
    if let Some(k) = &args.kind {
        super::check_kind(store, k)?;
    }
    let keep = |kind: &str| args.kind.as_deref().is_none_or(|k| k == kind);
    // Everything after `next` is left to the follow loop, so nothing is shown twice or missed.
    let next = store.last_seq()?.map_or(1, |s| s + 1);
    let mut last: Vec<StoredEvent> = Vec::new();
    let mut before = next;
    while last.len() < args.lines {
        let page = store.events_backward(Some(before), SCAN_CHUNK, |_, r| keep(r.kind))?;
        last.extend(page.items);
        match page.next {
            Some(next) => before = next,
            None => break,
        }
    }
    last.truncate(args.lines);
    last.reverse();
    let mut buf = Vec::new();
    print(store, &last, args.raw, &mut buf);
    emit(out, &mut buf)?;
    if !args.follow {
        return Ok(());
    }
    let mut from = next;
    loop {
        // Events the filter passed over are not looked at again: `from` follows every seq seen.
        let mut seen = from;
        let page = store.events_forward(from, SCAN_CHUNK, |seq, r| {
            seen = seq + 1;
            keep(r.kind)
        })?;
        print(store, &page.items, args.raw, &mut buf);
        emit(out, &mut buf)?;
        from = page.next.unwrap_or(seen);
        if page.next.is_none() {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// Appends events as JSON lines (a recording's with its archive state), or with `raw` as the
/// stored bodies, one per line.
pub fn print(store: &Store, events: &[StoredEvent], raw: bool, buf: &mut Vec<u8>) {
    for ev in events {
        if raw {
            buf.extend_from_slice(&ev.body);
            buf.push(b'\n');
        } else {
            let archive = if ev.kind == crate::event::Hook::Recording.name() {
                store.archive_record(ev.seq).ok().flatten()
            } else {
                None
            };
            render::event_line(ev, archive.as_ref(), buf);
        }
    }
}
