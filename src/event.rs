//! The event as the gateway keeps it, and its record encoding for LMDB.
//!
//! This file owns the byte layout of one stored record (documented for outside readers in
//! `docs/storage.md`, format version 1). It does not own keys, databases or transactions
//! (`store/`), nor how a body was judged valid (`ingest/decode/`).
//!
//! The record keeps the **exact request body bytes**: everything a reader shows is derived from
//! them, so fields didlogic adds later survive untouched.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       1     body format: 1 = JSON object, 2 = urlencoded form, 0 = undecoded (quarantine)
//! 2       8     stored_at, milliseconds since the Unix epoch, i64 big-endian
//! 10      1     peer family: 0 none, 4 IPv4, 6 IPv6
//! 11      0/6/18  peer address and port (4 or 16 address bytes, then u16 big-endian port)
//! ..      1     kind length k (1..=255)
//! ..      k     kind, UTF-8
//! ..      2     content-type length c, u16 big-endian
//! ..      c     content-type header value as received (may be empty)
//! ..      rest  body, exactly as received (after de-chunking)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version byte written first in every record; a reader refuses any other.
pub const RECORD_VERSION: u8 = 1;

/// Longest kind name stored. didlogic's kinds are short words (`cdr`, `recording`, `sms`); a
/// JSON `event` value longer than this is not used as the kind (the route's name is), but the
/// body that carries it is kept whole.
pub const MAX_KIND_BYTES: usize = 64;

/// Longest Content-Type kept in a record; longer values are cut (the body is never cut).
pub const MAX_CONTENT_TYPE_BYTES: usize = 1024;

/// The three webhooks didlogic sends: the endpoints it is given, and the kinds of event they
/// carry. The one table of kind names: routing, metrics labels and the reader's columns use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Call detail records: JSON, sent when a call ends.
    Cdr,
    /// Recording notices: JSON with a pre-signed URL to the call's mp3.
    Recording,
    /// Inbound SMS: an urlencoded form.
    Sms,
}

impl Hook {
    /// Every hook, in the order the start-up line prints them.
    pub const ALL: [Hook; 3] = [Hook::Cdr, Hook::Recording, Hook::Sms];

    /// The last path segment, also the default kind of a body posted here.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Cdr => "cdr",
            Hook::Recording => "recording",
            Hook::Sms => "sms",
        }
    }

    /// The hook of that name (a path segment, or a stored kind).
    pub fn from_name(s: &[u8]) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name().as_bytes() == s)
    }
}

/// How the body was decoded when it was accepted; readers render the payload from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// Stored verbatim without a successful decode (quarantine records).
    Undecoded = 0,
    /// A JSON object.
    Json = 1,
    /// An `application/x-www-form-urlencoded` body.
    Form = 2,
}

impl BodyFormat {
    fn from_byte(b: u8) -> Option<BodyFormat> {
        match b {
            0 => Some(BodyFormat::Undecoded),
            1 => Some(BodyFormat::Json),
            2 => Some(BodyFormat::Form),
            _ => None,
        }
    }
}

/// One received webhook, owned, as the connection hands it to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `cdr`, `recording`, `sms`, or whatever a JSON body's `event` string said.
    pub kind: String,
    /// The decoder that accepted the body.
    pub format: BodyFormat,
    /// Who sent it; kept because didlogic publishes no source addresses and an operator
    /// investigating odd traffic needs to know.
    pub peer: Option<SocketAddr>,
    /// The Content-Type header as received (cut to [`MAX_CONTENT_TYPE_BYTES`]).
    pub content_type: Vec<u8>,
    /// The body bytes exactly as received.
    pub body: Vec<u8>,
    /// The JSON `callid`, when there is one, for the call index. Not stored in the record
    /// (it is derived from the body).
    pub callid: Option<String>,
    /// What the call index keeps about it (CDR, recording, SMS), taken from the body by the
    /// connection so the writer only copies it. Not stored in the record either.
    pub call: Option<crate::call::facts::Facts>,
}

/// A stored record borrowed from LMDB (or from a buffer), without copying the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// How the body was decoded when it was accepted.
    pub format: BodyFormat,
    /// When the batch was committed, milliseconds since the Unix epoch.
    pub stored_at_ms: i64,
    /// Who sent it, when known.
    pub peer: Option<SocketAddr>,
    /// The event's kind (its JSON `event`, else the hook's name).
    pub kind: &'a str,
    /// The Content-Type header as received, possibly empty.
    pub content_type: &'a [u8],
    /// The body exactly as received (after de-chunking).
    pub body: &'a [u8],
}

/// Why a stored value could not be read as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The value ends before a field it announces.
    Truncated,
    /// A version byte this build does not know (written by a newer didgate).
    UnknownVersion(u8),
    /// A body-format or peer-family byte outside the documented values.
    BadTag,
    /// The kind is empty or not UTF-8.
    BadKind,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Truncated => f.write_str("record is truncated"),
            Error::UnknownVersion(v) => write!(f, "record format version {v} is not supported"),
            Error::BadTag => f.write_str("record has an unknown format or address tag"),
            Error::BadKind => f.write_str("record kind is empty or not UTF-8"),
        }
    }
}

impl std::error::Error for Error {}

impl Event {
    /// The event with its call facts read from the body, as ingest reads them (tests and
    /// tools that build events by hand).
    pub fn with_call_facts(mut self) -> Event {
        self.call = crate::call::facts::Facts::of(&self.kind, self.format, &self.body);
        self
    }

    /// The record this event becomes once stored at `stored_at_ms`.
    pub fn as_record(&self, stored_at_ms: i64) -> Record<'_> {
        Record {
            format: self.format,
            stored_at_ms,
            peer: self.peer,
            kind: &self.kind,
            content_type: &self.content_type,
            body: &self.body,
        }
    }
}

impl Record<'_> {
    /// Exact size of [`Record::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let peer = match self.peer {
            None => 0,
            Some(SocketAddr::V4(_)) => 6,
            Some(SocketAddr::V6(_)) => 18,
        };
        11 + peer + 1 + self.kind.len() + 2 + self.content_type.len() + self.body.len()
    }

    /// Appends the encoded record to `out`.
    ///
    /// # Panics
    /// Never for events built by the gateway: the kind is at most [`MAX_KIND_BYTES`] and the
    /// content type at most [`MAX_CONTENT_TYPE_BYTES`] (both checked where the event is made);
    /// longer values are cut here rather than written with a wrong length.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(RECORD_VERSION);
        out.push(self.format as u8);
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        match self.peer {
            None => out.push(0),
            Some(SocketAddr::V4(a)) => {
                out.push(4);
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_be_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                out.push(6);
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        let kind = truncate_str(self.kind, 255);
        out.push(kind.len() as u8);
        out.extend_from_slice(kind.as_bytes());
        let ct = &self.content_type[..self.content_type.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        out.extend_from_slice(ct);
        out.extend_from_slice(self.body);
    }
}

/// Reads a record written by [`Record::encode`], borrowing from `bytes`.
///
/// # Errors
/// [`Error`] when the bytes are not a version-1 record.
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, Error> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(Error::UnknownVersion(version));
    }
    let format = BodyFormat::from_byte(r.u8()?).ok_or(Error::BadTag)?;
    let stored_at_ms = i64::from_be_bytes(r.array::<8>()?);
    let peer = match r.u8()? {
        0 => None,
        4 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes(r.array::<2>()?),
            ))
        }
        6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes(r.array::<2>()?),
            ))
        }
        _ => return Err(Error::BadTag),
    };
    let kind_len = usize::from(r.u8()?);
    let kind = std::str::from_utf8(r.take(kind_len)?).map_err(|_| Error::BadKind)?;
    if kind.is_empty() {
        return Err(Error::BadKind);
    }
    let ct_len = usize::from(u16::from_be_bytes(r.array::<2>()?));
    let content_type = r.take(ct_len)?;
    Ok(Record {
        format,
        stored_at_ms,
        peer,
        kind,
        content_type,
        body: r.0,
    })
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A cursor over a byte slice that fails with [`Error::Truncated`] instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(peer: Option<SocketAddr>, format: BodyFormat, body: &[u8]) -> Vec<u8> {
        let rec = Record {
            format,
            stored_at_ms: 1_778_563_078_123,
            peer,
            kind: "cdr",
            content_type: b"application/json",
            body,
        };
        let mut out = Vec::new();
        rec.encode(&mut out);
        assert_eq!(out.len(), rec.encoded_len());
        assert_eq!(decode_record(&out), Ok(rec));
        out
    }

    #[test]
    fn round_trips_every_peer_family_and_format() {
        let cases: &[(Option<SocketAddr>, BodyFormat, &[u8])] = &[
            (None, BodyFormat::Json, b"{}"),
            (
                Some("192.0.2.7:40123".parse().unwrap()),
                BodyFormat::Form,
                b"a=b",
            ),
            (
                Some("[2001:db8::1]:443".parse().unwrap()),
                BodyFormat::Undecoded,
                b"\xff\x00",
            ),
            (None, BodyFormat::Json, b""),
        ];
        for (peer, format, body) in cases {
            sample(*peer, *format, body);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample(
            Some("[2001:db8::1]:443".parse().unwrap()),
            BodyFormat::Json,
            b"",
        );
        for cut in 0..full.len() {
            assert!(decode_record(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_unknown_version_and_tags() {
        let mut v = sample(None, BodyFormat::Json, b"{}");
        v[0] = 2;
        assert_eq!(decode_record(&v), Err(Error::UnknownVersion(2)));
        let mut v = sample(None, BodyFormat::Json, b"{}");
        v[1] = 9;
        assert_eq!(decode_record(&v), Err(Error::BadTag));
        let mut v = sample(None, BodyFormat::Json, b"{}");
        v[10] = 5;
        assert_eq!(decode_record(&v), Err(Error::BadTag));
    }

    #[test]
    fn truncate_str_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("abc", 5), "abc");
    }
}
