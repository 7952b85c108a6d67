//! Retention: which events and quarantined bodies are old enough to delete, and pruning them a
//! small slice at a time.
//!
//! Owns the policy (days per kind, a default, quarantine apart) and the slicing. The writer
//! runs one slice per write transaction between ingest batches, so pruning never holds the
//! write lock for long; `didgate prune --before T` runs the same slices by hand. Deletion of
//! one event (record, index entries, counters) is `store.rs`'s.

use std::collections::BTreeMap;

use crate::store::{self, Store, StoredEvent};

/// Entries looked at per write transaction. A slice of 500 commits in a few milliseconds, so
/// an ingest batch waits at most that long behind it.
pub const PRUNE_SLICE: usize = 500;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How long to keep what. `None` everywhere (the default) keeps everything: billing data is
/// never deleted unless the operator asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Days to keep events of a kind.
    pub days_by_kind: BTreeMap<String, u32>,
    /// Days to keep events of kinds not listed.
    pub default_days: Option<u32>,
    /// Days to keep quarantined bodies (usually longer: they need a human).
    pub quarantine_days: Option<u32>,
}

impl Policy {
    /// Whether anything is ever pruned.
    pub fn is_keep_all(&self) -> bool {
        self.days_by_kind.is_empty()
            && self.default_days.is_none()
            && self.quarantine_days.is_none()
    }
}

/// The stamps before which things are deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cutoffs {
    by_kind: BTreeMap<String, i64>,
    default: Option<i64>,
    quarantine: Option<i64>,
    /// The latest event cutoff: no event stamped at or after it can be deleted.
    horizon: Option<i64>,
}

impl Cutoffs {
    /// Cutoffs of `policy` as of `now_ms`.
    pub fn at(policy: &Policy, now_ms: i64) -> Cutoffs {
        let cut = |days: u32| now_ms - i64::from(days) * DAY_MS;
        let by_kind: BTreeMap<String, i64> = policy
            .days_by_kind
            .iter()
            .map(|(k, d)| (k.clone(), cut(*d)))
            .collect();
        let default = policy.default_days.map(cut);
        let horizon = by_kind.values().copied().chain(default).max();
        Cutoffs {
            by_kind,
            default,
            quarantine: policy.quarantine_days.map(cut),
            horizon,
        }
    }

    /// Everything (events of every kind, and quarantine) stamped before `before_ms`.
    pub fn everything_before(before_ms: i64) -> Cutoffs {
        Cutoffs {
            by_kind: BTreeMap::new(),
            default: Some(before_ms),
            quarantine: Some(before_ms),
            horizon: Some(before_ms),
        }
    }

    fn expired(&self, ev: &StoredEvent) -> bool {
        let cutoff = self.by_kind.get(&ev.kind).copied().or(self.default);
        cutoff.is_some_and(|c| ev.stored_at_ms < c)
    }
}

/// Where pruning resumes; kept by the caller between slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The next event sequence number to look at.
    pub next_event: u64,
    /// The next quarantine number to look at.
    pub next_quarantine: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            next_event: 1,
            next_quarantine: 1,
        }
    }
}

/// Whose undelivered events retention keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protect {
    /// Forwarding destinations: an event one of them has not delivered or dead-lettered yet
    /// is kept past its retention.
    pub destinations: Vec<String>,
    /// Delete them anyway (the disk is below its floor, or `didgate prune` was asked), and
    /// say in [`Slice::dropped`] what was dropped for whom.
    pub force: bool,
}

/// Events deleted before a destination delivered them: how many, and the first and last
/// sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many.
    pub events: u64,
    /// The lowest sequence number.
    pub first: u64,
    /// The highest.
    pub last: u64,
}

/// What one slice did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    /// Archived recordings of the deleted events: removed once the slice is committed.
    pub files: Vec<String>,
    /// Bytes those files held.
    pub freed_bytes: u64,
    /// Events deleted.
    pub events_deleted: u64,
    /// Quarantined bodies deleted.
    pub quarantined_deleted: u64,
    /// Expired events kept because a destination has not delivered them.
    pub kept_for_delivery: u64,
    /// With [`Protect::force`]: undelivered events deleted, per destination.
    pub dropped: BTreeMap<String, Dropped>,
    /// Nothing more to prune under these cutoffs (the cursor went back to the start).
    pub done: bool,
}

/// Runs one slice: looks at up to [`PRUNE_SLICE`] entries from the cursor, deletes the expired
/// ones, commits. Events of kinds kept longer are stepped over; the slice ends at the first
/// event stamped at or after the horizon (nothing later can be expired).
///
/// # Errors
/// Store errors; nothing of the slice is then deleted.
pub fn prune_slice(
    store: &Store,
    cutoffs: &Cutoffs,
    protect: &Protect,
    cursor: &mut Cursor,
    now_ms: i64,
) -> store::Result<Slice> {
    let mut txn = store.begin_write(now_ms)?;
    let mut slice = Slice::default();
    let mut events_done = cutoffs.horizon.is_none();
    if let Some(horizon) = cutoffs.horizon {
        let events = txn.oldest_events(cursor.next_event, PRUNE_SLICE)?;
        events_done = events.next.is_none();
        let cursors = txn.delivery_cursors(&protect.destinations)?;
        let mut deleted = Vec::new();
        for ev in &events.items {
            if ev.stored_at_ms >= horizon {
                events_done = true;
                break;
            }
            cursor.next_event = ev.seq + 1;
            if !cutoffs.expired(ev) {
                continue;
            }
            let waiting = txn.undelivered_by(ev.seq, &cursors)?;
            if !waiting.is_empty() && !protect.force {
                slice.kept_for_delivery += 1;
                continue;
            }
            for d in waiting {
                let e = slice.dropped.entry(d).or_default();
                if e.events == 0 {
                    e.first = ev.seq;
                }
                e.events += 1;
                e.last = ev.seq;
            }
            slice.files.extend(txn.delete_event(ev)?);
            slice.events_deleted += 1;
            deleted.push(ev.seq);
        }
        txn.forget_deliveries(&deleted)?;
    }
    let mut quarantine_done = cutoffs.quarantine.is_none();
    if let Some(cut) = cutoffs.quarantine {
        let entries = txn.oldest_quarantined(cursor.next_quarantine, PRUNE_SLICE)?;
        quarantine_done = entries.next.is_none();
        for q in &entries.items {
            if q.event.stored_at_ms >= cut {
                quarantine_done = true;
                break;
            }
            txn.delete_quarantined(q.seq)?;
            slice.quarantined_deleted += 1;
            cursor.next_quarantine = q.seq + 1;
        }
    }
    txn.commit()?;
    slice.freed_bytes = remove_files(&slice.files);
    slice.done = events_done && quarantine_done;
    if slice.done {
        *cursor = Cursor::default();
    }
    Ok(slice)
}

/// Removes the archived recordings of deleted events; returns the bytes freed. A file already
/// gone is fine; one that cannot be removed is reported (its event is deleted: nothing refers
/// to it any more).
fn remove_files(files: &[String]) -> u64 {
    let mut freed = 0;
    for f in files {
        let size = std::fs::metadata(f).map_or(0, |m| m.len());
        match std::fs::remove_file(f) {
            Ok(()) => freed += size,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::ops::log::warn(format_args!(
                "retention: cannot remove the recording {f}: {e}"
            )),
        }
    }
    freed
}

/// Prunes to the end under `cutoffs`, slice after slice (used by `didgate prune`).
///
/// # Errors
/// Store errors; slices already committed stay pruned.
pub fn prune_all(
    store: &Store,
    cutoffs: &Cutoffs,
    protect: &Protect,
    now_ms: i64,
) -> store::Result<Slice> {
    let mut cursor = Cursor::default();
    let mut total = Slice::default();
    loop {
        let s = prune_slice(store, cutoffs, protect, &mut cursor, now_ms)?;
        total.files.extend(s.files);
        total.freed_bytes += s.freed_bytes;
        total.events_deleted += s.events_deleted;
        total.quarantined_deleted += s.quarantined_deleted;
        total.kept_for_delivery += s.kept_for_delivery;
        for (d, x) in s.dropped {
            let e = total.dropped.entry(d).or_default();
            if e.events == 0 {
                e.first = x.first;
            }
            e.events += x.events;
            e.last = x.last;
        }
        if s.done {
            total.done = true;
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BodyFormat, Event};
    use crate::store::body_hash;

    fn append(w: &mut store::WriteTxn<'_>, ev: &Event) -> u64 {
        w.append_event(ev, body_hash(&ev.body)).unwrap()
    }

    fn is_call(callid: &str) -> impl FnMut(&crate::event::Record<'_>) -> bool + '_ {
        move |rec| {
            crate::ingest::decode::JsonDecoder::default()
                .decode(rec.body)
                .is_ok_and(|f| f.callid.as_deref() == Some(callid))
        }
    }

    /// The sequence numbers of the first ten events left.
    fn left(store: &Store) -> Vec<u64> {
        let page = store.events_forward(0, 10, |_, _| true).unwrap();
        page.items.iter().map(|e| e.seq).collect()
    }

    fn event(kind: &str, callid: &str) -> Event {
        Event {
            kind: kind.into(),
            format: BodyFormat::Json,
            peer: None,
            content_type: vec![],
            body: format!(r#"{{"event":"{kind}","callid":"{callid}"}}"#).into_bytes(),
            callid: Some(callid.into()),
            call: None,
        }
        .with_call_facts()
    }

    #[test]
    fn prunes_by_kind_keeps_the_rest_and_cleans_indexes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        // Day 0: a cdr and an sms-kind event; day 5: another cdr.
        for (t, kind, id) in [
            (0, "cdr", "a"),
            (0, "recording", "a"),
            (5 * DAY_MS, "cdr", "b"),
        ] {
            let mut w = store.begin_write(t).unwrap();
            append(&mut w, &event(kind, id));
            w.append_quarantine("bad", &event("cdr", "q")).unwrap();
            w.commit().unwrap();
        }
        let policy = Policy {
            days_by_kind: [("cdr".to_string(), 3)].into(),
            default_days: None,
            quarantine_days: Some(4),
        };
        let now = 6 * DAY_MS;
        let cut = Cutoffs::at(&policy, now);
        let mut cursor = Cursor::default();
        let s = prune_slice(&store, &cut, &Protect::default(), &mut cursor, now).unwrap();
        assert_eq!(
            (s.events_deleted, s.quarantined_deleted, s.done),
            (1, 2, true)
        );
        assert_eq!(
            left(&store),
            [2, 3],
            "old cdr gone, recording (no retention) kept"
        );
        assert_eq!(store.call_events("a", is_call("a")).unwrap().len(), 1);
        let counts = store.counts().unwrap();
        assert_eq!(counts.by_kind.get("cdr"), Some(&1));
        assert_eq!(counts.quarantined, 1);
        // The event the dedup table would propose is gone: the same body is new again.
        let w = store.begin_write(now).unwrap();
        assert!(!w.is_same_event(1, &event("cdr", "a"), 0).unwrap());
        drop(w);
        assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
    }

    #[test]
    fn prune_all_before_deletes_everything_older() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        for i in 0..1200i64 {
            let mut w = store.begin_write(i).unwrap();
            append(&mut w, &event("sms", &format!("s{i}")));
            w.commit().unwrap();
        }
        let s = prune_all(
            &store,
            &Cutoffs::everything_before(1000),
            &Protect::default(),
            2000,
        )
        .unwrap();
        assert_eq!(s.events_deleted, 1000);
        assert_eq!(
            store.events_forward(0, 10, |_, _| true).unwrap().items[0].seq,
            1001
        );
        // Seq 1100 is in the first call block (complete at 1024 events), 1199 after it; the
        // block survives because some of its events are left.
        for (id, seq) in [("s1099", 1100), ("s1198", 1199)] {
            let found = store.call_events(id, is_call(id)).unwrap();
            assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [seq]);
        }
        assert_eq!(store.call_events("s5", is_call("s5")).unwrap(), vec![]);
        assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
        // Deleting the rest removes the block; sequence numbers still do not repeat.
        prune_all(
            &store,
            &Cutoffs::everything_before(5000),
            &Protect::default(),
            6000,
        )
        .unwrap();
        let report = store.check().unwrap();
        assert_eq!((report.events, report.call_entries), (0, 0));
        let mut w = store.begin_write(7000).unwrap();
        assert_eq!(append(&mut w, &event("cdr", "new")), 1201);
        w.commit().unwrap();
    }

    #[test]
    fn undelivered_events_outlive_retention_unless_forced_and_then_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let mut w = store.begin_write(0).unwrap();
        for i in 0..6 {
            append(&mut w, &event("cdr", &format!("u{i}")));
        }
        // "crm" delivered up to 3, and 2 waits for another try.
        let mut p = store::delivery::Progress::new("crm");
        p.cursor = Some(3);
        p.retry = vec![(2, crate::forward::state::RetryEntry::default())];
        w.apply_progress(&p, 0).unwrap();
        w.commit().unwrap();
        let cut = Cutoffs::everything_before(DAY_MS);
        let keep = Protect {
            destinations: vec!["crm".into()],
            force: false,
        };
        let s = prune_all(&store, &cut, &keep, DAY_MS).unwrap();
        assert_eq!((s.events_deleted, s.kept_for_delivery), (2, 4));
        assert!(s.dropped.is_empty());
        assert_eq!(left(&store), [2, 4, 5, 6]);
        // A destination no longer configured keeps nothing.
        let s = prune_all(&store, &cut, &Protect::default(), DAY_MS).unwrap();
        assert_eq!(s.events_deleted, 4);
        let mut w = store.begin_write(0).unwrap();
        for i in 0..3 {
            append(&mut w, &event("cdr", &format!("v{i}")));
        }
        w.commit().unwrap();
        // Forced (the disk is below its floor): deleted, and said for whom.
        let force = Protect {
            force: true,
            ..keep
        };
        let s = prune_all(&store, &cut, &force, DAY_MS).unwrap();
        assert_eq!(s.events_deleted, 3);
        assert_eq!(
            s.dropped.get("crm"),
            Some(&Dropped {
                events: 3,
                first: 7,
                last: 9
            })
        );
        assert_eq!(store.dest_state("crm").unwrap().unwrap().retrying, 0);
        assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
    }

    #[test]
    fn keep_all_is_the_default() {
        assert!(Policy::default().is_keep_all());
        assert_eq!(Cutoffs::at(&Policy::default(), 0).horizon, None);
    }
}
