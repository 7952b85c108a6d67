//! The web console on the admin listener: read-only pages of calls, recordings, SMS and the
//! gateway's health, rendered on the server (no script), for operators who never open a
//! terminal.
//!
//! A request goes: [`guard`] (basic auth when `console_password` is set, failures rate
//! limited, on the admin coroutine) → [`renderer`] (the console's own thread) → the page it
//! names → [`Response`], written by the admin listener with the security headers every
//! console answer carries. Pages read the store in short read transactions (rollups and
//! index pages, never a whole scan) and never write it.

pub mod audio;
pub mod calls;
pub mod dashboard;
pub mod guard;
pub mod inbox;
pub mod lists;
pub mod page;
pub mod renderer;

use std::path::PathBuf;
use std::sync::Arc;

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::writer::Queue;

/// Shortest `console_password` accepted.
pub const MIN_PASSWORD_BYTES: usize = 12;

/// Rows per page of the calls list, the inbox, the quarantine.
pub const PAGE_ROWS: usize = 100;

/// Every console answer's security headers: nothing loads from anywhere but the console
/// itself, no script runs, no page frames it, no referrer leaks a callid to anyone.
pub const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'none'; \
style-src 'self'; img-src 'self'; media-src 'self'; form-action 'self'; base-uri 'none'; \
frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
X-Frame-Options: DENY\r\nCache-Control: no-store\r\n";

/// What the console reads (owned by its thread, [`renderer`]).
pub struct Console {
    /// The store, shared with the writer (reads only).
    pub store: Arc<Store>,
    /// The config's `timezone`.
    pub timezone: Option<String>,
    /// Where `serve` keeps its state (`alerts.json`).
    pub data_dir: PathBuf,
    /// Where archived recordings are, when archiving is on.
    pub recordings_dir: Option<PathBuf>,
    /// Counters and health, for the dashboard.
    pub metrics: Arc<Metrics>,
    /// The health flags.
    pub health: Arc<Health>,
    /// The writer's queue, for its depth.
    pub queue: Queue,
}

/// One console request: what the admin listener read.
pub struct Request<'a> {
    /// The path, without the query.
    pub path: &'a str,
    /// The query string (after `?`), undecoded.
    pub query: &'a str,
    /// The `Range` field, for recordings.
    pub range: Option<&'a str>,
}

/// What a page answers.
pub enum Body {
    /// The whole body.
    Bytes(Vec<u8>),
    /// A byte range of a file, streamed by the listener.
    File(audio::Slice),
}

/// A console answer.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// Content-Type.
    pub content_type: &'static str,
    /// Further header lines, each ending in CRLF.
    pub headers: String,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A page of HTML.
    pub fn html(status: u16, reason: &'static str, markup: maud::Markup) -> Response {
        Response {
            status,
            reason,
            content_type: "text/html; charset=utf-8",
            headers: String::new(),
            body: Body::Bytes(markup.into_string().into_bytes()),
        }
    }

    /// Plain text (errors).
    pub fn text(status: u16, reason: &'static str, text: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            headers: String::new(),
            body: Body::Bytes(text.as_bytes().to_vec()),
        }
    }

    fn not_found() -> Response {
        Response::html(
            404,
            "Not Found",
            page::message("Not found", "No such page."),
        )
    }
}

/// A console page, as a path names it.
enum Page<'a> {
    Dashboard,
    Calls,
    CallsCsv,
    Sms,
    Quarantine,
    Alerts,
    Stylesheet,
    /// `/call/SEQ`, the number not yet parsed.
    Call(&'a str),
    /// `/recording/SEQ.mp3`, the number not yet parsed.
    Recording(&'a str),
}

impl Page<'_> {
    fn of(path: &str) -> Option<Page<'_>> {
        Some(match path {
            "/" => Page::Dashboard,
            "/calls" => Page::Calls,
            "/calls.csv" => Page::CallsCsv,
            "/sms" => Page::Sms,
            "/quarantine" => Page::Quarantine,
            "/alerts" => Page::Alerts,
            "/console.css" => Page::Stylesheet,
            p => {
                if let Some(seq) = p.strip_prefix("/call/") {
                    Page::Call(seq)
                } else if let Some(seq) = p.strip_prefix("/recording/") {
                    Page::Recording(seq.strip_suffix(".mp3").unwrap_or(seq))
                } else {
                    return None;
                }
            }
        })
    }
}

impl Console {
    /// Answers one console request (the guard has let it through). Never panics on input:
    /// every parameter is parsed and checked, every failure is a page that says why.
    pub fn answer(&self, req: &Request<'_>) -> Response {
        let result = match Page::of(req.path) {
            Some(Page::Dashboard) => dashboard::page(self),
            Some(Page::Calls) => calls::list(self, req.query),
            Some(Page::CallsCsv) => calls::csv(self, req.query),
            Some(Page::Sms) => inbox::page(self, req.query),
            Some(Page::Quarantine) => lists::quarantine(self, req.query),
            Some(Page::Alerts) => lists::alerts(self),
            Some(Page::Stylesheet) => Ok(page::stylesheet()),
            Some(Page::Call(seq)) => match seq.parse() {
                Ok(seq) => calls::one(self, seq),
                Err(_) => Ok(Response::not_found()),
            },
            Some(Page::Recording(seq)) => match seq.parse() {
                Ok(seq) => audio::serve(self, seq, req.range),
                Err(_) => Ok(Response::not_found()),
            },
            None => Ok(Response::not_found()),
        };
        result.unwrap_or_else(|e| match e {
            crate::cli::Error::Usage(why) => {
                Response::html(400, "Bad Request", page::message("Not understood", &why))
            }
            other => {
                crate::ops::log::warn_limited(
                    "console",
                    format_args!("console page {}: {other}", req.path),
                );
                Response::html(
                    500,
                    "Internal Server Error",
                    page::message("Cannot read the store", &other.to_string()),
                )
            }
        })
    }

    /// The zone pages show times in: the config's, else the system's.
    pub fn zone(&self) -> crate::call::zone::Zone {
        crate::call::zone::Zone::resolve(None, self.timezone.as_deref())
            .unwrap_or_else(|_| crate::call::zone::Zone::utc())
    }
}

/// Whether `path` is one of the console's pages (a request for anything else is a 404,
/// whatever its method).
pub fn is_page(path: &str) -> bool {
    Page::of(path).is_some()
}

/// One query parameter, percent-decoded (`+` is a space); `None` when absent or empty.
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v)).filter(|v| !v.is_empty())
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` percent-encoded for a query string.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode_and_encode_back() {
        let q = "number=%2B44+20&direction=in&x=%zz&empty=&last=%4";
        assert_eq!(param(q, "number").as_deref(), Some("+44 20"));
        assert_eq!(param(q, "direction").as_deref(), Some("in"));
        assert_eq!(param(q, "x").as_deref(), Some("%zz"));
        assert_eq!(param(q, "empty"), None);
        assert_eq!(param(q, "absent"), None);
        assert_eq!(param(q, "last").as_deref(), Some("%4"));
        assert_eq!(decode(&encode("a b/+é")), "a b/+é");
    }
}
