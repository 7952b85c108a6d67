//! [`Framer`]: the framing state of one connection, sans I/O. The caller keeps the bytes it
//! read and shows the framer the unconsumed part; the framer says how many bytes it consumed
//! and hands back a [`Frame`] each time a head or a whole body is complete.
//!
//! The head and a Content-Length body are consumed only once complete (a head is re-parsed
//! as bytes arrive, a body is copied out once), so the caller's buffer holds them meanwhile;
//! a chunked body is consumed as it is decoded, so only the unread framing stays buffered.
//! Either way memory is bounded by the limits plus one read.

use super::{ChunkedDecoder, Error, Framing, Head, Limits, Status, parse_head};

/// What the framer completed at the front of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A request head; its body (possibly empty) is the next frame.
    Head(Head),
    /// The whole body of the last head, de-chunked.
    Body(Vec<u8>),
}

/// Where the framer is in the stream.
#[derive(Clone, Debug)]
enum State {
    /// Waiting for a complete request head.
    Head,
    /// A body of exactly this many bytes comes next.
    Length(usize),
    /// The head announced a body over `max_body_bytes`: the next call refuses it.
    TooLarge,
    /// A chunked body is being decoded into the buffer.
    Chunked(ChunkedDecoder, Vec<u8>),
    /// A framing error ended the stream: nothing after it can be trusted.
    Failed,
}

/// The framing state of one connection.
#[derive(Clone, Debug)]
pub struct Framer {
    limits: Limits,
    state: State,
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            state: State::Head,
        }
    }

    /// Frames from the start of `input`, the stream's bytes not consumed yet. Returns how many
    /// bytes were consumed (never to be shown again) and the frame they completed, if any;
    /// `(n, None)` asks for more input.
    ///
    /// # Errors
    /// The framing cannot be trusted (a malformed head, a limit exceeded, broken chunks); the
    /// stream ends there and every later call repeats [`Error::Malformed`].
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), Error> {
        let result = self.step(input);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), Error> {
        match &mut self.state {
            State::Failed => Err(Error::Malformed("request after a framing error")),
            State::TooLarge => Err(Error::BodyTooLarge),
            State::Head => match parse_head(input, &self.limits)? {
                Status::Partial => Ok((0, None)),
                Status::Complete(head) => {
                    self.state = match head.framing {
                        Framing::Length(n) => match usize::try_from(n) {
                            Ok(n) if n <= self.limits.max_body_bytes => State::Length(n),
                            _ => State::TooLarge,
                        },
                        Framing::Chunked => State::Chunked(
                            // Trailer fields count against the head limit.
                            ChunkedDecoder::new(
                                self.limits.max_body_bytes,
                                self.limits.max_head_bytes,
                            ),
                            Vec::new(),
                        ),
                    };
                    Ok((head.len, Some(Frame::Head(head))))
                }
            },
            State::Length(n) => {
                let n = *n;
                if input.len() < n {
                    return Ok((0, None));
                }
                self.state = State::Head;
                Ok((n, Some(Frame::Body(input[..n].to_vec()))))
            }
            State::Chunked(decoder, body) => {
                let (used, done) = decoder.decode(input, body)?;
                if !done {
                    return Ok((used, None));
                }
                let body = std::mem::take(body);
                self.state = State::Head;
                Ok((used, Some(Frame::Body(body))))
            }
        }
    }

    /// Whether the body of the last head is already whole in `buffered` bytes without
    /// decoding (a Content-Length body): the connection then skips an unwanted body instead of
    /// closing, and answers `Expect: 100-continue` only when the body is not there yet.
    pub fn body_is_buffered(&self, buffered: usize) -> bool {
        matches!(self.state, State::Length(n) if buffered >= n)
    }
}

/// One framed request: its head and its body (de-chunked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request head.
    pub head: Head,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// A whole stream framed into requests with [`Framer::advance`], the calls a connection makes
/// between its reads, minus the sockets: tests and the fuzzer use it to show that how bytes
/// are split into reads never changes what is framed.
#[derive(Clone, Debug)]
pub struct Requests {
    framer: Framer,
    buf: Vec<u8>,
    head: Option<Head>,
    failed: bool,
}

impl Requests {
    /// A framer at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Requests {
            framer: Framer::new(limits),
            buf: Vec::new(),
            head: None,
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
            match self.framer.advance(&self.buf) {
                Ok((used, frame)) => {
                    self.buf.drain(..used);
                    match frame {
                        Some(Frame::Head(head)) => self.head = Some(head),
                        Some(Frame::Body(body)) => {
                            if let Some(head) = self.head.take() {
                                out.push(Ok(Request { head, body }));
                            }
                        }
                        None => return,
                    }
                }
                Err(e) => {
                    self.failed = true;
                    out.push(Err(e));
                    return;
                }
            }
        }
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

    #[test]
    fn framer_gives_the_same_requests_however_the_stream_is_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n";
        let mut whole = Vec::new();
        Requests::new(LIMITS).push(stream, &mut whole);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].as_ref().unwrap().body, b"abc");
        assert_eq!(whole[1].as_ref().unwrap().body, b"xy");
        assert_eq!(whole[2], Err(Error::BadContentLength));
        for a in 0..stream.len() {
            for b in [a, (a + 7).min(stream.len()), stream.len()] {
                let mut f = Requests::new(LIMITS);
                let mut got = Vec::new();
                f.push(&stream[..a], &mut got);
                f.push(&stream[a..b], &mut got);
                f.push(&stream[b..], &mut got);
                assert_eq!(got, whole, "split at {a}, {b}");
            }
        }
    }

    /// A body over the limit is refused after its head, so the connection can route (and
    /// count) the request first; a length past `usize` (32-bit hosts) is refused the same way.
    #[test]
    fn a_body_over_the_limit_is_refused_after_the_head() {
        for cl in ["65537", "4294967481", "18446744073709551615"] {
            let mut f = Framer::new(LIMITS);
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n");
            let (used, frame) = f.advance(head.as_bytes()).unwrap();
            assert_eq!(used, head.len());
            assert!(matches!(frame, Some(Frame::Head(_))), "{cl}");
            assert!(!f.body_is_buffered(usize::MAX), "{cl}");
            assert_eq!(f.advance(b"{}"), Err(Error::BodyTooLarge), "{cl}");
        }
        let mut f = Framer::new(LIMITS);
        let head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n";
        assert_eq!(f.advance(head.as_bytes()).unwrap().0, head.len());
        assert!(f.body_is_buffered(65_536), "at the limit is accepted");
    }

    #[test]
    fn consumes_heads_and_length_bodies_whole_and_chunks_as_they_come() {
        let mut f = Framer::new(LIMITS);
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(f.advance(&head[..10]), Ok((0, None)));
        let (n, frame) = f.advance(head).unwrap();
        assert_eq!(n, head.len());
        assert!(matches!(frame, Some(Frame::Head(_))));
        assert!(!f.body_is_buffered(2));
        assert!(f.body_is_buffered(3));
        assert_eq!(f.advance(b"ab"), Ok((0, None)));
        assert_eq!(
            f.advance(b"abcX"),
            Ok((3, Some(Frame::Body(b"abc".to_vec()))))
        );

        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(f.advance(head).unwrap().0, head.len());
        assert!(
            !f.body_is_buffered(1000),
            "a chunked body is never skipped unread"
        );
        assert_eq!(f.advance(b"2\r\nx"), Ok((4, None)));
        assert_eq!(
            f.advance(b"y\r\n0\r\n\r\n"),
            Ok((8, Some(Frame::Body(b"xy".to_vec()))))
        );

        assert_eq!(
            f.advance(b"BAD\x01 / HTTP/1.1\r\n").map(|r| r.1),
            Err(Error::Malformed("invalid request line"))
        );
        assert!(
            f.advance(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").is_err(),
            "nothing after an error"
        );
    }
}
