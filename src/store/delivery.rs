//! Forwarding's state in the store (pull consumers' cursors are `consumer.rs`): per
//! destination its state (`forward`), the events waiting for another try (`forward_retry`)
//! and the dead letters (`forward_dead`). The retry set and the dead letters are keyed by
//! destination name, a 0 byte and the event's sequence number, so one destination's entries
//! are one ascending range: a destination down for a day keeps its backlog here, not in memory.
//!
//! The forwarder's progress is committed by the writer thread ([`WriteTxn::apply_progress`])
//! in the transaction of its next batch; the CLI's changes (cursors, pause, retry, replay) are
//! short transactions of their own. Each keeps the state's counters in step with the entries.

use lmdb::WriteFlags;

use super::layout::{Table, decode_at, del_if_present, get, key_seq, seq_key};
use super::read::StoredEvent;
use super::walk::{Page, PrefixWalk};
use super::{Error, Result, Store, WriteTxn};
use crate::forward::state::{self, DeadEntry, DestState, RetryEntry};

/// What the forwarder of one destination settled since its last report, written in one
/// transaction so the cursor never passes an event whose retry entry is not written with it.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The destination.
    pub dest: String,
    /// Its cursor moves up to this (never back).
    pub cursor: Option<u64>,
    /// Events delivered since the last report.
    pub delivered: u64,
    /// When the last of them was.
    pub last_delivered_at_ms: Option<i64>,
    /// Events to (re)schedule.
    pub retry: Vec<(u64, RetryEntry)>,
    /// Retry entries to remove: delivered, or their event is gone.
    pub done: Vec<u64>,
    /// Events given up on.
    pub dead: Vec<(u64, DeadEntry)>,
    /// Attempts under way now.
    pub in_flight: u64,
    /// The last failure, and when.
    pub last_error: Option<(String, i64)>,
    /// Pause the destination, saying why (a 410 Gone).
    pub pause: Option<String>,
}

impl Progress {
    /// A report with nothing in it yet.
    pub fn new(dest: &str) -> Progress {
        Progress {
            dest: dest.to_string(),
            ..Progress::default()
        }
    }

    /// Whether it changes more than the in-flight gauge.
    pub fn is_empty(&self) -> bool {
        self.cursor.is_none()
            && self.delivered == 0
            && self.retry.is_empty()
            && self.done.is_empty()
            && self.dead.is_empty()
            && self.last_error.is_none()
            && self.pause.is_none()
    }
}

/// A retry entry due for a try, with its event (`None`: retention deleted it).
#[derive(Clone, Debug)]
pub struct DueRetry {
    /// The event's sequence number.
    pub seq: u64,
    /// Its retry state.
    pub entry: RetryEntry,
    /// The event.
    pub event: Option<StoredEvent>,
}

/// One look at a destination's retry set.
#[derive(Debug, Default)]
pub struct RetryScan {
    /// Entries due, ascending.
    pub due: Vec<DueRetry>,
    /// The earliest time an entry looked at but not taken becomes due.
    pub next_due_ms: Option<i64>,
    /// Where the next look continues; `None`: this one reached the end.
    pub next: Option<u64>,
}

/// The key of `seq` in `dest`'s range.
fn dest_key(dest: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(dest.len() + 9);
    k.extend_from_slice(dest.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_key(seq));
    k
}

/// The prefix of `dest`'s range.
fn dest_prefix(dest: &str) -> Vec<u8> {
    let mut k = dest.as_bytes().to_vec();
    k.push(0);
    k
}

fn seq_of(table: Table, prefix_len: usize, k: &[u8]) -> Result<u64> {
    key_seq(table, k.get(prefix_len..).unwrap_or_default())
}

pub(super) fn record<T: for<'de> serde::Deserialize<'de>>(
    table: Table,
    what: &str,
    v: &[u8],
) -> Result<T> {
    state::decode(v).map_err(|e| Error::Corrupt {
        db: table.name,
        what: format!("the record of {what} does not decode: {e}"),
    })
}

fn name_of(table: Table, k: &[u8]) -> Result<String> {
    String::from_utf8(k.to_vec()).map_err(|_| Error::Corrupt {
        db: table.name,
        what: "a name that is not UTF-8".into(),
    })
}

/// Every `(name, record)` of a name-keyed database.
pub(super) fn all_named<T: for<'de> serde::Deserialize<'de>>(
    txn: &impl lmdb::Transaction,
    table: Table,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for item in PrefixWalk::new(txn, table, b"", b"")? {
        let (k, v) = item?;
        let name = name_of(table, k)?;
        let r = record(table, &name, v)?;
        out.push((name, r));
    }
    Ok(out)
}

fn dest_state_in(
    txn: &impl lmdb::Transaction,
    table: Table,
    dest: &str,
) -> Result<Option<DestState>> {
    get(txn, table, dest.as_bytes())?
        .map(|v| record(table, dest, v))
        .transpose()
}

/// The first entry of `dest`'s range in `table`.
fn first_in<T: for<'de> serde::Deserialize<'de>>(
    txn: &impl lmdb::Transaction,
    table: Table,
    dest: &str,
) -> Result<Option<(u64, T)>> {
    let prefix = dest_prefix(dest);
    match PrefixWalk::new(txn, table, &prefix, b"")?.next() {
        Some(item) => {
            let (k, v) = item?;
            let seq = seq_of(table, prefix.len(), k)?;
            Ok(Some((seq, record(table, dest, v)?)))
        }
        None => Ok(None),
    }
}

/// A page of `dest`'s entries in `table` with `seq >= from`, at most `budget`.
fn page_of<T: for<'de> serde::Deserialize<'de>>(
    txn: &impl lmdb::Transaction,
    table: Table,
    dest: &str,
    from: u64,
    budget: usize,
) -> Result<Page<(u64, T)>> {
    let prefix = dest_prefix(dest);
    let mut items = Vec::new();
    for item in PrefixWalk::new(txn, table, &prefix, &seq_key(from))? {
        let (k, v) = item?;
        let seq = seq_of(table, prefix.len(), k)?;
        if items.len() == budget {
            return Ok(Page {
                items,
                next: Some(seq),
            });
        }
        items.push((seq, record(table, dest, v)?));
    }
    Ok(Page { items, next: None })
}

impl WriteTxn<'_> {
    pub(super) fn put_json(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self
            .txn
            .put(table.handle, &key, &value, WriteFlags::empty())?)
    }

    /// A destination's state.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn dest_state(&self, dest: &str) -> Result<Option<DestState>> {
        dest_state_in(&self.txn, self.dbs.forward, dest)
    }

    /// Writes a destination's state.
    ///
    /// # Errors
    /// LMDB errors; the transaction must then be dropped.
    pub fn put_dest_state(&mut self, dest: &str, s: &DestState) -> Result<()> {
        let table = self.dbs.forward;
        self.put_json(table, dest.as_bytes(), &state::encode(s))
    }

    /// Applies one report of the forwarder (see [`Progress`]); the state is made when the
    /// destination has none yet.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record; the transaction must then be dropped.
    pub fn apply_progress(&mut self, p: &Progress, now_ms: i64) -> Result<()> {
        let dbs = self.dbs;
        let mut s = self.dest_state(&p.dest)?.unwrap_or_else(|| DestState {
            created_at_ms: now_ms,
            ..DestState::default()
        });
        for (seq, entry) in &p.retry {
            let key = dest_key(&p.dest, *seq);
            if get(&self.txn, dbs.forward_retry, &key)?.is_none() {
                s.retrying += 1;
            }
            self.put_json(dbs.forward_retry, &key, &state::encode(entry))?;
        }
        for seq in &p.done {
            if self.remove(dbs.forward_retry, &dest_key(&p.dest, *seq))? {
                s.retrying = s.retrying.saturating_sub(1);
            }
        }
        for (seq, entry) in &p.dead {
            let key = dest_key(&p.dest, *seq);
            if self.remove(dbs.forward_retry, &key)? {
                s.retrying = s.retrying.saturating_sub(1);
            }
            if get(&self.txn, dbs.forward_dead, &key)?.is_none() {
                s.dead += 1;
            }
            self.put_json(dbs.forward_dead, &key, &state::encode(entry))?;
        }
        if let Some(c) = p.cursor {
            s.cursor = s.cursor.max(c);
        }
        s.delivered += p.delivered;
        if p.last_delivered_at_ms.is_some() {
            s.last_delivered_at_ms = p.last_delivered_at_ms;
        }
        if let Some((e, at)) = &p.last_error {
            s.last_error = Some(e.clone());
            s.last_error_at_ms = Some(*at);
        }
        if let Some(why) = &p.pause
            && s.paused.is_none()
        {
            s.paused = Some(why.clone());
            s.paused_at_ms = Some(now_ms);
        }
        s.in_flight = p.in_flight;
        s.updated_at_ms = now_ms;
        self.put_dest_state(&p.dest, &s)
    }

    pub(super) fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        match self.txn.del(table.handle, &key, None) {
            Ok(()) => Ok(true),
            Err(lmdb::Error::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Schedules events of `dest` for a try at `now_ms` (`didgate replay`, `deliveries
    /// retry`): an entry already waiting is made due now. Returns how many were new.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn schedule(&mut self, dest: &str, seqs: &[u64], now_ms: i64) -> Result<u64> {
        let dbs = self.dbs;
        let mut s = self.dest_state(dest)?.unwrap_or_else(|| DestState {
            created_at_ms: now_ms,
            ..DestState::default()
        });
        let mut new = 0;
        for seq in seqs {
            let key = dest_key(dest, *seq);
            let entry = match get(&self.txn, dbs.forward_retry, &key)? {
                Some(v) => RetryEntry {
                    next_try_ms: now_ms,
                    ..record(dbs.forward_retry, dest, v)?
                },
                None => {
                    new += 1;
                    s.retrying += 1;
                    RetryEntry {
                        next_try_ms: now_ms,
                        replay: true,
                        ..RetryEntry::default()
                    }
                }
            };
            self.put_json(dbs.forward_retry, &key, &state::encode(&entry))?;
        }
        s.updated_at_ms = now_ms;
        self.put_dest_state(dest, &s)?;
        Ok(new)
    }

    /// Moves dead letters of `dest` back to the retry set, due now, with a fresh `max_age`
    /// (all of them when `seqs` is `None`). Returns the sequence numbers moved.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn revive_dead(
        &mut self,
        dest: &str,
        seqs: Option<&[u64]>,
        now_ms: i64,
    ) -> Result<Vec<u64>> {
        let dbs = self.dbs;
        let chosen: Vec<u64> = match seqs {
            Some(s) => s.to_vec(),
            None => {
                let prefix = dest_prefix(dest);
                let mut all = Vec::new();
                for item in PrefixWalk::new(&self.txn, dbs.forward_dead, &prefix, b"")? {
                    let (k, _) = item?;
                    all.push(seq_of(dbs.forward_dead, prefix.len(), k)?);
                }
                all
            }
        };
        let mut moved = Vec::new();
        for seq in chosen {
            if self.remove(dbs.forward_dead, &dest_key(dest, seq))? {
                moved.push(seq);
            }
        }
        let mut s = self.dest_state(dest)?.unwrap_or_default();
        s.dead = s.dead.saturating_sub(moved.len() as u64);
        self.put_dest_state(dest, &s)?;
        self.schedule(dest, &moved, now_ms)?;
        Ok(moved)
    }

    /// Pauses (`Some(why)`) or resumes (`None`) a destination.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn set_paused(&mut self, dest: &str, why: Option<&str>, now_ms: i64) -> Result<()> {
        let mut s = self.dest_state(dest)?.unwrap_or_else(|| DestState {
            created_at_ms: now_ms,
            ..DestState::default()
        });
        s.paused = why.map(str::to_string);
        s.paused_at_ms = why.map(|_| now_ms);
        s.updated_at_ms = now_ms;
        self.put_dest_state(dest, &s)
    }

    /// Deletes a destination's state, retry set and dead letters; whether it had a state.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn forget_destination(&mut self, dest: &str) -> Result<bool> {
        let dbs = self.dbs;
        let prefix = dest_prefix(dest);
        for table in [dbs.forward_retry, dbs.forward_dead] {
            let keys: Vec<Vec<u8>> = PrefixWalk::new(&self.txn, table, &prefix, b"")?
                .map(|i| i.map(|(k, _)| k.to_vec()))
                .collect::<Result<_>>()?;
            for k in keys {
                del_if_present(&mut self.txn, table, &k)?;
            }
        }
        self.remove(dbs.forward, dest.as_bytes())
    }

    /// The cursor of each of `dests` that has a state (retention's view of who still has to
    /// deliver what).
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn delivery_cursors(&self, dests: &[String]) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for d in dests {
            if let Some(s) = self.dest_state(d)? {
                out.push((d.clone(), s.cursor));
            }
        }
        Ok(out)
    }

    /// Which of the destinations (with their cursors) have not delivered or dead-lettered
    /// event `seq` yet: it is after their cursor, or in their retry set.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn undelivered_by(&self, seq: u64, cursors: &[(String, u64)]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (d, cursor) in cursors {
            if seq > *cursor || get(&self.txn, self.dbs.forward_retry, &dest_key(d, seq))?.is_some()
            {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    /// Removes the retry entries and dead letters of deleted events, at every destination
    /// that has a state. Returns, per destination, how many were waiting for another try.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn forget_deliveries(&mut self, seqs: &[u64]) -> Result<Vec<(String, u64)>> {
        let dbs = self.dbs;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let dests: Vec<(String, DestState)> = all_named(&self.txn, dbs.forward)?;
        let mut dropped = Vec::new();
        for (d, mut s) in dests {
            let (mut retry, mut dead) = (0u64, 0u64);
            for seq in seqs {
                let key = dest_key(&d, *seq);
                retry += u64::from(self.remove(dbs.forward_retry, &key)?);
                dead += u64::from(self.remove(dbs.forward_dead, &key)?);
            }
            if retry + dead > 0 {
                s.retrying = s.retrying.saturating_sub(retry);
                s.dead = s.dead.saturating_sub(dead);
                self.put_dest_state(&d, &s)?;
            }
            if retry > 0 {
                dropped.push((d, retry));
            }
        }
        Ok(dropped)
    }
}

impl Store {
    /// `check`'s part: every delivery record decodes, every retry entry and dead letter
    /// belongs to a destination with a state, and each state's counts equal its entries.
    ///
    /// # Errors
    /// LMDB errors (damage is reported in `problems`).
    pub(super) fn check_deliveries(&self, problems: &mut Vec<String>) -> Result<()> {
        let txn = self.read_txn()?;
        if let Err(e) = all_named::<state::ConsumerCursor>(&txn, self.dbs.cursors) {
            problems.push(format!("cursors: {e}"));
        }
        let states: Vec<(String, DestState)> = match all_named(&txn, self.dbs.forward) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("forward: {e}"));
                return Ok(());
            }
        };
        for (table, what) in [
            (self.dbs.forward_retry, "waiting retries"),
            (self.dbs.forward_dead, "dead letters"),
        ] {
            let mut counted = std::collections::BTreeMap::<&str, u64>::new();
            for item in PrefixWalk::new(&txn, table, b"", b"")? {
                let (k, v) = item?;
                let owner = states.iter().find(|(d, _)| {
                    k.len() == d.len() + 9 && k.starts_with(d.as_bytes()) && k[d.len()] == 0
                });
                let Some((d, _)) = owner else {
                    problems.push(format!(
                        "{}: an entry of no known destination ({} bytes of key)",
                        table.name,
                        k.len()
                    ));
                    continue;
                };
                let decoded = if table.name == "forward_dead" {
                    state::decode::<DeadEntry>(v).map(|_| ())
                } else {
                    state::decode::<RetryEntry>(v).map(|_| ())
                };
                if let Err(e) = decoded {
                    problems.push(format!(
                        "{}: an entry of {d} does not decode: {e}",
                        table.name
                    ));
                }
                *counted.entry(d.as_str()).or_default() += 1;
            }
            for (d, s) in &states {
                let want = if table.name == "forward_dead" {
                    s.dead
                } else {
                    s.retrying
                };
                let found = counted.get(d.as_str()).copied().unwrap_or(0);
                if want != found {
                    problems.push(format!(
                        "forward destination {d}: its state counts {want} {what}, the store holds {found}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A destination's state.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn dest_state(&self, dest: &str) -> Result<Option<DestState>> {
        let txn = self.read_txn()?;
        dest_state_in(&txn, self.dbs.forward, dest)
    }

    /// Every destination that has a state (configured now or not).
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn dest_states(&self) -> Result<Vec<(String, DestState)>> {
        let txn = self.read_txn()?;
        all_named(&txn, self.dbs.forward)
    }

    /// Looks at up to `budget` of `dest`'s retry entries from `from` and returns those due at
    /// `now_ms` (all of them when `any_time`), at most `want`, skipping those `busy` names,
    /// each with its event. One short read transaction.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    #[allow(clippy::too_many_arguments)]
    pub fn retries_due(
        &self,
        dest: &str,
        from: u64,
        now_ms: i64,
        any_time: bool,
        want: usize,
        budget: usize,
        busy: impl Fn(u64) -> bool,
    ) -> Result<RetryScan> {
        let txn = self.read_txn()?;
        let table = self.dbs.forward_retry;
        let prefix = dest_prefix(dest);
        let mut scan = RetryScan::default();
        for (looked, item) in PrefixWalk::new(&txn, table, &prefix, &seq_key(from))?.enumerate() {
            let (k, v) = item?;
            let seq = seq_of(table, prefix.len(), k)?;
            if looked == budget || scan.due.len() == want {
                scan.next = Some(seq);
                break;
            }
            if busy(seq) {
                continue;
            }
            let entry: RetryEntry = record(table, dest, v)?;
            let not_before = entry.not_before_ms.unwrap_or(i64::MIN);
            if (!any_time && entry.next_try_ms > now_ms) || not_before > now_ms {
                let t = if any_time {
                    not_before
                } else {
                    entry.next_try_ms
                };
                scan.next_due_ms = Some(scan.next_due_ms.map_or(t, |d: i64| d.min(t)));
                continue;
            }
            let event = match get(&txn, self.dbs.events, &seq_key(seq))? {
                Some(ev) => Some(StoredEvent::from_record(seq, &decode_at(seq, ev)?)),
                None => None,
            };
            scan.due.push(DueRetry { seq, entry, event });
        }
        Ok(scan)
    }

    /// When the oldest event `dest` still owes was stored: the first event at or after
    /// `unsettled` (the first one after its cursor not yet sent successfully), or its first
    /// retry entry, whichever is older. `None` when it owes nothing still stored.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn oldest_owed_ms(&self, dest: &str, unsettled: Option<u64>) -> Result<Option<i64>> {
        let retry = self.first_retry(dest)?.map(|(s, _)| s);
        let oldest = match (unsettled, retry) {
            (Some(a), Some(b)) => a.min(b),
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => return Ok(None),
        };
        let page = self.events_forward(oldest, 1, |_, _| true)?;
        Ok(page.items.first().map(|e| e.stored_at_ms))
    }

    /// `dest`'s first retry entry (the head of an ordered destination).
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn first_retry(&self, dest: &str) -> Result<Option<(u64, RetryEntry)>> {
        let txn = self.read_txn()?;
        first_in(&txn, self.dbs.forward_retry, dest)
    }

    /// A page of `dest`'s retry set from `from`.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn retry_page(
        &self,
        dest: &str,
        from: u64,
        budget: usize,
    ) -> Result<Page<(u64, RetryEntry)>> {
        let txn = self.read_txn()?;
        page_of(&txn, self.dbs.forward_retry, dest, from, budget)
    }

    /// A page of `dest`'s dead letters from `from`.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn dead_page(
        &self,
        dest: &str,
        from: u64,
        budget: usize,
    ) -> Result<Page<(u64, DeadEntry)>> {
        let txn = self.read_txn()?;
        page_of(&txn, self.dbs.forward_dead, dest, from, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BodyFormat, Event};
    use crate::store::body_hash;

    fn store_with_events(dir: &std::path::Path, n: u64) -> Store {
        let store = Store::open_writer(dir, 16 << 20).unwrap();
        let mut w = store.begin_write(1_000).unwrap();
        for i in 0..n {
            let ev = Event {
                kind: "cdr".into(),
                format: BodyFormat::Json,
                peer: None,
                content_type: vec![],
                body: format!("{{\"i\":{i}}}").into_bytes(),
                callid: None,
                call: None,
            }
            .with_call_facts();
            w.append_event(&ev, body_hash(&ev.body)).unwrap();
        }
        w.commit().unwrap();
        store
    }

    fn entry(next: i64) -> RetryEntry {
        RetryEntry {
            attempts: 1,
            first_attempt_ms: Some(0),
            next_try_ms: next,
            ..RetryEntry::default()
        }
    }

    #[test]
    fn progress_keeps_counts_with_entries_and_destinations_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_events(dir.path(), 10);
        let mut w = store.begin_write(2_000).unwrap();
        let mut p = Progress::new("a");
        p.cursor = Some(6);
        p.delivered = 3;
        p.retry = vec![(2, entry(5_000)), (4, entry(1_000)), (4, entry(1_500))];
        w.apply_progress(&p, 2_000).unwrap();
        let mut other = Progress::new("ab");
        other.retry = vec![(3, entry(0))];
        w.apply_progress(&other, 2_000).unwrap();
        w.commit().unwrap();
        let s = store.dest_state("a").unwrap().unwrap();
        assert_eq!((s.cursor, s.delivered, s.retrying, s.dead), (6, 3, 2, 0));
        // "ab" shares a prefix with "a" but not its range.
        assert_eq!(store.first_retry("ab").unwrap().map(|(s, _)| s), Some(3));
        let due = store
            .retries_due("a", 0, 2_000, false, 10, 100, |_| false)
            .unwrap();
        assert_eq!(due.due.iter().map(|d| d.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(due.next_due_ms, Some(5_000));
        assert_eq!(due.due[0].event.as_ref().map(|e| e.seq), Some(4));
        let all = store
            .retries_due("a", 0, 2_000, true, 10, 100, |s| s == 4)
            .unwrap();
        assert_eq!(all.due.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
        // Delivered, dead, and a cursor that never goes back.
        let mut w = store.begin_write(3_000).unwrap();
        let mut p = Progress::new("a");
        p.cursor = Some(5);
        p.done = vec![4, 9];
        p.dead = vec![(2, crate::forward::schedule::dead_of(&entry(0), 3_000))];
        w.apply_progress(&p, 3_000).unwrap();
        w.commit().unwrap();
        let s = store.dest_state("a").unwrap().unwrap();
        assert_eq!((s.cursor, s.retrying, s.dead), (6, 0, 1));
        assert_eq!(store.dead_page("a", 0, 10).unwrap().items[0].0, 2);
        // Revived dead letters and scheduled events are due now, counted once.
        let mut w = store.begin_write(4_000).unwrap();
        assert_eq!(w.revive_dead("a", None, 4_000).unwrap(), [2]);
        assert_eq!(w.schedule("a", &[2, 7], 4_000).unwrap(), 1);
        w.commit().unwrap();
        let s = store.dest_state("a").unwrap().unwrap();
        assert_eq!((s.retrying, s.dead), (2, 0));
        let page = store.retry_page("a", 0, 10).unwrap();
        assert!(page.items.iter().all(|(_, e)| e.next_try_ms == 4_000));
        // Retention: event 7 waits in the retry set, 8 is after the cursor; 1 is delivered.
        let w = store.begin_write(5_000).unwrap();
        let cursors = w.delivery_cursors(&["a".into(), "gone".into()]).unwrap();
        assert_eq!(cursors, [("a".to_string(), 6)]);
        assert!(w.undelivered_by(1, &cursors).unwrap().is_empty());
        assert_eq!(w.undelivered_by(7, &cursors).unwrap(), ["a"]);
        assert_eq!(w.undelivered_by(8, &cursors).unwrap(), ["a"]);
        drop(w);
        let mut w = store.begin_write(5_000).unwrap();
        assert_eq!(
            w.forget_deliveries(&[7, 1]).unwrap(),
            [("a".to_string(), 1)]
        );
        assert!(w.forget_destination("ab").unwrap());
        w.commit().unwrap();
        assert_eq!(store.dest_state("a").unwrap().unwrap().retrying, 1);
        assert_eq!(store.dest_states().unwrap().len(), 1);
        assert_eq!(store.first_retry("ab").unwrap(), None);
        assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
        // A count that disagrees with the entries is a finding.
        let mut w = store.begin_write(6_000).unwrap();
        let mut s = w.dest_state("a").unwrap().unwrap();
        s.dead = 5;
        w.put_dest_state("a", &s).unwrap();
        w.commit().unwrap();
        let problems = store.check().unwrap().problems;
        assert!(
            problems.iter().any(|p| p.contains("counts 5 dead letters")),
            "{problems:?}"
        );
    }
}
