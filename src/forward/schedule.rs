//! What one attempt's outcome means for the event: delivered, another try when, or dead;
//! and when the destination as a whole should be left alone (its circuit).
//!
//! Pure: times come in as arguments, so every rule is unit-tested without a clock.

use std::time::Duration;

use super::state::{DeadEntry, RetryEntry};

/// Failed attempts in a row (at any events) after which the destination counts as down:
/// new events wait and one retry at a time probes it, on the retry schedule, instead of every
/// event failing on its own.
pub const CIRCUIT_FAILURES: u32 = 3;

/// How an attempt failed, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// No answer within `timeout`.
    Timeout,
    /// Connection refused, reset, closed mid-response, TLS or DNS failure.
    Connection,
    /// A redirect (not followed: the destination is configured, not discovered).
    Redirect,
    /// 4xx (410 Gone also pauses the destination).
    Client,
    /// 5xx.
    Server,
    /// A NATS destination's server refused the message: no stream takes its subject, a
    /// JetStream error, a message over the server's size limit.
    Rejected,
}

impl Class {
    /// Every class, in label order.
    pub const ALL: [Class; 6] = [
        Class::Timeout,
        Class::Connection,
        Class::Redirect,
        Class::Client,
        Class::Server,
        Class::Rejected,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Class::Timeout => "timeout",
            Class::Connection => "connection",
            Class::Redirect => "3xx",
            Class::Client => "4xx",
            Class::Server => "5xx",
            Class::Rejected => "rejected",
        }
    }

    /// The class of an HTTP status that is not 2xx.
    pub fn of_status(status: u16) -> Class {
        match status {
            300..=399 => Class::Redirect,
            500..=599 => Class::Server,
            // 1xx after the request, or anything else unexpected, counts with 4xx.
            _ => Class::Client,
        }
    }
}

/// One attempt's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, or a NATS PubAck (reported as 200).
    Delivered(u16),
    /// A NATS PubAck saying the stream already had the message (same `Nats-Msg-Id` within
    /// its duplicate window): delivered, by this appliance or another.
    Duplicate,
    /// Anything else.
    Failed(Failure),
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// How.
    pub class: Class,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// What happened, for the log and the retry entry.
    pub error: String,
    /// The destination's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without an HTTP status (a transport error, a NATS refusal), its text cut to
    /// [`MAX_ERROR_CHARS`](super::send::MAX_ERROR_CHARS).
    pub fn without_status(class: Class, mut error: String) -> Failure {
        if error.len() > super::send::MAX_ERROR_CHARS {
            let mut end = super::send::MAX_ERROR_CHARS;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        Failure {
            class,
            status: None,
            error,
            retry_after: None,
        }
    }

    /// Whether the destination said it is gone for good (410): delivery pauses.
    pub fn is_gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// What becomes of an event after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again at `entry.next_try_ms`.
    Retry(RetryEntry),
    /// Give up: `max_age` has passed since the first attempt.
    Dead(DeadEntry),
}

/// The wait before try number `attempts + 1`: the schedule's entry, its last one repeating.
pub fn wait_after(schedule: &[Duration], attempts: u32) -> Duration {
    let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(60))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The event's fate after the attempt that started at `started_ms` failed at `now_ms`, given
/// its entry so far (a default one for a first attempt). The next try waits for the schedule
/// and for `Retry-After`, but never past `max_age`: one last try is made at the end of it.
pub fn after_failure(
    entry: RetryEntry,
    started_ms: i64,
    now_ms: i64,
    failure: &Failure,
    schedule: &[Duration],
    max_age: Duration,
) -> Next {
    let Failure {
        status,
        error,
        retry_after,
        ..
    } = failure;
    let mut e = entry;
    e.attempts = e.attempts.saturating_add(1);
    let first = *e.first_attempt_ms.get_or_insert(started_ms);
    e.last_error = Some(error.clone());
    e.last_status = *status;
    e.replay = false;
    let end = first.saturating_add(ms(max_age));
    if now_ms >= end {
        return Next::Dead(dead_of(&e, now_ms));
    }
    let wait = wait_after(schedule, e.attempts).max(retry_after.unwrap_or_default());
    e.next_try_ms = now_ms.saturating_add(ms(wait)).min(end);
    // A sweep after a recovery sends entries before their time, but never before this.
    e.not_before_ms = retry_after.map(|d| now_ms.saturating_add(ms(d)).min(end));
    if failure.is_gone() {
        // Sent again as soon as the destination is resumed.
        e.next_try_ms = now_ms;
    }
    Next::Retry(e)
}

/// The dead letter of an entry given up on at `now_ms`.
pub fn dead_of(e: &RetryEntry, now_ms: i64) -> DeadEntry {
    DeadEntry {
        attempts: e.attempts,
        first_attempt_ms: e.first_attempt_ms.unwrap_or(now_ms),
        dead_at_ms: now_ms,
        last_error: e.last_error.clone().unwrap_or_default(),
        last_status: e.last_status,
    }
}

/// Whether `entry`, due now, is past `max_age` (it is then dead without another try while the
/// destination is down).
pub fn is_expired(entry: &RetryEntry, now_ms: i64, max_age: Duration) -> bool {
    entry
        .first_attempt_ms
        .is_some_and(|f| now_ms >= f.saturating_add(ms(max_age)))
}

/// How long a destination that failed `streak` attempts in a row is left alone, or `None`
/// while it is not counted as down. (A `Retry-After` is kept apart: a success elsewhere
/// does not end it.)
pub fn hold_for(streak: u32, schedule: &[Duration]) -> Option<Duration> {
    (streak >= CIRCUIT_FAILURES).then(|| wait_after(schedule, streak - CIRCUIT_FAILURES + 1))
}

/// `Retry-After`: delay-seconds, or an HTTP date; `None` when it is neither.
pub fn parse_retry_after(v: &str, now_ms: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Duration::from_millis(
        u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0),
    ))
}

/// The default retry schedule: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then hourly.
pub fn default_schedule() -> Vec<Duration> {
    [5, 30, 120, 600, 1800, 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>, retry_after: Option<u64>) -> Failure {
        Failure {
            class: status.map_or(Class::Timeout, Class::of_status),
            status,
            error: "boom".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_schedule_steps_then_repeats_its_last_wait() {
        let s = default_schedule();
        let waits: Vec<u64> = (1..=8).map(|a| wait_after(&s, a).as_secs()).collect();
        assert_eq!(waits, [5, 30, 120, 600, 1800, 3600, 3600, 3600]);
    }

    #[test]
    fn failures_retry_on_schedule_honour_retry_after_and_die_at_max_age() {
        let s = default_schedule();
        let day = Duration::from_secs(86_400);
        let Next::Retry(e) = after_failure(
            RetryEntry::default(),
            1_000,
            2_000,
            &failed(Some(500), None),
            &s,
            day,
        ) else {
            panic!()
        };
        assert_eq!(
            (e.attempts, e.first_attempt_ms, e.next_try_ms),
            (1, Some(1_000), 7_000)
        );
        assert_eq!(e.last_status, Some(500));
        let Next::Retry(e) = after_failure(e, 7_000, 8_000, &failed(Some(429), Some(120)), &s, day)
        else {
            panic!()
        };
        assert_eq!(
            e.next_try_ms,
            8_000 + 120_000,
            "Retry-After beats the 30 s step"
        );
        assert_eq!(e.not_before_ms, Some(8_000 + 120_000));
        // Near the end of max_age the next try is at max_age itself, then it is dead.
        let near = 1_000 + 86_400_000 - 10;
        let Next::Retry(last) = after_failure(e, near, near, &failed(None, None), &s, day) else {
            panic!()
        };
        assert_eq!(last.next_try_ms, 1_000 + 86_400_000);
        let Next::Dead(d) = after_failure(
            last,
            86_401_000,
            86_401_000,
            &failed(Some(503), None),
            &s,
            day,
        ) else {
            panic!()
        };
        assert_eq!(
            (d.attempts, d.first_attempt_ms, d.last_status),
            (4, 1_000, Some(503))
        );
        assert!(is_expired(
            &RetryEntry {
                first_attempt_ms: Some(0),
                ..RetryEntry::default()
            },
            86_400_000,
            day
        ));
    }

    #[test]
    fn gone_is_due_again_at_once_and_classes_follow_the_status() {
        let s = default_schedule();
        let gone = failed(Some(410), None);
        assert!(gone.is_gone());
        let Next::Retry(e) = after_failure(
            RetryEntry::default(),
            5,
            6,
            &gone,
            &s,
            Duration::from_secs(60),
        ) else {
            panic!()
        };
        assert_eq!(e.next_try_ms, 6);
        assert_eq!(Class::of_status(302).label(), "3xx");
        assert_eq!(Class::of_status(404).label(), "4xx");
        assert_eq!(Class::of_status(502).label(), "5xx");
    }

    #[test]
    fn a_destination_is_held_after_failures_in_a_row_or_by_retry_after() {
        let s = default_schedule();
        assert_eq!(hold_for(1, &s), None);
        assert_eq!(hold_for(CIRCUIT_FAILURES, &s), Some(Duration::from_secs(5)));
        assert_eq!(
            hold_for(CIRCUIT_FAILURES + 1, &s),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 ", 0), Some(Duration::from_secs(7)));
        let now = 784_111_777_000 - 10_000; // 10 s before Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
