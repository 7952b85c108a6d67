//! The delivery state kept in the store, as JSON records (readable with any LMDB tool, and
//! open to new fields): a destination's [`DestState`], an event's [`RetryEntry`] while it
//! waits for another try, its [`DeadEntry`] once given up on, and a pull consumer's
//! [`ConsumerCursor`]. The store (`store/delivery.rs`, cursors in `store/consumer.rs`) keys
//! and writes them; the forwarder and the CLI decide their contents.

use serde::{Deserialize, Serialize};

/// One destination's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DestState {
    /// Every event with a sequence number up to this one is settled: delivered, filtered out,
    /// waiting in the retry set, or dead.
    pub cursor: u64,
    /// When the destination was first seen.
    pub created_at_ms: i64,
    /// The last change.
    pub updated_at_ms: i64,
    /// Why delivery is paused (`didgate deliveries pause`, or a 410 Gone); `None`: running.
    pub paused: Option<String>,
    /// Since when.
    pub paused_at_ms: Option<i64>,
    /// Events delivered (2xx), all time.
    pub delivered: u64,
    /// Events in the retry set now.
    pub retrying: u64,
    /// Events in the dead letters now.
    pub dead: u64,
    /// Attempts under way when the forwarder last reported.
    pub in_flight: u64,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at_ms: Option<i64>,
    /// The last delivery.
    pub last_delivered_at_ms: Option<i64>,
}

/// An event waiting for another try at one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryEntry {
    /// Attempts made so far.
    pub attempts: u32,
    /// The first attempt; `max_age` counts from it. `None`: never tried (a replay).
    pub first_attempt_ms: Option<i64>,
    /// Not tried again before this.
    pub next_try_ms: i64,
    /// The destination's `Retry-After`: not sent before this even when the retry set is
    /// swept after a recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Its HTTP status, when there was one.
    pub last_status: Option<u16>,
    /// Queued by `didgate replay` or `deliveries retry`, not by a failure.
    pub replay: bool,
}

/// An event given up on at one destination, kept until retried, replayed or pruned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadEntry {
    /// Attempts made.
    pub attempts: u32,
    /// The first attempt.
    pub first_attempt_ms: i64,
    /// When it was given up on.
    pub dead_at_ms: i64,
    /// The last error.
    pub last_error: String,
    /// Its HTTP status, when there was one.
    pub last_status: Option<u16>,
}

/// A pull consumer's position (`didgate consume`, `didgate cursor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerCursor {
    /// The last event consumed: the next batch starts after it.
    pub seq: u64,
    /// When the cursor was made.
    pub created_at_ms: i64,
    /// When it last moved.
    pub updated_at_ms: i64,
}

/// A destination or consumer name: 1 to 64 of `A-Z a-z 0-9 _ . -` (it is a store key, a
/// metrics label and a thread name).
///
/// # Errors
/// What is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{name:?}: a name has 1 to {MAX_NAME_BYTES} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!("{name:?}: a name may hold only A-Z a-z 0-9 _ . -"));
    }
    Ok(())
}

/// Longest destination or consumer name.
pub const MAX_NAME_BYTES: usize = 64;

/// Encodes a record.
pub fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    // Plain structs of numbers and strings always serialize.
    serde_json::to_vec(t).unwrap_or_default()
}

/// Decodes a record.
///
/// # Errors
/// The bytes are not such a record.
pub fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_records_round_trip_with_unknown_fields() {
        assert!(check_name("crm-1.prod_a").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let s = DestState {
            cursor: 7,
            paused: Some("410".into()),
            ..DestState::default()
        };
        assert_eq!(decode::<DestState>(&encode(&s)).unwrap(), s);
        let newer = br#"{"cursor":9,"some_future_field":1}"#;
        assert_eq!(decode::<DestState>(newer).unwrap().cursor, 9);
        assert!(decode::<RetryEntry>(b"{").is_err());
    }
}
