//! The admin listener (default `127.0.0.1:9180`): `/metrics` for Prometheus, `/healthz`
//! (alive), `/readyz` (able to take events now), and every other path is the web console
//! (`crate::console`).
//!
//! Owns routing and answering; what "ready" means is `health.rs`'s, who may look is the
//! console's guard (`/healthz` and `/readyz` stay open for probes). One short request per
//! connection, read with the same framer as the hooks and tight limits.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use crate::console::guard::{self, Verdict};
use crate::console::renderer::Renderer;
use crate::console::{self, Body, Response};
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

/// A recording being streamed may stall this long per write before the connection is cut
/// (a paused player).
const CONSOLE_STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Admin listener when none is configured: loopback only, as it is unauthenticated.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));

/// What the admin endpoints read: the counters, the health flags, the writer's queue, and
/// the console's state.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub queue: Queue,
    /// Who may see the console and `/metrics`.
    pub guard: guard::Guard,
    /// Where console pages render.
    pub console: Renderer,
}

/// The fields of a request head the framer does not keep.
struct Fields<'a> {
    authorization: Option<&'a [u8]>,
    range: Option<&'a str>,
}

fn fields(raw: &[u8]) -> Option<Fields<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; ADMIN_LIMITS.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(raw).ok()?;
    let mut f = Fields {
        authorization: None,
        range: None,
    };
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("authorization") {
            f.authorization = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("range") {
            f.range = std::str::from_utf8(h.value).ok();
        }
    }
    Some(f)
}

/// Accepts admin connections until shutdown.
pub fn accept_loop(listener: may::net::TcpListener, admin: Arc<Admin>) {
    let health = admin.health.clone();
    oneshot::accept_loop(listener, admin, &health, handle);
}

fn handle(mut stream: may::net::TcpStream, admin: &Admin) {
    let Some((head, raw)) = oneshot::read_request(&mut stream, ADMIN_LIMITS, ADMIN_TIMEOUT) else {
        return;
    };
    let path = head.target.split(|&b| b == b'?').next().unwrap_or_default();
    let get = head.method != Method::Post;
    let bodyless = head.method == Method::Head;
    let text = "text/plain; charset=utf-8";
    let probe = path == b"/healthz" || path == b"/readyz";
    if !probe {
        let Some(f) = fields(&raw) else {
            oneshot::answer(&mut stream, 400, "Bad Request", b"bad request\n", bodyless);
            return;
        };
        let client = stream
            .peer_addr()
            .map_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let target = String::from_utf8_lossy(&head.target).into_owned();
        if let Some(r) = console_answer(admin, client, head.method, &f, &target) {
            write_console(&mut stream, r, bodyless, &admin.console);
            return;
        }
    }
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
            let body = b"not found: try /, /metrics, /healthz, /readyz\n";
            oneshot::answer(&mut stream, 404, "Not Found", body, bodyless);
        }
    }
}

/// What the console says to a request that is not a probe: a refusal when the guard
/// refuses it (`/metrics` included), 405 for a console page asked with a method that is not
/// GET or HEAD, or the page; `None` for `/metrics` allowed and paths that are no page.
fn console_answer(
    admin: &Admin,
    client: std::net::IpAddr,
    method: Method,
    f: &Fields<'_>,
    target: &str,
) -> Option<Response> {
    let refused = |status, reason, header: String, text| Response {
        headers: header,
        ..Response::text(status, reason, text)
    };
    match admin
        .guard
        .check(client, f.authorization, std::time::Instant::now())
    {
        Verdict::Allowed => {}
        Verdict::Unauthorized => {
            return Some(refused(
                401,
                "Unauthorized",
                "WWW-Authenticate: Basic realm=\"didgate console\", charset=\"UTF-8\"\r\n".into(),
                "the console needs its password\n",
            ));
        }
        Verdict::Limited => {
            return Some(refused(
                429,
                "Too Many Requests",
                format!("Retry-After: {}\r\n", guard::FAILURE_WINDOW.as_secs()),
                "too many wrong passwords; wait a minute\n",
            ));
        }
    }
    let (page, query) = target.split_once('?').unwrap_or((target, ""));
    if page == "/metrics" || !console::is_page(page) {
        return None;
    }
    if !matches!(method, Method::Get | Method::Head) {
        // Read-only: nothing here changes state, whatever the method.
        return Some(refused(
            405,
            "Method Not Allowed",
            "Allow: GET, HEAD\r\n".into(),
            "the console is read-only\n",
        ));
    }
    let req = console::Request {
        path: page,
        query,
        range: f.range,
    };
    Some(admin.console.answer(&req))
}

/// Writes a console answer with its security headers, streaming a file body, and closes.
fn write_console(
    stream: &mut may::net::TcpStream,
    r: Response,
    head_only: bool,
    console: &Renderer,
) {
    use std::io::Write;
    let len = match &r.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(f) => f.len(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\n{}{}Connection: close\r\n\r\n",
        r.status,
        r.reason,
        r.content_type,
        console::SECURITY_HEADERS,
        r.headers
    )
    .into_bytes();
    match r.body {
        Body::Bytes(b) => {
            if !head_only {
                out.extend_from_slice(&b);
            }
            let _ = stream.write_all(&out);
        }
        Body::File(f) => {
            if stream.write_all(&out).is_ok() && !head_only {
                let _ = stream.set_write_timeout(Some(CONSOLE_STREAM_TIMEOUT));
                let _ = console.stream(&f, stream, CONSOLE_STREAM_TIMEOUT);
            }
        }
    }
}
