//! The writer's commit throughput on a real LMDB in a temp directory, at batch sizes 1, 8, 64
//! and 512 events per write transaction (each commit is one fsync, as in production). Each
//! event goes through what the writer does: a dedup table lookup, the append with its digest,
//! and the table insert; complete call blocks are written inside the commits that finish them.
//!
//! `call_index_chunk` is the other transaction the writer commits while ingest runs: filing a
//! chunk of committed events in the call index and rollups, from the facts the connections
//! read (once a chunk's worth waits, and whenever ingest is idle).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use didgate::event::{BodyFormat, Event};
use didgate::store::{KnownFacts, Store, body_hash};
use didgate::writer::dedup::Recent;

fn event(i: u64) -> Event {
    let callid = format!("bench-{i}");
    Event {
        kind: "cdr".into(),
        format: BodyFormat::Json,
        peer: Some("192.0.2.10:40000".parse().unwrap()),
        content_type: b"application/json".to_vec(),
        body: format!(r#"{{"calldate":"2026-05-12T05:17:58Z","callid":"{callid}","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}}"#).into_bytes(),
        callid: Some(callid),
        call: None,
    }
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 4 << 30).unwrap();
    let mut n = 0u64;
    let mut recent = Recent::new(didgate::writer::DEFAULT_DEDUP_MEMORY_EVENTS);
    let mut g = c.benchmark_group("commit_batch");
    g.sample_size(20);
    for batch in [1u64, 8, 64, 512] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    // Fresh bodies every iteration, as in production (made outside the timing).
                    n += 1;
                    let events: Vec<Event> = (0..batch).map(|i| event(n * 1000 + i)).collect();
                    (n, events)
                },
                |(n, events)| {
                    let mut txn = store.begin_write(n as i64).unwrap();
                    for ev in &events {
                        let hash = body_hash(&ev.body);
                        for seq in recent.candidates(hash) {
                            let _ = txn.is_same_event(seq, ev, 0).unwrap();
                        }
                        let seq = txn.append_event(ev, hash).unwrap();
                        recent.insert(hash, seq);
                    }
                    txn.commit().unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let chunk = didgate::writer::CALL_INDEX_CHUNK;
    let mut g = c.benchmark_group("call_index_chunk");
    g.sample_size(20);
    g.throughput(Throughput::Elements(chunk as u64));
    g.bench_function(BenchmarkId::from_parameter(chunk), |b| {
        b.iter_batched(
            || {
                // A chunk of committed events (outside the timing), as the writer has them.
                n += 1;
                let mut txn = store.begin_write(n as i64).unwrap();
                let mut known = std::collections::VecDeque::new();
                for i in 0..chunk as u64 {
                    // With the facts a connection reads, which filing uses and frees.
                    let ev = event(n * 10_000 + i).with_call_facts();
                    let seq = txn.append_event(&ev, body_hash(&ev.body)).unwrap();
                    known.push_back(KnownFacts {
                        seq,
                        stored_at_ms: n as i64,
                        facts: ev.call,
                    });
                }
                txn.commit().unwrap();
                (n, known)
            },
            |(n, mut known)| {
                let mut txn = store.begin_write(n as i64).unwrap();
                txn.index_calls(&mut known, usize::MAX).unwrap();
                txn.commit().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
