//! Property: framing a byte stream with `Framer::advance`, the calls a connection makes between
//! its reads, gives the same requests (and the same final error) however the stream is split
//! into reads; and nothing framed exceeds the limits.
#![no_main]

use arbitrary::Arbitrary;
use didgate::ingest::http::{Limits, Requests};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Small limits reach the N / N+1 edges quickly; defaults check the production values.
    small_limits: bool,
    /// Lengths of the successive reads.
    splits: Vec<u16>,
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let limits = if input.small_limits {
        Limits { max_head_bytes: 256, max_headers: 4, max_body_bytes: 64 }
    } else {
        Limits { max_head_bytes: 16 * 1024, max_headers: 128, max_body_bytes: 64 * 1024 }
    };
    let data = &input.data;
    let mut whole = Vec::new();
    Requests::new(limits).push(data, &mut whole);

    let mut framer = Requests::new(limits);
    let mut split = Vec::new();
    let mut pos = 0;
    for s in &input.splits {
        let n = usize::from(*s) % (data.len() - pos + 1);
        framer.push(&data[pos..pos + n], &mut split);
        pos += n;
    }
    framer.push(&data[pos..], &mut split);
    assert_eq!(whole, split, "split reads changed the framing");

    for r in whole.iter().flatten() {
        assert!(r.head.len <= limits.max_head_bytes);
        assert!(r.body.len() <= limits.max_body_bytes);
    }
    assert!(whole.iter().filter(|r| r.is_err()).count() <= 1);
});
