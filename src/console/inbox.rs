//! `/sms`: the SMS inbox, newest first, each message whole; `?from=NUMBER` shows one
//! sender's.
//! Paged by sequence number (`before=SEQ`), so new messages never shift a page.

use maud::html;

use super::page::{self, untrusted};
use super::{Console, PAGE_ROWS, Response, encode, param};
use crate::cli::{Error, Result};
use crate::event::BodyFormat;
use crate::ingest::decode::form::Form;

/// Events looked at per page (newest first) for SMS: a page stops there, and its "older"
/// link goes on from it, so a store of mostly CDRs never makes a slow page.
pub const SCAN_BUDGET: usize = 20_000;

/// One message as shown.
struct Sms {
    seq: u64,
    stored_at_ms: i64,
    src: String,
    dst: String,
    received_at: String,
    text: String,
}

fn sms_of(seq: u64, stored_at_ms: i64, format: BodyFormat, body: &[u8]) -> Sms {
    let mut m = Sms {
        seq,
        stored_at_ms,
        src: String::new(),
        dst: String::new(),
        received_at: String::new(),
        text: String::new(),
    };
    if format == BodyFormat::Form {
        let form = Form::decode(body);
        for (name, value) in form.pairs() {
            match name {
                "src" => m.src = value.trim().to_string(),
                "dst" => m.dst = value.trim().to_string(),
                "received_at" => m.received_at = value.to_string(),
                "message" | "text" => m.text = value.to_string(),
                _ => {}
            }
        }
    } else {
        m.text = String::from_utf8_lossy(body).into_owned();
    }
    m
}

/// The inbox page.
///
/// # Errors
/// [`Error::Usage`] for a bad position; store errors.
pub fn page(c: &Console, q: &str) -> Result<Response> {
    let from = param(q, "from");
    let mut before = match param(q, "before") {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| Error::Usage(format!("before {s:?}: not an event number")))?,
        ),
    };
    let want = from.as_deref().map(crate::call::report::digits);
    let mut messages = Vec::new();
    let mut looked = 0;
    // Where the scan stopped with events left to look at (`None`: the oldest was reached).
    let mut stopped = None;
    while messages.len() < PAGE_ROWS && looked < SCAN_BUDGET {
        let budget = crate::cli::SCAN_CHUNK.min(SCAN_BUDGET - looked);
        let page = c
            .store
            .events_backward(before, budget, |_, rec| rec.kind == "sms")?;
        looked += budget;
        for e in page.items {
            let m = sms_of(e.seq, e.stored_at_ms, e.format, &e.body);
            if want
                .as_deref()
                .is_none_or(|w| crate::call::report::digits(&m.src) == w)
            {
                messages.push(m);
            }
        }
        // `next` is where the next older page starts, ready to pass as `before`.
        before = page.next;
        stopped = before;
        if before.is_none() {
            break;
        }
    }
    let older = if messages.len() >= PAGE_ROWS {
        messages.truncate(PAGE_ROWS);
        messages.last().map(|m| m.seq)
    } else {
        stopped
    };
    let zone = c.zone();
    let keep = from
        .as_deref()
        .map(|f| format!("from={}&", encode(f)))
        .unwrap_or_default();
    let content = html! {
        @if let Some(f) = &from {
            p { "From " bdi { (untrusted(f)) } " · " a href="/sms" { "every sender" } }
        }
        @if messages.is_empty() { p.muted { "No SMS here." } }
        @for m in &messages {
            article.msg {
                p.meta {
                    a href={"/call/" (m.seq)} { (zone.time(m.stored_at_ms)) }
                    " · from "
                    a href={"/sms?from=" (encode(&m.src))} { bdi { (untrusted(&m.src)) } }
                    " to " bdi { (untrusted(&m.dst)) }
                    @if !m.received_at.is_empty() {
                        " · " span.muted { "sent " bdi { (untrusted(&m.received_at)) } }
                    }
                }
                div.sms { bdi { (untrusted(&m.text)) } }
            }
        }
        div.pager {
            @if let Some(o) = older { a href={"/sms?" (keep) "before=" (o)} { "older »" } }
        }
    };
    Ok(Response::html(
        200,
        "OK",
        page::document("SMS inbox", "/sms", content),
    ))
}
