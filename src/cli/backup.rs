//! `didgate backup PATH`: a consistent, compacted copy of the store (LMDB's copy with
//! compaction, one read transaction's snapshot) and the token, taken while `serve` runs.
//! `docs/operations.md` shows how to restore it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::{Error, Result, emit};
use crate::ops::token::TOKEN_FILE;
use crate::store::Store;

/// Writes the backup into `dest`, which must not exist yet (or be an empty directory).
///
/// # Errors
/// [`Error::Usage`] when `dest` is not empty; store and I/O errors.
pub fn run(
    store: &Store,
    data: &Path,
    archive: &Path,
    dest: &Path,
    out: &mut impl Write,
) -> Result<()> {
    if dest.exists() {
        let empty = std::fs::read_dir(dest)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Error::Usage(format!(
                "{} exists and is not an empty directory",
                dest.display()
            )));
        }
    } else {
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dest)
            .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dest.display())))?;
    }
    store.copy_compacted(dest)?;
    let token = data.join(TOKEN_FILE);
    if token.is_file() {
        let target = dest.join(TOKEN_FILE);
        std::fs::copy(&token, &target)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    }
    let (files, bytes) = copy_archive(archive, &dest.join("recordings"))?;
    let size = std::fs::metadata(dest.join("data.mdb")).map_or(0, |m| m.len());
    let live = std::fs::metadata(data.join("data.mdb")).map_or(0, |m| m.len());
    let mut buf = format!(
        "backed up {} to {} ({size} bytes, compacted from {live}); {files} recordings ({bytes} bytes) from {}\n",
        data.display(),
        dest.display(),
        archive.display()
    )
    .into_bytes();
    emit(out, &mut buf)
}

/// Copies the archived recordings under `from` (not downloads in progress) to `to`, keeping
/// their folders. Recordings archived after the store's snapshot may be copied too; ones
/// deleted meanwhile are skipped. Returns the files and bytes copied.
fn copy_archive(from: &Path, to: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_name() == crate::archive::PARTIAL_DIR {
                continue;
            }
            let Ok(rel) = path.strip_prefix(from) else {
                continue;
            };
            let target = to.join(rel);
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Some(parent) = target.parent() {
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o750)
                            .create(parent)?;
                    }
                    match std::fs::copy(&path, &target) {
                        Ok(n) => {
                            files += 1;
                            bytes += n;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => {}
            }
        }
    }
    Ok((files, bytes))
}
