//! The read API: short read transactions whose results are copied out before they return, so
//! no reader holds a transaction while it waits on its output.
//!
//! Owns what the reader tool and the writer's start-up read: pages of events and quarantined
//! bodies, a call's events, the counters, lookups by time. Long listings are [`Page`]s: each
//! call is one transaction of bounded length, and the caller continues from `next`.

use std::collections::BTreeMap;

use lmdb::Transaction;

use super::layout::{
    CALL_BLOCK, CounterKey, Digest, block_matches, callid_hash, decode_at, get_seq, last_key,
    next_seq, u64_value,
};
use super::walk::{Page, Walk};
use super::{Error, Result, Store};
use crate::event::{self, BodyFormat, Record};

/// While [`Store::recent_digests`] walks back, the pages it mapped are released after this
/// many digests (about 100 digests pages).
const RELEASE_EVERY_DIGESTS: usize = 16_384;

/// One event as the reader tool gets it: copied out of its read transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its sequence number.
    pub seq: u64,
    /// When it was committed, milliseconds since the Unix epoch.
    pub stored_at_ms: i64,
    /// Its kind.
    pub kind: String,
    /// How its body was decoded when accepted.
    pub format: BodyFormat,
    /// Who sent it, when known.
    pub peer: Option<std::net::SocketAddr>,
    /// The Content-Type as received.
    pub content_type: Vec<u8>,
    /// The body exactly as received.
    pub body: Vec<u8>,
}

impl StoredEvent {
    pub(super) fn from_record(seq: u64, rec: &Record<'_>) -> StoredEvent {
        StoredEvent {
            seq,
            stored_at_ms: rec.stored_at_ms,
            kind: rec.kind.to_string(),
            format: rec.format,
            peer: rec.peer,
            content_type: rec.content_type.to_vec(),
            body: rec.body.to_vec(),
        }
    }
}

/// One quarantined body with the reason it was not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// Its sequence number.
    pub seq: u64,
    /// Why it was not decoded.
    pub reason: String,
    /// The record; its `kind` is the hook the body was posted to.
    pub event: StoredEvent,
}

impl Quarantined {
    /// Decodes a `quarantine` value: reason length u16 BE, reason, record.
    pub(super) fn decode(seq: u64, v: &[u8]) -> Result<Quarantined> {
        let truncated = || Error::Record {
            seq,
            err: event::Error::Truncated,
        };
        let len = v
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(truncated)?;
        let reason = v.get(2..2 + len).ok_or_else(truncated)?;
        let rec = decode_at(seq, &v[2 + len..])?;
        Ok(Quarantined {
            seq,
            reason: String::from_utf8_lossy(reason).into_owned(),
            event: StoredEvent::from_record(seq, &rec),
        })
    }
}

/// The persistent counters, as `stats` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Stored events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Stored events per UTC day, then per kind.
    pub by_day: BTreeMap<String, BTreeMap<String, u64>>,
    /// Byte-identical retries recognised and not stored again, per kind.
    pub duplicates: BTreeMap<String, u64>,
    /// Bodies kept in quarantine.
    pub quarantined: u64,
}

impl Store {
    /// A page of events with `seq >= from`, ascending, at most `budget` looked at, keeping
    /// those `keep` accepts (it sees each event's sequence number and record).
    ///
    /// # Errors
    /// LMDB errors, or a stored value that does not decode.
    pub fn events_forward(
        &self,
        from: u64,
        budget: usize,
        keep: impl FnMut(u64, &Record<'_>) -> bool,
    ) -> Result<Page<StoredEvent>> {
        let txn = self.read_txn()?;
        Page::collect(
            Walk::forward(&txn, self.dbs.events, from)?,
            budget,
            keeper(keep),
        )
    }

    /// A page of events with `seq < before` (from the newest when `None`), descending, at most
    /// `budget` looked at, keeping those `keep` accepts.
    ///
    /// # Errors
    /// LMDB errors, or a stored value that does not decode.
    pub fn events_backward(
        &self,
        before: Option<u64>,
        budget: usize,
        keep: impl FnMut(u64, &Record<'_>) -> bool,
    ) -> Result<Page<StoredEvent>> {
        let txn = self.read_txn()?;
        Page::collect(
            Walk::backward(&txn, self.dbs.events, before)?,
            budget,
            keeper(keep),
        )
    }

    /// The highest event sequence number stored, if any.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn last_seq(&self) -> Result<Option<u64>> {
        let txn = self.read_txn()?;
        last_key(&txn, self.dbs.events)
    }

    /// The first event stored at or after `ms` (stamps never decrease along the sequence, so
    /// this is a binary search over sequence numbers).
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn first_seq_at(&self, ms: i64) -> Result<Option<u64>> {
        let txn = self.read_txn()?;
        let events = self.dbs.events;
        let first_at = |seq: u64| -> Result<Option<(u64, i64)>> {
            match Walk::forward(&txn, events, seq)?.next() {
                Some(item) => {
                    let (seq, v) = item?;
                    Ok(Some((seq, decode_at(seq, v)?.stored_at_ms)))
                }
                None => Ok(None),
            }
        };
        let Some((first, _)) = first_at(0)? else {
            return Ok(None);
        };
        let Some(last) = last_key(&txn, events)? else {
            return Ok(None);
        };
        // Invariant: every event with seq < lo is stamped before `ms`; answer is in [lo, hi].
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match first_at(mid)? {
                Some((seq, stamp)) if stamp < ms => lo = seq + 1,
                _ => hi = mid,
            }
        }
        Ok(first_at(lo)?.map(|(seq, _)| seq))
    }

    /// Every event whose JSON `callid` is `callid`, oldest first. The index holds a 32-bit
    /// hash of the callid, so each candidate is confirmed by `is_call`, which reads the callid
    /// from the record's body (the store does not parse bodies).
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn call_events(
        &self,
        callid: &str,
        mut is_call: impl FnMut(&Record<'_>) -> bool,
    ) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        if callid.is_empty() {
            return Ok(out);
        }
        let hash = callid_hash(callid);
        let txn = self.read_txn()?;
        let indexed_to = next_seq(&txn, self.dbs)? / CALL_BLOCK * CALL_BLOCK;
        let mut candidates = Vec::new();
        for item in Walk::forward(&txn, self.dbs.callblocks, 0)? {
            let (block, v) = item?;
            let base = block * CALL_BLOCK;
            candidates.extend(block_matches(v, hash).map(|offset| base + offset));
        }
        // The events after the last complete block are not in a block yet: read their digests.
        for item in Walk::forward(&txn, self.dbs.digests, indexed_to)? {
            let (seq, v) = item?;
            if Digest::decode(seq, v)?.callid == Some(hash) {
                candidates.push(seq);
            }
        }
        for seq in candidates {
            // Absent: pruned by retention; its block entry stays until the whole block is gone.
            if let Some(v) = get_seq(&txn, self.dbs.events, seq)? {
                let rec = decode_at(seq, v)?;
                if is_call(&rec) {
                    out.push(StoredEvent::from_record(seq, &rec));
                }
            }
        }
        Ok(out)
    }

    /// Calls `visit(seq, body_hash)` for the newest `max` events, newest first (the writer
    /// rebuilds its dedup table from these at start-up).
    ///
    /// # Errors
    /// LMDB errors, or a digest that does not decode.
    pub fn recent_digests(&self, max: usize, mut visit: impl FnMut(u64, u64)) -> Result<()> {
        let txn = self.read_txn()?;
        for (seen, item) in Walk::backward(&txn, self.dbs.digests, None)?
            .take(max)
            .enumerate()
        {
            let (seq, v) = item?;
            visit(seq, Digest::decode(seq, v)?.body);
            if (seen + 1) % RELEASE_EVERY_DIGESTS == 0 {
                // The walk maps each digests page and, through the kernel's fault-around,
                // the cached pages beside it (events pages, as both trees grow together);
                // released as it goes.
                let _ = self.release_mapped_pages();
            }
        }
        Ok(())
    }

    /// When event `seq` was stored, if it still is.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn stored_at_of(&self, seq: u64) -> Result<Option<i64>> {
        let txn = self.read_txn()?;
        match get_seq(&txn, self.dbs.events, seq)? {
            Some(v) => Ok(Some(decode_at(seq, v)?.stored_at_ms)),
            None => Ok(None),
        }
    }

    /// Event `seq`, when it is stored.
    ///
    /// # Errors
    /// LMDB errors, or a record that does not decode.
    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>> {
        let txn = self.read_txn()?;
        match get_seq(&txn, self.dbs.events, seq)? {
            Some(v) => Ok(Some(StoredEvent::from_record(seq, &decode_at(seq, v)?))),
            None => Ok(None),
        }
    }

    /// The persistent counters.
    ///
    /// # Errors
    /// LMDB errors, or a counter whose key or value is damaged.
    pub fn counts(&self) -> Result<Counts> {
        let txn = self.read_txn()?;
        let table = self.dbs.counts;
        let mut counts = Counts {
            quarantined: txn.stat(self.dbs.quarantine.handle)?.entries() as u64,
            ..Counts::default()
        };
        // Keys are strings, not sequence numbers: walked with LMDB's own iterator.
        let mut cursor = txn.open_ro_cursor(table.handle)?;
        for item in lmdb::Cursor::iter_start(&mut cursor) {
            let (k, v) = item?;
            let n = u64_value(table, k, v)?;
            match CounterKey::decode(k)? {
                CounterKey::Events(kind) => {
                    counts.by_kind.insert(kind.to_string(), n);
                }
                CounterKey::Duplicates(kind) => {
                    counts.duplicates.insert(kind.to_string(), n);
                }
                CounterKey::Day(day, kind) => {
                    let per_day = counts.by_day.entry(day.to_string()).or_default();
                    per_day.insert(kind.to_string(), n);
                }
            }
        }
        Ok(counts)
    }

    /// A page of quarantined bodies with `seq >= from`, at most `limit`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn quarantine_page(&self, from: u64, limit: usize) -> Result<Page<Quarantined>> {
        let txn = self.read_txn()?;
        Page::collect(
            Walk::forward(&txn, self.dbs.quarantine, from)?,
            limit,
            |seq, v| Quarantined::decode(seq, v).map(Some),
        )
    }

    /// One quarantined body.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn quarantined(&self, seq: u64) -> Result<Option<Quarantined>> {
        let txn = self.read_txn()?;
        match get_seq(&txn, self.dbs.quarantine, seq)? {
            Some(v) => Ok(Some(Quarantined::decode(seq, v)?)),
            None => Ok(None),
        }
    }
}

/// Adapts a `keep` filter over records to [`Page::collect`]'s reader of stored events.
fn keeper<'txn>(
    mut keep: impl FnMut(u64, &Record<'_>) -> bool,
) -> impl FnMut(u64, &'txn [u8]) -> Result<Option<StoredEvent>> {
    move |seq, v| {
        let rec = decode_at(seq, v)?;
        Ok(keep(seq, &rec).then(|| StoredEvent::from_record(seq, &rec)))
    }
}
