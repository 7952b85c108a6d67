//! One connection: read requests, frame them, hand events to the writer, and answer in order.
//!
//! Owns the per-connection loop (one coroutine each): buffers, deadlines, pipelining,
//! `Expect: 100-continue`, keep-alive and closing. It does not own framing rules (`http/`,
//! which it drives through one `Framer`), routing (`route.rs`), decoding (`decode/`), statuses
//! (`response.rs`) or the accept loop (`listener.rs`).
//!
//! Responses leave in request order. Requests already in the buffer are parsed and queued
//! without waiting for earlier commits (pipelining); answers are written whenever the loop is
//! about to block on the socket, so a malformed request after good ones still gets the good
//! ones' answers out first. Memory per connection is bounded by the head and body limits plus
//! one read size, whatever the client sends.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use may::io::WaitIo;
use may::net::TcpStream;

use crate::event::{BodyFormat, Event, MAX_CONTENT_TYPE_BYTES};
use crate::ingest::deadline::SocketDeadline;
use crate::ingest::decode::{self, Decoded, JsonDecoder};
use crate::ingest::gateway::Gateway;
use crate::ingest::http::{self, Frame, Framer, Head, Method};
use crate::ingest::response::{Answer, Unavailable};
use crate::ingest::route::{self, Hook, Route};
use crate::ops::metrics::Rejection;
use crate::writer::{Job, Outcome, Reply, SubmitError};

mod tls;

/// Bytes asked of the socket by the first read of a connection, and at least by every read.
/// A webhook request is well under 1 KiB, and every connection waiting for input holds this
/// much; a read that fills the buffer doubles it (`Vec` growth), so large bodies take a few
/// reads, and a connection keeps the size its requests needed.
const MIN_READ_BYTES: usize = 1024;

/// Most bytes asked of the socket per read. The spare room a read uses is zeroed first, so
/// after one large body a connection's buffer would otherwise be zeroed whole before every
/// read, a cost that shows in worker CPU under load.
const MAX_READ_BYTES: usize = 4 * 1024;

/// Requests parsed ahead of their answers on one connection; past this the answers are written
/// before more is parsed, bounding queued work per connection.
pub const MAX_PIPELINED: usize = 32;

/// A connection idle this long between requests gives back its JSON decoder and read buffer,
/// so a thousand idle keep-alive connections cost little; a busy one keeps them.
const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// After an error answer, how long unread input is drained before closing, so the kernel does
/// not reset the connection (and destroy the answer) because of unread bytes.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// What `may` reports for a socket that may have input: new data, the peer's end, an error.
const READ_EVENTS: usize =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as usize;

/// Counts a request from its parsed head until its answer is written (or the connection dies):
/// shutdown waits for this to reach zero.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer not yet written.
struct Pending<'a> {
    what: PendingAnswer,
    /// Which hook it was for, for the request counters.
    route: Option<Hook>,
    keep_alive: bool,
    http10: bool,
    /// A HEAD request: the answer goes without its body.
    head: bool,
    _in_flight: InFlight<'a>,
}

enum PendingAnswer {
    Ready(Answer),
    /// Waiting for the writer (until `commit_timeout`, see `deadline.rs`).
    Commit(Arc<Reply>),
}

/// Result of trying to read more.
enum Fill {
    Data,
    Eof,
    Timeout,
}

/// Why the loop ended.
enum End {
    /// Answers written; close after lingering.
    Close,
    /// The peer is gone or the socket failed: nothing more can be written.
    Dead,
}

/// Serves one accepted connection until it closes.
pub fn serve(stream: TcpStream, peer: SocketAddr, gateway: &Gateway) {
    let _ = stream.set_nodelay(true);
    let deadline = gateway.deadlines.watch_socket(&stream);
    let mut conn = Conn {
        stream,
        deadline,
        readable: true,
        peer,
        gateway,
        rbuf: Vec::new(),
        start: 0,
        framer: Framer::new(gateway.settings.limits),
        wbuf: Vec::with_capacity(256),
        pending: VecDeque::new(),
        json: None,
        route: None,
        head_request: false,
        tls: None,
    };
    if let Some(tls) = &gateway.tls {
        match conn.start_tls(tls) {
            Ok(()) => {}
            Err(End::Close) => return conn.linger(),
            Err(End::Dead) => return,
        }
    }
    if let End::Close = conn.run() {
        conn.linger();
    }
}

struct Conn<'a> {
    stream: TcpStream,
    /// When the sweeper wakes this connection's socket waits (see [`Conn::wait_socket`]).
    deadline: Arc<SocketDeadline>,
    /// Input may be waiting: `false` once a read found the socket empty, until `may` reports a
    /// read event (see [`Conn::fill`]).
    readable: bool,
    peer: SocketAddr,
    gateway: &'a Gateway,
    /// Bytes read; `start` is where the unconsumed part begins.
    rbuf: Vec<u8>,
    start: usize,
    /// Where the stream is between requests, heads and bodies: the only framing code.
    framer: Framer,
    wbuf: Vec<u8>,
    pending: VecDeque<Pending<'a>>,
    /// Created on the first JSON body, so idle and SMS-only connections do not carry its
    /// buffers.
    json: Option<JsonDecoder>,
    /// The hook of the request being handled (`None` until routed).
    route: Option<Hook>,
    /// The request being handled is a HEAD request.
    head_request: bool,
    /// The TLS session once the handshake has started (HTTPS listener only): reads and writes
    /// then go through it (`connection/tls.rs`).
    tls: Option<Box<rustls::ServerConnection>>,
}

impl<'a> Conn<'a> {
    fn run(&mut self) -> End {
        loop {
            let head = match self.next_head() {
                Ok(Some(h)) => h,
                Ok(None) => return self.finish(),
                Err(end) => return end,
            };
            let in_flight = InFlight::new(&self.gateway.in_flight);
            match self.handle(head, in_flight) {
                Ok(true) => {}
                Ok(false) => return self.finish(),
                Err(end) => return end,
            }
            if self.pending.len() >= MAX_PIPELINED && self.flush().is_err() {
                return End::Dead;
            }
        }
    }

    /// Reads until a complete head is at `start`. `Ok(None)`: the client closed or went idle
    /// between requests (nothing to answer).
    fn next_head(&mut self) -> Result<Option<Head>, End> {
        self.route = None;
        self.head_request = false;
        let settings = &self.gateway.settings;
        let mut head_started = (self.start < self.rbuf.len()).then(Instant::now);
        let idle_until = Instant::now() + settings.idle_timeout;
        let mut release_at = Some(Instant::now() + IDLE_RELEASE_AFTER);
        loop {
            match self.framer.advance(&self.rbuf[self.start..]) {
                Ok((used, Some(Frame::Head(h)))) => {
                    self.start += used;
                    return Ok(Some(h));
                }
                // Between requests the framer waits for a head: a body frame cannot come here
                // (every body is read or the connection closed before the next head).
                Ok((used, _)) => self.start += used,
                Err(e) => {
                    let in_flight = InFlight::new(&self.gateway.in_flight);
                    self.reject(Answer::Framing(e), in_flight, false);
                    return Err(self.finish());
                }
            }
            let deadline = match (head_started, release_at) {
                (Some(t), _) => t + settings.head_timeout,
                (None, Some(r)) => r.min(idle_until),
                (None, None) => idle_until,
            };
            match self.fill(deadline)? {
                Fill::Data => {
                    head_started.get_or_insert_with(Instant::now);
                }
                Fill::Eof => return Ok(None),
                Fill::Timeout if head_started.is_none() && release_at.is_some() => {
                    release_at = None;
                    self.json = None;
                    self.rbuf = Vec::new();
                    self.start = 0;
                    if Instant::now() >= idle_until {
                        return Ok(None);
                    }
                }
                Fill::Timeout if head_started.is_none() => return Ok(None),
                // A head that started but did not arrive in time: a slow network is temporary,
                // so no 4xx (the sender treats it as final and drops the event). Earlier answers
                // go out; this request is closed without one, and the sender retries.
                Fill::Timeout => {
                    self.gateway.metrics.reject(Rejection::HeadTimeout);
                    return Err(self.finish());
                }
            }
        }
    }

    /// Handles one request whose head is parsed. `Ok(true)`: the connection stays open.
    fn handle(&mut self, head: Head, in_flight: InFlight<'a>) -> Result<bool, End> {
        let gateway = self.gateway;
        self.head_request = head.method == Method::Head;
        let route = route::route(&head.target, &gateway.access().tokens);
        self.route = match route {
            Route::Hook(hook) => Some(hook),
            Route::NotFound => None,
        };
        let early = match route {
            _ if gateway.health.is_shutting_down() => {
                Err(Answer::Unavailable(Unavailable::ShuttingDown))
            }
            Route::NotFound => Err(Answer::NotFound),
            Route::Hook(_) if head.method != Method::Post => Err(Answer::MethodNotAllowed),
            Route::Hook(hook) => Ok(hook),
        };
        let hook = match early {
            Ok(hook) => hook,
            Err(answer) => {
                // The body is not wanted. Skip it when it is already here; otherwise close
                // rather than read what may be a large or endless upload.
                let keep = self.framer.body_is_buffered(self.rbuf.len() - self.start)
                    && match self.framer.advance(&self.rbuf[self.start..]) {
                        Ok((used, Some(Frame::Body(_)))) => {
                            self.start += used;
                            head.keep_alive
                        }
                        _ => false,
                    };
                self.push(PendingAnswer::Ready(answer), keep, head.http10, in_flight);
                return Ok(keep);
            }
        };
        let body = match self.read_body(&head) {
            Ok(Some(body)) => body,
            // The body did not arrive in time. No 4xx: the sender would treat it as final and
            // drop the event; a closed connection makes it retry.
            Ok(None) => {
                gateway.metrics.reject(Rejection::BodyTimeout);
                return Err(self.finish_silently(in_flight));
            }
            Err(BodyError::Framing(e)) => {
                self.reject(Answer::Framing(e), in_flight, head.http10);
                return Err(self.finish());
            }
            Err(BodyError::Dead) => return Err(End::Dead),
        };
        let content_type = head.content_type.as_deref();
        let max_depth = gateway.settings.max_json_depth;
        let json = self.json.get_or_insert_with(|| JsonDecoder::new(max_depth));
        let decoded = decode::decode_body(json, hook, content_type, &body);
        let (kind, format, callid, call, quarantine) = match decoded {
            Decoded::Event {
                kind,
                format,
                callid,
                call,
            } => (kind, format, callid, call.map(|c| *c), None),
            Decoded::Quarantine(reason) => {
                crate::ops::log::warn_limited(
                    "quarantine",
                    format_args!("quarantined a body from {}: {reason}", self.peer.ip()),
                );
                (
                    hook.name().to_string(),
                    BodyFormat::Undecoded,
                    None,
                    None,
                    Some(reason),
                )
            }
        };
        let mut content_type = head.content_type.unwrap_or_default();
        content_type.truncate(MAX_CONTENT_TYPE_BYTES);
        let reply = Reply::new();
        let job = Job {
            event: Event {
                kind,
                format,
                peer: Some(self.peer),
                content_type,
                body,
                callid,
                call,
            },
            quarantine,
            reply: reply.clone(),
        };
        if gateway.health.is_disk_low() {
            let what = PendingAnswer::Ready(Answer::Unavailable(Unavailable::DiskLow));
            self.push(what, head.keep_alive, head.http10, in_flight);
            return Ok(head.keep_alive);
        }
        let what = match gateway.queue.submit(job) {
            Ok(()) => {
                let deadline = Instant::now() + gateway.settings.commit_timeout;
                gateway.deadlines.watch(&reply, deadline);
                PendingAnswer::Commit(reply)
            }
            Err(SubmitError::Full) => {
                crate::ops::log::warn_limited(
                    "queue-full",
                    format_args!("writer queue full, answering 503"),
                );
                PendingAnswer::Ready(Answer::Unavailable(Unavailable::QueueFull))
            }
            Err(SubmitError::Stopped) => {
                PendingAnswer::Ready(Answer::Unavailable(Unavailable::ShuttingDown))
            }
        };
        self.push(what, head.keep_alive, head.http10, in_flight);
        Ok(head.keep_alive)
    }

    /// Reads the body the head announces. `Ok(None)` when the body deadline passed.
    fn read_body(&mut self, head: &Head) -> Result<Option<Vec<u8>>, BodyError> {
        let deadline = Instant::now() + self.gateway.settings.body_timeout;
        if head.expect_continue && !self.framer.body_is_buffered(self.rbuf.len() - self.start) {
            // RFC 9110 §10.1.1: the client waits for 100 before sending the body.
            self.flush().map_err(|_| BodyError::Dead)?;
            self.wbuf.clear();
            Answer::Continue.write(&mut self.wbuf, true, false, false);
            self.write_wbuf().map_err(|_| BodyError::Dead)?;
        }
        loop {
            match self.framer.advance(&self.rbuf[self.start..]) {
                Ok((used, Some(Frame::Body(body)))) => {
                    self.start += used;
                    return Ok(Some(body));
                }
                // A chunked body is consumed as it is decoded.
                Ok((used, _)) => self.start += used,
                Err(e) => return Err(BodyError::Framing(e)),
            }
            match self.fill(deadline).map_err(|_| BodyError::Dead)? {
                Fill::Data => {}
                Fill::Eof => return Err(BodyError::Dead),
                Fill::Timeout => return Ok(None),
            }
        }
    }

    fn push(&mut self, what: PendingAnswer, keep_alive: bool, http10: bool, f: InFlight<'a>) {
        self.pending.push_back(Pending {
            what,
            route: self.route,
            keep_alive,
            http10,
            head: self.head_request,
            _in_flight: f,
        });
    }

    /// Queues a final error answer; the connection closes after it.
    fn reject(&mut self, answer: Answer, in_flight: InFlight<'a>, http10: bool) {
        if let Answer::Framing(e) = answer {
            crate::ops::log::warn_limited(
                "bad-request",
                format_args!("refused a request from {}: {}", self.peer.ip(), e.reason()),
            );
        }
        self.push(PendingAnswer::Ready(answer), false, http10, in_flight);
    }

    /// Writes every pending answer, then reports the connection as done.
    fn finish(&mut self) -> End {
        match self.flush() {
            Ok(()) => End::Close,
            Err(_) => End::Dead,
        }
    }

    /// Writes earlier answers, then drops the current request without one.
    fn finish_silently(&mut self, in_flight: InFlight<'a>) -> End {
        let end = self.finish();
        drop(in_flight);
        end
    }

    /// Waits for each pending answer in order and writes them all.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.wbuf.clear();
        while let Some(p) = self.pending.pop_front() {
            let answer = match p.what {
                PendingAnswer::Ready(a) => a,
                PendingAnswer::Commit(reply) => match reply.wait() {
                    Some(Outcome::Stored(_)) => Answer::Stored,
                    Some(Outcome::Duplicate(_)) => Answer::Duplicate,
                    Some(Outcome::Quarantined(_)) => Answer::Quarantined,
                    Some(Outcome::Failed) => Answer::Unavailable(Unavailable::CommitFailed),
                    None => Answer::Unavailable(Unavailable::CommitTimeout),
                },
            };
            self.gateway.metrics.answered(p.route, &answer);
            answer.write(&mut self.wbuf, p.keep_alive, p.http10, p.head);
            // `p` (and its in-flight count) is dropped once its bytes are queued.
        }
        self.write_wbuf()
    }

    /// Writes `wbuf` whole. A write that makes no progress for `write_timeout` fails with
    /// `TimedOut` (a client that does not read its answers).
    fn write_wbuf(&mut self) -> std::io::Result<()> {
        let result = self.write_all_wbuf();
        self.wbuf.clear();
        result
    }

    fn write_all_wbuf(&mut self) -> std::io::Result<()> {
        if self.tls.is_some() {
            return self.write_tls_wbuf();
        }
        let mut at = 0;
        // Set when a write first finds the socket full, cleared by progress.
        let mut deadline = None;
        while at < self.wbuf.len() {
            // Through the std socket (non-blocking under `may`): `may`'s own write would clear
            // the event flag `wait_socket` relies on (see `fill`).
            let mut socket = self.stream.inner();
            match socket.write(&self.wbuf[at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    deadline = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let until = *deadline.get_or_insert_with(|| {
                        Instant::now() + self.gateway.settings.write_timeout
                    });
                    if !self.wait_socket(until) {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Parks this coroutine until `may` reports an event on the socket or `deadline` passes
    /// (the sweeper of `deadline.rs` then wakes it, up to `SWEEP_INTERVAL` late). `false`
    /// when the deadline has passed. A read event sets `readable`, whichever wait saw it.
    ///
    /// Why not `may`'s timed reads and writes: each read first tries the socket and, under
    /// keep-alive load, nearly always finds it empty (the client has not sent the next request
    /// yet), and each wait files and removes a timer in the worker's event loop. This waits
    /// only when a read found nothing, with no timer: less worker CPU per request
    /// (docs/performance.md, "Where the time goes", item 8).
    fn wait_socket(&mut self, deadline: Instant) -> bool {
        if Instant::now() >= deadline {
            return false;
        }
        self.deadline.arm(deadline);
        // Returns the events `may` saw since the last wait, and clears them.
        let events = self.stream.wait_io();
        if events & READ_EVENTS != 0 {
            self.readable = true;
        }
        true
    }

    /// Writes pending answers, then reads more input until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<Fill, End> {
        if self.flush().is_err() {
            return Err(End::Dead);
        }
        if self.start > 0 {
            self.rbuf.drain(..self.start);
            self.start = 0;
        }
        if self.tls.is_some() {
            return self.fill_tls(deadline);
        }
        loop {
            // The socket is edge-triggered in `may`'s epoll: a read event comes with each
            // arrival of data after the last wait. So once a read returned less than it asked
            // for, everything that had arrived was taken, and the next read waits for an event
            // first instead of meeting EAGAIN. The deadline is checked only before a wait:
            // reads that return data at once are bounded by the head and body limits.
            if !self.readable {
                if !self.wait_socket(deadline) {
                    return Ok(Fill::Timeout);
                }
                continue;
            }
            // Straight into `rbuf`'s spare room, zeroed first (at most MAX_READ_BYTES), with
            // no separate read buffer per connection.
            let filled = self.rbuf.len();
            let room = (self.rbuf.capacity() - filled).clamp(MIN_READ_BYTES, MAX_READ_BYTES);
            self.rbuf.resize(filled + room, 0);
            let mut socket = self.stream.inner();
            let result = socket.read(&mut self.rbuf[filled..]);
            self.rbuf
                .truncate(filled + result.as_ref().map_or(0, |&n| n));
            return match result {
                Ok(0) => Ok(Fill::Eof),
                Ok(n) => {
                    self.readable = n == room;
                    Ok(Fill::Data)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Err(End::Dead),
            };
        }
    }

    /// Half-closes and drains what the client still sends, briefly and boundedly, so the
    /// answers just written are not destroyed by a reset.
    fn linger(&mut self) {
        self.close_tls();
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut drained = 0;
        self.rbuf.clear();
        self.start = 0;
        while drained < LINGER_BYTES {
            match self.fill(deadline) {
                Ok(Fill::Data) => {
                    drained += self.rbuf.len();
                    self.rbuf.clear();
                }
                _ => break,
            }
        }
    }
}

enum BodyError {
    Framing(http::Error),
    Dead,
}
