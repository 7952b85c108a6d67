//! The admin listener (default `127.0.0.1:9180`): `/metrics` for Prometheus, `/healthz`
//! (alive) and `/readyz` (able to take events now).
//!
//! Owns those three endpoints; what "ready" means is `health.rs`'s. One short request per
//! connection, read with the same framer as the hooks and tight limits; it never touches the
//! store.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ingest::http::{Frame, Framer, Limits, Method};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::writer::Queue;

/// Admin requests are tiny; anything larger is not a scrape. A body is tolerated (and
/// ignored) so that a stray POST gets a plain 404 rather than a framing error.
const ADMIN_LIMITS: Limits = Limits {
    max_head_bytes: 8 * 1024,
    max_headers: 64,
    max_body_bytes: 64 * 1024,
};

/// The whole admin request must arrive within this.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin listener when none is configured: loopback only, as it is unauthenticated.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));

/// What the admin endpoints read: the counters, the health flags, the writer's queue.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub queue: Queue,
}

/// Accepts admin connections until shutdown.
pub fn accept_loop(listener: may::net::TcpListener, admin: Arc<Admin>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let admin = admin.clone();
                // Why spawning is sound (`go!` spawns unsafely): the handler blocks only on
                // may's socket, which parks the coroutine, and keeps no thread-local state.
                may::go!(move || handle(stream, &admin));
            }
            Err(_) if admin.health.is_shutting_down() => return,
            Err(_) => may::coroutine::sleep(Duration::from_millis(50)),
        }
    }
}

fn handle(mut stream: may::net::TcpStream, admin: &Admin) {
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
            false,
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
            admin
                .metrics
                .render(admin.queue.depth(), &admin.health)
                .into_bytes(),
        ),
        b"/healthz" if get => (200, "OK", "text/plain; charset=utf-8", b"alive\n".to_vec()),
        b"/readyz" if get => {
            let why = admin.health.not_ready();
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
    let bodyless = head.method == Method::Head;
    crate::ingest::response::write_plain(&mut out, code, reason, ctype, &body, bodyless);
    let _ = stream.write_all(&out);
}
