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
use std::ops::Range;

use memchr::memchr;

/// One sequence of a form body split at its first `=` (steps 1 to 2.3), not decoded yet, with
/// whether each side has a `+` or `%` to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a> {
    /// The raw name, still percent-encoded.
    pub name: &'a [u8],
    /// The raw value, still percent-encoded.
    pub value: &'a [u8],
    /// Whether the name holds `+` or `%` (decoding must copy it).
    pub name_work: bool,
    /// Whether the value holds `+` or `%` (decoding must copy it).
    pub value_work: bool,
}

/// Iterator over the raw sequences of a form body, in order, repeated names included.
pub struct Split<'a> {
    input: &'a [u8],
    /// Start of the next sequence; past the end once the last one was read.
    pos: usize,
}

/// Splits a form body into raw names and values.
pub fn split(input: &[u8]) -> Split<'_> {
    Split { input, pos: 0 }
}

impl<'a> Iterator for Split<'a> {
    type Item = Raw<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let input = self.input;
        loop {
            let start = self.pos;
            if start > input.len() {
                return None;
            }
            let seq = scan(input, start);
            // The next sequence starts after the `&`; past the end when this was the last.
            self.pos = seq.end + 1;
            if seq.end == start {
                continue;
            }
            return Some(match seq.eq {
                Some(eq) => Raw {
                    name: &input[start..eq],
                    value: &input[eq + 1..seq.end],
                    name_work: seq.name_work,
                    value_work: seq.work,
                },
                None => Raw {
                    name: &input[start..seq.end],
                    value: &input[seq.end..seq.end],
                    name_work: seq.work,
                    value_work: false,
                },
            });
        }
    }
}

/// Where one sequence ends and splits, and where there is work to decode.
struct Scanned {
    /// Index of the `&` ending the sequence, or the input's length.
    end: usize,
    /// Index of the first `=`.
    eq: Option<usize>,
    /// Whether the name has a `+` or `%` (set once `eq` is found).
    name_work: bool,
    /// Whether the part after the last split point has one.
    work: bool,
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);

/// The bytes of `word` equal to `b`, as the top bit of each such byte (exact: no false
/// positives from borrows, unlike the shorter "has a zero byte" test).
fn bytes_equal(word: u64, b: u8) -> u64 {
    let x = word ^ (ONES * u64::from(b));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Scans one sequence eight bytes at a time (SWAR on a `u64`): a `+` or `%` only sets a flag,
/// and only a word holding an `&` or the first `=` stops the scan. In an SMS body a `+` comes
/// every few bytes at no regular interval, so a byte loop branching on it would mispredict
/// often, and fields are too short for a `memchr` call per delimiter to pay.
fn scan(input: &[u8], start: usize) -> Scanned {
    let mut out = Scanned {
        end: input.len(),
        eq: None,
        name_work: false,
        work: false,
    };
    let mut work = 0u64;
    let mut i = start;
    while let Some(chunk) = input[i..].first_chunk::<8>() {
        let word = u64::from_le_bytes(*chunk);
        let mut stop = bytes_equal(word, b'&');
        if out.eq.is_none() {
            stop |= bytes_equal(word, b'=');
        }
        let found = bytes_equal(word, b'+') | bytes_equal(word, b'%');
        if stop == 0 {
            work |= found;
            i += 8;
            continue;
        }
        // Little-endian load: the lowest set byte is the first in the input.
        let k = (stop.trailing_zeros() / 8) as usize;
        work |= found & ((1u64 << (k * 8)) - 1);
        if input[i + k] == b'&' {
            out.end = i + k;
            out.work = work != 0;
            return out;
        }
        out.eq = Some(i + k);
        out.name_work = work != 0;
        work = 0;
        i += k + 1;
    }
    let mut tail_work = work != 0;
    for (j, &b) in input[i..].iter().enumerate() {
        match b {
            b'&' => {
                out.end = i + j;
                break;
            }
            b'=' if out.eq.is_none() => {
                out.eq = Some(i + j);
                out.name_work = tail_work;
                tail_work = false;
            }
            b'+' | b'%' => tail_work = true,
            _ => {}
        }
    }
    out.work = tail_work;
    out
}

/// Iterator over the decoded `(name, value)` byte pairs of a form body (steps 1-4 and the
/// percent-decoding of step 5), borrowing what needs no decoding.
pub fn parse(input: &[u8]) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    split(input).map(|raw| {
        (
            component(raw.name, raw.name_work),
            component(raw.value, raw.value_work),
        )
    })
}

/// Step 4 then percent-decoding of one name or value (`work`: it has a `+` or `%`, as `split`
/// found). Borrows when there is nothing to decode.
fn component(input: &[u8], work: bool) -> Cow<'_, [u8]> {
    if work {
        let mut out = Vec::with_capacity(input.len());
        decode_into(&mut out, input);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(input)
    }
}

/// Decodes a component that needs work: the runs between `%` escapes are copied with `+`
/// replaced by a space (a branch-free map the compiler vectorises: in a message a `+` comes
/// every few bytes at no regular interval, so a branch on it would mispredict often), and each
/// escape is decoded on its own.
fn decode_into(out: &mut Vec<u8>, input: &[u8]) {
    let mut rest = input;
    while let Some(p) = memchr(b'%', rest) {
        plus_to_space(out, &rest[..p]);
        match (rest.get(p + 1).and_then(hex), rest.get(p + 2).and_then(hex)) {
            (Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                rest = &rest[p + 3..];
            }
            _ => {
                out.push(b'%');
                rest = &rest[p + 1..];
            }
        }
    }
    plus_to_space(out, rest);
}

fn plus_to_space(out: &mut Vec<u8>, run: &[u8]) {
    let start = out.len();
    out.extend_from_slice(run);
    for b in &mut out[start..] {
        *b = if *b == b'+' { b' ' } else { *b };
    }
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
/// without another copy; a borrowed one is copied once.
pub fn into_string(bytes: Cow<'_, [u8]>) -> String {
    match bytes {
        Cow::Borrowed(b) => lossy(b).into_owned(),
        Cow::Owned(v) => String::from_utf8(v)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// A whole form decoded (all five steps) and owned: every name and value, in order, repeats
/// included, as text in one buffer. What the reader renders from.
///
/// One buffer and one list of spans instead of a `String` per name and value: decoding an SMS
/// costs two allocations whatever its field count, and the text is checked as UTF-8 once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    text: String,
    /// Name and value of each pair, as byte ranges of `text`.
    spans: Vec<(Range<usize>, Range<usize>)>,
}

impl Form {
    /// Decodes `input`; never fails (every byte string is a form, invalid UTF-8 becomes U+FFFD).
    pub fn decode(input: &[u8]) -> Form {
        let mut buf = Vec::with_capacity(input.len());
        let mut spans = Vec::new();
        for raw in split(input) {
            let name = append(&mut buf, raw.name, raw.name_work);
            let value = append(&mut buf, raw.value, raw.value_work);
            spans.push((name, value));
        }
        match String::from_utf8(buf) {
            // Each field must be valid on its own: a field ending inside a character that the
            // next one completes is valid as a whole but not apart.
            Ok(text)
                if spans.iter().all(|(n, v)| {
                    text.is_char_boundary(n.start) && text.is_char_boundary(v.start)
                }) =>
            {
                Form { text, spans }
            }
            Ok(text) => Form::lossy(text.as_bytes(), &spans),
            Err(e) => Form::lossy(e.as_bytes(), &spans),
        }
    }

    /// The rare path: rebuilds the text with each field decoded as UTF-8 on its own.
    fn lossy(buf: &[u8], raw: &[(Range<usize>, Range<usize>)]) -> Form {
        let mut text = String::with_capacity(buf.len());
        let mut spans = Vec::with_capacity(raw.len());
        let mut push = |range: &Range<usize>| {
            let start = text.len();
            text.push_str(&String::from_utf8_lossy(&buf[range.clone()]));
            start..text.len()
        };
        for (name, value) in raw {
            let name = push(name);
            let value = push(value);
            spans.push((name, value));
        }
        Form { text, spans }
    }

    /// The `(name, value)` pairs, in order.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.spans
            .iter()
            .map(|(n, v)| (&self.text[n.clone()], &self.text[v.clone()]))
    }

    /// The values of each distinct name, names in order of first appearance.
    pub fn grouped(&self) -> Vec<(&str, Vec<&str>)> {
        let mut fields: Vec<(&str, Vec<&str>)> = Vec::with_capacity(self.spans.len());
        for (name, value) in self.pairs() {
            match fields.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => fields.push((name, vec![value])),
            }
        }
        fields
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Appends the decoding of one raw component to `buf`; returns where it landed.
fn append(buf: &mut Vec<u8>, raw: &[u8], work: bool) -> Range<usize> {
    let start = buf.len();
    if work {
        decode_into(buf, raw);
    } else {
        buf.extend_from_slice(raw);
    }
    start..buf.len()
}

/// Whether a body reads as an SMS form, or why not: an `=` somewhere (a form of bare words is
/// not name=value pairs), at least one named field, and no field name holding control bytes
/// (raw or percent-encoded: no sender names a field that way, and a reader's CSV header would
/// carry them).
///
/// # Errors
/// A fixed reason, for the quarantine record.
pub fn plausibility(input: &[u8]) -> Result<(), &'static str> {
    if memchr::memchr(b'=', input).is_none() {
        return Err("no `=` anywhere, so no name=value pairs");
    }
    if !has_named_field(input) {
        return Err("no named field");
    }
    if parse(input).any(|(name, _)| name.iter().any(u8::is_ascii_control)) {
        return Err("a field name holds control bytes");
    }
    Ok(())
}

/// Whether a body has at least one field with a non-empty name.
/// (Per WHATWG every byte string parses; a body with no named field carries nothing. Decoding
/// never empties a name, so the raw split answers.)
pub fn has_named_field(input: &[u8]) -> bool {
    split(input).any(|raw| !raw.name.is_empty())
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
        let form = Form::decode(input.as_bytes());
        let via_form: Vec<(String, String)> = form
            .pairs()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(owned, via_form);
        assert_eq!(form.len(), owned.len());
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
    fn form_decodes_each_field_as_utf8_on_its_own() {
        // Together the two bytes are "é"; apart each is invalid and becomes U+FFFD.
        let form = Form::decode(b"a=%C3&b=%A9&c=ok");
        let got: Vec<_> = form.pairs().collect();
        assert_eq!(got, [("a", "\u{FFFD}"), ("b", "\u{FFFD}"), ("c", "ok")]);
        let form = Form::decode(b"%C3=%A9");
        assert_eq!(form.pairs().collect::<Vec<_>>(), [("\u{FFFD}", "\u{FFFD}")]);
    }

    #[test]
    fn form_groups_repeated_names_in_order_of_first_appearance() {
        let form = Form::decode(b"to=1&m=hi&to=2&&to=3");
        assert_eq!(
            form.grouped(),
            [("to", vec!["1", "2", "3"]), ("m", vec!["hi"])]
        );
        assert!(Form::decode(b"&&").is_empty());
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
