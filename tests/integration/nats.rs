//! Forwarding to NATS JetStream, through the real binary to a real `nats-server -js` on
//! loopback, started by each test: every kind on its subject with its headers; two
//! appliances receiving the same webhooks (retries landing on the other one) and the stream
//! holding each once; the server down under load and back; kill -9 while publishing; a
//! stream that is not there.
//!
//! `.ci/run` installs Debian's `nats-server` and sets `DIDGATE_REQUIRE_NATS`; elsewhere,
//! without it, the tests skip with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::tls::eventually;
use crate::util::*;

/// How long publishing may take to settle (longer under emulation).
fn settle() -> Duration {
    let emulated = std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    Duration::from_secs(if emulated { 120 } else { 45 })
}

fn nats_binary() -> Option<PathBuf> {
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Some(PathBuf::from("nats-server"));
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    sbin.is_file().then_some(sbin)
}

/// The server binary, or `None` (and a note) when it is not installed and CI does not
/// require it.
fn nats_or_skip(test: &str) -> Option<PathBuf> {
    let found = nats_binary();
    if found.is_none() {
        assert!(
            std::env::var_os("DIDGATE_REQUIRE_NATS").is_none(),
            "nats-server is not installed (apt-get install nats-server); CI must run {test}"
        );
        eprintln!("{test}: skipped, nats-server is not installed (apt-get install nats-server)");
    }
    found
}

/// A `nats-server -js` on a loopback port with its store in a temp directory; killed on
/// drop. It can be stopped and started again on the same port and store.
struct Nats {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    access: Access,
    child: Option<Child>,
}

/// What a client needs to reach the server: nothing, a user and password, a token, or TLS
/// with the CA that signed the server's certificate (cert, key, CA files).
enum Access {
    Open,
    Password(&'static str, &'static str),
    Token(&'static str),
    Tls(PathBuf, PathBuf, PathBuf),
}

impl Nats {
    fn start(bin: PathBuf) -> Nats {
        Nats::start_with(bin, Access::Open)
    }

    fn start_with(bin: PathBuf, access: Access) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Nats {
            bin,
            port,
            store: tempfile::tempdir().unwrap(),
            access,
            child: None,
        };
        n.up();
        n
    }

    fn url(&self) -> String {
        let scheme = if matches!(self.access, Access::Tls(..)) {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's arguments for its access.
    fn access_args(&self) -> Vec<String> {
        let args: Vec<&str> = match &self.access {
            Access::Open => vec![],
            Access::Password(u, p) => vec!["--user", u, "--pass", p],
            Access::Token(t) => vec!["--auth", t],
            Access::Tls(cert, key, _) => vec![
                "--tls",
                "--tlscert",
                cert.to_str().unwrap(),
                "--tlskey",
                key.to_str().unwrap(),
            ],
        };
        args.into_iter().map(String::from).collect()
    }

    /// A JetStream client of this server, as the test reads the stream.
    async fn context(&self) -> async_nats::jetstream::Context {
        let options = async_nats::ConnectOptions::new();
        let options = match &self.access {
            Access::Open => options,
            Access::Password(u, p) => options.user_and_password(u.to_string(), p.to_string()),
            Access::Token(t) => options.token(t.to_string()),
            Access::Tls(_, _, ca) => options.add_root_certificates(ca.clone()),
        };
        async_nats::jetstream::new(options.connect(self.url()).await.unwrap())
    }

    fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(self.access_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            eventually(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()),
            "nats-server listens"
        );
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// One stored message as a subscriber sees it.
#[derive(Debug)]
struct Msg {
    subject: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every message of `stream`, in stream order; empty when there is no such stream.
fn messages(nats: &Nats, stream: &str) -> Vec<Msg> {
    runtime().block_on(async {
        let js = nats.context().await;
        let Ok(mut s) = js.get_stream(stream).await else {
            return Vec::new();
        };
        let info = s.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in info.first_sequence..=info.last_sequence {
            if info.messages == 0 {
                break;
            }
            let Ok(m) = s.get_raw_message(seq).await else {
                continue;
            };
            let headers = m
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.first().map(|v| v.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            out.push(Msg {
                subject: m.subject.to_string(),
                headers,
                payload: m.payload.to_vec(),
            });
        }
        out
    })
}

/// How many messages `stream` holds (0 when it is not there).
fn count(nats: &Nats, stream: &str) -> u64 {
    runtime().block_on(async {
        let js = nats.context().await;
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    })
}

/// The `Nats-Msg-Id` of every message in stream DIDLOGIC; fails when two messages share one.
fn stream_ids(nats: &Nats) -> BTreeSet<String> {
    let got = messages(nats, "DIDLOGIC");
    let ids: BTreeSet<String> = got
        .iter()
        .map(|m| m.headers["Nats-Msg-Id"].clone())
        .collect();
    assert_eq!(ids.len(), got.len(), "no webhook twice");
    ids
}

/// Asserts that the CDR of each callid is among `ids`.
fn assert_cdrs_in(ids: &BTreeSet<String>, callids: &[String]) {
    for id in callids {
        assert!(
            ids.contains(&webhook_id("cdr", cdr(id).as_bytes())),
            "{id} reached the stream"
        );
    }
}

fn config(dir: &Path, name: &str, nats: &Nats, extra: &str) -> String {
    write_config(
        dir,
        &format!("{name}.toml"),
        &format!(
            "[recordings]\nenabled = false\n\n[[forward]]\nname = \"bus\"\ntype = \"nats\"\n\
             url = \"{}\"\nstream = \"DIDLOGIC\"\ncreate_stream = true\n{extra}\n",
            nats.url()
        ),
    )
}

fn metric(s: &Server, series: &str) -> f64 {
    s.metric(&format!("{series}{{dest=\"bus\"}}"))
        .unwrap_or(-1.0)
}

fn caught_up(s: &Server) -> bool {
    metric(s, "didgate_forward_lag_events") == 0.0 && metric(s, "didgate_forward_retrying") == 0.0
}

fn webhook_id(kind: &str, body: &[u8]) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[kind.as_bytes(), &[0], body].concat(),
    );
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("evt_{hex}")
}

#[test]
fn every_kind_arrives_on_its_subject_with_its_headers() {
    let Some(bin) = nats_or_skip("every_kind_arrives_on_its_subject_with_its_headers") else {
        return;
    };
    let nats = Nats::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "a",
        &nats,
        "appliance = \"site-a\"\nheaders = { Tenant = \"acme\" }",
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    for (hook, ct, body) in SEEDS {
        assert_eq!(s.post(hook, ct, body).status, 200);
    }
    // A retry of the CDR: didgate stores it once, so it is published once.
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert!(eventually(settle(), || count(&nats, "DIDLOGIC") == 3));
    assert!(eventually(settle(), || caught_up(&s)));
    let events = export(&data);
    let got = messages(&nats, "DIDLOGIC");
    assert_eq!(got.len(), 3, "{got:?}");
    for (hook, ct, body) in SEEDS {
        let m = got
            .iter()
            .find(|m| m.subject == format!("didlogic.{hook}"))
            .unwrap_or_else(|| panic!("no message on didlogic.{hook}: {got:?}"));
        assert_eq!(m.payload, body.as_bytes(), "the body, byte for byte");
        let ev = events.iter().find(|e| e["kind"] == *hook).unwrap();
        let h = &m.headers;
        assert_eq!(h["Nats-Msg-Id"], webhook_id(hook, body.as_bytes()));
        assert_eq!(h["Content-Type"], *ct);
        assert_eq!(h["Didgate-Kind"], *hook);
        assert_eq!(h["Didgate-Seq"], ev["seq"].to_string());
        assert_eq!(h["Didgate-Stored-At"], ev["stored_at"].as_str().unwrap());
        assert_eq!(h["Didgate-Appliance"], "site-a");
        assert_eq!(h["Tenant"], "acme");
    }
    assert_eq!(metric(&s, "didgate_forward_delivered_total"), 3.0);
    assert_eq!(metric(&s, "didgate_forward_duplicates_total"), 0.0);
    // The store's view (`didgate deliveries`) follows with the writer's next commit.
    let shown = || -> serde_json::Value {
        let out = read_ok(&data, &["deliveries", "--json"]);
        out.lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default()
    };
    assert!(
        eventually(settle(), || {
            let d = shown();
            d["dest"] == "bus" && d["lag_events"] == 0 && d["delivered"] == 3
        }),
        "{}",
        shown()
    );
    s.stop();
}

#[test]
fn two_appliances_feeding_one_stream_store_each_webhook_once() {
    let Some(bin) = nats_or_skip("two_appliances_feeding_one_stream_store_each_webhook_once")
    else {
        return;
    };
    let nats = Nats::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(
        &dir.path().join("a"),
        &[
            "--config",
            &config(dir.path(), "a", &nats, "appliance = \"a\""),
        ],
    );
    let b = Server::start(
        &dir.path().join("b"),
        &[
            "--config",
            &config(dir.path(), "b", &nats, "appliance = \"b\""),
        ],
    );
    // 1,000 webhooks, alternating between the appliances (DNS round robin); every third is
    // retried, as didlogic does after a timeout, and the retry lands on the other one.
    let n = 1000;
    let mut retried = 0;
    let (mut ca, mut cb) = (a.connect(), b.connect());
    for i in 0..n {
        let id = format!("fleet-{i}");
        let (first, second) = if i % 2 == 0 {
            (&a, &mut ca)
        } else {
            (&b, &mut cb)
        };
        first.post_cdrs_pipelined(second, [id.clone()]);
        if i % 3 == 0 {
            let other = if i % 2 == 0 {
                (&b, &mut cb)
            } else {
                (&a, &mut ca)
            };
            other.0.post_cdrs_pipelined(other.1, [id]);
            retried += 1;
        }
    }
    assert!(
        eventually(settle(), || caught_up(&a) && caught_up(&b)),
        "a: {} b: {}",
        a.stderr(),
        b.stderr()
    );
    let got = messages(&nats, "DIDLOGIC");
    let ids: BTreeSet<&str> = got
        .iter()
        .map(|m| m.headers["Nats-Msg-Id"].as_str())
        .collect();
    assert_eq!(got.len(), n, "one message per distinct webhook");
    assert_eq!(ids.len(), n);
    let apps: BTreeSet<&str> = got
        .iter()
        .map(|m| m.headers["Didgate-Appliance"].as_str())
        .collect();
    assert_eq!(apps, BTreeSet::from(["a", "b"]));
    let stored = export(&dir.path().join("a")).len() + export(&dir.path().join("b")).len();
    assert_eq!(
        stored,
        n + retried,
        "each appliance stored what it received"
    );
    let dup = metric(&a, "didgate_forward_duplicates_total")
        + metric(&b, "didgate_forward_duplicates_total");
    let delivered = metric(&a, "didgate_forward_delivered_total")
        + metric(&b, "didgate_forward_delivered_total");
    assert_eq!(delivered, (n + retried) as f64);
    // Each retry's second copy is a duplicate PubAck (more only if an ack was lost and the
    // publish repeated, which the stream also drops).
    assert!(
        dup >= retried as f64,
        "{dup} duplicates for {retried} retries"
    );
    a.stop();
    b.stop();
}

/// Load on one connection: CDRs `prefix-0..` posted one after the other until `stop` or the
/// server goes away; returns the callids answered 200 (only those were acknowledged).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(s: &Server, prefix: &str, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (addr, path, prefix) = (s.addr, s.path("cdr"), prefix.to_string());
        let (stop2, ok2) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut c = Conn::open(addr);
            let mut i = 0;
            while !stop2.load(Ordering::Relaxed) {
                let id = format!("{prefix}-{i}");
                let raw = request(&path, JSON, cdr(&id).as_bytes(), "");
                if std::io::Write::write_all(&mut c.stream, &raw).is_err() {
                    break;
                }
                match c.try_response() {
                    Some(r) if r.status == 200 => {
                        acked.push(id);
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(r) => panic!("{id}: answered {}", r.status),
                    None => break,
                }
                i += 1;
                std::thread::sleep(pace);
            }
            acked
        });
        Load { stop, ok, thread }
    }

    fn answered(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn the_server_down_for_30_seconds_under_load_loses_nothing() {
    let test = "the_server_down_for_30_seconds_under_load_loses_nothing";
    let Some(bin) = nats_or_skip(test) else {
        return;
    };
    if skip_under_emulation(test) {
        return;
    }
    let mut nats = Nats::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(
        &data,
        &[
            "--config",
            &config(dir.path(), "a", &nats, "retry = [\"1s\", \"2s\", \"5s\"]"),
        ],
    );
    let load = Load::start(&s, "outage", Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(2));
    assert!(count(&nats, "DIDLOGIC") > 0, "publishing under way");
    nats.down();
    let during = load.answered();
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        load.answered() > during + 100,
        "ingest goes on while NATS is down"
    );
    assert!(metric(&s, "didgate_forward_lag_events") > 0.0);
    nats.up();
    std::thread::sleep(Duration::from_secs(2));
    let sent = load.finish();
    assert!(
        eventually(Duration::from_secs(90), || caught_up(&s)),
        "lag returns to 0: {}",
        s.stderr()
    );
    let ids = stream_ids(&nats);
    assert_eq!(ids.len(), sent.len(), "every webhook once");
    assert_cdrs_in(&ids, &sent);
    s.stop();
}

#[test]
fn kill_9_while_publishing_loses_no_acknowledged_webhook() {
    let test = "kill_9_while_publishing_loses_no_acknowledged_webhook";
    let Some(bin) = nats_or_skip(test) else {
        return;
    };
    let nats = Nats::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "a", &nats, "");
    let rounds = if std::env::var("DIDGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        2
    } else {
        5
    };
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        let s = Server::start(&data, &["--config", &cfg]);
        let load = Load::start(&s, &format!("kill{round}"), Duration::ZERO);
        let before = count(&nats, "DIDLOGIC");
        assert!(eventually(settle(), || count(&nats, "DIDLOGIC") > before + 50));
        s.kill9();
        // Only the webhooks answered 200 count: a post cut by the kill was not acknowledged.
        acknowledged.extend(load.finish());
    }
    let s = Server::start(&data, &["--config", &cfg]);
    assert!(eventually(settle(), || caught_up(&s)), "{}", s.stderr());
    let ids = stream_ids(&nats);
    assert_cdrs_in(&ids, &acknowledged);
    s.stop();
}

#[test]
fn a_stream_that_is_not_there_is_a_clear_error_and_is_retried() {
    let Some(bin) = nats_or_skip("a_stream_that_is_not_there_is_a_clear_error_and_is_retried")
    else {
        return;
    };
    let nats = Nats::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = write_config(
        dir.path(),
        "didgate.toml",
        &format!(
            "[recordings]\nenabled = false\n\n[[forward]]\nname = \"bus\"\ntype = \"nats\"\n\
             url = \"{}\"\nstream = \"MISSING\"\nretry = [\"1s\"]\n",
            nats.url()
        ),
    );
    let s = Server::start(&data, &["--config", &cfg]);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert!(
        eventually(settle(), || s
            .stderr()
            .contains("stream \"MISSING\" is not there")),
        "{}",
        s.stderr()
    );
    assert!(
        eventually(settle(), || read_ok(&data, &["deliveries", "--json"])
            .contains("MISSING")),
        "deliveries shows why: {}",
        read_ok(&data, &["deliveries", "--json"])
    );
    assert_eq!(
        s.post("sms", FORM, SEED_SMS).status,
        200,
        "ingest unaffected"
    );
    // The operator creates the stream: the waiting events go out.
    runtime().block_on(async {
        nats.context()
            .await
            .create_stream(async_nats::jetstream::stream::Config {
                name: "MISSING".into(),
                subjects: vec!["didlogic.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    });
    assert!(eventually(settle(), || count(&nats, "MISSING") == 2));
    assert!(eventually(settle(), || caught_up(&s)));
    s.stop();
}

#[test]
fn credentials_are_used_and_a_wrong_password_is_logged_and_retried() {
    let test = "credentials_are_used_and_a_wrong_password_is_logged_and_retried";
    let Some(bin) = nats_or_skip(test) else {
        return;
    };
    let nats = Nats::start_with(bin, Access::Password("ops", "s3cret"));
    let dir = tempfile::tempdir().unwrap();
    let right = config(
        dir.path(),
        "right",
        &nats,
        "user = \"ops\"\npassword = \"s3cret\"",
    );
    let wrong = config(
        dir.path(),
        "wrong",
        &nats,
        "user = \"ops\"\npassword = \"nope\"",
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &wrong]);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert!(
        eventually(settle(), || s
            .stderr()
            .to_lowercase()
            .contains("authorization")),
        "{}",
        s.stderr()
    );
    assert_eq!(count(&nats, "DIDLOGIC"), 0);
    s.stop();
    // The operator fixes the password: the waiting CDR goes out.
    let s = Server::start(&data, &["--config", &right]);
    assert!(eventually(settle(), || count(&nats, "DIDLOGIC") == 1));
    assert!(eventually(settle(), || caught_up(&s)));
    s.stop();
}

#[test]
fn tls_urls_connect_over_tls_trusting_the_configured_ca() {
    let test = "tls_urls_connect_over_tls_trusting_the_configured_ca";
    let Some(bin) = nats_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::TestPki::new();
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    pki.write_leaf(&cert, &key);
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let nats = Nats::start_with(bin, Access::Tls(cert, key, ca.clone()));
    assert!(nats.url().starts_with("tls://"));
    let cfg = config(
        dir.path(),
        "a",
        &nats,
        &format!("tls_ca = \"{}\"", ca.display()),
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &cfg]);
    assert_eq!(s.post("cdr", JSON, SEED_CDR).status, 200);
    assert!(
        eventually(settle(), || caught_up(&s)
            && metric(&s, "didgate_forward_delivered_total") == 1.0),
        "{}",
        s.stderr()
    );
    assert_eq!(count(&nats, "DIDLOGIC"), 1);
    s.stop();
}

#[test]
fn a_token_authenticates() {
    let Some(bin) = nats_or_skip("a_token_authenticates") else {
        return;
    };
    let token = "t0ken-for-didgate";
    let nats = Nats::start_with(bin, Access::Token(token));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a", &nats, &format!("token = \"{token}\""));
    let s = Server::start(&dir.path().join("data"), &["--config", &cfg]);
    assert_eq!(s.post("sms", FORM, SEED_SMS).status, 200);
    assert!(
        eventually(settle(), || caught_up(&s)
            && metric(&s, "didgate_forward_delivered_total") == 1.0),
        "{}",
        s.stderr()
    );
    assert_eq!(count(&nats, "DIDLOGIC"), 1);
    s.stop();
}
