//! How a stored event is shown: one JSON object per line, the payload derived from the exact
//! stored body.
//!
//! Owns the line shape `{"seq":42,"stored_at":"…","kind":"cdr","payload":{…}}` and the CSV
//! cell values. JSON payloads are the original object with insignificant whitespace removed
//! (same keys, order, values and number forms); form payloads are an object of decoded fields
//! (a repeated name keeps every value, as an array); bytes that are not UTF-8 show as U+FFFD.

use std::borrow::Cow;

use crate::event::BodyFormat;
use crate::ingest::decode::form::Form;
use crate::ingest::decode::json::{StringState, strip_bom};

use crate::archive::record::ArchiveRecord;
use crate::store::StoredEvent;
use crate::timestamp;
use serde::Deserializer as _;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// The fields didlogic documents per kind, in the order CSV puts them first.
pub fn documented_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "cdr" => &[
            "calldate",
            "callid",
            "direction",
            "disposition",
            "src",
            "dst",
            "duration",
            "billsec",
            "user_id",
            "event",
        ],
        "recording" => &["calldate", "callid", "recording_url", "user_id", "event"],
        "sms" => &["src", "dst", "message", "received_at"],
        _ => &[],
    }
}

/// Appends one JSON line for `ev`, with its recording's archive state (as stored: state,
/// path, sha256, ...) when it has one.
pub fn event_line(ev: &StoredEvent, archive: Option<&ArchiveRecord>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(ev.seq.to_string().as_bytes());
    out.extend_from_slice(b",\"stored_at\":\"");
    out.extend_from_slice(timestamp::format_ms(ev.stored_at_ms).as_bytes());
    out.extend_from_slice(b"\",\"kind\":");
    json_string(&ev.kind, out);
    out.extend_from_slice(b",\"payload\":");
    payload(ev.format, &ev.body, out);
    if let Some(a) = archive {
        out.extend_from_slice(b",\"archive\":");
        out.extend_from_slice(archive_json(a).to_string().as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

/// A recording's archive state as the reader tools show it: the stored record (times in ms
/// since the epoch, `*_ms`) with each time also as RFC 3339 (`fetched_at`, `next_try`,
/// `expires_at`, `updated_at`).
pub fn archive_json(a: &ArchiveRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for (ms, name) in [
            (a.fetched_at_ms, "fetched_at"),
            (a.next_try_ms, "next_try"),
            (a.expires_ms, "expires_at"),
            (Some(a.updated_ms), "updated_at"),
        ] {
            if let Some(ms) = ms {
                m.insert(name.into(), timestamp::format_ms(ms).into());
            }
        }
    }
    v
}

/// Appends the payload of a body stored with `format`.
pub fn payload(format: BodyFormat, body: &[u8], out: &mut Vec<u8>) {
    match format {
        BodyFormat::Json => {
            let start = out.len();
            if !compact_json(strip_bom(body), out) {
                // Not expected (bodies were validated before storing); show it as text.
                out.truncate(start);
                json_string(&String::from_utf8_lossy(body), out);
            }
        }
        BodyFormat::Form => {
            out.push(b'{');
            let form = Form::decode(body);
            for (i, (name, values)) in form.grouped().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(name, out);
                out.push(b':');
                if let [one] = values.as_slice() {
                    json_string(one, out);
                } else {
                    out.push(b'[');
                    for (j, v) in values.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        json_string(v, out);
                    }
                    out.push(b']');
                }
            }
            out.push(b'}');
        }
        BodyFormat::Undecoded => json_string(&String::from_utf8_lossy(body), out),
    }
}

/// Appends `s` as a JSON string.
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Copies a JSON text without insignificant whitespace (RFC 8259 §2: `ws` is space, tab, LF,
/// CR, allowed only between tokens). Returns false if the text ends inside a string.
pub fn compact_json(input: &[u8], out: &mut Vec<u8>) -> bool {
    let mut state = StringState::default();
    for &b in input {
        if !state.step(b) || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
    }
    !state.in_string()
}

/// The CSV cell of `field` in an event's payload: strings unescaped, numbers and booleans as
/// the exact text received (`1.5e3` stays `1.5e3`, `1e400` stays `1e400`), `null` and absent
/// fields empty, arrays and objects as compact JSON.
pub fn csv_cell<'a>(fields: &'a PayloadFields, field: &str) -> Cow<'a, str> {
    match fields {
        PayloadFields::Json(pairs) => {
            let Some((_, raw)) = pairs.iter().find(|(n, _)| n == field) else {
                return Cow::Borrowed("");
            };
            let text = raw.get();
            match text.as_bytes().first() {
                Some(b'"') => {
                    serde_json::from_str::<String>(text).map_or(Cow::Borrowed(text), Cow::Owned)
                }
                Some(b'n') => Cow::Borrowed(""),
                Some(b'[' | b'{') => {
                    let mut out = Vec::with_capacity(text.len());
                    compact_json(text.as_bytes(), &mut out);
                    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
                }
                _ => Cow::Borrowed(text),
            }
        }
        PayloadFields::Form(form) => {
            let mut values = form.pairs().filter(|(n, _)| *n == field).map(|(_, v)| v);
            match (values.next(), values.next()) {
                (None, _) => Cow::Borrowed(""),
                (Some(one), None) => Cow::Borrowed(one),
                (Some(first), Some(second)) => {
                    let all: Vec<&str> = [first, second].into_iter().chain(values).collect();
                    Cow::Owned(serde_json::Value::from(all).to_string())
                }
            }
        }
        PayloadFields::None => Cow::Borrowed(""),
    }
}

/// An event's top-level fields, parsed for CSV.
pub enum PayloadFields {
    /// A JSON object's fields in the order received, each value's text exactly as received (a
    /// repeated name keeps its first place and its last value, as JSON parsers do).
    Json(Vec<(String, Box<RawValue>)>),
    /// Decoded form fields.
    Form(Form),
    /// Nothing decodable (a quarantined body).
    None,
}

/// Collects a JSON object's fields in order, without interpreting their values.
struct RawFields;

impl<'de> Visitor<'de> for RawFields {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Self::Value = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, Box<RawValue>>()? {
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => out.push((name, value)),
            }
        }
        Ok(out)
    }
}

impl PayloadFields {
    /// Parses the payload of `ev` (order of keys preserved).
    pub fn of(ev: &StoredEvent) -> PayloadFields {
        match ev.format {
            BodyFormat::Json => {
                let mut de = serde_json::Deserializer::from_slice(strip_bom(&ev.body));
                de.deserialize_map(RawFields)
                    .map(PayloadFields::Json)
                    .unwrap_or(PayloadFields::None)
            }
            BodyFormat::Form => PayloadFields::Form(Form::decode(&ev.body)),
            BodyFormat::Undecoded => PayloadFields::None,
        }
    }

    /// The field names, in payload order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            PayloadFields::Json(pairs) => pairs.iter().map(|(n, _)| n.as_str()).collect(),
            PayloadFields::Form(form) => form.grouped().into_iter().map(|(n, _)| n).collect(),
            PayloadFields::None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(format: BodyFormat, body: &[u8]) -> StoredEvent {
        StoredEvent {
            seq: 42,
            stored_at_ms: 1_778_563_078_123,
            kind: "sms".into(),
            format,
            peer: None,
            content_type: vec![],
            body: body.to_vec(),
        }
    }

    fn line(format: BodyFormat, body: &[u8]) -> String {
        let mut out = Vec::new();
        event_line(&ev(format, body), None, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_payload_keeps_keys_order_and_number_forms() {
        let body = b"{\n  \"b\": 1.50,\n  \"a\" : \"x y\\\" \\\\\",\n \"c\": [1e3, true]\n}\n";
        assert_eq!(
            line(BodyFormat::Json, body),
            "{\"seq\":42,\"stored_at\":\"2026-05-12T05:17:58.123Z\",\"kind\":\"sms\",\"payload\":{\"b\":1.50,\"a\":\"x y\\\" \\\\\",\"c\":[1e3,true]}}\n"
        );
    }

    #[test]
    fn form_payload_decodes_exactly_and_keeps_repeats() {
        let got = line(BodyFormat::Form, b"message=Hello+world+&to=1&to=2&bad=%FF");
        assert!(
            got.ends_with("\"payload\":{\"message\":\"Hello world \",\"to\":[\"1\",\"2\"],\"bad\":\"\u{FFFD}\"}}\n"),
            "{got}"
        );
    }

    #[test]
    fn compact_json_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("{ }", "{}", true),
            ("{\"a b\" : \" \\\" \"}", "{\"a b\":\" \\\" \"}", true),
            ("[\"\\\\\" , 1]", "[\"\\\\\",1]", true),
            ("{\"a", "{\"a", false),
        ];
        for (input, want, ok) in cases {
            let mut out = Vec::new();
            assert_eq!(compact_json(input.as_bytes(), &mut out), *ok);
            assert_eq!(String::from_utf8(out).unwrap(), *want);
        }
    }

    #[test]
    fn csv_cells() {
        let json = PayloadFields::of(&ev(
            BodyFormat::Json,
            br#"{"n":9.0,"s":"t","z":null,"o":{"k":1},"b":false}"#,
        ));
        let cells: Vec<_> = ["n", "s", "z", "o", "b", "missing"]
            .iter()
            .map(|f| csv_cell(&json, f).into_owned())
            .collect();
        assert_eq!(cells, ["9.0", "t", "", "{\"k\":1}", "false", ""]);
        let form = PayloadFields::of(&ev(BodyFormat::Form, b"a=1&a=2&m=hi+there"));
        assert_eq!(csv_cell(&form, "a"), "[\"1\",\"2\"]");
        assert_eq!(csv_cell(&form, "m"), "hi there");
        assert_eq!(form.names(), ["a", "m"]);
    }
}
