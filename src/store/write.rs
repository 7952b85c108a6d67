//! [`WriteTxn`]: the write transaction of one batch (the writer's) or one retention slice.
//!
//! Owns appending events with their digests, quarantining bodies, counting duplicates,
//! deleting what retention expires, and keeping the counters, the call blocks, the call index
//! with its rollups (`calls.rs`) and `next_seq` consistent with all of that in the same commit.

use std::collections::{BTreeMap, BTreeSet};

use lmdb::{Transaction, WriteFlags};

use super::layout::{
    CALL_BLOCK, CounterKey, Digest, NEXT_QSEQ_KEY, NEXT_SEQ_KEY, callid_hash, decode_at,
    del_if_present, get, get_seq, indexed_seq, next_qseq, next_seq, seq_key, u64_value,
    write_call_block,
};
use super::read::{Quarantined, StoredEvent};
use super::walk::{Page, Walk};
use super::{Dbs, Result, Store};
use crate::call::facts::Facts;
use crate::event::{self, Event};
use crate::timestamp;

/// Longest quarantine reason kept, in bytes.
const MAX_REASON_BYTES: usize = 1024;

/// The write transaction of one batch.
///
/// Only one exists at a time (LMDB's rule, kept by the single writer thread; another process,
/// `didgate prune`, waits on LMDB's lock). Nothing it does is visible to readers, or durable,
/// until [`WriteTxn::commit`] returns `Ok`.
pub struct WriteTxn<'s> {
    pub(super) txn: lmdb::RwTransaction<'s>,
    pub(super) dbs: Dbs,
    /// The next sequence number when the transaction began: the blocks between it and
    /// `next_event` are completed at commit.
    first_event: u64,
    /// The next quarantine number when the transaction began.
    first_quarantine: u64,
    pub(super) next_event: u64,
    next_quarantine: u64,
    pub(super) stored_at_ms: i64,
    /// The call index's watermark: events below it are filed in `calltime` and `rollups`.
    pub(super) indexed: u64,
    day: String,
    /// Counter changes, applied once per key at commit.
    counts: BTreeMap<Vec<u8>, i64>,
    /// Call blocks that lost events: deleted at commit if nothing of them is left.
    touched_blocks: BTreeSet<u64>,
    /// Events appended per kind (a batch has a handful of kinds), folded into the `events/K`
    /// and `day/D/K` counters at commit: two formatted keys and map updates per batch and kind
    /// instead of per event.
    appended: Vec<(String, i64)>,
    /// Rollup changes per quarter hour of call time, applied at commit.
    pub(super) rollups: BTreeMap<i64, super::calls::Pending>,
    pub(super) scratch: Vec<u8>,
}

impl Store {
    /// Starts the write transaction of one batch; every event in it is stamped `stored_at_ms`.
    ///
    /// # Errors
    /// LMDB refused to begin (e.g. `MDB_PANIC`), or `meta` is damaged.
    pub fn begin_write(&self, stored_at_ms: i64) -> Result<WriteTxn<'_>> {
        let txn = match self.env.begin_rw_txn() {
            // Another process (the server, for `didgate prune`) grew the map.
            Err(lmdb::Error::MapResized) => {
                self.set_map_size(0)?;
                self.env.begin_rw_txn()?
            }
            other => other?,
        };
        // Read inside the transaction, so a writer in another process is never out of date.
        let next_event = next_seq(&txn, self.dbs)?;
        let next_quarantine = next_qseq(&txn, self.dbs)?;
        let indexed = indexed_seq(&txn, self.dbs)?;
        Ok(WriteTxn {
            txn,
            dbs: self.dbs,
            first_event: next_event,
            first_quarantine: next_quarantine,
            next_event,
            next_quarantine,
            stored_at_ms,
            indexed,
            day: timestamp::day_of_ms(stored_at_ms),
            counts: BTreeMap::new(),
            touched_blocks: BTreeSet::new(),
            appended: Vec::new(),
            rollups: BTreeMap::new(),
            scratch: Vec::new(),
        })
    }
}

impl WriteTxn<'_> {
    /// Whether event `seq`, stored earlier (or earlier in this batch), has the kind and the
    /// byte-identical body of `ev` and was stamped at or after `since_ms`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn is_same_event(&self, seq: u64, ev: &Event, since_ms: i64) -> Result<bool> {
        match get_seq(&self.txn, self.dbs.events, seq)? {
            Some(v) => {
                let rec = decode_at(seq, v)?;
                Ok(rec.stored_at_ms >= since_ms && rec.kind == ev.kind && rec.body == ev.body)
            }
            None => Ok(false),
        }
    }

    /// Appends an event with the next sequence number, its digest (`body_hash` is
    /// [`super::body_hash`] of its body) and counters.
    ///
    /// # Errors
    /// LMDB errors (`MDB_MAP_FULL` among them); the whole transaction must then be dropped.
    pub fn append_event(&mut self, ev: &Event, body_hash: u64) -> Result<u64> {
        let seq = self.next_event;
        let key = seq_key(seq);
        self.scratch.clear();
        ev.as_record(self.stored_at_ms).encode(&mut self.scratch);
        self.txn.put(
            self.dbs.events.handle,
            &key,
            &self.scratch,
            WriteFlags::APPEND,
        )?;
        let digest = Digest {
            body: body_hash,
            callid: ev
                .callid
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(callid_hash),
        };
        let (bytes, len) = digest.encode();
        self.txn.put(
            self.dbs.digests.handle,
            &key,
            &&bytes[..len],
            WriteFlags::APPEND,
        )?;
        match self.appended.iter_mut().find(|(kind, _)| *kind == ev.kind) {
            Some((_, n)) => *n += 1,
            None => self.appended.push((ev.kind.clone(), 1)),
        }
        self.next_event += 1;
        Ok(seq)
    }

    /// Counts a recognised duplicate of `kind`.
    pub fn count_duplicate(&mut self, kind: &str) {
        self.add_count(CounterKey::Duplicates(kind).encode(), 1);
    }

    /// Keeps a body that did not decode, with the reason, under the next quarantine number.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn append_quarantine(&mut self, reason: &str, ev: &Event) -> Result<u64> {
        let seq = self.next_quarantine;
        let reason = event::truncate_str(reason, MAX_REASON_BYTES);
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&(reason.len() as u16).to_be_bytes());
        self.scratch.extend_from_slice(reason.as_bytes());
        ev.as_record(self.stored_at_ms).encode(&mut self.scratch);
        self.txn.put(
            self.dbs.quarantine.handle,
            &seq_key(seq),
            &self.scratch,
            WriteFlags::APPEND,
        )?;
        self.next_quarantine += 1;
        Ok(seq)
    }

    /// A page of the oldest events with `seq >= from`, at most `max`, for retention to judge.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn oldest_events(&self, from: u64, max: usize) -> Result<Page<StoredEvent>> {
        Page::collect(
            Walk::forward(&self.txn, self.dbs.events, from)?,
            max,
            |seq, v| Ok(Some(StoredEvent::from_record(seq, &decode_at(seq, v)?))),
        )
    }

    /// A page of the oldest quarantined bodies with `seq >= from`, at most `max`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn oldest_quarantined(&self, from: u64, max: usize) -> Result<Page<Quarantined>> {
        Page::collect(
            Walk::forward(&self.txn, self.dbs.quarantine, from)?,
            max,
            |seq, v| Quarantined::decode(seq, v).map(Some),
        )
    }

    /// Deletes an event with its digest and archive state, and takes it out of the counters.
    /// Its call block goes at commit once none of the block's events is left. Returns the
    /// path of its archived recording, if any: the caller removes the file once the
    /// transaction is committed.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn delete_event(&mut self, ev: &StoredEvent) -> Result<Option<String>> {
        let archive = self.delete_archive(ev.seq)?;
        if let Some(facts) = Facts::of(&ev.kind, ev.format, &ev.body) {
            let kept = super::calls::holds_file(archive.as_ref());
            self.unindex_call(ev.seq, ev.stored_at_ms, &facts, kept)?;
        }
        let archived = archive.and_then(|r| r.path);
        let key = seq_key(ev.seq);
        del_if_present(&mut self.txn, self.dbs.events, &key)?;
        del_if_present(&mut self.txn, self.dbs.digests, &key)?;
        self.touched_blocks.insert(ev.seq / CALL_BLOCK);
        let day = timestamp::day_of_ms(ev.stored_at_ms);
        self.add_count(CounterKey::Events(&ev.kind).encode(), -1);
        self.add_count(CounterKey::Day(&day, &ev.kind).encode(), -1);
        Ok(archived)
    }

    /// Deletes a quarantined body.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn delete_quarantined(&mut self, seq: u64) -> Result<()> {
        del_if_present(&mut self.txn, self.dbs.quarantine, &seq_key(seq))
    }

    fn add_count(&mut self, key: Vec<u8>, delta: i64) {
        *self.counts.entry(key).or_insert(0) += delta;
    }

    /// Writes the counters and commits: in [`super::Sync::EveryCommit`] this returns after
    /// LMDB's fdatasync of the data pages; the commit is durable once the next fdatasync
    /// returns.
    ///
    /// # Errors
    /// LMDB errors, or a damaged counter; nothing of the batch is then stored.
    pub fn commit(mut self) -> Result<()> {
        let dbs = self.dbs;
        for (kind, n) in std::mem::take(&mut self.appended) {
            self.add_count(CounterKey::Events(&kind).encode(), n);
            let day = CounterKey::Day(&self.day, &kind).encode();
            self.add_count(day, n);
        }
        for (key, delta) in std::mem::take(&mut self.counts) {
            let old = match get(&self.txn, dbs.counts, &key)? {
                Some(v) => u64_value(dbs.counts, &key, v)?,
                None => 0,
            };
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                del_if_present(&mut self.txn, dbs.counts, &key)?;
            } else {
                self.txn.put(
                    dbs.counts.handle,
                    &key,
                    &new.to_be_bytes(),
                    WriteFlags::empty(),
                )?;
            }
        }
        self.apply_rollups()?;
        if self.next_event != self.first_event {
            // Blocks completed by this batch: their digests are all written now.
            for block in self.first_event / CALL_BLOCK..self.next_event / CALL_BLOCK {
                write_call_block(&mut self.txn, dbs, block)?;
            }
            self.txn.put(
                dbs.meta.handle,
                &NEXT_SEQ_KEY,
                &self.next_event.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        if self.next_quarantine != self.first_quarantine {
            self.txn.put(
                dbs.meta.handle,
                &NEXT_QSEQ_KEY,
                &self.next_quarantine.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        for block in std::mem::take(&mut self.touched_blocks) {
            let start = block * CALL_BLOCK;
            let left = match Walk::forward(&self.txn, dbs.events, start)?.next() {
                Some(item) => item?.0 < start + CALL_BLOCK,
                None => false,
            };
            if !left {
                del_if_present(&mut self.txn, dbs.callblocks, &seq_key(block))?;
            }
        }
        self.txn.commit()?;
        Ok(())
    }
}
