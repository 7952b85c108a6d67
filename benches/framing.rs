//! Request framing: `http::parse_head` (httparse plus our RFC 9112 checks: Content-Length,
//! Transfer-Encoding, Connection, Expect, Host) against bare httparse on the same head, and a
//! whole request (head, then a 214-byte body) through `Framer::advance`, the calls a
//! connection makes.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The allocator the gateway runs with, so allocation costs are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use didgate::ingest::http::{Frame, Framer, Limits, parse_head};

/// A webhook request head as a typical HTTP client library sends it.
const HEAD: &[u8] = b"POST /hooks/74703ce1724f5341b10ba3be617aced7b7f73aa5adf20259/cdr HTTP/1.1\r\nHost: gw.example.com:8080\r\nUser-Agent: didlogic-webhooks/1.0\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nContent-Type: application/json\r\nContent-Length: 214\r\nConnection: keep-alive\r\n\r\n";

const LIMITS: Limits = Limits {
    max_head_bytes: 16 * 1024,
    max_headers: 128,
    max_body_bytes: 64 * 1024,
};

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_head");
    g.throughput(Throughput::Bytes(HEAD.len() as u64));
    g.bench_function("didgate_parse_head", |b| {
        b.iter(|| parse_head(black_box(HEAD), &LIMITS))
    });
    g.bench_function("bare_httparse", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(black_box(HEAD)).map(|s| s.is_complete())
        })
    });
    g.finish();

    let mut request = HEAD.to_vec();
    request.extend_from_slice(&[b'x'; 214]);
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(request.len() as u64));
    g.bench_function("didgate_framer_head_and_body", |b| {
        b.iter(|| {
            let mut framer = Framer::new(LIMITS);
            let input = black_box(request.as_slice());
            let (used, head) = framer.advance(input).unwrap();
            let (_, body) = framer.advance(&input[used..]).unwrap();
            matches!((head, body), (Some(Frame::Head(_)), Some(Frame::Body(_))))
        })
    });
    g.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
