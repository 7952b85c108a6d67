//! The data file checked against what its two meta pages claim, before LMDB maps it.
//!
//! LMDB trusts the file: a `data.mdb` shorter than its last page (a bad copy, a full disk
//! during a restore) or with a damaged meta page makes it read through the map past the file's
//! end, and the process dies of SIGBUS, with no message. So every open reads the first two
//! pages with plain file I/O and refuses, naming the file and what is wrong, when the magic,
//! the version, the page size or the size the newest meta page implies do not hold.
//!
//! The layout read here is LMDB 0.9's (`MDB_page` then `MDB_meta`, native endianness, `pgno_t`
//! and `size_t` as wide as a pointer), the one lmdb-rkv-sys bundles.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `MDB_MAGIC`: the first word of every meta.
const MAGIC: u32 = 0xBEEF_C0DE;
/// `MDB_DATA_VERSION` of LMDB 0.9.
const DATA_VERSION: u32 = 1;
/// `P_META`: the page flag of both meta pages.
const P_META: u16 = 0x08;
/// `P_INVALID`: the root of an empty database.
const P_INVALID: u64 = if usize::BITS == 64 {
    u64::MAX
} else {
    u32::MAX as u64
};
/// Bytes of `pgno_t`, `size_t` and pointers.
const WORD: usize = (usize::BITS / 8) as usize;
/// `PAGEHDRSZ`: the page header before the meta (pgno, pad, flags, lower, upper).
const PAGE_HEADER: usize = WORD + 2 + 2 + 2 + 2;
/// `sizeof(MDB_db)`: pad, flags, depth, branch/leaf/overflow pages, entries, root.
const DB_RECORD: usize = 4 + 2 + 2 + 5 * WORD;
/// Offsets inside `MDB_meta`.
const META_VERSION: usize = 4;
const META_DBS: usize = 4 + 4 + WORD + WORD;
const META_LAST_PAGE: usize = META_DBS + 2 * DB_RECORD;
const META_TXNID: usize = META_LAST_PAGE + WORD;
const META_BYTES: usize = META_TXNID + WORD;
/// Offset of `md_root` inside an `MDB_db`.
const DB_ROOT: usize = 4 + 2 + 2 + 4 * WORD;
/// The page sizes LMDB may have used (the OS page size when the file was created).
const PAGE_SIZES: std::ops::RangeInclusive<usize> = 512..=65_536;

/// What the meta pages say, when the file agrees with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Bytes per page.
    pub page_size: usize,
    /// The transaction id of the newest meta: 0 means no transaction was ever committed.
    pub txnid: u64,
    /// The last page the newest meta uses.
    pub last_page: u64,
}

/// Why a data file cannot be opened safely.
#[derive(Debug)]
pub struct Damage {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, in words.
    pub what: String,
    /// The file holds no committed transaction: no meta page in it is valid, or the newest
    /// valid one has transaction id 0 (LMDB's own initial state). Every event is committed in
    /// a transaction whose meta page is written after its data, so none can be in it. A power
    /// cut while a store was being created leaves such a file (part of LMDB's first write, or
    /// the first commit's pages without its meta page); nothing was ever acknowledged from it.
    pub unborn: bool,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is damaged: {}", self.file.display(), self.what)
    }
}

/// One meta page, as read.
struct Page {
    flags: u16,
    magic: u32,
    version: u32,
    page_size: usize,
    roots: [u64; 2],
    last_page: u64,
    txnid: u64,
}

fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w[..WORD].copy_from_slice(&b[at..at + WORD]);
    if WORD == 4 {
        u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    } else {
        u64::from_ne_bytes(w)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Page {
    /// Decodes the meta at the start of `b` (at least `PAGE_HEADER + META_BYTES` bytes).
    fn decode(b: &[u8]) -> Page {
        let m = &b[PAGE_HEADER..PAGE_HEADER + META_BYTES];
        let db = |i: usize| &m[META_DBS + i * DB_RECORD..META_DBS + (i + 1) * DB_RECORD];
        Page {
            flags: u16::from_ne_bytes([b[WORD + 2], b[WORD + 3]]),
            magic: u32_at(m, 0),
            version: u32_at(m, META_VERSION),
            // The free database's `md_pad` holds the page size (LMDB's `mm_psize`).
            page_size: u32_at(db(0), 0) as usize,
            roots: [word(db(0), DB_ROOT), word(db(1), DB_ROOT)],
            last_page: word(m, META_LAST_PAGE),
            txnid: word(m, META_TXNID),
        }
    }

    fn problem(&self, which: usize) -> Option<String> {
        if self.magic != MAGIC {
            return Some(format!("meta page {which} has no LMDB magic number"));
        }
        if self.version != DATA_VERSION {
            return Some(format!(
                "meta page {which} has LMDB data version {}, not {DATA_VERSION}",
                self.version
            ));
        }
        if self.flags & P_META == 0 {
            return Some(format!("page {which} is not marked as a meta page"));
        }
        None
    }
}

/// Reads `data.mdb` in `dir` and checks it against its meta pages. `Ok(None)` when there is no
/// file yet (LMDB creates it).
///
/// # Errors
/// [`Damage`] naming the file and the first thing that does not hold; an I/O error reading it
/// is reported the same way.
pub fn check(dir: &Path) -> Result<Option<Meta>, Damage> {
    let file = dir.join("data.mdb");
    let damage = |what: String| Damage {
        file: file.clone(),
        what,
        unborn: false,
    };
    let mut f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // Permissions and the like are the opener's to report, with its own words.
        Err(_) => return Ok(None),
    };
    let len = f
        .metadata()
        .map_err(|e| damage(format!("cannot read its size: {e}")))?
        .len();
    let need = (PAGE_HEADER + META_BYTES) as u64;
    if len < need {
        return Err(Damage {
            unborn: true,
            ..damage(format!(
                "{len} bytes, too short for LMDB's first meta page ({need} bytes)"
            ))
        });
    }
    match check_metas(&mut f, len, damage) {
        Err(d) => {
            // No data page fits in a file no longer than the two meta pages.
            let (newest, page_size) = newest_valid_meta(&mut f, len);
            let unborn = newest.is_none_or(|t| t == 0) || len <= 2 * page_size as u64;
            Err(Damage { unborn, ..d })
        }
        Ok(meta) => Ok(Some(meta)),
    }
}

/// The highest transaction id of a valid meta page (magic, version, meta flag), if any, and the
/// page size. The second meta page is where the first one's page size puts it, or, when the
/// first is not valid, at the OS page size (where LMDB puts it in a store it creates).
fn newest_valid_meta(f: &mut std::fs::File, len: u64) -> (Option<u64>, usize) {
    let mut read_at = |at: u64| {
        let mut page = vec![0u8; PAGE_HEADER + META_BYTES];
        if at + page.len() as u64 > len {
            return None;
        }
        std::io::Seek::seek(f, std::io::SeekFrom::Start(at)).ok()?;
        f.read_exact(&mut page).ok()?;
        let meta = Page::decode(&page);
        meta.problem(0).is_none().then_some(meta)
    };
    let first = read_at(0);
    let page_size = first
        .as_ref()
        .map_or(os_page_size(), |m| m.page_size)
        .clamp(*PAGE_SIZES.start(), *PAGE_SIZES.end());
    let second = read_at(page_size as u64);
    let newest = [first, second].iter().flatten().map(|m| m.txnid).max();
    (newest, page_size)
}

/// The OS page size, LMDB's page size for a store it creates.
fn os_page_size() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(512)
}

fn check_metas(
    f: &mut std::fs::File,
    len: u64,
    damage: impl Fn(String) -> Damage,
) -> Result<Meta, Damage> {
    let mut first = vec![0u8; PAGE_HEADER + META_BYTES];
    f.read_exact(&mut first)
        .map_err(|e| damage(format!("cannot read meta page 0: {e}")))?;
    let meta0 = Page::decode(&first);
    if let Some(p) = meta0.problem(0) {
        return Err(damage(p));
    }
    let psize = meta0.page_size;
    if !PAGE_SIZES.contains(&psize) || !psize.is_power_of_two() {
        return Err(damage(format!(
            "meta page 0 claims a page size of {psize} bytes"
        )));
    }
    if len < 2 * psize as u64 {
        return Err(damage(format!(
            "{len} bytes, shorter than its two meta pages ({} bytes)",
            2 * psize
        )));
    }
    let mut second = vec![0u8; PAGE_HEADER + META_BYTES];
    std::io::Seek::seek(f, std::io::SeekFrom::Start(psize as u64))
        .and_then(|_| f.read_exact(&mut second))
        .map_err(|e| damage(format!("cannot read meta page 1: {e}")))?;
    let meta1 = Page::decode(&second);
    if let Some(p) = meta1.problem(1) {
        return Err(damage(p));
    }
    // LMDB uses the meta with the higher transaction id.
    let newest = if meta1.txnid > meta0.txnid {
        &meta1
    } else {
        &meta0
    };
    let pages = newest.last_page.saturating_add(1);
    let implied = pages.saturating_mul(psize as u64);
    if len < implied {
        return Err(damage(format!(
            "{len} bytes, but its newest meta page (transaction {}) uses {pages} pages of \
             {psize} bytes ({implied} bytes): the file was cut short",
            newest.txnid
        )));
    }
    for (i, root) in newest.roots.iter().enumerate() {
        if *root != P_INVALID && *root > newest.last_page {
            return Err(damage(format!(
                "database {i}'s root page {root} lies past the last page {}",
                newest.last_page
            )));
        }
    }
    Ok(Meta {
        page_size: psize,
        txnid: newest.txnid,
        last_page: newest.last_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn store_with_data(dir: &Path) {
        let store = Store::open_writer(dir, 16 << 20).unwrap();
        let mut w = store.begin_write(1).unwrap();
        for i in 0..200 {
            let ev = crate::event::Event {
                kind: "cdr".into(),
                format: crate::event::BodyFormat::Json,
                peer: None,
                content_type: vec![],
                body: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(500)).into_bytes(),
                callid: None,
                call: None,
            }
            .with_call_facts();
            w.append_event(&ev, crate::store::body_hash(&ev.body))
                .unwrap();
        }
        w.commit().unwrap();
        store.sync().unwrap();
    }

    #[test]
    fn a_whole_store_passes_and_a_cut_or_scribbled_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store_with_data(dir.path());
        let meta = check(dir.path()).unwrap().unwrap();
        assert!(meta.txnid > 0 && meta.last_page > 2);
        let data = std::fs::read(dir.path().join("data.mdb")).unwrap();

        let cut = tempfile::tempdir().unwrap();
        let keep = (meta.last_page as usize) * meta.page_size;
        std::fs::write(cut.path().join("data.mdb"), &data[..keep]).unwrap();
        let e = check(cut.path()).unwrap_err();
        assert!(e.what.contains("cut short") && !e.unborn, "{e}");
        assert!(e.to_string().contains("data.mdb"), "{e}");

        // The first commit's pages reached the disk, its meta pages did not: no valid meta,
        // nothing committed.
        let unmetaed = tempfile::tempdir().unwrap();
        let mut pages = data.clone();
        pages[..2 * meta.page_size].fill(0);
        std::fs::write(unmetaed.path().join("data.mdb"), &pages).unwrap();
        let e = check(unmetaed.path()).unwrap_err();
        assert!(e.unborn && e.what.contains("magic"), "{e}");
        // One meta page scribbled in a store with commits: damaged, never unborn.
        let mut one = data.clone();
        one[meta.page_size + PAGE_HEADER] ^= 0xff;
        let onedir = tempfile::tempdir().unwrap();
        std::fs::write(onedir.path().join("data.mdb"), &one).unwrap();
        let e = check(onedir.path()).unwrap_err();
        assert!(!e.unborn, "{e}");

        let tiny = tempfile::tempdir().unwrap();
        std::fs::write(tiny.path().join("data.mdb"), &data[..PAGE_HEADER + 50]).unwrap();
        let e = check(tiny.path()).unwrap_err();
        assert!(e.what.contains("too short") && e.unborn, "{e}");
        // The first kilobyte of a store: both metas' place, no valid second meta, no
        // transaction that could have been acknowledged.
        std::fs::write(tiny.path().join("data.mdb"), &data[..1024]).unwrap();
        assert!(check(tiny.path()).unwrap_err().unborn);
        assert!(!e.to_string().is_empty());

        let scribbled = tempfile::tempdir().unwrap();
        let mut bad = data.clone();
        bad[PAGE_HEADER] ^= 0xff;
        std::fs::write(scribbled.path().join("data.mdb"), &bad).unwrap();
        assert!(check(scribbled.path()).unwrap_err().what.contains("magic"));

        let empty = tempfile::tempdir().unwrap();
        assert_eq!(check(empty.path()).unwrap(), None);
    }
}
