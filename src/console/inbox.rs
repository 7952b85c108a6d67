//! `/sms`: the SMS inbox: a page of the newest messages, each whole, grouped by sender (the
//! sender of the newest first, each sender's newest first); `?from=NUMBER` shows one sender's
//! messages. Paged by sequence number (`before=SEQ`), so new messages never shift a page.

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

/// The messages of a page (newest first) grouped by sender, as a number's digits: the
/// sender of the newest message first, each group newest first.
fn by_sender(messages: &[Sms]) -> Vec<Vec<&Sms>> {
    let mut groups: Vec<Vec<&Sms>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for m in messages {
        let key = crate::call::report::digits(&m.src);
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(m);
    }
    groups
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
    let senders = by_sender(&messages);
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
        @for group in &senders {
            section.sender {
                h2 {
                    a href={"/sms?from=" (encode(&group[0].src))} { bdi { (untrusted(&group[0].src)) } }
                    span.muted {
                        " · " (group.len()) @if group.len() == 1 { " message" } @else { " messages" }
                        @if from.is_none() { " on this page" }
                    }
                }
                @for m in group {
                    article.msg {
                        p.meta {
                            a href={"/call/" (m.seq)} { (zone.time(m.stored_at_ms)) }
                            " · to " bdi { (untrusted(&m.dst)) }
                            @if !m.received_at.is_empty() {
                                " · " span.muted { "sent " bdi { (untrusted(&m.received_at)) } }
                            }
                        }
                        div.sms { bdi { (untrusted(&m.text)) } }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(seq: u64, src: &str) -> Sms {
        sms_of(
            seq,
            0,
            BodyFormat::Form,
            format!("src={src}&message=m{seq}").as_bytes(),
        )
    }

    #[test]
    fn a_page_groups_by_sender_newest_sender_first() {
        // Newest first, as the page reads them; "+1 555" and "1555" are one number.
        let page = [
            sms(9, "1555"),
            sms(8, "4420"),
            sms(7, "%2B1+555"),
            sms(6, "4420"),
            sms(5, "33"),
        ];
        let groups = by_sender(&page);
        let seqs: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| g.iter().map(|m| m.seq).collect())
            .collect();
        assert_eq!(seqs, [vec![9, 7], vec![8, 6], vec![5]]);
        assert!(by_sender(&[]).is_empty());
    }
}
