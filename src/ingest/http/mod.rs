//! HTTP/1.1 request framing (RFC 9112): the request head, the body length, and chunked
//! transfer coding. Pure functions and a state machine over bytes; no I/O.
//!
//! Owns deciding where a request starts and ends and whether its framing can be trusted. It
//! does not own routing (`route.rs`), what statuses mean on the wire (`response.rs`), or
//! reading from sockets (`connection.rs`). "Need more bytes" is [`Status::Partial`], never an
//! error.

use std::mem::MaybeUninit;

use memchr::memchr_iter;

/// Upper bound of `max_headers`. 128 is above the 100 fields a request may carry.
pub const HEADER_SLOTS: usize = 128;

/// Header slots on the coroutine stack (32 bytes each). A head with more fields is parsed
/// again with `max_headers` slots on the heap. Every stack page a frame reaches stays resident
/// for the life of the connection, so the common case (didlogic sends under ten fields) keeps
/// 1 KiB on the stack instead of 4 KiB: one page less per connection (measured with 1,000
/// keep-alive connections).
const STACK_HEADER_SLOTS: usize = 32;

/// Longest chunk-size line (size, extensions, CRLF) accepted. Sizes need at most 16 hex digits;
/// extensions are ignored (RFC 9112 §7.1.1 lets a recipient ignore them) but bounded so a
/// client cannot make the server buffer them.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// How large a request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header fields, terminating blank line included.
    pub max_head_bytes: usize,
    /// Header fields per request (at most [`HEADER_SLOTS`]).
    pub max_headers: usize,
    /// Body bytes after de-chunking. Also bounds trailer fields (counted against the head limit).
    pub max_body_bytes: usize,
}

/// A parse that may need more input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status<T> {
    Complete(T),
    Partial,
}

/// Why a request cannot be served; each maps to one status in `response.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Request line longer than the head limit allows (414).
    UriTooLong,
    /// Head larger than the limit (431).
    HeadTooLarge,
    /// More header fields than allowed (431).
    TooManyHeaders,
    /// The head does not parse (400); the reason is httparse's or ours.
    Malformed(&'static str),
    /// Not HTTP/1.0 or HTTP/1.1 (505).
    Version,
    /// Content-Length is not digits only, or too large to represent (400).
    BadContentLength,
    /// Several Content-Length values that differ (400).
    ConflictingContentLength,
    /// Content-Length together with Transfer-Encoding: a smuggling shape (400, close).
    LengthWithTransferEncoding,
    /// A transfer coding other than a single final `chunked` (501).
    UnsupportedTransferEncoding,
    /// An `Expect` other than `100-continue` (417).
    UnsupportedExpectation,
    /// Body larger than the limit, known from Content-Length or met while de-chunking (413).
    BodyTooLarge,
    /// Chunked framing is broken (400).
    BadChunk(&'static str),
}

impl Error {
    /// A short fixed description, for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::UriTooLong => "request target too long",
            Error::HeadTooLarge => "request head too large",
            Error::TooManyHeaders => "too many header fields",
            Error::Malformed(r) | Error::BadChunk(r) => r,
            Error::Version => "unsupported HTTP version",
            Error::BadContentLength => "invalid Content-Length",
            Error::ConflictingContentLength => "conflicting Content-Length",
            Error::LengthWithTransferEncoding => "Content-Length with Transfer-Encoding",
            Error::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            Error::UnsupportedExpectation => "unsupported Expect",
            Error::BodyTooLarge => "body too large",
        }
    }
}

/// The request method, as far as the gateway cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Post,
    Other,
}

/// How the body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow the head (0 when neither header is present).
    Length(usize),
    /// Chunked transfer coding follows.
    Chunked,
}

/// A parsed request head, owned so the read buffer can move on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub target: Vec<u8>,
    /// HTTP/1.0 (keep-alive only on request, no chunked bodies).
    pub http10: bool,
    pub framing: Framing,
    /// Whether the client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    pub content_type: Option<Vec<u8>>,
    /// Bytes of the head, blank line included; the body starts here.
    pub len: usize,
}

/// Bytes parsed before a head end is seen, for early rejection of garbage. Re-parsing only this
/// prefix keeps a byte-at-a-time client from costing quadratic work.
const EARLY_PARSE_BYTES: usize = 1024;

fn head_error(e: httparse::Error) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        httparse::Error::Version => Error::Version,
        httparse::Error::HeaderName => Error::Malformed("invalid header name"),
        httparse::Error::HeaderValue => Error::Malformed("invalid header value"),
        httparse::Error::NewLine => Error::Malformed("invalid line ending"),
        _ => Error::Malformed("invalid request line"),
    }
}

/// Parses the request head at the start of `buf`.
///
/// # Errors
/// [`Error`] when the head is malformed or over a limit; the caller answers and closes.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Status<Head>, Error> {
    let wanted = limits.max_headers.min(HEADER_SLOTS);
    // Uninitialised slots: httparse fills only what it parses, so a request with 8 headers
    // does not pay for zeroing all of them (measured: a third of parse_head's time).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADER_SLOTS];
    if wanted <= STACK_HEADER_SLOTS {
        return parse_head_in(buf, limits, &mut slots[..wanted]);
    }
    match parse_head_in(buf, limits, &mut slots) {
        Err(Error::TooManyHeaders) => {
            let mut heap = Vec::with_capacity(wanted);
            heap.resize_with(wanted, MaybeUninit::uninit);
            parse_head_in(buf, limits, &mut heap)
        }
        other => other,
    }
}

fn parse_head_in<'b>(
    buf: &'b [u8],
    limits: &Limits,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Status<Head>, Error> {
    // Only the first `max_head_bytes` can hold a head, and looking at exactly that window makes
    // the verdict independent of how the bytes were split into reads.
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let Some(end) = find_head_end(window) else {
        // Garbage (a TLS ClientHello, binary noise) is refused from its first bytes instead of
        // waiting out the head deadline; httparse reads sequentially, so an error in this
        // prefix is the error the whole head would give.
        let prefix = &window[..window.len().min(EARLY_PARSE_BYTES)];
        if let Err(e) = httparse::Request::new(&mut []).parse_with_uninit_headers(prefix, slots) {
            return Err(head_error(e));
        }
        if buf.len() >= limits.max_head_bytes {
            return Err(if memchr::memchr(b'\n', window).is_none() {
                Error::UriTooLong
            } else {
                Error::HeadTooLarge
            });
        }
        return Ok(Status::Partial);
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(&window[..end], slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(Error::Malformed("invalid request line")),
        Err(e) => return Err(head_error(e)),
    };
    let http10 = req.version == Some(0);
    let mut content_length: Option<usize> = None;
    let mut transfer_codings = 0usize;
    let mut chunked_last = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut hosts = 0;
    let mut content_type = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 item 5: a list of identical values may be treated as one; any
            // difference is unrecoverable framing.
            for v in h.value.split(|&b| b == b',') {
                let n = parse_content_length(v.trim_ascii())?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(Error::ConflictingContentLength);
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // RFC 9112 §6.1: transfer-coding list; chunked must be last and only once.
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                transfer_codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
            if transfer_codings == 0 {
                return Err(Error::Malformed("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(Error::UnsupportedExpectation);
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-type") && content_type.is_none() {
            content_type = Some(h.value.to_vec());
        }
    }
    // RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without exactly one Host.
    if !http10 && hosts != 1 {
        return Err(Error::Malformed("missing or repeated Host"));
    }
    let framing = if transfer_codings > 0 {
        // RFC 9112 §6.1: Transfer-Encoding with Content-Length "ought to be handled as an
        // error"; with HTTP/1.0 the framing is faulty. Both are smuggling shapes: refuse.
        if content_length.is_some() {
            return Err(Error::LengthWithTransferEncoding);
        }
        if http10 {
            return Err(Error::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        if transfer_codings != 1 || !chunked_last {
            return Err(Error::UnsupportedTransferEncoding);
        }
        Framing::Chunked
    } else {
        let n = content_length.unwrap_or(0);
        if n > limits.max_body_bytes {
            return Err(Error::BodyTooLarge);
        }
        Framing::Length(n)
    };
    let method = if req.method == Some("POST") {
        Method::Post
    } else {
        Method::Other
    };
    Ok(Status::Complete(Head {
        method,
        target: req.path.unwrap_or("/").as_bytes().to_vec(),
        http10,
        framing,
        keep_alive: if http10 {
            keep_alive_token && !close
        } else {
            !close
        },
        expect_continue: expect_continue && !http10,
        content_type,
        len,
    }))
}

/// RFC 9112 §6.2: `Content-Length = 1*DIGIT`. Signs, spaces, hex and empty values are refused.
fn parse_content_length(v: &[u8]) -> Result<usize, Error> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Error::BadContentLength);
    }
    Ok(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// The offset just past the blank line ending the head (CRLF CRLF, or the bare-LF forms
/// RFC 9112 §2.2 lets a recipient accept), if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    for i in memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

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

/// One framed request: its head and its body (de-chunked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: Head,
    pub body: Vec<u8>,
}

/// Pure incremental framing of a byte stream into requests: the composition of [`parse_head`]
/// and [`ChunkedDecoder`] that a connection performs between its socket reads. Tests and the
/// fuzzer use it to show that how bytes are split into reads never changes what is framed.
#[derive(Clone, Debug)]
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    body: Option<(Head, BodyProgress)>,
    failed: bool,
}

#[derive(Clone, Debug)]
enum BodyProgress {
    Length(usize),
    Chunked(ChunkedDecoder, Vec<u8>),
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            body: None,
            failed: false,
        }
    }

    /// Feeds the next bytes of the stream; appends every request they complete, and at most
    /// once the error that ends the stream (nothing is framed after it).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Result<Request, Error>>) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.body.take() {
                None => match parse_head(&self.buf, &self.limits) {
                    Ok(Status::Complete(head)) => {
                        self.buf.drain(..head.len);
                        let progress = match head.framing {
                            Framing::Length(n) => BodyProgress::Length(n),
                            Framing::Chunked => BodyProgress::Chunked(
                                ChunkedDecoder::new(
                                    self.limits.max_body_bytes,
                                    self.limits.max_head_bytes,
                                ),
                                Vec::new(),
                            ),
                        };
                        self.body = Some((head, progress));
                    }
                    Ok(Status::Partial) => return,
                    Err(e) => return self.fail(e, out),
                },
                Some((head, BodyProgress::Length(n))) => {
                    if self.buf.len() < n {
                        self.body = Some((head, BodyProgress::Length(n)));
                        return;
                    }
                    let body = self.buf.drain(..n).collect();
                    out.push(Ok(Request { head, body }));
                }
                Some((head, BodyProgress::Chunked(mut decoder, mut body))) => {
                    match decoder.decode(&self.buf, &mut body) {
                        Ok((used, true)) => {
                            self.buf.drain(..used);
                            out.push(Ok(Request { head, body }));
                        }
                        Ok((used, false)) => {
                            self.buf.drain(..used);
                            self.body = Some((head, BodyProgress::Chunked(decoder, body)));
                            return;
                        }
                        Err(e) => return self.fail(e, out),
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: Error, out: &mut Vec<Result<Request, Error>>) {
        self.failed = true;
        out.push(Err(e));
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

    const LIMITS: Limits = Limits {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
        max_body_bytes: 64 * 1024,
    };

    fn head(raw: &str) -> Result<Status<Head>, Error> {
        parse_head(raw.as_bytes(), &LIMITS)
    }

    fn complete(raw: &str) -> Head {
        match head(raw) {
            Ok(Status::Complete(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_table() {
        use Framing::*;
        let ok: &[(&str, Framing, bool)] = &[
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
                Length(5),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Chunked,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                Length(0),
                false,
            ),
            ("POST / HTTP/1.0\r\n\r\n", Length(0), false),
            (
                "POST / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Length(0),
                true,
            ),
            ("POST / HTTP/1.1\nHost: a\n\n", Length(0), true),
        ];
        for (raw, framing, keep) in ok {
            let h = complete(raw);
            assert_eq!((h.framing, h.keep_alive), (*framing, *keep), "{raw:?}");
            assert_eq!(h.len, raw.len());
        }
        let bad: &[(&str, Error)] = &[
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Error::ConflictingContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                Error::ConflictingContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Error::LengthWithTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Error::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Error::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Error::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Error::Malformed("Transfer-Encoding in HTTP/1.0"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
                Error::BodyTooLarge,
            ),
            (
                "POST / HTTP/1.1\r\n\r\n",
                Error::Malformed("missing or repeated Host"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Error::Malformed("missing or repeated Host"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nExpect: gzip\r\n\r\n",
                Error::UnsupportedExpectation,
            ),
            ("POST / HTTP/2.0\r\nHost: a\r\n\r\n", Error::Version),
            (
                "POST / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                Error::Malformed("invalid header name"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
                Error::Malformed("invalid header value"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\0\r\n\r\n",
                Error::Malformed("invalid header value"),
            ),
        ];
        for (raw, err) in bad {
            assert_eq!(head(raw), Err(*err), "{raw:?}");
        }
    }

    #[test]
    fn partial_heads_wait_and_garbage_fails_early() {
        assert_eq!(head("POST / HTTP/1.1\r\nHost: a\r\n"), Ok(Status::Partial));
        assert_eq!(head("POST /hooks"), Ok(Status::Partial));
        assert!(
            head("\x16\x03\x01\x02\x00\x01\x00").is_err(),
            "TLS ClientHello"
        );
    }

    #[test]
    fn header_count_at_the_limit_past_the_stack_slots() {
        // More fields than fit on the stack: parsed again on the heap, up to `max_headers`,
        // whether the head arrives whole or in pieces.
        let with = |n: usize| {
            let fields: String = (2..n).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}Content-Length: 0\r\n\r\n")
        };
        let at = with(LIMITS.max_headers);
        let got = head(&at);
        let Ok(Status::Complete(h)) = got else {
            panic!("{} fields must be accepted: {got:?}", LIMITS.max_headers)
        };
        assert_eq!(h.len, at.len());
        assert_eq!(head(&at[..at.len() - 2]), Ok(Status::Partial));
        assert_eq!(
            head(&with(LIMITS.max_headers + 1)),
            Err(Error::TooManyHeaders)
        );
        let few = Limits {
            max_headers: 3,
            ..LIMITS
        };
        let over = with(4);
        assert_eq!(
            parse_head(over.as_bytes(), &few),
            Err(Error::TooManyHeaders)
        );
        assert!(matches!(
            parse_head(with(3).as_bytes(), &few),
            Ok(Status::Complete(_))
        ));
    }

    #[test]
    fn head_limits_at_n_and_n_plus_one() {
        let limits = Limits {
            max_head_bytes: 64,
            max_headers: 2,
            max_body_bytes: 10,
        };
        let base = "POST / HTTP/1.1\r\nHost: a\r\nX: ";
        let exact = format!("{base}{}\r\n\r\n", "v".repeat(64 - base.len() - 4));
        assert_eq!(exact.len(), 64);
        assert!(matches!(
            parse_head(exact.as_bytes(), &limits),
            Ok(Status::Complete(_))
        ));
        let over = format!("{base}{}\r\n\r\n", "v".repeat(65 - base.len() - 4));
        assert_eq!(
            parse_head(over.as_bytes(), &limits),
            Err(Error::HeadTooLarge)
        );
        let long_target = format!("POST /{}", "a".repeat(80));
        assert_eq!(
            parse_head(long_target.as_bytes(), &limits),
            Err(Error::UriTooLong)
        );
        let three = "POST / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_head(three.as_bytes(), &limits),
            Err(Error::TooManyHeaders)
        );
        let body_ok = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
        assert!(matches!(
            parse_head(body_ok.as_bytes(), &limits),
            Ok(Status::Complete(_))
        ));
        let body_over = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            parse_head(body_over.as_bytes(), &limits),
            Err(Error::BodyTooLarge)
        );
    }

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
    fn framer_gives_the_same_requests_however_the_stream_is_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n";
        let mut whole = Vec::new();
        Framer::new(LIMITS).push(stream, &mut whole);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].as_ref().unwrap().body, b"abc");
        assert_eq!(whole[1].as_ref().unwrap().body, b"xy");
        assert_eq!(whole[2], Err(Error::BadContentLength));
        for a in 0..stream.len() {
            for b in [a, (a + 7).min(stream.len()), stream.len()] {
                let mut f = Framer::new(LIMITS);
                let mut got = Vec::new();
                f.push(&stream[..a], &mut got);
                f.push(&stream[a..b], &mut got);
                f.push(&stream[b..], &mut got);
                assert_eq!(got, whole, "split at {a}, {b}");
            }
        }
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
