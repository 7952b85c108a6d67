//! JSON event decoding with simd-json: validate the body as one JSON object and pull out the
//! fields the gateway needs (`event` for the kind, `callid` for the call blocks, and the call
//! facts of the call index: `calldate`, `direction`, `disposition`, `src`, `dst`, `duration`,
//! `billsec`), in the same walk of the tape.
//!
//! Owns validation and field extraction only; the body itself is stored as received
//! (`event.rs`). simd-json unescapes strings in place, so the body is first copied into a
//! reused, padded scratch buffer: the stored bytes are never touched, and after the first
//! request of a connection no allocation happens here for bodies up to the largest seen.

use simd_json::{Buffers, INPUT_PADDING, Node, StaticNode, Tape};

/// Deepest nesting accepted. didlogic's payloads are flat (depth 1). simd-json's parser
/// recurses per level; an unbounded depth overflows a coroutine stack at roughly 100 levels, so
/// the limit is far below that and far above any real payload.
pub const MAX_JSON_DEPTH: usize = 32;

/// The highest `max_json_depth` the configuration accepts; bodies read back from the store
/// (check, migration) are decoded with it, as they may have been accepted under any setting.
pub const MAX_JSON_DEPTH_LIMIT: usize = 64;

/// What the gateway takes from a valid JSON object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonFields {
    /// The top-level `event` string, if present and a string.
    pub event: Option<String>,
    /// The top-level `callid` string (or integer, as its decimal text), if present.
    pub callid: Option<String>,
    /// The top-level fields the call index reads.
    pub call: CallFields,
}

/// A top-level scalar as the call index reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A string, unescaped.
    Text(String),
    /// An integer.
    Int(i128),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// `true`, `false`, `null`, an object or an array.
    Other,
}

/// The call index's fields of a JSON event, as found (a later duplicate key wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallFields {
    /// `calldate`.
    pub calldate: Option<Scalar>,
    /// `direction`.
    pub direction: Option<Scalar>,
    /// `disposition`.
    pub disposition: Option<Scalar>,
    /// `src`.
    pub src: Option<Scalar>,
    /// `dst`.
    pub dst: Option<Scalar>,
    /// `duration`.
    pub duration: Option<Scalar>,
    /// `billsec`.
    pub billsec: Option<Scalar>,
}

impl CallFields {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Scalar>> {
        Some(match key {
            "calldate" => &mut self.calldate,
            "direction" => &mut self.direction,
            "disposition" => &mut self.disposition,
            "src" => &mut self.src,
            "dst" => &mut self.dst,
            "duration" => &mut self.duration,
            "billsec" => &mut self.billsec,
            _ => return None,
        })
    }
}

fn scalar_of_node(node: &Node<'_>) -> Scalar {
    match node {
        Node::String(s) => Scalar::Text((*s).to_string()),
        Node::Static(StaticNode::I64(n)) => Scalar::Int(i128::from(*n)),
        Node::Static(StaticNode::U64(n)) => Scalar::Int(i128::from(*n)),
        Node::Static(StaticNode::F64(f)) => Scalar::Float(*f),
        _ => Scalar::Other,
    }
}

fn scalar_of_value(v: &serde_json::Value) -> Scalar {
    match v {
        serde_json::Value::String(s) => Scalar::Text(s.clone()),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Scalar::Int(i128::from(i)),
            (_, Some(u), _) => Scalar::Int(i128::from(u)),
            (_, _, Some(f)) if f.is_finite() => Scalar::Float(f),
            _ => Scalar::Other,
        },
        _ => Scalar::Other,
    }
}

/// Why a body is not a JSON event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not valid JSON (the parser's message, with position).
    Invalid(String),
    /// Valid JSON, but not an object.
    NotAnObject,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid JSON: {m}"),
            Error::NotAnObject => f.write_str("JSON is not an object"),
        }
    }
}

/// The UTF-8 byte order mark, which RFC 8259 §8.1 lets a parser ignore.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `body` without a leading UTF-8 byte order mark.
pub fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(UTF8_BOM).unwrap_or(body)
}

/// Reusable parser state; one per connection.
pub struct JsonDecoder {
    max_depth: usize,
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Vec<Node<'static>>,
}

impl Default for JsonDecoder {
    fn default() -> Self {
        Self::new(MAX_JSON_DEPTH)
    }
}

impl JsonDecoder {
    /// A decoder refusing nesting deeper than `max_depth`.
    pub fn new(max_depth: usize) -> Self {
        JsonDecoder {
            max_depth,
            scratch: Vec::new(),
            // Sized for didlogic's payloads (under 1 KiB); they grow for larger bodies.
            buffers: Buffers::with_max_depth(512, max_depth),
            tape: Vec::new(),
        }
    }

    /// Validates `body` (after an optional UTF-8 byte order mark) as a JSON object and extracts
    /// [`JsonFields`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything serde_json would also refuse, [`Error::NotAnObject`] for
    /// valid JSON that is an array, string, number, `true`, `false` or `null`.
    pub fn decode(&mut self, body: &[u8]) -> Result<JsonFields, Error> {
        let body = strip_bom(body);
        self.scratch.clear();
        self.scratch.extend_from_slice(body);
        self.scratch.resize(body.len() + INPUT_PADDING, 0);
        let mut tape = Tape(std::mem::take(&mut self.tape));
        let result = simd_json::fill_tape_padded(
            &mut self.scratch,
            body.len(),
            &mut self.buffers,
            &mut tape,
        );
        let result = match result {
            Ok(()) => fields(&tape.0),
            Err(e) => second_opinion(body, e, self.max_depth),
        };
        self.tape = tape.reset().0;
        result
    }
}

/// simd-json refuses a few documents RFC 8259 allows (numbers beyond f64's range, such as
/// `1e400`). Before a body is called invalid, serde_json (the reference) gets a say, so what is
/// accepted does not depend on the fast path's limits. Only refused bodies pay for it; nesting
/// is bounded first, as serde_json's parser recurses per level too.
fn second_opinion(
    body: &[u8],
    simd_error: simd_json::Error,
    max_depth: usize,
) -> Result<JsonFields, Error> {
    if nesting_depth(body) > max_depth {
        return Err(Error::Invalid(simd_error.to_string()));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(JsonFields {
            call: {
                let mut call = CallFields::default();
                for (k, v) in &map {
                    if let Some(slot) = call.slot(k) {
                        *slot = Some(scalar_of_value(v));
                    }
                }
                call
            },
            event: map
                .get("event")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            callid: map.get("callid").and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(|i| i.to_string())
                    .or_else(|| n.as_u64().map(|u| u.to_string())),
                _ => None,
            }),
        }),
        Ok(_) => Err(Error::NotAnObject),
        Err(_) => Err(Error::Invalid(simd_error.to_string())),
    }
}

/// Follows JSON string literals byte by byte (RFC 8259 §7: a string runs from `"` to the next
/// `"` not escaped by `\\`), so callers can act on the bytes outside strings. Used to bound
/// nesting before a recursive parse and, by the reader, to drop insignificant whitespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct StringState {
    in_string: bool,
    escaped: bool,
}

impl StringState {
    /// Feeds one byte; returns whether it is outside any string literal (the quotes belong to
    /// the string).
    pub fn step(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            false
        } else if b == b'"' {
            self.in_string = true;
            false
        } else {
            true
        }
    }

    /// Whether the bytes fed so far end inside a string literal.
    pub fn in_string(&self) -> bool {
        self.in_string
    }
}

/// The deepest nesting of `[`/`{` outside strings; garbage may give any number, which only
/// matters for refusing it.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut state, mut depth, mut max) = (StringState::default(), 0usize, 0usize);
    for &b in bytes {
        if !state.step(b) {
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Walks the top level of an object tape; later duplicates of a key win, as in serde_json.
fn fields(nodes: &[Node<'_>]) -> Result<JsonFields, Error> {
    let Some(Node::Object { len, .. }) = nodes.first() else {
        return Err(Error::NotAnObject);
    };
    let mut out = JsonFields::default();
    let mut i = 1;
    for _ in 0..*len {
        let key = match nodes.get(i) {
            Some(Node::String(k)) => *k,
            _ => break,
        };
        let Some(value) = nodes.get(i + 1) else { break };
        match (key, value) {
            ("event", Node::String(s)) => out.event = Some((*s).to_string()),
            ("event", _) => out.event = None,
            ("callid", Node::String(s)) => out.callid = Some((*s).to_string()),
            ("callid", Node::Static(StaticNode::I64(n))) => out.callid = Some(n.to_string()),
            ("callid", Node::Static(StaticNode::U64(n))) => out.callid = Some(n.to_string()),
            ("callid", _) => out.callid = None,
            (k, v) => {
                if let Some(slot) = out.call.slot(k) {
                    *slot = Some(scalar_of_node(v));
                }
            }
        }
        i += 1 + node_span(value);
    }
    Ok(out)
}

/// How many tape nodes a value occupies, itself included.
fn node_span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDR: &str = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"82xg86dv6jhl0p8xu0l3","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}"#;

    /// Regression: a body behind a UTF-8 byte order mark was refused ("InternalError at
    /// character 0") and quarantined, its callid lost.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut d = JsonDecoder::default();
        let got = d
            .decode(b"\xEF\xBB\xBF{\"event\":\"cdr\",\"callid\":\"b1\"}")
            .unwrap();
        assert_eq!(
            (got.event.as_deref(), got.callid.as_deref()),
            (Some("cdr"), Some("b1"))
        );
        assert_eq!(d.decode(b"\xEF\xBB\xBF4"), Err(Error::NotAnObject));
        assert!(matches!(d.decode(b"\xEF\xBB"), Err(Error::Invalid(_))));
    }

    #[test]
    fn extracts_event_and_callid() {
        let mut d = JsonDecoder::default();
        let f = d.decode(CDR.as_bytes()).unwrap();
        assert_eq!(f.event.as_deref(), Some("cdr"));
        assert_eq!(f.callid.as_deref(), Some("82xg86dv6jhl0p8xu0l3"));
    }

    #[test]
    fn table() {
        /// `Ok((event, callid))`, or `Err(())` for a refused body.
        type Want = Result<(Option<&'static str>, Option<&'static str>), ()>;
        let cases: &[(&str, Want)] = &[
            (r#"{}"#, Ok((None, None))),
            (
                r#"{"event":"recording","callid":7}"#,
                Ok((Some("recording"), Some("7"))),
            ),
            (
                r#"{"nested":{"event":"x","callid":"y"},"event":"z"}"#,
                Ok((Some("z"), None)),
            ),
            (r#"{"a":[1,{"b":[]}],"callid":"c"}"#, Ok((None, Some("c")))),
            (r#"{"event":"a","event":"b"}"#, Ok((Some("b"), None))),
            (r#"{"event":1}"#, Ok((None, None))),
            (r#"{"event":"caf\u00e9"}"#, Ok((Some("café"), None))),
            // Beyond f64: refused by simd-json, valid JSON all the same.
            (r#"{"n":4e+6584,"callid":"big"}"#, Ok((None, Some("big")))),
            (r#"[1e999]"#, Err(())),
            (" \n{\"event\" : \"cdr\"}\n", Ok((Some("cdr"), None))),
            (r#"{"a":1"#, Err(())),
            (r#"{"a":1} x"#, Err(())),
            (
                r#"// c
{}"#,
                Err(()),
            ),
            (r#"{"a":tru}"#, Err(())),
            ("", Err(())),
        ];
        let mut d = JsonDecoder::default();
        for (input, want) in cases {
            let got = d
                .decode(input.as_bytes())
                .map(|f| (f.event, f.callid))
                .map_err(|_| ());
            let want = want
                .as_ref()
                .map(|(e, c)| (e.map(str::to_string), c.map(str::to_string)))
                .map_err(|_| ());
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn non_objects_are_refused_as_such() {
        let mut d = JsonDecoder::default();
        for input in ["[]", "\"cdr\"", "1", "true", "null"] {
            assert_eq!(
                d.decode(input.as_bytes()),
                Err(Error::NotAnObject),
                "{input}"
            );
        }
    }

    #[test]
    fn deep_nesting_fails_cleanly() {
        let mut d = JsonDecoder::default();
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert!(matches!(d.decode(deep.as_bytes()), Err(Error::Invalid(_))));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert!(d.decode(ok.as_bytes()).is_ok());
    }

    #[test]
    fn body_is_not_modified() {
        let body = br#"{"event":"a\nb"}"#.to_vec();
        let copy = body.clone();
        JsonDecoder::default().decode(&body).unwrap();
        assert_eq!(body, copy);
    }
}
