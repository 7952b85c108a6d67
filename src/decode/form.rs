//! Hand-rolled `application/x-www-form-urlencoded` decoding (didlogic's inbound SMS).
//!
//! Owns the byte-level parse only; it does not decide whether a body is a form (`decode/mod.rs`)
//! nor how fields are shown (`cli/render.rs`). Pure functions over bytes, zero-copy where a
//! field needs no decoding.
//!
//! WHATWG URL Standard, "application/x-www-form-urlencoded parsing":
//! 1. Let sequences be the result of splitting input on 0x26 (&).
//! 2. For each byte sequence bytes in sequences:
//!    1. If bytes is the empty byte sequence, then continue.
//!    2. If bytes contains a 0x3D (=), then let name be the bytes from the start of bytes up to
//!       but excluding its first 0x3D (=), and let value be the bytes, if any, after the first
//!       0x3D (=) up to the end of bytes. [...]
//!    3. Otherwise, let name have the value of bytes and let value be the empty byte sequence.
//!    4. Replace any 0x2B (+) in name and value with 0x20 (SP).
//!    5. Let nameString and valueString be the result of running UTF-8 decode without BOM on
//!       the percent-decoding of name and value, respectively.
//!
//! Percent-decoding (URL Standard §1.3): a `%` not followed by two ASCII hex digits is kept as
//! is. Step 5's UTF-8 decode is left to the caller ([`lossy`]), because the stored body keeps
//! the raw bytes and only display replaces invalid UTF-8 with U+FFFD.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

/// Iterator over the decoded `(name, value)` byte pairs of a form body, in order, repeated
/// names included.
pub struct Pairs<'a> {
    rest: Option<&'a [u8]>,
}

/// Splits and decodes a form body (steps 1-4 and the percent-decoding of step 5).
pub fn parse(input: &[u8]) -> Pairs<'_> {
    Pairs { rest: Some(input) }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (Cow<'a, [u8]>, Cow<'a, [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = self.rest?;
            let (seq, tail) = match memchr(b'&', rest) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            self.rest = tail;
            if seq.is_empty() {
                continue;
            }
            let (name, value) = match memchr(b'=', seq) {
                Some(i) => (&seq[..i], &seq[i + 1..]),
                None => (seq, &seq[seq.len()..]),
            };
            return Some((decode_component(name), decode_component(value)));
        }
    }
}

/// Step 4 then percent-decoding of one name or value. Borrows when there is nothing to decode.
pub fn decode_component(input: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = memchr2(b'+', b'%', input) else {
        return Cow::Borrowed(input);
    };
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    while i < input.len() {
        let b = input[i];
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                input.get(i + 1).and_then(hex),
                input.get(i + 2).and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            _ => {
                // Copy the run up to the next byte that needs work in one go.
                let run = memchr2(b'+', b'%', &input[i..]).map_or(input.len(), |n| i + n);
                out.extend_from_slice(&input[i..run]);
                i = run;
            }
        }
    }
    Cow::Owned(out)
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Step 5's "UTF-8 decode without BOM": invalid sequences become U+FFFD, a BOM is kept.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Step 5 for an owned result: a decoded field that is valid UTF-8 becomes the `String`
/// without another copy (the common case); a borrowed one is copied once.
pub fn into_string(bytes: Cow<'_, [u8]>) -> String {
    match bytes {
        Cow::Borrowed(b) => String::from_utf8_lossy(b).into_owned(),
        Cow::Owned(v) => String::from_utf8(v)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Whether a body is acceptable as an SMS form: at least one field with a non-empty name.
/// (Per WHATWG every byte string parses; a body with no named field carries nothing.)
pub fn has_named_field(input: &[u8]) -> bool {
    parse(input).any(|(name, _)| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        let owned: Vec<(String, String)> = parse(input.as_bytes())
            .map(|(n, v)| (into_string(n), into_string(v)))
            .collect();
        let via_lossy: Vec<(String, String)> = parse(input.as_bytes())
            .map(|(n, v)| (lossy(&n).into_owned(), lossy(&v).into_owned()))
            .collect();
        assert_eq!(owned, via_lossy);
        owned
    }

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "src=15551234567&dst=448001234567&message=Hello+world+&received_at=2026-05-13+12%3A45%3A40+UTC",
                &[
                    ("src", "15551234567"),
                    ("dst", "448001234567"),
                    ("message", "Hello world "),
                    ("received_at", "2026-05-13 12:45:40 UTC"),
                ],
            ),
            ("", &[]),
            ("&&&", &[]),
            ("a", &[("a", "")]),
            ("=v", &[("", "v")]),
            ("a=", &[("a", "")]),
            ("a=b=c", &[("a", "b=c")]),
            ("a=1&a=2", &[("a", "1"), ("a", "2")]),
            ("%2B=%2b+", &[("+", "+ ")]),
            ("x=%", &[("x", "%")]),
            ("x=%4", &[("x", "%4")]),
            ("x=%zz%41", &[("x", "%zzA")]),
            ("x=%C3%A9", &[("x", "é")]),
            ("x=%FF", &[("x", "\u{FFFD}")]),
            ("x=%EF%BB%BFa", &[("x", "\u{FEFF}a")]),
            ("m=caf\u{e9}", &[("m", "café")]),
        ];
        for (input, want) in cases {
            assert_eq!(pairs(input), p(want), "input {input:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_to_decode() {
        let (n, v) = parse(b"src=155").next().unwrap();
        assert!(matches!(n, Cow::Borrowed(_)) && matches!(v, Cow::Borrowed(_)));
    }

    #[test]
    fn named_field_check() {
        assert!(has_named_field(b"a=1"));
        assert!(has_named_field(b"=1&b"));
        assert!(!has_named_field(b""));
        assert!(!has_named_field(b"=1&&=2"));
    }
}
