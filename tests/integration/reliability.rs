//! "A 200 means the event is on disk", attacked: kill -9 rounds, the order of answers and
//! syncs, I/O errors and a fatal storage error, a full disk, map growth under a reader, reader
//! abuse, and a soak. Each is bounded in time; `DIDGATE_LONG=1` runs the long forms
//! (docs/reliability.md has the figures of the last long run).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util::*;

fn long() -> bool {
    std::env::var_os("DIDGATE_LONG").is_some()
}

/// The sync shim (`shim/sync_shim.c`), compiled once per test run.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("didgate_sync_shim.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/shim/sync_shim.c");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) builds the fault-injection shim");
        assert!(st.success(), "compiling {}", src.display());
        out
    })
}

/// A server running under the shim; `ctl` steers it, `log` records syncs.
struct Shimmed {
    server: Server,
    ctl: PathBuf,
    log: PathBuf,
}

fn start_shimmed(dir: &Path, extra: &[&str]) -> Shimmed {
    let ctl = dir.join("shim.ctl");
    let log = dir.join("shim.log");
    std::fs::write(&ctl, "").unwrap();
    let env = [
        ("LD_PRELOAD", shim().to_str().unwrap().to_string()),
        ("DIDGATE_SHIM_CTL", ctl.to_str().unwrap().to_string()),
        ("DIDGATE_SHIM_LOG", log.to_str().unwrap().to_string()),
    ];
    let server = Server::start_with(&dir.join("data"), extra, None, &env).unwrap();
    Shimmed { server, ctl, log }
}

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // time_t and c_long are 32-bit on armv7.
    #[allow(clippy::useless_conversion)]
    let ns = i64::from(ts.tv_sec) * 1_000_000_000 + i64::from(ts.tv_nsec);
    ns
}

/// When the shim saw successful `call`s complete ("fdatasync", or "meta" for a meta-page write).
fn completions(log: &Path, call: &str) -> Vec<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let what = f.next()?;
            let t: i64 = f.next()?.parse().ok()?;
            let rc: i64 = f.next()?.parse().ok()?;
            (what == call && rc >= 0).then_some(t)
        })
        .collect()
}

fn assert_consistent(data: &Path) {
    let out = cli(&["check", "--data", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "store inconsistent: {text}");
}

/// Whether each request's answer came after its commit was on disk: a meta-page write (the
/// commit) after the request was sent, then a completed fdatasync after that write (the store
/// flushes meta pages with the next fdatasync, not on their own), both before the answer.
fn answers_wait_for_a_sync(extra: &[&str], dir: &Path, clients: usize) -> Vec<bool> {
    let s = start_shimmed(dir, extra);
    std::fs::write(&s.ctl, "delay_ms=40").unwrap();
    // With several clients, requests queue while a commit flushes: batches then rely on the
    // next commit's fdatasync for their meta page, not on a flush of their own.
    let spans: Vec<(i64, i64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let server = &s.server;
                scope.spawn(move || {
                    let mut c = server.connect();
                    let mut spans = Vec::new();
                    for i in 0..10 {
                        let id = format!("sync-{client}-{i}");
                        let req = request(&server.path("cdr"), JSON, cdr(&id).as_bytes(), "");
                        let sent = monotonic_ns();
                        c.send(&req);
                        assert_eq!(c.response().status, 200);
                        spans.push((sent, monotonic_ns()));
                    }
                    spans
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let syncs = completions(&s.log, "fdatasync");
    let metas = completions(&s.log, "meta");
    spans
        .iter()
        .map(|(sent, answered)| {
            metas
                .iter()
                .any(|m| m > sent && m < answered && syncs.iter().any(|t| t > m && t < answered))
        })
        .collect()
}

#[test]
fn no_200_before_the_fsync_that_covers_it() {
    if skip_under_emulation("no_200_before_the_fsync_that_covers_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let covered = answers_wait_for_a_sync(&[], tmp.path(), 1);
    assert!(
        covered.iter().all(|c| *c),
        "a 200 left before its sync: {covered:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let covered = answers_wait_for_a_sync(&[], tmp.path(), 8);
    assert_eq!(covered.len(), 80);
    assert!(
        covered.iter().all(|c| *c),
        "under concurrency a 200 left before its sync: {covered:?}"
    );
}

#[test]
fn the_sync_order_check_catches_a_gateway_that_answers_before_syncing() {
    if skip_under_emulation("the_sync_order_check_catches_a_gateway_that_answers_before_syncing") {
        return;
    }
    // The same check against a gateway that does not sync before answering (interval mode
    // with a long interval): it must fail, or the test above proves nothing.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "interval.toml",
        "durability = \"interval\"\nsync_interval = \"60s\"\n",
    );
    let covered = answers_wait_for_a_sync(&["--config", &cfg], tmp.path(), 1);
    assert!(
        covered.iter().all(|c| !*c),
        "interval mode should answer before syncing: {covered:?}"
    );
}

#[test]
fn failed_syncs_answer_503_then_recover_and_a_fatal_error_exits_for_a_restart() {
    if skip_under_emulation(
        "failed_syncs_answer_503_then_recover_and_a_fatal_error_exits_for_a_restart",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = start_shimmed(tmp.path(), &[]);
    let data = tmp.path().join("data");
    let mut acked = Vec::new();
    let mut post = |id: &str| {
        let mut c = s.server.connect();
        c.send(&request(
            &s.server.path("cdr"),
            JSON,
            cdr(id).as_bytes(),
            "",
        ));
        // No answer (the process exiting) counts as a refusal: the sender retries either way.
        let r = c.try_response().unwrap_or(Response {
            status: 0,
            head: String::new(),
            body: String::new(),
        });
        if r.status == 200 {
            acked.push(id.to_string());
        }
        r
    };
    assert_eq!(post("io-0").status, 200);
    std::fs::write(&s.ctl, "fail=sync").unwrap();
    for i in 1..=5 {
        let r = post(&format!("io-{i}"));
        assert_eq!(r.status, 503, "a failed commit is never acknowledged");
        assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    }
    std::fs::write(&s.ctl, "").unwrap();
    // The sender's retries succeed once the fault clears.
    for i in 1..=5 {
        assert_eq!(post(&format!("io-{i}")).status, 200);
    }
    assert!(s.server.stderr().contains("commit of 1 events failed"));
    // A failed meta-page write makes LMDB declare the environment unusable: the gateway must
    // exit non-zero promptly so systemd restarts it.
    std::fs::write(&s.ctl, "fail=meta").unwrap();
    let r = post("io-fatal");
    assert!(r.status == 503 || r.status == 0, "{r:?}");
    let status = s.server.wait();
    assert_eq!(status.code(), Some(70), "exit status for an unusable store");
    let again = Server::start(&data, &[]);
    let stored: HashSet<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    assert_eq!(
        stored.len(),
        acked.len() + usize::from(stored.contains("io-fatal"))
    );
    assert_consistent(&data);
    drop(again);
}

#[test]
fn a_wedged_writer_stops_the_watchdog_and_fails_readyz() {
    if skip_under_emulation("a_wedged_writer_stops_the_watchdog_and_fails_readyz") {
        return;
    }
    // The writer stuck in an 8 s fdatasync: systemd must stop receiving WATCHDOG=1 (so it
    // restarts the service at WatchdogSec) and, past its 5 s threshold, /readyz must say why.
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ctl = tmp.path().join("shim.ctl");
    std::fs::write(&ctl, "").unwrap();
    let env = [
        ("LD_PRELOAD", shim().to_str().unwrap().to_string()),
        ("DIDGATE_SHIM_CTL", ctl.to_str().unwrap().to_string()),
        ("NOTIFY_SOCKET", sock.to_str().unwrap().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
    ];
    let s = Server::start_with(&tmp.path().join("data"), &[], None, &env).unwrap();
    let pings_within = |window: Duration| {
        let end = Instant::now() + window;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while Instant::now() < end {
            if let Ok(len) = manager.recv(&mut buf) {
                n += usize::from(buf[..len].starts_with(b"WATCHDOG=1"));
            }
        }
        n
    };
    assert!(
        pings_within(Duration::from_millis(1000)) >= 2,
        "pings while healthy"
    );
    std::fs::write(&ctl, "delay_ms=8000").unwrap();
    let wedged_at = Instant::now();
    let stuck = std::thread::spawn({
        let (addr, path) = (s.addr, s.path("cdr"));
        move || {
            let mut c = Conn::open(addr);
            c.send(&request(&path, JSON, cdr("wedge").as_bytes(), ""));
            c.try_response().map(|r| r.status)
        }
    });
    std::thread::sleep(Duration::from_millis(1000));
    // Pings sent before the stall was visible (the heartbeat is allowed one period of age)
    // are still queued on the socket; they are not part of the wedged window.
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while manager.recv(&mut buf).is_ok() {}
    manager.set_nonblocking(false).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(
        pings_within(Duration::from_millis(2500)),
        0,
        "no pings while the writer is wedged"
    );
    std::thread::sleep(Duration::from_millis(6000).saturating_sub(wedged_at.elapsed()));
    let ready = s.admin_get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("writer has not run"), "{}", ready.body);
    std::fs::write(&ctl, "").unwrap();
    // The stuck commit finishes; the request waited past commit_timeout, so it got 503 and
    // the sender's retry is recognised as a duplicate.
    assert_eq!(stuck.join().unwrap(), Some(503));
    assert!(
        pings_within(Duration::from_millis(5000)) >= 1,
        "pings resume"
    );
    assert_eq!(s.post("cdr", JSON, &cdr("wedge")).body, "duplicate\n");
}

#[test]
fn kill_9_rounds_lose_no_acknowledged_event() {
    let rounds = if long() { 200 } else { 20 };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..rounds {
        let s = Server::start(&data, &[]);
        // A pseudo-random kill moment between 50 and 400 ms into the load.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(50 + seed % 350);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..6)
            .map(|t| {
                let (addr, path, acked, stop) =
                    (s.addr, s.path("cdr"), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("r{round}-{t}-{i}");
                        i += 1;
                        if c.stream
                            .write_all(&request(&path, JSON, cdr(&id).as_bytes(), ""))
                            .is_err()
                        {
                            return;
                        }
                        match c.try_response() {
                            Some(r) if r.status == 200 => acked.lock().unwrap().push(id),
                            Some(r) => panic!("unexpected {r:?}"),
                            None => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in senders {
            h.join().unwrap();
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in export(&data) {
        *seen
            .entry(e["payload"]["callid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > rounds * 10,
        "load ran: {} acknowledged",
        acked.len()
    );
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| seen.get(*id) != Some(&1))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events missing or doubled: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert_consistent(&data);
    eprintln!(
        "kill -9: {rounds} rounds, {} acknowledged, {} stored, 0 lost",
        acked.len(),
        seen.len()
    );
}

/// Mounts a tmpfs of `mib` MiB at `dir` (root, as in CI), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_turns_ingest_to_503_and_it_comes_back_when_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("small"), 24);
    let data = fs.0.join("data");
    // Ballast to free later.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
    let cfg = write_config(
        tmp.path(),
        "disk.toml",
        "min_free_disk_bytes = 4194304\nmap_size_bytes = 1048576\n",
    );
    let s = Server::start(&data, &["--config", &cfg]);
    let (acked, refused) = fill_until_refused(&s, "disk", 40_000, 2000);
    let r = refused.expect("a 24 MiB filesystem fills up");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    // Refusals continue (no crash, no SIGBUS) while the disk stays full.
    for _ in 0..3 {
        assert_eq!(s.post("cdr", JSON, &cdr("while-full")).status, 503);
    }
    std::fs::remove_file(&ballast).unwrap();
    let freed = Instant::now();
    let mut back = false;
    while freed.elapsed() < PATIENCE {
        if s.post("cdr", JSON, &cdr("after-free")).status == 200 {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(back, "ingest resumed after space was freed");
    eprintln!(
        "disk full: {} acknowledged before refusals, first 200 {:?} after freeing",
        acked.len(),
        freed.elapsed()
    );
    let stored: HashSet<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap().to_string())
        .collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "acknowledged events kept"
    );
    assert_consistent(&data);
}

/// Regression: a map growth the address space had no room for crashed the writer (LMDB
/// unmaps the old map before it maps the new one, and the next call faulted on the old
/// address). The growth is now refused before LMDB sees it: events get 503 with Retry-After
/// once the map is full, the gateway lives, and growth resumes when there is room.
#[test]
fn a_map_growth_without_room_is_refused_not_a_crash() {
    if skip_under_emulation("a_map_growth_without_room_is_refused_not_a_crash") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        "map_size_bytes = 1048576\nfile_headroom_bytes = 0\nmin_free_disk_bytes = 0\n",
    );
    let s = start_shimmed(tmp.path(), &["--config", &cfg]);
    std::fs::write(&s.ctl, "fail_mmap_over=1048576").unwrap();
    let body = |i: usize| {
        format!(
            r#"{{"event":"cdr","callid":"g{i}","pad":"{}"}}"#,
            "x".repeat(2000)
        )
    };
    let mut stored = Vec::new();
    let refused = (0..5000).find_map(|i| {
        let r = s.server.post("cdr", JSON, &body(i));
        match r.status {
            200 => {
                stored.push(i);
                None
            }
            503 => Some(r),
            other => panic!("status {other}: {}", r.body),
        }
    });
    let r = refused.expect("the 1 MiB map filled up");
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    let log = s.server.stderr();
    assert!(
        log.contains("cannot grow the map to 2097152 bytes"),
        "{log}"
    );
    assert_eq!(
        s.server.admin_get("/healthz").status,
        200,
        "the gateway is alive"
    );
    // Room again: the map grows and events are taken.
    std::fs::write(&s.ctl, "").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while s.server.post("cdr", JSON, &body(9999)).status != 200 {
        assert!(Instant::now() < deadline, "ingest did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = tmp.path().join("data");
    drop(s);
    assert_consistent(&data);
    let n = export(&data).len();
    assert_eq!(
        n,
        stored.len() + 1,
        "every acknowledged event, and no other"
    );
}

#[test]
fn the_map_grows_under_load_while_a_reader_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "map.toml",
        "map_size_bytes = 1048576\nmax_map_size_bytes = 1073741824\nmin_free_disk_bytes = 0\n",
    );
    let s = Server::start(&data, &["--config", &cfg]);
    let total_mib = if long() { 200 } else { 50 };
    let pad = "m".repeat(50_000);
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = std::thread::spawn({
        let (data, done, reads) = (data.clone(), done.clone(), reads.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                let out = cli(&["export", "--raw", "--data", data.to_str().unwrap()]);
                assert!(
                    out.status.success(),
                    "reader failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut c = s.connect();
    let n = total_mib * 1024 * 1024 / 50_000;
    for i in 0..n {
        let body = format!(r#"{{"event":"cdr","callid":"map-{i}","pad":"{pad}"}}"#);
        c.send(&request(&s.path("cdr"), JSON, body.as_bytes(), ""));
        assert_eq!(c.response().status, 200, "event {i}");
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(export(&data).len(), n);
    assert!(s.stderr().contains("grew the LMDB map"));
    assert_consistent(&data);
}

#[test]
fn killed_and_stuck_readers_do_not_hurt_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let mut c = s.connect();
    for i in 0..300 {
        c.send(&request(
            &s.path("cdr"),
            JSON,
            cdr(&format!("abuse-{i}")).as_bytes(),
            "",
        ));
        assert_eq!(c.response().status, 200);
    }
    // LMDB's reader table has 126 slots; kill far more readers than that mid-read.
    let kills = if long() { 1000 } else { 200 };
    for i in 0..kills {
        let mut child = didgate()
            .args(["export", "--data"])
            .arg(&data)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(200 + (i % 7) * 300));
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(s.post("cdr", JSON, &cdr("after-kills")).status, 200);
    assert_eq!(export(&data).len(), 301, "reads still work");

    // A follower whose consumer stopped reading: blocked on its pipe, it must not pin a read
    // transaction, or the pages pruning frees could never be reused and the file would grow
    // with everything ever written.
    let mut stuck = didgate()
        .args(["tail", "-f", "-n", "0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pad = "s".repeat(30_000);
    let rounds = 12;
    for round in 0..rounds {
        for i in 0..60 {
            let body = format!(r#"{{"event":"cdr","callid":"stuck-{round}-{i}","pad":"{pad}"}}"#);
            c.send(&request(&s.path("cdr"), JSON, body.as_bytes(), ""));
            assert_eq!(c.response().status, 200);
        }
        // Keep only the newest events: prune everything stored before now.
        std::thread::sleep(Duration::from_millis(20));
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let out = cli(&["prune", "--data", data.to_str().unwrap(), "--before", &now]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The pages in use, not the file: the file also holds the zero-filled room the gateway
    // keeps past the data (`file_headroom_bytes`).
    let written = rounds * 60 * 30_000;
    let out = cli(&["stats", "--json", "--data", data.to_str().unwrap()]);
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used = stats["database"]["used_bytes"].as_u64().unwrap() as usize;
    assert!(
        used < written / 2,
        "{used} bytes of the map in use after {written} written and pruned: pages not reused"
    );
    let _ = stuck.kill();
    let _ = stuck.wait();
    drop(stuck.stdout.take());
    assert_consistent(&data);
}

#[test]
fn sigterm_under_load_answers_or_refuses_but_never_drops_a_stored_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let unanswered: Arc<Mutex<Vec<String>>> = Arc::default();
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (addr, path, unanswered) = (s.addr, s.path("cdr"), unanswered.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut c = Conn::open(addr);
                for i in 0.. {
                    let id = format!("g{t}-{i}");
                    if c.stream
                        .write_all(&request(&path, JSON, cdr(&id).as_bytes(), ""))
                        .is_err()
                    {
                        unanswered.lock().unwrap().push(id);
                        break;
                    }
                    match c.try_response() {
                        Some(r) if r.status == 200 => acked.push(id),
                        Some(r) => {
                            assert_eq!(r.status, 503, "only 200 or 503 while stopping");
                            break;
                        }
                        None => {
                            unanswered.lock().unwrap().push(id);
                            break;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.stop().success(), "exit 0 after a graceful stop");
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stored: HashSet<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap().to_string())
        .collect();
    assert!(acked.iter().all(|id| stored.contains(id)));
    let unanswered = unanswered.lock().unwrap();
    let dropped: Vec<_> = unanswered
        .iter()
        .filter(|id| stored.contains(*id))
        .collect();
    assert!(
        dropped.is_empty(),
        "stored but the connection was dropped unanswered: {dropped:?}"
    );
}

#[test]
fn soak_mixed_load_with_a_follower() {
    let secs = std::env::var("DIDGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long() { 600 } else { 15 });
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    // One event first, and the follower started with -n 1: once its first line is out, it
    // is following, and nothing the senders store can fall before its starting point.
    assert_eq!(s.post("cdr", JSON, &cdr("soak-seed")).status, 200);
    let mut follower = didgate()
        .args(["tail", "-f", "-n", "1", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("soak-seed"), "{first}");
    let followed = Arc::new(AtomicU64::new(1));
    let follow_thread = std::thread::spawn({
        let followed = followed.clone();
        move || {
            for line in lines {
                if line.is_err() {
                    break;
                }
                followed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (addr, token) = (s.addr, s.token.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let (mut ok, mut bad) = (0u64, 0u64);
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let id = format!("soak-{t}-{i}");
                    let (hook, ct, body) = match i % 10 {
                        0..=6 => ("cdr", JSON, cdr(&id)),
                        // A URL the archive's policy refuses without a DNS lookup (CI has no
                        // network): the soak measures the gateway and the archive's
                        // bookkeeping, not the machine's resolver.
                        7 | 8 => ("recording", JSON, format!(r#"{{"event":"recording","callid":"{id}","recording_url":"https://127.0.0.1:1/{id}.mp3"}}"#)),
                        _ => ("sms", FORM, format!("src=1&dst=2&message=soak+{id}&received_at=2026-05-13+12%3A45%3A40+UTC")),
                    };
                    c.send(&request(&format!("/hooks/{token}/{hook}"), ct, body.as_bytes(), ""));
                    match c.try_response() {
                        Some(r) if r.status == 200 => ok += 1,
                        _ => bad += 1,
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let mut rss_kib = Vec::new();
    let pid = s.pid();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let anon: u64 = status
            .lines()
            .find_map(|l| {
                l.strip_prefix("RssAnon:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        rss_kib.push(anon);
    }
    let (ok, bad) = senders
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let stats: serde_json::Value =
        serde_json::from_str(&read_ok(&data, &["stats", "--json"])).unwrap();
    let stored = stats["events"].as_u64().unwrap();
    // The follower may lag on a loaded machine; it fails only by stalling for PATIENCE.
    let (mut seen, mut progress_at) = (0, Instant::now());
    while seen < stored && progress_at.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(50));
        let now_seen = followed.load(Ordering::Relaxed);
        if now_seen > seen {
            (seen, progress_at) = (now_seen, Instant::now());
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    follow_thread.join().unwrap();
    let peak = rss_kib.iter().max().copied().unwrap_or(0);
    let third = rss_kib.len() / 3;
    let first: u64 = rss_kib[..third.max(1)].iter().max().copied().unwrap_or(0);
    let last: u64 = rss_kib[rss_kib.len() - third.max(1)..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    eprintln!(
        "soak {secs}s: {ok} acknowledged, {bad} not, {stored} stored, {} followed, anon RSS first third {first} KiB, last third {last} KiB, peak {peak} KiB, file {} bytes",
        followed.load(Ordering::Relaxed),
        std::fs::metadata(data.join("data.mdb")).unwrap().len()
    );
    assert_eq!(bad, 0, "every request answered 200");
    assert_eq!(stored, ok + 1, "stored == acknowledged (and the seed)");
    assert_eq!(
        followed.load(Ordering::Relaxed),
        stored,
        "the follower saw every event"
    );
    assert!(peak < 256 * 1024, "anon RSS {peak} KiB");
    assert!(
        last <= first + first / 2 + 8 * 1024,
        "anon RSS grew from {first} to {last} KiB"
    );
    assert_consistent(&data);
}
