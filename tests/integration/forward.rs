//! Forwarding, through the real binary to a real HTTP sink on loopback: signed delivery of
//! every event, retries of every kind of failure, ordered delivery, a destination down then
//! back, dead letters and their retry, 410 and pause/resume, SIGHUP adding and removing
//! destinations, replay; and the pull side, `consume --exec` and `cursor`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::sink::{Reply, Sink};
use crate::tls::eventually;
use crate::util::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET2: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// How long forwarding may take to settle in a test (longer under emulation).
fn settle() -> Duration {
    let emulated = std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    Duration::from_secs(if emulated { 120 } else { 30 })
}

/// A configuration with the archive off and the given `[[forward]]` sections.
fn config(dir: &Path, forward: &str) -> String {
    write_config(
        dir,
        "didgate.toml",
        &format!("[recordings]\nenabled = false\n\n{forward}"),
    )
}

fn dest(name: &str, sink: &Sink, extra: &str) -> String {
    format!(
        "[[forward]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}\n",
        sink.url()
    )
}

/// Posts `n` CDRs with callids `prefix-i`; returns their sequence numbers.
fn post_cdrs(s: &Server, data: &Path, prefix: &str, n: usize) -> Vec<u64> {
    for i in 0..n {
        assert_eq!(
            s.post("cdr", JSON, &cdr(&format!("{prefix}-{i}"))).status,
            200
        );
    }
    export(data)
        .iter()
        .filter(|e| {
            e["payload"]["callid"]
                .as_str()
                .and_then(|c| c.strip_prefix(prefix))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|i| i.parse::<usize>().is_ok())
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// The stored sequence numbers, from `export`.
fn stored(data: &Path) -> Vec<u64> {
    export(data)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn deliveries(data: &Path) -> serde_json::Value {
    let out = read_ok(data, &["deliveries", "--json"]);
    let line = out.lines().next().unwrap_or("null");
    serde_json::from_str(line).unwrap()
}

#[test]
fn every_event_arrives_once_signed_byte_for_byte_with_its_content_type() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::ok();
    let cfg = config(
        dir.path(),
        &dest(
            "crm",
            &sink,
            &format!(
                "kinds = [\"cdr\", \"sms\"]\nsecret = [\"{SECRET}\", \"{SECRET2}\"]\nheaders = {{ Authorization = \"Bearer t0k\" }}"
            ),
        ),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    for (hook, ct, body) in SEEDS {
        assert_eq!(s.post(hook, ct, body).status, 200);
    }
    post_cdrs(&s, &data, "signed", 20);
    let all = stored(&data);
    assert_eq!(all.len(), 23);
    // The recording (seq 2) is not a kind this destination takes.
    let wanted: Vec<u64> = all.iter().copied().filter(|s| *s != 2).collect();
    assert!(eventually(settle(), || sink.has_all(wanted.clone())));
    std::thread::sleep(Duration::from_millis(500));
    let got = sink.received();
    assert_eq!(got.len(), 22, "each event once, the recording never");
    let events = export(&data);
    for r in &got {
        let ev = events.iter().find(|e| e["seq"] == r.seq).unwrap();
        assert_eq!(r.kind, ev["kind"].as_str().unwrap());
        assert!(r.signed_by(SECRET) && r.signed_by(SECRET2), "{r:?}");
        assert_eq!(r.header("authorization"), Some("Bearer t0k"));
        assert_eq!(r.attempt, 1);
        // The id depends on kind and body only: the same for this body on any appliance.
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[r.kind.as_bytes(), &[0], &r.body].concat(),
        );
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(r.id, format!("evt_{hex}"));
        assert!((r.timestamp - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 120);
    }
    let sms = got.iter().find(|r| r.kind == "sms").unwrap();
    assert_eq!(sms.content_type, FORM);
    assert_eq!(sms.body, SEEDS[2].2.as_bytes());
    let cdr = got.iter().find(|r| r.seq == 1).unwrap();
    assert_eq!(
        (cdr.content_type.as_str(), cdr.body.as_slice()),
        (JSON, SEEDS[0].2.as_bytes())
    );
    // State and metrics say the same.
    assert!(eventually(settle(), || deliveries(&data)["delivered"] == 22));
    let d = deliveries(&data);
    assert_eq!(
        (d["state"].as_str(), d["lag_events"].as_u64()),
        (Some("running"), Some(0))
    );
    assert_eq!(
        s.metric("didgate_forward_delivered_total{dest=\"crm\"}"),
        Some(22.0)
    );
    assert_eq!(
        s.metric("didgate_forward_lag_events{dest=\"crm\"}"),
        Some(0.0)
    );
    // Ingest readiness does not depend on forwarding.
    assert_eq!(s.admin_get("/readyz").status, 200);
}

#[test]
fn failures_of_every_kind_are_retried_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // The first try of each event fails, each in its own way; the second is answered 200.
    let sink = Sink::start(|r| match (r.attempt, r.seq % 5) {
        (1, 0) => Reply::Status(500),
        (1, 1) => Reply::RetryAfter(429, 2),
        (1, 2) => Reply::Hang(Duration::from_secs(3)),
        (1, 3) => Reply::CloseMidResponse,
        (1, _) => Reply::Status(302),
        _ => Reply::Status(200),
    });
    let cfg = config(
        dir.path(),
        &dest(
            "crm",
            &sink,
            "timeout = \"1s\"\nretry = [\"300ms\"]\nmax_in_flight = 8",
        ),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let seqs = post_cdrs(&s, &data, "retry", 10);
    assert!(eventually(settle(), || sink.has_all(seqs.clone())));
    let got = sink.received();
    for seq in &seqs {
        let tries: Vec<_> = got.iter().filter(|r| r.seq == *seq).collect();
        assert!(
            tries.windows(2).all(|w| w[0].id == w[1].id),
            "the id is stable across retries"
        );
        // The first try the sink saw was answered by the failure rule (unless it failed before
        // reaching the sink, on a connection the sink had closed); a later one delivered it.
        let Some(first) = tries.iter().find(|t| t.attempt == 1) else {
            continue;
        };
        let later = tries
            .iter()
            .find(|t| t.attempt >= 2 && t.answered == Some(200))
            .unwrap_or_else(|| panic!("event {seq}: {tries:?}"));
        if seq % 5 == 1 {
            // Retry-After: 2 is honoured.
            let waited = later.at - first.at;
            assert!(waited >= Duration::from_millis(1900), "{waited:?}");
        }
    }
    for class in ["timeout", "connection", "3xx", "4xx", "5xx"] {
        let name =
            format!("didgate_forward_failed_attempts_total{{dest=\"crm\",class=\"{class}\"}}");
        assert!(s.metric(&name).unwrap_or(0.0) >= 1.0, "{class}");
    }
    assert!(eventually(settle(), || deliveries(&data)["retrying"] == 0));
    assert_eq!(deliveries(&data)["dead"], 0);
}

#[test]
fn an_ordered_destination_gets_events_strictly_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    // A third of the requests fail (by a counter, so every event eventually succeeds).
    let n = Arc::new(AtomicU32::new(0));
    let sink = Sink::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    });
    let cfg = config(
        dir.path(),
        &dest("ledger", &sink, "ordered = true\nretry = [\"100ms\"]"),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let seqs = post_cdrs(&s, &data, "ordered", 30);
    assert!(eventually(settle(), || sink.has_all(seqs.clone())));
    let got = sink.received();
    // Every request (failed or not) is for the lowest event not yet delivered: the sequence
    // of requests never goes back and never skips ahead of a failed one.
    let mut delivered_up_to = 0;
    for r in &got {
        assert_eq!(
            r.seq,
            delivered_up_to + 1,
            "requests: {:?}",
            got.iter().map(|r| (r.seq, r.answered)).collect::<Vec<_>>()
        );
        if r.answered == Some(200) {
            delivered_up_to = r.seq;
        }
    }
    assert_eq!(sink.delivered(), seqs);
    drop(s);
}

#[test]
fn a_destination_down_for_the_whole_burst_gets_everything_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Reply::Status(503));
    let cfg = config(
        dir.path(),
        &dest(
            "bi",
            &sink,
            "retry = [\"200ms\", \"400ms\", \"800ms\"]\ntimeout = \"2s\"",
        ),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let seqs = post_cdrs(&s, &data, "down", 300);
    // Down: it is held after a few failures and probed, not hammered once per event.
    assert!(eventually(settle(), || s
        .metric("didgate_forward_held{dest=\"bi\"}")
        == Some(1.0)));
    std::thread::sleep(Duration::from_secs(2));
    let tried = sink.received().len();
    assert!(tried < 60, "{tried} requests to a down destination in ~2 s");
    assert!(sink.delivered().is_empty());
    assert!(
        deliveries(&data)["lag_events"].as_u64().unwrap() > 0
            || deliveries(&data)["retrying"].as_u64().unwrap() > 0
    );
    let before_back = sink.received().len();
    sink.set(|_| Reply::Status(200));
    assert!(eventually(settle(), || sink.has_all(seqs.clone())));
    // Once back, the backlog is sent once, not retried over and over: about one request per
    // event (a few more for requests already on their way when it came back).
    let after_back = sink.received().len() - before_back;
    assert!(
        after_back <= seqs.len() + 32,
        "{after_back} requests for {} events",
        seqs.len()
    );
    assert!(eventually(settle(), || {
        let d = deliveries(&data);
        d["retrying"] == 0 && d["lag_events"] == 0
    }));
    assert_eq!(s.metric("didgate_forward_held{dest=\"bi\"}"), Some(0.0));
}

#[test]
fn dead_letters_after_max_age_and_their_retry() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Reply::Status(500));
    let cfg = config(
        dir.path(),
        &dest("crm", &sink, "retry = [\"200ms\"]\nmax_age = \"2s\""),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let seqs = post_cdrs(&s, &data, "dead", 5);
    assert!(eventually(settle(), || deliveries(&data)["dead"] == 5));
    let dead = read_ok(&data, &["deliveries", "dead", "--dest", "crm"]);
    assert_eq!(seqs_of(&dead), seqs);
    let first: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(first["last_status"], 500);
    assert_eq!(first["kind"], "cdr");
    // At least one try; while the destination is held after failures in a row, an entry
    // past max_age goes dead without another.
    assert!(first["attempts"].as_u64().unwrap() >= 1);
    assert!(eventually(settle(), || s
        .metric("didgate_forward_dead_letters{dest=\"crm\"}")
        == Some(5.0)));
    assert!(sink.delivered().is_empty());
    // The receiver is fixed: the dead letters are sent again.
    sink.set(|_| Reply::Status(200));
    let out = read_ok(&data, &["deliveries", "retry", "--dest", "crm", "--dead"]);
    assert!(out.contains("5 dead letters"), "{out}");
    assert!(eventually(settle(), || sink.has_all(seqs.clone())));
    assert!(eventually(settle(), || {
        let d = deliveries(&data);
        d["dead"] == 0 && d["retrying"] == 0
    }));
    assert_eq!(read_ok(&data, &["deliveries", "dead", "--dest", "crm"]), "");
}

#[test]
fn gone_pauses_the_destination_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Reply::Status(410));
    let cfg = config(dir.path(), &dest("old", &sink, "retry = [\"100ms\"]"));
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let seqs = post_cdrs(&s, &data, "gone", 3);
    assert!(eventually(settle(), || deliveries(&data)["state"] == "paused"));
    let d = deliveries(&data);
    assert!(d["paused"].as_str().unwrap().contains("410 Gone"), "{d}");
    assert_eq!(s.metric("didgate_forward_paused{dest=\"old\"}"), Some(1.0));
    let asked = sink.received().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.received().len(), asked, "nothing is sent while paused");
    assert!(
        std::fs::read_to_string(&s.log)
            .unwrap()
            .contains("410 Gone")
    );
    sink.set(|_| Reply::Status(200));
    let out = read_ok(&data, &["deliveries", "resume", "--dest", "old"]);
    assert!(out.contains("resumed"), "{out}");
    assert!(eventually(settle(), || sink.has_all(seqs.clone())));
    // `pause` and `resume` at the top level do the same.
    read_ok(&data, &["pause", "--dest", "old"]);
    assert!(eventually(settle(), || s
        .metric("didgate_forward_paused{dest=\"old\"}")
        == Some(1.0)));
    let more = post_cdrs(&s, &data, "while-paused", 2);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!sink.has_all(more.clone()));
    read_ok(&data, &["resume", "--dest", "old"]);
    assert!(eventually(settle(), || sink.has_all(more.clone())));
}

#[test]
fn sighup_adds_and_removes_destinations_and_replay_sends_history() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Sink::ok(), Sink::ok());
    let cfg = config(dir.path(), &dest("a", &a, ""));
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let early = post_cdrs(&s, &data, "early", 5);
    assert!(eventually(settle(), || a.has_all(early.clone())));
    // Swap a for b.
    config(dir.path(), &dest("b", &b, ""));
    s.signal(libc::SIGHUP);
    assert!(eventually(settle(), || std::fs::read_to_string(&s.log)
        .unwrap()
        .contains("a removed")));
    assert!(eventually(settle(), || read_ok(
        &data,
        &["deliveries", "--json"]
    )
    .contains("\"b\"")));
    let late = post_cdrs(&s, &data, "late", 5);
    assert!(eventually(settle(), || b.has_all(late.clone())));
    // b started at the newest event: the early ones come only with a replay.
    assert!(!b.delivered().iter().any(|s| early.contains(s)));
    assert_eq!(a.received().len(), 5, "a removed: nothing more sent to it");
    let out = read_ok(&data, &["replay", "--dest", "b", "--since", "2000-01-01"]);
    assert!(out.contains("replaying 10 events"), "{out}");
    assert!(eventually(settle(), || b.has_all(early.clone())));
    // A replay limited by kind and time sends nothing of another kind.
    let out = read_ok(
        &data,
        &[
            "replay",
            "--dest",
            "b",
            "--since",
            "2000-01-01",
            "--until",
            "2000-01-02",
            "--kind",
            "sms",
        ],
    );
    assert!(out.contains("nothing to replay"), "{out}");
    // Unknown destinations and bad ranges are refused with a reason.
    let out = cli(&[
        "replay",
        "--dest",
        "nope",
        "--since",
        "2000-01-01",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no forwarding destination"));
    // With the configuration given, the removed destination is shown as such.
    let listed = read_ok(&data, &["deliveries", "--config", &cfg]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("removed")),
        "{listed}"
    );
}

#[test]
fn consume_exec_redelivers_a_failed_batch_and_moves_the_cursor_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &config(dir.path(), "")]);
    let seqs = post_cdrs(&s, &data, "pull", 40);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // Fails every third batch, after reading part of it.
    let script = format!(
        "cd {w} && n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
         if [ $((n % 3)) -eq 0 ]; then head -c 10 >/dev/null; echo \"batch $n refused\" >&2; exit 3; fi; \
         cat >> got.jsonl",
        w = work.display()
    );
    let out = cli(&[
        "consume",
        "etl",
        "--exec",
        &script,
        "--batch",
        "7",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exited with status 3") && err.contains("batch 3 refused"),
        "{err}"
    );
    let got = std::fs::read_to_string(work.join("got.jsonl")).unwrap();
    let mut delivered = seqs_of(&got);
    assert_eq!(
        delivered.len(),
        40,
        "each event once: a refused batch is sent again whole"
    );
    delivered.sort_unstable();
    assert_eq!(delivered, seqs);
    let line: serde_json::Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "cdr");
    assert!(
        line["payload"]["callid"]
            .as_str()
            .unwrap()
            .starts_with("pull-")
    );
    let show: serde_json::Value =
        serde_json::from_str(&read_ok(&data, &["cursor", "show", "etl"])).unwrap();
    assert_eq!(
        (show["seq"].as_u64(), show["lag_events"].as_u64()),
        (Some(40), Some(0))
    );
    // Caught up: a second run sends nothing.
    let out = cli(&[
        "consume",
        "etl",
        "--exec",
        "cat >> /dev/null; exit 9",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // New events go to the next run only.
    post_cdrs(&s, &data, "pull-more", 3);
    let out = cli(&[
        "consume",
        "etl",
        "--exec",
        &format!("cat >> {}", work.join("more.jsonl").display()),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        seqs_of(&std::fs::read_to_string(work.join("more.jsonl")).unwrap()),
        [41, 42, 43]
    );
}

#[test]
fn cursors_are_listed_set_and_deleted_and_printing_moves_them_only_with_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &config(dir.path(), "")]);
    post_cdrs(&s, &data, "c", 10);
    assert_eq!(s.post("sms", FORM, SEEDS[2].2).status, 200);
    // Printing without --commit does not move (or make) the cursor.
    let printed = read_ok(&data, &["consume", "bi", "--batch", "4"]);
    assert_eq!(seqs_of(&printed), (1..=11).collect::<Vec<u64>>());
    let none = cli(&["cursor", "show", "bi", "--data", data.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(1));
    // --kind with --commit: only SMS printed, the cursor moves past the rest.
    let printed = read_ok(&data, &["consume", "bi", "--kind", "sms", "--commit"]);
    assert_eq!(seqs_of(&printed), [11]);
    let list = read_ok(&data, &["cursor", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("bi ") && l.split_whitespace().nth(1) == Some("11")),
        "{list}"
    );
    read_ok(&data, &["cursor", "set", "bi", "8"]);
    assert_eq!(seqs_of(&read_ok(&data, &["consume", "bi"])), [9, 10, 11]);
    let json = read_ok(&data, &["cursor", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            v["name"].as_str(),
            v["seq"].as_u64(),
            v["lag_events"].as_u64()
        ),
        (Some("bi"), Some(8), Some(3))
    );
    read_ok(&data, &["cursor", "delete", "bi"]);
    assert_eq!(read_ok(&data, &["cursor", "list", "--json"]), "");
    let again = cli(&["cursor", "delete", "bi", "--data", data.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let bad = cli(&["consume", "no/slash", "--data", data.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("may hold only"));
}
