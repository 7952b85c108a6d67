//! Every answer the gateway gives, and its status line, in one place.
//!
//! The sender's rules decide these (`docs/http.md` quotes them): 2xx/3xx mean "stored, stop
//! retrying", any 4xx means "final error, never retry", 5xx or `Retry-After` mean "retry
//! later". So a 4xx is only ever given for a request that can never succeed, and every
//! temporary condition is a fast 503 with `Retry-After`.
//!
//! This file owns the mapping and the bytes on the wire; it does not decide *when* a request is
//! rejected (the stages do, each with its own error type).

use crate::ingest::http;

/// Seconds a sender is asked to wait before retrying a 503. didlogic retries on its own
/// schedule (30 s, 1, 2, 4, 8 min); the header is what makes the 503 a "retry" signal.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Why an event could not be committed in time; all of these are temporary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The writer's queue is full (a burst larger than it absorbs).
    QueueFull,
    /// The commit did not finish within the commit deadline.
    CommitTimeout,
    /// The commit failed (I/O error, map full); nothing of the batch was stored.
    CommitFailed,
    /// The gateway is shutting down.
    ShuttingDown,
    /// Free disk space is below the configured headroom: refused before LMDB meets ENOSPC.
    DiskLow,
}

/// One answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The event is committed.
    Stored,
    /// A byte-identical event of the same kind was already committed within the dedup window.
    Duplicate,
    /// The body did not decode; it is committed to quarantine.
    Quarantined,
    /// `100 Continue`, interim, before reading a body the client is holding back.
    Continue,
    NotFound,
    MethodNotAllowed,
    /// The framing could not be trusted or exceeded a limit.
    Framing(http::Error),
    Unavailable(Unavailable),
}

impl Answer {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Answer::Stored | Answer::Duplicate | Answer::Quarantined => (200, "OK"),
            Answer::Continue => (100, "Continue"),
            Answer::NotFound => (404, "Not Found"),
            Answer::MethodNotAllowed => (405, "Method Not Allowed"),
            Answer::Unavailable(_) => (503, "Service Unavailable"),
            Answer::Framing(e) => match e {
                http::Error::UriTooLong => (414, "URI Too Long"),
                http::Error::HeadTooLarge | http::Error::TooManyHeaders => {
                    (431, "Request Header Fields Too Large")
                }
                http::Error::BodyTooLarge => (413, "Content Too Large"),
                http::Error::UnsupportedTransferEncoding => (501, "Not Implemented"),
                http::Error::UnsupportedExpectation => (417, "Expectation Failed"),
                http::Error::Version => (505, "HTTP Version Not Supported"),
                http::Error::Malformed(_)
                | http::Error::BadContentLength
                | http::Error::ConflictingContentLength
                | http::Error::LengthWithTransferEncoding
                | http::Error::BadChunk(_) => (400, "Bad Request"),
            },
        }
    }

    /// The short body sent with the status: fixed text, never request data.
    pub fn body(&self) -> &'static str {
        match self {
            Answer::Stored => "stored\n",
            Answer::Duplicate => "duplicate\n",
            Answer::Quarantined => "quarantined\n",
            Answer::Continue => "",
            Answer::NotFound => "not found\n",
            Answer::MethodNotAllowed => "only POST is allowed here\n",
            Answer::Unavailable(u) => match u {
                Unavailable::QueueFull => "queue full, retry later\n",
                Unavailable::CommitTimeout => "commit timed out, retry later\n",
                Unavailable::CommitFailed => "storage failed, retry later\n",
                Unavailable::ShuttingDown => "shutting down, retry later\n",
                Unavailable::DiskLow => "storage nearly full, retry later\n",
            },
            Answer::Framing(e) => match e {
                http::Error::UriTooLong => "request target too long\n",
                http::Error::HeadTooLarge => "request head too large\n",
                http::Error::TooManyHeaders => "too many header fields\n",
                http::Error::BodyTooLarge => "body too large\n",
                http::Error::UnsupportedTransferEncoding => "unsupported Transfer-Encoding\n",
                http::Error::UnsupportedExpectation => "unsupported Expect\n",
                http::Error::Version => "HTTP/1.1 only\n",
                _ => "bad request\n",
            },
        }
    }

    /// Writes the response. `keep_alive` is whether the connection stays open afterwards;
    /// `http10` says the client needs keep-alive spelled out; `head` that it answers a HEAD
    /// request, which gets the headers a GET would get but no body (RFC 9110 §9.3.2), or the
    /// client would read the body as the start of the next response.
    pub fn write(&self, out: &mut Vec<u8>, keep_alive: bool, http10: bool, head: bool) {
        let (code, reason) = self.status();
        if let Answer::Continue = self {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            return;
        }
        let body = self.body();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_u64(out, u64::from(code));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        push_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
        if let Answer::MethodNotAllowed = self {
            out.extend_from_slice(b"Allow: POST\r\n");
        }
        if let Answer::Unavailable(_) = self {
            out.extend_from_slice(b"Retry-After: ");
            push_u64(out, u64::from(RETRY_AFTER_SECS));
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

/// A complete response with an arbitrary body, closing the connection (the admin endpoints);
/// for a HEAD request (`head`) the headers only.
pub fn write_plain(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    if !head {
        out.extend_from_slice(body);
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(a: Answer, keep: bool, http10: bool) -> String {
        let mut out = Vec::new();
        a.write(&mut out, keep, http10, false);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(
            wire(Answer::Stored, true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 7\r\n\r\nstored\n"
        );
        assert_eq!(
            wire(Answer::Unavailable(Unavailable::QueueFull), false, false),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nRetry-After: 5\r\nConnection: close\r\n\r\nqueue full, retry later\n"
        );
        assert!(
            wire(Answer::MethodNotAllowed, true, true)
                .contains("Allow: POST\r\nConnection: keep-alive\r\n")
        );
        assert_eq!(
            wire(Answer::Continue, true, false),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
    }

    #[test]
    fn a_head_request_gets_the_headers_without_the_body() {
        let mut out = Vec::new();
        Answer::MethodNotAllowed.write(&mut out, true, false, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("Allow: POST\r\n\r\n"), "{text:?}");
        assert!(text.contains("Content-Length: 26\r\n"), "{text:?}");
        let mut out = Vec::new();
        write_plain(&mut out, 200, "OK", "text/plain", b"ready\n", true);
        assert!(out.ends_with(b"Connection: close\r\n\r\n"));
    }

    #[test]
    fn temporary_conditions_are_never_4xx() {
        for u in [
            Unavailable::QueueFull,
            Unavailable::CommitTimeout,
            Unavailable::CommitFailed,
            Unavailable::ShuttingDown,
            Unavailable::DiskLow,
        ] {
            assert_eq!(Answer::Unavailable(u).status().0, 503);
        }
    }
}
