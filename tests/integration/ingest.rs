//! The seed payloads round-trip exactly; duplicates are stored once; bad bodies are
//! quarantined; an acknowledged event is readable at once.

use crate::util::*;

#[test]
fn seed_payloads_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    for (hook, ct, body) in SEEDS {
        let r = s.post(hook, ct, body);
        assert_eq!((r.status, r.body.as_str()), (200, "stored\n"), "{hook}");
    }
    let events = export(&data);
    assert_eq!(events.len(), 3);
    let kinds: Vec<_> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cdr", "recording", "sms"]);
    let seqs: Vec<_> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // JSON payloads are the original objects, byte for byte once whitespace is removed.
    let lines = read_ok(&data, &["export"]);
    let mut it = lines.lines();
    assert!(
        it.next()
            .unwrap()
            .contains(&format!("\"payload\":{SEED_CDR}}}"))
    );
    // A recording's line goes on with its archive state.
    let recording = it.next().unwrap();
    assert!(
        recording.contains(&format!("\"payload\":{SEED_RECORDING},\"archive\":{{")),
        "{recording}"
    );
    assert_eq!(events[0]["payload"]["billsec"], 7);
    let sms = &events[2]["payload"];
    assert_eq!(sms["message"], "Hello world ", "trailing space kept");
    assert_eq!(sms["received_at"], "2026-05-13 12:45:40 UTC");
    assert_eq!(sms["src"], "15551234567");
    // --raw gives the bodies exactly as received.
    let raw = read_ok(&data, &["export", "--raw"]);
    assert_eq!(raw, format!("{SEED_CDR}\n{SEED_RECORDING}\n{SEED_SMS}\n"));
    let stamp = events[0]["stored_at"].as_str().unwrap();
    assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{stamp}");
}

#[test]
fn acknowledged_event_is_readable_immediately() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    for i in 0..5 {
        let id = format!("ack-{i}");
        assert_eq!(s.post("cdr", JSON, &cdr(&id)).status, 200);
        let got = read_ok(&data, &["get", &id]);
        assert_eq!(
            got.lines().count(),
            1,
            "event {id} visible right after its 200"
        );
    }
}

#[test]
fn duplicates_are_answered_200_and_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).body, "stored\n");
    assert_eq!(s.post("cdr", JSON, SEED_CDR).body, "duplicate\n");
    assert_eq!(s.post("cdr", JSON, SEED_CDR).body, "duplicate\n");
    // A different body (even by one byte of whitespace) is a different event.
    assert_eq!(
        s.post("cdr", JSON, &format!("{SEED_CDR} ")).body,
        "stored\n"
    );
    assert_eq!(s.post("sms", FORM, SEED_SMS).body, "stored\n");
    assert_eq!(s.post("sms", FORM, SEED_SMS).body, "duplicate\n");
    assert_eq!(export(&data).len(), 3);
    let stats: serde_json::Value =
        serde_json::from_str(&read_ok(&data, &["stats", "--json"])).unwrap();
    assert_eq!(stats["duplicates"]["cdr"], 2);
    assert_eq!(stats["duplicates"]["sms"], 1);
    assert_eq!(stats["events"], 3);
}

#[test]
fn undecodable_bodies_are_quarantined_with_reason_and_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let cases = [
        ("cdr", JSON, "{\"callid\": \"x\""),
        ("recording", JSON, "[1,2]"),
        ("cdr", JSON, "// comment\n{}"),
        ("sms", FORM, "&&&"),
        ("cdr", JSON, ""),
    ];
    for (hook, ct, body) in cases {
        let r = s.post(hook, ct, body);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "quarantined\n"),
            "{body:?}"
        );
    }
    assert!(
        export(&data).is_empty(),
        "quarantined bodies are not events"
    );
    let list = read_ok(&data, &["quarantine", "list"]);
    let entries: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), cases.len());
    assert!(
        entries[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON")
    );
    assert_eq!(entries[1]["reason"], "JSON is not an object");
    assert_eq!(entries[1]["hook"], "recording");
    assert_eq!(
        entries[3]["reason"],
        "not a form: no `=` anywhere, so no name=value pairs"
    );
    assert_eq!(entries[4]["reason"], "empty body");
    let raw = read_ok(&data, &["quarantine", "show", "1", "--raw"]);
    assert_eq!(raw, cases[0].2);
    let stats: serde_json::Value =
        serde_json::from_str(&read_ok(&data, &["stats", "--json"])).unwrap();
    assert_eq!(stats["quarantined"], 5);
}

#[test]
fn kind_comes_from_the_body_and_unknown_kinds_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let bodies = [
        (
            "cdr",
            JSON,
            r#"{"event":"voicemail","callid":"v1","new_field":{"deep":[1,2.50]}}"#,
        ),
        ("recording", JSON, r#"{"callid":"v1"}"#),
        // No Content-Type: sniffed.
        ("cdr", "", r#"{"event":"cdr","callid":"v1"}"#),
        ("sms", "", "src=1&dst=2&message=hi"),
    ];
    for (hook, ct, body) in bodies {
        let req = if ct.is_empty() {
            format!(
                "POST {} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                s.path(hook),
                body.len()
            )
            .into_bytes()
        } else {
            request(&s.path(hook), ct, body.as_bytes(), "Connection: close\r\n")
        };
        let (resp, _) = s.exchange(&req);
        assert_eq!(resp[0].body, "stored\n", "{body}");
    }
    let events = export(&data);
    let kinds: Vec<_> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["voicemail", "recording", "cdr", "sms"]);
    assert_eq!(
        events[0]["payload"]["new_field"]["deep"][1].to_string(),
        "2.50"
    );
    let call = read_ok(&data, &["get", "v1"]);
    assert_eq!(
        call.lines().count(),
        3,
        "all three events of call v1, via the index"
    );
    let only = read_ok(&data, &["export", "--kind", "voicemail"]);
    assert_eq!(only.lines().count(), 1);
}

/// Regression: a JSON CDR posted with curl's default form Content-Type (or none, or behind a
/// byte order mark) was stored as an SMS whose field name was the whole JSON text.
#[test]
fn a_json_body_is_json_whatever_its_content_type_and_misfiled_bodies_are_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let cdr = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"formct1","event":"cdr","billsec":7}"#;
    assert_eq!(s.post("cdr", FORM, cdr).body, "stored\n");
    let bom = format!("\u{feff}{}", cdr.replace("formct1", "bom1"));
    assert_eq!(s.post("cdr", "text/plain", &bom).body, "stored\n");
    let events = export(&data);
    assert_eq!(events.len(), 2);
    for ev in &events {
        assert_eq!(ev["kind"], "cdr", "{ev}");
        assert_eq!(ev["payload"]["billsec"], 7, "{ev}");
    }
    assert_eq!(read_ok(&data, &["get", "formct1"]).lines().count(), 1);
    assert_eq!(read_ok(&data, &["get", "bom1"]).lines().count(), 1);

    let misfiled: [(&str, &str, &[u8], &str); 5] = [
        (
            "cdr",
            FORM,
            b"src=1&dst=2&message=hi",
            "form body on the cdr hook",
        ),
        (
            "cdr",
            "",
            b"hello world",
            "text body on the cdr hook is neither JSON nor a form",
        ),
        (
            "recording",
            "",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            "gzip-compressed body",
        ),
        (
            "cdr",
            JSON,
            b"\xff\xfe{\x00}\x00",
            "UTF-16 body (UTF-8 expected)",
        ),
        (
            "sms",
            FORM,
            b"a\x00b&c",
            "not a form: no `=` anywhere, so no name=value pairs",
        ),
    ];
    for (hook, ct, body, _) in misfiled {
        let req = request(&s.path(hook), ct, body, "Connection: close\r\n");
        let (resp, _) = s.exchange(&req);
        assert_eq!(resp[0].body, "quarantined\n", "{body:?}");
    }
    let reasons: Vec<String> = read_ok(&data, &["quarantine", "list"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].to_string())
        .collect();
    let want: Vec<String> = misfiled.iter().map(|m| format!("{:?}", m.3)).collect();
    assert_eq!(reasons, want);
    assert_eq!(export(&data).len(), 2, "nothing misfiled became an event");
    let csv = read_ok(&data, &["export", "--format", "csv", "--kind", "sms"]);
    assert!(!csv.contains('\0'), "{csv:?}");
}
