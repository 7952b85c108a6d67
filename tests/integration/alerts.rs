//! `[[alert]]` rules through the real server: each type fires and clears on the calls that
//! should make it, once per transition in the log, in the gauge, in `didgate alerts`, and as a
//! notification that is retried when the receiver fails; a reload drops a rule.

use std::time::Duration;

use serde_json::Value;

use crate::sink::{Reply, Sink};
use crate::tls::eventually;
use crate::util::{Server, read_ok, write_config};

const JSON: &str = "application/json";

fn at(seconds_ago: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds_ago);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn cdr(callid: &str, dst: &str, disposition: &str, billsec: u32, seconds_ago: i64) -> String {
    format!(
        r#"{{"calldate":"{}","callid":"{callid}","direction":"outbound","disposition":"{disposition}","dst":"{dst}","duration":{},"billsec":{billsec},"event":"cdr","src":"441273004315"}}"#,
        at(seconds_ago),
        billsec + 5
    )
}

fn firing(server: &Server, rule: &str) -> Option<f64> {
    server.admin_get("/metrics").body.lines().find_map(|l| {
        l.strip_prefix(&format!("didgate_alert_firing{{rule=\"{rule}\"}} "))
            .map(|v| v.parse().unwrap())
    })
}

fn config(sink: &str, with_burst: bool) -> String {
    let hour = time::OffsetDateTime::now_utc().hour();
    // Allowed hours that do not include now: a call to 1900 now is off hours.
    let allowed = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    let burst = if with_burst {
        "[[alert]]\nname = \"burst\"\ntype = \"burst\"\nmax_calls = 2\nwindow = \"10m\"\nmax_billsec = 10\n"
    } else {
        ""
    };
    format!(
        r#"timezone = "UTC"
alert_interval = "1s"
[recordings]
enabled = false

[[alert]]
name = "asr"
type = "asr_below"
threshold_percent = 50
window = "1h"
min_attempts = 3
notify_url = "{sink}"

{burst}
[[alert]]
name = "premium"
type = "off_hours"
prefixes = ["1900"]
hours = "{allowed}"

[[alert]]
name = "rec"
type = "recording_missing"
delay = "1s"
window = "1h"

[[alert]]
name = "quiet-sms"
type = "silence"
kind = "sms"
duration = "1h"
"#
    )
}

#[test]
fn every_rule_type_fires_and_clears_once_with_a_retried_notification() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver fails the first notification: it must come again.
    let mut n = 0;
    let sink = Sink::start(move |_| {
        n += 1;
        if n == 1 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    let cfg = write_config(dir.path(), "didgate.toml", &config(&sink.url(), true));
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", &cfg]);
    let wait = |rule: &str, want: f64| {
        assert!(
            eventually(Duration::from_secs(10), || firing(&server, rule)
                == Some(want)),
            "{rule} never became {want}: {:?}\n{}",
            firing(&server, rule),
            server.stderr()
        );
    };
    // No SMS at all: the silence rule fires at once; nothing else does.
    wait("quiet-sms", 1.0);
    for r in ["asr", "burst", "premium", "rec"] {
        assert_eq!(firing(&server, r), Some(0.0), "{r}");
    }

    for i in 0..3 {
        let body = cdr(&format!("f{i}"), "19005550100", "NO ANSWER", 0, 30);
        assert_eq!(server.post("cdr", JSON, &body).status, 200);
    }
    wait("asr", 1.0);
    wait("burst", 1.0);
    wait("premium", 1.0);
    assert_eq!(
        firing(&server, "rec"),
        Some(0.0),
        "unanswered calls need no recording"
    );

    // An answered call whose recording has not come.
    assert_eq!(
        server
            .post("cdr", JSON, &cdr("r1", "4930123", "ANSWERED", 30, 60))
            .status,
        200
    );
    wait("rec", 1.0);
    let alerts = |args: &[&str]| read_ok(&data, &[&["alerts", "--config", &cfg], args].concat());
    let listed: Vec<Value> = alerts(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rule = |name: &str| listed.iter().find(|r| r["rule"] == name).unwrap().clone();
    assert_eq!(rule("burst")["state"], "firing");
    let burst = rule("burst");
    let burst_calls: Vec<&str> = burst["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callid"].as_str().unwrap())
        .collect();
    assert_eq!(burst_calls.len(), 3);
    assert_eq!(rule("rec")["calls"][0]["callid"], "r1");
    assert!(
        rule("asr")["summary"]
            .as_str()
            .unwrap()
            .contains("1 of 4 calls answered")
    );
    assert!(
        rule("premium")["since"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );
    let table = alerts(&[]);
    assert!(table.contains("firing"), "{table}");
    assert!(table.contains("19005550100"), "{table}");

    // Everything that clears them.
    let rec = format!(
        r#"{{"calldate":"{}","callid":"r1","event":"recording","recording_url":"https://bucket.example/r1.mp3"}}"#,
        at(60)
    );
    assert_eq!(server.post("recording", JSON, &rec).status, 200);
    wait("rec", 0.0);
    let sms = "src=15551234567&dst=448001234567&message=hi&received_at=";
    let sms = format!("{sms}{}", at(5).replace(':', "%3A"));
    assert_eq!(
        server
            .post("sms", "application/x-www-form-urlencoded", &sms)
            .status,
        200
    );
    wait("quiet-sms", 0.0);
    for i in 0..4 {
        let body = cdr(&format!("ok{i}"), &format!("4930{i}"), "ANSWERED", 60, 30);
        assert_eq!(server.post("cdr", JSON, &body).status, 200);
    }
    wait("asr", 0.0);

    // The notifications: firing (retried after the 500), then cleared, Slack-compatible.
    assert!(
        eventually(Duration::from_secs(30), || {
            sink.received()
                .iter()
                .filter(|r| r.answered == Some(200))
                .count()
                >= 2
        }),
        "{:?}",
        sink.received().len()
    );
    let got: Vec<Value> = sink
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(got[0]["state"], "firing");
    assert_eq!(got[0], got[1], "the failed POST is sent again as it was");
    let delivered: Vec<&Value> = got.iter().skip(1).collect();
    assert_eq!(
        delivered
            .iter()
            .map(|v| v["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["firing", "cleared"]
    );
    assert!(
        delivered[0]["text"]
            .as_str()
            .unwrap()
            .contains("alert asr (asr_below) FIRING")
    );
    assert_eq!(delivered[0]["rule"], "asr");
    assert_eq!(delivered[0]["calls"].as_array().unwrap().len(), 3);

    // One log line per transition, never one per evaluation.
    let log = server.stderr();
    assert_eq!(
        log.matches("alert asr (asr_below) firing").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("alert asr (asr_below) cleared").count(),
        1,
        "{log}"
    );

    // A reload without the burst rule drops it.
    write_config(dir.path(), "didgate.toml", &config(&sink.url(), false));
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || firing(
        &server, "burst"
    )
    .is_none()));
    assert_eq!(
        firing(&server, "premium"),
        Some(1.0),
        "the others keep their state"
    );
    assert_eq!(
        server
            .stderr()
            .matches("alert premium (off_hours) firing")
            .count(),
        1
    );
}
