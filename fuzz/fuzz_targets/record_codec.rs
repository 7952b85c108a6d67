//! Properties: decode(encode(record)) == record for any record the gateway can build, and any
//! byte string either fails to decode or re-encodes to itself (the format is canonical).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use didgate::event::{decode_record, BodyFormat, Record};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    format: u8,
    stored_at_ms: i64,
    peer: Option<(bool, [u8; 16], u16)>,
    kind: String,
    content_type: Vec<u8>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Ok(rec) = decode_record(&input.raw) {
        let mut again = Vec::new();
        rec.encode(&mut again);
        assert_eq!(again, input.raw);
    }
    let kind = didgate::event::truncate_str(&input.kind, 255);
    if kind.is_empty() || input.content_type.len() > usize::from(u16::MAX) {
        return;
    }
    let format = match input.format % 3 {
        0 => BodyFormat::Undecoded,
        1 => BodyFormat::Json,
        _ => BodyFormat::Form,
    };
    let peer = input.peer.map(|(v6, b, port)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        SocketAddr::new(ip, port)
    });
    let rec = Record {
        format,
        stored_at_ms: input.stored_at_ms,
        peer,
        kind,
        content_type: &input.content_type,
        body: &input.body,
    };
    let mut bytes = Vec::new();
    rec.encode(&mut bytes);
    assert_eq!(bytes.len(), rec.encoded_len());
    assert_eq!(decode_record(&bytes), Ok(rec));
});
