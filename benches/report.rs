//! `didgate report` and `didgate calls` over a large store: a year of a busy account.
//!
//! Generates the store once (kept between runs) with `DIDGATE_REPORT_EVENTS` events, 10
//! million by default, spread over the year to 2026-12-01 in call-time order with jitter:
//! 70% CDRs (a third unanswered), 20% recordings, 10% SMS. Events go through the writer's own
//! `WriteTxn` (call facts read from each body as ingest reads them, filed in the call index),
//! 10,000 per transaction, without fsync. Then times each query a few times and prints the
//! median:
//!
//! ```text
//! cargo bench --bench report                               # 10M events, ~4 GB in target/
//! DIDGATE_REPORT_EVENTS=1000000 cargo bench --bench report  # a smaller store
//! DIDGATE_REPORT_STORE=/path cargo bench --bench report     # where the store is kept
//! ```
//!
//! Figures are in docs/performance.md.

use std::path::PathBuf;
use std::time::Instant;

use didgate::cli::{calls, report};
use didgate::event::{BodyFormat, Event};
use didgate::store::{KnownFacts, Store, Sync, body_hash};

/// The allocator the gateway runs with, so the figures are the CLI's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const YEAR_START_MS: i64 = 1_764_547_200_000; // 2025-12-01T00:00:00Z
const YEAR_MS: i64 = 365 * 86_400_000;
const PER_TXN: u64 = 10_000;

fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn event(i: u64, n: u64) -> Event {
    // xorshift for reproducible variety
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let at = YEAR_START_MS + (i as i64) * (YEAR_MS / n as i64) + (x % 60_000) as i64;
    let date = rfc3339(at);
    let callid = format!("c{}", i / 10 * 7 + (i % 10).min(6));
    let (kind, format, body) = match i % 10 {
        0..=6 => {
            let answered = !x.is_multiple_of(3);
            let billsec = if answered { x % 600 } else { 0 };
            let dst =
                ["448081697031", "19005550101", "33144556677", "4930123456"][(x % 4) as usize];
            (
                "cdr",
                BodyFormat::Json,
                format!(
                    r#"{{"calldate":"{date}","callid":"{callid}","direction":"{}","disposition":"{}","dst":"{dst}","duration":{},"billsec":{billsec},"event":"cdr","src":"4412730{:05}","user_id":76141}}"#,
                    if x.is_multiple_of(5) {
                        "inbound"
                    } else {
                        "outbound"
                    },
                    if answered { "ANSWERED" } else { "NO ANSWER" },
                    billsec + 7,
                    x % 100_000
                ),
            )
        }
        7 | 8 => (
            "recording",
            BodyFormat::Json,
            format!(
                r#"{{"calldate":"{date}","callid":"{callid}","event":"recording","recording_url":"https://ddl-aws-bucket.example/{callid}.mp3?X-Amz-Expires=3600"}}"#
            ),
        ),
        _ => (
            "sms",
            BodyFormat::Form,
            format!(
                "src=1555{:07}&dst=448001234567&message=Hello+world+{i}&received_at={}",
                x % 10_000_000,
                date.replace('T', "+")
                    .replace('Z', "+UTC")
                    .replace(':', "%3A")
            ),
        ),
    };
    Event {
        kind: kind.into(),
        format,
        peer: None,
        content_type: if format == BodyFormat::Form {
            b"application/x-www-form-urlencoded".to_vec()
        } else {
            b"application/json".to_vec()
        },
        body: body.into_bytes(),
        callid: None,
        call: None,
    }
    .with_call_facts()
}

fn generate(dir: &std::path::Path, n: u64) -> Store {
    let marker = dir.join("generated");
    let store = Store::open_writer_with(dir, 64 << 30, Sync::Deferred).expect("open");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(&n.to_string()) {
        return store;
    }
    eprintln!("generating {n} events in {}", dir.display());
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let stored_at_ms = YEAR_START_MS + YEAR_MS;
        let mut w = store.begin_write(stored_at_ms).expect("begin");
        let mut known = std::collections::VecDeque::new();
        for _ in 0..PER_TXN.min(n - i) {
            let ev = event(i, n);
            let seq = w.append_event(&ev, body_hash(&ev.body)).expect("append");
            known.push_back(KnownFacts {
                seq,
                stored_at_ms,
                facts: ev.call,
            });
            i += 1;
        }
        // Filed as the writer files them (there in a transaction of its own).
        w.index_calls(&mut known, usize::MAX).expect("file");
        w.commit().expect("commit");
    }
    store.sync().expect("sync");
    std::fs::write(&marker, n.to_string()).expect("marker");
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    store
}

fn time(name: &str, runs: usize, f: &mut dyn FnMut()) {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<48} median {:>9.1} ms (min {:.1}, max {:.1}, {runs} runs)",
        ms[runs / 2],
        ms[0],
        ms[runs - 1]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo test --all-targets` runs this without `--bench`: a 20,000-event store in a temp
    // directory, every query once, so the benchmark cannot rot.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let tmp = tempfile::tempdir().expect("temp dir");
    let n: u64 = match std::env::var("DIDGATE_REPORT_EVENTS") {
        _ if smoke => 20_000,
        Ok(v) => v.parse().expect("DIDGATE_REPORT_EVENTS: a number"),
        Err(_) => 10_000_000,
    };
    let dir = match std::env::var_os("DIDGATE_REPORT_STORE") {
        _ if smoke => tmp.path().to_path_buf(),
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!("target/report-store-{n}")),
    };
    let generated = generate(&dir, n);
    if smoke {
        let report = generated.check().expect("check");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.calls_indexed, n);
    }
    drop(generated);
    let time =
        |name: &str, runs: usize, f: &mut dyn FnMut()| time(name, if smoke { 1 } else { runs }, f);
    let store = Store::open_reader(&dir).expect("reader");
    let rep = |since: &str, until: &str, by: &[&str]| report::Args {
        since: Some(since.into()),
        until: Some(until.into()),
        by: by.iter().map(|s| s.to_string()).collect(),
        tz: Some("Europe/London".into()),
        ..report::Args::default()
    };
    let run = |a: report::Args| report::run(&store, &a, &mut std::io::sink()).expect("report");
    println!("store: {n} events over the year to 2026-12-01, times in Europe/London");
    time("report one day --by day", 21, &mut || {
        run(rep("2026-06-15", "2026-06-16", &["day"]))
    });
    time("report one day --by hour", 21, &mut || {
        run(rep("2026-06-15", "2026-06-16", &["hour"]))
    });
    time(
        "report one day --by dst-prefix (index scan)",
        11,
        &mut || run(rep("2026-06-15", "2026-06-16", &["dst-prefix"])),
    );
    time("report a year --by day", 5, &mut || {
        run(rep("2025-12-01", "2026-12-01", &["day"]))
    });
    time("report a year --by month", 5, &mut || {
        run(rep("2025-12-01", "2026-12-01", &["month"]))
    });
    time("report a year --by direction (index scan)", 3, &mut || {
        run(rep("2025-12-01", "2026-12-01", &["direction"]))
    });
    time("calls one day --format json", 11, &mut || {
        let a = calls::Args {
            since: Some("2026-06-15".into()),
            until: Some("2026-06-16".into()),
            format: calls::Format::Json,
            tz: Some("Europe/London".into()),
            ..calls::Args::default()
        };
        calls::run(&store, &a, &mut std::io::sink()).expect("calls");
    });
}
