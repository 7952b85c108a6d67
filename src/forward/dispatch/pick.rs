//! What a dispatcher sends next: due retries (read from the store a bounded look at a time),
//! then the events after the cursor (read ahead into the window), or for an ordered
//! destination strictly the lowest event not yet delivered or dead.

use std::time::{Duration, Instant};

use super::{Dispatcher, MAX_WINDOW, READ_AHEAD, RETRY_BATCH, RETRY_IDLE, RETRY_SCAN_BUDGET};
use crate::forward::schedule;
use crate::forward::send::{Attempt, Source};
use crate::ops::log;
use crate::store::StoredEvent;
use crate::store::delivery::DueRetry;
use crate::timestamp::now_ms;
use std::sync::atomic::Ordering::Relaxed;

impl Dispatcher {
    pub(super) fn attempt(ev: StoredEvent, source: Source) -> Attempt {
        Attempt {
            seq: ev.seq,
            kind: ev.kind,
            stored_at_ms: ev.stored_at_ms,
            content_type: ev.content_type,
            body: ev.body,
            source,
        }
    }

    /// The next due retry entry, reading the retry set when the last look is used up.
    pub(super) fn next_retry(&mut self) -> Option<Attempt> {
        if self.due.is_empty() && Instant::now() >= self.retry_at {
            self.scan_retries();
        }
        while let Some(d) = self.due.pop_front() {
            if let Some(a) = self.take_retry(d) {
                return Some(a);
            }
        }
        None
    }

    /// A retry entry looked at: sent, or settled without a try (its event is gone, its kind
    /// is no longer sent, or `max_age` passed while the destination was down).
    pub(super) fn take_retry(&mut self, d: DueRetry) -> Option<Attempt> {
        if self.settling.contains_key(&d.seq) || self.busy.contains(&d.seq) {
            return None;
        }
        let Some(ev) = d.event else {
            self.note_done(d.seq);
            return None;
        };
        if !self.dest.wants(&ev.kind) {
            self.note_done(d.seq);
            return None;
        }
        let now = now_ms();
        if self.hold_until.is_some() && schedule::is_expired(&d.entry, now, self.dest.max_age) {
            self.note_dead(d.seq, schedule::dead_of(&d.entry, now));
            return None;
        }
        self.busy.insert(d.seq);
        Some(Self::attempt(ev, Source::Retry(d.entry)))
    }

    pub(super) fn scan_retries(&mut self) {
        let now = Instant::now();
        let (busy, settling) = (&self.busy, &self.settling);
        let scan = self.store.retries_due(
            &self.dest.name,
            self.retry_from,
            now_ms(),
            self.sweep,
            RETRY_BATCH,
            RETRY_SCAN_BUDGET,
            |s| busy.contains(&s) || settling.contains_key(&s),
        );
        match scan {
            Ok(scan) => {
                self.due.extend(scan.due);
                match scan.next {
                    Some(n) => {
                        self.retry_from = n;
                        self.retry_at = now;
                    }
                    None => {
                        self.retry_from = 0;
                        self.sweep = false;
                        let until = scan.next_due_ms.map_or(RETRY_IDLE, |t| {
                            Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0))
                        });
                        self.retry_at = now + until.min(RETRY_IDLE);
                    }
                }
            }
            Err(e) => {
                log::warn_limited(
                    "forward-retries",
                    format_args!("forward {}: cannot read its retry set: {e}", self.name()),
                );
                self.retry_at = now + RETRY_IDLE;
            }
        }
    }

    /// Reads committed events after `next_read` (of the kinds sent) into the window.
    pub(super) fn read_ahead(&mut self) {
        if self.committed.load(Relaxed) < self.next_read || self.window.len() >= MAX_WINDOW {
            return;
        }
        let dest = self.dest.clone();
        let mut last_seen = None;
        let page = self
            .store
            .events_forward(self.next_read, READ_AHEAD, |seq, rec| {
                last_seen = Some(seq);
                dest.wants(rec.kind)
            });
        match page {
            Ok(page) => {
                for ev in page.items {
                    self.window.insert(ev.seq, false);
                    self.ahead.push_back(ev);
                }
                if let Some(s) = last_seen {
                    self.next_read = s + 1;
                }
            }
            Err(e) => log::warn_limited(
                "forward-read",
                format_args!("forward {}: cannot read events: {e}", self.name()),
            ),
        }
    }

    pub(super) fn next_stream(&mut self) -> Option<Attempt> {
        if self.ahead.is_empty() {
            self.read_ahead();
        }
        let ev = self.ahead.pop_front()?;
        Some(Self::attempt(ev, Source::Stream))
    }

    /// Ordered: only the lowest event not yet delivered or dead, and only once everything
    /// before it is committed.
    pub(super) fn next_ordered(&mut self) -> Option<Attempt> {
        if self.in_flight > 0 || !self.settling.is_empty() {
            return None;
        }
        if self.ahead.is_empty() {
            self.read_ahead();
        }
        let stream = self.ahead.front().map(|e| e.seq);
        let head = match self.store.first_retry(&self.dest.name) {
            Ok(h) => h,
            Err(e) => {
                log::warn_limited(
                    "forward-retries",
                    format_args!("forward {}: cannot read its retry set: {e}", self.name()),
                );
                return None;
            }
        };
        match head {
            Some((seq, entry)) if stream.is_none_or(|s| seq < s) => {
                let now = now_ms();
                let early = entry.not_before_ms.is_some_and(|t| t > now);
                if early || (!self.sweep && entry.next_try_ms > now) {
                    return None;
                }
                self.sweep = false;
                let event = self.store.event(seq).ok()?;
                self.take_retry(DueRetry { seq, entry, event })
            }
            _ => self.next_stream(),
        }
    }
}
