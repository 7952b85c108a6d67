//! Forwarding attacked with kill -9: the gateway is killed at random moments while it
//! delivers (with some attempts failing, so the retry set is in play) and restarted. Nothing
//! stored is ever skipped, and an event arrives twice only if, at some kill, the store did
//! not yet count it as settled (after the cursor, or in the retry set): what was in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::sink::{Reply, Sink};
use crate::tls::eventually;
use crate::util::*;

fn emulated() -> bool {
    std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// 20 rounds (200 with `DIDGATE_LONG`); 5 under emulation, where a round takes ten times as
/// long and the native run has already made the 20.
fn rounds() -> usize {
    if std::env::var_os("DIDGATE_LONG").is_some() {
        200
    } else if emulated() {
        5
    } else {
        20
    }
}

/// What the store said was not yet settled at a kill: the cursor and the retry set.
fn unsettled(data: &std::path::Path) -> (u64, HashSet<u64>) {
    let d: serde_json::Value = serde_json::from_str(
        read_ok(data, &["deliveries", "--json"])
            .lines()
            .next()
            .unwrap_or("{}"),
    )
    .unwrap();
    let cursor = d["cursor"].as_u64().unwrap_or(0);
    let retry = if d.is_null() || d["state"] == "new" {
        HashSet::new()
    } else {
        seqs_of(&read_ok(data, &["deliveries", "retrying", "--dest", "crm"]))
            .into_iter()
            .collect()
    };
    (cursor, retry)
}

#[test]
fn kill_9_during_delivery_never_skips_and_repeats_only_what_was_unsettled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // One request in eight fails; the rest are answered after a short, varying delay.
    let n = Arc::new(AtomicU64::new(0));
    let sink = Sink::start(move |_| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(i % 4));
        if i % 8 == 3 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        &format!(
            "[recordings]\nenabled = false\n[[forward]]\nname = \"crm\"\nurl = \"{}\"\nretry = [\"50ms\"]\nmax_in_flight = 4\n",
            sink.url()
        ),
    );
    let mut kills = Vec::new();
    let mut seed = 0x2545f4914f6cdd1du64;
    for round in 0..rounds() {
        let s = Server::start(&data, &["--config", &cfg]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Under emulation everything is ~10 times slower: kill later, or rounds store nothing.
        let scale = if emulated() { 8 } else { 1 };
        let kill_after = Duration::from_millis((50 + seed % 350) * scale);
        let stop = Arc::new(AtomicBool::new(false));
        let poster = {
            let (addr, path, stop) = (s.addr, s.path("cdr"), stop.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = cdr(&format!("k{round}-{i}"));
                    i += 1;
                    if std::io::Write::write_all(
                        &mut c.stream,
                        &request(&path, JSON, body.as_bytes(), ""),
                    )
                    .is_err()
                        || c.try_response().is_none()
                    {
                        return;
                    }
                }
            })
        };
        std::thread::sleep(kill_after);
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        poster.join().unwrap();
        kills.push(unsettled(&data));
    }
    // A last start delivers what is left.
    let s = Server::start(&data, &["--config", &cfg]);
    let all: Vec<u64> = export(&data)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(all.len() > rounds() * 2, "load ran: {} events", all.len());
    // The store was empty when the destination was first seen: every event is owed to it.
    let owed = all;
    assert!(
        eventually(Duration::from_secs(120), || sink.has_all(owed.clone())),
        "not delivered: {:?}",
        {
            let got: HashSet<u64> = sink.delivered().into_iter().collect();
            owed.iter()
                .filter(|s| !got.contains(s))
                .take(10)
                .copied()
                .collect::<Vec<_>>()
        }
    );
    let mut times: HashMap<u64, usize> = HashMap::new();
    for seq in sink.delivered() {
        *times.entry(seq).or_default() += 1;
    }
    let repeated: Vec<u64> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    for seq in &repeated {
        assert!(
            kills
                .iter()
                .any(|(cursor, retry)| seq > cursor || retry.contains(seq)),
            "event {seq} was delivered {} times but was settled in the store at every kill",
            times[seq]
        );
    }
    eprintln!(
        "forward kill -9: {} rounds, {} events, all delivered, {} delivered more than once (all unsettled at a kill)",
        rounds(),
        owed.len(),
        repeated.len()
    );
    drop(s);
}
