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

use std::collections::VecDeque;

use super::layout::{
    INDEXED_SEQ_KEY, Table, decode_at, del_if_present, get, get_seq, indexed_seq, next_seq, seq_key,
};
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

/// Facts the writer already has of an event it committed, to file it without decoding its
/// body again.
#[derive(Debug)]
pub struct KnownFacts {
    /// The event's sequence number.
    pub seq: u64,
    /// When it was stored, ms.
    pub stored_at_ms: i64,
    /// What its body says (`None`: nothing to file).
    pub facts: Option<Facts>,
}

/// The events a read transaction found above the call index's watermark, decoded from their
/// bodies and sorted as the index is, so a query sees every event it stored. The writer files
/// them within a moment of ingest going idle, or as soon as a chunk's worth is waiting: this
/// is a few thousand events at most.
#[derive(Debug)]
pub struct Unfiled {
    /// The watermark: entries of the index at or above it are newer than this snapshot.
    below: u64,
    entries: Vec<(CallEntry, bool)>,
}

impl Unfiled {
    fn read(txn: &impl Transaction, dbs: super::Dbs) -> Result<Unfiled> {
        let below = indexed_seq(txn, dbs)?;
        let mut entries = Vec::new();
        for item in super::walk::Walk::forward(txn, dbs.events, below)? {
            let (seq, v) = item?;
            let rec = decode_at(seq, v)?;
            let Some(facts) = Facts::of(rec.kind, rec.format, rec.body) else {
                continue;
            };
            let archived = recording_kept(txn, dbs, seq, &facts)?;
            let at_ms = facts.index_ms(rec.stored_at_ms);
            entries.push((CallEntry { at_ms, seq, facts }, archived));
        }
        entries.sort_unstable_by_key(|(e, _)| (e.at_ms, e.seq));
        Ok(Unfiled { below, entries })
    }

    /// How many events the snapshot found unfiled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every event of the snapshot was filed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

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
    r.is_some_and(|r| r.state.holds_file())
}

/// Whether `facts` are a recording's whose archive state holds its file (what the rollups'
/// `archived` counts).
fn recording_kept(
    txn: &impl Transaction,
    dbs: super::Dbs,
    seq: u64,
    facts: &Facts,
) -> Result<bool> {
    Ok(facts.kind == Kind::Recording
        && holds_file(super::archive::record_in(txn, dbs.archive, dbs.archive_open, seq)?.as_ref()))
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
        let archived = recording_kept(txn, dbs, e.seq, &e.facts)?;
        t.add(&Tally::of(&e.facts, archived));
        Ok(true)
    })?;
    Ok(t)
}

impl WriteTxn<'_> {
    fn pending(&mut self, at_ms: i64) -> &mut Pending {
        self.rollups.entry(bucket_of(at_ms)).or_default()
    }

    /// Files events in the call index and their quarter hours' rollups, from the watermark
    /// on, at most `max`, and moves the watermark past them; returns how many events are left
    /// to file. `known` holds the facts the connections read from the bodies of events the
    /// writer committed (sequence number, stored time, facts), oldest first: those are used
    /// as they are, and any other event is decoded from its stored body.
    ///
    /// A separate transaction from the batch's: an ingest commit writes no more pages than
    /// it did before the index existed, and a chunk fills the index's pages densely.
    ///
    /// # Errors
    /// LMDB errors, or a damaged event; the whole transaction must then be dropped.
    pub fn index_calls(&mut self, known: &mut VecDeque<KnownFacts>, max: usize) -> Result<u64> {
        let dbs = self.dbs;
        let mut filed = Vec::new();
        let mut next = self.indexed;
        let mut walked = 0usize;
        for item in super::walk::Walk::forward(&self.txn, dbs.events, self.indexed)? {
            let (seq, v) = item?;
            if walked == max {
                break;
            }
            walked += 1;
            next = seq + 1;
            while known.front().is_some_and(|k| k.seq < seq) {
                known.pop_front();
            }
            let (stored_at, facts) = match known.front() {
                Some(k) if k.seq == seq => match known.pop_front() {
                    Some(k) => (k.stored_at_ms, k.facts),
                    None => continue,
                },
                _ => {
                    let rec = decode_at(seq, v)?;
                    (rec.stored_at_ms, Facts::of(rec.kind, rec.format, rec.body))
                }
            };
            if let Some(f) = facts {
                filed.push((seq, f.index_ms(stored_at), f));
            }
        }
        if walked < max {
            // The walk reached the newest event.
            next = self.next_event;
        }
        for (seq, at, facts) in &filed {
            let archived = recording_kept(&self.txn, dbs, *seq, facts)?;
            self.scratch.clear();
            facts.encode(&mut self.scratch);
            self.txn.put(
                dbs.calltime.handle,
                &call_key(*at, *seq),
                &self.scratch,
                WriteFlags::empty(),
            )?;
            let t = Tally::of(facts, archived);
            self.pending(*at).add.add(&t);
        }
        if next != self.indexed {
            self.indexed = next;
            self.txn.put(
                dbs.meta.handle,
                &INDEXED_SEQ_KEY,
                &next.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        Ok(self.next_event.saturating_sub(next))
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
        if seq >= self.indexed {
            return Ok(());
        }
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
        if was == is || seq >= self.indexed {
            // Not filed yet: filing reads the archive state then.
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
    /// How many events wait to be filed in the call index (above its watermark).
    ///
    /// # Errors
    /// LMDB errors, or damaged `meta` values.
    pub fn call_index_lag(&self) -> Result<u64> {
        let txn = self.read_txn()?;
        Ok(next_seq(&txn, self.dbs)?.saturating_sub(indexed_seq(&txn, self.dbs)?.max(1)))
    }

    /// The events not filed in the call index yet, to pass to [`Store::calls_page`]: one
    /// read transaction, taken once per query.
    ///
    /// # Errors
    /// LMDB errors, or a damaged event.
    pub fn unfiled(&self) -> Result<Unfiled> {
        let txn = self.read_txn()?;
        Unfiled::read(&txn, self.dbs)
    }

    /// Up to `max` calls, recordings and SMS from `from` (a time and sequence number,
    /// included) to `until_ms` (excluded), in call-time order, and where the next page
    /// starts: the index's entries merged with `unfiled`'s, as of the snapshot `unfiled` was
    /// read in. One short read transaction.
    ///
    /// # Errors
    /// LMDB errors, or a damaged entry.
    pub fn calls_page(
        &self,
        unfiled: &Unfiled,
        from: (i64, u64),
        until_ms: i64,
        max: usize,
    ) -> Result<CallsPage> {
        let txn = self.read_txn()?;
        let mut filed = Vec::new();
        walk_calls(
            &txn,
            self.dbs.calltime,
            &call_key(from.0, from.1),
            until_ms,
            |e| {
                if e.seq >= unfiled.below {
                    // Filed since the snapshot: `unfiled` has it, or it is newer.
                    return Ok(true);
                }
                filed.push(e);
                Ok(filed.len() <= max)
            },
        )?;
        let start = unfiled
            .entries
            .partition_point(|(e, _)| (e.at_ms, e.seq) < from);
        let mut rest = unfiled.entries[start..]
            .iter()
            .map(|(e, _)| e)
            .take_while(|e| e.at_ms < until_ms)
            .peekable();
        if rest.peek().is_none() {
            let next = (filed.len() > max).then(|| (filed[max].at_ms, filed[max].seq));
            filed.truncate(max);
            return Ok((filed, next));
        }
        let mut out = Vec::with_capacity(filed.len().min(max + 1));
        let mut filed = filed.into_iter().peekable();
        while out.len() <= max {
            let take_filed = match (filed.peek(), rest.peek()) {
                (Some(f), Some(u)) => (f.at_ms, f.seq) < (u.at_ms, u.seq),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            match if take_filed {
                filed.next()
            } else {
                rest.next().cloned()
            } {
                Some(e) => out.push(e),
                None => break,
            }
        }
        let next = (out.len() > max).then(|| (out[max].at_ms, out[max].seq));
        out.truncate(max);
        Ok((out, next))
    }

    /// The rollups of the quarter hours from `from_bucket` to `until_bucket` (excluded), with
    /// the events not filed yet added in. One read transaction: a year is 35,040 small
    /// values.
    ///
    /// # Errors
    /// LMDB errors, or a damaged rollup or event.
    pub fn rollups(&self, from_bucket: i64, until_bucket: i64) -> Result<Vec<(i64, Tally)>> {
        let txn = self.read_txn()?;
        let unfiled = Unfiled::read(&txn, self.dbs)?;
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
        if unfiled.is_empty() {
            return Ok(out);
        }
        let mut merged: BTreeMap<i64, Tally> = out.into_iter().collect();
        for (e, archived) in &unfiled.entries {
            let bucket = bucket_of(e.at_ms);
            if (from_bucket..until_bucket).contains(&bucket) {
                merged
                    .entry(bucket)
                    .or_default()
                    .add(&Tally::of(&e.facts, *archived));
            }
        }
        Ok(merged.into_iter().collect())
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
    let watermark = indexed_seq(txn, dbs)?;
    let next = next_seq(txn, dbs)?;
    if watermark > next {
        problems.push(format!(
            "meta: the call index's watermark {watermark} is past the next event {next}"
        ));
    }
    for item in super::walk::Walk::forward(txn, dbs.events, 0)? {
        let (seq, v) = item?;
        if seq >= watermark {
            // Not filed yet: readers decode it from its body.
            break;
        }
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
        let archived = recording_kept(txn, dbs, seq, &facts)?;
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
        if seq >= watermark {
            problems.push(format!(
                "calltime: an entry for event {seq}, above the watermark {watermark}"
            ));
        } else if get_seq(txn, dbs.events, seq)?.is_none() {
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
            let archived = recording_kept(&txn, dbs, *seq, f)?;
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
    let next = next_seq(&txn, dbs)?;
    txn.put(
        dbs.meta.handle,
        &INDEXED_SEQ_KEY,
        &next.to_be_bytes(),
        WriteFlags::empty(),
    )?;
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
