//! The web console through the real server: every page, the security headers, a hostile
//! SMS rendered as text, recordings streamed with Range requests, the password and its rate
//! limit, and the refusal to expose it without one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::util::*;

/// One request to the admin listener with extra header lines; the status, the head and the
/// body as bytes.
fn fetch(admin: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn page(admin: SocketAddr, path: &str) -> String {
    let (status, head, body) = fetch(admin, "GET", path, "");
    assert_eq!(status, 200, "{path}: {head}");
    assert_secure(&head);
    String::from_utf8(body).unwrap()
}

fn assert_secure(head: &str) {
    let csp = header(head, "content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        header(head, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        header(head, "referrer-policy").as_deref(),
        Some("no-referrer")
    );
}

/// An mp3 host on loopback: every GET gets `body`.
fn mp3_host(body: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&body);
        }
    });
    addr
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A gateway with a call of today, its archived recording, a hostile SMS and a quarantined
/// body; the data directory, and the recording's bytes.
struct Fed {
    server: Server,
    data: std::path::PathBuf,
    audio: Vec<u8>,
    hostile: String,
}

fn feed(dir: &std::path::Path) -> Fed {
    let audio: Vec<u8> = b"ID3\x04\x00\x00\x00\x00\x00\x00"
        .iter()
        .copied()
        // Over two of the console's 64 KiB stream pieces.
        .chain((0..150_000u32).map(|i| (i * 31 % 251) as u8))
        .collect();
    let host = mp3_host(audio.clone());
    let cfg = write_config(
        dir,
        "didgate.toml",
        "timezone = \"UTC\"\n[recordings]\nallow_http = true\n\
         allow_private_addresses = [\"127.0.0.1/32\"]\ndisk_margin_bytes = 0\n",
    );
    let data = dir.join("data");
    let server = Server::start(&data, &["--config", &cfg]);
    let now = now_rfc3339();
    let cdr = format!(
        r#"{{"calldate":"{now}","callid":"call-1","direction":"outbound","disposition":"ANSWERED","src":"441273004315","dst":"448081697031","duration":70,"billsec":61,"event":"cdr"}}"#
    );
    assert_eq!(server.post("cdr", JSON, &cdr).status, 200);
    let rec = format!(
        r#"{{"calldate":"{now}","callid":"call-1","event":"recording","recording_url":"http://{host}/call-1.mp3"}}"#
    );
    assert_eq!(server.post("recording", JSON, &rec).status, 200);
    // Anyone can text your number: markup, an attribute break-out, a right-to-left override
    // and 4 KiB of emoji.
    let emoji = "😀".repeat(1024);
    let hostile =
        format!("<script>alert(1)</script>\"><img src=x onerror=alert(2)>\u{202E}gnp.exe {emoji}");
    let sms = format!(
        "src={}&dst=448001234567&message={}&received_at=2026-10-25+09%3A00%3A00+UTC",
        enc("<b>15551234567"),
        enc(&hostile)
    );
    let plain = |text: &str| format!("src=%2B447700900123&dst=448001234567&message={}", enc(text));
    assert_eq!(
        server
            .post("sms", FORM, &plain("Running 10 minutes late"))
            .status,
        200
    );
    assert_eq!(server.post("sms", FORM, &sms).status, 200);
    assert_eq!(server.post("sms", FORM, &plain("Here now")).status, 200);
    assert_eq!(server.post("cdr", JSON, "{\"calldate\": ").status, 200);
    // The recording gets archived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_ok(&data, &["recordings", "--json"]).contains("\"fetched\"") {
        assert!(
            Instant::now() < deadline,
            "the recording was never archived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Fed {
        server,
        data,
        audio,
        hostile,
    }
}

/// The first call's page, from the calls list.
fn call_path(admin: SocketAddr) -> String {
    let calls = page(admin, "/calls");
    let seq = calls
        .split("href=\"/call/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a call link");
    format!("/call/{seq}")
}

#[test]
fn every_page_renders_escapes_and_streams_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let Fed {
        server,
        data,
        audio,
        hostile,
    } = feed(dir.path());
    let admin = server.admin.unwrap();
    let emoji = "😀".repeat(1024);
    assert!(hostile.contains(&emoji));
    let dash = page(admin, "/");
    assert!(dash.contains("<svg"), "a chart");
    assert!(
        dash.contains("<b>1</b><span>calls</span>"),
        "today's call: {dash}"
    );
    assert!(dash.contains("last cdr"), "{dash}");
    for forbidden in ["<script", "http://", "https://"] {
        assert!(!dash.contains(forbidden), "{forbidden} in the dashboard");
    }

    let calls = page(admin, "/calls");
    assert!(calls.contains("448081697031"));
    assert!(calls.contains(">archived<"), "{calls}");
    let (status, head, _) = fetch(admin, "GET", "/calls?direction=sideways", "");
    assert_eq!(status, 400, "{head}");
    let (status, head, csv) = fetch(admin, "GET", "/calls.csv", "");
    assert_eq!(status, 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("text/csv")
    );
    let cli_csv = read_ok(&data, &["calls", "--format", "csv", "--tz", "UTC"]);
    assert_eq!(String::from_utf8(csv).unwrap(), cli_csv);

    let call = page(admin, &call_path(admin));
    assert!(
        call.contains("call-1") && call.contains("recording_url"),
        "{call}"
    );
    let src = call
        .split("<audio")
        .nth(1)
        .and_then(|s| s.split("src=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("an audio player")
        .to_string();

    // The whole file, then ranges as a player asks.
    let (status, head, body) = fetch(admin, "GET", &src, "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type").as_deref(), Some("audio/mpeg"));
    assert_eq!(header(&head, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(body, audio);
    let (status, head, body) = fetch(admin, "GET", &src, "Range: bytes=100-199\r\n");
    assert_eq!(status, 206, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 100-199/{}", audio.len()))
    );
    assert_eq!(body, &audio[100..200]);
    let (status, _, body) = fetch(admin, "GET", &src, "Range: bytes=-10\r\n");
    assert_eq!((status, body.as_slice()), (206, &audio[audio.len() - 10..]));
    let (status, head, _) = fetch(
        admin,
        "GET",
        &src,
        &format!("Range: bytes={}-\r\n", audio.len()),
    );
    assert_eq!(status, 416, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{}", audio.len()))
    );
    let (status, _, _) = fetch(admin, "GET", "/recording/999999.mp3", "");
    assert_eq!(status, 404);

    let inbox = page(admin, "/sms");
    assert!(
        !inbox.contains("<script>") && !inbox.contains("<img"),
        "{inbox}"
    );
    assert!(
        inbox.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img"),
        "{inbox}"
    );
    assert!(
        !inbox.contains('\u{202E}'),
        "the override is shown, not obeyed"
    );
    assert!(inbox.contains(&emoji), "the whole text");
    assert!(inbox.contains("&lt;b&gt;15551234567"));
    // Grouped by sender: the sender of the newest message first, with both of theirs, newest
    // first; then the other sender.
    let at = |text: &str| {
        inbox
            .find(text)
            .unwrap_or_else(|| panic!("{text} in {inbox}"))
    };
    assert!(at("Here now") < at("Running 10 minutes late"), "{inbox}");
    assert!(
        at("Running 10 minutes late") < at("&lt;script&gt;"),
        "{inbox}"
    );
    assert!(inbox.contains("2 messages on this page"), "{inbox}");
    let one = page(admin, "/sms?from=447700900123");
    assert!(one.contains("Here now") && one.contains("Running 10 minutes late"));
    assert!(!one.contains("&lt;script&gt;"), "{one}");

    let quarantine = page(admin, "/quarantine");
    assert!(
        quarantine.contains("{&quot;calldate&quot;: "),
        "{quarantine}"
    );
    page(admin, "/alerts");
    let (status, head, css) = fetch(admin, "GET", "/console.css", "");
    assert_eq!(status, 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("text/css")
    );
    assert!(!css.is_empty());

    // Read-only, and unknown paths are plain 404s.
    let (status, head, _) = fetch(admin, "POST", "/calls", "Content-Length: 0\r\n");
    assert_eq!(status, 405, "{head}");
    assert_eq!(fetch(admin, "GET", "/nowhere", "").0, 404);
    assert_eq!(fetch(admin, "GET", "/call/99999999", "").0, 404);
    assert_eq!(fetch(admin, "GET", "/healthz", "").0, 200);
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn a_password_guards_the_console_and_metrics_but_not_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "didgate.toml",
        "console_password = \"correct horse battery\"\n",
    );
    let server = Server::start(&dir.path().join("data"), &["--config", &cfg]);
    let admin = server.admin.unwrap();
    let basic = |pass: &str| {
        use base64::Engine;
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{pass}"))
        )
    };
    let (status, head, _) = fetch(admin, "GET", "/", "");
    assert_eq!(status, 401);
    assert!(
        header(&head, "www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(fetch(admin, "GET", "/metrics", "").0, 401);
    assert_eq!(fetch(admin, "GET", "/healthz", "").0, 200);
    assert_eq!(fetch(admin, "GET", "/readyz", "").0, 200);
    assert_eq!(
        fetch(admin, "GET", "/", &basic("correct horse battery")).0,
        200
    );
    assert_eq!(
        fetch(admin, "GET", "/metrics", &basic("correct horse battery")).0,
        200
    );
    for _ in 0..5 {
        assert_eq!(fetch(admin, "GET", "/", &basic("wrong")).0, 401);
    }
    let (status, head, _) = fetch(admin, "GET", "/", &basic("correct horse battery"));
    assert_eq!(status, 429, "{head}");
    assert!(header(&head, "retry-after").is_some());
    assert_eq!(fetch(admin, "GET", "/healthz", "").0, 200);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = didgate()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("console_password"), "{err}");
    let cfg = write_config(dir.path(), "short.toml", "console_password = \"short\"\n");
    let out = didgate().args(["check-config", &cfg]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("console_password"));
}

/// The browser the console test drives: Debian's `chromium` (`.ci/run` installs it and sets
/// `DIDGATE_REQUIRE_BROWSER`; elsewhere, without it, the test says it was skipped).
fn chromium(test: &str) -> Option<&'static str> {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("DIDGATE_REQUIRE_BROWSER").is_none(),
            "chromium is not installed (apt-get install chromium); CI must run {test}"
        );
        eprintln!("{test}: skipped, chromium is not installed (apt-get install chromium)");
        return None;
    }
    (!skip_under_emulation(test)).then_some("chromium")
}

/// The paths of what a page loads by itself (stylesheet, images, media): what its `src`
/// and `link href` attributes name.
fn sub_requests(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (marker, tag) in [(" src=\"", ""), ("<link ", " href=\"")] {
        for part in html.split(marker).skip(1) {
            let rest = if tag.is_empty() {
                part
            } else {
                match part.split('>').next().and_then(|t| t.split(tag).nth(1)) {
                    Some(r) => r,
                    None => continue,
                }
            };
            if let Some(url) = rest.split('"').next() {
                out.push(url.replace("&amp;", "&"));
            }
        }
    }
    out
}

#[test]
fn a_real_browser_loads_every_page_without_errors() {
    let Some(browser) = chromium("a_real_browser_loads_every_page_without_errors") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fed = feed(dir.path());
    let admin = fed.server.admin.unwrap();
    let call = call_path(admin);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let pages = [
        ("dashboard", "/"),
        ("calls", "/calls"),
        ("call", call.as_str()),
        ("inbox", "/sms"),
        ("quarantine", "/quarantine"),
        ("alerts", "/alerts"),
    ];
    for (name, path) in pages {
        let html = page(admin, path);
        // Everything the page loads comes from the console and loads.
        for sub in sub_requests(&html) {
            assert!(sub.starts_with('/'), "{name} loads {sub} from elsewhere");
            let (status, head, _) = fetch(admin, "GET", &sub, "");
            assert!(status == 200 || status == 206, "{name}: {sub}: {head}");
        }
        for (form, size) in [("desktop", "1280,900"), ("phone", "390,844")] {
            let file = shots.join(format!("{name}-{form}.png"));
            let _ = std::fs::remove_file(&file);
            let profile = dir.path().join(format!("profile-{name}-{form}"));
            let out = std::process::Command::new("timeout")
                .arg("90")
                .arg(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--no-first-run",
                    "--enable-logging=stderr",
                    "--v=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(format!("--window-size={size}"))
                .arg(format!("--screenshot={}", file.display()))
                .arg(format!("http://{admin}{path}"))
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name} {form}: {log}");
            // Script errors, CSP violations and blocked loads are console messages.
            let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
            assert!(console.is_empty(), "{name} {form}: {console:#?}");
            let png = std::fs::read(&file).unwrap();
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 2000,
                "{name} {form}"
            );
        }
    }
    eprintln!("screenshots in {}", shots.display());
}

#[test]
fn the_inbox_shows_each_message_once_across_its_scan_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin.unwrap();
    // The SMS is the 1,024th newest event, the last of the inbox's first backward page, and
    // one older event makes a second page.
    let mut c = server.connect();
    server.post_cdrs_pipelined(&mut c, ["before-the-boundary".to_string()]);
    let sms = "src=15551234567&dst=448001234567&message=boundary+message";
    assert_eq!(server.post("sms", FORM, sms).status, 200);
    server.post_cdrs_pipelined(&mut c, (0..1023).map(|i| format!("boundary-{i}")));
    let inbox = page(admin, "/sms");
    assert_eq!(inbox.matches("boundary message").count(), 1, "{inbox}");
    // The dashboard's search for the last event of each kind walks the same pages.
    let dash = page(admin, "/");
    let sms_row = dash.split("<th>last sms</th>").nth(1).unwrap();
    let sms_row = sms_row.split("</tr>").next().unwrap();
    assert!(sms_row.contains("s ago"), "{sms_row}");
}
