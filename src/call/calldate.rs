//! The call's own time: which textual forms of `calldate` (CDR, recording) and `received_at`
//! (SMS) are accepted. Pure.
//!
//! Accepted, in this order:
//! - RFC 3339 / ISO 8601 with an offset: `2026-05-12T05:17:58Z`, `2026-05-12T07:17:58+02:00`,
//!   a space instead of `T`, fractions of a second;
//! - a date and time without an offset, read as UTC (Asterisk's CDR form, and didlogic's):
//!   `2026-05-12 05:17:58`, `2026-05-12T05:17:58`, optionally followed by ` UTC` or ` GMT`
//!   (the SMS `received_at` form: `2026-05-13 12:45:40 UTC`);
//! - Unix time: 9 to 11 digits are seconds, 12 to 14 digits milliseconds.
//!
//! Anything else is not guessed at: the event is filed under the time it was stored, and the
//! reader shows the raw value.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

/// Milliseconds since the epoch of `s`, when it is in an accepted form.
pub fn parse(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return match s.len() {
            9..=11 => n.checked_mul(1000),
            12..=14 => Some(n),
            _ => None,
        };
    }
    if let Ok(ts) = Timestamp::from_str(s) {
        return Some(ts.as_millisecond());
    }
    let civil = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix(" GMT"))
        .unwrap_or(s)
        .trim_end();
    let dt = DateTime::from_str(civil).ok()?;
    // A bare date (no time of day) is too coarse to be a call's time.
    if !civil.contains(':') {
        return None;
    }
    let zoned = dt.to_zoned(TimeZone::UTC).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepted_forms() {
        let t = 1_778_563_078_000;
        for s in [
            "2026-05-12T05:17:58Z",
            "2026-05-12T07:17:58+02:00",
            "2026-05-12 05:17:58Z",
            "2026-05-12 05:17:58",
            "2026-05-12T05:17:58",
            "2026-05-12 05:17:58 UTC",
            " 2026-05-12 05:17:58 GMT ",
            "1778563078",
            "1778563078000",
        ] {
            assert_eq!(parse(s), Some(t), "{s}");
        }
        assert_eq!(parse("2026-05-12T05:17:58.250Z"), Some(t + 250));
    }

    #[test]
    fn other_forms_are_not_guessed() {
        for s in [
            "",
            "yesterday",
            "12/05/2026 05:17",
            "2026-05-12",
            "2026-13-12 05:17:58",
            "17",
            "2026-05-12 05:17:58 CEST",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }
}
