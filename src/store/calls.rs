//! The call index and its rollups: `calltime` (every CDR, recording and SMS under its own call
//! time) and `rollups` (a [`Tally`] per quarter hour of call time), both written in the same
//! transaction as the events they describe.
//!
//! The writer adds an entry and a rollup delta per event ([`WriteTxn::index_call`]); retention
//! takes them out again ([`WriteTxn::unindex_call`]); an archive state that starts or stops
//! holding a file moves the `archived` count ([`WriteTxn::archive_changed`]). Deltas are summed
//! per quarter hour and applied at commit ([`WriteTxn::apply_rollups`]): one read and one
//! write per quarter hour touched, whatever the batch size. `check` recounts every rollup
//! from the bodies.

use std::collections::BTreeMap;

use lmdb::{Transaction, WriteFlags};

use super::layout::{Table, decode_at, del_if_present, get, get_seq, seq_key};
use super::walk::PrefixWalk;
use super::{Error, Result, Store, WriteTxn};
use crate::archive::record::{ArchiveRecord, State};
use crate::call::facts::{Facts, Kind};
use crate::call::tally::{BUCKET_MS, Tally, bucket_of};

/// One entry of the call index, copied out of its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEntry {
    /// The time it is filed under (its own time, else when it was stored), ms.
    pub at_ms: i64,
    /// The event's sequence number.
    pub seq: u64,
    /// What the body says.
    pub facts: Facts,
}

/// A page of the call index and where the next one starts (a time and sequence number).
pub type CallsPage = (Vec<CallEntry>, Option<(i64, u64)>);

/// Rollup changes of one quarter hour, gathered during a transaction.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Pending {
    add: Tally,
    sub: Tally,
    /// The longest call taken out; the quarter hour is recounted if it was the longest.
    removed_longest: Option<u64>,
}

/// Signed times order as unsigned keys once the sign bit is flipped.
fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn key_time(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The `calltime` key: time, then sequence number.
pub(super) fn call_key(at_ms: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_key(at_ms));
    k[8..].copy_from_slice(&seq_key(seq));
    k
}

fn split_call_key(table: Table, k: &[u8]) -> Result<(i64, u64)> {
    let bytes: [u8; 16] = k.try_into().map_err(|_| Error::Corrupt {
        db: table.name,
        what: format!("a key of {} bytes where 16 were written", k.len()),
    })?;
    let (t, s) = bytes.split_at(8);
    let mut tb = [0u8; 8];
    tb.copy_from_slice(t);
    let mut sb = [0u8; 8];
    sb.copy_from_slice(s);
    Ok((key_time(tb), u64::from_be_bytes(sb)))
}

fn decode_entry(table: Table, k: &[u8], v: &[u8]) -> Result<CallEntry> {
    let (at_ms, seq) = split_call_key(table, k)?;
    let facts = Facts::decode(at_ms, v).map_err(|what| Error::Corrupt {
        db: table.name,
        what: format!("event {seq}: {what}"),
    })?;
    Ok(CallEntry { at_ms, seq, facts })
}

fn decode_tally(table: Table, v: &[u8]) -> Result<Tally> {
    Tally::decode(v).map_err(|what| Error::Corrupt {
        db: table.name,
        what,
    })
}

/// Whether an archive record says the file is kept.
pub(super) fn holds_file(r: Option<&ArchiveRecord>) -> bool {
    r.is_some_and(|r| matches!(r.state, State::Fetched | State::Suspicious))
}

/// Walks `calltime` over `[from_ms, until_ms)` in a transaction, calling `visit` per entry
/// until it returns false.
fn walk_calls(
    txn: &impl Transaction,
    table: Table,
    from: &[u8],
    until_ms: i64,
    mut visit: impl FnMut(CallEntry) -> Result<bool>,
) -> Result<()> {
    let end = u64::from_be_bytes(time_key(until_ms));
    for item in PrefixWalk::new(txn, table, &[], from)? {
        let (k, v) = item?;
        // Compared as a number: a byte-slice compare per entry is a libc call.
        if let Some(head) = k.first_chunk::<8>()
            && u64::from_be_bytes(*head) >= end
        {
            break;
        }
        if !visit(decode_entry(table, k, v)?)? {
            break;
        }
    }
    Ok(())
}

/// The tally of one quarter hour counted from the index and archive states of `txn`.
fn recount(txn: &impl Transaction, dbs: super::Dbs, bucket: i64) -> Result<Tally> {
    let mut t = Tally::default();
    let from = call_key(bucket * BUCKET_MS, 0);
    walk_calls(txn, dbs.calltime, &from, (bucket + 1) * BUCKET_MS, |e| {
        let archived = e.facts.kind == Kind::Recording
            && holds_file(
                super::archive::record_in(txn, dbs.archive, dbs.archive_open, e.seq)?.as_ref(),
            );
        t.add(&Tally::of(&e.facts, archived));
        Ok(true)
    })?;
    Ok(t)
}

impl WriteTxn<'_> {
    fn pending(&mut self, at_ms: i64) -> &mut Pending {
        self.rollups.entry(bucket_of(at_ms)).or_default()
    }

    /// Files a just appended event in the call index and its quarter hour's rollup.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub(super) fn index_call(&mut self, seq: u64, facts: &Facts) -> Result<()> {
        let at = facts.index_ms(self.stored_at_ms);
        self.scratch.clear();
        facts.encode(&mut self.scratch);
        self.txn.put(
            self.dbs.calltime.handle,
            &call_key(at, seq),
            &self.scratch,
            WriteFlags::empty(),
        )?;
        let t = Tally::of(facts, false);
        self.pending(at).add.add(&t);
        Ok(())
    }

    /// Takes an event that retention deletes out of the index and its rollup (`archived`:
    /// whether its recording was kept).
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub(super) fn unindex_call(
        &mut self,
        seq: u64,
        stored_at_ms: i64,
        facts: &Facts,
        archived: bool,
    ) -> Result<()> {
        let at = facts.index_ms(stored_at_ms);
        del_if_present(&mut self.txn, self.dbs.calltime, &call_key(at, seq))?;
        let t = Tally::of(facts, archived);
        let p = self.pending(at);
        p.sub.add(&t);
        if facts.kind == Kind::Cdr {
            p.removed_longest = Some(p.removed_longest.unwrap_or(0).max(t.longest));
        }
        Ok(())
    }

    /// Moves the `archived` count of recording `seq` when its archive state starts or stops
    /// holding the file.
    ///
    /// # Errors
    /// LMDB errors, or a damaged event.
    pub(super) fn archive_changed(&mut self, seq: u64, was: bool, is: bool) -> Result<()> {
        if was == is {
            return Ok(());
        }
        let Some(v) = get_seq(&self.txn, self.dbs.events, seq)? else {
            return Ok(());
        };
        let rec = decode_at(seq, v)?;
        let Some(facts) = Facts::of(rec.kind, rec.format, rec.body) else {
            return Ok(());
        };
        let at = facts.index_ms(rec.stored_at_ms);
        let one = Tally {
            archived: 1,
            ..Tally::default()
        };
        let p = self.pending(at);
        if is {
            p.add.add(&one)
        } else {
            p.sub.add(&one)
        }
        Ok(())
    }

    /// Writes the gathered rollup changes; called by `commit`, after every index change of
    /// the transaction.
    ///
    /// # Errors
    /// LMDB errors, or a damaged rollup.
    pub(super) fn apply_rollups(&mut self) -> Result<()> {
        let dbs = self.dbs;
        for (bucket, p) in std::mem::take(&mut self.rollups) {
            let key = time_key(bucket);
            let old = match get(&self.txn, dbs.rollups, &key)? {
                Some(v) => decode_tally(dbs.rollups, v)?,
                None => Tally::default(),
            };
            let new = if p
                .removed_longest
                .is_some_and(|l| l >= old.longest.max(p.add.longest))
            {
                recount(&self.txn, dbs, bucket)?
            } else {
                let mut t = old;
                t.add(&p.add);
                t.sub(&p.sub);
                t
            };
            if new.is_empty() {
                del_if_present(&mut self.txn, dbs.rollups, &key)?;
            } else if new != old {
                self.txn
                    .put(dbs.rollups.handle, &key, &new.encode(), WriteFlags::empty())?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Up to `max` index entries from `from` (a time and sequence number, included) to
    /// `until_ms` (excluded), in call-time order, and where the next page starts. One short
    /// read transaction.
    ///
    /// # Errors
    /// LMDB errors, or a damaged entry.
    pub fn calls_page(&self, from: (i64, u64), until_ms: i64, max: usize) -> Result<CallsPage> {
        let txn = self.read_txn()?;
        let mut out = Vec::new();
        let mut next = None;
        walk_calls(
            &txn,
            self.dbs.calltime,
            &call_key(from.0, from.1),
            until_ms,
            |e| {
                if out.len() == max {
                    next = Some((e.at_ms, e.seq));
                    return Ok(false);
                }
                out.push(e);
                Ok(true)
            },
        )?;
        Ok((out, next))
    }

    /// The rollups of the quarter hours from `from_bucket` to `until_bucket` (excluded). One
    /// read transaction: a year is 35,040 small values.
    ///
    /// # Errors
    /// LMDB errors, or a damaged rollup.
    pub fn rollups(&self, from_bucket: i64, until_bucket: i64) -> Result<Vec<(i64, Tally)>> {
        let txn = self.read_txn()?;
        let mut out = Vec::new();
        let end = time_key(until_bucket);
        for item in PrefixWalk::new(&txn, self.dbs.rollups, &[], &time_key(from_bucket))? {
            let (k, v) = item?;
            if k >= &end[..] {
                break;
            }
            let kb: [u8; 8] = k.try_into().map_err(|_| Error::Corrupt {
                db: self.dbs.rollups.name,
                what: format!("a key of {} bytes where 8 were written", k.len()),
            })?;
            out.push((key_time(kb), decode_tally(self.dbs.rollups, v)?));
        }
        Ok(out)
    }

    /// Whether each recording `seq` holds its archived file, and its state's name (`None`:
    /// no archive record). One read transaction.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn archive_states(&self, seqs: &[u64]) -> Result<Vec<Option<State>>> {
        let txn = self.read_txn()?;
        seqs.iter()
            .map(|&s| {
                Ok(
                    super::archive::record_in(&txn, self.dbs.archive, self.dbs.archive_open, s)?
                        .map(|r| r.state),
                )
            })
            .collect()
    }
}

/// What `check` found wrong with the call index and rollups.
pub(super) fn verify(
    txn: &impl Transaction,
    dbs: super::Dbs,
    problems: &mut Vec<String>,
) -> Result<u64> {
    // Every event with facts has its entry, byte for byte; the rollups are what they add up to.
    let mut expected_tallies: BTreeMap<i64, Tally> = BTreeMap::new();
    let mut indexed = 0u64;
    let mut scratch = Vec::new();
    for item in super::walk::Walk::forward(txn, dbs.events, 0)? {
        let (seq, v) = item?;
        let rec = decode_at(seq, v)?;
        let Some(facts) = Facts::of(rec.kind, rec.format, rec.body) else {
            continue;
        };
        indexed += 1;
        let at = facts.index_ms(rec.stored_at_ms);
        scratch.clear();
        facts.encode(&mut scratch);
        match get(txn, dbs.calltime, &call_key(at, seq))? {
            Some(found) if found == scratch.as_slice() => {}
            Some(_) => problems.push(format!(
                "calltime: the entry of event {seq} differs from its body"
            )),
            None => problems.push(format!("calltime: event {seq} is not in the call index")),
        }
        let archived = facts.kind == Kind::Recording
            && holds_file(
                super::archive::record_in(txn, dbs.archive, dbs.archive_open, seq)?.as_ref(),
            );
        expected_tallies
            .entry(bucket_of(at))
            .or_default()
            .add(&Tally::of(&facts, archived));
    }
    let mut entries = 0u64;
    for item in PrefixWalk::new(txn, dbs.calltime, &[], &[])? {
        let (k, _) = item?;
        let (_, seq) = split_call_key(dbs.calltime, k)?;
        entries += 1;
        if get_seq(txn, dbs.events, seq)?.is_none() {
            problems.push(format!(
                "calltime: an entry for event {seq}, which is not stored"
            ));
        }
    }
    if entries != indexed {
        problems.push(format!(
            "calltime: {entries} entries for {indexed} calls, recordings and SMS stored"
        ));
    }
    let mut stored: BTreeMap<i64, Tally> = BTreeMap::new();
    for item in PrefixWalk::new(txn, dbs.rollups, &[], &[])? {
        let (k, v) = item?;
        let kb: [u8; 8] = k.try_into().map_err(|_| Error::Corrupt {
            db: dbs.rollups.name,
            what: format!("a key of {} bytes where 8 were written", k.len()),
        })?;
        stored.insert(key_time(kb), decode_tally(dbs.rollups, v)?);
    }
    if stored != expected_tallies {
        let wrong = expected_tallies
            .iter()
            .filter(|(b, t)| stored.get(b) != Some(t))
            .chain(
                stored
                    .iter()
                    .filter(|(b, _)| !expected_tallies.contains_key(b)),
            )
            .count();
        let first = expected_tallies
            .iter()
            .find(|(b, t)| stored.get(b) != Some(t))
            .map(|(b, _)| *b)
            .or_else(|| {
                stored
                    .keys()
                    .find(|b| !expected_tallies.contains_key(b))
                    .copied()
            });
        problems.push(format!(
            "rollups: {wrong} quarter hours differ from a recount of the events{}",
            first
                .map(|b| format!(" (first: {})", crate::timestamp::format_ms(b * BUCKET_MS)))
                .unwrap_or_default()
        ));
    }
    Ok(indexed)
}

/// Builds the call index and rollups of a store written before they existed, in chunks
/// (each chunk one write transaction); the rollups are written whole at the end, so an
/// interrupted build simply runs again.
pub(super) fn build(env: &lmdb::Environment, dbs: super::Dbs, chunk: usize) -> Result<u64> {
    let mut tallies: BTreeMap<i64, Tally> = BTreeMap::new();
    let mut from = 0u64;
    let mut indexed = 0u64;
    let mut scratch = Vec::new();
    loop {
        let mut txn = env.begin_rw_txn()?;
        let mut entries = Vec::new();
        let mut last = None;
        for item in super::walk::Walk::forward(&txn, dbs.events, from)?.take(chunk) {
            let (seq, v) = item?;
            last = Some(seq);
            let rec = decode_at(seq, v)?;
            if let Some(f) = Facts::of(rec.kind, rec.format, rec.body) {
                entries.push((seq, f.index_ms(rec.stored_at_ms), f));
            }
        }
        for (seq, at, f) in &entries {
            let archived = f.kind == Kind::Recording
                && holds_file(
                    super::archive::record_in(&txn, dbs.archive, dbs.archive_open, *seq)?.as_ref(),
                );
            tallies
                .entry(bucket_of(*at))
                .or_default()
                .add(&Tally::of(f, archived));
            scratch.clear();
            f.encode(&mut scratch);
            txn.put(
                dbs.calltime.handle,
                &call_key(*at, *seq),
                &scratch,
                WriteFlags::empty(),
            )?;
        }
        indexed += entries.len() as u64;
        txn.commit()?;
        match last {
            Some(seq) => from = seq + 1,
            None => break,
        }
    }
    let mut txn = env.begin_rw_txn()?;
    txn.clear_db(dbs.rollups.handle)?;
    for (bucket, t) in &tallies {
        txn.put(
            dbs.rollups.handle,
            &time_key(*bucket),
            &t.encode(),
            WriteFlags::empty(),
        )?;
    }
    txn.commit()?;
    Ok(indexed)
}
