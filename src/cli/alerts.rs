//! `didgate alerts`: each `[[alert]]` rule, whether it is firing, since when, why, and the
//! calls that triggered it, from the state `serve` writes after every evaluation
//! (`DATA/alerts.json`) and, with `--config`, the configured rules (so a rule `serve` has not
//! evaluated yet is listed too).

use std::io::Write;
use std::path::Path;

use super::calls::{cell, pad};
use super::{Result, emit};
use crate::alert::rule::Rule;
use crate::alert::state::{RuleState, Snapshot};

/// A state file older than this many intervals is called stale (serve is not running).
pub const STALE_INTERVALS: i64 = 3;

/// One rule as listed.
struct Row<'a> {
    name: &'a str,
    rule_type: String,
    state: Option<&'a RuleState>,
}

fn state_name(st: Option<&RuleState>) -> &'static str {
    match st {
        Some(s) if s.firing => "firing",
        Some(_) => "ok",
        None => "pending",
    }
}

/// Runs `alerts`.
///
/// # Errors
/// [`Error::Usage`] for a bad zone; output errors.
pub fn run(
    data_dir: &Path,
    rules: Option<&[Rule]>,
    timezone: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let path = crate::alert::state_path(data_dir);
    let snapshot = Snapshot::load(&path);
    let zone_name = timezone.map(str::to_string).or_else(|| {
        snapshot
            .as_ref()
            .map(|s| s.timezone.clone())
            .filter(|t| !t.is_empty())
    });
    let zone = super::zone(None, zone_name.as_deref())?;
    let empty = Snapshot::default();
    let snap = snapshot.as_ref().unwrap_or(&empty);
    let rows: Vec<Row<'_>> = match rules {
        Some(rules) => rules
            .iter()
            .map(|r| Row {
                name: &r.name,
                rule_type: r.check.type_name().to_string(),
                state: snap
                    .rules
                    .get(&r.name)
                    .filter(|s| s.rule_type == r.check.type_name()),
            })
            .collect(),
        None => snap
            .rules
            .iter()
            .map(|(name, st)| Row {
                name,
                rule_type: st.rule_type.clone(),
                state: Some(st),
            })
            .collect(),
    };
    let mut buf = Vec::new();
    let time = |ms: i64| {
        if ms > 0 {
            zone.rfc3339(ms)
        } else {
            String::new()
        }
    };
    if json {
        for r in &rows {
            let calls: Vec<serde_json::Value> = r
                .state
                .map(|s| s.calls.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "callid": c.callid, "calldate": zone.rfc3339(c.at_ms),
                        "src": c.src, "dst": c.dst, "billsec": c.billsec, "seq": c.seq,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "rule": r.name,
                "type": r.rule_type,
                "state": state_name(r.state),
                "firing": r.state.is_some_and(|s| s.firing),
                "since": r.state.map(|s| time(s.since_ms)).filter(|t| !t.is_empty()),
                "summary": r.state.map(|s| s.summary.clone()),
                "evaluated_at": r.state.map(|s| time(s.evaluated_ms)),
                "calls": calls,
            });
            buf.extend_from_slice(v.to_string().as_bytes());
            buf.push(b'\n');
        }
        return emit(out, &mut buf);
    }
    let mut text = format!(
        "{} {} {} {} SUMMARY\n",
        pad("RULE", 20, false),
        pad("TYPE", 17, false),
        pad("STATE", 7, false),
        pad("SINCE", 25, false)
    );
    for r in &rows {
        text.push_str(&format!(
            "{} {} {} {} {}\n",
            pad(&cell(r.name, 20), 20, false),
            pad(&r.rule_type, 17, false),
            pad(state_name(r.state), 7, false),
            pad(
                &r.state.map(|s| time(s.since_ms)).unwrap_or_default(),
                25,
                false
            ),
            cell(
                r.state.map_or("not evaluated yet", |s| s.summary.as_str()),
                200
            ),
        ));
        for c in r
            .state
            .filter(|s| s.firing)
            .map(|s| s.calls.as_slice())
            .unwrap_or_default()
        {
            text.push_str(&format!(
                "    {} {} -> {} {} s callid {} (seq {})\n",
                zone.rfc3339(c.at_ms),
                cell(&c.src, 20),
                cell(&c.dst, 20),
                c.billsec,
                cell(if c.callid.is_empty() { "-" } else { &c.callid }, 40),
                c.seq
            ));
        }
    }
    match &snapshot {
        None => text.push_str(&format!(
            "no alert state in {}: rules are evaluated by a running `didgate serve`\n",
            path.display()
        )),
        Some(s) => {
            let now = crate::timestamp::now_ms();
            let stale =
                s.interval_ms > 0 && now - s.evaluated_at_ms > STALE_INTERVALS * s.interval_ms;
            text.push_str(&format!(
                "evaluated at {} every {}, hours in {}{}\n",
                zone.rfc3339(s.evaluated_at_ms),
                humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from(s.interval_ms).unwrap_or(0)
                )),
                zone.name(),
                if stale {
                    " (STALE: is `didgate serve` running?)"
                } else {
                    ""
                }
            ));
        }
    }
    if rules.is_none() {
        text.push_str(
            "(rules as serve last saw them; pass --config to list the configured ones)\n",
        );
    }
    buf.extend_from_slice(text.as_bytes());
    emit(out, &mut buf)
}
