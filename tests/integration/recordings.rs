//! The recordings archive against a local server that behaves like S3 pre-signed URLs: good
//! files, expiry, 500 then 200, 429 with Retry-After, a drip, a truncated body, a wrong ETag,
//! a non-audio body, a redirect to a private address, 404, 10 MiB; then kill -9 during a
//! download, retention, the disk quota, and a callid that tries to leave the archive.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::tls::eventually;
use crate::util::*;

/// The fake S3: answers by path; counts requests per path.
struct S3 {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    /// While set, `/slow/` paths drip; cleared, they answer at once.
    slow: Arc<AtomicBool>,
}

fn mp3(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    v.extend((0..len.saturating_sub(10)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl S3 {
    fn start() -> S3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let slow = Arc::new(AtomicBool::new(true));
        let (h, sl) = (hits.clone(), slow.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (h, sl) = (h.clone(), sl.clone());
                std::thread::spawn(move || serve(conn, &h, &sl));
            }
        });
        S3 { addr, hits, slow }
    }

    /// A pre-signed-looking URL for `path`, valid `secs` from now.
    fn url(&self, path: &str, secs: u64) -> String {
        let now = time::OffsetDateTime::now_utc();
        let date = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        format!(
            "http://{}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={secs}&X-Amz-Signature=00",
            self.addr
        )
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| *k == "Content-Length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body);
}

fn serve(mut c: TcpStream, hits: &Mutex<HashMap<String, u32>>, slow: &AtomicBool) {
    let mut line = String::new();
    let mut r = BufReader::new(c.try_clone().unwrap());
    if r.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let target = line.split(' ').nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let n = {
        let mut m = hits.lock().unwrap();
        let e = m.entry(path.clone()).or_insert(0);
        *e += 1;
        *e
    };
    let audio = |b: &[u8]| {
        vec![
            ("Content-Type", "audio/mpeg".to_string()),
            ("ETag", format!("\"{}\"", md5_hex(b))),
        ]
    };
    let p = path.as_str();
    match p {
        _ if p.starts_with("/ok/") => {
            let body = mp3(4096, p.len() as u8);
            respond(&mut c, "200 OK", &audio(&body), &body);
        }
        "/big.mp3" => {
            let body = mp3(10 << 20, 7);
            respond(&mut c, "200 OK", &audio(&body), &body);
        }
        "/expired.mp3" => respond(
            &mut c,
            "403 Forbidden",
            &[("Content-Type", "application/xml".into())],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        ),
        "/flaky.mp3" if n == 1 => respond(&mut c, "500 Internal Server Error", &[], b"oops"),
        "/throttle.mp3" if n == 1 => {
            respond(&mut c, "429 Too Many Requests", &[("Retry-After", "1".into())], b"")
        }
        "/flaky.mp3" | "/throttle.mp3" => {
            let body = mp3(2048, 3);
            respond(&mut c, "200 OK", &audio(&body), &body);
        }
        "/truncated.mp3" if n == 1 => {
            // Half the body, then the connection ends.
            let body = mp3(1000, 4);
            respond(&mut c, "200 OK", &[("Content-Length", "1000".into())], &body[..500]);
            return;
        }
        "/truncated.mp3" => {
            let body = mp3(1000, 4);
            respond(&mut c, "200 OK", &audio(&body), &body);
        }
        "/badetag.mp3" => {
            let body = mp3(1500, 5);
            respond(&mut c, "200 OK", &[("ETag", format!("\"{}\"", md5_hex(b"other")))], &body);
        }
        "/text.mp3" => respond(
            &mut c,
            "200 OK",
            &[("Content-Type", "text/html".into())],
            b"<html><body>AccessDenied page</body></html>",
        ),
        "/redirect-private.mp3" => respond(
            &mut c,
            "302 Found",
            &[("Location", "http://10.0.0.1/r.mp3".into())],
            b"",
        ),
        "/drip.mp3" => {
            // A byte every 100 ms for 20 s, then the connection drops.
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..200 {
                if c.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        _ if p.starts_with("/slow/") => {
            let body = mp3(256 * 1024, 9);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes());
            for chunk in body.chunks(4096) {
                if c.write_all(chunk).is_err() {
                    return;
                }
                if slow.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        _ => respond(&mut c, "404 Not Found", &[], b"<Error><Code>NoSuchKey</Code></Error>"),
    }
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

fn recording(callid: &str, url: &str) -> String {
    serde_json::json!({
        "calldate": rfc3339_now(),
        "callid": callid,
        "event": "recording",
        "recording_url": url,
        "user_id": 76141
    })
    .to_string()
}

fn config(dir: &Path, extra: &str) -> String {
    write_config(
        dir,
        "didgate.toml",
        &format!(
            "[recordings]\nallow_http = true\nallow_private_addresses = [\"127.0.0.1/32\"]\n\
             retry_initial = \"1s\"\ndisk_margin_bytes = 0\n{extra}"
        ),
    )
}

/// `didgate recordings --json`, by callid.
fn states(data: &Path) -> HashMap<String, serde_json::Value> {
    read_ok(data, &["recordings", "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["callid"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn settled(data: &Path, n: usize) -> bool {
    let s = states(data);
    s.len() == n
        && s.values()
            .all(|v| v["state"] != "pending" && v.get("next_try_ms").is_none())
}

/// How long the archive may take to settle: longer under emulation, where a 10 MiB download
/// and its digests take tens of seconds.
fn settle() -> Duration {
    let emulated = std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    Duration::from_secs(if emulated { 300 } else { 60 })
}

#[test]
fn every_kind_of_answer_ends_in_the_right_state() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    // Long enough for 10 MiB under emulation; the drip still ends `expired`: it outlives its
    // 5 s URL, so no retry is left.
    let cfg = config(dir.path(), "download_timeout = \"60s\"\n");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let cases = [
        ("ok", s3.url("/ok/a.mp3", 3600)),
        ("big", s3.url("/big.mp3", 3600)),
        ("expired", s3.url("/expired.mp3", 3600)),
        ("past", s3.url("/ok/past.mp3", 0)),
        ("flaky", s3.url("/flaky.mp3", 3600)),
        ("throttle", s3.url("/throttle.mp3", 3600)),
        ("truncated", s3.url("/truncated.mp3", 3600)),
        ("badetag", s3.url("/badetag.mp3", 3600)),
        ("text", s3.url("/text.mp3", 3600)),
        ("private", s3.url("/redirect-private.mp3", 3600)),
        ("missing", s3.url("/missing.mp3", 3600)),
        ("drip", s3.url("/drip.mp3", 2)),
        ("https-only", "ftp://127.0.0.1/x.mp3".to_string()),
    ];
    for (callid, url) in &cases {
        assert_eq!(
            s.post("recording", JSON, &recording(callid, url)).status,
            200
        );
    }
    assert!(
        eventually(settle(), || settled(&data, cases.len())),
        "not settled: {:#?}",
        states(&data)
    );
    let st = states(&data);
    let state = |c: &str| st[c]["state"].as_str().unwrap().to_string();
    for (c, want) in [
        ("ok", "fetched"),
        ("big", "fetched"),
        ("expired", "expired"),
        ("past", "expired"),
        ("flaky", "fetched"),
        ("throttle", "fetched"),
        ("truncated", "fetched"),
        ("badetag", "suspicious"),
        ("text", "suspicious"),
        ("private", "failed"),
        ("missing", "gone"),
        ("drip", "expired"),
        ("https-only", "failed"),
    ] {
        assert_eq!(state(c), want, "{c}: {:#?}", st[c]);
    }
    // Whole files, where the record says, with the right digest.
    let big = std::fs::read(st["big"]["path"].as_str().unwrap()).unwrap();
    assert_eq!(big.len(), 10 << 20);
    assert_eq!(st["big"]["sha256"], sha256_hex(&big));
    assert_eq!(st["big"]["bytes"], 10 << 20);
    assert!(
        st["big"]["fetched_at"].as_str().is_some(),
        "{:#?}",
        st["big"]
    );
    assert_eq!(st["big"]["content_type"], "audio/mpeg");
    assert!(st["flaky"]["next_try"].is_null(), "settled: no next try");
    assert_eq!(st["flaky"]["attempts"], 2);
    assert_eq!(st["throttle"]["attempts"], 2);
    assert_eq!(st["truncated"]["attempts"], 2);
    assert_eq!(s3.hits("/missing.mp3"), 3);
    assert_eq!(
        s3.hits("/ok/past.mp3"),
        0,
        "an expired URL is never fetched"
    );
    assert!(
        st["text"]["first_bytes"]
            .as_str()
            .unwrap()
            .starts_with("3c68746d6c")
    );
    assert!(
        st["private"]["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{:?}",
        st["private"]
    );
    // `recording CALLID` hands the file back; `get` shows the archive state.
    let out = dir.path().join("a.mp3");
    let o = cli(&[
        "recording",
        "--data",
        data.to_str().unwrap(),
        "ok",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        mp3(4096, "/ok/a.mp3".len() as u8)
    );
    let o = cli(&["recording", "--data", data.to_str().unwrap(), "missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gone"), "{o:?}");
    let got = read_ok(&data, &["get", "ok"]);
    assert!(got.contains("\"archive\":{\"state\":\"fetched\""), "{got}");
    let failed = read_ok(&data, &["recordings", "--state", "failed"]);
    assert_eq!(failed.lines().count(), 3, "{failed}");
    // The metrics count it.
    let m = s.admin_get("/metrics").body;
    assert!(
        m.contains("didgate_recordings_total{outcome=\"fetched\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("didgate_recordings_pending 0") || m.contains("didgate_recordings_pending"),
        "{m}"
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("allow_private_addresses lets recording URLs reach 127.0.0.1/32"),
        "{log}"
    );
}

#[test]
fn a_download_killed_midway_completes_after_restart_and_callids_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let cfg = config(dir.path(), "download_timeout = \"60s\"\n");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let callid = "../../../etc/evil\u{0}name";
    let body = recording(callid, &s3.url("/slow/r.mp3", 3600));
    assert_eq!(s.post("recording", JSON, &body).status, 200);
    let partial = data.join("recordings/.partial");
    assert!(
        eventually(PATIENCE, || std::fs::read_dir(&partial)
            .is_ok_and(|mut d| d.next().is_some())),
        "the download did not start"
    );
    s.kill9();
    s3.slow.store(false, Ordering::Relaxed);
    let s = Server::start(&data, &["--config", &cfg]);
    assert!(
        eventually(settle(), || settled(&data, 1)),
        "{:#?}",
        states(&data)
    );
    let st = states(&data);
    let r = &st[callid];
    assert_eq!(r["state"], "fetched", "{r:#?}");
    let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
    assert!(
        path.starts_with(data.join("recordings")),
        "{}",
        path.display()
    );
    assert!(!path.to_string_lossy().contains(".."), "{}", path.display());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    assert_eq!(bytes, mp3(256 * 1024, 9));
    assert_eq!(
        std::fs::read_dir(&partial).unwrap().count(),
        0,
        "stray partial files"
    );
    // Retention (here by hand) removes the file with its event.
    drop(s);
    let before = rfc3339_now();
    std::thread::sleep(Duration::from_millis(20));
    let o = cli(&[
        "prune",
        "--data",
        data.to_str().unwrap(),
        "--before",
        &before,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(!path.exists(), "the recording outlived its event");
}

#[test]
fn the_quota_pauses_archiving_not_ingest_and_a_reload_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let cfg = config(dir.path(), "max_archive_bytes = 1\n");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    assert_eq!(
        s.post(
            "recording",
            JSON,
            &recording("first", &s3.url("/ok/1.mp3", 3600))
        )
        .status,
        200
    );
    assert!(eventually(settle(), || settled(&data, 1)));
    assert_eq!(
        s.post(
            "recording",
            JSON,
            &recording("second", &s3.url("/ok/2.mp3", 3600))
        )
        .status,
        200
    );
    assert!(eventually(PATIENCE, || s
        .metric("didgate_recordings_paused")
        == Some(1.0)));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(states(&data)["second"]["state"], "pending");
    assert_eq!(s.admin_get("/readyz").status, 200);
    assert_eq!(s.post("cdr", JSON, &cdr("during-pause")).status, 200);
    config(dir.path(), "max_archive_bytes = 1000000000\n");
    s.signal(libc::SIGHUP);
    assert!(
        eventually(settle(), || settled(&data, 2)),
        "{:#?}",
        states(&data)
    );
    assert_eq!(states(&data)["second"]["state"], "fetched");
}

#[test]
fn a_slow_drip_is_cut_at_download_timeout_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let cfg = write_config(
        dir.path(),
        "didgate.toml",
        "[recordings]\nallow_http = true\nallow_private_addresses = [\"127.0.0.1/32\"]\n\
         retry_initial = \"1h\"\ndownload_timeout = \"2s\"\ndisk_margin_bytes = 0\n",
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let body = recording("drip", &s3.url("/drip.mp3", 7200));
    assert_eq!(s.post("recording", JSON, &body).status, 200);
    // Cut at 2 s of a 20 s drip: failed, with a next try an hour later.
    assert!(
        eventually(settle(), || states(&data)
            .get("drip")
            .is_some_and(|r| r["attempts"] == 1)),
        "{:#?}",
        states(&data)
    );
    let r = &states(&data)["drip"];
    assert_eq!(r["state"], "failed", "{r:#?}");
    assert!(r["next_try_ms"].as_i64().is_some(), "{r:#?}");
    assert_eq!(
        std::fs::read_dir(data.join("recordings/.partial"))
            .unwrap()
            .count(),
        0
    );
}
