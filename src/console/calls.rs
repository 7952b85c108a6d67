//! `/calls` (the `didgate calls` table with its filters, paged by call time and sequence
//! number, so new arrivals never shift a page), `/calls.csv` (the same filter as
//! `didgate calls --format csv`), and `/call/SEQ` (one call: its CDR, its recordings with a
//! player, the raw events).

use maud::{Markup, html};

use super::page::{self, duration, untrusted};
use super::{Console, PAGE_ROWS, Response, encode, param};
use crate::call::facts::{Facts, Kind};
use crate::call::report::{CallRow, Recording};
use crate::cli::calls::{Args, Format, Query};
use crate::cli::{Error, Result};

/// The filters a query string carries, as `didgate calls` takes them.
fn args(c: &Console, q: &str) -> Result<Args> {
    let min_billsec =
        match param(q, "min_billsec") {
            None => None,
            Some(s) => Some(s.trim().parse().map_err(|_| {
                Error::Usage(format!("min_billsec {s:?}: a whole number of seconds"))
            })?),
        };
    Ok(Args {
        since: param(q, "since"),
        until: param(q, "until"),
        direction: param(q, "direction"),
        disposition: param(q, "disposition"),
        number: param(q, "number"),
        min_billsec,
        format: Format::Csv,
        tz: None,
        config_tz: c.timezone.clone(),
    })
}

/// The filter part of a query string, to carry into the pager and the CSV link.
fn filter_query(a: &Args) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("since", &a.since),
        ("until", &a.until),
        ("direction", &a.direction),
        ("disposition", &a.disposition),
        ("number", &a.number),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(m) = a.min_billsec {
        parts.push(format!("min_billsec={m}"));
    }
    parts.join("&")
}

/// `after=TIME:SEQ`: where a page starts.
fn cursor(q: &str) -> Result<Option<(i64, u64)>> {
    let Some(s) = param(q, "after") else {
        return Ok(None);
    };
    let bad = || Error::Usage(format!("after {s:?}: not a page position"));
    let (t, seq) = s.split_once(':').ok_or_else(bad)?;
    Ok(Some((
        t.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    )))
}

/// The calls page.
///
/// # Errors
/// [`Error::Usage`] for a bad filter; store errors.
pub fn list(c: &Console, q: &str) -> Result<Response> {
    let args = args(c, q)?;
    let query = Query::new(&args)?;
    let from = cursor(q)?.unwrap_or((query.since, 0));
    let mut rows: Vec<CallRow> = Vec::new();
    let mut more = false;
    query.walk(&c.store, from, |page, next| {
        for row in page {
            if rows.len() == PAGE_ROWS {
                more = true;
                return Ok(false);
            }
            rows.push(row);
        }
        more = next.is_some() && rows.len() == PAGE_ROWS;
        Ok(rows.len() < PAGE_ROWS)
    })?;
    let filters = filter_query(&args);
    let next = rows.last().filter(|_| more).map(|r| {
        format!(
            "/calls?{filters}{}after={}:{}",
            if filters.is_empty() { "" } else { "&" },
            r.at_ms,
            r.seq + 1
        )
    });
    let zone = &query.zone;
    let content = html! {
        (filter_form(&args))
        p.muted {
            "Times in " (zone.name()) ". "
            a href={"/calls.csv?" (filters)} download="calls.csv" { "Download CSV" }
            " (every call of this filter)"
        }
        div.scroll { table.reflow {
            thead { tr {
                th { "time (" (zone.name()) ")" } th { "dir" } th { "from" } th { "to" }
                th { "disposition" } th.n { "duration" } th.n { "billsec" } th { "recording" }
            } }
            tbody {
                @for r in &rows {
                    tr {
                        td data-label={"time (" (zone.name()) ")"} { a href={"/call/" (r.seq)} {
                            @match r.facts.at_ms {
                                Some(ms) => (zone.time(ms)),
                                None => bdi { (untrusted(&r.facts.raw_time)) },
                            }
                        } }
                        td data-label="dir" { (direction(&r.facts)) }
                        td data-label="from" { bdi { (untrusted(&r.facts.src)) } }
                        td data-label="to" { bdi { (untrusted(&r.facts.dst)) } }
                        td data-label="disposition" { bdi { (untrusted(&r.facts.disposition)) } }
                        td.n data-label="duration" { (duration(u64::from(r.facts.duration))) }
                        td.n data-label="billsec" { (r.facts.billed_seconds()) }
                        td data-label="recording" { (recording(r.recording)) }
                    }
                }
            }
        } }
        p.muted { (rows.len()) " calls on this page" }
        div.pager {
            @if from != (query.since, 0) { a href={"/calls?" (filters)} { "« first page" } }
            @if let Some(n) = &next { a href=(n) { "next page »" } }
        }
    };
    Ok(Response::html(
        200,
        "OK",
        page::document("Calls", "/calls", content),
    ))
}

fn direction(f: &Facts) -> &'static str {
    crate::call::report::short_direction(&f.direction).unwrap_or("–")
}

fn recording(r: Recording) -> Markup {
    let class = match r {
        Recording::Failed | Recording::Expired => "bad",
        Recording::Archived => "ok",
        _ => "muted",
    };
    html! { span class=(class) { (r.name()) } }
}

fn filter_form(a: &Args) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html! {
        form.filters method="get" action="/calls" {
            label { "since" input name="since" value=(v(&a.since)) placeholder="24h, today, 2026-05-12"; }
            label { "until" input name="until" value=(v(&a.until)) placeholder="now"; }
            label { "direction" select name="direction" {
                option value="" selected[a.direction.is_none()] { "any" }
                option value="in" selected[a.direction.as_deref() == Some("in")] { "in" }
                option value="out" selected[a.direction.as_deref() == Some("out")] { "out" }
            } }
            label { "disposition" input name="disposition" value=(v(&a.disposition)) placeholder="ANSWERED"; }
            label { "number" input name="number" value=(v(&a.number)) placeholder="prefix, either side"; }
            label { "min billsec" input name="min_billsec" inputmode="numeric" value=(a.min_billsec.map(|m| m.to_string()).unwrap_or_default()); }
            button type="submit" { "Show" }
        }
    }
}

/// `/calls.csv`: what `didgate calls --format csv` prints for the same filter.
///
/// # Errors
/// [`Error::Usage`] for a bad filter; store errors.
pub fn csv(c: &Console, q: &str) -> Result<Response> {
    let args = args(c, q)?;
    let mut out = Vec::new();
    crate::cli::calls::run(&c.store, &args, &mut out)?;
    Ok(Response {
        status: 200,
        reason: "OK",
        content_type: "text/csv; charset=utf-8",
        headers: "Content-Disposition: attachment; filename=\"calls.csv\"\r\n".into(),
        body: super::Body::Bytes(out),
    })
}

/// `/call/SEQ`: one call, or one recording or SMS, with every event of its callid.
///
/// # Errors
/// Store errors.
pub fn one(c: &Console, seq: u64) -> Result<Response> {
    let Some(ev) = c.store.event(seq)? else {
        return Ok(Response::html(
            404,
            "Not Found",
            page::message(
                "No such event",
                &format!("No event {seq} is stored (retention may have removed it)."),
            ),
        ));
    };
    let zone = c.zone();
    let facts = Facts::of(&ev.kind, ev.format, &ev.body);
    let callid = facts.as_ref().map(|f| f.callid.clone()).unwrap_or_default();
    let mut related = c.store.call_events(&callid, |rec| {
        Facts::of(rec.kind, rec.format, rec.body).is_some_and(|f| f.callid == callid)
    })?;
    if related.iter().all(|e| e.seq != ev.seq) {
        related.push(ev.clone());
    }
    let mut recordings = Vec::new();
    for e in related.iter().filter(|e| e.kind == Kind::Recording.name()) {
        recordings.push((e.seq, c.store.archive_record(e.seq)?));
    }
    let content = html! {
        @if let Some(f) = &facts {
            dl {
                dt { "time (" (zone.name()) ")" }
                dd { @match f.at_ms { Some(ms) => (zone.rfc3339(ms)), None => { bdi { (untrusted(&f.raw_time)) } " " span.muted { "(not an accepted time; filed when stored)" } } } }
                dt { "callid" } dd { bdi { (untrusted(&f.callid)) } }
                dt { "direction" } dd { bdi { (untrusted(&f.direction)) } }
                dt { "from" } dd { bdi { (untrusted(&f.src)) } }
                dt { "to" } dd { bdi { (untrusted(&f.dst)) } }
                dt { "disposition" } dd { bdi { (untrusted(&f.disposition)) } }
                dt { "duration" } dd { (duration(u64::from(f.duration))) }
                dt { "billed" } dd { (f.billed_seconds()) " s" }
            }
        }
        h2 { "Recordings" }
        @if recordings.is_empty() { p.muted { "None received." } }
        @for (rseq, record) in &recordings {
            @let state = Recording::of_archive(record.as_ref().map(|r| r.state));
            div.card {
                p { "Recording " (rseq) ": " (recording(state)) }
                @if state == Recording::Archived {
                    audio controls preload="none" src={"/recording/" (rseq) ".mp3"} {
                        a href={"/recording/" (rseq) ".mp3"} { "download" }
                    }
                }
                @if let Some(r) = record {
                    @if let Some(e) = &r.error { p.muted { bdi { (untrusted(e)) } } }
                }
            }
        }
        h2 { "Events" }
        @for e in &related {
            h3 { (e.kind) " " (e.seq) " " span.muted { "stored " (zone.time(e.stored_at_ms)) } }
            pre { (untrusted(&String::from_utf8_lossy(&e.body))) }
        }
    };
    let title = match facts.as_ref().map(|f| f.kind) {
        Some(Kind::Cdr) => "Call",
        Some(Kind::Recording) => "Recording",
        Some(Kind::Sms) => "SMS",
        None => "Event",
    };
    Ok(Response::html(
        200,
        "OK",
        page::document(title, "/calls", content),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_positions_parse_or_say_why() {
        assert_eq!(
            cursor("after=1700000000000:42").unwrap(),
            Some((1_700_000_000_000, 42))
        );
        assert_eq!(cursor("x=1").unwrap(), None);
        assert!(matches!(cursor("after=12"), Err(Error::Usage(_))));
        assert!(matches!(cursor("after=a:b"), Err(Error::Usage(_))));
    }
}
