//! The LMDB environment: databases, key layout, the write transaction the writer uses and the
//! short read transactions the reader tool uses.
//!
//! This is the only file that touches `lmdb-rkv`, so the binding can be swapped here alone. It
//! owns keys and databases; the bytes of one record belong to `event.rs`, and batching,
//! deadlines and waking requests belong to `writer.rs`. The layout is documented for outside
//! readers in `docs/storage.md` (schema version [`SCHEMA_VERSION`]).
//!
//! | database     | key                                   | value                          |
//! |--------------|---------------------------------------|--------------------------------|
//! | `events`     | seq u64 BE                            | record (`event.rs`)            |
//! | `digests`    | seq u64 BE                            | body hash u64 BE [, callid hash u32 BE] |
//! | `callblocks` | block u64 BE (seq / 1024)             | sorted u64 BE: callid hash << 32 \| seq % 1024 |
//! | `quarantine` | seq u64 BE (own sequence)             | reason len u16 BE, reason, record |
//! | `counts`     | `events/K`, `day/YYYY-MM-DD/K`, `duplicates/K` | u64 BE                |
//! | `meta`       | `schema_version`, `next_seq`          | u32 BE, u64 BE                 |
//!
//! Every database the writer adds to per event is keyed by the sequence number, so a commit
//! appends at the right edge of each tree and writes a handful of pages, not one random page
//! per event and index (schema 1 had hash- and callid-keyed indexes; see `docs/storage.md` and
//! `docs/performance.md`). Recognising retries uses the writer's in-memory table
//! (`dedup.rs`), rebuilt from `digests`; finding a call uses `callblocks`, one sorted record per
//! [`CALL_BLOCK`] events written once the block is complete, plus the `digests` of the events
//! after the last complete block.
//!
//! # Caveats
//! LMDB allows one write transaction at a time per environment, across processes; only the
//! writer thread of `didgate serve` opens one. Read transactions pin the pages they see, so the
//! read API here opens one per call and copies what it returns: no reader holds a transaction
//! while it waits on output.

use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags,
};
use xxhash_rust::xxh3::xxh3_64;

use crate::event::{self, BodyFormat, Event, Record};
use crate::timestamp;

/// Version of the key layout and record format; stored in `meta` and checked on open.
pub const SCHEMA_VERSION: u32 = 2;

/// Events per `callblocks` record: a call lookup reads one record per block, plus the digests
/// of at most this many newer events.
pub const CALL_BLOCK: u64 = 1024;

/// Entries per write transaction when a schema-1 store is migrated.
const MIGRATION_CHUNK: usize = 50_000;

/// Named databases in the environment (LMDB needs the count up front).
const MAX_DBS: u32 = 8;

/// File mode of the LMDB files: the `didgate` group may read them with the reader tool.
const FILE_MODE: u32 = 0o640;

/// Errors of the storage layer. Every LMDB code the writer can meet is wrapped once here; the
/// writer decides the reaction (`writer.rs`), the HTTP layer only ever sees "not committed".
#[derive(Debug)]
pub enum Error {
    /// An LMDB call failed.
    Lmdb(lmdb::Error),
    /// A stored value is not a record this build can read.
    Record { seq: u64, err: event::Error },
    /// The store was written by a didgate with another schema version.
    Schema { found: u32 },
    /// The store has an older schema that `didgate serve` migrates on start.
    NeedsMigration { found: u32 },
    /// There is no store at the path (reader tool).
    Missing(PathBuf),
    /// Creating the directory failed.
    Io(std::io::Error),
}

impl From<lmdb::Error> for Error {
    fn from(e: lmdb::Error) -> Self {
        Error::Lmdb(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Lmdb(e) => write!(f, "LMDB: {e}"),
            Error::Record { seq, err } => write!(f, "event {seq}: {err}"),
            Error::Schema { found } => write!(
                f,
                "store has schema version {found}; this didgate reads version {SCHEMA_VERSION}"
            ),
            Error::NeedsMigration { found } => write!(
                f,
                "store has schema version {found}; start `didgate serve` once to migrate it to \
                 version {SCHEMA_VERSION}"
            ),
            Error::Missing(p) => write!(
                f,
                "no didgate data at {} (start `didgate serve` there first, or pass --data)",
                p.display()
            ),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// LMDB declared the environment unusable (`MDB_PANIC`): only a restart recovers.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Lmdb(lmdb::Error::Panic))
    }

    /// The map is full: more room (a bigger `map_size_bytes`) is needed.
    pub fn is_map_full(&self) -> bool {
        matches!(self, Error::Lmdb(lmdb::Error::MapFull))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone, Copy)]
struct Dbs {
    events: Database,
    digests: Database,
    callblocks: Database,
    quarantine: Database,
    counts: Database,
    meta: Database,
}

/// When commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Every commit fdatasyncs its data pages before it returns; its meta page is flushed by
    /// the next commit or [`Store::sync`] (`MDB_NOMETASYNC`), which the caller must wait for
    /// before it calls the commit durable.
    EveryCommit,
    /// Commits do not fsync; the caller calls [`Store::sync`] on its own schedule.
    Deferred,
}

/// An open environment, for the writer or for a reader.
pub struct Store {
    env: Environment,
    dbs: Dbs,
    next_event: Cell<u64>,
    next_quarantine: Cell<u64>,
    path: PathBuf,
    /// How `/proc/self/maps` names the data file (see [`Store::release_mapped_pages`]),
    /// resolved on first use.
    map_suffix: OnceCell<String>,
}

/// While [`Store::recent_digests`] walks back, the pages it mapped are released after this
/// many digests (about 100 digests pages).
const RELEASE_EVERY_DIGESTS: usize = 16_384;

/// Buffer for reading `/proc/self/maps` in [`Store::release_mapped_pages`].
const MAPS_READ_BYTES: usize = 8 * 1024;

/// How the kernel ends a `/proc/self/maps` (or `smaps`) line that maps the data file in
/// `dir`: a space, then its canonical path. The path is fixed for a store's life.
fn map_line_suffix(dir: &Path) -> std::io::Result<String> {
    let file = std::fs::canonicalize(dir.join("data.mdb"))?;
    Ok(format!(" {}", file.display()))
}

/// One event as the reader tool gets it: copied out of its read transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub stored_at_ms: i64,
    pub kind: String,
    pub format: BodyFormat,
    pub peer: Option<std::net::SocketAddr>,
    pub content_type: Vec<u8>,
    pub body: Vec<u8>,
}

/// One quarantined body with the reason it was not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub seq: u64,
    pub reason: String,
    /// The record; its `kind` is the hook the body was posted to.
    pub event: StoredEvent,
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

/// What [`Store::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub events: u64,
    pub quarantined: u64,
    /// Entries in the complete call blocks.
    pub call_entries: u64,
    /// Each inconsistency, in words; empty when the store is consistent.
    pub problems: Vec<String>,
}

/// Size figures of the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    /// The configured map size (the most the data file may grow to).
    pub map_bytes: u64,
    /// Bytes of the map in use (last page number times page size).
    pub used_bytes: u64,
    /// Size of `data.mdb` on disk.
    pub file_bytes: u64,
}

/// A slice of a scan, done in one short read transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The events kept, in scan order.
    pub events: Vec<StoredEvent>,
    /// Where to continue: forward, the next `from`; backward, the next `before`.
    pub next: u64,
    /// The scan reached the end (forward) or the start (backward) of the events.
    pub done: bool,
}

/// Where a listing stopped (`None` at the end), so the caller can go on in a fresh transaction.
pub type Resume = Option<u64>;

impl Store {
    /// Opens (creating if needed) the store for the single writer, with an fdatasync on every
    /// commit (the meta page is flushed by the next one: see [`Sync::EveryCommit`]).
    ///
    /// # Errors
    /// The directory cannot be created, LMDB refuses the environment, or the schema differs.
    pub fn open_writer(dir: &Path, map_bytes: usize) -> Result<Store> {
        Self::open_writer_with(dir, map_bytes, Sync::EveryCommit)
    }

    /// Opens the store for writing with the given sync policy. A map smaller than the data
    /// file already holds is raised to the file's size (LMDB keeps the larger one).
    ///
    /// # Errors
    /// As [`Store::open_writer`].
    pub fn open_writer_with(dir: &Path, map_bytes: usize, sync: Sync) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::Io)?;
        let flags = match sync {
            // A commit fdatasyncs its data pages and writes its meta page without a second
            // flush; the meta page reaches the disk with the next fdatasync (the next commit's,
            // or `Store::sync`). The writer answers a batch only after that (`writer.rs`).
            // LMDB keeps the file consistent in this mode; a power cut can only undo commits
            // that were not answered yet.
            Sync::EveryCommit => EnvironmentFlags::NO_META_SYNC,
            // Commits are written to the file but not flushed; `Store::sync` flushes. Without
            // MDB_WRITEMAP the written pages are in the page cache, so a process crash loses
            // nothing; a power cut can lose what was not synced yet.
            Sync::Deferred => EnvironmentFlags::NO_SYNC,
        };
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_map_size(map_bytes)
            .set_flags(flags)
            .open_with_permissions(dir, FILE_MODE)?;
        Self::from_env(env, dir)
    }

    /// Creates the databases if needed, checks the schema (migrating a schema-1 store), finds
    /// the next sequence numbers.
    fn from_env(env: Environment, dir: &Path) -> Result<Store> {
        let flags = DatabaseFlags::empty();
        let dbs = Dbs {
            events: env.create_db(Some("events"), flags)?,
            digests: env.create_db(Some("digests"), flags)?,
            callblocks: env.create_db(Some("callblocks"), flags)?,
            quarantine: env.create_db(Some("quarantine"), flags)?,
            counts: env.create_db(Some("counts"), flags)?,
            meta: env.create_db(Some("meta"), flags)?,
        };
        let found = {
            let txn = env.begin_ro_txn()?;
            match txn.get(dbs.meta, b"schema_version") {
                Ok(v) => Some(schema_of(v)),
                Err(lmdb::Error::NotFound) => None,
                Err(e) => return Err(e.into()),
            }
        };
        match found {
            None => {
                let mut txn = env.begin_rw_txn()?;
                put_schema_version(&mut txn, dbs)?;
                txn.commit()?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(1) => migrate_from_v1(&env, dbs)?,
            Some(found) => return Err(Error::Schema { found }),
        }
        // Readers may have been killed while holding a slot; clear what they left.
        reader_check(&env);
        let store = Store {
            env,
            dbs,
            next_event: Cell::new(0),
            next_quarantine: Cell::new(0),
            path: dir.to_path_buf(),
            map_suffix: OnceCell::new(),
        };
        {
            let txn = store.env.begin_ro_txn()?;
            store.next_event.set(next_seq(&txn, dbs)?);
            store
                .next_quarantine
                .set(last_key(&txn, dbs.quarantine)?.map_or(1, |k| k + 1));
        }
        Ok(store)
    }

    /// Opens an existing store for writing from a tool (`didgate prune`), beside a running
    /// `serve` if there is one: LMDB serializes the two writers.
    ///
    /// # Errors
    /// [`Error::Missing`] when `dir` holds no store; LMDB and schema errors otherwise.
    pub fn open_existing_writer(dir: &Path) -> Result<Store> {
        if !dir.join("data.mdb").is_file() {
            return Err(Error::Missing(dir.to_path_buf()));
        }
        // No map size is set: LMDB then adopts the one recorded by the server, which may have
        // grown it. (A size set here would replace it, and be raised only to the bytes in use,
        // leaving this writer no room to copy pages on write.)
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .open_with_permissions(dir, FILE_MODE)?;
        Self::from_env(env, dir)
    }

    /// Opens an existing store read-only, for the reader tool. Works while `serve` runs.
    ///
    /// # Errors
    /// [`Error::Missing`] when `dir` holds no store; LMDB and schema errors otherwise.
    pub fn open_reader(dir: &Path) -> Result<Store> {
        if !dir.join("data.mdb").is_file() {
            return Err(Error::Missing(dir.to_path_buf()));
        }
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_flags(EnvironmentFlags::READ_ONLY)
            .open(dir)?;
        let open = |name: &str| match env.open_db(Some(name)) {
            Ok(db) => Ok(db),
            Err(lmdb::Error::NotFound) => Err(Error::Missing(dir.to_path_buf())),
            Err(e) => Err(Error::from(e)),
        };
        let meta = open("meta")?;
        {
            let txn = env.begin_ro_txn()?;
            match schema_of(txn.get(meta, b"schema_version")?) {
                SCHEMA_VERSION => {}
                1 => return Err(Error::NeedsMigration { found: 1 }),
                found => return Err(Error::Schema { found }),
            }
        }
        let dbs = Dbs {
            events: open("events")?,
            digests: open("digests")?,
            callblocks: open("callblocks")?,
            quarantine: open("quarantine")?,
            counts: open("counts")?,
            meta,
        };
        // A reader killed mid-read leaves its slot behind; every reader clears such slots before
        // taking one, so hundreds of killed readers never exhaust the table.
        reader_check(&env);
        let store = Store {
            env,
            dbs,
            next_event: Cell::new(0),
            next_quarantine: Cell::new(0),
            path: dir.to_path_buf(),
            map_suffix: OnceCell::new(),
        };
        Ok(store)
    }

    /// A read transaction; when the writer grew the map since this process opened it, adopt
    /// the new size and retry once (LMDB's documented reaction to `MDB_MAP_RESIZED`).
    fn read_txn(&self) -> Result<lmdb::RoTransaction<'_>> {
        match self.env.begin_ro_txn() {
            Err(lmdb::Error::MapResized) => {
                self.env.set_map_size(0)?;
                Ok(self.env.begin_ro_txn()?)
            }
            other => Ok(other?),
        }
    }

    /// Starts the write transaction of one batch; every event in it is stamped `stored_at_ms`.
    ///
    /// # Errors
    /// LMDB refused to begin (e.g. `MDB_PANIC`).
    pub fn begin_write(&self, stored_at_ms: i64) -> Result<WriteTxn<'_>> {
        let txn = match self.env.begin_rw_txn() {
            // Another process (the server, for `didgate prune`) grew the map.
            Err(lmdb::Error::MapResized) => {
                self.env.set_map_size(0)?;
                self.env.begin_rw_txn()?
            }
            other => other?,
        };
        Ok(WriteTxn {
            txn,
            store: self,
            next_event: self.next_event.get(),
            next_quarantine: self.next_quarantine.get(),
            stored_at_ms,
            day: timestamp::day_of_ms(stored_at_ms),
            counts: BTreeMap::new(),
            touched_blocks: BTreeSet::new(),
            appended: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Events with `seq >= from`, in order, at most `scan` entries looked at (so one call is a
    /// short transaction), keeping those that pass `keep`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn scan_forward(
        &self,
        from: u64,
        scan: usize,
        mut keep: impl FnMut(&Record<'_>) -> bool,
    ) -> Result<Scan> {
        let txn = self.read_txn()?;
        let cursor = txn.open_ro_cursor(self.dbs.events)?;
        let mut out = Scan {
            events: Vec::new(),
            next: from,
            done: false,
        };
        let mut item = cursor_get(&cursor, Some(&from.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?;
        let mut looked = 0;
        while let Some((k, v)) = item {
            if looked == scan {
                return Ok(out);
            }
            looked += 1;
            let seq = key_seq(k);
            let rec = decode_at(seq, v)?;
            if keep(&rec) {
                out.events.push(to_stored(seq, &rec));
            }
            out.next = seq + 1;
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        out.done = true;
        Ok(out)
    }

    /// Events with `seq < before` (all when `None`), newest first, at most `scan` looked at.
    /// `next` of the result is the `before` to continue with.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn scan_backward(
        &self,
        before: Option<u64>,
        scan: usize,
        mut keep: impl FnMut(&Record<'_>) -> bool,
    ) -> Result<Scan> {
        let txn = self.read_txn()?;
        let cursor = txn.open_ro_cursor(self.dbs.events)?;
        let mut item = match before {
            None => cursor_get(&cursor, None, lmdb_sys::MDB_LAST)?,
            Some(b) => {
                match cursor_get(&cursor, Some(&b.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)? {
                    Some(_) => cursor_get(&cursor, None, lmdb_sys::MDB_PREV)?,
                    None => cursor_get(&cursor, None, lmdb_sys::MDB_LAST)?,
                }
            }
        };
        let mut out = Scan {
            events: Vec::new(),
            next: before.unwrap_or(u64::MAX),
            done: false,
        };
        let mut looked = 0;
        while let Some((k, v)) = item {
            if looked == scan {
                return Ok(out);
            }
            looked += 1;
            let seq = key_seq(k);
            let rec = decode_at(seq, v)?;
            if keep(&rec) {
                out.events.push(to_stored(seq, &rec));
            }
            out.next = seq;
            item = cursor_get(&cursor, None, lmdb_sys::MDB_PREV)?;
        }
        out.done = true;
        Ok(out)
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
        let cursor = txn.open_ro_cursor(self.dbs.events)?;
        let Some((first, _)) = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)? else {
            return Ok(None);
        };
        let Some((last, _)) = cursor_get(&cursor, None, lmdb_sys::MDB_LAST)? else {
            return Ok(None);
        };
        // Invariant: every event with seq < lo is stamped before `ms`; answer is in [lo, hi].
        let (mut lo, mut hi) = (key_seq(first), key_seq(last) + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cursor_get(&cursor, Some(&mid.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)? {
                Some((k, v)) => {
                    let seq = key_seq(k);
                    if decode_at(seq, v)?.stored_at_ms < ms {
                        lo = seq + 1;
                    } else {
                        hi = mid;
                    }
                }
                None => hi = mid,
            }
        }
        match cursor_get(&cursor, Some(&lo.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)? {
            Some((k, _)) => Ok(Some(key_seq(k))),
            None => Ok(None),
        }
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
        let cursor = txn.open_ro_cursor(self.dbs.callblocks)?;
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            let base = key_seq(k) * CALL_BLOCK;
            candidates.extend(block_matches(v, hash).map(|offset| base + offset));
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        // The events after the last complete block are not in a block yet: read their digests.
        let cursor = txn.open_ro_cursor(self.dbs.digests)?;
        let mut item = cursor_get(
            &cursor,
            Some(&indexed_to.to_be_bytes()),
            lmdb_sys::MDB_SET_RANGE,
        )?;
        while let Some((k, v)) = item {
            if digest_callid(v) == Some(hash) {
                candidates.push(key_seq(k));
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        for seq in candidates {
            match txn.get(self.dbs.events, &seq.to_be_bytes()) {
                Ok(v) => {
                    let rec = decode_at(seq, v)?;
                    if is_call(&rec) {
                        out.push(to_stored(seq, &rec));
                    }
                }
                // Pruned by retention; its block entry stays until the whole block is gone.
                Err(lmdb::Error::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Calls `visit(seq, body_hash)` for the newest `max` events, newest first (the writer
    /// rebuilds its dedup table from these at start-up).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn recent_digests(&self, max: usize, mut visit: impl FnMut(u64, u64)) -> Result<()> {
        let txn = self.read_txn()?;
        let cursor = txn.open_ro_cursor(self.dbs.digests)?;
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_LAST)?;
        let mut seen = 0;
        while let Some((k, v)) = item {
            if seen == max {
                break;
            }
            if let Some(hash) = digest_body(v) {
                visit(key_seq(k), hash);
                seen += 1;
                if seen % RELEASE_EVERY_DIGESTS == 0 {
                    // The walk maps each digests page and, through the kernel's fault-around,
                    // the cached pages beside it (events pages, as both trees grow together):
                    // 52 MiB for 196,608 digests, measured. Released as it goes.
                    let _ = self.release_mapped_pages();
                }
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_PREV)?;
        }
        Ok(())
    }

    /// When event `seq` was stored, if it still is.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn stored_at_of(&self, seq: u64) -> Result<Option<i64>> {
        let txn = self.read_txn()?;
        match txn.get(self.dbs.events, &seq.to_be_bytes()) {
            Ok(v) => Ok(Some(decode_at(seq, v)?.stored_at_ms)),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The persistent counters.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn counts(&self) -> Result<Counts> {
        let txn = self.read_txn()?;
        let cursor = txn.open_ro_cursor(self.dbs.counts)?;
        let mut counts = Counts {
            quarantined: txn.stat(self.dbs.quarantine)?.entries() as u64,
            ..Counts::default()
        };
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            let n = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
            let key = String::from_utf8_lossy(k);
            if let Some(kind) = key.strip_prefix("events/") {
                counts.by_kind.insert(kind.to_string(), n);
            } else if let Some(kind) = key.strip_prefix("duplicates/") {
                counts.duplicates.insert(kind.to_string(), n);
            } else if let Some((day, kind)) = key
                .strip_prefix("day/")
                .and_then(|rest| rest.split_once('/'))
            {
                let per_day = counts.by_day.entry(day.to_string()).or_default();
                per_day.insert(kind.to_string(), n);
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        Ok(counts)
    }

    /// Quarantined bodies with `seq >= from`, at most `limit`, and where to resume.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn quarantine_from(&self, from: u64, limit: usize) -> Result<(Vec<Quarantined>, Resume)> {
        let txn = self.read_txn()?;
        let cursor = txn.open_ro_cursor(self.dbs.quarantine)?;
        let mut out = Vec::new();
        let mut item = cursor_get(&cursor, Some(&from.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?;
        while let Some((k, v)) = item {
            let seq = key_seq(k);
            if out.len() == limit {
                return Ok((out, Some(seq)));
            }
            out.push(decode_quarantine(seq, v)?);
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        Ok((out, None))
    }

    /// One quarantined body.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn quarantined(&self, seq: u64) -> Result<Option<Quarantined>> {
        let txn = self.read_txn()?;
        match txn.get(self.dbs.quarantine, &seq.to_be_bytes()) {
            Ok(v) => Ok(Some(decode_quarantine(seq, v)?)),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the environment is still usable for writing. After some failures (a meta page
    /// that could not be written) LMDB marks it unusable and says so only when the next
    /// transaction begins; this begins (and drops) one to find out now.
    pub fn is_unusable(&self) -> bool {
        matches!(self.env.begin_rw_txn(), Err(lmdb::Error::Panic))
    }

    /// Grows the map to `bytes`. LMDB allows this only while this process has no write
    /// transaction open, which the single writer guarantees by calling it between batches.
    ///
    /// # Errors
    /// LMDB refused (e.g. the address space is exhausted on a 32-bit host).
    pub fn grow_map(&self, bytes: u64) -> Result<()> {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        Ok(self.env.set_map_size(bytes)?)
    }

    /// Flushes everything committed to disk, meta page included.
    ///
    /// # Errors
    /// The sync failed (an I/O error).
    pub fn sync(&self) -> Result<()> {
        Ok(self.env.sync(true)?)
    }

    /// Drops this process's mapping of the data file's pages. They stay in the page cache and
    /// on disk; the next access maps a page again from the cache, with the same contents.
    ///
    /// Why: every page a commit reads through the map (the right edge of each B-tree, new at
    /// each commit) stays mapped, so the resident size the operator sees (`VmRSS`, `top`) grew
    /// with the data written: 3 GiB after 10 minutes of load, all of it reclaimable page cache,
    /// none of it the gateway's own memory. Called every `writer::MAP_RELEASE_INTERVAL`, it
    /// bounds the mapped part to what was touched since.
    ///
    /// # Errors
    /// The mapping could not be looked up, or `madvise` failed.
    pub fn release_mapped_pages(&self) -> Result<()> {
        // LMDB does not say where it mapped the file (`me_mapaddr` is only set with
        // MDB_FIXEDMAP), so the mapping is looked up by name, each time: the writer thread,
        // which calls this, is the only one that can make LMDB map the file elsewhere
        // (`grow_map`), so the ranges read here are still the file's when advised.
        let suffix = match self.map_suffix.get() {
            Some(s) => s,
            None => {
                let s = map_line_suffix(&self.path).map_err(Error::Io)?;
                self.map_suffix.get_or_init(|| s)
            }
        };
        // Line by line through a small buffer: with a thousand connections the table is
        // ~150 KB, and reading it whole each second kept ~4 MiB more of heap resident.
        let maps = std::fs::File::open("/proc/self/maps").map_err(Error::Io)?;
        let mut maps = std::io::BufReader::with_capacity(MAPS_READ_BYTES, maps);
        let mut line = String::new();
        loop {
            line.clear();
            if std::io::BufRead::read_line(&mut maps, &mut line).map_err(Error::Io)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if !line.ends_with(suffix.as_str()) {
                continue;
            }
            // "start-end perms offset dev inode path"; only LMDB's read-only shared map.
            let mut fields = line.split_whitespace();
            let (Some(range), Some("r--s")) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: [start, end) is a read-only shared mapping of data.mdb (this store never
            // opens with MDB_WRITEMAP, so no write goes through it), as the kernel listed it
            // just now; see above for why it is still that mapping. MADV_DONTNEED on a shared
            // file mapping only removes this process's page-table entries: a later read
            // faults the page back in from the page cache with the same contents, so a
            // transaction reading concurrently sees no difference.
            let rc = unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    end.saturating_sub(start),
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                return Err(Error::Io(std::io::Error::last_os_error()));
            }
        }
    }

    /// Writes zeros past the end of the data file: up to `bytes` more, starting at the file's
    /// end (or the end of the pages in use, if that is further), never past the map's end.
    /// Flushes them (which also flushes any committed meta page) and returns how many bytes it
    /// wrote; 0 when the file already reaches the map's end.
    ///
    /// Why: a commit that writes past the end of the file makes the filesystem allocate blocks
    /// and grow the file, and its fdatasync must then write that metadata too (on ext4, the
    /// inode; with a journal, a journal commit). Over blocks that already exist and hold zeros,
    /// the fdatasync writes the data pages alone. Measured in `docs/performance.md`.
    ///
    /// Why this cannot overwrite data: LMDB only writes pages below its next page number, during
    /// a commit. This runs inside a write transaction (begun, then aborted), so no commit of
    /// this or another process (`didgate prune`) runs meanwhile, and it writes only past both
    /// the file's end and the last page in use. LMDB reads nothing past its last page and
    /// keeps no record of the file's length, so the zeros are invisible to it.
    ///
    /// # Errors
    /// LMDB errors, or the write or flush failed (e.g. `ENOSPC`); zeros written before the
    /// failure stay, harmlessly.
    pub fn zero_fill(&self, bytes: u64) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let txn = self.env.begin_rw_txn()?;
        let (used, map) = self.map_usage()?;
        let written = self.with_data_file(|file| {
            let start = file.metadata()?.len().max(used);
            let end = start.saturating_add(bytes).min(map);
            let mut at = start;
            while at < end {
                let n = usize::try_from(end - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
                file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            if end > start {
                file.sync_data()?;
            }
            Ok(end.saturating_sub(start))
        })?;
        drop(txn);
        Ok(written)
    }

    /// Runs `f` on the data file through LMDB's own descriptor (a second descriptor would do,
    /// but closing it would drop any POSIX lock this process holds on the file).
    fn with_data_file<T>(&self, f: impl FnOnce(&std::fs::File) -> std::io::Result<T>) -> Result<T> {
        use std::os::unix::io::FromRawFd;
        let mut fd: lmdb_sys::mdb_filehandle_t = -1;
        // SAFETY: the environment handle is live for this call and `fd` a valid out-pointer.
        let rc = unsafe { lmdb_sys::mdb_env_get_fd(self.env.env(), &mut fd) };
        if rc != 0 {
            return Err(Error::Lmdb(lmdb::Error::from_err_code(rc)));
        }
        // SAFETY: `fd` is the environment's open descriptor of data.mdb, open as long as the
        // environment, which outlives this call; the File only lends it to `f` (the reference
        // cannot escape the closure) and ManuallyDrop keeps it from being closed.
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        f(&file).map_err(Error::Io)
    }

    /// Frees reader slots held by processes that died (`mdb_reader_check`); returns how many.
    pub fn clear_stale_readers(&self) -> usize {
        reader_check(&self.env)
    }

    /// Free bytes for unprivileged users on the filesystem holding the store.
    ///
    /// # Errors
    /// `statvfs` failed.
    pub fn disk_free_bytes(&self) -> Result<u64> {
        let path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        // SAFETY: statvfs is all zeroes-valid plain data.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        // The fields are 32-bit on 32-bit targets (armv7), 64-bit elsewhere.
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
        Ok(free)
    }

    /// Writes a consistent, compacted copy of the environment into the empty directory `dest`
    /// (LMDB's `mdb_env_copy2` with `MDB_CP_COMPACT`: free pages are left out). Runs beside a
    /// live writer: the copy is one read transaction's snapshot.
    ///
    /// # Errors
    /// The copy failed (destination missing, not empty, or an I/O error).
    pub fn copy_compacted(&self, dest: &Path) -> Result<()> {
        let path = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        // SAFETY: the environment handle is live for this call; `path` is NUL-terminated.
        let rc = unsafe {
            lmdb_sys::mdb_env_copy2(self.env.env(), path.as_ptr(), lmdb_sys::MDB_CP_COMPACT)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Lmdb(lmdb::Error::from_err_code(rc)))
        }
    }

    /// Verifies the store's invariants in one read transaction: every record decodes, stamps
    /// never decrease along the sequence, every event has a digest of its body and no digest
    /// is left without its event, every callid digest in a complete block has its block entry,
    /// every quarantine entry decodes, and the counters equal what is stored. Returns what it found; an empty `problems` means consistent.
    ///
    /// # Errors
    /// LMDB errors (a problem with the data itself is reported, not an error).
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_day: BTreeMap<(String, String), u64> = BTreeMap::new();
        self.check_records(&mut report, &mut by_kind, &mut by_day)?;
        // The counters are read in a transaction of their own: one read transaction per
        // thread at a time is LMDB's rule.
        let counts = self.counts()?;
        Self::check_counts(&mut report, &counts, &by_kind, &by_day);
        Ok(report)
    }

    fn check_records(
        &self,
        report: &mut CheckReport,
        by_kind: &mut BTreeMap<String, u64>,
        by_day: &mut BTreeMap<(String, String), u64>,
    ) -> Result<()> {
        let txn = self.read_txn()?;
        let mut last_stamp = i64::MIN;
        let cursor = txn.open_ro_cursor(self.dbs.events)?;
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            let seq = key_seq(k);
            report.events += 1;
            match event::decode_record(v) {
                Err(e) => report.problems.push(format!("event {seq}: {e}")),
                Ok(rec) => {
                    if rec.stored_at_ms < last_stamp {
                        report
                            .problems
                            .push(format!("event {seq}: stamped before its predecessor"));
                    }
                    last_stamp = rec.stored_at_ms;
                    *by_kind.entry(rec.kind.to_string()).or_default() += 1;
                    *by_day
                        .entry((timestamp::day_of_ms(rec.stored_at_ms), rec.kind.to_string()))
                        .or_default() += 1;
                    match txn.get(self.dbs.digests, &seq.to_be_bytes()) {
                        Ok(d) if digest_body(d) == Some(body_hash(rec.body)) => {}
                        Ok(_) => report
                            .problems
                            .push(format!("event {seq}: digest does not match the body")),
                        Err(lmdb::Error::NotFound) => {
                            report.problems.push(format!("event {seq}: no digest"))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        let digests = txn.stat(self.dbs.digests)?.entries() as u64;
        if digests != report.events {
            report
                .problems
                .push(format!("{digests} digests for {} events", report.events));
        }
        self.check_call_blocks(&txn, report)?;
        let cursor = txn.open_ro_cursor(self.dbs.quarantine)?;
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            report.quarantined += 1;
            if let Err(e) = decode_quarantine(key_seq(k), v) {
                report.problems.push(format!("quarantine entry: {e}"));
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        Ok(())
    }

    fn check_call_blocks(&self, txn: &impl Transaction, report: &mut CheckReport) -> Result<()> {
        let indexed_to = next_seq(txn, self.dbs)? / CALL_BLOCK * CALL_BLOCK;
        let blocks = txn.open_ro_cursor(self.dbs.callblocks)?;
        let mut item = cursor_get(&blocks, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            report.call_entries += (v.len() / 8) as u64;
            if v.len() % 8 != 0 || key_seq(k) >= indexed_to / CALL_BLOCK {
                report
                    .problems
                    .push(format!("call block {} is malformed", key_seq(k)));
            }
            item = cursor_get(&blocks, None, lmdb_sys::MDB_NEXT)?;
        }
        let cursor = txn.open_ro_cursor(self.dbs.digests)?;
        let mut item = cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?;
        while let Some((k, v)) = item {
            let seq = key_seq(k);
            if seq >= indexed_to {
                break;
            }
            if let Some(hash) = digest_callid(v) {
                let block = seq / CALL_BLOCK;
                let found = match txn.get(self.dbs.callblocks, &block.to_be_bytes()) {
                    Ok(entries) => block_matches(entries, hash).any(|o| o == seq % CALL_BLOCK),
                    Err(lmdb::Error::NotFound) => false,
                    Err(e) => return Err(e.into()),
                };
                if !found {
                    report
                        .problems
                        .push(format!("event {seq}: missing from call block {block}"));
                }
            }
            if txn.get(self.dbs.events, &k).is_err() {
                report.problems.push(format!("digest {seq} has no event"));
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        Ok(())
    }

    fn check_counts(
        report: &mut CheckReport,
        counts: &Counts,
        by_kind: &BTreeMap<String, u64>,
        by_day: &BTreeMap<(String, String), u64>,
    ) {
        if counts.by_kind != *by_kind {
            report.problems.push(format!(
                "kind counters {:?} differ from stored events {:?}",
                counts.by_kind, by_kind
            ));
        }
        let counted_days: BTreeMap<(String, String), u64> = counts
            .by_day
            .iter()
            .flat_map(|(d, kinds)| kinds.iter().map(move |(k, n)| ((d.clone(), k.clone()), *n)))
            .collect();
        if counted_days != *by_day {
            report
                .problems
                .push("per-day counters differ from stored events".to_string());
        }
    }

    /// Map and file sizes.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn space(&self) -> Result<SpaceInfo> {
        let (used_bytes, map_bytes) = self.map_usage()?;
        let file_bytes = self.with_data_file(|f| f.metadata()).map_or(0, |m| m.len());
        Ok(SpaceInfo {
            map_bytes,
            used_bytes,
            file_bytes,
        })
    }

    /// Bytes of the map in use and the map's size, without touching the file system (the
    /// writer asks before every batch).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn map_usage(&self) -> Result<(u64, u64)> {
        let info = self.env.info()?;
        let stat = self.env.stat()?;
        let used = (info.last_pgno() as u64 + 1) * u64::from(stat.page_size());
        Ok((used, info.map_size() as u64))
    }
}

/// The write transaction of one batch.
///
/// Only one exists at a time (LMDB's rule, kept by the single writer thread). Nothing it does
/// is visible to readers, or durable, until [`WriteTxn::commit`] returns `Ok`.
pub struct WriteTxn<'s> {
    txn: lmdb::RwTransaction<'s>,
    store: &'s Store,
    next_event: u64,
    next_quarantine: u64,
    stored_at_ms: i64,
    day: String,
    /// Counter changes, applied once per key at commit.
    counts: BTreeMap<Vec<u8>, i64>,
    /// Call blocks that lost events: deleted at commit if nothing of them is left.
    touched_blocks: BTreeSet<u64>,
    /// Events appended per kind (a batch has a handful of kinds), folded into the `events/K`
    /// and `day/D/K` counters at commit: two formatted keys and map updates per batch and kind
    /// instead of per event.
    appended: Vec<(String, i64)>,
    scratch: Vec<u8>,
}

impl WriteTxn<'_> {
    /// The stamp every event of this batch gets.
    pub fn stored_at_ms(&self) -> i64 {
        self.stored_at_ms
    }

    /// Whether event `seq`, stored earlier (or earlier in this batch), has the kind and the
    /// byte-identical body of `ev` and was stamped at or after `since_ms`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn is_same_event(&self, seq: u64, ev: &Event, since_ms: i64) -> Result<bool> {
        match self.txn.get(self.store.dbs.events, &seq.to_be_bytes()) {
            Ok(v) => {
                let rec = decode_at(seq, v)?;
                Ok(rec.stored_at_ms >= since_ms && rec.kind == ev.kind && rec.body == ev.body)
            }
            Err(lmdb::Error::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_event
    }

    /// Appends an event with the next sequence number, its digest (`body_hash` is
    /// [`body_hash`] of its body) and counters.
    ///
    /// # Errors
    /// LMDB errors (`MDB_MAP_FULL` among them); the whole transaction must then be dropped.
    pub fn append_event(&mut self, ev: &Event, body_hash: u64) -> Result<u64> {
        let seq = self.next_event;
        let dbs = self.store.dbs;
        let key = seq.to_be_bytes();
        self.scratch.clear();
        ev.as_record(self.stored_at_ms).encode(&mut self.scratch);
        self.txn
            .put(dbs.events, &key, &self.scratch, WriteFlags::APPEND)?;
        let mut digest = [0u8; 12];
        digest[..8].copy_from_slice(&body_hash.to_be_bytes());
        let len = match ev.callid.as_deref().filter(|c| !c.is_empty()) {
            Some(callid) => {
                digest[8..].copy_from_slice(&callid_hash(callid).to_be_bytes());
                12
            }
            None => 8,
        };
        self.txn
            .put(dbs.digests, &key, &&digest[..len], WriteFlags::APPEND)?;
        match self.appended.iter_mut().find(|(kind, _)| *kind == ev.kind) {
            Some((_, n)) => *n += 1,
            None => self.appended.push((ev.kind.clone(), 1)),
        }
        self.next_event += 1;
        Ok(seq)
    }

    /// Counts a recognised duplicate of `kind`.
    pub fn count_duplicate(&mut self, kind: &str) {
        self.bump(format!("duplicates/{kind}"));
    }

    /// Keeps a body that did not decode, with the reason, under the next quarantine number.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn append_quarantine(&mut self, reason: &str, ev: &Event) -> Result<u64> {
        let seq = self.next_quarantine;
        let reason = event::truncate_str(reason, 1024);
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&(reason.len() as u16).to_be_bytes());
        self.scratch.extend_from_slice(reason.as_bytes());
        ev.as_record(self.stored_at_ms).encode(&mut self.scratch);
        self.txn.put(
            self.store.dbs.quarantine,
            &seq.to_be_bytes(),
            &self.scratch,
            WriteFlags::APPEND,
        )?;
        self.next_quarantine += 1;
        Ok(seq)
    }

    /// The oldest events with `seq >= from`, at most `max`, for retention to judge.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn oldest_events(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>> {
        self.oldest(self.store.dbs.events, from, max, |seq, v| {
            Ok(to_stored(seq, &decode_at(seq, v)?))
        })
    }

    /// The oldest quarantined bodies with `seq >= from`, at most `max`.
    ///
    /// # Errors
    /// LMDB or record errors.
    pub fn oldest_quarantined(&self, from: u64, max: usize) -> Result<Vec<Quarantined>> {
        self.oldest(self.store.dbs.quarantine, from, max, decode_quarantine)
    }

    fn oldest<T>(
        &self,
        db: Database,
        from: u64,
        max: usize,
        read: impl Fn(u64, &[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let cursor = self.txn.open_ro_cursor(db)?;
        let mut out = Vec::new();
        let mut item = cursor_get(&cursor, Some(&from.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?;
        while let Some((k, v)) = item {
            if out.len() == max {
                break;
            }
            out.push(read(key_seq(k), v)?);
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
        Ok(out)
    }

    /// Deletes an event with its digest, and takes it out of the counters. Its call block
    /// goes at commit once none of the block's events is left.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn delete_event(&mut self, ev: &StoredEvent) -> Result<()> {
        let dbs = self.store.dbs;
        let key = ev.seq.to_be_bytes();
        del_if_present(&mut self.txn, dbs.events, &key)?;
        del_if_present(&mut self.txn, dbs.digests, &key)?;
        self.touched_blocks.insert(ev.seq / CALL_BLOCK);
        let day = timestamp::day_of_ms(ev.stored_at_ms);
        self.unbump(format!("events/{}", ev.kind));
        self.unbump(format!("day/{day}/{}", ev.kind));
        Ok(())
    }

    /// Deletes a quarantined body.
    ///
    /// # Errors
    /// LMDB errors; the whole transaction must then be dropped.
    pub fn delete_quarantined(&mut self, seq: u64) -> Result<()> {
        del_if_present(&mut self.txn, self.store.dbs.quarantine, &seq.to_be_bytes())
    }

    fn bump(&mut self, key: String) {
        *self.counts.entry(key.into_bytes()).or_insert(0) += 1;
    }

    fn unbump(&mut self, key: String) {
        *self.counts.entry(key.into_bytes()).or_insert(0) -= 1;
    }

    /// Writes the counters and commits: in [`Sync::EveryCommit`] this returns after LMDB's
    /// fdatasync of the data pages; the commit is durable once the next fdatasync returns.
    ///
    /// # Errors
    /// LMDB errors; nothing of the batch is then stored.
    pub fn commit(mut self) -> Result<()> {
        let db = self.store.dbs.counts;
        for (kind, n) in std::mem::take(&mut self.appended) {
            *self
                .counts
                .entry(format!("events/{kind}").into_bytes())
                .or_insert(0) += n;
            *self
                .counts
                .entry(format!("day/{}/{kind}", self.day).into_bytes())
                .or_insert(0) += n;
        }
        for (key, delta) in std::mem::take(&mut self.counts) {
            let old = match self.txn.get(db, &key) {
                Ok(v) => v.try_into().map(u64::from_be_bytes).unwrap_or(0),
                Err(lmdb::Error::NotFound) => 0,
                Err(e) => return Err(e.into()),
            };
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                del_if_present(&mut self.txn, db, &key)?;
            } else {
                self.txn
                    .put(db, &key, &new.to_be_bytes(), WriteFlags::empty())?;
            }
        }
        let dbs = self.store.dbs;
        let before = self.store.next_event.get();
        if self.next_event != before {
            // Blocks completed by this batch: their digests are all written now.
            for block in before / CALL_BLOCK..self.next_event / CALL_BLOCK {
                write_call_block(&mut self.txn, dbs, block)?;
            }
            // Kept so sequence numbers never repeat, even after retention deleted every event.
            self.txn.put(
                dbs.meta,
                b"next_seq",
                &self.next_event.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        for block in std::mem::take(&mut self.touched_blocks) {
            let start = block * CALL_BLOCK;
            let left = {
                let cursor = self.txn.open_ro_cursor(dbs.events)?;
                cursor_get(&cursor, Some(&start.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?
                    .is_some_and(|(k, _)| key_seq(k) < start + CALL_BLOCK)
            };
            if !left {
                del_if_present(&mut self.txn, dbs.callblocks, &block.to_be_bytes())?;
            }
        }
        let (store, next_event, next_quarantine) =
            (self.store, self.next_event, self.next_quarantine);
        self.txn.commit()?;
        store.next_event.set(next_event);
        store.next_quarantine.set(next_quarantine);
        Ok(())
    }
}

fn del_if_present(txn: &mut lmdb::RwTransaction<'_>, db: Database, key: &[u8]) -> Result<()> {
    match txn.del(db, &key, None) {
        Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn schema_of(v: &[u8]) -> u32 {
    v.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

/// The hash of a body that the dedup table and `digests` hold (xxh3, 64 bits).
pub fn body_hash(body: &[u8]) -> u64 {
    xxh3_64(body)
}

/// The 32-bit hash of a callid that `digests` and `callblocks` hold.
pub fn callid_hash(callid: &str) -> u32 {
    (xxh3_64(callid.as_bytes()) >> 32) as u32
}

fn digest_body(v: &[u8]) -> Option<u64> {
    v.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn digest_callid(v: &[u8]) -> Option<u32> {
    v.get(8..12)?.try_into().ok().map(u32::from_be_bytes)
}

/// The offsets within a call block whose callid hash is `hash`, ascending. Entries are sorted
/// big-endian u64s, so this is a binary search for the first, then a walk.
fn block_matches(entries: &[u8], hash: u32) -> impl Iterator<Item = u64> + '_ {
    let n = entries.len() / 8;
    let at = |i: usize| {
        entries[i * 8..i * 8 + 8]
            .try_into()
            .map_or(0, u64::from_be_bytes)
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
fn write_call_block(txn: &mut lmdb::RwTransaction<'_>, dbs: Dbs, block: u64) -> Result<()> {
    let start = block * CALL_BLOCK;
    let mut entries = Vec::new();
    {
        let cursor = txn.open_ro_cursor(dbs.digests)?;
        let mut item = cursor_get(&cursor, Some(&start.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?;
        while let Some((k, v)) = item {
            let seq = key_seq(k);
            if seq >= start + CALL_BLOCK {
                break;
            }
            if let Some(hash) = digest_callid(v) {
                entries.push((u64::from(hash) << 32) | (seq - start));
            }
            item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
        }
    }
    entries.sort_unstable();
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    txn.put(
        dbs.callblocks,
        &block.to_be_bytes(),
        &bytes,
        WriteFlags::empty(),
    )?;
    Ok(())
}

/// The sequence number the next event gets: one past the highest ever given (kept in `meta`,
/// since retention may have deleted the newest events), or one past the highest stored.
fn next_seq(txn: &impl Transaction, dbs: Dbs) -> Result<u64> {
    let kept = match txn.get(dbs.meta, b"next_seq") {
        Ok(v) => v.try_into().map_or(1, u64::from_be_bytes),
        Err(lmdb::Error::NotFound) => 1,
        Err(e) => return Err(e.into()),
    };
    Ok(kept.max(last_key(txn, dbs.events)?.map_or(1, |k| k + 1)))
}

/// Rewrites a schema-1 store to schema 2 in place: digests of every body (and of every
/// indexed callid, from the old `calls` keys), the call blocks, then the old `calls` and
/// `dedup` databases are dropped and the version is raised, in that order. Each step commits
/// in chunks and is idempotent, so an interrupted migration simply runs again.
fn migrate_from_v1(env: &Environment, dbs: Dbs) -> Result<()> {
    crate::ops::log::info(format_args!(
        "migrating the store from schema 1 to {SCHEMA_VERSION}"
    ));
    // 1. A body digest per event.
    let mut from = 0u64;
    loop {
        let mut txn = env.begin_rw_txn()?;
        let mut chunk = Vec::new();
        {
            let cursor = txn.open_ro_cursor(dbs.events)?;
            let mut item = cursor_get(&cursor, Some(&from.to_be_bytes()), lmdb_sys::MDB_SET_RANGE)?;
            while let Some((k, v)) = item {
                if chunk.len() == MIGRATION_CHUNK {
                    break;
                }
                let seq = key_seq(k);
                chunk.push((seq, body_hash(decode_at(seq, v)?.body)));
                item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
            }
        }
        for &(seq, hash) in &chunk {
            txn.put(
                dbs.digests,
                &seq.to_be_bytes(),
                &hash.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        txn.commit()?;
        match chunk.last() {
            Some(&(seq, _)) if chunk.len() == MIGRATION_CHUNK => from = seq + 1,
            _ => break,
        }
    }
    // 2. The callid of each entry of the old call index (callid, 0x00, seq) into its digest.
    let old_calls = match env.open_db(Some("calls")) {
        Ok(db) => Some(db),
        Err(lmdb::Error::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(calls) = old_calls {
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut txn = env.begin_rw_txn()?;
            let mut chunk = Vec::new();
            let mut next = None;
            {
                let cursor = txn.open_ro_cursor(calls)?;
                let mut item = if from.is_empty() {
                    cursor_get(&cursor, None, lmdb_sys::MDB_FIRST)?
                } else {
                    cursor_get(&cursor, Some(&from), lmdb_sys::MDB_SET_RANGE)?
                };
                while let Some((k, _)) = item {
                    if chunk.len() == MIGRATION_CHUNK {
                        next = Some(k.to_vec());
                        break;
                    }
                    if let Some(at) = k.len().checked_sub(9).filter(|&at| at > 0) {
                        let callid = String::from_utf8_lossy(&k[..at]);
                        chunk.push((key_seq(&k[at + 1..]), callid_hash(&callid)));
                    }
                    item = cursor_get(&cursor, None, lmdb_sys::MDB_NEXT)?;
                }
            }
            for &(seq, hash) in &chunk {
                let key = seq.to_be_bytes();
                let body = match txn.get(dbs.digests, &key) {
                    Ok(d) => digest_body(d),
                    Err(lmdb::Error::NotFound) => None,
                    Err(e) => return Err(e.into()),
                };
                if let Some(body) = body {
                    let mut digest = [0u8; 12];
                    digest[..8].copy_from_slice(&body.to_be_bytes());
                    digest[8..].copy_from_slice(&hash.to_be_bytes());
                    txn.put(dbs.digests, &key, &digest, WriteFlags::empty())?;
                }
            }
            txn.commit()?;
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
    }
    // 3. The call blocks of every complete block, and the sequence high-water mark.
    let next = {
        let txn = env.begin_ro_txn()?;
        next_seq(&txn, dbs)?
    };
    let blocks: Vec<u64> = (0..next / CALL_BLOCK).collect();
    for chunk in blocks.chunks(MIGRATION_CHUNK / CALL_BLOCK as usize) {
        let mut txn = env.begin_rw_txn()?;
        for &block in chunk {
            write_call_block(&mut txn, dbs, block)?;
        }
        txn.commit()?;
    }
    // 4. Drop the old indexes and raise the version, in one transaction.
    let old_dedup = match env.open_db(Some("dedup")) {
        Ok(db) => Some(db),
        Err(lmdb::Error::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let mut txn = env.begin_rw_txn()?;
    for db in [old_calls, old_dedup].into_iter().flatten() {
        // SAFETY: neither handle is used after this drop (LMDB's rule for mdb_drop).
        unsafe { txn.drop_db(db)? };
    }
    txn.put(
        dbs.meta,
        b"next_seq",
        &next.to_be_bytes(),
        WriteFlags::empty(),
    )?;
    put_schema_version(&mut txn, dbs)?;
    txn.commit()?;
    crate::ops::log::info(format_args!("store migrated to schema {SCHEMA_VERSION}"));
    Ok(())
}

fn put_schema_version(txn: &mut lmdb::RwTransaction<'_>, dbs: Dbs) -> Result<()> {
    let version = SCHEMA_VERSION.to_be_bytes();
    Ok(txn.put(dbs.meta, b"schema_version", &version, WriteFlags::empty())?)
}

/// Clears reader slots of dead processes (`mdb_reader_check`); harmless when there are none.
fn reader_check(env: &Environment) -> usize {
    let mut dead: libc::c_int = 0;
    // SAFETY: `env.env()` is the live environment handle owned by `env` for this call's
    // duration, and `dead` is a valid out-pointer.
    unsafe {
        lmdb_sys::mdb_reader_check(env.env(), &mut dead);
    }
    usize::try_from(dead).unwrap_or(0)
}

/// The big-endian u64 at the start of `k` (keys are written by this file, always 8+ bytes;
/// a short key reads as 0 rather than panicking).
fn key_seq(k: &[u8]) -> u64 {
    k.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn decode_at(seq: u64, v: &[u8]) -> Result<Record<'_>> {
    event::decode_record(v).map_err(|err| Error::Record { seq, err })
}

fn decode_quarantine(seq: u64, v: &[u8]) -> Result<Quarantined> {
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
        event: to_stored(seq, &rec),
    })
}

fn to_stored(seq: u64, rec: &Record<'_>) -> StoredEvent {
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

type Item<'txn> = Option<(&'txn [u8], &'txn [u8])>;

/// One cursor step; "not found" (end of the database) is `None`, not an error.
fn cursor_get<'txn>(cursor: &impl Cursor<'txn>, key: Option<&[u8]>, op: u32) -> Result<Item<'txn>> {
    match cursor.get(key, None, op) {
        Ok((Some(k), v)) => Ok(Some((k, v))),
        // Every op used here (FIRST, LAST, NEXT, PREV, SET_RANGE) returns the key it lands on.
        Ok((None, _)) => Err(Error::Lmdb(lmdb::Error::Corrupted)),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn last_key(txn: &impl Transaction, db: Database) -> Result<Option<u64>> {
    let cursor = txn.open_ro_cursor(db)?;
    Ok(cursor_get(&cursor, None, lmdb_sys::MDB_LAST)?.map(|(k, _)| key_seq(k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, body: &str, callid: Option<&str>) -> Event {
        Event {
            kind: kind.to_string(),
            format: BodyFormat::Json,
            peer: None,
            content_type: b"application/json".to_vec(),
            body: body.as_bytes().to_vec(),
            callid: callid.map(str::to_string),
        }
    }

    const MAP: usize = 16 << 20;

    fn add(w: &mut WriteTxn<'_>, ev: &Event) -> u64 {
        w.append_event(ev, body_hash(&ev.body)).unwrap()
    }

    /// Resident kilobytes of this process's mappings of `dir`'s data file.
    fn mapped_kib(dir: &Path) -> u64 {
        let suffix = map_line_suffix(dir).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut total = 0;
        let mut ours = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
                // A mapping's header line; its properties follow.
                ours = line.ends_with(&suffix);
            } else if ours && let Some(kib) = line.strip_prefix("Rss:") {
                total += kib.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
            }
        }
        total
    }

    #[test]
    fn mapped_pages_are_released_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        let mut w = store.begin_write(1_000).unwrap();
        for _ in 0..200 {
            add(&mut w, &event("cdr", &body, None));
        }
        w.commit().unwrap();
        let before = store.scan_forward(0, 1000, |_| true).unwrap().events;
        assert_eq!(before.len(), 200);
        assert!(mapped_kib(dir.path()) >= 400, "reading maps the pages");
        store.release_mapped_pages().unwrap();
        assert_eq!(mapped_kib(dir.path()), 0);
        assert_eq!(
            store.scan_forward(0, 1000, |_| true).unwrap().events,
            before
        );
    }

    #[test]
    fn zero_fill_adds_room_that_commits_then_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
        let mut w = store.begin_write(1_000).unwrap();
        add(&mut w, &event("cdr", &body, None));
        w.commit().unwrap();
        let before = store.space().unwrap();
        assert_eq!(store.zero_fill(1 << 20).unwrap(), 1 << 20);
        let filled = store.space().unwrap();
        let end = before.file_bytes.max(before.used_bytes);
        assert_eq!(filled.file_bytes, end + (1 << 20));
        assert_eq!(filled.used_bytes, before.used_bytes);
        let bytes = std::fs::read(dir.path().join("data.mdb")).unwrap();
        assert!(bytes[end as usize..].iter().all(|&b| b == 0));

        // Commits land in the filled room: the file does not grow, the data does.
        for _ in 0..100 {
            let mut w = store.begin_write(2_000).unwrap();
            add(&mut w, &event("cdr", &body, None));
            w.commit().unwrap();
        }
        let used = store.space().unwrap();
        assert_eq!(used.file_bytes, filled.file_bytes);
        assert!(used.used_bytes > filled.used_bytes + 64 * 1024, "{used:?}");

        // Never past the map's end.
        let left = MAP as u64 - used.file_bytes;
        assert_eq!(store.zero_fill(u64::MAX).unwrap(), left);
        assert_eq!(store.zero_fill(1 << 20).unwrap(), 0);
        assert_eq!(store.space().unwrap().file_bytes, MAP as u64);

        // Everything reads back, also after reopening.
        assert!(store.check().unwrap().problems.is_empty());
        drop(store);
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        assert_eq!(
            store.scan_forward(0, 1000, |_| true).unwrap().events.len(),
            101
        );
        assert!(store.check().unwrap().problems.is_empty());
    }

    #[test]
    fn appends_in_order_and_reads_back_after_commit_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1_000).unwrap();
        assert_eq!(add(&mut w, &event("cdr", "{\"a\":1}", Some("c1"))), 1);
        assert_eq!(add(&mut w, &event("recording", "{\"b\":2}", Some("c1"))), 2);
        let reader = Store::open_reader(dir.path()).unwrap();
        assert_eq!(
            reader.last_seq().unwrap(),
            None,
            "uncommitted writes are invisible"
        );
        w.commit().unwrap();
        assert_eq!(reader.last_seq().unwrap(), Some(2));
        let scan = reader.scan_forward(0, 10, |_| true).unwrap();
        assert!(scan.done);
        assert_eq!(scan.next, 3);
        let all = scan.events;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].body, b"{\"a\":1}");
        assert_eq!(all[1].stored_at_ms, 1_000);
        let call = reader.call_events("c1", |_| true).unwrap();
        assert_eq!(call.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(
            reader.call_events("c", |_| true).unwrap().is_empty(),
            "prefix of a callid is not it"
        );
        let counts = reader.counts().unwrap();
        assert_eq!(counts.by_kind.get("cdr"), Some(&1));
        assert_eq!(counts.by_day["1970-01-01"].get("recording"), Some(&1));
    }

    #[test]
    fn dropped_transaction_stores_nothing_and_reuses_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1).unwrap();
        add(&mut w, &event("cdr", "{}", None));
        drop(w);
        let mut w = store.begin_write(2).unwrap();
        assert_eq!(add(&mut w, &event("cdr", "{}", None)), 1);
        w.commit().unwrap();
    }

    #[test]
    fn same_event_needs_same_kind_same_body_inside_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(5_000).unwrap();
        let a = event("cdr", "{\"x\":1}", None);
        assert!(!w.is_same_event(1, &a, 0).unwrap(), "nothing stored yet");
        assert_eq!(add(&mut w, &a), 1);
        assert!(
            w.is_same_event(1, &a, 0).unwrap(),
            "seen within the same batch"
        );
        w.commit().unwrap();
        let w = store.begin_write(6_000).unwrap();
        assert!(w.is_same_event(1, &a, 5_000).unwrap());
        assert!(
            !w.is_same_event(1, &a, 5_001).unwrap(),
            "outside the window"
        );
        assert!(
            !w.is_same_event(1, &event("sms", "{\"x\":1}", None), 0)
                .unwrap()
        );
        assert!(
            !w.is_same_event(1, &event("cdr", "{\"x\":2}", None), 0)
                .unwrap()
        );
    }

    #[test]
    fn calls_are_found_in_complete_blocks_and_in_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 64 << 20).unwrap();
        let n = CALL_BLOCK * 2 + 100;
        // Call k has events k and k + 500 (a CDR and its recording, apart); every tenth event
        // has no callid (an SMS).
        let callid = |seq: u64| (!seq.is_multiple_of(10)).then(|| format!("call-{}", seq % 500));
        for chunk in (1..=n).collect::<Vec<_>>().chunks(300) {
            let mut w = store.begin_write(1).unwrap();
            for &seq in chunk {
                let id = callid(seq);
                let body = format!("{{\"n\":{seq}}}");
                assert_eq!(add(&mut w, &event("cdr", &body, id.as_deref())), seq);
            }
            w.commit().unwrap();
        }
        let reader = Store::open_reader(dir.path()).unwrap();
        for probe in [1, 499, 1023, 1024, 1500, 2047, 2048, 2100, 2148] {
            let Some(id) = callid(probe) else { continue };
            let want: Vec<u64> = (1..=n).filter(|&s| callid(s) == Some(id.clone())).collect();
            let got: Vec<u64> = reader
                .call_events(&id, |_| true)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(got, want, "{id}");
        }
        let report = reader.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let with_callid = (0..CALL_BLOCK * 2)
            .filter(|&s| s > 0 && s % 10 != 0)
            .count();
        assert_eq!(report.call_entries, with_callid as u64);
    }

    #[test]
    fn a_schema_1_store_is_migrated_on_open_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let n = CALL_BLOCK + 5;
        {
            // Schema 1 as the previous release wrote it.
            let env = Environment::new()
                .set_max_dbs(MAX_DBS)
                .set_map_size(MAP)
                .open(dir.path())
                .unwrap();
            let db = |name| env.create_db(Some(name), DatabaseFlags::empty()).unwrap();
            let (events, calls, dedup, counts, meta) = (
                db("events"),
                db("calls"),
                db("dedup"),
                db("counts"),
                db("meta"),
            );
            db("quarantine");
            let mut txn = env.begin_rw_txn().unwrap();
            txn.put(
                meta,
                b"schema_version",
                &1u32.to_be_bytes(),
                WriteFlags::empty(),
            )
            .unwrap();
            for seq in 1..=n {
                let ev = event("cdr", &format!("{{\"n\":{seq}}}"), None);
                let mut rec = Vec::new();
                ev.as_record(1).encode(&mut rec);
                let key = seq.to_be_bytes();
                txn.put(events, &key, &rec, WriteFlags::empty()).unwrap();
                let mut call = format!("call-{}", seq % 7).into_bytes();
                call.push(0);
                call.extend_from_slice(&key);
                txn.put(calls, &call, &[], WriteFlags::empty()).unwrap();
                let mut d = [0u8; 24];
                d[16..].copy_from_slice(&key);
                d[0] = seq as u8;
                txn.put(dedup, &d, &[], WriteFlags::empty()).unwrap();
            }
            txn.put(counts, b"events/cdr", &n.to_be_bytes(), WriteFlags::empty())
                .unwrap();
            txn.put(
                counts,
                b"day/1970-01-01/cdr",
                &n.to_be_bytes(),
                WriteFlags::empty(),
            )
            .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            Store::open_reader(dir.path()),
            Err(Error::NeedsMigration { found: 1 })
        ));
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let report = store.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let got: Vec<u64> = store
            .call_events("call-3", |_| true)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, (1..=n).filter(|s| s % 7 == 3).collect::<Vec<_>>());
        let mut w = store.begin_write(2).unwrap();
        assert_eq!(add(&mut w, &event("cdr", "{}", None)), n + 1);
        w.commit().unwrap();
        drop(store);
        let reader = Store::open_reader(dir.path()).unwrap();
        assert_eq!(reader.last_seq().unwrap(), Some(n + 1));
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .open(dir.path())
            .unwrap();
        for old in ["calls", "dedup"] {
            assert!(
                matches!(env.open_db(Some(old)), Err(lmdb::Error::NotFound)),
                "{old}"
            );
        }
    }

    #[test]
    fn sequence_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_writer(dir.path(), MAP).unwrap();
            let mut w = store.begin_write(1).unwrap();
            add(&mut w, &event("cdr", "{}", None));
            w.append_quarantine("invalid JSON", &event("cdr", "{", None))
                .unwrap();
            w.commit().unwrap();
        }
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(2).unwrap();
        assert_eq!(add(&mut w, &event("cdr", "{\"n\":2}", None)), 2);
        assert_eq!(
            w.append_quarantine("x", &event("cdr", "[", None)).unwrap(),
            2
        );
        w.commit().unwrap();
        let q = store.quarantined(1).unwrap().unwrap();
        assert_eq!(q.reason, "invalid JSON");
        assert_eq!(q.event.body, b"{");
        assert_eq!(store.counts().unwrap().quarantined, 2);
    }

    #[test]
    fn first_seq_at_finds_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        for (i, t) in [10, 10, 20, 30, 30, 40].iter().enumerate() {
            let mut w = store.begin_write(*t).unwrap();
            add(&mut w, &event("cdr", &format!("{{\"i\":{i}}}"), None));
            w.commit().unwrap();
        }
        let cases = [
            (0, Some(1)),
            (10, Some(1)),
            (11, Some(3)),
            (30, Some(4)),
            (40, Some(6)),
        ];
        for (t, want) in cases {
            assert_eq!(store.first_seq_at(t).unwrap(), want, "t={t}");
        }
        assert_eq!(store.first_seq_at(41).unwrap(), None);
        let seqs = |s: &Scan| s.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let back = store.scan_backward(None, 2, |_| true).unwrap();
        assert_eq!((seqs(&back), back.next, back.done), (vec![6, 5], 5, false));
        let back = store
            .scan_backward(Some(back.next), 10, |r| r.stored_at_ms != 20)
            .unwrap();
        assert_eq!((seqs(&back), back.done), (vec![4, 2, 1], true));
        let fwd = store.scan_forward(2, 3, |r| r.stored_at_ms == 30).unwrap();
        assert_eq!((seqs(&fwd), fwd.next, fwd.done), (vec![4], 5, false));
    }

    #[test]
    fn check_finds_a_consistent_store_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(7).unwrap();
        add(&mut w, &event("cdr", "{\"a\":1}", Some("c")));
        add(&mut w, &event("sms", "{\"b\":1}", None));
        w.append_quarantine("bad", &event("cdr", "{", None))
            .unwrap();
        w.commit().unwrap();
        let report = store.check().unwrap();
        assert_eq!(
            (report.events, report.quarantined, report.call_entries),
            (2, 1, 0),
            "no block is complete yet"
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn reader_refuses_missing_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open_reader(&dir.path().join("nope")),
            Err(Error::Missing(_))
        ));
    }
}
