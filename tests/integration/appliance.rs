//! Running as an appliance: admin endpoints, disk headroom, peer filter and token rotation by
//! reload, systemd notifications and socket activation, interval durability, prune, backup.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn admin_endpoints_report_traffic_and_health() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &[]);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert_eq!(s.post("sms", FORM, SEED_SMS).status, 200);
    assert_eq!(s.post("cdr", JSON, "{").status, 200);
    let r = s.admin_get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    for line in [
        "didgate_requests_total{hook=\"cdr\",status=\"200\"} 3",
        "didgate_requests_total{hook=\"sms\",status=\"200\"} 1",
        "didgate_events_stored_total{kind=\"cdr\"} 1",
        "didgate_events_stored_total{kind=\"sms\"} 1",
        "didgate_duplicates_total 1",
        "didgate_quarantined_total 1",
        "didgate_open_connections ",
        "didgate_queue_depth 0",
        "didgate_commit_seconds_count ",
        "didgate_batch_events_bucket{le=\"+Inf\"} ",
        "didgate_disk_free_bytes ",
    ] {
        assert!(r.body.contains(line), "missing {line}:\n{}", r.body);
    }
    assert_eq!(s.admin_get("/healthz").status, 200);
    let ready = s.admin_get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(s.admin_get("/nope").status, 404);
    // The admin listener is not the hook listener: hooks are not served there.
    let mut c = Conn::open(s.admin.unwrap());
    c.send(&request(&s.path("cdr"), JSON, SEED_CDR.as_bytes(), ""));
    assert_eq!(c.response().status, 404);
}

#[test]
fn below_the_disk_headroom_events_get_503_and_readyz_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    // More free space than any disk has: the condition holds from the first check.
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        "min_free_disk_bytes = 18446744073709551615\n",
    );
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    let deadline = Instant::now() + PATIENCE;
    while !s.admin_get("/readyz").body.contains("free disk space") {
        assert!(Instant::now() < deadline, "disk condition never detected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = s.admin_get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("free disk space"), "{}", ready.body);
    let r = s.post("cdr", JSON, SEED_CDR);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    assert!(export(&data).is_empty());
    assert!(
        s.admin_get("/metrics")
            .body
            .contains("didgate_rejections_total{reason=\"disk_low\"} 1")
    );
    // Regression: a floor this high overflowed the zero fill's own floor and the writer
    // panicked (the gateway then exited); it must keep refusing, alive.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.admin_get("/healthz").status, 200);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 503);
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
}

/// Waits until the server's log holds `n` lines containing `what`.
fn await_log(s: &Server, what: &str, n: usize) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = s.stderr();
        if log.matches(what).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what:?} in {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: deleting `token` from the file and reloading revived the token the process
/// had started with (retired two reloads earlier) and retired the live one.
#[test]
fn a_reload_without_token_uses_the_kept_token_and_says_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    let data = tmp.path().join("data");
    // A token kept in the data directory, as a first start without `token` leaves.
    drop(Server::start(&data, &[]));
    let kept = std::fs::read_to_string(data.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let cfg = write_config(tmp.path(), "didgate.toml", &format!("token = \"{old}\"\n"));
    let s = Server::start(&data, &["--config", &cfg]);
    let status = |token: &str, id: &str| {
        let mut c = s.connect();
        c.send(&request(
            &format!("/hooks/{token}/cdr"),
            JSON,
            cdr(id).as_bytes(),
            "",
        ));
        c.response().status
    };
    // The file, what the log must say, and the status each token then gets.
    type Step<'a> = (String, &'a str, [(&'a str, u16); 3]);
    let steps: [Step; 4] = [
        (
            format!("token = \"{new}\"\nprevious_token = \"{old}\"\n"),
            "token changed to the configured one; the previous token is still accepted",
            [(old, 200), (new, 200), (&kept, 404)],
        ),
        (
            format!("token = \"{new}\"\n"),
            "token unchanged",
            [(old, 404), (new, 200), (&kept, 404)],
        ),
        (
            String::new(),
            "token changed to the one kept in the data directory; the previous token is no longer accepted",
            [(old, 404), (new, 404), (&kept, 200)],
        ),
        (
            "log_level = \"debug\"\nqueue_capacity = 8\n".to_string(),
            "applied log_level; token unchanged; waiting for a restart: queue_capacity",
            [(old, 404), (new, 404), (&kept, 200)],
        ),
    ];
    for (n, (text, said, answers)) in steps.iter().enumerate() {
        write_config(tmp.path(), "didgate.toml", text);
        s.signal(libc::SIGHUP);
        let log = await_log(&s, "configuration reloaded", n + 1);
        assert!(log.contains(said), "step {n}: {log}");
        for (i, (token, want)) in answers.iter().enumerate() {
            assert_eq!(
                status(token, &format!("s{n}-{i}")),
                *want,
                "step {n}, token {i}"
            );
        }
    }
    let log = s.stderr();
    for t in [old, new, kept.as_str()] {
        assert!(!log.contains(t), "a token in the log: {log}");
    }
}

/// `min_free_disk_bytes` applies on reload: raised past the free space, ingest answers 503;
/// lowered again, it takes events without a restart.
#[test]
fn the_free_disk_floor_changes_on_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "didgate.toml", "min_free_disk_bytes = 0\n");
    let s = Server::start(&tmp.path().join("data"), &["--config", &cfg]);
    assert_eq!(s.post("cdr", JSON, &cdr("floor-1")).status, 200);
    write_config(
        tmp.path(),
        "didgate.toml",
        "min_free_disk_bytes = 1152921504606846976\n",
    );
    s.signal(libc::SIGHUP);
    let log = await_log(&s, "configuration reloaded", 1);
    assert!(log.contains("applied min_free_disk_bytes"), "{log}");
    let r = s.post("cdr", JSON, &cdr("floor-2"));
    assert_eq!(r.status, 503);
    assert_eq!(s.admin_get("/readyz").status, 503);
    write_config(tmp.path(), "didgate.toml", "min_free_disk_bytes = 0\n");
    s.signal(libc::SIGHUP);
    await_log(&s, "configuration reloaded", 2);
    let deadline = Instant::now() + PATIENCE;
    while s.post("cdr", JSON, &cdr("floor-3")).status != 200 {
        assert!(Instant::now() < deadline, "ingest did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reload_applies_allow_from_and_rotates_the_token_without_downtime() {
    let tmp = tempfile::tempdir().unwrap();
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        &format!("token = \"{old}\"\nallow_from = [\"192.0.2.0/24\"]\n"),
    );
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    // 127.0.0.1 is not allowed: closed before a byte is read, nothing answered.
    let (resp, closed) = s.exchange(&request(&s.path("cdr"), JSON, SEED_CDR.as_bytes(), ""));
    assert!(resp.is_empty() && closed);
    let post_with = |token: &str, id: &str| {
        let mut c = s.connect();
        c.send(&request(
            &format!("/hooks/{token}/cdr"),
            JSON,
            cdr(id).as_bytes(),
            "",
        ));
        c.response().status
    };
    write_config(
        tmp.path(),
        "didgate.toml",
        &format!(
            "token = \"{new}\"\nprevious_token = \"{old}\"\nallow_from = [\"127.0.0.0/8\", \"::1\"]\n"
        ),
    );
    s.signal(libc::SIGHUP);
    await_log(&s, "configuration reloaded", 1);
    assert_eq!(
        post_with(old, "r1"),
        200,
        "old token accepted during the rotation"
    );
    assert_eq!(post_with(new, "r2"), 200);
    write_config(tmp.path(), "didgate.toml", &format!("token = \"{new}\"\n"));
    s.signal(libc::SIGHUP);
    await_log(&s, "configuration reloaded", 2);
    assert_eq!(post_with(old, "r3"), 404, "old token retired");
    assert_eq!(post_with(new, "r4"), 200);
    // A broken file is refused and the running configuration kept.
    write_config(tmp.path(), "didgate.toml", "token = \"short\"\n");
    s.signal(libc::SIGHUP);
    await_log(&s, "reload refused", 1);
    assert_eq!(post_with(new, "r5"), 200);
    assert!(
        !s.stderr().contains(new) && !s.stderr().contains(old),
        "tokens never logged"
    );
    let m = s.admin_get("/metrics").body;
    assert!(
        m.contains("didgate_rejections_total{reason=\"denied_peer\"} 1"),
        "{m}"
    );
}

#[test]
fn systemd_notifications_ready_watchdog_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("notify.sock");
    let manager = UnixDatagram::bind(&sock).unwrap();
    manager.set_read_timeout(Some(PATIENCE)).unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock.to_str().unwrap().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
    ];
    let s = Server::start_with(&tmp.path().join("data"), &[], None, &env).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = manager.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen[0].starts_with("READY=1"), "{seen:?}");
    assert!(s.stop().success());
    loop {
        let n = manager.recv(&mut buf).expect("STOPPING before exit");
        if String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1") {
            break;
        }
    }
}

/// Sets `LISTEN_PID` to this process and `LISTEN_FDS` (and `LISTEN_FDNAMES`), as systemd does
/// for the process it passes sockets to. Between fork and exec: no allocation, only
/// async-signal-safe calls (setenv in the single-threaded child).
///
/// # Safety
/// Only in a `pre_exec` closure of a command that sets no environment of its own.
unsafe fn set_listen_env(fds: &std::ffi::CStr, names: Option<&std::ffi::CStr>) {
    let mut digits = [0u8; 24];
    let mut i = digits.len() - 1;
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u32;
    loop {
        i -= 1;
        digits[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    // SAFETY: every pointer is a NUL-terminated string that outlives the call (`digits` ends
    // with its zeroed last byte); the caller is the child between fork and exec.
    unsafe {
        libc::setenv(c"LISTEN_PID".as_ptr(), digits[i..].as_ptr().cast(), 1);
        libc::setenv(c"LISTEN_FDS".as_ptr(), fds.as_ptr(), 1);
        if let Some(names) = names {
            libc::setenv(c"LISTEN_FDNAMES".as_ptr(), names.as_ptr(), 1);
        }
    }
}

/// `didgate serve` as systemd starts it with socket activation: `listener` (if any) at fd 3,
/// `LISTEN_PID` naming the process itself, `LISTEN_FDS=1`.
fn activated(data: &Path, listener: Option<&std::net::TcpListener>) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.map(|l| l.as_raw_fd());
    let mut cmd = didgate();
    cmd.args([
        "serve",
        "--admin-listen",
        "off",
        "--listen",
        "127.0.0.1:1",
        "--data",
    ])
    .arg(data)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls and no allocation between fork and exec: dup2
    // places the listener at fd 3 and fcntl clears CLOEXEC (dup2 onto itself keeps it);
    // setenv names this very process, as systemd does (the command sets no environment of its
    // own, so exec passes `environ` on).
    unsafe {
        cmd.pre_exec(move || {
            match fd {
                Some(fd) => {
                    if fd != 3 && libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                None => {
                    libc::close(3);
                }
            }
            set_listen_env(c"1", None);
            Ok(())
        });
    }
    cmd
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = activated(&data, Some(&listener)).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(
        line.contains(&addr.to_string()),
        "serves on the passed socket: {line}"
    );
    drop(listener);
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let mut c = Conn::open(addr);
    c.send(&request(
        &format!("/hooks/{}/cdr", token.trim()),
        JSON,
        SEED_CDR.as_bytes(),
        "",
    ));
    assert_eq!(c.response().status, 200);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(child).success());

    // The descriptor went missing on the way: refused, not served on whatever file gets fd 3.
    let mut child = activated(&tmp.path().join("other"), None).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_exit(child);
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert!(err.contains("not a listening socket"), "{err}");
}

#[test]
fn interval_durability_acknowledges_and_survives_a_process_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        "durability = \"interval\"\nsync_interval = \"50ms\"\n",
    );
    let data = tmp.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    for i in 0..20 {
        assert_eq!(s.post("cdr", JSON, &cdr(&format!("iv-{i}"))).status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let m = s.admin_get("/metrics").body;
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap()
    };
    let (commits, fsyncs) = (
        value("didgate_commits_total "),
        value("didgate_fsyncs_total "),
    );
    assert!(
        fsyncs >= 1 && fsyncs < commits,
        "commits {commits}, syncs {fsyncs}"
    );
    s.kill9();
    assert_eq!(
        export(&data).len(),
        20,
        "a process crash loses nothing in interval mode"
    );
}

#[test]
fn prune_and_backup_while_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    for i in 0..30 {
        assert_eq!(s.post("cdr", JSON, &cdr(&format!("b-{i}"))).status, 200);
    }
    // Backup while a sender keeps posting.
    let sender = std::thread::spawn({
        let (addr, path) = (s.addr, s.path("cdr"));
        move || {
            let mut c = Conn::open(addr);
            for i in 0..200 {
                c.send(&request(
                    &path,
                    JSON,
                    cdr(&format!("during-{i}")).as_bytes(),
                    "",
                ));
                assert_eq!(c.response().status, 200);
            }
        }
    });
    let backup = tmp.path().join("backup");
    let out = read_ok(&data, &["backup", backup.to_str().unwrap()]);
    assert!(out.starts_with("backed up"), "{out}");
    sender.join().unwrap();
    let copied = export(&backup);
    assert!(
        copied.len() >= 30,
        "the snapshot holds what was acknowledged before it"
    );
    assert_eq!(
        std::fs::read_to_string(backup.join("token")).unwrap(),
        std::fs::read_to_string(data.join("token")).unwrap()
    );
    let again = cli(&[
        "backup",
        "--data",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "refuses to overwrite a backup"
    );
    // A backup is a working store: a gateway starts on it.
    let restored = Server::start(&backup, &[]);
    assert_eq!(restored.token, s.token);
    drop(restored);

    let future = cli(&[
        "prune",
        "--data",
        data.to_str().unwrap(),
        "--before",
        "2999-01-01",
    ]);
    assert_eq!(future.status.code(), Some(2));
    let all = export(&data);
    let cut = all[10]["stored_at"].as_str().unwrap().to_string();
    let pruned = read_ok(&data, &["prune", "--before", &cut]);
    assert!(pruned.starts_with("pruned "), "{pruned}");
    let left = export(&data);
    assert!(left.len() < all.len() && left.len() >= all.len() - 11);
    assert!(
        left.iter()
            .all(|e| e["stored_at"].as_str().unwrap() >= cut.as_str())
    );
    let stats: serde_json::Value =
        serde_json::from_str(&read_ok(&data, &["stats", "--json"])).unwrap();
    assert_eq!(
        stats["events"].as_u64().unwrap() as usize,
        left.len(),
        "counters follow"
    );
    // Ingest goes on, with the sequence continuing.
    assert_eq!(s.post("cdr", JSON, &cdr("after-prune")).status, 200);
    let last = export(&data).pop().unwrap();
    assert_eq!(last["seq"].as_u64().unwrap() as usize, all.len() + 1);
}

/// `didgate serve` with two passed sockets, as `didgate.socket` and `didgate-http01.socket`
/// pass them: fd 3 named `didgate`, fd 4 named `http01` (`LISTEN_FDNAMES`).
fn activated_pair(
    data: &Path,
    config: &str,
    webhooks: &std::net::TcpListener,
    http01: &std::net::TcpListener,
) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds = [webhooks.as_raw_fd(), http01.as_raw_fd()];
    let mut cmd = didgate();
    cmd.args([
        "serve",
        "--admin-listen",
        "off",
        "--config",
        config,
        "--data",
    ])
    .arg(data)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec: each socket is first copied
    // above fd 100 (so placing one at 3 or 4 cannot close the other), then placed with dup2,
    // which clears CLOEXEC on the copy; setenv names this very process, as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 2];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            set_listen_env(c"2", Some(c"didgate:http01"));
            Ok(())
        });
    }
    cmd
}

#[test]
fn socket_activation_passes_https_and_the_acme_http01_socket_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = crate::tls::TestPki::new();
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    pki.write_leaf(&cert, &key);
    let config = write_config(
        tmp.path(),
        "didgate.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nhttp_redirect = \"127.0.0.1:1\"\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    let webhooks = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http01 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (wa, ha) = (webhooks.local_addr().unwrap(), http01.local_addr().unwrap());
    let data = tmp.path().join("data");
    let mut child = activated_pair(&data, &config, &webhooks, &http01)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.contains(&wa.to_string()), "{line}");
    drop((webhooks, http01));
    // The named socket is the plain ACME listener: challenges only, a webhook gets 404.
    let mut c = Conn::open(ha);
    c.send(&request("/hooks/x/cdr", JSON, SEED_CDR.as_bytes(), ""));
    let r = c.response();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("ACME challenges only"), "{}", r.body);
    // The other one speaks TLS.
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let r = crate::tls::post_tls(
        wa,
        crate::tls::client_config(Some(&pki.ca_der)),
        &format!("/hooks/{}/cdr", token.trim()),
        JSON,
        SEED_CDR,
    );
    assert_eq!(r.status, 200);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(child).success());
}
