//! The schema: which databases exist, how their keys and values are laid out, and the typed
//! decoding of each value, so a damaged byte is reported as such and never read as 0.
//!
//! Owns every byte layout of the store except the event record itself (`event.rs`). The same
//! layout is documented for outside readers in `docs/storage.md` (schema [`SCHEMA_VERSION`]).
//!
//! | database     | key                                   | value                          |
//! |--------------|---------------------------------------|--------------------------------|
//! | `events`     | seq u64 BE                            | record (`event.rs`)            |
//! | `digests`    | seq u64 BE                            | body hash u64 BE [, callid hash u32 BE] |
//! | `callblocks` | block u64 BE (seq / 1024)             | sorted u64 BE: callid hash << 32 \| seq % 1024 |
//! | `quarantine` | seq u64 BE (own sequence)             | reason len u16 BE, reason, record |
//! | `counts`     | `events/K`, `day/YYYY-MM-DD/K`, `duplicates/K` | u64 BE                |
//! | `meta`       | `schema_version`, `next_seq`, `next_qseq` | u32 BE, u64 BE, u64 BE     |
//! | `archive`    | seq u64 BE (a recording event's)      | archive record (JSON, `archive/record.rs`) |
//! | `archive_open` | seq u64 BE                          | next try, ms since the epoch, i64 BE |
//! | `cursors`    | consumer name (UTF-8)                 | cursor (JSON, `store/consumer.rs`) |
//! | `forward`    | destination name                      | destination state (JSON)       |
//! | `forward_retry` | destination name, 0x00, seq u64 BE | retry state (JSON)             |
//! | `forward_dead` | destination name, 0x00, seq u64 BE  | dead letter (JSON)             |
//! | `calltime`   | call time ms i64 BE (sign bit flipped), seq u64 BE | call facts (`call/facts.rs`) |
//! | `rollups`    | quarter hour i64 BE (sign bit flipped) | tally (`call/tally.rs`)       |
//!
//! Every database the writer adds to per event is keyed by the sequence number, so a commit
//! appends at the right edge of each tree and writes a handful of pages, not one random page
//! per event and index. Recognising retries uses the writer's in-memory table, rebuilt from
//! `digests`; finding a call uses `callblocks`, one sorted record per [`CALL_BLOCK`] events
//! written once the block is complete, plus the `digests` of the events after the last
//! complete block.

use lmdb::{Database, Transaction, WriteFlags};
use xxhash_rust::xxh3::xxh3_64;

use super::walk::Walk;
use super::{Error, Result};
use crate::event::{self, Record};

/// Version of the key layout and record format; stored in `meta` and checked on open.
pub const SCHEMA_VERSION: u32 = 6;

/// Events per `callblocks` record: a call lookup reads one record per block, plus the digests
/// of at most this many newer events.
pub const CALL_BLOCK: u64 = 1024;

/// Named databases in the environment (LMDB needs the count up front): the schema's 14 and
/// room for later ones (a reader of an older build opens a newer store with its own count).
pub(super) const MAX_DBS: u32 = 16;

/// `meta` key of the schema version.
pub(super) const SCHEMA_KEY: &[u8] = b"schema_version";

/// `meta` key of the next event sequence number: kept so numbers never repeat, even after
/// retention deleted the newest events.
pub(super) const NEXT_SEQ_KEY: &[u8] = b"next_seq";

/// `meta` key of the next quarantine number, kept for the same reason: `quarantine show N`
/// must never show another body after `prune` deleted the newest entries.
pub(super) const NEXT_QSEQ_KEY: &[u8] = b"next_qseq";

/// `meta` key of the call index's watermark: every event numbered below it is in `calltime`
/// and `rollups`, none at or above it. The writer files events in chunks after their commit
/// (`WriteTxn::index_calls`); readers add the events above it from their bodies.
pub(super) const INDEXED_SEQ_KEY: &[u8] = b"indexed_seq";

/// The call index's watermark (0, every event still to file, when it was never written).
pub(super) fn indexed_seq(txn: &impl Transaction, dbs: Dbs) -> Result<u64> {
    match get(txn, dbs.meta, INDEXED_SEQ_KEY)? {
        Some(v) => u64_value(dbs.meta, INDEXED_SEQ_KEY, v),
        None => Ok(0),
    }
}

/// The number the next quarantined body gets: one past the highest ever given, or one past
/// the highest stored.
pub(super) fn next_qseq(txn: &impl Transaction, dbs: Dbs) -> Result<u64> {
    let kept = match get(txn, dbs.meta, NEXT_QSEQ_KEY)? {
        Some(v) => u64_value(dbs.meta, NEXT_QSEQ_KEY, v)?,
        None => 1,
    };
    Ok(kept.max(last_key(txn, dbs.quarantine)?.map_or(1, |k| k + 1)))
}

/// One named database: its handle and its name, for error messages.
#[derive(Clone, Copy, Debug)]
pub(super) struct Table {
    pub handle: Database,
    pub name: &'static str,
}

/// The databases of schema 5 (4 had no `calltime` and `rollups`; 3 had no `cursors` and
/// `forward*`; 2 had no `archive*`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dbs {
    pub events: Table,
    pub digests: Table,
    pub callblocks: Table,
    pub quarantine: Table,
    pub counts: Table,
    pub meta: Table,
    pub archive: Table,
    pub archive_open: Table,
    pub cursors: Table,
    pub forward: Table,
    pub forward_retry: Table,
    pub forward_dead: Table,
    pub calltime: Table,
    pub rollups: Table,
}

impl Dbs {
    /// Opens every database, with `open` creating or only opening each one.
    pub fn open_with(mut open: impl FnMut(&'static str) -> Result<Database>) -> Result<Dbs> {
        let mut table = |name| {
            Ok::<_, Error>(Table {
                handle: open(name)?,
                name,
            })
        };
        Ok(Dbs {
            events: table("events")?,
            digests: table("digests")?,
            callblocks: table("callblocks")?,
            quarantine: table("quarantine")?,
            counts: table("counts")?,
            meta: table("meta")?,
            archive: table("archive")?,
            archive_open: table("archive_open")?,
            cursors: table("cursors")?,
            forward: table("forward")?,
            forward_retry: table("forward_retry")?,
            forward_dead: table("forward_dead")?,
            calltime: table("calltime")?,
            rollups: table("rollups")?,
        })
    }
}

/// The key of sequence number `seq`.
pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number a key holds; any other length is damage, reported with the database.
pub(super) fn key_seq(table: Table, k: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| Error::Corrupt {
        db: table.name,
        what: format!("a key of {} bytes where 8 were written", k.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// A u64 value (counters, `next_seq`); any other length is damage.
pub(super) fn u64_value(table: Table, key: &[u8], v: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| Error::Corrupt {
        db: table.name,
        what: format!(
            "value of {:?} has {} bytes where 8 were written",
            String::from_utf8_lossy(key),
            v.len()
        ),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The stored schema version.
pub(super) fn schema_of(meta: Table, v: &[u8]) -> Result<u32> {
    let bytes: [u8; 4] = v.try_into().map_err(|_| Error::Corrupt {
        db: meta.name,
        what: format!("schema_version has {} bytes where 4 were written", v.len()),
    })?;
    Ok(u32::from_be_bytes(bytes))
}

pub(super) fn put_schema_version(txn: &mut lmdb::RwTransaction<'_>, dbs: Dbs) -> Result<()> {
    let version = SCHEMA_VERSION.to_be_bytes();
    Ok(txn.put(dbs.meta.handle, &SCHEMA_KEY, &version, WriteFlags::empty())?)
}

/// A value by sequence key; `None` when absent.
pub(super) fn get_seq(txn: &impl Transaction, table: Table, seq: u64) -> Result<Option<&[u8]>> {
    get(txn, table, &seq_key(seq))
}

/// A value by key; `None` when absent.
pub(super) fn get<'t>(
    txn: &'t impl Transaction,
    table: Table,
    key: &[u8],
) -> Result<Option<&'t [u8]>> {
    match txn.get(table.handle, &key) {
        Ok(v) => Ok(Some(v)),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn del_if_present(
    txn: &mut lmdb::RwTransaction<'_>,
    table: Table,
    key: &[u8],
) -> Result<()> {
    match txn.del(table.handle, &key, None) {
        Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The hash of a body that the dedup table and `digests` hold (xxh3, 64 bits).
pub fn body_hash(body: &[u8]) -> u64 {
    xxh3_64(body)
}

/// The 32-bit hash of a callid that `digests` and `callblocks` hold.
pub fn callid_hash(callid: &str) -> u32 {
    (xxh3_64(callid.as_bytes()) >> 32) as u32
}

/// One `digests` value: the body's hash and, when the event has a callid, its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Digest {
    pub body: u64,
    pub callid: Option<u32>,
}

impl Digest {
    /// 8 or 12 bytes.
    pub fn encode(&self) -> ([u8; 12], usize) {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.body.to_be_bytes());
        match self.callid {
            Some(c) => {
                out[8..].copy_from_slice(&c.to_be_bytes());
                (out, 12)
            }
            None => (out, 8),
        }
    }

    pub fn decode(seq: u64, v: &[u8]) -> Result<Digest> {
        let corrupt = || Error::Corrupt {
            db: "digests",
            what: format!(
                "digest {seq} has {} bytes where 8 or 12 were written",
                v.len()
            ),
        };
        let body = v.get(..8).ok_or_else(corrupt)?;
        let body = u64::from_be_bytes(body.try_into().map_err(|_| corrupt())?);
        let callid = match v.len() {
            8 => None,
            12 => Some(u32::from_be_bytes(
                v[8..12].try_into().map_err(|_| corrupt())?,
            )),
            _ => return Err(corrupt()),
        };
        Ok(Digest { body, callid })
    }
}

/// The offsets within a call block whose callid hash is `hash`, ascending. Entries are sorted
/// big-endian u64s, so this is a binary search for the first, then a walk. A block whose
/// length is not a multiple of 8 is reported by `check`; here its tail is ignored.
pub(super) fn block_matches(entries: &[u8], hash: u32) -> impl Iterator<Item = u64> + '_ {
    let n = entries.len() / 8;
    let at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&entries[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    let want = u64::from(hash) << 32;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid) < want {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo..n)
        .map(at)
        .take_while(move |e| e >> 32 == u64::from(hash))
        .map(|e| e & 0xFFFF_FFFF)
}

/// Writes the call block `block` from the digests of its events (which must all be written).
pub(super) fn write_call_block(
    txn: &mut lmdb::RwTransaction<'_>,
    dbs: Dbs,
    block: u64,
) -> Result<()> {
    let start = block * CALL_BLOCK;
    let mut entries = Vec::new();
    for item in Walk::forward(txn, dbs.digests, start)? {
        let (seq, v) = item?;
        if seq >= start + CALL_BLOCK {
            break;
        }
        if let Some(hash) = Digest::decode(seq, v)?.callid {
            entries.push((u64::from(hash) << 32) | (seq - start));
        }
    }
    entries.sort_unstable();
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    txn.put(
        dbs.callblocks.handle,
        &seq_key(block),
        &bytes,
        WriteFlags::empty(),
    )?;
    Ok(())
}

/// The sequence number the next event gets: one past the highest ever given (kept in `meta`,
/// since retention may have deleted the newest events), or one past the highest stored.
pub(super) fn next_seq(txn: &impl Transaction, dbs: Dbs) -> Result<u64> {
    let kept = match get(txn, dbs.meta, NEXT_SEQ_KEY)? {
        Some(v) => u64_value(dbs.meta, NEXT_SEQ_KEY, v)?,
        None => 1,
    };
    Ok(kept.max(last_key(txn, dbs.events)?.map_or(1, |k| k + 1)))
}

/// The highest key of a sequence-keyed database.
pub(super) fn last_key(txn: &impl Transaction, table: Table) -> Result<Option<u64>> {
    match Walk::backward(txn, table, None)?.next() {
        Some(item) => Ok(Some(item?.0)),
        None => Ok(None),
    }
}

/// A record, with the sequence number it was found under in the error.
pub(super) fn decode_at(seq: u64, v: &[u8]) -> Result<Record<'_>> {
    event::decode_record(v).map_err(|err| Error::Record { seq, err })
}

/// The counter keys of the `counts` database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CounterKey<'a> {
    /// Stored events of a kind: `events/K`.
    Events(&'a str),
    /// Stored events of a kind on a UTC day: `day/YYYY-MM-DD/K`.
    Day(&'a str, &'a str),
    /// Recognised duplicates of a kind: `duplicates/K`.
    Duplicates(&'a str),
}

impl<'a> CounterKey<'a> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            CounterKey::Events(k) => format!("events/{k}"),
            CounterKey::Day(d, k) => format!("day/{d}/{k}"),
            CounterKey::Duplicates(k) => format!("duplicates/{k}"),
        }
        .into_bytes()
    }

    pub fn decode(key: &'a [u8]) -> Result<CounterKey<'a>> {
        let corrupt = || Error::Corrupt {
            db: "counts",
            what: format!("unknown counter key {:?}", String::from_utf8_lossy(key)),
        };
        let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
        if let Some(kind) = key.strip_prefix("events/") {
            Ok(CounterKey::Events(kind))
        } else if let Some(kind) = key.strip_prefix("duplicates/") {
            Ok(CounterKey::Duplicates(kind))
        } else if let Some((day, kind)) = key.strip_prefix("day/").and_then(|r| r.split_once('/')) {
            Ok(CounterKey::Day(day, kind))
        } else {
            Err(corrupt())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_counter_keys_round_trip_and_damage_is_an_error() {
        for d in [
            Digest {
                body: 7,
                callid: None,
            },
            Digest {
                body: u64::MAX,
                callid: Some(3),
            },
        ] {
            let (bytes, len) = d.encode();
            assert_eq!(Digest::decode(1, &bytes[..len]).unwrap(), d);
        }
        for bad in [&b""[..], b"1234567", b"123456789", b"1234567890123"] {
            assert!(
                matches!(Digest::decode(1, bad), Err(Error::Corrupt { .. })),
                "{bad:?}"
            );
        }
        for k in [
            CounterKey::Events("cdr"),
            CounterKey::Day("2026-05-12", "sms"),
            CounterKey::Duplicates("recording"),
        ] {
            assert_eq!(CounterKey::decode(&k.encode()).unwrap(), k);
        }
        assert!(CounterKey::decode(b"bogus").is_err());
        assert!(CounterKey::decode(b"day/no-kind").is_err());
    }
}
