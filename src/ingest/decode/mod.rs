//! Body decoding: choose the decoder from the Content-Type (sniffing when there is none),
//! validate the body, and say what kind of event it is, or why it goes to quarantine.
//!
//! Owns the choice and the verdict; the parsers are `json.rs` and `form.rs`. It never changes
//! the body: what is stored is what was received.

pub mod form;
pub mod json;

use crate::event::{BodyFormat, MAX_KIND_BYTES};
use crate::ingest::route::Hook;

pub use json::JsonDecoder;

/// The verdict on one authenticated body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid event of `kind`.
    Event {
        /// The kind it is stored under.
        kind: String,
        /// How it was decoded.
        format: BodyFormat,
        /// Its `callid`, for the call index.
        callid: Option<String>,
    },
    /// Not decodable; kept verbatim in quarantine with this reason (the sender cannot fix it,
    /// and a 4xx would only make it give up, so it is answered 200).
    Quarantine(String),
}

/// How the Content-Type asks the body to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Declared {
    Json,
    Form,
    /// No Content-Type, or a generic one (`text/plain`, `application/octet-stream`): sniff.
    Unknown,
    /// A type this gateway has no decoder for (e.g. `multipart/form-data`, `application/xml`).
    Unsupported,
}

/// Reads the media type of a Content-Type value (RFC 9110 §8.3.1: `type "/" subtype` then
/// parameters), case-insensitively.
fn declared(content_type: Option<&[u8]>) -> Declared {
    let Some(ct) = content_type else {
        return Declared::Unknown;
    };
    let media = ct.split(|&b| b == b';').next().unwrap_or(&[]);
    let media = media.trim_ascii().to_ascii_lowercase();
    match media.as_slice() {
        b"application/json" | b"text/json" => Declared::Json,
        m if m.ends_with(b"+json") => Declared::Json,
        b"application/x-www-form-urlencoded" => Declared::Form,
        b"" | b"text/plain" | b"application/octet-stream" => Declared::Unknown,
        _ => Declared::Unsupported,
    }
}

/// Decides what an authenticated body posted to `hook` is.
///
/// The kind of a JSON object is its top-level `event` string (any value, so new event types are
/// never dropped) when that is 1 to [`MAX_KIND_BYTES`] bytes without control characters; else
/// the hook's name. A form body is always `sms`.
pub fn decode_body(
    json: &mut JsonDecoder,
    hook: Hook,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Decoded {
    if body.trim_ascii().is_empty() {
        return Decoded::Quarantine("empty body".to_string());
    }
    let format = match declared(content_type) {
        Declared::Json => BodyFormat::Json,
        Declared::Form => BodyFormat::Form,
        Declared::Unknown if body.trim_ascii_start().starts_with(b"{") => BodyFormat::Json,
        Declared::Unknown => BodyFormat::Form,
        Declared::Unsupported => {
            return Decoded::Quarantine("unsupported content type".to_string());
        }
    };
    match format {
        BodyFormat::Json => match json.decode(body) {
            Ok(fields) => Decoded::Event {
                kind: fields
                    .event
                    .filter(|k| usable_kind(k))
                    .unwrap_or_else(|| hook.name().to_string()),
                format,
                callid: fields.callid,
            },
            Err(e) => Decoded::Quarantine(e.to_string()),
        },
        _ if form::has_named_field(body) => Decoded::Event {
            kind: Hook::Sms.name().to_string(),
            format: BodyFormat::Form,
            callid: None,
        },
        _ => Decoded::Quarantine("form body has no named field".to_string()),
    }
}

fn usable_kind(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KIND_BYTES && !k.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hook: Hook, ct: Option<&str>, body: &str) -> Decoded {
        decode_body(
            &mut JsonDecoder::default(),
            hook,
            ct.map(str::as_bytes),
            body.as_bytes(),
        )
    }

    fn ev(kind: &str, format: BodyFormat, callid: Option<&str>) -> Decoded {
        Decoded::Event {
            kind: kind.into(),
            format,
            callid: callid.map(Into::into),
        }
    }

    #[test]
    fn table() {
        use BodyFormat::{Form, Json};
        let q = |r: &str| Decoded::Quarantine(r.into());
        let cases = [
            (
                Hook::Cdr,
                Some("application/json"),
                r#"{"event":"cdr","callid":"c"}"#,
                ev("cdr", Json, Some("c")),
            ),
            (
                Hook::Cdr,
                Some("Application/JSON; charset=utf-8"),
                r#"{"a":1}"#,
                ev("cdr", Json, None),
            ),
            (
                Hook::Recording,
                None,
                r#" {"event":"recording"}"#,
                ev("recording", Json, None),
            ),
            (
                Hook::Cdr,
                None,
                r#"{"event":"hangup"}"#,
                ev("hangup", Json, None),
            ),
            (Hook::Cdr, None, r#"{"event":""}"#, ev("cdr", Json, None)),
            (
                Hook::Cdr,
                None,
                r#"{"event":"a\u0001"}"#,
                ev("cdr", Json, None),
            ),
            (
                Hook::Sms,
                Some("application/x-www-form-urlencoded"),
                "src=1&message=hi",
                ev("sms", Form, None),
            ),
            (Hook::Sms, None, "src=1", ev("sms", Form, None)),
            (
                Hook::Cdr,
                Some("text/plain"),
                "src=1",
                ev("sms", Form, None),
            ),
            (
                Hook::Sms,
                Some("application/x-www-form-urlencoded"),
                "{\"event\":\"cdr\"}",
                ev("sms", Form, None),
            ),
            (
                Hook::Cdr,
                Some("application/json"),
                "{",
                q("invalid JSON: x"),
            ),
            (
                Hook::Cdr,
                Some("application/json"),
                "[1]",
                q("JSON is not an object"),
            ),
            (Hook::Cdr, Some("application/json"), "  ", q("empty body")),
            (Hook::Sms, None, "&&", q("form body has no named field")),
            (
                Hook::Sms,
                Some("multipart/form-data; boundary=x"),
                "a=b",
                q("unsupported content type"),
            ),
        ];
        for (hook, ct, body, want) in cases {
            let got = run(hook, ct, body);
            match (&got, &want) {
                // The parser's message carries a position; only its prefix is ours.
                (Decoded::Quarantine(g), Decoded::Quarantine(w)) if w.ends_with(": x") => {
                    assert!(g.starts_with(&w[..w.len() - 1]), "{body:?}: {g}")
                }
                _ => assert_eq!(got, want, "{body:?}"),
            }
        }
    }
}
