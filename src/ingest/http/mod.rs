//! HTTP/1.1 request framing (RFC 9112), sans I/O: bytes in, consumed count and complete
//! frames out. [`Framer`] is the only framing code: the connection calls it between socket
//! reads, the admin listener for its heads, and the `http_framing` fuzz target and the
//! conformance tests drive the same calls.
//!
//! Owns deciding where a request starts and ends and whether its framing can be trusted:
//! [`head`] parses the request head (httparse plus RFC 9112's rules on Content-Length,
//! Transfer-Encoding, Connection, Expect and Host), [`chunked`] decodes the chunked transfer
//! coding, [`framer`] composes them over a stream. It does not own routing, what statuses mean
//! on the wire, or reading from sockets. "Need more bytes" is a status, never an error.

mod chunked;
mod framer;
mod head;

pub use chunked::{ChunkedDecoder, MAX_CHUNK_LINE_BYTES};
pub use framer::{Frame, Framer, Request, Requests};
pub use head::parse_head;

/// Upper bound of `max_headers`. 128 is above the 100 fields a request may carry.
pub const HEADER_SLOTS: usize = 128;

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
    /// Parsed whole.
    Complete(T),
    /// More bytes are needed.
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
    /// `POST`, the only method a hook takes.
    Post,
    /// `GET` (answered 405 on a hook path; the admin listener's pages take it).
    Get,
    /// `HEAD`: answered like a GET, without the body.
    Head,
    /// Any other method (answered 405 on a hook path).
    Other,
}

/// How the body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow the head (0 when neither header is present); a u64 on
    /// every target, compared with the body limit before it is ever narrowed.
    Length(u64),
    /// Chunked transfer coding follows.
    Chunked,
}

/// A parsed request head, owned so the read buffer can move on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The request method.
    pub method: Method,
    /// The request target as sent (origin or absolute form).
    pub target: Vec<u8>,
    /// HTTP/1.0 (keep-alive only on request, no chunked bodies).
    pub http10: bool,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The first Content-Type field's value.
    pub content_type: Option<Vec<u8>>,
    /// Bytes of the head, blank line included; the body starts here.
    pub len: usize,
}
