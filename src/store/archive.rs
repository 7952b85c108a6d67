//! The archive's state in the store: in `archive_open` the recording events whose download is
//! still to be tried, with when (the archiver's work list: a backlog of any length costs the
//! archiver no memory), and in `archive` the [`ArchiveRecord`] of every recording tried at
//! least once. A recording on the work list without a record is `pending`, never tried: the
//! commit that stores a recording writes only its 8-byte work-list entry, the least the ingest
//! path can add.
//!
//! Both are keyed by the event's sequence number and written by the writer thread (new
//! recordings in the batch that stores them, outcomes sent by the archiver) or by `didgate
//! recordings retry`; retention deletes them with their event.

use lmdb::WriteFlags;

use super::layout::{Table, decode_at, del_if_present, get, seq_key};
use super::walk::{Page, Walk};
use super::{Error, Result, Store, WriteTxn};
use crate::archive::record::ArchiveRecord;

/// A recording with what the archiver or a listing needs of its event.
#[derive(Clone, Debug)]
pub struct DueRecording {
    /// The event's sequence number.
    pub seq: u64,
    /// When the event was stored.
    pub stored_at_ms: i64,
    /// The webhook body (it holds `recording_url` and `callid`).
    pub body: Vec<u8>,
    /// Its archive state now.
    pub record: ArchiveRecord,
}

/// One pass over the work list.
#[derive(Debug, Default)]
pub struct DueScan {
    /// Recordings due now, oldest event first.
    pub due: Vec<DueRecording>,
    /// The earliest time a recording looked at but not taken becomes due.
    pub next_due_ms: Option<i64>,
    /// Where the next scan continues; `None`: this one reached the end.
    pub next: Option<u64>,
}

fn decode(seq: u64, v: &[u8]) -> Result<ArchiveRecord> {
    ArchiveRecord::decode(v).map_err(|what| Error::Corrupt {
        db: "archive",
        what: format!("the record of event {seq} does not decode: {what}"),
    })
}

fn due_value(seq: u64, v: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| Error::Corrupt {
        db: "archive_open",
        what: format!("the due time of event {seq} has {} bytes", v.len()),
    })?;
    Ok(i64::from_be_bytes(bytes))
}

/// The archive state of `seq` inside any transaction: its record, else `pending` when it is
/// on the work list, else none.
pub(super) fn record_in(
    txn: &impl lmdb::Transaction,
    archive: Table,
    open: Table,
    seq: u64,
) -> Result<Option<ArchiveRecord>> {
    let key = seq_key(seq);
    if let Some(v) = get(txn, archive, &key)? {
        return Ok(Some(decode(seq, v)?));
    }
    match get(txn, open, &key)? {
        Some(v) => {
            let due = due_value(seq, v)?;
            Ok(Some(ArchiveRecord::pending(due)))
        }
        None => Ok(None),
    }
}

/// On the upgrade to schema 3: puts the recordings stored within the last seven days (a
/// pre-signed URL lives at most that long) on the work list, so the archive also covers what
/// arrived just before the upgrade. Returns how many.
///
/// # Errors
/// LMDB errors, or damage.
pub(super) fn queue_recent(
    txn: &mut lmdb::RwTransaction<'_>,
    dbs: super::Dbs,
    now_ms: i64,
) -> Result<u64> {
    let since = now_ms.saturating_sub(crate::archive::url::MAX_URL_LIFE_MS);
    let mut found = Vec::new();
    for item in Walk::backward(txn, dbs.events, None)? {
        let (seq, v) = item?;
        let rec = decode_at(seq, v)?;
        if rec.stored_at_ms < since {
            break;
        }
        if rec.kind == crate::event::Hook::Recording.name() {
            found.push(seq);
        }
    }
    for seq in &found {
        let key = seq_key(*seq);
        txn.put(
            dbs.archive_open.handle,
            &key,
            &now_ms.to_be_bytes(),
            WriteFlags::empty(),
        )?;
    }
    Ok(found.len() as u64)
}

impl WriteTxn<'_> {
    /// Puts a just stored recording on the work list, due at `due_ms` (its state is
    /// `pending` until a download is tried).
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn queue_archive(&mut self, seq: u64, due_ms: i64) -> Result<()> {
        let dbs = self.dbs;
        self.txn.put(
            dbs.archive_open.handle,
            &seq_key(seq),
            &due_ms.to_be_bytes(),
            WriteFlags::empty(),
        )?;
        Ok(())
    }

    /// Sets an event's archive state, and keeps it on the work list while a try is scheduled.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn put_archive(&mut self, seq: u64, record: &ArchiveRecord) -> Result<()> {
        let key = seq_key(seq);
        let dbs = self.dbs;
        let old = record_in(&self.txn, dbs.archive, dbs.archive_open, seq)?;
        self.archive_changed(
            seq,
            super::calls::holds_file(old.as_ref()),
            super::calls::holds_file(Some(record)),
        )?;
        self.txn.put(
            dbs.archive.handle,
            &key,
            &record.encode(),
            WriteFlags::empty(),
        )?;
        match record.next_try_ms {
            Some(due) => self.txn.put(
                dbs.archive_open.handle,
                &key,
                &due.to_be_bytes(),
                WriteFlags::empty(),
            )?,
            None => del_if_present(&mut self.txn, dbs.archive_open, &key)?,
        }
        Ok(())
    }

    /// Whether event `seq` is still stored (retention may have deleted it meanwhile).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn has_event(&self, seq: u64) -> Result<bool> {
        Ok(get(&self.txn, self.dbs.events, &seq_key(seq))?.is_some())
    }

    /// Deletes an event's archive state; returns it (its file is the caller's to remove
    /// once the transaction is committed).
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn delete_archive(&mut self, seq: u64) -> Result<Option<ArchiveRecord>> {
        let dbs = self.dbs;
        let old = record_in(&self.txn, dbs.archive, dbs.archive_open, seq)?;
        if old.is_some() {
            let key = seq_key(seq);
            del_if_present(&mut self.txn, dbs.archive, &key)?;
            del_if_present(&mut self.txn, dbs.archive_open, &key)?;
        }
        Ok(old)
    }

    /// The archive state of event `seq`.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn archive_record(&self, seq: u64) -> Result<Option<ArchiveRecord>> {
        record_in(&self.txn, self.dbs.archive, self.dbs.archive_open, seq)
    }
}

impl Store {
    /// Looks at up to `budget` entries of the work list from `from`, and returns those due
    /// at `now_ms` (at most `want`, skipping those `busy` says are already being fetched) with
    /// their events. One short read transaction.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn archive_due(
        &self,
        from: u64,
        now_ms: i64,
        want: usize,
        budget: usize,
        busy: impl Fn(u64) -> bool,
    ) -> Result<DueScan> {
        let txn = self.read_txn()?;
        let mut scan = DueScan::default();
        for (looked, item) in Walk::forward(&txn, self.dbs.archive_open, from)?.enumerate() {
            let (seq, v) = item?;
            if looked == budget || scan.due.len() == want {
                scan.next = Some(seq);
                break;
            }
            let due = due_value(seq, v)?;
            if busy(seq) {
                continue;
            }
            if due > now_ms {
                scan.next_due_ms = Some(scan.next_due_ms.map_or(due, |d: i64| d.min(due)));
                continue;
            }
            let Some(ev) = get(&txn, self.dbs.events, &seq_key(seq))? else {
                continue;
            };
            let rec = decode_at(seq, ev)?;
            let record = match get(&txn, self.dbs.archive, &seq_key(seq))? {
                Some(r) => decode(seq, r)?,
                None => ArchiveRecord::pending(due),
            };
            scan.due.push(DueRecording {
                seq,
                stored_at_ms: rec.stored_at_ms,
                body: rec.body.to_vec(),
                record,
            });
        }
        Ok(scan)
    }

    /// How many recordings are on the work list (LMDB's count of the database's entries).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn archive_backlog(&self) -> Result<u64> {
        use lmdb::Transaction;
        let txn = self.read_txn()?;
        Ok(txn.stat(self.dbs.archive_open.handle)?.entries() as u64)
    }

    /// When the oldest event on the work list was stored (one lookup).
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn archive_oldest(&self) -> Result<Option<i64>> {
        let txn = self.read_txn()?;
        let Some(first) = Walk::forward(&txn, self.dbs.archive_open, 0)?.next() else {
            return Ok(None);
        };
        let (seq, _) = first?;
        match get(&txn, self.dbs.events, &seq_key(seq))? {
            Some(v) => Ok(Some(decode_at(seq, v)?.stored_at_ms)),
            None => Ok(None),
        }
    }

    /// The archive state of event `seq`.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn archive_record(&self, seq: u64) -> Result<Option<ArchiveRecord>> {
        let txn = self.read_txn()?;
        record_in(&txn, self.dbs.archive, self.dbs.archive_open, seq)
    }

    /// A page of every recording's state (records, and the never-tried `pending` ones of the
    /// work list) with `seq >= from`, ascending, each with its event, keeping those `keep`
    /// accepts; at most `budget` entries of each database looked at.
    ///
    /// # Errors
    /// LMDB errors, or damage.
    pub fn archive_entries(
        &self,
        from: u64,
        budget: usize,
        mut keep: impl FnMut(u64, &ArchiveRecord) -> bool,
    ) -> Result<Page<DueRecording>> {
        let txn = self.read_txn()?;
        // Both databases, merged by key (a key in both is the record's). Where a walk stopped
        // at its budget, the page ends at its last key: beyond it the other walk alone would
        // skip entries.
        let mut merged = std::collections::BTreeMap::new();
        let mut end: Option<u64> = None;
        for (table, is_record) in [(self.dbs.archive, true), (self.dbs.archive_open, false)] {
            let mut looked = 0;
            let mut last = None;
            for item in Walk::forward(&txn, table, from)?.take(budget) {
                let (seq, v) = item?;
                looked += 1;
                last = Some(seq);
                let record = if is_record {
                    decode(seq, v)?
                } else {
                    ArchiveRecord::pending(due_value(seq, v)?)
                };
                merged.entry(seq).or_insert(record);
            }
            if looked == budget
                && let Some(l) = last
            {
                end = Some(end.map_or(l, |e| e.min(l)));
            }
        }
        let mut items = Vec::new();
        for (seq, record) in merged {
            if end.is_some_and(|e| seq > e) {
                break;
            }
            if !keep(seq, &record) {
                continue;
            }
            let Some(ev) = get(&txn, self.dbs.events, &seq_key(seq))? else {
                continue;
            };
            let rec = decode_at(seq, ev)?;
            items.push(DueRecording {
                seq,
                stored_at_ms: rec.stored_at_ms,
                body: rec.body.to_vec(),
                record,
            });
        }
        Ok(Page {
            items,
            next: end.map(|e| e + 1),
        })
    }

    /// A page of archive records with `seq >= from`, ascending, at most `budget` looked at,
    /// keeping those `keep` accepts (records only: recordings never tried have none).
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn archive_page(
        &self,
        from: u64,
        budget: usize,
        mut keep: impl FnMut(u64, &ArchiveRecord) -> bool,
    ) -> Result<Page<(u64, ArchiveRecord)>> {
        let txn = self.read_txn()?;
        Page::collect(
            Walk::forward(&txn, self.dbs.archive, from)?,
            budget,
            |seq, v| {
                let r = decode(seq, v)?;
                Ok(keep(seq, &r).then_some((seq, r)))
            },
        )
    }
}
