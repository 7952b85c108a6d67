//! `/`: today and the last 30 days (calls, answered, ASR, ACD, billed minutes, SMS) with a
//! chart of calls per day, and the gateway's health. Read from the quarter-hour rollups (a
//! month is 2,880 small values), never from a scan.

use std::sync::atomic::Ordering;

use maud::{Markup, html};

use super::page::{self, age, bytes, duration, percent, untrusted};
use super::{Console, Response};
use crate::call::report::{By, Grouping, Rows};
use crate::call::tally::Tally;
use crate::cli::Result;

/// Days the dashboard shows.
pub const DAYS: i64 = 30;

/// A day whose ASR is this many points under the period's is marked red in the chart.
pub const ASR_DROP_POINTS: f64 = 10.0;

/// Events looked at, newest first, to find the last one of each kind.
pub const LAST_EVENT_BUDGET: usize = 20_000;

/// The dashboard.
///
/// # Errors
/// Store errors.
pub fn page(c: &Console) -> Result<Response> {
    let zone = c.zone();
    let now = crate::timestamp::now_ms();
    let today = zone.day_start(now, 0);
    let first = zone.day_start(now, DAYS - 1);
    let tomorrow = zone.day_start(today + 36 * 3_600_000, 0);
    let g = Grouping {
        by: vec![By::Day],
        prefix_len: 0,
        zone: zone.clone(),
    };
    let rows: Rows = crate::cli::report::rows(&c.store, &g, first, tomorrow)?;
    // Every day of the period, the quiet ones too.
    let mut days: Vec<(String, Tally)> = Vec::new();
    for d in (0..DAYS).rev() {
        let key = zone.day(zone.day_start(now, d));
        let t = rows.0.get(&vec![key.clone()]).copied().unwrap_or_default();
        days.push((key, t));
    }
    let period = rows.total();
    let today_tally = days.last().map(|(_, t)| *t).unwrap_or_default();
    let content = html! {
        h2 { "Today" span.muted { " (" (zone.name()) ")" } }
        (cards(&today_tally))
        h2 { "Last " (DAYS) " days" }
        (cards(&period))
        (chart(&days, period.asr_percent()))
        (daily_table(&days))
        h2 { "Gateway" }
        (health(c, &zone, now)?)
    };
    Ok(Response::html(
        200,
        "OK",
        page::document("Dashboard", "/", content),
    ))
}

fn cards(t: &Tally) -> Markup {
    html! {
        div.cards {
            div.card { b { (t.calls) } span { "calls" } }
            div.card { b { (t.answered) } span { "answered" } }
            div.card { b { (percent(t.asr_percent())) } span { "ASR" } }
            div.card { b { (t.acd_seconds().map_or("–".into(), |s| duration(s.round() as u64))) } span { "ACD (m:ss)" } }
            div.card { b { (t.billed_minutes) } span { "billed minutes (per call, rounded up)" } }
            div.card { b { (t.sms) } span { "SMS" } }
        }
    }
}

/// Calls per day as bars, answered ones darker; a day whose ASR fell well under the
/// period's is red. Inline SVG: no script, no request.
fn chart(days: &[(String, Tally)], period_asr: Option<f64>) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const BASE: f64 = 140.0;
    let max = days.iter().map(|(_, t)| t.calls).max().unwrap_or(0).max(1) as f64;
    let step = W / days.len().max(1) as f64;
    let bar = step * 0.7;
    html! {
        svg.chart viewBox={"0 0 " (W) " " (H)} role="img" aria-label="Calls per day, answered darker, days with an ASR drop in red" {
            @for (i, (day, t)) in days.iter().enumerate() {
                @let x = i as f64 * step + (step - bar) / 2.0;
                @let h = t.calls as f64 / max * (BASE - 10.0);
                @let ha = t.answered as f64 / max * (BASE - 10.0);
                @let drop = matches!((t.asr_percent(), period_asr), (Some(a), Some(p)) if a < p - ASR_DROP_POINTS);
                g {
                    title { (day) ": " (t.calls) " calls, " (t.answered) " answered, ASR " (percent(t.asr_percent())) }
                    rect class=(if drop { "bar drop" } else { "bar" }) x=(format!("{x:.1}")) y=(format!("{:.1}", BASE - h)) width=(format!("{bar:.1}")) height=(format!("{h:.1}")) {}
                    @if !drop {
                        rect.answered x=(format!("{x:.1}")) y=(format!("{:.1}", BASE - ha)) width=(format!("{bar:.1}")) height=(format!("{ha:.1}")) {}
                    }
                }
                @if i % 5 == 0 || i + 1 == days.len() {
                    text x=(format!("{:.1}", x)) y=(format!("{:.1}", H - 4.0)) { (day.get(5..).unwrap_or(day)) }
                }
            }
        }
    }
}

fn daily_table(days: &[(String, Tally)]) -> Markup {
    html! {
        div.scroll {
            table.compact {
                thead { tr {
                    th { "day" } th.n { "calls" } th.n { "answered" } th.n { "ASR" }
                    th.n { "ACD" } th.n { "billed min" } th.n { "SMS" }
                } }
                tbody {
                    @for (day, t) in days.iter().rev() {
                        tr {
                            td { (day) }
                            td.n { (t.calls) }
                            td.n { (t.answered) }
                            td.n { (percent(t.asr_percent())) }
                            td.n { (t.acd_seconds().map_or("–".into(), |s| duration(s.round() as u64))) }
                            td.n { (t.billed_minutes) }
                            td.n { (t.sms) }
                        }
                    }
                }
            }
        }
    }
}

/// Ingest health: the last event of each kind and its age, the dedup table's reach, disk,
/// queue, the recordings' backlog, delivery lag per destination, firing alerts.
fn health(c: &Console, zone: &crate::call::zone::Zone, now: i64) -> Result<Markup> {
    let mut last: Vec<(&str, Option<i64>)> =
        vec![("cdr", None), ("recording", None), ("sms", None)];
    let mut before = None;
    let mut looked = 0;
    while looked < LAST_EVENT_BUDGET && last.iter().any(|(_, t)| t.is_none()) {
        // Noted while walking, and nothing kept: no body is copied out.
        let page = c
            .store
            .events_backward(before, crate::cli::SCAN_CHUNK, |_, rec| {
                if let Some(slot) = last.iter_mut().find(|(k, t)| *k == rec.kind && t.is_none()) {
                    slot.1 = Some(rec.stored_at_ms);
                }
                false
            })?;
        looked += crate::cli::SCAN_CHUNK;
        // `next` is where the next older page starts, ready to pass as `before`.
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    let m = &c.metrics;
    let reach = m.dedup_reach_seconds.load(Ordering::Relaxed);
    let backlog = c.store.archive_backlog()?;
    let last_seq = c.store.last_seq()?.unwrap_or(0);
    let dests = c.store.dest_states()?;
    let alerts = crate::alert::state::Snapshot::load(&crate::alert::state_path(&c.data_dir));
    let firing: Vec<(String, String)> = alerts
        .map(|s| {
            s.rules
                .into_iter()
                .filter(|(_, r)| r.firing)
                .map(|(name, r)| (name, r.summary))
                .collect()
        })
        .unwrap_or_default();
    Ok(html! {
        div.scroll { table {
            tbody {
                @for (kind, at) in &last {
                    tr { th { "last " (kind) } td {
                        @match at {
                            Some(ms) => { (zone.time(*ms)) " " span.muted { "(" (age(now, *ms)) ")" } }
                            None => span.muted { "none in the newest " (LAST_EVENT_BUDGET) " events" },
                        }
                    } }
                }
                tr { th { "dedup reach" } td { (duration(reach)) " " span.muted { "(retries older than this are stored again)" } } }
                tr { th { "disk free" } td { (bytes(m.disk_free_bytes.load(Ordering::Relaxed))) } }
                tr { th { "queue" } td { (c.queue.depth()) " events waiting for the writer" } }
                tr { th { "ready" } td {
                    @let why = c.health.not_ready();
                    @if why.is_empty() { span.ok { "yes" } } @else { span.bad { (why.join("; ")) } }
                } }
                tr { th { "recordings to archive" } td { (backlog) } }
                @for (name, s) in &dests {
                    tr { th { "delivery lag: " (name) } td {
                        (last_seq.saturating_sub(s.cursor)) " events"
                        @if let Some(why) = &s.paused { " " span.bad { "(paused: " bdi { (untrusted(why)) } ")" } }
                    } }
                }
                tr { th { "alerts firing" } td {
                    @if firing.is_empty() { span.ok { "none" } }
                    @for (name, summary) in &firing {
                        div { a.bad href="/alerts" { bdi { (untrusted(name)) } } ": " bdi { (untrusted(summary)) } }
                    }
                } }
            }
        } }
    })
}
