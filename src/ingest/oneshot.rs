//! One short request per connection, for the side listeners (admin, ACME `http-01`): read one
//! head with the webhook framer under tight limits and one deadline, answer, close.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::net::TcpStream;

use crate::ops::health::Health;

use crate::ingest::http::{Frame, Framer, Head, Limits};

/// How long an accept loop waits after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts until shutdown (`health` says when), serving each connection with `handle` in a
/// coroutine of its own.
pub fn accept_loop<S: Send + Sync + 'static>(
    listener: may::net::TcpListener,
    state: Arc<S>,
    health: &Health,
    handle: fn(TcpStream, &S),
) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let state = state.clone();
                // Why spawning is sound (`go!` spawns unsafely): the handlers block only on
                // may's socket, which parks the coroutine, and keep no thread-local state.
                may::go!(move || handle(stream, &state));
            }
            Err(_) if health.is_shutting_down() => return,
            Err(_) => may::coroutine::sleep(ACCEPT_RETRY),
        }
    }
}

/// Reads one request head within `timeout`. `None` when none came: the peer closed or was too
/// slow (nothing is answered), or the request was malformed (a 400 is answered here).
pub fn read_head(stream: &mut TcpStream, limits: Limits, timeout: Duration) -> Option<Head> {
    read_request(stream, limits, timeout).map(|(head, _)| head)
}

/// As [`read_head`], with the bytes of the head, for a handler that reads header fields the
/// framer does not keep (the console's `Authorization` and `Range`).
pub fn read_request(
    stream: &mut TcpStream,
    limits: Limits,
    timeout: Duration,
) -> Option<(Head, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let _ = stream.set_write_timeout(Some(timeout));
    let mut buf = Vec::with_capacity(1024);
    let mut framer = Framer::new(limits);
    loop {
        match framer.advance(&buf) {
            Ok((_, Some(Frame::Head(h)))) => {
                buf.truncate(h.len);
                return Some((h, buf));
            }
            Ok(_) => {}
            Err(_) => {
                answer(stream, 400, "Bad Request", b"bad request\n", false);
                return None;
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left)).ok()?;
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes a plain-text answer and closes (`head`: a HEAD request, no body).
pub fn answer(stream: &mut TcpStream, code: u16, reason: &str, body: &[u8], head: bool) {
    answer_typed(
        stream,
        code,
        reason,
        "text/plain; charset=utf-8",
        body,
        head,
    );
}

/// Writes an answer of `content_type` and closes.
pub fn answer_typed(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head: bool,
) {
    let mut out = Vec::with_capacity(128 + body.len());
    crate::ingest::response::write_plain(&mut out, code, reason, content_type, body, head);
    let _ = stream.write_all(&out);
}
