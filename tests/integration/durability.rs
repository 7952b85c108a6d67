//! What survives: clean restarts, `kill -9` under concurrent load, readers running beside the
//! writer; and the guards against two gateways sharing a store or a port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
fn kill_9_under_load_loses_no_acknowledged_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..3 {
        let s = Server::start(&data, &[]);
        let stop_at = Instant::now() + Duration::from_millis(400 + round * 150);
        let senders: Vec<_> = (0..8)
            .map(|t| {
                let (addr, path, acked) = (s.addr, s.path("cdr"), acked.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    for i in 0.. {
                        let id = format!("k{round}-{t}-{i}");
                        if c.stream
                            .write_all_checked(&request(&path, JSON, cdr(&id).as_bytes(), ""))
                            .is_err()
                        {
                            return;
                        }
                        match c.try_response() {
                            Some(r) if r.status == 200 => acked.lock().unwrap().push(id),
                            Some(r) => panic!("unexpected {r:?}"),
                            None => return,
                        }
                        if Instant::now() > stop_at + Duration::from_secs(5) {
                            return;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(stop_at.saturating_duration_since(Instant::now()));
        s.kill9();
        for h in senders {
            h.join().unwrap();
        }
    }
    let s = Server::start(&data, &[]);
    drop(s);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in export(&data) {
        *seen
            .entry(e["payload"]["callid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 50, "load actually ran: {}", acked.len());
    for id in acked.iter() {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged {id} present exactly once"
        );
    }
}

trait WriteChecked {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()>;
}

impl WriteChecked for std::net::TcpStream {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, b)
    }
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

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let (addr, path) = (s.addr, s.path("cdr"));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut c = Conn::open(addr);
                for i in 0..10_000 {
                    let id = format!("t{t}-{i}");
                    if std::io::Write::write_all(
                        &mut c.stream,
                        &request(&path, JSON, cdr(&id).as_bytes(), ""),
                    )
                    .is_err()
                    {
                        break;
                    }
                    match c.try_response() {
                        Some(r) if r.status == 200 => acked.push(id),
                        Some(r) => {
                            assert_eq!(r.status, 503, "only 200 or 503 during shutdown");
                            break;
                        }
                        None => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.stop().success());
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stored: std::collections::HashSet<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap().to_string())
        .collect();
    assert!(!acked.is_empty());
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} stored");
    }
}
