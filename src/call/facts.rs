//! [`Facts`]: what the call index keeps about one CDR, recording or SMS, taken from its body,
//! and the bytes of an index entry.
//!
//! Pure: a body in, facts out. Ingest builds them on the connection's coroutine from the
//! fields its JSON decoder already found in the same pass over the body (so the writer only
//! copies them into its transaction); the store's migration and `check` decode stored bodies
//! with that same decoder ([`Facts::of`]), so the index is always what the bodies say. Every text field is attacker-controlled and kept only as data, cut to
//! [`MAX_FIELD_BYTES`].

use std::borrow::Cow;

use super::calldate;
use crate::event::{BodyFormat, truncate_str};
use crate::ingest::decode::form::Form;
use crate::ingest::decode::json::{CallFields, JsonDecoder, MAX_JSON_DEPTH_LIMIT, Scalar};

/// Longest text field kept in the index (direction, disposition, numbers, callid, a raw
/// calldate), in bytes. Real values are a few dozen bytes at most; longer ones are cut at a
/// character boundary, and the event itself keeps the whole value.
pub const MAX_FIELD_BYTES: usize = 128;

/// Which webhook the facts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A call detail record: one call.
    Cdr,
    /// A recording notification of a call.
    Recording,
    /// An inbound SMS.
    Sms,
}

impl Kind {
    /// The kind named `kind` (the stored event's kind), if it is one the call index keeps.
    pub fn of_event(kind: &str) -> Option<Kind> {
        match kind {
            "cdr" => Some(Kind::Cdr),
            "recording" => Some(Kind::Recording),
            "sms" => Some(Kind::Sms),
            _ => None,
        }
    }

    /// The event kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cdr => "cdr",
            Kind::Recording => "recording",
            Kind::Sms => "sms",
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Cdr => 0,
            Kind::Recording => 1,
            Kind::Sms => 2,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        match c {
            0 => Some(Kind::Cdr),
            1 => Some(Kind::Recording),
            2 => Some(Kind::Sms),
            _ => None,
        }
    }
}

/// The call-level facts of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Which webhook.
    pub kind: Kind,
    /// The call's own time (`calldate`; `received_at` for an SMS), ms since the epoch, when
    /// it is in an accepted format ([`calldate`]).
    pub at_ms: Option<i64>,
    /// The time as sent, kept when it did not parse (empty when it did, or was absent).
    pub raw_time: String,
    /// `direction` as sent (`inbound` for an SMS).
    pub direction: String,
    /// `disposition` as sent (empty for recordings and SMS).
    pub disposition: String,
    /// `src`: the caller, or the SMS sender.
    pub src: String,
    /// `dst`: the number called, or the DID the SMS was sent to.
    pub dst: String,
    /// `duration` in seconds, ringing included (0 when absent).
    pub duration: u32,
    /// `billsec` in seconds, when the CDR carries it.
    pub billsec: Option<u32>,
    /// `callid` (empty when absent).
    pub callid: String,
}

impl Facts {
    /// The facts of a stored or incoming event; `None` for kinds the call index does not
    /// keep and for bodies that are not a JSON object or a form.
    pub fn of(kind: &str, format: BodyFormat, body: &[u8]) -> Option<Facts> {
        let kind = Kind::of_event(kind)?;
        match format {
            BodyFormat::Json => of_json(kind, body),
            BodyFormat::Form if kind == Kind::Sms => Some(of_form(body)),
            _ => None,
        }
    }

    /// Seconds billed: `billsec`, or, for a CDR that does not carry it (didlogic's own
    /// example), `duration` when the call was answered and 0 otherwise.
    pub fn billed_seconds(&self) -> u32 {
        match self.billsec {
            Some(b) => b,
            None if self.is_answered_disposition() => self.duration,
            None => 0,
        }
    }

    fn is_answered_disposition(&self) -> bool {
        self.disposition.eq_ignore_ascii_case("ANSWERED")
    }

    /// Whether the call was answered: its disposition is `ANSWERED` (any case), or it has no
    /// disposition and billed seconds.
    pub fn answered(&self) -> bool {
        self.kind == Kind::Cdr
            && (self.is_answered_disposition()
                || (self.disposition.is_empty() && self.billsec.is_some_and(|b| b > 0)))
    }

    /// The time the index files it under: the call's own time, else the time it was stored.
    pub fn index_ms(&self, stored_at_ms: i64) -> i64 {
        self.at_ms.unwrap_or(stored_at_ms)
    }

    /// Appends the index entry's value.
    ///
    /// Layout: version 1 u8; kind u8; flags u8 (bit 0: `at_ms` parsed, bit 1: `billsec`
    /// present); duration u32 BE; billsec u32 BE; then six strings, each u8 length and bytes:
    /// direction, disposition, src, dst, callid, raw time.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(ENTRY_VERSION);
        out.push(self.kind.code());
        out.push(u8::from(self.at_ms.is_some()) | (u8::from(self.billsec.is_some()) << 1));
        out.extend_from_slice(&self.duration.to_be_bytes());
        out.extend_from_slice(&self.billsec.unwrap_or(0).to_be_bytes());
        for s in [
            &self.direction,
            &self.disposition,
            &self.src,
            &self.dst,
            &self.callid,
            &self.raw_time,
        ] {
            // Cut at ingest to MAX_FIELD_BYTES (< 256); cut again so a longer one can never
            // write a wrong length.
            let s = truncate_str(s, u8::MAX as usize);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// Reads an index entry filed under `at_ms` (the key's time).
    ///
    /// # Errors
    /// A description of what is wrong, for the store's `Corrupt` error.
    pub fn decode(at_ms: i64, v: &[u8]) -> Result<Facts, String> {
        let mut r = v;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err(format!("a call entry of {} bytes is cut short", v.len()));
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        let version = take(1)?[0];
        if version != ENTRY_VERSION {
            return Err(format!("a call entry of unknown version {version}"));
        }
        let code = take(1)?[0];
        let kind = Kind::from_code(code).ok_or_else(|| format!("unknown call kind {code}"))?;
        let flags = take(1)?[0];
        let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let duration = u32_at(take(4)?);
        let billsec = u32_at(take(4)?);
        let mut text = || -> Result<String, String> {
            let len = take(1)?[0] as usize;
            String::from_utf8(take(len)?.to_vec())
                .map_err(|_| "a call entry's text is not UTF-8".into())
        };
        let facts = Facts {
            kind,
            direction: text()?,
            disposition: text()?,
            src: text()?,
            dst: text()?,
            callid: text()?,
            raw_time: text()?,
            at_ms: (flags & 1 != 0).then_some(at_ms),
            duration,
            billsec: (flags & 2 != 0).then_some(billsec),
        };
        Ok(facts)
    }
}

/// Version byte of an index entry.
const ENTRY_VERSION: u8 = 1;

/// A field value as text: a string as sent, a number in its decimal form; `None` for other
/// JSON values.
fn text(v: &Scalar) -> Option<Cow<'_, str>> {
    match v {
        Scalar::Text(s) => Some(Cow::Borrowed(s.as_str())),
        Scalar::Int(n) => Some(Cow::Owned(n.to_string())),
        Scalar::Float(f) => Some(Cow::Owned(f.to_string())),
        Scalar::Other => None,
    }
}

/// Whole non-negative seconds from a number or a numeric string (`9`, `"9"`, `9.0`); values
/// above u32 are capped, anything else is `None`.
fn seconds(v: &Scalar) -> Option<u32> {
    let from_f64 =
        |f: f64| (f.is_finite() && f >= 0.0).then(|| f.round().min(f64::from(u32::MAX)) as u32);
    match v {
        Scalar::Int(n) if *n >= 0 => Some(u32::try_from(*n).unwrap_or(u32::MAX)),
        Scalar::Int(_) | Scalar::Other => None,
        Scalar::Float(f) => from_f64(*f),
        Scalar::Text(t) => {
            let t = t.trim();
            match t.parse::<u64>() {
                Ok(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(_) => from_f64(t.parse().ok()?),
            }
        }
    }
}

fn kept(s: &str) -> String {
    truncate_str(s, MAX_FIELD_BYTES).to_string()
}

thread_local! {
    /// The decoder of bodies read back from the store (check, migration, tools): the same
    /// code ingest runs, so an entry rebuilt from its body is the entry ingest wrote.
    static DECODER: std::cell::RefCell<JsonDecoder> =
        std::cell::RefCell::new(JsonDecoder::new(MAX_JSON_DEPTH_LIMIT));
}

fn of_json(kind: Kind, body: &[u8]) -> Option<Facts> {
    let fields = DECODER.with(|d| d.borrow_mut().decode(body)).ok()?;
    Some(Facts::from_json(
        kind,
        &fields.call,
        fields.callid.as_deref(),
    ))
}

impl Facts {
    /// The facts of a JSON event from the fields its decoding found (ingest's path: no
    /// second parse of the body).
    pub fn from_json(kind: Kind, call: &CallFields, callid: Option<&str>) -> Facts {
        let txt = |v: &Option<Scalar>| {
            v.as_ref()
                .and_then(text)
                .map(|s| kept(&s))
                .unwrap_or_default()
        };
        let (at_ms, raw_time) = match &call.calldate {
            None => (None, String::new()),
            Some(v) => match text(v) {
                Some(s) => match calldate::parse(&s) {
                    Some(ms) => (Some(ms), String::new()),
                    None => (None, kept(&s)),
                },
                None => (None, "(not a string)".to_string()),
            },
        };
        Facts {
            kind,
            at_ms,
            raw_time,
            direction: txt(&call.direction),
            disposition: txt(&call.disposition),
            src: txt(&call.src),
            dst: txt(&call.dst),
            duration: call.duration.as_ref().and_then(seconds).unwrap_or(0),
            billsec: call.billsec.as_ref().and_then(seconds),
            callid: callid.map(kept).unwrap_or_default(),
        }
    }
}

/// The facts of an SMS form (ingest's path as well: a form is decoded whole only here).
pub fn of_form(body: &[u8]) -> Facts {
    let form = Form::decode(body);
    let mut facts = Facts {
        kind: Kind::Sms,
        at_ms: None,
        raw_time: String::new(),
        direction: "inbound".to_string(),
        disposition: String::new(),
        src: String::new(),
        dst: String::new(),
        duration: 0,
        billsec: None,
        callid: String::new(),
    };
    let mut received = None;
    for (name, value) in form.pairs() {
        match name {
            "src" => facts.src = kept(value.trim()),
            "dst" => facts.dst = kept(value.trim()),
            "received_at" => received = Some(value),
            _ => {}
        }
    }
    if let Some(r) = received {
        match calldate::parse(r) {
            Some(ms) => facts.at_ms = Some(ms),
            None => facts.raw_time = kept(r),
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDR: &str = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"82xg86dv6jhl0p8xu0l3","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"event":"cdr","src":"441273004315","user_id":76141}"#;

    #[test]
    fn the_seed_cdr_is_read_and_bills_its_duration_without_billsec() {
        let f = Facts::of("cdr", BodyFormat::Json, CDR.as_bytes()).unwrap();
        assert_eq!(f.at_ms, Some(1_778_563_078_000));
        assert_eq!(f.callid, "82xg86dv6jhl0p8xu0l3");
        assert_eq!(
            (f.src.as_str(), f.dst.as_str()),
            ("441273004315", "448081697031")
        );
        assert_eq!(f.billsec, None);
        assert_eq!(f.billed_seconds(), 9);
        assert!(f.answered());
    }

    #[test]
    fn numbers_as_strings_duplicates_and_odd_dates_are_handled() {
        let body = br#"{"callid":1,"billsec":"7","duration":8.6,"billsec":"12","calldate":"yesterday","disposition":"BUSY"}"#;
        let f = Facts::of("cdr", BodyFormat::Json, body).unwrap();
        assert_eq!(f.callid, "1");
        assert_eq!(f.billsec, Some(12));
        assert_eq!(f.duration, 9);
        assert_eq!(f.at_ms, None);
        assert_eq!(f.raw_time, "yesterday");
        assert!(!f.answered());
    }

    #[test]
    fn an_sms_form_gives_sender_did_and_received_at() {
        let body = b"src=15551234567&dst=448001234567&message=Hello+world+&received_at=2026-05-13+12%3A45%3A40+UTC";
        let f = Facts::of("sms", BodyFormat::Form, body).unwrap();
        assert_eq!(f.kind, Kind::Sms);
        assert_eq!(f.src, "15551234567");
        assert_eq!(f.at_ms, Some(1_778_676_340_000));
    }

    #[test]
    fn entries_round_trip_and_long_fields_are_cut() {
        let mut f = Facts::of("cdr", BodyFormat::Json, CDR.as_bytes()).unwrap();
        f.src = "9".repeat(300);
        f.src = kept(&f.src);
        f.billsec = Some(0);
        let mut v = Vec::new();
        f.encode(&mut v);
        assert_eq!(Facts::decode(f.at_ms.unwrap(), &v).unwrap(), f);
        assert!(Facts::decode(0, &v[..v.len() - 1]).is_err());
    }

    #[test]
    fn a_body_accepted_under_a_deeper_configured_limit_is_read_back() {
        // max_json_depth may be set up to 64; check and the migration must read such a body.
        let deep = format!(
            r#"{{"callid":"d","calldate":"2026-05-12T05:17:58Z","x":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let f = Facts::of("cdr", BodyFormat::Json, deep.as_bytes()).unwrap();
        assert_eq!(f.callid, "d");
    }

    #[test]
    fn other_kinds_and_bodies_have_no_facts() {
        assert!(Facts::of("status", BodyFormat::Json, b"{}").is_none());
        assert!(Facts::of("cdr", BodyFormat::Json, b"[1]").is_none());
        assert!(Facts::of("cdr", BodyFormat::Undecoded, b"x").is_none());
    }
}
