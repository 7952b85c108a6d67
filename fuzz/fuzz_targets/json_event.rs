//! Property: the simd-json event decoder accepts and refuses exactly what serde_json does
//! (within the nesting limit), and extracts the same `event` and `callid` values. A leading
//! UTF-8 byte order mark is ignored (RFC 8259 §8.1 lets a parser do so; serde_json refuses it),
//! so the reference reads the body without it.
#![no_main]

use didgate::ingest::decode::json::{Error, JsonDecoder, MAX_JSON_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn callid(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().map(|i| i.to_string()).or_else(|| n.as_u64().map(|u| u.to_string())),
        _ => None,
    }
}

/// With serde_json's `arbitrary_precision` feature (enabled by didgate for exact number text
/// in CSV), serde_json itself treats this object key as its private number marker and refuses
/// valid JSON that uses it: the reference is wrong there, so such inputs are out of scope.
const SERDE_NUMBER_MARKER: &[u8] = b"$serde_json::private::Number";

fuzz_target!(|data: &[u8]| {
    if data.windows(SERDE_NUMBER_MARKER.len()).any(|w| w == SERDE_NUMBER_MARKER) {
        return;
    }
    let ours = JsonDecoder::default().decode(data);
    let theirs: Result<Value, _> =
        serde_json::from_slice(data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data));
    match (&ours, &theirs) {
        (Ok(fields), Ok(Value::Object(map))) => {
            assert!(depth(theirs.as_ref().unwrap()) <= MAX_JSON_DEPTH);
            let event = map.get("event").and_then(|v| v.as_str()).map(str::to_string);
            assert_eq!(fields.event, event);
            assert_eq!(fields.callid, map.get("callid").and_then(callid));
        }
        (Err(Error::NotAnObject), Ok(v)) => assert!(!v.is_object()),
        (Err(Error::Invalid(_)), Err(_)) => {}
        (Err(Error::Invalid(_)), Ok(v)) if depth(v) > MAX_JSON_DEPTH => {}
        _ => panic!("decoders disagree: ours {ours:?}, serde_json {theirs:?}"),
    }
});
