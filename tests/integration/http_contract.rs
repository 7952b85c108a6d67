//! The HTTP/1.1 features a sender may use (keep-alive, pipelining, Connection: close,
//! HTTP/1.0, Expect: 100-continue, chunked bodies, many headers), deadlines, and 503 on a full
//! store. Status-by-status framing cases are in `conformance.rs`.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::*;

fn one(s: &Server, raw: &[u8]) -> (Response, bool) {
    let (mut resp, closed) = s.exchange(raw);
    assert_eq!(resp.len(), 1, "{resp:?}");
    (resp.remove(0), closed)
}

#[test]
fn keep_alive_and_pipelining_answer_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let mut c = s.connect();
    for i in 0..3 {
        c.send(&request(
            &s.path("cdr"),
            JSON,
            cdr(&format!("ka-{i}")).as_bytes(),
            "",
        ));
        assert_eq!(c.response().body, "stored\n");
    }
    // Three requests in one write, the middle one a duplicate of the first.
    let mut burst = Vec::new();
    for id in ["p-1", "p-2", "p-1"] {
        burst.extend(request(&s.path("cdr"), JSON, cdr(id).as_bytes(), ""));
    }
    c.send(&burst);
    let bodies: Vec<_> = (0..3).map(|_| c.response().body).collect();
    assert_eq!(bodies, ["stored\n", "stored\n", "duplicate\n"]);
    // Two good requests then a malformed one: the good ones are answered (and stored) first.
    let mut burst = Vec::new();
    burst.extend(request(&s.path("cdr"), JSON, cdr("g-1").as_bytes(), ""));
    burst.extend(request(&s.path("cdr"), JSON, cdr("g-2").as_bytes(), ""));
    burst.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n");
    c.send(&burst);
    let (resp, closed) = c.all_until_close();
    let statuses: Vec<_> = resp.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 400]);
    assert!(closed);
    assert_eq!(read_ok(&data, &["get", "g-2"]).lines().count(), 1);
    assert_eq!(export(&data).len(), 7);
}

#[test]
fn connection_close_and_http10() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &[]);
    let raw = request(
        &s.path("cdr"),
        JSON,
        cdr("c1").as_bytes(),
        "Connection: close\r\n",
    );
    let (r, closed) = one(&s, &raw);
    assert_eq!(
        (r.status, r.header("connection").as_deref()),
        (200, Some("close"))
    );
    assert!(closed);

    let body = cdr("h10");
    let raw = format!(
        "POST {} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        s.path("cdr"),
        body.len()
    );
    let (r, closed) = one(&s, raw.as_bytes());
    assert_eq!(r.status, 200);
    assert!(closed, "HTTP/1.0 without keep-alive closes");

    let mut c = s.connect();
    for id in ["k1", "k2"] {
        let body = cdr(id);
        c.send(
            format!(
                "POST {} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
                s.path("cdr"),
                body.len()
            )
            .as_bytes(),
        );
        let r = c.response();
        assert_eq!(
            (r.status, r.header("connection").as_deref()),
            (200, Some("keep-alive"))
        );
    }
}

#[test]
fn expect_continue_chunked_and_many_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    // Expect: 100-continue: the body is sent only after the interim response.
    let body = cdr("e1");
    let mut c = s.connect();
    c.send(format!("POST {} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", s.path("cdr"), body.len()).as_bytes());
    let interim = c.response();
    assert_eq!(interim.status, 100);
    c.send(body.as_bytes());
    assert_eq!(c.response().body, "stored\n");

    // Chunked, with an extension and a trailer; stored de-chunked.
    let mut c = s.connect();
    c.send(format!("POST {} HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nsrc=\r\n1C\r\n15551234567&message=Hello+wo\r\n4\r\nrld+\r\n0\r\nX-T: 1\r\n\r\n", s.path("sms")).as_bytes());
    assert_eq!(c.response().body, "stored\n");

    // 100 header fields.
    let extra: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c = s.connect();
    c.send(&request(
        &s.path("cdr"),
        JSON,
        cdr("h100").as_bytes(),
        &extra,
    ));
    assert_eq!(c.response().status, 200);

    let raw = read_ok(&data, &["export", "--raw"]);
    let lines: Vec<_> = raw.lines().collect();
    assert_eq!(lines[1], "src=15551234567&message=Hello+world+");
}

#[test]
/// Regression: a slow head with a valid token was answered 408, which the sender treats as
/// final; now both deadlines close without an answer, so the sender retries.
fn head_and_body_deadlines_close_without_a_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        "head_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
    );
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    // A client trickling its head: cut off at the head deadline whatever it keeps sending.
    let mut c = s.connect();
    let start = Instant::now();
    c.send(b"POST / HTTP/1.1\r\n");
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        if c.stream.write_all(b"X-A: b\r\n").is_err() {
            break;
        }
    }
    let (resp, closed) = c.all_until_close();
    assert!(resp.is_empty() && closed, "{resp:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The same on a hook path with the right token, paused in the middle of a header.
    let mut c = s.connect();
    c.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: app",
            s.path("cdr")
        )
        .as_bytes(),
    );
    let (resp, closed) = c.all_until_close();
    assert!(resp.is_empty() && closed, "{resp:?}");
    // A body that stops arriving: closed without an answer (a 4xx would make the sender drop
    // the event; a closed connection makes it retry), and nothing stored.
    let mut c = s.connect();
    c.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{{\"a\":",
            s.path("cdr")
        )
        .as_bytes(),
    );
    let (resp, closed) = c.all_until_close();
    assert!(resp.is_empty() && closed);
    assert!(export(&data).is_empty());
}

#[test]
fn the_map_grows_and_at_its_maximum_answers_503_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        "map_size_bytes = 1048576\nmax_map_size_bytes = 4194304\nmin_free_disk_bytes = 0\n",
    );
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let (acked, refused) = fill_until_refused(&s, "big", 60_000, 200);
    let r = refused.expect("a 4 MiB map fills up");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    assert!(!acked.is_empty());
    let stored: Vec<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acked);
    assert!(
        acked.len() > 30,
        "grew past the initial 1 MiB: {} events of 60 KB",
        acked.len()
    );
    let log = s.stderr();
    assert!(log.contains("grew the LMDB map"), "{log}");
    assert!(log.contains("at its maximum"), "{log}");
    let metrics = s.admin_get("/metrics").body;
    assert!(metrics.contains("didgate_map_bytes 4194304"), "{metrics}");
    assert!(
        metrics.contains("didgate_rejections_total{reason=\"commit_failed\"} 1"),
        "{metrics}"
    );
}

/// Regression: answers to HEAD carried a body, which a keep-alive client reads as the start
/// of the next response (RFC 9110 §9.3.2).
#[test]
fn head_answers_have_no_body_and_the_connection_stays_in_step() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &[]);
    let mut raw = format!("HEAD {} HTTP/1.1\r\nHost: a\r\n\r\n", s.path("cdr")).into_bytes();
    raw.extend(request(
        &s.path("cdr"),
        JSON,
        cdr("after-head").as_bytes(),
        "Connection: close\r\n",
    ));
    let mut c = s.connect();
    c.send(&raw);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut c.stream, &mut got).unwrap();
    let text = String::from_utf8(got).unwrap();
    let second = text.find("HTTP/1.1 200 OK").expect(&text);
    let (head_answer, post_answer) = text.split_at(second);
    assert!(head_answer.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(head_answer.contains("Allow: POST\r\n"), "{text}");
    assert!(
        head_answer.ends_with("\r\n\r\n"),
        "a body after the headers: {text}"
    );
    assert!(post_answer.ends_with("\r\n\r\nstored\n"), "{text}");
    // The admin listener likewise.
    let admin = s.admin.expect("admin listener");
    let mut a = std::net::TcpStream::connect(admin).unwrap();
    std::io::Write::write_all(&mut a, b"HEAD /readyz HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut a, &mut got).unwrap();
    let text = String::from_utf8(got).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
    assert!(text.contains("Content-Length: 6\r\n"), "{text}");
}

/// Regression: a 413 on a valid hook path was counted as `hook="other"`, because the body
/// limit was enforced before the request was routed.
#[test]
fn a_body_over_the_limit_is_counted_against_its_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &[]);
    let mut c = s.connect();
    c.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
            s.path("cdr")
        )
        .as_bytes(),
    );
    assert_eq!(c.response().status, 413);
    assert!(c.closed());
    let m = s.admin_get("/metrics").body;
    assert!(
        m.contains("didgate_requests_total{hook=\"cdr\",status=\"413\"} 1"),
        "{m}"
    );
    assert!(!m.contains("hook=\"other\",status=\"413\""), "{m}");
}
