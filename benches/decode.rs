//! Body decoding: ours against the usual way, in the same group.
//!
//! - CDR JSON: `JsonDecoder::decode` (simd-json, validate + extract `event`/`callid`) vs
//!   `serde_json::from_slice` into an equivalent struct (what a hand-written receiver does).
//! - SMS form, owned: `form_urlencoded::parse` collected into `Vec<(String, String)>`, vs ours
//!   as the reader uses it (`Form::decode`: every field decoded and owned, in one buffer), and
//!   ours collected into the very same `Vec<(String, String)>`.
//! - SMS form, on ingest: the gateway only validates (`has_named_field`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The allocator the gateway runs with, so allocation costs are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use didgate::ingest::decode::{JsonDecoder, form};
use serde::Deserialize;

const CDR: &[u8] = br#"{"calldate":"2026-05-12T05:17:58Z","callid":"82xg86dv6jhl0p8xu0l3","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}"#;
const SMS: &[u8] = b"src=15551234567&dst=448001234567&message=Hello+world%2C+your+code+is+123456.+Reply+STOP+to+opt+out+&received_at=2026-05-13+12%3A45%3A40+UTC";

#[derive(Deserialize)]
#[allow(dead_code)]
struct Cdr {
    calldate: String,
    callid: String,
    direction: String,
    disposition: String,
    dst: String,
    duration: u64,
    billsec: u64,
    event: String,
    src: String,
    user_id: u64,
}

fn json(c: &mut Criterion) {
    let mut g = c.benchmark_group("cdr_json");
    g.throughput(Throughput::Bytes(CDR.len() as u64));
    let mut ours = JsonDecoder::default();
    g.bench_function("didgate_simd_json", |b| {
        b.iter(|| ours.decode(black_box(CDR)).map(|f| f.callid))
    });
    g.bench_function("serde_json_struct", |b| {
        b.iter(|| serde_json::from_slice::<Cdr>(black_box(CDR)).map(|c| c.callid))
    });
    g.finish();
}

fn sms(c: &mut Criterion) {
    let mut g = c.benchmark_group("sms_form");
    g.throughput(Throughput::Bytes(SMS.len() as u64));
    g.bench_function("didgate_form", |b| {
        b.iter(|| form::Form::decode(black_box(SMS)))
    });
    g.bench_function("didgate_owned_pairs", |b| {
        b.iter(|| {
            form::Form::decode(black_box(SMS))
                .pairs()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect::<Vec<(String, String)>>()
        })
    });
    g.bench_function("form_urlencoded_owned", |b| {
        b.iter(|| {
            form_urlencoded::parse(black_box(SMS))
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect::<Vec<(String, String)>>()
        })
    });
    g.bench_function("didgate_validate", |b| {
        b.iter(|| form::has_named_field(black_box(SMS)))
    });
    g.finish();
}

criterion_group!(benches, json, sms);
criterion_main!(benches);
