//! The admin listener (default `127.0.0.1:9180`): `/metrics` for Prometheus, `/healthz`
//! (alive) and `/readyz` (able to take events now).
//!
//! Owns those three endpoints and what "ready" means. One short request per connection, read
//! with the same framing code as the hooks and tight limits; it never touches the store.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::ingest::http::{Frame, Framer, Limits, Method};
use crate::serve::Shared;
use crate::timestamp;

/// Admin requests are tiny; anything larger is not a scrape. A body is tolerated (and
/// ignored) so that a stray POST gets a plain 404 rather than a framing error.
const ADMIN_LIMITS: Limits = Limits {
    max_head_bytes: 8 * 1024,
    max_headers: 64,
    max_body_bytes: 64 * 1024,
};

/// The whole admin request must arrive within this.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer loop ticks every 100 ms; a heartbeat older than this means it is wedged.
pub const WRITER_STALL: Duration = Duration::from_secs(5);

/// Why the gateway is not ready, if it is not.
pub fn not_ready(shared: &Shared) -> Vec<&'static str> {
    let mut why = Vec::new();
    if shared.is_shutting_down() {
        why.push("shutting down");
    }
    if shared.health.disk_low.load(Ordering::Relaxed) {
        why.push("free disk space below min_free_disk_bytes");
    }
    if shared.health.commit_failing.load(Ordering::Relaxed) {
        why.push("the last commit failed");
    }
    let beat = shared.metrics.writer_heartbeat_ms.load(Ordering::Relaxed);
    let age_ms = u64::try_from(timestamp::now_ms())
        .unwrap_or(0)
        .saturating_sub(beat);
    if age_ms > WRITER_STALL.as_millis() as u64 {
        why.push("the writer has not run for over 5 s");
    }
    why
}

/// Accepts admin connections until shutdown.
pub fn accept_loop(listener: may::net::TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                may::go!(move || handle(stream, &shared));
            }
            Err(_) if shared.is_shutting_down() => return,
            Err(_) => may::coroutine::sleep(Duration::from_millis(50)),
        }
    }
}

fn handle(mut stream: may::net::TcpStream, shared: &Shared) {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let _ = stream.set_write_timeout(Some(ADMIN_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut framer = Framer::new(ADMIN_LIMITS);
    let head = loop {
        match framer.advance(&buf) {
            Ok((_, Some(Frame::Head(h)))) => break Some(h),
            Ok(_) => {}
            Err(_) => break None,
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut out = Vec::new();
    let Some(head) = head else {
        crate::ingest::response::write_plain(
            &mut out,
            400,
            "Bad Request",
            "text/plain; charset=utf-8",
            b"bad request\n",
        );
        let _ = stream.write_all(&out);
        return;
    };
    let path = head.target.split(|&b| b == b'?').next().unwrap_or_default();
    let get = head.method != Method::Post;
    let (code, reason, ctype, body): (u16, &str, &str, Vec<u8>) = match path {
        b"/metrics" if get => (
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            shared
                .metrics
                .render(
                    shared.queue.depth(),
                    shared.open_connections.load(Ordering::Relaxed),
                )
                .into_bytes(),
        ),
        b"/healthz" if get => (200, "OK", "text/plain; charset=utf-8", b"alive\n".to_vec()),
        b"/readyz" if get => {
            let why = not_ready(shared);
            if why.is_empty() {
                (200, "OK", "text/plain; charset=utf-8", b"ready\n".to_vec())
            } else {
                let text = format!("not ready: {}\n", why.join("; "));
                (
                    503,
                    "Service Unavailable",
                    "text/plain; charset=utf-8",
                    text.into_bytes(),
                )
            }
        }
        _ => (
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            b"not found: try /metrics, /healthz, /readyz\n".to_vec(),
        ),
    };
    crate::ingest::response::write_plain(&mut out, code, reason, ctype, &body);
    let _ = stream.write_all(&out);
}
