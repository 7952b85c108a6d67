//! The request head (RFC 9112 §2-§3, §6): request line and header fields, parsed by httparse
//! with the framing rules it leaves to its caller: body length, transfer coding, connection
//! persistence, expectations, and exactly one Host.

use std::mem::MaybeUninit;

use memchr::memchr_iter;

use super::{Error, Framing, HEADER_SLOTS, Head, Limits, Method, Status};

/// Header slots on the coroutine stack (32 bytes each). A head with more fields is parsed
/// again with `max_headers` slots on the heap. Every stack page a frame reaches stays resident
/// for the life of the connection, so the common case (didlogic sends under ten fields) keeps
/// 1 KiB on the stack instead of 4 KiB: one page less per connection (docs/performance.md,
/// "Memory").
const STACK_HEADER_SLOTS: usize = 32;

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
    // does not pay for zeroing all of them (zeroing was a third of parse_head's time).
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
    let mut content_length: Option<u64> = None;
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
        // Compared with `max_body_bytes` by the framer once the head is routed, so a 413 is
        // counted against its hook.
        Framing::Length(content_length.unwrap_or(0))
    };
    let method = match req.method {
        Some("POST") => Method::Post,
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
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
/// Parsed into a u64 with overflow checks on every target: on 32-bit hosts a `usize` would wrap
/// (`4294967481` read as 185), and the rest of a request would be framed as the next one.
fn parse_content_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(Error::BadContentLength);
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Error::BadContentLength)
    })
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
        // The body limit is the framer's (after routing): see framer.rs.
        let body_over = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(
            parse_head(body_over.as_bytes(), &limits),
            Ok(Status::Complete(Head {
                framing: Framing::Length(11),
                ..
            }))
        ));
    }

    /// Regression: on 32-bit hosts Content-Length was read into a usize and wrapped
    /// (`4294967481` as 185), so the rest of the body was framed as the next request.
    #[test]
    fn content_length_never_wraps() {
        let cl = |v: &str| parse_content_length(v.as_bytes());
        assert_eq!(cl("4294967481"), Ok(4_294_967_481));
        assert_eq!(cl("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(cl("18446744073709551616"), Err(Error::BadContentLength));
        assert_eq!(cl("99999999999999999999"), Err(Error::BadContentLength));
        assert_eq!(cl("000000000000000000000000005"), Ok(5));
    }
}
