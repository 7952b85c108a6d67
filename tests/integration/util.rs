//! Test harness: the real `didgate` binary on `127.0.0.1:0` over a temp data directory, a raw
//! HTTP/1.1 client that writes bytes and parses responses, and a CLI runner.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The didgate binary the tests run: `$DIDGATE_TEST_BIN` when set (a binary built for another
/// target, run under emulation), else the one cargo built beside this test.
pub fn bin_path() -> PathBuf {
    std::env::var_os("DIDGATE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_didgate")))
}

/// A command that runs the didgate binary, through `$DIDGATE_TEST_RUNNER` when set (e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`): cargo's runner wraps only the test binary, and a
/// host without binfmt_misc cannot exec another target's binary itself.
pub fn didgate() -> Command {
    let runner = std::env::var("DIDGATE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(bin_path());
            cmd
        }
        None => Command::new(bin_path()),
    }
}

/// The seed document's CDR, with the `billsec` field of didlogic's newer doc.
pub const SEED_CDR: &str = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"82xg86dv6jhl0p8xu0l3","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}"#;
pub const SEED_RECORDING: &str = r#"{"calldate":"2026-05-12T05:17:58Z","callid":"82xg86dv6jhl0p8xu0l3","event":"recording","recording_url":"https://ddl-aws-bucket.com/...","user_id":76141}"#;
pub const SEED_SMS: &str =
    "src=15551234567&dst=448001234567&message=Hello+world+&received_at=2026-05-13+12%3A45%3A40+UTC";

/// The seed document's three webhooks: hook, content type, body.
pub const SEEDS: [(&str, &str, &str); 3] = [
    ("cdr", JSON, SEED_CDR),
    ("recording", JSON, SEED_RECORDING),
    ("sms", FORM, SEED_SMS),
];

pub const JSON: &str = "application/json";
pub const FORM: &str = "application/x-www-form-urlencoded";

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running gateway.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin listener, when enabled.
    pub admin: Option<SocketAddr>,
    pub token: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `didgate serve` on `data` with extra arguments; returns once it printed its URLs.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Self::try_start(data, extra).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Like [`Server::start`], but returns the error output when it does not come up.
    pub fn try_start(data: &Path, extra: &[&str]) -> Result<Server, String> {
        Self::start_with(data, extra, None, &[])
    }

    /// Starts the server with its descriptor limit lowered to `nofile` (when given) and extra
    /// environment variables.
    pub fn start_with(
        data: &Path,
        extra: &[&str],
        nofile: Option<u64>,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let log = data.with_extension(format!("log-{}", unique()));
        let mut cmd = didgate();
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and only touches the child being spawned.
            unsafe {
                cmd.pre_exec(move || {
                    // rlim_t is 32-bit on armv7.
                    let n = libc::rlim_t::try_from(n).unwrap_or(libc::rlim_t::MAX);
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("serve");
        // A test that needs a known port passes its own `--listen`.
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(["--admin-listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut found = None;
        let mut admin = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("didgate: listening on ") {
                found = rest
                    .split(',')
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if let Some(rest) = line.strip_prefix("didgate: metrics and health on http://") {
                admin = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            // The last start-up line: stdout is a pipe, so the URLs are not printed.
            if line.contains("`didgate urls` prints them") {
                break;
            }
        }
        let Some(addr) = found else {
            let _ = child.wait();
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // The token, as an operator gets it: `didgate urls` with the same data and config.
        let mut urls = vec!["urls", "--data", data.to_str().unwrap()];
        if let Some(i) = extra.iter().position(|a| *a == "--config") {
            urls.extend(&extra[i..i + 2]);
        }
        let out = cli(&urls);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("cdr"))
            .and_then(|l| l.split("/hooks/").nth(1))
            .and_then(|p| p.split('/').next())
            .ok_or_else(|| format!("`didgate urls` said {text:?}"))?
            .to_string();
        Ok(Server {
            child: Some(child),
            admin,
            addr,
            token,
            log,
        })
    }

    pub fn path(&self, hook: &str) -> String {
        format!("/hooks/{}/{hook}", self.token)
    }

    /// One POST on a fresh connection; returns the parsed response.
    pub fn post(&self, hook: &str, content_type: &str, body: &str) -> Response {
        let mut c = self.connect();
        c.send(&request(
            &self.path(hook),
            content_type,
            body.as_bytes(),
            "",
        ));
        c.response()
    }

    /// One unlabelled series' value from `/metrics`; `None` when it is not there.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.admin_get("/metrics").body.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.parse().ok())?
        })
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        let mut c = Conn::open(self.admin.expect("admin listener enabled"));
        c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes());
        c.response()
    }

    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// Posts a CDR for each callid, pipelined on `c` (all sent, then every answer read), and
    /// asserts each was answered 200.
    pub fn post_cdrs_pipelined(&self, c: &mut Conn, callids: impl IntoIterator<Item = String>) {
        let mut raw = Vec::new();
        let mut sent = 0;
        for callid in callids {
            raw.extend(request(
                &self.path("cdr"),
                JSON,
                cdr(&callid).as_bytes(),
                "",
            ));
            sent += 1;
        }
        c.send(&raw);
        for _ in 0..sent {
            assert_eq!(c.response().status, 200);
        }
    }

    /// Sends raw bytes on a fresh connection and returns every response until the server
    /// closes (or `PATIENCE` passes).
    pub fn exchange(&self, raw: &[u8]) -> (Vec<Response>, bool) {
        let mut c = self.connect();
        c.send(raw);
        c.all_until_close()
    }

    /// Waits for the server to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        wait_exit(self.child.take().unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: i32) {
        signal(self.child.as_ref().unwrap(), sig);
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let child = self.child.take().unwrap();
        signal(&child, libc::SIGTERM);
        wait_exit(child)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// CPU time the server used so far (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // Fields 14 and 15 of stat(5): utime and stime, in clock ticks; after the `)` they are
        // at positions 11 and 12.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn wait_exit(mut child: Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A POST request's bytes. `extra` is more header lines, each ending in CRLF.
pub fn request(path: &str, content_type: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A raw client connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one response; panics if the connection closes first.
    pub fn response(&mut self) -> Response {
        self.try_response().unwrap_or_else(|| {
            panic!(
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// Reads one response, or `None` when the server closed without one.
    pub fn try_response(&mut self) -> Option<Response> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + len;
                if self.buf.len() >= total {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..total]).into_owned();
                    self.buf.drain(..total);
                    return Some(Response { status, head, body });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Every response until the server closes; the flag says whether it closed (vs timing out).
    pub fn all_until_close(&mut self) -> (Vec<Response>, bool) {
        let mut out = Vec::new();
        while let Some(r) = self.try_response() {
            out.push(r);
        }
        (out, self.closed())
    }

    /// Whether the server has closed its side (read returns EOF within a short wait).
    pub fn closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.read(&mut b);
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes a configuration file `name` into `dir`; returns its path for `--config`.
pub fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Posts CDRs padded with `pad_bytes` of filler until one is refused (or `max` are stored).
/// Returns the callids acknowledged and the first refusal.
pub fn fill_until_refused(
    s: &Server,
    prefix: &str,
    pad_bytes: usize,
    max: usize,
) -> (Vec<String>, Option<Response>) {
    let pad = "p".repeat(pad_bytes);
    let mut acked = Vec::new();
    for i in 0..max {
        let id = format!("{prefix}-{i}");
        let r = s.post(
            "cdr",
            JSON,
            &format!(r#"{{"event":"cdr","callid":"{id}","pad":"{pad}"}}"#),
        );
        match r.status {
            200 => acked.push(id),
            _ => return (acked, Some(r)),
        }
    }
    (acked, None)
}

/// Raises this process's descriptor limit to its hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on our own process with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    // rlim_t is 32-bit on armv7.
    #[allow(clippy::useless_conversion)]
    let cur = u64::from(lim.rlim_cur);
    cur
}

/// Runs the CLI with `args`.
pub fn cli(args: &[&str]) -> Output {
    didgate().args(args).stdin(Stdio::null()).output().unwrap()
}

/// Runs a reader subcommand on `data` and returns stdout, asserting success.
pub fn read_ok(data: &Path, args: &[&str]) -> String {
    let mut full: Vec<&str> = args.to_vec();
    let d = data.to_str().unwrap();
    full.extend(["--data", d]);
    let out = cli(&full);
    assert!(
        out.status.success(),
        "didgate {full:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `seq` of each JSON line the reader printed, in order.
pub fn seqs_of(lines: &str) -> Vec<u64> {
    lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// `didgate export` on `data` as parsed JSON lines.
pub fn export(data: &Path) -> Vec<serde_json::Value> {
    read_ok(data, &["export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A unique CDR for load tests.
pub fn cdr(callid: &str) -> String {
    format!(
        r#"{{"calldate":"2026-05-12T05:17:58Z","callid":"{callid}","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}}"#
    )
}

/// Now, as RFC 3339 with milliseconds (what `--since`, `--until` and `--before` take).
pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// `didgate serve` on `data`, on a free loopback port, without the admin listener, stdin
/// closed: for tests that drive the process themselves (its output, its exit status).
pub fn serve_command(data: &Path) -> Command {
    let mut cmd = didgate();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--data",
    ])
    .arg(data)
    .stdin(Stdio::null());
    cmd
}

/// Whether the binary runs under an emulator (`DIDGATE_TEST_RUNNER`). Tests that preload a
/// fault-injection shim into the server skip themselves then, saying so: the shim is built for
/// the host, and an emulator would load it into itself, not into the program it emulates.
pub fn skip_under_emulation(test: &str) -> bool {
    let emulated = std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    if emulated {
        eprintln!("{test}: skipped under emulation");
    }
    emulated
}
