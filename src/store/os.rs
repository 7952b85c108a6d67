//! The store's dealings with the operating system and LMDB's environment as a whole: map
//! size and growth, flushing, releasing mapped pages, zero-filled room in the data file, free
//! disk space, compacted copies, stale reader slots.
//!
//! Nothing here reads or writes records; every function works on the environment or the file.

use std::path::Path;

use lmdb::Environment;

use super::{Error, Result, Store};

/// Buffer for reading `/proc/self/maps` in [`Store::release_mapped_pages`].
const MAPS_READ_BYTES: usize = 8 * 1024;

/// How the kernel ends a `/proc/self/maps` (or `smaps`) line that maps the data file in
/// `dir`: a space, then its canonical path. The path is fixed for a store's life.
pub(super) fn map_line_suffix(dir: &Path) -> std::io::Result<String> {
    let file = std::fs::canonicalize(dir.join("data.mdb"))?;
    Ok(format!(" {}", file.display()))
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

impl Store {
    /// Whether the environment is still usable for writing. After some failures (a meta page
    /// that could not be written) LMDB marks it unusable and says so only when the next
    /// transaction begins; this begins (and drops) one to find out now.
    pub fn is_unusable(&self) -> bool {
        matches!(self.env.begin_rw_txn(), Err(lmdb::Error::Panic))
    }

    /// Grows the map to `bytes`. LMDB allows this only while this process has no write
    /// transaction open, which the single writer guarantees by calling it between batches.
    ///
    /// LMDB unmaps the old map before it maps the new one, and when that mmap fails it keeps
    /// pointing at the old, unmapped address: the next call into the environment faults. So
    /// the room for the new map is tried first, with a reservation that is given back at once,
    /// and a growth that cannot fit never reaches LMDB: the environment keeps its old map and
    /// the caller answers `MDB_MAP_FULL` as at the maximum.
    ///
    /// # Errors
    /// [`Error::MapGrowth`] when the address space has no room (a 32-bit host, `RLIMIT_AS`),
    /// or LMDB refused.
    pub fn grow_map(&self, bytes: u64) -> Result<()> {
        let size = usize::try_from(bytes).map_err(|_| Error::MapGrowth {
            bytes,
            why: std::io::Error::other("larger than this host's address space"),
        })?;
        address_space_has_room(size).map_err(|why| Error::MapGrowth { bytes, why })?;
        self.set_map_size(size)
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
    /// each commit) stays mapped, so the resident size the operator sees (`VmRSS`, `top`) would grow
    /// with the data written (gigabytes under sustained load), all of it reclaimable page
    /// cache, none of it the gateway's own memory. Called every `writer::MAP_RELEASE_INTERVAL`, it
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
        // Line by line through a small buffer: with a thousand connections the table is over
        // a hundred kilobytes, and reading it whole each time kept megabytes more of heap
        // resident.
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
        free_bytes(&self.path).map_err(Error::Io)
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

/// Whether `bytes` of address space can be mapped now: reserves them (no access, no memory,
/// no swap) and gives them back.
fn address_space_has_room(bytes: usize) -> std::io::Result<()> {
    // SAFETY: an anonymous PROT_NONE mapping at an address of the kernel's choosing touches
    // nothing that exists; it is unmapped right after, with the address and length mmap gave.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        libc::munmap(p, bytes);
    }
    Ok(())
}

/// Clears reader slots of dead processes (`mdb_reader_check`); harmless when there are none.
pub(super) fn reader_check(env: &Environment) -> usize {
    let mut dead: libc::c_int = 0;
    // SAFETY: `env.env()` is the live environment handle owned by `env` for this call's
    // duration, and `dead` is a valid out-pointer.
    unsafe {
        lmdb_sys::mdb_reader_check(env.env(), &mut dead);
    }
    usize::try_from(dead).unwrap_or(0)
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
///
/// # Errors
/// `statvfs` failed.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: statvfs is all zeroes-valid plain data.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The fields are 32-bit on 32-bit targets (armv7), 64-bit elsewhere.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(free)
}
