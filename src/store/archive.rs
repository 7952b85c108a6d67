//! The archive's state in the store: one [`ArchiveRecord`] per recording event in `archive`,
//! and in `archive_open` the events whose download is still to be tried, with when (the
//! archiver's work list: a backlog of any length costs the archiver no memory).
//!
//! Both are keyed by the event's sequence number and written by the writer thread (new
//! recordings in the batch that stores them, outcomes sent by the archiver) or by `didgate
//! recordings retry`; retention deletes them with their event.

use lmdb::WriteFlags;

use super::layout::{decode_at, del_if_present, get, seq_key};
use super::walk::{Page, Walk};
use super::{Error, Result, Store, WriteTxn};
use crate::archive::record::ArchiveRecord;

/// A recording due for a download, with what the archiver needs of its event.
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
    let record = ArchiveRecord::pending(now_ms);
    for seq in &found {
        let key = seq_key(*seq);
        txn.put(
            dbs.archive.handle,
            &key,
            &record.encode(),
            WriteFlags::empty(),
        )?;
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
    /// Sets an event's archive state, and keeps it on the work list while a try is scheduled.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn put_archive(&mut self, seq: u64, record: &ArchiveRecord) -> Result<()> {
        let key = seq_key(seq);
        let dbs = self.dbs;
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
        let key = seq_key(seq);
        let dbs = self.dbs;
        let old = match get(&self.txn, dbs.archive, &key)? {
            Some(v) => Some(decode(seq, v)?),
            None => None,
        };
        if old.is_some() {
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
        match get(&self.txn, self.dbs.archive, &seq_key(seq))? {
            Some(v) => Ok(Some(decode(seq, v)?)),
            None => Ok(None),
        }
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
            let Some(record) = get(&txn, self.dbs.archive, &seq_key(seq))? else {
                continue;
            };
            scan.due.push(DueRecording {
                seq,
                stored_at_ms: rec.stored_at_ms,
                body: rec.body.to_vec(),
                record: decode(seq, record)?,
            });
        }
        Ok(scan)
    }

    /// How many recordings are on the work list, and when the oldest of their events was
    /// stored.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn archive_backlog(&self) -> Result<(u64, Option<i64>)> {
        let txn = self.read_txn()?;
        let mut count = 0u64;
        let mut first = None;
        for item in Walk::forward(&txn, self.dbs.archive_open, 0)? {
            let (seq, _) = item?;
            first.get_or_insert(seq);
            count += 1;
        }
        let oldest = match first {
            Some(seq) => match get(&txn, self.dbs.events, &seq_key(seq))? {
                Some(v) => Some(decode_at(seq, v)?.stored_at_ms),
                None => None,
            },
            None => None,
        };
        Ok((count, oldest))
    }

    /// The archive state of event `seq`.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn archive_record(&self, seq: u64) -> Result<Option<ArchiveRecord>> {
        let txn = self.read_txn()?;
        match get(&txn, self.dbs.archive, &seq_key(seq))? {
            Some(v) => Ok(Some(decode(seq, v)?)),
            None => Ok(None),
        }
    }

    /// Like [`Store::archive_page`], each record with its event (`stored_at_ms`, body) as a
    /// [`DueRecording`]; records whose event is gone are left out.
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
        let events = self.dbs.events;
        Page::collect(
            Walk::forward(&txn, self.dbs.archive, from)?,
            budget,
            |seq, v| {
                let record = decode(seq, v)?;
                if !keep(seq, &record) {
                    return Ok(None);
                }
                let Some(ev) = get(&txn, events, &seq_key(seq))? else {
                    return Ok(None);
                };
                let rec = decode_at(seq, ev)?;
                Ok(Some(DueRecording {
                    seq,
                    stored_at_ms: rec.stored_at_ms,
                    body: rec.body.to_vec(),
                    record,
                }))
            },
        )
    }

    /// A page of archive records with `seq >= from`, ascending, at most `budget` looked at,
    /// keeping those `keep` accepts.
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
