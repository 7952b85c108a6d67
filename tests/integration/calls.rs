//! `didgate calls` and `didgate report` through the real server and the real binary: CDRs with
//! chosen call times (around London's October 2026 clock change), dispositions and odd
//! dates, compared with hand-computed expectations; and the rollups after kill -9.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Server, read_ok, unique, write_config};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

fn cdr(
    callid: Option<&str>,
    calldate: &str,
    direction: &str,
    disposition: &str,
    dst: &str,
    duration: u32,
    billsec: u32,
) -> String {
    let callid = callid.map_or(String::new(), |c| format!(r#""callid":"{c}","#));
    format!(
        r#"{{"calldate":"{calldate}",{callid}"direction":"{direction}","disposition":"{disposition}","dst":"{dst}","duration":{duration},"billsec":{billsec},"event":"cdr","src":"441273004315","user_id":76141}}"#
    )
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The server with archiving off (recordings are `received`), fed the scenario.
fn fed(dir: &Path) -> Server {
    let cfg = write_config(dir, "didgate.toml", "[recordings]\nenabled = false\n");
    let server = Server::start(&dir.join("data"), &["--config", &cfg]);
    let posts: Vec<(&str, &str, String)> = vec![
        // A recording that arrives before its CDR.
        (
            "recording",
            JSON,
            r#"{"calldate":"2026-10-24T23:30:00Z","callid":"b","event":"recording","recording_url":"https://bucket.example/b.mp3"}"#.into(),
        ),
        ("cdr", JSON, cdr(Some("a"), "2026-10-24T22:30:00Z", "outbound", "ANSWERED", "447700900001", 70, 61)),
        ("cdr", JSON, cdr(Some("b"), "2026-10-24T23:30:00Z", "outbound", "ANSWERED", "1900555000", 125, 120)),
        // The hour that repeats when clocks go back: 01:30 BST, then 01:30 GMT.
        ("cdr", JSON, cdr(Some("g"), "2026-10-25T00:30:00Z", "inbound", "NO ANSWER", "441", 20, 0)),
        ("cdr", JSON, cdr(Some("h"), "2026-10-25T01:30:00Z", "inbound", "NO ANSWER", "441", 20, 0)),
        // No callid; the seed's other date form.
        ("cdr", JSON, cdr(None, "2026-10-25T10:00:00Z", "outbound", "ANSWERED", "33144", 9, 5)),
        ("cdr", JSON, cdr(Some("d"), "2026-10-25 12:00:00", "outbound", "BUSY", "33155", 3, 0)),
        ("cdr", JSON, cdr(Some("c"), "2026-10-25T23:30:00Z", "inbound", "NO ANSWER", "441", 15, 0)),
        // A date in no accepted form: filed under when it arrived.
        ("cdr", JSON, cdr(Some("e"), "25/10/2026 12:00", "outbound", "ANSWERED", "33166", 31, 30)),
        (
            "sms",
            FORM,
            "src=15551234567&dst=448001234567&message=Hello+world+&received_at=2026-10-25+09%3A00%3A00+UTC".into(),
        ),
    ];
    for (hook, ct, body) in &posts {
        assert_eq!(server.post(hook, ct, body).status, 200, "{body}");
    }
    // didlogic retrying B after a timeout: the same body, counted once.
    assert_eq!(server.post("cdr", JSON, &posts[2].2).status, 200);
    server
}

const RANGE: [&str; 4] = ["--since", "2026-10-24", "--until", "2026-10-27"];

fn report(data: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["report", "--format", "json"];
    args.extend(RANGE);
    args.extend(extra);
    lines(&read_ok(data, &args))
}

#[test]
fn calls_join_recordings_filter_and_show_the_call_time_in_a_zone() {
    let dir = tempfile::tempdir().unwrap();
    let server = fed(dir.path());
    let data = dir.path().join("data");
    let mut args = vec!["calls", "--format", "json", "--tz", "Europe/London"];
    args.extend(RANGE);
    let rows = lines(&read_ok(&data, &args));
    let ids: Vec<&Value> = rows.iter().map(|r| &r["callid"]).collect();
    assert_eq!(
        ids,
        ["a", "b", "g", "h"]
            .iter()
            .map(|s| Value::from(*s))
            .chain([Value::Null, "d".into(), "c".into()])
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    let a = &rows[0];
    assert_eq!(a["calldate"], "2026-10-24T23:30:00+01:00");
    assert_eq!(a["direction"], "outbound");
    assert_eq!(
        (a["src"].as_str(), a["dst"].as_str()),
        (Some("441273004315"), Some("447700900001"))
    );
    assert_eq!(a["disposition"], "ANSWERED");
    assert_eq!(
        (a["duration"].as_u64(), a["billsec"].as_u64()),
        (Some(70), Some(61))
    );
    assert_eq!(a["recording"], "none");
    assert_eq!(a["tz"], "Europe/London");
    // B's recording came first; it is joined all the same.
    assert_eq!(
        (
            rows[1]["recording"].as_str(),
            rows[1]["recordings"].as_u64()
        ),
        (Some("received"), Some(1))
    );
    assert_eq!(rows[2]["calldate"], "2026-10-25T01:30:00+01:00");
    assert_eq!(rows[3]["calldate"], "2026-10-25T01:30:00+00:00");
    assert_eq!(rows[5]["calldate"], "2026-10-25T12:00:00+00:00");

    let only = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["calls", "--format", "json"];
        a.extend(RANGE);
        a.extend(extra);
        lines(&read_ok(&data, &a))
            .iter()
            .map(|r| r["callid"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(only(&["--number", "+1 900"]), ["b"]);
    assert_eq!(
        only(&["--number", "441273"]).len(),
        7,
        "the caller's side matches too"
    );
    assert_eq!(only(&["--direction", "in"]), ["g", "h", "c"]);
    assert_eq!(only(&["--disposition", "no_answer"]), ["g", "h", "c"]);
    assert_eq!(only(&["--min-billsec", "61"]), ["a", "b"]);

    // The odd date is shown raw, filed under the time it arrived (within the last 24 hours).
    let recent = lines(&read_ok(&data, &["calls", "--format", "json"]));
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["callid"], "e");
    assert_eq!(recent[0]["calldate"], Value::Null);
    assert_eq!(recent[0]["calldate_raw"], "25/10/2026 12:00");

    let mut t = vec!["calls", "--tz", "Europe/London"];
    t.extend(RANGE);
    let table = read_ok(&data, &t);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .starts_with("time (Europe/London)")
    );
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");
    assert!(
        table.contains("2026-10-25 01:30:00  in  441273004315"),
        "{table}"
    );
    assert!(table.ends_with("7 calls\n"));
    let mut c = vec!["calls", "--format", "csv"];
    c.extend(RANGE);
    let csv = read_ok(&data, &c);
    assert!(csv.starts_with("callid,calldate,calldate_raw,tz,direction,src,dst,disposition,"));
    assert_eq!(csv.lines().count(), 8);
    drop(server);
}

#[test]
fn report_groups_by_local_day_across_a_clock_change_and_by_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = fed(dir.path());
    let data = dir.path().join("data");

    let london = report(&data, &["--tz", "Europe/London"]);
    assert_eq!(london.len(), 2, "{london:?}");
    let d24 = &london[0];
    assert_eq!(d24["day"], "2026-10-24");
    assert_eq!(
        (d24["calls"].as_u64(), d24["answered"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(d24["asr_percent"], 100.0);
    assert_eq!(d24["acd_seconds"], 61.0);
    assert_eq!(
        (d24["billsec"].as_u64(), d24["billed_minutes"].as_u64()),
        (Some(61), Some(2))
    );
    assert_eq!(d24["longest_billsec"], 61);
    assert_eq!(d24["sms"], 0);
    assert_eq!(d24["tz"], "Europe/London");
    // The 25th is 25 hours long in London: B (00:30 BST) to C (23:30 GMT).
    let d25 = &london[1];
    assert_eq!(d25["day"], "2026-10-25");
    assert_eq!(
        (d25["calls"].as_u64(), d25["answered"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(d25["asr_percent"], 33.3);
    assert_eq!(d25["acd_seconds"], 62.5);
    assert_eq!(
        (d25["billsec"].as_u64(), d25["billed_minutes"].as_u64()),
        (Some(125), Some(3))
    );
    assert_eq!(d25["longest_billsec"], 120);
    assert_eq!(
        (
            d25["recordings_archived"].as_u64(),
            d25["recordings_missing"].as_u64()
        ),
        (Some(0), Some(2))
    );
    assert_eq!(d25["sms"], 1);

    let utc = report(&data, &["--tz", "UTC"]);
    let (u24, u25) = (&utc[0], &utc[1]);
    assert_eq!(
        (
            u24["day"].as_str(),
            u24["calls"].as_u64(),
            u24["billsec"].as_u64()
        ),
        (Some("2026-10-24"), Some(2), Some(181))
    );
    assert_eq!(
        (u24["billed_minutes"].as_u64(), u24["acd_seconds"].as_f64()),
        (Some(4), Some(90.5))
    );
    assert_eq!(
        (
            u25["calls"].as_u64(),
            u25["answered"].as_u64(),
            u25["asr_percent"].as_f64()
        ),
        (Some(5), Some(1), Some(20.0))
    );
    assert_eq!(
        (u25["billed_minutes"].as_u64(), u25["sms"].as_u64()),
        (Some(1), Some(1))
    );

    let hours = report(&data, &["--tz", "Europe/London", "--by", "hour"]);
    let repeated: Vec<&str> = hours
        .iter()
        .filter_map(|r| r["hour"].as_str())
        .filter(|h| h.starts_with("2026-10-25 01:00"))
        .collect();
    assert_eq!(
        repeated,
        ["2026-10-25 01:00+00:00", "2026-10-25 01:00+01:00"]
    );

    let dir_rows = report(&data, &["--tz", "Europe/London", "--by", "direction"]);
    let by: std::collections::HashMap<&str, &Value> = dir_rows
        .iter()
        .map(|r| (r["direction"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        (
            by["outbound"]["calls"].as_u64(),
            by["outbound"]["answered"].as_u64()
        ),
        (Some(4), Some(3))
    );
    assert_eq!(by["outbound"]["billed_minutes"], 5);
    assert_eq!(
        (
            by["inbound"]["calls"].as_u64(),
            by["inbound"]["sms"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(by["inbound"]["asr_percent"], 0.0);

    let prefix = report(
        &data,
        &["--by", "dst-prefix,disposition", "--prefix-len", "4"],
    );
    let premium = prefix
        .iter()
        .find(|r| r["dst-prefix"] == "1900")
        .expect("a 1900 row");
    assert_eq!(premium["disposition"], "ANSWERED");
    assert_eq!(
        (
            premium["calls"].as_u64(),
            premium["billed_minutes"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let senders = report(&data, &["--by", "src"]);
    assert!(
        senders
            .iter()
            .any(|r| r["src"] == "15551234567" && r["sms"] == 1)
    );

    let table = read_ok(
        &data,
        &[
            "report",
            "--since",
            "2026-10-24",
            "--until",
            "2026-10-27",
            "--tz",
            "UTC",
        ],
    );
    assert!(table.contains("total"), "{table}");
    assert!(table.contains("times in UTC"), "{table}");
    let bad = crate::util::cli(&["report", "--by", "planet", "--data", data.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("dst-prefix"));
    drop(server);
}

#[test]
fn rollups_equal_a_recount_after_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Arc::new(Server::start(&data, &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4u64 {
        let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
        senders.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = unique();
                // Calls spread over five days and every quarter hour, some unanswered.
                let day = 20 + (n % 5);
                let body = cdr(
                    Some(&format!("k{t}-{i}-{n}")),
                    &format!("2026-10-{day}T{:02}:{:02}:00Z", n % 24, (n * 7) % 60),
                    "outbound",
                    if n.is_multiple_of(3) {
                        "NO ANSWER"
                    } else {
                        "ANSWERED"
                    },
                    "448081697031",
                    (n % 300) as u32 + 5,
                    if n.is_multiple_of(3) {
                        0
                    } else {
                        (n % 300) as u32
                    },
                );
                let mut c = server.connect();
                c.send(&crate::util::request(
                    &server.path("cdr"),
                    JSON,
                    body.as_bytes(),
                    "",
                ));
                if c.try_response().is_none() {
                    break;
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The senders share the server: kill it through its pid, mid-load.
    // SAFETY: kill(2) on our own child's pid; it stays a zombie (not reused) until reaped.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) };
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    drop(server);
    let checked = |data: &Path| -> Value {
        let check = read_ok(data, &["check", "--json"]);
        let v: Value = serde_json::from_str(check.trim()).unwrap();
        assert_eq!(v["consistent"], true, "{check}");
        v
    };
    // Calls per UTC day over the five days the senders used.
    let daily = |data: &Path| -> Vec<u64> {
        let args = [
            "report",
            "--format",
            "json",
            "--tz",
            "UTC",
            "--since",
            "2026-10-20",
            "--until",
            "2026-10-25",
        ];
        lines(&read_ok(data, &args))
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .collect()
    };
    let v = checked(&data);
    let stored = v["events"].as_u64().unwrap();
    let days = daily(&data);
    assert_eq!(days.len(), 5);
    assert_eq!(days.iter().sum::<u64>(), stored);
    // What the writer had not filed when it was killed is filed from the bodies once `serve`
    // is back and idle; the queries above already counted it.
    assert!(v["calls_indexed"].as_u64().unwrap() <= stored);
    let server = Server::start(&data, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.metric("didgate_calls_unfiled") != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "never filed");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let v = checked(&data);
    assert_eq!(v["calls_indexed"].as_u64().unwrap(), stored);
    assert_eq!(daily(&data), days);
}
