//! What survives a clean restart, readers running beside the writer, and the guards against
//! two gateways sharing a store or a port. Crash and fault tests are in `reliability.rs`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

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
    let mut tail = didgate()
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

#[test]
fn the_dedup_table_forgets_beyond_its_size_and_calls_are_found_across_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The smallest table: at least 1,024 events remembered, at most 2,048.
    let cfg = write_config(tmp.path(), "small.toml", "dedup_memory_events = 1024\n");
    let s = Server::start(&data, &["--config", &cfg]);
    let total = 3000;
    // Pipelined on one connection, 100 at a time: quick, and batches of many events.
    let mut c = s.connect();
    for start in (0..total).step_by(100) {
        s.post_cdrs_pipelined(&mut c, (start..start + 100).map(|i| format!("t-{i}")));
    }
    // The newest 1,024 are remembered; the first ones (2,000+ events back) are not.
    assert_eq!(s.post("cdr", JSON, &cdr("t-2999")).body, "duplicate\n");
    assert_eq!(s.post("cdr", JSON, &cdr("t-2000")).body, "duplicate\n");
    assert_eq!(s.post("cdr", JSON, &cdr("t-5")).body, "stored\n");
    let metrics = s.admin_get("/metrics").body;
    assert!(
        metrics.contains("didgate_dedup_memory_bytes 32768\n"),
        "{metrics}"
    );
    // `get` finds calls in complete blocks (1..=2048) and in the newest, incomplete one.
    for (id, seqs) in [
        ("t-5", vec![6, 3001]),
        ("t-1500", vec![1501]),
        ("t-2990", vec![2991]),
    ] {
        assert_eq!(seqs_of(&read_ok(&data, &["get", id])), seqs, "{id}");
    }
    let out = cli(&["get", "t-3000", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "no such call");
    let check = read_ok(&data, &["check"]);
    assert!(check.contains("consistent"), "{check}");
}
