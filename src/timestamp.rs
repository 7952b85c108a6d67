//! Wall-clock times as didgate shows and accepts them.
//!
//! Owns the two textual forms (RFC 3339 with milliseconds for output, RFC 3339 or a bare date for
//! `--since`/`--until`) and the UTC day used by the per-day counters. It does not own when a
//! time is taken (the writer stamps each batch).

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_datetime(ms: i64) -> OffsetDateTime {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2026-11-27T03:10:20.123Z`: always UTC, always three fraction digits.
pub fn format_ms(ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    to_datetime(ms)
        .format(&fmt)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// The UTC calendar day of `ms`, as `YYYY-MM-DD`.
pub fn day_of_ms(ms: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day]");
    to_datetime(ms)
        .format(&fmt)
        .unwrap_or_else(|_| String::from("1970-01-01"))
}

/// Why a time argument was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid time {:?}: expected RFC 3339 (2026-05-12T05:17:58Z) or a date (2026-05-12)",
            self.0
        )
    }
}

impl std::error::Error for ParseError {}

/// Parses `--since`/`--until`: RFC 3339 (`2026-05-12T05:17:58Z`, any offset) or a date
/// (`2026-05-12`, meaning 00:00 UTC that day). Returns milliseconds since the epoch.
///
/// # Errors
/// [`ParseError`] naming the input when it is neither form.
pub fn parse_time_arg(s: &str) -> Result<i64, ParseError> {
    let s = s.trim();
    if let Ok(dt) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(datetime_ms(dt));
    }
    let date_fmt = format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, &date_fmt) {
        return Ok(datetime_ms(d.midnight().assume_offset(UtcOffset::UTC)));
    }
    Err(ParseError(s.to_string()))
}

fn datetime_ms(dt: OffsetDateTime) -> i64 {
    let ms = dt.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_778_563_078_123), "2026-05-12T05:17:58.123Z");
        assert_eq!(day_of_ms(1_778_563_078_123), "2026-05-12");
    }

    #[test]
    fn parses_rfc3339_and_dates() {
        let cases: &[(&str, Option<i64>)] = &[
            ("2026-05-12T05:17:58Z", Some(1_778_563_078_000)),
            ("2026-05-12T05:17:58.123Z", Some(1_778_563_078_123)),
            ("2026-05-12T07:17:58+02:00", Some(1_778_563_078_000)),
            ("2026-05-12", Some(1_778_544_000_000)),
            ("2026-13-01", None),
            ("yesterday", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_time_arg(input).ok(), *want, "{input}");
        }
    }
}
