//! The admin listener (default `127.0.0.1:9180`): `/metrics` for Prometheus, `/healthz`
//! (alive) and `/readyz` (able to take events now).
//!
//! Owns those three endpoints; what "ready" means is `health.rs`'s. One short request per
//! connection, read with the same framer as the hooks and tight limits; it never touches the
//! store.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use crate::ingest::http::{Limits, Method};
use crate::ingest::oneshot;
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
    let health = admin.health.clone();
    oneshot::accept_loop(listener, admin, &health, handle);
}

fn handle(mut stream: may::net::TcpStream, admin: &Admin) {
    let Some(head) = oneshot::read_head(&mut stream, ADMIN_LIMITS, ADMIN_TIMEOUT) else {
        return;
    };
    let path = head.target.split(|&b| b == b'?').next().unwrap_or_default();
    let get = head.method != Method::Post;
    let bodyless = head.method == Method::Head;
    let text = "text/plain; charset=utf-8";
    match path {
        b"/metrics" if get => {
            let body = admin.metrics.render(admin.queue.depth(), &admin.health);
            let ctype = "text/plain; version=0.0.4; charset=utf-8";
            oneshot::answer_typed(&mut stream, 200, "OK", ctype, body.as_bytes(), bodyless);
        }
        b"/healthz" if get => oneshot::answer(&mut stream, 200, "OK", b"alive\n", bodyless),
        b"/readyz" if get => {
            let why = admin.health.not_ready();
            if why.is_empty() {
                oneshot::answer(&mut stream, 200, "OK", b"ready\n", bodyless);
            } else {
                let body = format!("not ready: {}\n", why.join("; "));
                let unavailable = "Service Unavailable";
                oneshot::answer_typed(
                    &mut stream,
                    503,
                    unavailable,
                    text,
                    body.as_bytes(),
                    bodyless,
                );
            }
        }
        _ => {
            let body = b"not found: try /metrics, /healthz, /readyz\n";
            oneshot::answer(&mut stream, 404, "Not Found", body, bodyless);
        }
    }
}
