//! Power cuts: what a disk could hold after the power failed, built from the writes a real
//! `serve` made, checked for every acknowledged event.
//!
//! kill -9 leaves the page cache intact, so it never tests fsync. Here `serve` runs under
//! `shim/powercut_shim.c`, which logs every write to `data.mdb` before it is made and a marker
//! after every completed flush. After a kill -9 at a random moment, disk images are rebuilt from
//! the log: every write up to the last completed flush, plus (a disk may write back in any
//! order) random subsets of the later writes, or one of them torn to a prefix of 512-byte
//! sectors. Each image must hold every event answered 200 before the cut, byte for byte, pass
//! `didgate check`, and let `serve` start. A control image with every write applied must equal
//! the file the kill left, which proves the log complete.
//!
//! Scenarios: store creation, map growth, the idle zero fill, `didgate prune` from another
//! process. Negative controls (a disk that drops the last flushes' writes, `durability =
//! "interval"`) show the check detects loss.
//!
//! CI runs a few rounds; `DIDGATE_POWERCUT_ROUNDS=N` runs more (docs/reliability.md has the
//! figures of the long form).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util::*;

/// Bytes per sector a torn write keeps whole.
const SECTOR: usize = 512;

/// Images built per cut beside the flushed one: random subsets, then torn writes.
const SUBSETS: usize = 2;
const TORN: usize = 2;

fn rounds() -> usize {
    std::env::var("DIDGATE_POWERCUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The power-cut shim, compiled once per test run.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("didgate_powercut_shim.so");
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/shim/powercut_shim.c");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .status()
            .expect("a C compiler (cc) builds the power-cut shim");
        assert!(st.success(), "compiling {}", src.display());
        out
    })
}

/// A small deterministic generator (xorshift), seeded per round and printed, so a failing
/// round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One record of the shim's log.
#[derive(Clone, Debug)]
enum Rec {
    Write { at: u64, data: Vec<u8> },
    Flush,
    Truncate(u64),
}

fn parse_log(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut i = 0;
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    while i + 17 <= bytes.len() {
        let (tag, a, b) = (
            bytes[i],
            u64_at(&bytes[i + 1..i + 9]),
            u64_at(&bytes[i + 9..i + 17]),
        );
        i += 17;
        match tag {
            b'W' => {
                let len = usize::try_from(b).unwrap();
                // The kill can cut the log's last append short (a fatal signal ends a write to
                // a file part way); the data write it announced was then never made.
                if i + len > bytes.len() {
                    return out;
                }
                out.push(Rec::Write {
                    at: a,
                    data: bytes[i..i + len].to_vec(),
                });
                i += len;
            }
            b'F' => out.push(Rec::Flush),
            b'T' => out.push(Rec::Truncate(a)),
            other => panic!("unknown log record {other}"),
        }
    }
    // A record header cut short by the kill, likewise.
    out
}

fn apply(image: &mut Vec<u8>, rec: &Rec, keep: Option<usize>) {
    match rec {
        Rec::Write { at, data } => {
            let at = usize::try_from(*at).unwrap();
            let data = &data[..keep.unwrap_or(data.len()).min(data.len())];
            if image.len() < at + data.len() {
                image.resize(at + data.len(), 0);
            }
            image[at..at + data.len()].copy_from_slice(data);
        }
        Rec::Truncate(size) => image.resize(usize::try_from(*size).unwrap(), 0),
        Rec::Flush => {}
    }
}

/// What a disk may hold after the cut: the flushed image, subsets of the later writes, torn
/// writes. Each comes with a name for the failure message.
fn images(log: &[Rec], rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let last_flush = log.iter().rposition(|r| matches!(r, Rec::Flush));
    let split = last_flush.map_or(0, |i| i + 1);
    let mut flushed = Vec::new();
    for r in &log[..split] {
        apply(&mut flushed, r, None);
    }
    let pending: Vec<&Rec> = log[split..]
        .iter()
        .filter(|r| !matches!(r, Rec::Flush))
        .collect();
    let mut out = vec![("flushed".to_string(), flushed.clone())];
    for k in 0..SUBSETS {
        let mut image = flushed.clone();
        for r in &pending {
            if rng.below(2) == 0 {
                apply(&mut image, r, None);
            }
        }
        out.push((
            format!("subset {k} of {} pending writes", pending.len()),
            image,
        ));
    }
    for _ in 0..TORN {
        let mut image = flushed.clone();
        let torn = rng.below(pending.len() as u64 + 1) as usize;
        for (j, r) in pending.iter().enumerate() {
            match j.cmp(&torn) {
                std::cmp::Ordering::Less if rng.below(2) == 0 => apply(&mut image, r, None),
                std::cmp::Ordering::Equal => {
                    if let Rec::Write { data, .. } = r {
                        let sectors = data.len().div_ceil(SECTOR) as u64;
                        let keep = rng.below(sectors + 1) as usize * SECTOR;
                        apply(&mut image, r, Some(keep));
                    }
                }
                _ => {}
            }
        }
        out.push((format!("torn write {torn} of {}", pending.len()), image));
    }
    out
}

/// Every write applied must give the file the kill left, except that the last write may have
/// been made only in part or not at all: it is logged before it is made, and a fatal signal
/// stops a write to a regular file between two pages.
fn assert_log_complete(scenario: Scenario, log: &[Rec], file: &[u8]) {
    let mut all = Vec::new();
    for r in log {
        apply(&mut all, r, None);
    }
    if all == file {
        return;
    }
    let last_write = log.iter().rposition(|r| matches!(r, Rec::Write { .. }));
    let mut but_last = Vec::new();
    for (i, r) in log.iter().enumerate() {
        if Some(i) != last_write {
            apply(&mut but_last, r, None);
        }
    }
    if but_last == file || but_last.len() <= file.len() && file.starts_with(&but_last) {
        return;
    }
    if let Some(Rec::Write { at, data }) = last_write.map(|i| &log[i]) {
        // The longest prefix of the write the file holds; if any prefix explains the file,
        // this one does.
        let at = usize::try_from(*at).unwrap();
        let made = file
            .get(at..)
            .unwrap_or_default()
            .iter()
            .zip(data)
            .take_while(|(f, d)| f == d)
            .count();
        let mut image = but_last;
        apply(
            &mut image,
            &Rec::Write {
                at: at as u64,
                data: data[..made].to_vec(),
            },
            None,
        );
        if image == file {
            return;
        }
    }
    let differ = all.iter().zip(file).position(|(a, b)| a != b);
    let writes_there: Vec<usize> = differ
        .map(|at| {
            log.iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(r, Rec::Write { at: w, data }
                        if (*w as usize) <= at && at < *w as usize + data.len())
                })
                .map(|(i, _)| i)
                .collect()
        })
        .unwrap_or_default();
    panic!(
        "{scenario:?}: the log does not rebuild the file kill -9 left ({} vs {} bytes, first \
         difference at {differ:?}, written there by log records {writes_there:?} of {})",
        all.len(),
        file.len(),
        log.len()
    );
}

/// Bodies answered 200 (stored or duplicate), shared by the clients.
type Acked = Arc<Mutex<Vec<String>>>;

/// A load: how many clients, how large a body's padding, an optional pause of some length
/// after every so many posts (so the writer goes idle and fills headroom), and a tag that
/// keeps callids unique across phases.
#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    pad: usize,
    pause: Option<(usize, Duration)>,
    tag: &'static str,
}

/// Clients posting unique CDRs over keep-alive connections until `stop`, recording each
/// body answered 200.
fn load(
    addr: SocketAddr,
    path: String,
    shape: Load,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<std::thread::JoinHandle<()>> {
    let Load {
        clients,
        pad,
        pause,
        tag,
    } = shape;
    (0..clients)
        .map(|c| {
            let (path, stop, acked, tag) =
                (path.clone(), stop.clone(), acked.clone(), tag.to_string());
            std::thread::spawn(move || {
                let Ok(mut conn) = TcpStream::connect(addr) else {
                    return;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let filler = "p".repeat(pad);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some((burst, idle)) = pause
                        && i > 0
                        && i % burst == 0
                    {
                        std::thread::sleep(idle);
                    }
                    let body =
                        format!(r#"{{"event":"cdr","callid":"{tag}-{c}-{i}","pad":"{filler}"}}"#);
                    let req = request(&path, JSON, body.as_bytes(), "");
                    if conn.write_all(&req).is_err() {
                        return;
                    }
                    let mut status = String::new();
                    if reader.read_line(&mut status).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut answer = vec![0; len];
                    if reader.read_exact(&mut answer).is_err() {
                        return;
                    }
                    if status.starts_with("HTTP/1.1 200") {
                        acked.lock().unwrap().push(body);
                    }
                }
            })
        })
        .collect()
}

/// Checks one image: `check` passes (or the file holds no event and `serve` sets it aside),
/// `serve` starts on it, and every body in `required` is there byte for byte. Returns what is
/// wrong, if anything.
fn verify(image: &[u8], required: &[String], work: &Path) -> Result<(), String> {
    let dir = work.join(format!("image-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.mdb"), image).unwrap();
    let d = dir.to_str().unwrap();
    let check = cli(&["check", "--data", d]);
    if !check.status.success() {
        // Only a store that holds no event yet may fail: a file with no committed transaction
        // (what serve sets aside), or an environment without didgate's databases. `serve`
        // must then start.
        let said = String::from_utf8_lossy(&check.stderr);
        let unborn = didgate::store::header::check(&dir).is_err_and(|d| d.unborn);
        let no_store = unborn || said.contains("no didgate data");
        if !no_store || !required.is_empty() {
            return Err(format!(
                "check failed ({:?}): {}{said}",
                check.status.code(),
                String::from_utf8_lossy(&check.stdout),
            ));
        }
    }
    let mut serve = serve_command(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = false;
    for line in BufReader::new(serve.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        started |= line.starts_with("didgate: listening on");
        // The last start-up line.
        if line.contains("`didgate urls` prints them") {
            break;
        }
    }
    signal(&serve, libc::SIGTERM);
    let out = serve.wait_with_output().unwrap();
    if !started || !out.status.success() {
        return Err(format!(
            "serve did not start ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let check = cli(&["check", "--data", d]);
    if !check.status.success() {
        return Err(format!(
            "check after serve failed: {}",
            String::from_utf8_lossy(&check.stdout)
        ));
    }
    let export = cli(&["export", "--raw", "--data", d]);
    let have: HashSet<&str> = std::str::from_utf8(&export.stdout)
        .unwrap()
        .lines()
        .collect();
    let missing: Vec<&String> = required
        .iter()
        .filter(|b| !have.contains(b.as_str()))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} acknowledged events missing, e.g. {}",
            missing.len(),
            required.len(),
            &missing[0][..missing[0].len().min(60)]
        ))
    }
}

/// How a round loads the gateway before the cut.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Killed while `serve` creates its store, before any load.
    Creation,
    /// A 1 MiB initial map, large bodies: the map grows under load.
    MapGrowth,
    /// Bursts with idle pauses: the writer fills zeroed room between them.
    ZeroFill,
    /// `didgate prune` deletes the first phase's events from another process during load.
    Prune,
}

/// One round: run `serve` under the shim in `scenario`, cut at a random moment, and return the
/// log, the file left, and the events that must survive.
fn cut(
    scenario: Scenario,
    config: &str,
    rng: &mut Rng,
    work: &Path,
) -> (Vec<Rec>, Vec<u8>, Vec<String>) {
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = std::fs::canonicalize(&data).unwrap();
    let file = data.join("data.mdb");
    let log_path = work.join("powercut.log");
    let env = [
        ("LD_PRELOAD", shim().to_str().unwrap().to_string()),
        ("DIDGATE_POWERCUT_FILE", file.to_str().unwrap().to_string()),
        (
            "DIDGATE_POWERCUT_LOG",
            log_path.to_str().unwrap().to_string(),
        ),
    ];
    let cfg = write_config(work, "didgate.toml", config);
    if let Scenario::Creation = scenario {
        let mut cmd = serve_command(&data);
        cmd.args(["--config", &cfg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        let _ = child.kill();
        let _ = child.wait();
    } else {
        let s = Server::start_with(&data, &["--config", &cfg], None, &env).unwrap();
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (pad, pause) = match scenario {
            Scenario::MapGrowth => (2000, None),
            Scenario::ZeroFill => (300, Some((40, Duration::from_millis(150)))),
            _ => (300, None),
        };
        let mut required_from = 0;
        if let Scenario::Prune = scenario {
            // Phase one: events that prune may delete.
            let shape = Load {
                clients: 4,
                pad,
                pause: None,
                tag: "old",
            };
            let old = load(s.addr, s.path("cdr"), shape, stop.clone(), acked.clone());
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            for t in old {
                t.join().unwrap();
            }
            stop.store(false, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            required_from = acked.lock().unwrap().len();
        }
        let cutoff = crate::util::rfc3339_now();
        let shape = Load {
            clients: 8,
            pad,
            pause,
            tag: "new",
        };
        let clients = load(s.addr, s.path("cdr"), shape, stop.clone(), acked.clone());
        let pruner = matches!(scenario, Scenario::Prune).then(|| {
            let mut cmd = didgate();
            cmd.args(["prune", "--before", &cutoff, "--data"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        });
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        // The prune runs beside the load and ends before the cut: two processes killed
        // together could each leave an append to the shared log cut short, one in the middle.
        if let Some(mut p) = pruner {
            assert!(p.wait().unwrap().success(), "didgate prune failed");
        }
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in clients {
            t.join().unwrap();
        }
        let acked = acked.lock().unwrap();
        let log = parse_log(&std::fs::read(&log_path).unwrap_or_default());
        let left = std::fs::read(&file).unwrap_or_default();
        return (log, left, acked[required_from..].to_vec());
    }
    let log = parse_log(&std::fs::read(&log_path).unwrap_or_default());
    let left = std::fs::read(&file).unwrap_or_default();
    (log, left, Vec::new())
}

fn seed() -> u64 {
    std::env::var("DIDGATE_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Every image of every cut keeps every acknowledged event, passes check, and serves.
#[test]
fn power_cuts_lose_no_acknowledged_event() {
    if skip_under_emulation("power_cuts_lose_no_acknowledged_event") {
        return;
    }
    let seed = seed();
    eprintln!("power-cut seed {seed} (DIDGATE_POWERCUT_SEED replays it)");
    let mut rng = Rng(seed);
    let scenarios = [
        (Scenario::Creation, "min_free_disk_bytes = 0\n"),
        (
            Scenario::MapGrowth,
            "min_free_disk_bytes = 0\nmap_size_bytes = 1048576\nfile_headroom_bytes = 0\n",
        ),
        (
            Scenario::ZeroFill,
            "min_free_disk_bytes = 0\nfile_headroom_bytes = 4194304\n",
        ),
        (Scenario::Prune, "min_free_disk_bytes = 0\n"),
    ];
    let (mut images_checked, mut acked_total) = (0, 0);
    let started = Instant::now();
    for round in 0..rounds() {
        for (scenario, config) in scenarios {
            let tmp = tempfile::tempdir().unwrap();
            let (log, left, required) = cut(scenario, config, &mut rng, tmp.path());
            assert_log_complete(scenario, &log, &left);
            for (name, image) in images(&log, &mut rng) {
                if let Err(e) = verify(&image, &required, tmp.path()) {
                    panic!("seed {seed}, round {round}, {scenario:?}, image {name}: {e}");
                }
                images_checked += 1;
            }
            acked_total += required.len();
        }
    }
    eprintln!(
        "power cuts: {} rounds, {images_checked} images, {acked_total} acknowledged events, 0 lost, {:.0?}",
        rounds(),
        started.elapsed()
    );
}

/// The harness can fail: a disk that loses the writes of the last flushes (a lying disk), and
/// `durability = "interval"` with a long interval, both lose acknowledged events.
#[test]
fn negative_controls_show_the_harness_detects_loss() {
    if skip_under_emulation("negative_controls_show_the_harness_detects_loss") {
        return;
    }
    let mut rng = Rng(seed());
    // A lying disk: the flushes of the second half of the run never reached it.
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, required) = cut(
        Scenario::MapGrowth,
        "min_free_disk_bytes = 0\n",
        &mut rng,
        tmp.path(),
    );
    assert!(!required.is_empty());
    let flushes: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Rec::Flush))
        .map(|(i, _)| i)
        .collect();
    let keep = flushes[flushes.len() / 2];
    let mut image = Vec::new();
    for r in &log[..=keep] {
        apply(&mut image, r, None);
    }
    let lying = verify(&image, &required, tmp.path());
    assert!(
        lying
            .as_ref()
            .is_err_and(|e| e.contains("acknowledged events missing")),
        "a lying disk went unnoticed: {lying:?}"
    );
    // Interval durability, synced every 50 ms: answers do not wait for a flush, so every image
    // of a cut during load loses what was answered since the last sync, and an image where
    // unflushed writes landed out of order may not be a readable store at all.
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, required) = cut(
        Scenario::MapGrowth,
        "min_free_disk_bytes = 0\nfile_headroom_bytes = 0\ndurability = \"interval\"\nsync_interval = \"50ms\"\n",
        &mut rng,
        tmp.path(),
    );
    assert!(!required.is_empty());
    let outcomes: Vec<(String, Result<(), String>)> = images(&log, &mut rng)
        .into_iter()
        .map(|(name, image)| (name, verify(&image, &required, tmp.path())))
        .collect();
    for (name, outcome) in &outcomes {
        eprintln!("interval mode, image {name}: {outcome:?}");
    }
    assert!(
        outcomes.iter().any(|(_, o)| o.is_err()),
        "interval mode lost nothing"
    );
}
