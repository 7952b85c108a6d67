//! HTTPS on the webhook listener with certificate files: webhooks over TLS, rotation on
//! SIGHUP and on file change, a bad file on reload, and hostile TLS clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use crate::util::*;

/// A test CA and a leaf it signed for `localhost`, `hooks.test` and 127.0.0.1.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "didgate test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestPki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf (PEM chain, PEM key) for `names` plus 127.0.0.1.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf to `cert` and `key` (the key first, as a renewal tool would), and
    /// returns its serial.
    pub fn write_leaf(&self, cert: &Path, key: &Path) -> String {
        let (c, k) = self.leaf(&["localhost", "hooks.test"]);
        std::fs::write(key, k).unwrap();
        std::fs::write(cert, &c).unwrap();
        serial_of_pem(&c)
    }
}

fn serial_of_der(der: &[u8]) -> String {
    let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
    x.raw_serial_as_string().replace(':', "")
}

fn serial_of_pem(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    serial_of_der(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
}

/// Accepts any certificate: for tests that look at which certificate is served.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that verifies the server against `ca` (or accepts anything when `None`).
pub fn client_config(ca: Option<&CertificateDer<'static>>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection, handshake done.
pub fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// The serial of the certificate served to a new connection naming `name`.
pub fn served_serial(addr: SocketAddr, name: &str) -> std::io::Result<String> {
    let s = tls_connect(addr, name, client_config(None))?;
    let certs = s.conn.peer_certificates().unwrap_or_default();
    Ok(serial_of_der(
        certs.first().map(|c| c.as_ref()).unwrap_or_default(),
    ))
}

/// One request over TLS with `Connection: close`; the parsed response.
pub fn post_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    content_type: &str,
    body: &str,
) -> Response {
    let mut s = tls_connect(addr, "localhost", config).unwrap();
    s.write_all(&request(
        path,
        content_type,
        body.as_bytes(),
        "Connection: close\r\n",
    ))
    .unwrap();
    let mut raw = Vec::new();
    // A clean end is the server's close_notify: read_to_end returns Ok.
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Response {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Polls `f` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

struct Setup {
    _dir: tempfile::TempDir,
    pki: TestPki,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    first_serial: String,
    server: Server,
}

fn start(extra_tls: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let first_serial = pki.write_leaf(&cert, &key);
    let config = write_config(
        dir.path(),
        "didgate.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"1s\"\n{extra_tls}",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    let server = Server::start(&dir.path().join("data"), &["--config", &config]);
    Setup {
        _dir: dir,
        pki,
        cert,
        key,
        first_serial,
        server,
    }
}

#[test]
fn the_three_seed_webhooks_over_tls_are_stored_and_answered_200() {
    let t = start("");
    let s = &t.server;
    let config = client_config(Some(&t.pki.ca_der));
    for (hook, ctype, body) in SEEDS {
        let r = post_tls(s.addr, config.clone(), &s.path(hook), ctype, body);
        assert_eq!(r.status, 200, "{hook}: {r:?}");
    }
    let data = t._dir.path().join("data");
    let events = export(&data);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["cdr", "recording", "sms"], "{events:?}");
    // The URLs say https.
    let config = t._dir.path().join("didgate.toml");
    let out = cli(&[
        "urls",
        "--data",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l.contains("https://")), "{text}");
    assert_eq!(s.metric("didgate_tls_handshakes_total"), Some(3.0));
    assert!(s.metric("didgate_tls_certificate_expiry_seconds").unwrap() > 0.0);
    assert_eq!(s.admin_get("/readyz").status, 200);
}

#[test]
fn a_rotated_certificate_is_served_after_sighup_or_a_file_change_and_a_bad_one_is_refused() {
    let t = start("reload_interval = \"1s\"\n");
    let s = &t.server;
    assert_eq!(served_serial(s.addr, "localhost").unwrap(), t.first_serial);
    // SIGHUP.
    let second = t.pki.write_leaf(&t.cert, &t.key);
    s.signal(libc::SIGHUP);
    assert!(
        eventually(PATIENCE, || served_serial(s.addr, "localhost").unwrap()
            == second),
        "the rotated certificate was not served after SIGHUP"
    );
    // A connection opened before a rotation keeps working with its certificate.
    let mut old = tls_connect(s.addr, "localhost", client_config(None)).unwrap();
    // A file change alone (certbot's deploy, no signal).
    let third = t.pki.write_leaf(&t.cert, &t.key);
    assert!(
        eventually(PATIENCE, || served_serial(s.addr, "localhost").unwrap()
            == third),
        "the changed files were not picked up"
    );
    old.write_all(&request(
        &s.path("cdr"),
        JSON,
        cdr("kept-open").as_bytes(),
        "",
    ))
    .unwrap();
    let mut buf = [0u8; 12];
    old.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // A bad file: the current certificate stays, and the log says why.
    std::fs::write(&t.cert, "not a certificate").unwrap();
    s.signal(libc::SIGHUP);
    assert!(eventually(PATIENCE, || s
        .metric("didgate_tls_reload_failures_total")
        .is_some_and(|v| v >= 1.0)));
    assert_eq!(served_serial(s.addr, "localhost").unwrap(), third);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("certificate reload failed, still serving the current certificate"),
        "{log}"
    );
    let r = post_tls(
        s.addr,
        client_config(Some(&t.pki.ca_der)),
        &s.path("cdr"),
        JSON,
        &cdr("after-bad"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn an_expired_certificate_fails_readyz_and_shows_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let config = write_config(
        dir.path(),
        "didgate.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("c.pem").to_str().unwrap(),
            dir.path().join("k.pem").to_str().unwrap()
        ),
    );
    let s = Server::start(&dir.path().join("data"), &["--config", &config]);
    let r = s.admin_get("/readyz");
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("the TLS certificate has expired"),
        "{}",
        r.body
    );
    assert_eq!(
        s.metric("didgate_tls_certificate_expiry_seconds"),
        Some(1_609_459_200.0)
    );
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, _) = pki.leaf(&["localhost"]);
    let (_, other_key) = pki.leaf(&["localhost"]);
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), other_key).unwrap();
    let config = write_config(
        dir.path(),
        "didgate.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("c.pem").to_str().unwrap(),
            dir.path().join("k.pem").to_str().unwrap()
        ),
    );
    let err = Server::try_start(&dir.path().join("data"), &["--config", &config])
        .err()
        .expect("a mismatched key must stop the start");
    assert!(err.contains("does not belong to the certificate"), "{err}");
}

#[test]
fn plain_http_on_the_tls_port_and_tls_on_the_plain_port_are_refused_cleanly() {
    let t = start("");
    let s = &t.server;
    let (resp, closed) = s.exchange(&request(&s.path("cdr"), JSON, SEED_CDR.as_bytes(), ""));
    assert_eq!(resp.len(), 1, "{resp:?}");
    assert_eq!(resp[0].status, 400);
    assert!(resp[0].body.contains("https://"), "{:?}", resp[0].body);
    assert!(closed);
    assert_eq!(s.metric("didgate_tls_plain_refused_total"), Some(1.0));

    // A ClientHello to a plain listener: a 400 in plain text, then close; no hang.
    let plain = Server::start(&t._dir.path().join("plain"), &[]);
    let mut c = plain.connect();
    let conn = ClientConnection::new(
        client_config(None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    let mut conn = conn;
    conn.write_tls(&mut hello).unwrap();
    c.send(&hello);
    let (resp, closed) = c.all_until_close();
    assert!(resp.iter().all(|r| r.status == 400), "{resp:?}");
    assert!(closed);
    assert_eq!(plain.post("cdr", JSON, SEED_CDR).status, 200);
}

#[test]
fn stalled_and_garbage_handshakes_are_cut_and_never_starve_a_healthy_client() {
    if skip_under_emulation("2,000 TLS connections") {
        return;
    }
    let have = raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    pki.write_leaf(&cert, &key);
    let config = write_config(
        dir.path(),
        "didgate.toml",
        &format!(
            "max_connections = 4000\n[tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"2s\"\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", &config],
        Some(4200),
        &[],
    )
    .unwrap();
    let healthy = client_config(Some(&pki.ca_der));

    // A client that stalls mid-handshake (half a ClientHello) is cut at the deadline.
    let mut hello = Vec::new();
    ClientConnection::new(
        client_config(None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
    .write_tls(&mut hello)
    .unwrap();
    let mut stalled = Conn::open(s.addr);
    stalled.send(&hello[..hello.len() / 2]);
    assert!(
        stalled.closed() || stalled.closed(),
        "a stalled handshake was not cut"
    );

    // Record garbage after a valid record header, and random bytes: closed, no panic.
    for garbage in [
        [&[0x16, 0x03, 0x01, 0x00, 0x10][..], &[0xff; 16]].concat(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
            .collect(),
    ] {
        let mut c = Conn::open(s.addr);
        c.send(&garbage);
        assert!(c.closed(), "garbage was not refused");
    }

    // 2,000 idle connections (half silent, half stalled mid-handshake) do not starve a
    // healthy client.
    let want = 2000.min(usize::try_from(have).unwrap_or(0).saturating_sub(200));
    let mut idle = Vec::new();
    for i in 0..want {
        let Ok(mut c) = TcpStream::connect(s.addr) else {
            break;
        };
        if i % 2 == 1 {
            let _ = c.write_all(&hello[..10]);
        }
        idle.push(c);
    }
    assert!(idle.len() >= want, "opened only {} of {want}", idle.len());
    let r = post_tls(
        s.addr,
        healthy.clone(),
        &s.path("cdr"),
        JSON,
        &cdr("healthy"),
    );
    assert_eq!(r.status, 200);
    // Past the deadline every one of them has been cut: the open-connection gauge falls back.
    assert!(eventually(PATIENCE, || s
        .metric("didgate_open_connections")
        .is_some_and(|v| v < 10.0)));
    assert!(s.metric("didgate_tls_handshake_timeouts_total").unwrap() >= want as f64);
    drop(idle);
    let r = post_tls(s.addr, healthy, &s.path("cdr"), JSON, &cdr("healthy-after"));
    assert_eq!(r.status, 200);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
