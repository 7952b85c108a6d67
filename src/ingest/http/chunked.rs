//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.

use super::Error;

/// Longest chunk-size line (size, extensions, CRLF) accepted. Sizes need at most 16 hex digits;
/// extensions are ignored (RFC 9112 §7.1.1 lets a recipient ignore them) but bounded so a
/// client cannot make the server buffer them.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// Incremental decoder of the chunked transfer coding (RFC 9112 §7.1):
///
/// ```text
/// chunked-body   = *chunk last-chunk trailer-section CRLF
/// chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-size     = 1*HEXDIG
/// last-chunk     = 1*("0") [ chunk-ext ] CRLF
/// trailer-section = *( field-line CRLF )
/// ```
///
/// Line endings inside the chunked framing must be CRLF: a bare LF or CR here is a classic
/// request-smuggling disagreement between proxies, so it is refused. Extensions are skipped;
/// trailer fields are read and discarded (the gateway stores bodies only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of the current size line or trailer section, bounded.
    line_bytes: usize,
    max_body: usize,
    max_trailer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to CR.
    Extension {
        size: u64,
    },
    /// Saw CR after the size line; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data; this many bytes remain.
    Data {
        remaining: u64,
    },
    /// After chunk data: CR expected.
    DataCr,
    /// After chunk data and CR: LF expected.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR inside/after a trailer line; LF must follow. `empty` when the line was empty.
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `max_body` bytes and trailers over `max_trailer`.
    pub fn new(max_body: usize, max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            line_bytes: 0,
            max_body,
            max_trailer,
        }
    }

    /// Consumes framing from `input`, appending chunk data to `body`. Returns how many bytes
    /// were consumed and whether the body is complete (the bytes after it belong to the next
    /// request).
    ///
    /// # Errors
    /// [`Error::BadChunk`] for broken framing, [`Error::BodyTooLarge`] past the limit.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), Error> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => return Ok((i, true)),
                ChunkState::Size { size, digits } => {
                    self.count_line_byte()?;
                    if let Some(d) = hex_value(b) {
                        if digits >= 16 {
                            return Err(Error::BadChunk("chunk size too large"));
                        }
                        self.state = ChunkState::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(Error::BadChunk("invalid chunk size"));
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf { size };
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        // BWS before `;` is tolerated (RFC 9112 §7.1.1).
                        self.state = ChunkState::Extension { size };
                    } else {
                        return Err(Error::BadChunk("invalid chunk size"));
                    }
                    i += 1;
                }
                ChunkState::Extension { size } => {
                    self.count_line_byte()?;
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf { size },
                        b'\n' | 0 => return Err(Error::BadChunk("invalid chunk extension")),
                        _ => {}
                    }
                    i += 1;
                }
                ChunkState::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Error::BadChunk("chunk size line must end with CRLF"));
                    }
                    self.line_bytes = 0;
                    i += 1;
                    if size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        if (body.len() as u64).saturating_add(size) > self.max_body as u64 {
                            return Err(Error::BodyTooLarge);
                        }
                        self.state = ChunkState::Data { remaining: size };
                    }
                }
                ChunkState::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Error::BadChunk("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Error::BadChunk("chunk data must end with CRLF"));
                    }
                    self.state = ChunkState::Size { size: 0, digits: 0 };
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.count_trailer_byte()?;
                    self.state = match b {
                        b'\r' => ChunkState::TrailerLf { empty: true },
                        b'\n' => return Err(Error::BadChunk("trailer must end with CRLF")),
                        b' ' | b'\t' => return Err(Error::BadChunk("obsolete line folding")),
                        _ => ChunkState::TrailerLine,
                    };
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    self.count_trailer_byte()?;
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf { empty: false },
                        b'\n' | 0 => return Err(Error::BadChunk("invalid trailer field")),
                        _ => {}
                    }
                    i += 1;
                }
                ChunkState::TrailerLf { empty } => {
                    self.count_trailer_byte()?;
                    if b != b'\n' {
                        return Err(Error::BadChunk("trailer must end with CRLF"));
                    }
                    i += 1;
                    if empty {
                        self.state = ChunkState::Done;
                        return Ok((i, true));
                    }
                    self.state = ChunkState::TrailerStart;
                }
            }
        }
        Ok((i, self.state == ChunkState::Done))
    }

    fn count_line_byte(&mut self) -> Result<(), Error> {
        self.line_bytes += 1;
        if self.line_bytes > MAX_CHUNK_LINE_BYTES {
            return Err(Error::BadChunk("chunk size line too long"));
        }
        Ok(())
    }

    fn count_trailer_byte(&mut self) -> Result<(), Error> {
        self.line_bytes += 1;
        if self.line_bytes > self.max_trailer {
            return Err(Error::HeadTooLarge);
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(input: &[u8], max_body: usize) -> Result<(usize, bool, Vec<u8>), Error> {
        let mut d = ChunkedDecoder::new(max_body, 256);
        let mut body = Vec::new();
        let (n, done) = d.decode(input, &mut body)?;
        Ok((n, done, body))
    }

    #[test]
    fn chunked_table() {
        let ok: &[(&str, &str, usize)] = &[
            ("5\r\nhello\r\n0\r\n\r\n", "hello", 15),
            ("5\r\nhello\r\n0\r\n\r\nPOST", "hello", 15),
            ("2;name=val\r\nab\r\n1 ; x\r\nc\r\n000\r\n\r\n", "abc", 33),
            (
                "A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
                "0123456789",
                34,
            ),
            ("0\r\n\r\n", "", 5),
        ];
        for (input, body, consumed) in ok {
            let (n, done, got) = dechunk(input.as_bytes(), 64).unwrap();
            assert!(done, "{input:?}");
            assert_eq!(
                (n, got.as_slice()),
                (*consumed, body.as_bytes()),
                "{input:?}"
            );
        }
        let bad: &[&str] = &[
            "x\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "5\r\nhelloX\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "0\r\n\n",
            "0\r\nX: 1\n\r\n",
            "0\r\n folded\r\n\r\n",
            "11111111111111111\r\n",
            "\r\n",
        ];
        for input in bad {
            assert!(
                matches!(dechunk(input.as_bytes(), 64), Err(Error::BadChunk(_))),
                "{input:?}"
            );
        }
        assert_eq!(dechunk(b"41\r\n", 64), Err(Error::BodyTooLarge));
        assert_eq!(dechunk(b"20\r\n", 64).map(|r| r.1), Ok(false));
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE_BYTES));
        assert!(dechunk(long_ext.as_bytes(), 64).is_err());
    }

    #[test]
    fn chunked_split_anywhere_gives_same_body() {
        let input = b"3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
        let (_, _, whole) = dechunk(input, 64).unwrap();
        for split in 0..input.len() {
            let mut d = ChunkedDecoder::new(64, 256);
            let mut body = Vec::new();
            let (a, done_a) = d.decode(&input[..split], &mut body).unwrap();
            assert_eq!(a, split);
            assert!(!done_a);
            let (b, done_b) = d.decode(&input[split..], &mut body).unwrap();
            assert!(done_b, "split {split}");
            assert_eq!(a + b, input.len());
            assert_eq!(body, whole, "split {split}");
        }
    }
}
