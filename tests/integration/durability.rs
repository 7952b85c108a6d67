//! What survives a clean restart, readers running beside the writer, and the guards against
//! two gateways sharing a store or a port. Crash and fault tests are in `reliability.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::util::*;

#[test]
fn restart_keeps_events_token_and_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let token = s.token.clone();
    for i in 0..3 {
        assert_eq!(s.post("cdr", JSON, &cdr(&format!("r-{i}"))).status, 200);
    }
    let st = s.stop();
    assert!(st.success(), "clean stop exits 0: {st:?}");
    let s = Server::start(&data, &[]);
    assert_eq!(s.token, token, "the generated token is kept");
    assert_eq!(
        s.post("cdr", JSON, &cdr("r-0")).body,
        "duplicate\n",
        "dedup survives restart"
    );
    assert_eq!(s.post("cdr", JSON, &cdr("r-3")).status, 200);
    let seqs: Vec<u64> = export(&data)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn tail_follow_and_export_work_while_the_server_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    assert_eq!(s.post("cdr", JSON, &cdr("before")).status, 200);
    let mut tail = Command::new(BIN)
        .args(["tail", "-n", "1", "-f", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["payload"]["callid"], "before");
    for i in 0..20 {
        assert_eq!(s.post("cdr", JSON, &cdr(&format!("live-{i}"))).status, 200);
        if i % 5 == 0 {
            // A concurrent one-shot reader sees every acknowledged event so far.
            assert_eq!(export(&data).len(), i + 2);
        }
    }
    for i in 0..20 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payload"]["callid"], format!("live-{i}"));
    }
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn a_second_gateway_on_the_same_data_or_port_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let err = Server::try_start(&data, &[])
        .err()
        .expect("second serve on same data refused");
    assert!(err.contains("already using"), "{err}");
    let other = tmp.path().join("other");
    let out = cli(&[
        "serve",
        "--listen",
        &s.addr.to_string(),
        "--data",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("address already in use"), "{msg}");
    // The first one is unaffected.
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
}
