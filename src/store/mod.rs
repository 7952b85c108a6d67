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

pub mod archive;
mod calls;
mod check;
mod consumer;
pub mod delivery;
mod fault;
pub mod header;
mod layout;
mod migrate;
mod os;
mod read;
mod walk;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use lmdb::{DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};

pub use calls::{CallEntry, CallsPage, KnownFacts, Unfiled};
pub use check::CheckReport;
pub use fault::contain_faults;
pub use layout::{CALL_BLOCK, SCHEMA_VERSION, body_hash, callid_hash};
pub use os::{SpaceInfo, free_bytes};
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
    /// The map could not grow to `bytes`: the address space has no room for it.
    MapGrowth {
        /// The size asked for.
        bytes: u64,
        /// What mmap said.
        why: std::io::Error,
    },
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
            Error::MapGrowth { bytes, why } => write!(
                f,
                "cannot grow the map to {bytes} bytes ({why}): the address space has no room \
                 for it; the store keeps its current map (lower max_map_size_bytes, or prune)"
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
    map_suffix: OnceLock<String>,
    /// Held shared by every read transaction of this process and exclusively while the map
    /// is resized: LMDB allows `mdb_env_set_mapsize` only while this process has no
    /// transaction open, and the forwarder's threads read while the writer may grow the map.
    resize: RwLock<()>,
}

/// A read transaction that also holds the [`Store::resize`] gate shared until it ends.
pub(crate) struct ReadTxn<'env> {
    // Declared first so it ends before the gate is released.
    txn: lmdb::RoTransaction<'env>,
    _gate: RwLockReadGuard<'env, ()>,
}

impl Transaction for ReadTxn<'_> {
    fn txn(&self) -> *mut lmdb_sys::MDB_txn {
        self.txn.txn()
    }

    /// A read transaction has nothing to commit: it is ended (LMDB's abort), with its gate.
    fn commit(self) -> lmdb::Result<()> {
        drop(self);
        Ok(())
    }

    fn abort(self) {
        drop(self);
    }
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
            Some(5) => {
                // Schema 6 files events in the call index after their commit, up to a
                // watermark; schema 5 filed every event in its own commit.
                let next = layout::next_seq(&txn, dbs)?;
                txn.put(
                    dbs.meta.handle,
                    &layout::INDEXED_SEQ_KEY,
                    &next.to_be_bytes(),
                    WriteFlags::empty(),
                )?;
                layout::put_schema_version(&mut txn, dbs)?;
                txn.commit()?;
            }
            Some(old @ 1..=4) => {
                // Schema 3 added the archive's databases, 4 the delivery databases, 5 the
                // call index and rollups: all created above, the index built below.
                let queued = if old == 2 {
                    archive::queue_recent(&mut txn, dbs, crate::timestamp::now_ms())?
                } else {
                    0
                };
                txn.commit()?;
                if old == 1 {
                    migrate::migrate_from_v1(&env, dbs)?;
                }
                migrate::build_call_index(&env, dbs)?;
                let mut txn = env.begin_rw_txn()?;
                layout::put_schema_version(&mut txn, dbs)?;
                txn.commit()?;
                if queued > 0 {
                    crate::ops::log::info(format_args!(
                        "{queued} recordings of the last 7 days queued for archiving"
                    ));
                }
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
            map_suffix: OnceLock::new(),
            resize: RwLock::new(()),
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
                found @ (1..=5) => return Err(Error::NeedsMigration { found }),
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
    fn read_txn(&self) -> Result<ReadTxn<'_>> {
        let gate = self
            .resize
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let txn = match self.env.begin_ro_txn() {
            Err(lmdb::Error::MapResized) => {
                drop(gate);
                self.set_map_size(0)?;
                return self.read_txn();
            }
            other => other?,
        };
        Ok(ReadTxn { txn, _gate: gate })
    }

    /// Sets the map size (0: adopt the size another process recorded) with the resize gate
    /// held exclusively, so no read transaction of this process is open meanwhile.
    fn set_map_size(&self, size: usize) -> Result<()> {
        let _gate = self
            .resize
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.env.set_map_size(size)?)
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
mod tests;
