//! `didgate deliveries` (and `replay`, `pause`, `resume`): the forwarding destinations' state,
//! their dead letters, and the operator's levers. Listings read the store; the levers are
//! short write transactions beside a running `serve`, which picks them up within a second.

use std::io::Write;
use std::path::Path;

use super::{Error, Result, SCAN_CHUNK, check_kind, emit};
use crate::forward::Destination;
use crate::forward::state::{DestState, check_name};
use crate::store::Store;
use crate::timestamp;

/// Sequence numbers scheduled per write transaction by `replay`.
pub const REPLAY_CHUNK: usize = 10_000;

/// One destination as `deliveries` shows it.
struct Row {
    name: String,
    url: Option<String>,
    state: Option<DestState>,
    configured: bool,
}

fn rows(store: &Store, configured: Option<&[Destination]>) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = store
        .dest_states()?
        .into_iter()
        .map(|(name, s)| Row {
            name,
            url: None,
            state: Some(s),
            configured: configured.is_none(),
        })
        .collect();
    for d in configured.unwrap_or_default() {
        match rows.iter_mut().find(|r| r.name == d.name) {
            Some(r) => {
                r.configured = true;
                r.url = Some(d.url.clone());
            }
            None => rows.push(Row {
                name: d.name.clone(),
                url: Some(d.url.clone()),
                state: None,
                configured: true,
            }),
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Age in seconds of the oldest event `dest` has not been sent successfully.
fn lag_seconds(store: &Store, dest: &str, s: &DestState, last: u64) -> Result<u64> {
    let unsettled = (last > s.cursor).then_some(s.cursor + 1);
    let at = store.oldest_owed_ms(dest, unsettled)?;
    Ok(at.map_or(0, |t| {
        u64::try_from((timestamp::now_ms() - t) / 1000).unwrap_or(0)
    }))
}

fn ms_json(ms: Option<i64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |m| timestamp::format_ms(m).into())
}

/// `deliveries [--dest NAME]`: each destination's lag, attempts under way, retrying, dead
/// letters and last error. `configured`: the destinations of the configuration file, when
/// one was given (others in the store show as removed).
///
/// # Errors
/// [`Error::NoMatch`] for an unknown `--dest`; store and output errors.
pub fn list(
    store: &Store,
    configured: Option<&[Destination]>,
    dest: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let last = store.last_seq()?.unwrap_or(0);
    let mut rows = rows(store, configured)?;
    if let Some(d) = dest {
        rows.retain(|r| r.name == d);
        if rows.is_empty() {
            return Err(Error::NoMatch(format!(
                "no forwarding destination named {d:?}"
            )));
        }
    }
    let mut text = String::new();
    if !json {
        text.push_str(&format!(
            "{:<16} {:<9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>10}  {}\n",
            "DEST",
            "STATE",
            "LAG",
            "LAG_S",
            "IN_FLIGHT",
            "RETRYING",
            "DEAD",
            "DELIVERED",
            "LAST_ERROR"
        ));
    }
    for r in &rows {
        let s = r.state.clone().unwrap_or_default();
        let status = match (&r.state, r.configured, &s.paused) {
            (_, false, _) => "removed",
            (None, true, _) => "new",
            (Some(_), true, Some(_)) => "paused",
            (Some(_), true, None) => "running",
        };
        let lag = if r.state.is_some() {
            last.saturating_sub(s.cursor)
        } else {
            0
        };
        let lag_s = match &r.state {
            Some(st) => lag_seconds(store, &r.name, st, last)?,
            None => 0,
        };
        if json {
            let v = serde_json::json!({
                "dest": r.name,
                "url": r.url,
                "state": status,
                "paused": s.paused,
                "cursor": s.cursor,
                "lag_events": lag,
                "lag_seconds": lag_s,
                "in_flight": s.in_flight,
                "retrying": s.retrying,
                "dead": s.dead,
                "delivered": s.delivered,
                "last_error": s.last_error,
                "last_error_at": ms_json(s.last_error_at_ms),
                "last_delivered_at": ms_json(s.last_delivered_at_ms),
            });
            text.push_str(&format!("{v}\n"));
        } else {
            let error = match (&s.paused, &s.last_error) {
                (Some(p), _) => format!("paused: {p}"),
                (None, Some(e)) => e.clone(),
                (None, None) => "-".into(),
            };
            text.push_str(&format!(
                "{:<16} {:<9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>10}  {}\n",
                r.name, status, lag, lag_s, s.in_flight, s.retrying, s.dead, s.delivered, error
            ));
        }
    }
    emit(out, &mut text.into_bytes())
}

fn known(store: &Store, dest: &str) -> Result<DestState> {
    check_name(dest).map_err(|e| Error::Usage(format!("destination {e}")))?;
    store.dest_state(dest)?.ok_or_else(|| {
        Error::Usage(format!(
            "no forwarding destination named {dest:?} in the store (a destination is known \
             once `serve` has run it; see `didgate deliveries`)"
        ))
    })
}

/// Writes every entry of one of `dest`'s ranges, page by page, one JSON line each.
fn lines<T>(
    out: &mut impl Write,
    mut page: impl FnMut(u64) -> Result<crate::store::Page<(u64, T)>>,
    mut line: impl FnMut(u64, &T) -> Result<serde_json::Value>,
) -> Result<()> {
    let mut from = 0;
    loop {
        let p = page(from)?;
        let mut buf = Vec::new();
        for (seq, t) in &p.items {
            buf.extend_from_slice(format!("{}\n", line(*seq, t)?).as_bytes());
        }
        emit(out, &mut buf)?;
        match p.next {
            Some(n) => from = n,
            None => return Ok(()),
        }
    }
}

/// `deliveries dead --dest NAME`: one JSON line per dead letter, oldest event first.
///
/// # Errors
/// Usage, store and output errors.
pub fn dead(store: &Store, dest: &str, out: &mut impl Write) -> Result<()> {
    known(store, dest)?;
    lines(
        out,
        |from| Ok(store.dead_page(dest, from, SCAN_CHUNK)?),
        |seq, d| {
            let ev = store.event(seq)?;
            Ok(serde_json::json!({
                "seq": seq,
                "kind": ev.as_ref().map(|e| e.kind.clone()),
                "stored_at": ms_json(ev.as_ref().map(|e| e.stored_at_ms)),
                "attempts": d.attempts,
                "first_attempt_at": timestamp::format_ms(d.first_attempt_ms),
                "dead_at": timestamp::format_ms(d.dead_at_ms),
                "last_status": d.last_status,
                "last_error": d.last_error,
            }))
        },
    )
}

/// `deliveries retrying --dest NAME`: one JSON line per event waiting for another try.
///
/// # Errors
/// Usage, store and output errors.
pub fn retrying(store: &Store, dest: &str, out: &mut impl Write) -> Result<()> {
    known(store, dest)?;
    lines(
        out,
        |from| Ok(store.retry_page(dest, from, SCAN_CHUNK)?),
        |seq, e| {
            Ok(serde_json::json!({
                "seq": seq,
                "attempts": e.attempts,
                "first_attempt_at": ms_json(e.first_attempt_ms),
                "next_try_at": timestamp::format_ms(e.next_try_ms),
                "last_status": e.last_status,
                "last_error": e.last_error,
                "replay": e.replay,
            }))
        },
    )
}

/// `deliveries retry --dest NAME [--dead | SEQ...]`: dead letters back to the retry set
/// (`--dead`: all of them), named events (dead or not) due now, or with neither every
/// waiting retry due now.
///
/// # Errors
/// Usage, store and output errors.
pub fn retry(
    data: &Path,
    dest: &str,
    dead: bool,
    seqs: &[u64],
    out: &mut impl Write,
) -> Result<()> {
    let store = Store::open_existing_writer(data)?;
    known(&store, dest)?;
    let now = timestamp::now_ms();
    let mut txn = store.begin_write(now)?;
    let text = if dead && seqs.is_empty() {
        let moved = txn.revive_dead(dest, None, now)?;
        format!(
            "{} dead letters of {dest} are due for another try now\n",
            moved.len()
        )
    } else if !seqs.is_empty() {
        let moved = txn.revive_dead(dest, Some(seqs), now)?;
        let rest: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| !moved.contains(s))
            .collect();
        if dead && !rest.is_empty() {
            return Err(Error::Usage(format!(
                "not dead letters of {dest}: {}",
                rest.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for s in &rest {
            if !txn.has_event(*s)? {
                return Err(Error::Usage(format!("event {s} is not stored")));
            }
        }
        txn.schedule(dest, &rest, now)?;
        format!(
            "{} events are due for another try at {dest} now\n",
            seqs.len()
        )
    } else {
        let mut all = Vec::new();
        let mut from = 0;
        loop {
            let page = store.retry_page(dest, from, SCAN_CHUNK)?;
            all.extend(page.items.iter().map(|(s, _)| *s));
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        txn.schedule(dest, &all, now)?;
        format!("{} waiting retries of {dest} are due now\n", all.len())
    };
    txn.commit()?;
    emit(out, &mut text.into_bytes())
}

/// `replay --dest NAME --since T [--until T] [--kind K]`: sends stored events again.
///
/// # Errors
/// Usage, store and output errors.
pub fn replay(
    data: &Path,
    dest: &str,
    since: &str,
    until: Option<&str>,
    kind: Option<&str>,
    out: &mut impl Write,
) -> Result<()> {
    let since_ms = timestamp::parse_time_arg(since).map_err(|e| Error::Usage(e.to_string()))?;
    let until_ms = until
        .map(timestamp::parse_time_arg)
        .transpose()
        .map_err(|e| Error::Usage(e.to_string()))?
        .unwrap_or(i64::MAX);
    if until_ms <= since_ms {
        return Err(Error::Usage("--until must be after --since".into()));
    }
    let store = Store::open_existing_writer(data)?;
    let state = known(&store, dest)?;
    if let Some(k) = kind {
        check_kind(&store, k)?;
    }
    let mut seqs = Vec::new();
    if let Some(mut from) = store.first_seq_at(since_ms)? {
        'pages: loop {
            let mut past = false;
            let page = store.events_forward(from, SCAN_CHUNK, |_, rec| {
                past |= rec.stored_at_ms >= until_ms;
                !past && kind.is_none_or(|k| k == rec.kind)
            })?;
            seqs.extend(page.items.iter().map(|e| e.seq));
            match page.next {
                Some(n) if !past => from = n,
                _ => break 'pages,
            }
        }
    }
    let now = timestamp::now_ms();
    for chunk in seqs.chunks(REPLAY_CHUNK) {
        let mut txn = store.begin_write(now)?;
        txn.schedule(dest, chunk, now)?;
        txn.commit()?;
    }
    let mut text = match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => format!(
            "replaying {} events (seq {a} to {b}) to {dest}\n",
            seqs.len()
        ),
        _ => format!("no events in that range: nothing to replay to {dest}\n"),
    };
    if state.paused.is_some() && !seqs.is_empty() {
        text.push_str(&format!(
            "{dest} is paused: they are sent once it is resumed (`didgate deliveries resume --dest {dest}`)\n"
        ));
    }
    emit(out, &mut text.into_bytes())
}

/// `deliveries pause|resume --dest NAME`.
///
/// # Errors
/// Usage, store and output errors.
pub fn pause(data: &Path, dest: &str, pause: bool, out: &mut impl Write) -> Result<()> {
    let store = Store::open_existing_writer(data)?;
    let state = known(&store, dest)?;
    let now = timestamp::now_ms();
    let text = match (pause, &state.paused) {
        (true, Some(why)) => format!("{dest} is already paused ({why})\n"),
        (false, None) => format!("{dest} is not paused\n"),
        (true, None) => {
            let why = format!(
                "paused by `didgate deliveries pause` at {}",
                timestamp::format_ms(now)
            );
            let mut txn = store.begin_write(now)?;
            txn.set_paused(dest, Some(&why), now)?;
            txn.commit()?;
            format!(
                "{dest} paused: `serve` sends nothing more to it within a second; events keep arriving and wait\n"
            )
        }
        (false, Some(_)) => {
            let mut txn = store.begin_write(now)?;
            txn.set_paused(dest, None, now)?;
            txn.commit()?;
            format!("{dest} resumed: `serve` sends what waited within a second\n")
        }
    };
    emit(out, &mut text.into_bytes())
}
