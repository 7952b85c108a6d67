//! `/recording/SEQ.mp3`: an archived recording, streamed from its file with HTTP Range
//! support (a player seeks without downloading the whole file, and nothing reads it whole
//! into memory). Only files inside the archive directory are served.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::page;
use super::{Body, Console, Response};
use crate::archive::record::State;
use crate::cli::Result;

/// Bytes read from the file per piece when streaming it (each piece one read on the console
/// thread, one write on the connection).
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// A byte range of an open file, to stream. Cloning shares the file.
#[derive(Clone)]
pub struct Slice {
    file: Arc<File>,
    start: u64,
    len: u64,
}

impl Slice {
    /// Its length in bytes (the Content-Length).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next piece of the slice, `done` bytes into it: at most [`STREAM_CHUNK_BYTES`],
    /// empty once it is all read. A blocking read (the disk may be an SD card), so the
    /// listener asks the console thread for it rather than reading on its coroutine.
    ///
    /// # Errors
    /// I/O errors, or the file shrank under the slice.
    pub fn piece(&self, done: u64) -> std::io::Result<Vec<u8>> {
        let left = self.len.saturating_sub(done);
        let want = usize::try_from(left).map_or(STREAM_CHUNK_BYTES, |l| l.min(STREAM_CHUNK_BYTES));
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match self
                .file
                .read_at(&mut buf[got..], self.start + done + got as u64)
            {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }
}

/// What a `Range` field asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The whole file (no Range, or one this server does not split: several ranges).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Nothing of it exists (`416`).
    Unsatisfiable,
}

/// Reads a `Range` field (RFC 9110 §14.1.2, one range of bytes).
pub fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last `b` bytes.
        return match b.parse::<u64>() {
            Ok(0) => Wanted::Unsatisfiable,
            Ok(_) if size == 0 => Wanted::Unsatisfiable,
            Ok(n) => Wanted::Part(size.saturating_sub(n), size - 1),
            Err(_) => Wanted::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Wanted::Whole;
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    let end = match b {
        "" => size - 1,
        b => match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size - 1),
            _ => return Wanted::Whole,
        },
    };
    Wanted::Part(start, end)
}

fn inside(dir: &Path, path: &Path) -> bool {
    match (dir.canonicalize(), path.canonicalize()) {
        (Ok(d), Ok(p)) => p.starts_with(d),
        _ => false,
    }
}

/// Serves recording `seq`'s archived file.
///
/// # Errors
/// Store errors.
pub fn serve(c: &Console, seq: u64, range: Option<&str>) -> Result<Response> {
    let missing =
        |why: &str| Response::html(404, "Not Found", page::message("No recording file", why));
    let Some(dir) = &c.recordings_dir else {
        return Ok(missing("Archiving is off ([recordings] enabled = false)."));
    };
    let Some(record) = c.store.archive_record(seq)? else {
        return Ok(missing("This event has no archived recording."));
    };
    let content_type = match record.state {
        State::Fetched => "audio/mpeg",
        State::Suspicious => "application/octet-stream",
        _ => {
            return Ok(missing(&format!(
                "Its archive state is {}.",
                record.state.name()
            )));
        }
    };
    let Some(path) = record.path.as_deref().map(Path::new) else {
        return Ok(missing("Its archive record names no file."));
    };
    if !inside(dir, path) {
        return Ok(missing("Its file is not in the archive directory."));
    }
    let Ok(file) = File::open(path) else {
        return Ok(missing("Its file cannot be opened (removed by hand?)."));
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut headers = String::from("Accept-Ranges: bytes\r\n");
    if record.state == State::Suspicious {
        // Not audio: a download, never shown inline.
        headers.push_str(&format!(
            "Content-Disposition: attachment; filename=\"recording-{seq}.bin\"\r\n"
        ));
    }
    let (status, reason, start, len) = match wanted(range, size) {
        Wanted::Whole => (200, "OK", 0, size),
        Wanted::Part(s, e) => {
            headers.push_str(&format!("Content-Range: bytes {s}-{e}/{size}\r\n"));
            (206, "Partial Content", s, e - s + 1)
        }
        Wanted::Unsatisfiable => {
            headers.push_str(&format!("Content-Range: bytes */{size}\r\n"));
            return Ok(Response {
                status: 416,
                reason: "Range Not Satisfiable",
                content_type: "text/plain; charset=utf-8",
                headers,
                body: Body::Bytes(b"range not satisfiable\n".to_vec()),
            });
        }
    };
    Ok(Response {
        status,
        reason,
        content_type,
        headers,
        body: Body::File(Slice {
            file: Arc::new(file),
            start,
            len,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_reads_in_pieces_and_notices_a_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp3");
        let bytes: Vec<u8> = (0..(STREAM_CHUNK_BYTES * 2 + 10))
            .map(|i| i as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let slice = Slice {
            file: Arc::new(File::open(&path).unwrap()),
            start: 5,
            len: bytes.len() as u64 - 5,
        };
        let mut got = Vec::new();
        loop {
            let piece = slice.piece(got.len() as u64).unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() <= STREAM_CHUNK_BYTES);
            got.extend(piece);
        }
        assert_eq!(got, bytes[5..]);
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert_eq!(
            slice.piece(0).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        assert_eq!(wanted(None, 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=90-500"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-500"), 100), Wanted::Part(0, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=9-3"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=x-"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
