//! The store: LMDB, and the only place that names `lmdb-rkv`, so the binding can be swapped
//! here alone. Read it like heed: an environment ([`Store`]), a schema ([`layout`]), one cursor
//! walk ([`walk`]) and [`Page`]s of it, short read transactions ([`read`]), the one write
//! transaction ([`write`]), the [`check`](Store::check) of every invariant, migration of older
//! schemas, and the environment's OS side ([`os`]).
//!
//! It owns keys, databases and transactions; the bytes of one record belong to `event.rs`;
//! batching and waking requests belong to the writer. The layout is documented for outside
//! readers in `docs/storage.md` (schema [`SCHEMA_VERSION`]).
//!
//! # Caveats
//! LMDB allows one write transaction at a time per environment, across processes; only the
//! writer thread of `didgate serve` (and `didgate prune`, waiting on LMDB's lock) opens one.
//! Read transactions pin the pages they see, so the read API opens one per call and copies
//! what it returns: no reader holds a transaction while it waits on output. One read
//! transaction per thread at a time is LMDB's rule; the API never nests them.

mod check;
mod fault;
pub mod header;
mod layout;
mod migrate;
mod os;
mod read;
mod walk;
mod write;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use lmdb::{DatabaseFlags, Environment, EnvironmentFlags, Transaction};

pub use check::CheckReport;
pub use fault::contain_faults;
pub use layout::{CALL_BLOCK, SCHEMA_VERSION, body_hash, callid_hash};
pub use os::SpaceInfo;
pub use read::{Counts, Quarantined, StoredEvent};
pub use walk::Page;
pub use write::WriteTxn;

use layout::{Dbs, MAX_DBS, SCHEMA_KEY, get, schema_of};

use crate::event;

/// File mode of the LMDB files: the `didgate` group may read them with the reader tool.
const FILE_MODE: u32 = 0o640;

/// Errors of the storage layer. Every LMDB code the writer can meet is wrapped once here; the
/// writer decides the reaction (the writer), the HTTP layer only ever sees "not committed".
#[derive(Debug)]
pub enum Error {
    /// An LMDB call failed.
    Lmdb(lmdb::Error),
    /// A stored value is not a record this build can read.
    Record {
        /// The sequence number it was found under.
        seq: u64,
        /// What is wrong with it.
        err: event::Error,
    },
    /// A key or value of another database is damaged (wrong length, unknown shape): never
    /// read as a default.
    Corrupt {
        /// The database.
        db: &'static str,
        /// What is wrong, in words.
        what: String,
    },
    /// The store was written by a didgate with another schema version.
    Schema {
        /// The version the store has.
        found: u32,
    },
    /// The store has an older schema that `didgate serve` migrates on start.
    NeedsMigration {
        /// The version the store has.
        found: u32,
    },
    /// There is no store at the path (reader tool).
    Missing(PathBuf),
    /// The data file does not agree with its meta pages: opening it would make LMDB read
    /// past its end.
    Damaged(header::Damage),
    /// This user may not read (or, for the lock file, write) the path.
    PermissionDenied(PathBuf),
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
            Error::Corrupt { db, what } => write!(f, "damaged `{db}` database: {what}"),
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
            Error::Damaged(d) => write!(
                f,
                "{d}; restore the last backup (docs/operations.md, \"A damaged store\")"
            ),
            Error::PermissionDenied(p) => write!(
                f,
                "permission denied: {} (add yourself to the didgate group: \
                 `sudo adduser $USER didgate`, then log in again)",
                p.display()
            ),
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

/// A storage operation's result.
pub type Result<T> = std::result::Result<T, Error>;

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
    path: PathBuf,
    /// How `/proc/self/maps` names the data file (see [`Store::release_mapped_pages`]),
    /// resolved on first use.
    map_suffix: OnceCell<String>,
}

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
        header::check(dir).map_err(Error::Damaged)?;
        let flags = match sync {
            // A commit fdatasyncs its data pages and writes its meta page without a second
            // flush; the meta page reaches the disk with the next fdatasync (the next commit's,
            // or `Store::sync`). The writer answers a batch only after that (`writer::wakeup`).
            // LMDB keeps the file consistent in this mode (the power-cut test shows it): a
            // cut can only undo commits that were not answered yet.
            Sync::EveryCommit => EnvironmentFlags::NO_META_SYNC,
            // Commits are written to the file but not flushed; `Store::sync` flushes. Without
            // MDB_WRITEMAP the written pages are in the page cache, so a process crash loses
            // nothing; a power cut can leave a meta page on disk without the pages it points
            // to, which damages the store (docs/configuration.md, docs/reliability.md).
            Sync::Deferred => EnvironmentFlags::NO_SYNC,
        };
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_map_size(map_bytes)
            .set_flags(flags)
            .open_with_permissions(dir, FILE_MODE)?;
        Self::from_env(env, dir)
    }

    /// Creates the databases if needed and checks the schema (migrating a schema-1 store).
    ///
    /// A new store's databases and its schema version are created in one transaction: a power
    /// cut during creation leaves either no store or a whole one, never databases without a
    /// schema (which readers would have to call damaged).
    fn from_env(env: Environment, dir: &Path) -> Result<Store> {
        let mut txn = env.begin_rw_txn()?;
        let dbs = Dbs::open_with(|name| {
            // SAFETY: no other transaction of this environment opens or creates databases
            // meanwhile: the store is not shared yet, and this transaction ends below before
            // the migration opens the old ones.
            Ok(unsafe { txn.create_db(Some(name), DatabaseFlags::empty())? })
        })?;
        let found = get(&txn, dbs.meta, SCHEMA_KEY)?
            .map(|v| schema_of(dbs.meta, v))
            .transpose()?;
        match found {
            None => {
                layout::put_schema_version(&mut txn, dbs)?;
                txn.commit()?;
            }
            Some(SCHEMA_VERSION) => txn.commit()?,
            Some(1) => {
                txn.commit()?;
                migrate::migrate_from_v1(&env, dbs)?;
            }
            Some(found) => return Err(Error::Schema { found }),
        }
        // Readers may have been killed while holding a slot; clear what they left.
        os::reader_check(&env);
        Ok(Store::new(env, dbs, dir))
    }

    fn new(env: Environment, dbs: Dbs, dir: &Path) -> Store {
        Store {
            env,
            dbs,
            path: dir.to_path_buf(),
            map_suffix: OnceCell::new(),
        }
    }

    /// Opens an existing store for writing from a tool (`didgate prune`), beside a running
    /// `serve` if there is one: LMDB serializes the two writers.
    ///
    /// # Errors
    /// [`Error::Missing`] when `dir` holds no store; LMDB and schema errors otherwise.
    pub fn open_existing_writer(dir: &Path) -> Result<Store> {
        existing_data_file(dir)?;
        header::check(dir).map_err(Error::Damaged)?;
        // No map size is set: LMDB then adopts the one recorded by the server, which may have
        // grown it. (A size set here would replace it, and be raised only to the bytes in use,
        // leaving this writer no room to copy pages on write.)
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .open_with_permissions(dir, FILE_MODE)
            .map_err(|e| open_error(dir, e))?;
        Self::from_env(env, dir)
    }

    /// Opens an existing store read-only, for the reader tool. Works while `serve` runs.
    ///
    /// # Errors
    /// [`Error::Missing`] when `dir` holds no store; LMDB and schema errors otherwise.
    pub fn open_reader(dir: &Path) -> Result<Store> {
        existing_data_file(dir)?;
        header::check(dir).map_err(Error::Damaged)?;
        // The lock file a reader may create gets the store's mode, not 0644.
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_flags(EnvironmentFlags::READ_ONLY)
            .open_with_permissions(dir, FILE_MODE)
            .map_err(|e| open_error(dir, e))?;
        let open = |name: &'static str| match env.open_db(Some(name)) {
            Ok(db) => Ok(db),
            Err(lmdb::Error::NotFound) => Err(Error::Missing(dir.to_path_buf())),
            Err(e) => Err(Error::from(e)),
        };
        // The schema first: an older store lacks some of this schema's databases.
        let meta = layout::Table {
            handle: open("meta")?,
            name: "meta",
        };
        {
            let txn = env.begin_ro_txn()?;
            // Databases without a schema version: a store whose creation never finished (a
            // didgate before schema creation was one transaction); `serve` completes it.
            let found =
                get(&txn, meta, SCHEMA_KEY)?.ok_or_else(|| Error::Missing(dir.to_path_buf()))?;
            match schema_of(meta, found)? {
                SCHEMA_VERSION => {}
                1 => return Err(Error::NeedsMigration { found: 1 }),
                found => return Err(Error::Schema { found }),
            }
        }
        let dbs = Dbs::open_with(open)?;
        // A reader killed mid-read leaves its slot behind; every reader clears such slots before
        // taking one, so hundreds of killed readers never exhaust the table.
        os::reader_check(&env);
        Ok(Store::new(env, dbs, dir))
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
}
/// Whether `dir` holds a data file this user may look at.
///
/// # Errors
/// [`Error::PermissionDenied`] naming the directory or file, [`Error::Missing`] when there is
/// none.
fn existing_data_file(dir: &Path) -> Result<()> {
    let file = dir.join("data.mdb");
    match std::fs::metadata(&file) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::Missing(dir.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // The directory itself, unless it can be listed and only the file is closed.
            let denied = if std::fs::read_dir(dir).is_ok() {
                file
            } else {
                dir.to_path_buf()
            };
            Err(Error::PermissionDenied(denied))
        }
        Err(_) => Err(Error::Missing(dir.to_path_buf())),
    }
}

/// An error of `mdb_env_open`, with a permission problem turned into the path at fault: a
/// reader needs to read `data.mdb` and to write `lock.mdb`.
fn open_error(dir: &Path, e: lmdb::Error) -> Error {
    match e {
        lmdb::Error::Other(code) if code == libc::EACCES || code == libc::EPERM => {
            let lock = dir.join("lock.mdb");
            let writable = |p: &Path| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .is_ok()
            };
            let denied = if lock.exists() && !writable(&lock) {
                lock
            } else if !lock.exists() {
                dir.to_path_buf()
            } else {
                dir.join("data.mdb")
            };
            Error::PermissionDenied(denied)
        }
        e => Error::Lmdb(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BodyFormat, Event};
    use lmdb::{DatabaseFlags, WriteFlags};
    use os::map_line_suffix;

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
        let before = store.events_forward(0, 1000, |_, _| true).unwrap().items;
        assert_eq!(before.len(), 200);
        assert!(mapped_kib(dir.path()) >= 400, "reading maps the pages");
        store.release_mapped_pages().unwrap();
        assert_eq!(mapped_kib(dir.path()), 0);
        assert_eq!(
            store.events_forward(0, 1000, |_, _| true).unwrap().items,
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
            store
                .events_forward(0, 1000, |_, _| true)
                .unwrap()
                .items
                .len(),
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
        let scan = reader.events_forward(0, 10, |_, _| true).unwrap();
        assert_eq!(scan.next, None);
        let all = scan.items;
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

    /// Regression: quarantine numbers were reused once the newest entries were deleted, so
    /// `quarantine show N` showed another body.
    #[test]
    fn quarantine_numbers_never_repeat_after_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1).unwrap();
        assert_eq!(
            w.append_quarantine("a", &event("cdr", "{", None)).unwrap(),
            1
        );
        assert_eq!(
            w.append_quarantine("b", &event("cdr", "[", None)).unwrap(),
            2
        );
        w.commit().unwrap();
        let mut w = store.begin_write(2).unwrap();
        w.delete_quarantined(1).unwrap();
        w.delete_quarantined(2).unwrap();
        w.commit().unwrap();
        drop(store);
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(3).unwrap();
        assert_eq!(
            w.append_quarantine("c", &event("cdr", "]", None)).unwrap(),
            3
        );
        w.commit().unwrap();
        assert_eq!(store.quarantined(1).unwrap(), None);
        assert!(store.check().unwrap().problems.is_empty());
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
        let with_callid =
            |seqs: std::ops::Range<u64>| seqs.filter(|&s| s > 0 && s % 10 != 0).count() as u64;
        // Regression: check counted only the complete blocks (0 on a young store) while `get`
        // found calls in the open block too.
        let blocked = with_callid(0..CALL_BLOCK * 2);
        let unblocked = with_callid(CALL_BLOCK * 2..n + 1);
        assert_eq!(
            (report.call_entries, report.call_entries_unblocked),
            (blocked + unblocked, unblocked)
        );
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
        let seqs = |s: &Page<StoredEvent>| s.items.iter().map(|e| e.seq).collect::<Vec<_>>();
        let back = store.events_backward(None, 2, |_, _| true).unwrap();
        assert_eq!((seqs(&back), back.next), (vec![6, 5], Some(5)));
        let back = store
            .events_backward(back.next, 10, |_, r| r.stored_at_ms != 20)
            .unwrap();
        assert_eq!((seqs(&back), back.next), (vec![4, 2, 1], None));
        let fwd = store
            .events_forward(2, 3, |_, r| r.stored_at_ms == 30)
            .unwrap();
        assert_eq!((seqs(&fwd), fwd.next), (vec![4], Some(5)));
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
            (
                report.events,
                report.quarantined,
                report.call_entries,
                report.call_entries_unblocked
            ),
            (2, 1, 1, 1),
            "no block is complete yet: the one callid is found through its digest"
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
