//! The writer's commit throughput on a real LMDB in a temp directory, at batch sizes 1, 8, 64
//! and 512 events per write transaction (each commit is one fsync, as in production).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use didgate::event::{BodyFormat, Event};
use didgate::store::Store;

fn event(i: u64) -> Event {
    let callid = format!("bench-{i}");
    Event {
        kind: "cdr".into(),
        format: BodyFormat::Json,
        peer: Some("192.0.2.10:40000".parse().unwrap()),
        content_type: b"application/json".to_vec(),
        body: format!(r#"{{"calldate":"2026-05-12T05:17:58Z","callid":"{callid}","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}}"#).into_bytes(),
        callid: Some(callid),
    }
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 4 << 30).unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("commit_batch");
    g.sample_size(20);
    for batch in [1u64, 8, 64, 512] {
        g.throughput(Throughput::Elements(batch));
        let events: Vec<Event> = (0..batch).map(event).collect();
        g.bench_with_input(BenchmarkId::from_parameter(batch), &events, |b, events| {
            b.iter(|| {
                n += 1;
                let mut txn = store.begin_write(n as i64).unwrap();
                for ev in events {
                    // Unique per iteration is not needed for the dedup lookup's cost, which is
                    // paid either way; the append is what is measured.
                    let _ = txn.find_duplicate(ev, 0).unwrap();
                    txn.append_event(ev).unwrap();
                }
                txn.commit().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
