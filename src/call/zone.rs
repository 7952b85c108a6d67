//! [`Zone`]: the time zone calls and reports are shown and grouped in, and the times the
//! operator types (`--since`, `--until`) read in it.
//!
//! The zone comes from `--tz`, else the config's `timezone`, else the system's (`TZ`, then
//! `/etc/localtime`); names are IANA names from the system's time-zone database
//! (`/usr/share/zoneinfo`, Debian's `tzdata`), read by jiff.

use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A time zone with the name it is shown under.
#[derive(Clone, Debug)]
pub struct Zone {
    tz: TimeZone,
    name: String,
}

/// A bad `--tz` or `timezone`, or a time argument that does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            tz: TimeZone::UTC,
            name: "UTC".to_string(),
        }
    }

    /// The zone named `name` (`Europe/London`, `UTC`, `America/New_York`).
    ///
    /// # Errors
    /// The name is not in the time-zone database.
    pub fn named(name: &str) -> Result<Zone, Error> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("utc") || name == "Z" {
            return Ok(Zone::utc());
        }
        TimeZone::get(name)
            .map(|tz| Zone {
                tz,
                name: name.to_string(),
            })
            .map_err(|e| {
                Error(format!(
                    "unknown time zone {name:?} ({e}); use an IANA name such as Europe/London \
                     (`timedatectl list-timezones` lists them)"
                ))
            })
    }

    /// `--tz`, else the config's `timezone`, else the system's zone.
    ///
    /// # Errors
    /// A given name is not in the time-zone database.
    pub fn resolve(flag: Option<&str>, config: Option<&str>) -> Result<Zone, Error> {
        if let Some(name) = flag.or(config) {
            return Zone::named(name);
        }
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        let name = tz.iana_name().unwrap_or("local").to_string();
        Ok(Zone { tz, name })
    }

    /// The name shown beside times.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, ms: i64) -> Zoned {
        Timestamp::from_millisecond(ms)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
    }

    fn civil(&self, ms: i64) -> DateTime {
        self.tz
            .to_datetime(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    /// `2026-05-12 07:17:58`, in this zone.
    pub fn time(&self, ms: i64) -> String {
        self.civil(ms).strftime("%Y-%m-%d %H:%M:%S").to_string()
    }

    /// `2026-05-12T07:17:58+02:00`: RFC 3339 with this zone's offset at that moment.
    pub fn rfc3339(&self, ms: i64) -> String {
        self.zoned(ms).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }

    /// The weekday (Monday 0) and the minute of the day of `ms`, in this zone.
    pub fn weekday_minute(&self, ms: i64) -> (u8, u32) {
        let dt = self.civil(ms);
        let weekday = dt.weekday().to_monday_zero_offset() as u8;
        (weekday, dt.hour() as u32 * 60 + dt.minute() as u32)
    }

    /// The calendar day, `2026-05-12`.
    pub fn day(&self, ms: i64) -> String {
        self.civil(ms).strftime("%Y-%m-%d").to_string()
    }

    /// The hour, `2026-05-12 07:00`. On the night clocks go back the repeated hour shows
    /// twice, with its offset: `2026-10-25 01:00+01:00`, `2026-10-25 01:00+00:00`.
    pub fn hour(&self, ms: i64) -> String {
        let z = self.zoned(ms);
        let text = z.strftime("%Y-%m-%d %H:00").to_string();
        let an_hour_later = self.zoned(ms + 3_600_000);
        let an_hour_earlier = self.zoned(ms - 3_600_000);
        let repeated = an_hour_later.strftime("%Y-%m-%d %H:00").to_string() == text
            || an_hour_earlier.strftime("%Y-%m-%d %H:00").to_string() == text;
        if repeated {
            format!("{text}{}", z.strftime("%:z"))
        } else {
            text
        }
    }

    /// The ISO week, `2026-W20`.
    pub fn week(&self, ms: i64) -> String {
        let w = self.civil(ms).date().iso_week_date();
        format!("{:04}-W{:02}", w.year(), w.week())
    }

    /// The month, `2026-05`.
    pub fn month(&self, ms: i64) -> String {
        self.civil(ms).strftime("%Y-%m").to_string()
    }

    /// The start of the day `days` before the day of `ms` (0: that day), in this zone.
    pub fn day_start(&self, ms: i64, days: i64) -> i64 {
        let date = self.civil(ms).date();
        let date = date.checked_sub(days.days()).unwrap_or(date);
        self.midnight(date)
    }

    fn midnight(&self, date: Date) -> i64 {
        // A day that starts in a gap (clocks skip midnight) starts when the gap ends.
        date.to_datetime(Time::midnight())
            .to_zoned(self.tz.clone())
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(0)
    }

    /// Reads a `--since` / `--until` value, `now_ms` being now:
    /// - RFC 3339 with an offset: `2026-05-12T05:17:58Z`;
    /// - a date, meaning its midnight in this zone: `2026-05-12`;
    /// - a date and time in this zone: `2026-05-12 07:30`, `2026-05-12T07:30:15`;
    /// - `now`, `today` (this zone's midnight), `yesterday`;
    /// - a duration ago: `90m`, `24h`, `7d`, `2w`.
    ///
    /// # Errors
    /// The value is none of these.
    pub fn parse_time(&self, s: &str, now_ms: i64) -> Result<i64, Error> {
        let t = s.trim();
        let bad = || {
            Error(format!(
                "invalid time {t:?}: expected RFC 3339 (2026-05-12T05:17:58Z), a date \
                 (2026-05-12) or date and time (2026-05-12 07:30) in {}, today, yesterday, \
                 now, or a duration ago (90m, 24h, 7d)",
                self.name
            ))
        };
        match t {
            "now" => return Ok(now_ms),
            "today" => return Ok(self.day_start(now_ms, 0)),
            "yesterday" => return Ok(self.day_start(now_ms, 1)),
            _ => {}
        }
        if let Ok(ts) = Timestamp::from_str(t) {
            return Ok(ts.as_millisecond());
        }
        if let Ok(d) = Date::from_str(t)
            && !t.contains(':')
        {
            return Ok(self.midnight(d));
        }
        if let Ok(dt) = DateTime::from_str(t) {
            return dt
                .to_zoned(self.tz.clone())
                .map(|z| z.timestamp().as_millisecond())
                .map_err(|_| bad());
        }
        if let Some(ago) = duration_ms(t) {
            return Ok(now_ms.saturating_sub(ago));
        }
        Err(bad())
    }
}

/// `90m`, `24h`, `7d`, `2w`, `30s` in milliseconds.
fn duration_ms(s: &str) -> Option<i64> {
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].trim().parse().ok()?;
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    (n >= 0).then(|| n.saturating_mul(per))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_778_563_078_000; // 2026-05-12T05:17:58Z

    #[test]
    fn shows_times_in_the_zone_with_its_offset() {
        let z = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(z.time(T), "2026-05-12 07:17:58");
        assert_eq!(z.rfc3339(T), "2026-05-12T07:17:58+02:00");
        assert_eq!(z.week(T), "2026-W20");
        assert_eq!(Zone::utc().rfc3339(T), "2026-05-12T05:17:58+00:00");
        assert!(Zone::named("Mars/Olympus").is_err());
    }

    #[test]
    fn dates_are_local_midnights_and_dst_days_are_23_or_25_hours() {
        let z = Zone::named("Europe/London").unwrap();
        let march = z.parse_time("2026-03-29", 0).unwrap();
        let next = z.parse_time("2026-03-30", 0).unwrap();
        assert_eq!(next - march, 23 * 3_600_000);
        let oct = z.parse_time("2026-10-25", 0).unwrap();
        let after = z.parse_time("2026-10-26", 0).unwrap();
        assert_eq!(after - oct, 25 * 3_600_000);
        // The repeated hour is told apart by its offset.
        assert_eq!(z.hour(oct + 3_600_000), "2026-10-25 01:00+01:00");
        assert_eq!(z.hour(oct + 2 * 3_600_000), "2026-10-25 01:00+00:00");
        assert_eq!(z.parse_time("24h", T).unwrap(), T - 86_400_000);
        assert_eq!(z.parse_time("2026-05-12T05:17:58Z", 0).unwrap(), T);
        assert_eq!(z.parse_time("2026-05-12 06:17:58", 0).unwrap(), T);
        assert!(z.parse_time("soon", 0).is_err());
    }
}
