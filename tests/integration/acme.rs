//! ACME against Debian's `pebble` (the ACME test server) on loopback, with
//! `pebble-challtestsrv` as its DNS so the test domain resolves to 127.0.0.1 and every
//! validation is real: pebble connects to didgate's listener (`tls-alpn-01`) or to its port-80
//! listener (`http-01`).
//!
//! `.ci/run` installs pebble and sets `DIDGATE_REQUIRE_PEBBLE`; elsewhere, without pebble,
//! these tests say they were skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::{TestPki, client_config, eventually, post_tls, served_serial};
use crate::util::*;

const DOMAIN: &str = "didgate.test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pebble_missing(test: &str) -> bool {
    let found = Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("DIDGATE_REQUIRE_PEBBLE").is_none(),
            "pebble is not installed (apt-get install pebble); CI must run {test}"
        );
        eprintln!("{test}: skipped, pebble is not installed (apt-get install pebble)");
    }
    !found || skip_under_emulation(test)
}

/// pebble and its DNS, killed on drop.
struct Pebble {
    pebble: Child,
    dns: Child,
    /// The directory URL.
    directory: String,
    /// The CA file that makes pebble's HTTPS trusted.
    ca_file: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Ports {
    acme: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
    /// Where pebble validates: didgate's TLS listener, and its port-80 stand-in.
    tls: u16,
    http: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            acme: free_port(),
            management: free_port(),
            dns: free_port(),
            dns_management: free_port(),
            tls: free_port(),
            http: free_port(),
        }
    }
}

fn start_pebble(dir: &Path, pki: &TestPki, ports: &Ports, validity_secs: u64) -> Pebble {
    let (cert, key) = pki.leaf(&["localhost"]);
    std::fs::write(dir.join("pebble-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key).unwrap();
    let ca_file = dir.join("pebble-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{}", ports.acme),
        "managementListenAddress": format!("127.0.0.1:{}", ports.management),
        "certificate": dir.join("pebble-cert.pem"),
        "privateKey": dir.join("pebble-key.pem"),
        "httpPort": ports.http,
        "tlsPort": ports.tls,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity_secs,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args([
            "-management",
            &format!("127.0.0.1:{}", ports.dns_management),
        ])
        .stdout(log("dns.log"))
        .stderr(log("dns.err"))
        .spawn()
        .unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{}", ports.dns)])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .unwrap();
    let acme: SocketAddr = format!("127.0.0.1:{}", ports.acme).parse().unwrap();
    assert!(
        eventually(PATIENCE, || TcpStream::connect(acme).is_ok()),
        "pebble did not start"
    );
    Pebble {
        pebble,
        dns,
        directory: format!("https://127.0.0.1:{}/dir", ports.acme),
        ca_file,
    }
}

fn acme_config(dir: &Path, pebble: &Pebble, extra_tls: &str, extra_acme: &str) -> String {
    write_config(
        dir,
        "didgate.toml",
        &format!(
            "[tls]\n{extra_tls}\n[tls.acme]\ndomains = [\"{DOMAIN}\"]\nemail = \"ops@didgate.test\"\n\
             directory = \"{}\"\ndirectory_ca = {:?}\nrenewal_retry = \"1s\"\n{extra_acme}\n",
            pebble.directory,
            pebble.ca_file.to_str().unwrap()
        ),
    )
}

fn stored_serial(data: &Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(data.join("tls/acme-cert.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    x.raw_serial_as_string().replace(':', "")
}

const ISSUANCE: Duration = Duration::from_secs(60);

#[test]
fn tls_alpn_01_issues_a_certificate_and_a_restart_reuses_it() {
    if pebble_missing("tls_alpn_01_issues_a_certificate_and_a_restart_reuses_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ports = Ports::new();
    let pebble = start_pebble(dir.path(), &pki, &ports, 3600);
    let config = acme_config(dir.path(), &pebble, "", "");
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", ports.tls);
    let args = ["--config", config.as_str(), "--listen", listen.as_str()];
    let s = Server::start(&data, &args);
    // Not ready until the first certificate is there.
    assert!(
        eventually(ISSUANCE, || s
            .metric("didgate_tls_certificates_issued_total")
            .unwrap_or(-1.0)
            == 1.0),
        "no certificate was issued: {}",
        std::fs::read_to_string(&s.log).unwrap()
    );
    assert!(
        s.metric("didgate_tls_acme_challenges_answered_total")
            .unwrap_or(-1.0)
            >= 1.0
    );
    assert!(eventually(PATIENCE, || s.admin_get("/readyz").status == 200));
    let serial = stored_serial(&data);
    assert_eq!(served_serial(s.addr, DOMAIN).unwrap(), serial);
    let r = post_tls(s.addr, client_config(None), &s.path("cdr"), JSON, SEED_CDR);
    assert_eq!(r.status, 200);
    for f in ["acme-account.json", "acme-cert.pem", "acme-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("tls").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    assert!(s.stop().success());

    // A restart serves the stored certificate at once and orders nothing.
    let s = Server::start(&data, &args);
    assert_eq!(s.admin_get("/readyz").status, 200);
    assert_eq!(served_serial(s.addr, DOMAIN).unwrap(), serial);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.metric("didgate_tls_certificates_issued_total")
            .unwrap_or(-1.0),
        0.0
    );
    assert_eq!(stored_serial(&data), serial);
    drop(pebble);
}

#[test]
fn renewal_comes_before_expiry_and_a_failed_one_keeps_the_certificate_and_retries() {
    if pebble_missing(
        "renewal_comes_before_expiry_and_a_failed_one_keeps_the_certificate_and_retries",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ports = Ports::new();
    // A 30 s certificate is due for renewal 20 s after issuance.
    let pebble = start_pebble(dir.path(), &pki, &ports, 30);
    let config = acme_config(dir.path(), &pebble, "", "");
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", ports.tls);
    let s = Server::start(&data, &["--config", &config, "--listen", &listen]);
    let issued = |n: f64| {
        s.metric("didgate_tls_certificates_issued_total")
            .unwrap_or(-1.0)
            >= n
    };
    assert!(eventually(ISSUANCE, || issued(1.0)), "no first certificate");
    let first = served_serial(s.addr, DOMAIN).unwrap();
    assert!(eventually(ISSUANCE, || issued(2.0)), "no renewal");
    let second = served_serial(s.addr, DOMAIN).unwrap();
    assert_ne!(first, second);

    // The CA goes away: the renewal fails, the current certificate stays, retries follow.
    drop(pebble);
    assert!(
        eventually(ISSUANCE, || s
            .metric("didgate_tls_renewal_failures_total")
            .unwrap_or(-1.0)
            >= 2.0),
        "the failed renewal was not retried"
    );
    assert_eq!(served_serial(s.addr, DOMAIN).unwrap(), second);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("still serving certificate"), "{log}");

    // A CA again (a new pebble, which knows no account): the next retry succeeds.
    let pebble = start_pebble(dir.path(), &pki, &ports, 30);
    assert!(
        eventually(ISSUANCE, || issued(3.0)),
        "no certificate after the CA came back: {}",
        std::fs::read_to_string(&s.log).unwrap()
    );
    assert_ne!(served_serial(s.addr, DOMAIN).unwrap(), second);
    drop(pebble);
}

#[test]
fn http_01_validates_on_the_plain_listener_which_refuses_webhooks() {
    if pebble_missing("http_01_validates_on_the_plain_listener_which_refuses_webhooks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ports = Ports::new();
    let pebble = start_pebble(dir.path(), &pki, &ports, 3600);
    let config = acme_config(
        dir.path(),
        &pebble,
        &format!("http_redirect = \"127.0.0.1:{}\"", ports.http),
        "challenge = \"http-01\"",
    );
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", &config]);
    assert!(
        eventually(ISSUANCE, || s
            .metric("didgate_tls_certificates_issued_total")
            .unwrap_or(-1.0)
            == 1.0),
        "no certificate by http-01: {}",
        std::fs::read_to_string(&s.log).unwrap()
    );
    assert_eq!(served_serial(s.addr, DOMAIN).unwrap(), stored_serial(&data));
    // The plain listener never takes (or redirects) a webhook.
    let plain: SocketAddr = format!("127.0.0.1:{}", ports.http).parse().unwrap();
    let mut c = Conn::open(plain);
    c.send(&request(&s.path("cdr"), JSON, SEED_CDR.as_bytes(), ""));
    let r = c.response();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("https://"), "{}", r.body);
    assert!(export(&data).is_empty());
    drop(pebble);
}
