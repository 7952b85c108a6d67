//! Body decoding: choose the decoder from the body, the hook and the Content-Type, validate
//! the body, and say what kind of event it is, or why it goes to quarantine.
//!
//! Owns the choice and the verdict; the parsers are `json.rs` and `form.rs`. It never changes
//! the body: what is stored is what was received.

pub mod form;
pub mod json;

use crate::call::facts::{self, Facts};
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
        /// What the call index keeps about it (CDR, recording, SMS); boxed, as a quarantine
        /// verdict is a sixth of its size.
        call: Option<Box<Facts>>,
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
/// A body that is JSON (after an optional UTF-8 byte order mark) is decoded as JSON on every
/// hook, whatever the Content-Type says: didlogic's CDR and recording webhooks are JSON, and a
/// client library's default form Content-Type must not turn a CDR into an SMS. A form is an
/// event only on the SMS hook; on the CDR and recording hooks it is quarantined, as is a body
/// that is neither JSON nor a plausible form (compressed, UTF-16, binary, plain text), each
/// with a reason a person understands.
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
    if let Some(why) = undecodable_encoding(body) {
        return Decoded::Quarantine(why.to_string());
    }
    let declared = declared(content_type);
    let looks_json = matches!(
        json::strip_bom(body).trim_ascii_start().first(),
        Some(b'{' | b'[')
    );
    if looks_json || declared == Declared::Json {
        let error = match json.decode(body) {
            Ok(fields) => {
                let kind = fields
                    .event
                    .filter(|k| usable_kind(k))
                    .unwrap_or_else(|| hook.name().to_string());
                let call = facts::Kind::of_event(&kind)
                    .map(|k| Box::new(Facts::from_json(k, &fields.call, fields.callid.as_deref())));
                return Decoded::Event {
                    kind,
                    format: BodyFormat::Json,
                    callid: fields.callid,
                    call,
                };
            }
            Err(e) => e,
        };
        // A form that happens to start with `{` is still a form on the SMS hook.
        if hook != Hook::Sms || form::plausibility(body).is_err() {
            return Decoded::Quarantine(error.to_string());
        }
    }
    if declared == Declared::Unsupported {
        let media = content_type
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let media = media
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        return Decoded::Quarantine(format!("unsupported content type {media:?}"));
    }
    match (hook, form::plausibility(body)) {
        (Hook::Sms, Ok(())) => Decoded::Event {
            kind: Hook::Sms.name().to_string(),
            format: BodyFormat::Form,
            callid: None,
            call: Some(Box::new(facts::of_form(body))),
        },
        (Hook::Sms, Err(why)) => Decoded::Quarantine(format!("not a form: {why}")),
        (hook, Ok(())) => Decoded::Quarantine(format!("form body on the {} hook", hook.name())),
        (hook, Err(_)) => Decoded::Quarantine(format!(
            "{} on the {} hook is neither JSON nor a form",
            if body
                .iter()
                .any(|&b| b == 0 || (b < 0x20 && !b.is_ascii_whitespace()))
            {
                "binary body"
            } else {
                "text body"
            },
            hook.name()
        )),
    }
}

/// A reason for bodies in an encoding no decoder here reads, told by their first bytes:
/// compressed (a `Content-Encoding` the gateway does not undo) or UTF-16.
fn undecodable_encoding(body: &[u8]) -> Option<&'static str> {
    match body {
        [0x1f, 0x8b, ..] => Some("gzip-compressed body"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd-compressed body"),
        [0xff, 0xfe, ..] | [0xfe, 0xff, ..] => Some("UTF-16 body (UTF-8 expected)"),
        // UTF-16 without a byte order mark: ASCII text with a NUL beside every character.
        [a, 0, b, 0, ..] | [0, a, 0, b, ..] if a.is_ascii_graphic() && b.is_ascii_graphic() => {
            Some("UTF-16 body (UTF-8 expected)")
        }
        _ => None,
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
            call: None,
        }
    }

    /// The verdict without its call facts (checked on their own below).
    fn without_facts(d: Decoded) -> Decoded {
        match d {
            Decoded::Event {
                kind,
                format,
                callid,
                ..
            } => Decoded::Event {
                kind,
                format,
                callid,
                call: None,
            },
            q => q,
        }
    }

    #[test]
    fn call_facts_come_from_the_same_decode_as_from_a_stored_body() {
        let cdr = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"x","disposition":"ANSWERED","billsec":"7","duration":9.4,"src":441,"event":"cdr"}"#;
        let sms = "src=1555&dst=44&message=hi&received_at=2026-05-13+12%3A45%3A40+UTC";
        for (hook, ct, body, kind, format) in [
            (Hook::Cdr, JSON_CT, cdr, "cdr", BodyFormat::Json),
            (Hook::Sms, FORM_CT, sms, "sms", BodyFormat::Form),
        ] {
            let Decoded::Event { call: Some(f), .. } = run(hook, Some(ct), body) else {
                panic!("{body}: no facts");
            };
            assert_eq!(Some(*f), Facts::of(kind, format, body.as_bytes()));
        }
        let Decoded::Event { call: Some(f), .. } = run(Hook::Cdr, Some(JSON_CT), cdr) else {
            unreachable!()
        };
        assert_eq!((f.billsec, f.duration, f.src.as_str()), (Some(7), 9, "441"));
        let Decoded::Event { call, .. } = run(Hook::Cdr, None, r#"{"event":"hangup"}"#) else {
            unreachable!()
        };
        assert_eq!(call, None, "other kinds are not calls");
    }

    const JSON_CT: &str = "application/json";
    const FORM_CT: &str = "application/x-www-form-urlencoded";

    #[test]
    fn compressed_and_utf16_bodies_are_named() {
        let cases: [(&[u8], &str); 4] = [
            (b"\x1f\x8b\x08\x00\x00\x00", "gzip-compressed body"),
            (b"\x28\xb5\x2f\xfd\x00", "zstd-compressed body"),
            (b"\xff\xfe{\x00\"\x00", "UTF-16 body (UTF-8 expected)"),
            (b"{\x00\"\x00a\x00", "UTF-16 body (UTF-8 expected)"),
        ];
        for hook in Hook::ALL {
            for (body, why) in cases {
                let got = decode_body(&mut JsonDecoder::default(), hook, None, body);
                assert_eq!(got, Decoded::Quarantine(why.into()), "{body:?}");
            }
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
            // A form is an event only on the SMS hook.
            (
                Hook::Cdr,
                Some("text/plain"),
                "src=1",
                q("form body on the cdr hook"),
            ),
            (
                Hook::Recording,
                Some("application/x-www-form-urlencoded"),
                "src=1&dst=2",
                q("form body on the recording hook"),
            ),
            // JSON is JSON whatever the Content-Type says: curl's default form type, none,
            // a byte order mark in front.
            (
                Hook::Cdr,
                Some("application/x-www-form-urlencoded"),
                r#"{"calldate":"2026-05-12T05:17:58Z","callid":"formct1","event":"cdr"}"#,
                ev("cdr", Json, Some("formct1")),
            ),
            (
                Hook::Cdr,
                None,
                "\u{feff}{\"callid\":\"bom\"}",
                ev("cdr", Json, Some("bom")),
            ),
            (
                Hook::Sms,
                Some("application/x-www-form-urlencoded"),
                "{\"event\":\"cdr\"}",
                ev("cdr", Json, None),
            ),
            (
                Hook::Cdr,
                Some("multipart/form-data; boundary=x"),
                "{\"a\":1}",
                ev("cdr", Json, None),
            ),
            // Neither JSON nor a plausible form: quarantined, with a reason a person reads.
            (
                Hook::Cdr,
                None,
                "hello world",
                q("text body on the cdr hook is neither JSON nor a form"),
            ),
            (
                Hook::Cdr,
                None,
                "\u{1}\u{2}abc",
                q("binary body on the cdr hook is neither JSON nor a form"),
            ),
            (
                Hook::Sms,
                None,
                "hello world",
                q("not a form: no `=` anywhere, so no name=value pairs"),
            ),
            (
                Hook::Sms,
                None,
                "a%00b=1",
                q("not a form: a field name holds control bytes"),
            ),
            (
                Hook::Sms,
                None,
                "x\u{7}=1",
                q("not a form: a field name holds control bytes"),
            ),
            (
                Hook::Sms,
                Some("application/x-www-form-urlencoded"),
                "{weird}=1&src=2",
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
            (Hook::Sms, None, "&=&", q("not a form: no named field")),
            (
                Hook::Sms,
                Some("multipart/form-data; boundary=x"),
                "a=b",
                q("unsupported content type \"multipart/form-data\""),
            ),
        ];
        for (hook, ct, body, want) in cases {
            let got = without_facts(run(hook, ct, body));
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
