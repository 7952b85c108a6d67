//! Slow and flooding clients, each bounded in time: many idle connections, the connection cap,
//! and running out of file descriptors. The gateway must keep serving, never spin, never die.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn a_healthy_client_is_served_while_2000_idle_connections_are_open() {
    let limit = raise_nofile();
    assert!(
        limit > 4200,
        "descriptor hard limit {limit} too low for this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    // Some of them have sent half a request head.
    for c in idle.iter().step_by(2) {
        std::io::Write::write_all(&mut &*c, b"POST /hooks/").unwrap();
    }
    let start = Instant::now();
    let r = s.post("cdr", JSON, &cdr("healthy"));
    assert_eq!(r.status, 200);
    // Liveness, not a benchmark: generous on a loaded 2-core machine.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
    assert_eq!(s.post("cdr", JSON, &cdr("after")).status, 200);
}

#[test]
fn at_the_connection_cap_new_clients_wait_and_are_served_when_one_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "flood.toml", "max_connections = 4\n");
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let mut held: Vec<Conn> = (0..4).map(|_| s.connect()).collect();
    // Make sure all four are accepted (each answers a request).
    for c in held.iter_mut() {
        c.send(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(c.response().status, 404);
    }
    let waiting = std::thread::spawn({
        let (addr, path) = (s.addr, s.path("cdr"));
        move || {
            let mut c = Conn::open(addr);
            c.send(&request(&path, JSON, cdr("capped").as_bytes(), ""));
            c.response().status
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "served beyond the cap");
    held.pop();
    assert_eq!(waiting.join().unwrap(), 200);
    assert!(s.stderr().contains("connection cap"), "{}", s.stderr());
}

#[test]
fn out_of_descriptors_the_gateway_backs_off_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "flood.toml", "max_connections = 10000\n");
    let data = tmp.path().join("data");
    let s = Server::start_with(&data, &["--config", &cfg], Some(48), &[]).unwrap();
    let flood: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = s.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = s.cpu_time() - before;
    // A loop spinning on EMFILE would burn about 2 s of CPU here.
    assert!(
        used < Duration::from_millis(800),
        "CPU {used:?} while out of descriptors"
    );
    assert!(s.stderr().contains("accept failed"), "{}", s.stderr());
    drop(flood);
    let r = s.post("cdr", JSON, &cdr("recovered"));
    assert_eq!(r.status, 200);
    assert_eq!(read_ok(&data, &["get", "recovered"]).lines().count(), 1);
}

#[test]
fn a_client_that_never_reads_is_cut_off_by_the_write_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "flood.toml", "write_timeout = \"1s\"\n");
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let greedy = TcpStream::connect(s.addr).unwrap();
    // Pipelined requests whose answers pile up unread until the server's writes stall.
    let writer = std::thread::spawn({
        let mut greedy = greedy.try_clone().unwrap();
        move || {
            let chunk = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(1000);
            let start = Instant::now();
            while start.elapsed() < PATIENCE {
                if std::io::Write::write_all(&mut greedy, &chunk).is_err() {
                    return true;
                }
            }
            false
        }
    });
    assert!(
        writer.join().unwrap(),
        "the server closed the connection of a client that never reads"
    );
    assert_eq!(s.post("cdr", JSON, &cdr("others-fine")).status, 200);
    drop(greedy);
}
