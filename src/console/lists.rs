//! `/quarantine` (bodies that did not decode, oldest first, with the reason) and `/alerts`
//! (every rule `serve` evaluates: its state, since when, and the calls behind it).

use maud::html;

use super::page::{self, untrusted};
use super::{Console, PAGE_ROWS, Response, param};
use crate::cli::{Error, Result};

/// Bytes of a quarantined body shown in the list (the whole body is on `didgate quarantine
/// show N`).
pub const BODY_PREVIEW_BYTES: usize = 2048;

/// The quarantine page.
///
/// # Errors
/// [`Error::Usage`] for a bad position; store errors.
pub fn quarantine(c: &Console, q: &str) -> Result<Response> {
    let from = match param(q, "from") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| Error::Usage(format!("from {s:?}: not a quarantine number")))?,
    };
    let page = c.store.quarantine_page(from, PAGE_ROWS)?;
    let zone = c.zone();
    let content = html! {
        p.muted { "Bodies that did not decode, kept as received. " code { "didgate quarantine show N" } " prints one whole." }
        @if page.items.is_empty() { p.muted { "Nothing in quarantine." } }
        div.scroll { table {
            thead { tr { th { "#" } th { "stored (" (zone.name()) ")" } th { "hook" } th { "reason" } th { "body" } } }
            tbody {
                @for qd in &page.items {
                    @let body = String::from_utf8_lossy(&qd.event.body);
                    @let cut = crate::event::truncate_str(&body, BODY_PREVIEW_BYTES);
                    tr {
                        td { (qd.seq) }
                        td { (zone.time(qd.event.stored_at_ms)) }
                        td { (qd.event.kind) }
                        td { bdi { (untrusted(&qd.reason)) } }
                        td { pre { (untrusted(cut)) @if cut.len() < body.len() { "…" } } }
                    }
                }
            }
        } }
        div.pager { @if let Some(n) = page.next { a href={"/quarantine?from=" (n)} { "next page »" } } }
    };
    Ok(Response::html(
        200,
        "OK",
        page::document("Quarantine", "/quarantine", content),
    ))
}

/// The alerts page: the state `serve` wrote after its last evaluation.
///
/// # Errors
/// None today; a missing or unreadable state file is shown as such.
pub fn alerts(c: &Console) -> Result<Response> {
    let snapshot = crate::alert::state::Snapshot::load(&crate::alert::state_path(&c.data_dir));
    let zone = c.zone();
    let now = crate::timestamp::now_ms();
    let content = html! {
        @match &snapshot {
            None => p.muted { "No alert rules have been evaluated (none configured, or serve has not run them yet)." },
            Some(s) => {
                p.muted { "Evaluated " (page::age(now, s.evaluated_at_ms)) ", every " (s.interval_ms / 1000) " s." }
                @if s.rules.is_empty() { p.muted { "No rules." } }
                @for (name, r) in &s.rules {
                    div.card {
                        h2 {
                            bdi { (untrusted(name)) } " "
                            @if r.firing { span.bad { "FIRING" } } @else { span.ok { "ok" } }
                        }
                        p { (r.rule_type) " · since " (zone.time(r.since_ms)) }
                        @if !r.summary.is_empty() { p { bdi { (untrusted(&r.summary)) } } }
                        @if !r.calls.is_empty() {
                            div.scroll { table {
                                thead { tr { th { "call time" } th { "from" } th { "to" } th.n { "billsec" } } }
                                tbody {
                                    @for t in &r.calls {
                                        tr {
                                            td { a href={"/call/" (t.seq)} { (zone.time(t.at_ms)) } }
                                            td { bdi { (untrusted(&t.src)) } }
                                            td { bdi { (untrusted(&t.dst)) } }
                                            td.n { (t.billsec) }
                                        }
                                    }
                                }
                            } }
                        }
                    }
                }
            }
        }
    };
    Ok(Response::html(
        200,
        "OK",
        page::document("Alerts", "/alerts", content),
    ))
}
