//! The in-process pipeline without HTTP: decode -> bounded channel -> one writer thread ->
//! group commit (fsync) -> wake every waiter, in events per second. Producers are plain threads
//! here (the `Reply` parks a thread outside the coroutine runtime), 8 of them, each submitting
//! its share of a burst and waiting for every outcome.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use didgate::event::Event;
use didgate::event::Hook;
use didgate::ingest::decode::{self, Decoded, JsonDecoder};
use didgate::store::Store;
use didgate::writer::{self, Job, Outcome, Reply, Writer};

const PRODUCERS: usize = 8;
const PER_PRODUCER: usize = 64;

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 4 << 30).unwrap();
    // Production's writer settings, with a one-hour dedup window.
    let (writer, queue) = Writer::spawn(
        Arc::new(store),
        writer::Settings {
            dedup_window: Duration::from_secs(3600),
            ..writer::Settings::default()
        },
        Arc::default(),
        Arc::default(),
        Default::default(),
        writer::Background::default(),
    )
    .unwrap();
    let round = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(20);
    g.throughput(Throughput::Elements((PRODUCERS * PER_PRODUCER) as u64));
    g.bench_function("decode_commit_wake", |b| {
        b.iter(|| {
            let r = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let handles: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let queue = queue.clone();
                    std::thread::spawn(move || {
                        let mut json = JsonDecoder::default();
                        let replies: Vec<Arc<Reply>> = (0..PER_PRODUCER)
                            .map(|i| {
                                let body = format!(r#"{{"event":"cdr","callid":"{r}-{p}-{i}","duration":9,"billsec":7,"user_id":76141}}"#).into_bytes();
                                let Decoded::Event { kind, format, callid, call } =
                                    decode::decode_body(&mut json, Hook::Cdr, Some(b"application/json"), &body)
                                else {
                                    panic!("bench body must decode")
                                };
                                let reply = Reply::new();
                                let event = Event { kind, format, peer: None, content_type: b"application/json".to_vec(), body, callid, call: call.map(|c| *c) };
                                queue.submit(Job { event, quarantine: None, reply: reply.clone() }).unwrap();
                                reply
                            })
                            .collect();
                        for reply in replies {
                            assert!(matches!(reply.wait(), Some(Outcome::Stored(_))));
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        })
    });
    g.finish();
    writer.stop().unwrap();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
