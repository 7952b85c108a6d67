//! `[[alert]]` tables: their schema as written and their validation into
//! [`crate::alert::Rule`]s. Each type takes its own keys; a key another type uses is refused
//! with the reason, so a mistyped rule never silently watches something else.

use std::time::Duration;

use serde::Deserialize;

use super::{Error, bad, duration};
use crate::alert::rule::{Check, Rule, Schedule};
use crate::alert::{
    DEFAULT_OFF_HOURS_WINDOW, DEFAULT_RECORDING_DELAY, DEFAULT_RECORDING_WINDOW, MAX_RULES,
};
use crate::call::facts::Kind;

/// One `[[alert]]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertFile {
    name: Option<String>,
    #[serde(rename = "type")]
    kind_of_rule: Option<String>,
    kind: Option<String>,
    #[serde(alias = "for")]
    duration: Option<String>,
    #[serde(alias = "percent")]
    threshold_percent: Option<f64>,
    window: Option<String>,
    min_attempts: Option<u64>,
    max_calls: Option<u64>,
    prefix_len: Option<usize>,
    prefixes: Option<Vec<String>>,
    max_billsec: Option<u32>,
    delay: Option<String>,
    min_missing: Option<u64>,
    hours: Option<String>,
    days: Option<Vec<String>>,
    notify_url: Option<String>,
}

/// The keys each type takes besides `name`, `type`, `hours`, `days` and `notify_url`.
fn allowed(rule_type: &str) -> &'static [&'static str] {
    match rule_type {
        "silence" => &["kind", "duration"],
        "asr_below" => &["threshold_percent", "window", "min_attempts"],
        "burst" => &[
            "max_calls",
            "window",
            "prefix_len",
            "prefixes",
            "max_billsec",
        ],
        "off_hours" => &["prefixes", "window"],
        "recording_missing" => &["delay", "window", "min_missing"],
        _ => &[],
    }
}

impl AlertFile {
    fn given(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |set: bool, k| {
            if set {
                keys.push(k);
            }
        };
        add(self.kind.is_some(), "kind");
        add(self.duration.is_some(), "duration");
        add(self.threshold_percent.is_some(), "threshold_percent");
        add(self.window.is_some(), "window");
        add(self.min_attempts.is_some(), "min_attempts");
        add(self.max_calls.is_some(), "max_calls");
        add(self.prefix_len.is_some(), "prefix_len");
        add(self.prefixes.is_some(), "prefixes");
        add(self.max_billsec.is_some(), "max_billsec");
        add(self.delay.is_some(), "delay");
        add(self.min_missing.is_some(), "min_missing");
        keys
    }
}

/// `"08:00-18:00"` as minutes of the day.
fn hours(key: &str, s: &str) -> Result<(u32, u32), Error> {
    let minute = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        ((h < 24 && m < 60) || (h == 24 && m == 0)).then_some(h * 60 + m)
    };
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((minute(a)?, minute(b)?)));
    match parsed {
        Some((a, b)) if a != b => Ok((a, b)),
        _ => Err(bad(
            key,
            format_args!(
                "{s:?} is not a span of hours such as \"08:00-18:00\" (\"22:00-06:00\" wraps midnight)"
            ),
        )),
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `["mon-fri", "sat"]` as weekdays.
fn days(key: &str, list: &[String]) -> Result<[bool; 7], Error> {
    let index = |d: &str| {
        let d = d.trim().to_ascii_lowercase();
        DAYS.iter().position(|x| d.starts_with(x))
    };
    let mut out = [false; 7];
    for item in list {
        let range = match item.split_once('-') {
            Some((a, b)) => index(a).zip(index(b)),
            None => index(item).map(|i| (i, i)),
        };
        let Some((a, b)) = range else {
            return Err(bad(
                key,
                format_args!("{item:?} is not a weekday or a range such as \"mon-fri\""),
            ));
        };
        let mut i = a;
        loop {
            out[i] = true;
            if i == b {
                break;
            }
            i = (i + 1) % 7;
        }
    }
    Ok(out)
}

fn prefixes(key: &str, list: &[String]) -> Result<Vec<String>, Error> {
    list.iter()
        .map(|p| {
            let d = crate::call::report::digits(p);
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    key,
                    format_args!("{p:?} is not a number prefix such as \"1900\""),
                ));
            }
            Ok(d)
        })
        .collect()
}

/// Validates every `[[alert]]`.
pub(super) fn section(list: Option<&[AlertFile]>) -> Result<Vec<Rule>, Error> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_RULES {
        return Err(bad("alert", format_args!("at most {MAX_RULES} rules")));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let name = f.name.clone().unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let at = |k: &str| {
            if valid {
                format!("alert.{name}.{k}")
            } else {
                format!("alert[{i}].{k}")
            }
        };
        if !valid {
            return Err(bad(
                &at("name"),
                "1 to 64 of A-Z a-z 0-9 _ . - (it names the metric label)",
            ));
        }
        if rules.iter().any(|r| r.name == name) {
            return Err(bad(&at("name"), format_args!("{name:?} is used twice")));
        }
        let rule_type = f.kind_of_rule.clone().unwrap_or_default();
        let ok = allowed(&rule_type);
        if ok.is_empty() {
            return Err(bad(
                &at("type"),
                format_args!(
                    "{rule_type:?}: use silence, asr_below, burst, off_hours or recording_missing"
                ),
            ));
        }
        if let Some(k) = f.given().into_iter().find(|k| !ok.contains(k)) {
            return Err(bad(
                &at(k),
                format_args!(
                    "not a key of a {rule_type} rule (it takes {})",
                    ok.join(", ")
                ),
            ));
        }
        let need = |k: &str| bad(&at(k), format_args!("a {rule_type} rule needs it"));
        let window = |default: Option<Duration>| -> Result<Duration, Error> {
            match (&f.window, default) {
                (None, None) => Err(need("window")),
                (w, d) => duration(&at("window"), w, d.unwrap_or_default()),
            }
        };
        let check = match rule_type.as_str() {
            "silence" => {
                let kind = f.kind.as_deref().ok_or_else(|| need("kind"))?;
                let kind = Kind::of_event(kind).ok_or_else(|| {
                    bad(
                        &at("kind"),
                        format_args!("{kind:?}: use cdr, recording or sms"),
                    )
                })?;
                if f.duration.is_none() {
                    return Err(need("duration"));
                }
                Check::Silence {
                    kind,
                    duration: duration(&at("duration"), &f.duration, Duration::ZERO)?,
                }
            }
            "asr_below" => {
                let percent = f
                    .threshold_percent
                    .ok_or_else(|| need("threshold_percent"))?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(bad(&at("threshold_percent"), "0 to 100"));
                }
                Check::AsrBelow {
                    percent,
                    window: window(None)?,
                    min_attempts: f
                        .min_attempts
                        .unwrap_or(crate::alert::DEFAULT_MIN_ATTEMPTS)
                        .max(1),
                }
            }
            "burst" => Check::Burst {
                max_calls: f.max_calls.ok_or_else(|| need("max_calls"))?,
                window: window(None)?,
                prefix_len: match f.prefix_len {
                    Some(n) if n == 0 || n > 15 => {
                        return Err(bad(&at("prefix_len"), "1 to 15 digits"));
                    }
                    other => other,
                },
                prefixes: prefixes(&at("prefixes"), f.prefixes.as_deref().unwrap_or_default())?,
                max_billsec: f.max_billsec,
            },
            "off_hours" => {
                if f.hours.is_none() && f.days.is_none() {
                    return Err(bad(
                        &at("hours"),
                        "an off_hours rule needs the allowed `hours` (and `days`)",
                    ));
                }
                let list = f.prefixes.as_deref().ok_or_else(|| need("prefixes"))?;
                Check::OffHours {
                    prefixes: prefixes(&at("prefixes"), list)?,
                    window: window(Some(DEFAULT_OFF_HOURS_WINDOW))?,
                }
            }
            _ => Check::RecordingMissing {
                delay: match &f.delay {
                    Some(_) => duration(&at("delay"), &f.delay, DEFAULT_RECORDING_DELAY)?,
                    None => DEFAULT_RECORDING_DELAY,
                },
                window: window(Some(DEFAULT_RECORDING_WINDOW))?,
                min_missing: f.min_missing.unwrap_or(1).max(1),
            },
        };
        let schedule = match (&f.hours, &f.days) {
            (None, None) => None,
            (h, d) => {
                let (from_min, to_min) = match h {
                    Some(s) => hours(&at("hours"), s)?,
                    None => (0, 24 * 60),
                };
                let days = match d {
                    Some(list) => days(&at("days"), list)?,
                    None => [true; 7],
                };
                Some(Schedule {
                    from_min,
                    to_min,
                    days,
                })
            }
        };
        let notify_url = match &f.notify_url {
            Some(u)
                if !(u.starts_with("https://") || u.starts_with("http://"))
                    || u.parse::<http::Uri>().is_err() =>
            {
                return Err(bad(
                    &at("notify_url"),
                    format_args!("{u:?} is not an http:// or https:// URL"),
                ));
            }
            other => other.clone(),
        };
        rules.push(Rule {
            name,
            check,
            schedule,
            notify_url,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<Rule>, Error> {
        #[derive(Deserialize)]
        struct F {
            alert: Vec<AlertFile>,
        }
        let f: F = toml::from_str(toml_text).unwrap();
        section(Some(&f.alert))
    }

    #[test]
    fn the_packaged_examples_parse() {
        let rules = parse(
            r#"
            [[alert]]
            name = "no-cdr"
            type = "silence"
            kind = "cdr"
            for = "3h"
            hours = "08:00-18:00"
            days = ["mon-fri"]
            [[alert]]
            name = "premium"
            type = "off_hours"
            prefixes = ["1900", "+1 976", "1809", "1876", "00"]
            hours = "08:00-19:00"
            days = ["mon-fri"]
            notify_url = "https://hooks.slack.com/services/T/B/X"
            [[alert]]
            name = "short-calls"
            type = "burst"
            max_calls = 20
            window = "10m"
            max_billsec = 10
            [[alert]]
            name = "asr"
            type = "asr_below"
            threshold_percent = 40
            window = "1h"
            min_attempts = 20
            [[alert]]
            name = "recordings"
            type = "recording_missing"
            "#,
        )
        .unwrap();
        assert_eq!(rules.len(), 5);
        let s = rules[0].schedule.as_ref().unwrap();
        assert_eq!((s.from_min, s.to_min), (480, 1080));
        assert_eq!(s.days, [true, true, true, true, true, false, false]);
        assert!(
            matches!(&rules[1].check, Check::OffHours { prefixes, .. } if prefixes[1] == "1976")
        );
    }

    #[test]
    fn the_packaged_config_examples_load_uncommented() {
        // The commented `[[alert]]` examples shipped in /etc/didgate/didgate.toml.
        let text = include_str!("../../systemd/didgate.toml");
        let start = text.find("#[[alert]]").unwrap();
        let rules: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let rules = parse(&rules).unwrap();
        assert_eq!(rules.len(), 8);
        assert!(rules.iter().any(|r| matches!(
            &r.check,
            Check::Burst {
                max_billsec: Some(10),
                ..
            }
        )));
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            ("name='a'\ntype='silence'\nkind='cdr'", "alert.a.duration"),
            (
                "name='a'\ntype='silence'\nkind='cdr'\nduration='1h'\nwindow='1h'",
                "alert.a.window",
            ),
            ("name='a b'\ntype='burst'", "alert[0].name"),
            ("name='a'\ntype='loud'", "alert.a.type"),
            (
                "name='a'\ntype='off_hours'\nprefixes=['19x']\nhours='08:00-18:00'",
                "alert.a.prefixes",
            ),
            (
                "name='a'\ntype='off_hours'\nprefixes=['1']\nhours='8-18'",
                "alert.a.hours",
            ),
            (
                "name='a'\ntype='off_hours'\nprefixes=['1']\ndays=['mon-fry']",
                "alert.a.days",
            ),
            (
                "name='a'\ntype='asr_below'\nthreshold_percent=140.0\nwindow='1h'",
                "alert.a.threshold_percent",
            ),
            (
                "name='a'\ntype='recording_missing'\nnotify_url='ftp://x'",
                "alert.a.notify_url",
            ),
        ] {
            let e = parse(&format!("[[alert]]\n{text}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
    }
}
