//! Raw-socket conformance suite (RFC 9112 framing, request-smuggling shapes, limits at N and
//! N+1): each case asserts the exact status, whether the connection stays open, and at the end
//! that exactly the well-formed requests were stored.

use std::collections::BTreeSet;

use crate::util::*;

/// What a case expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Then {
    /// This status, connection still usable afterwards.
    Open(u16),
    /// This status, then the server closes.
    Closed(u16),
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    then: Then,
    /// The callid this request stores when it is accepted.
    stores: Option<String>,
}

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n").into_bytes();
    r.extend_from_slice(body);
    r
}

fn cases(s: &Server) -> Vec<Case> {
    let p = s.path("cdr");
    let sms = s.path("sms");
    let body = |id: &str| cdr(id).into_bytes();
    let cl = |id: &str| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body(id).len()
        )
    };
    let mut v = Vec::new();
    let mut ok = |name: &'static str, raw: Vec<u8>, id: &str| {
        v.push(Case {
            name,
            raw,
            then: Then::Open(200),
            stores: Some(id.to_string()),
        });
    };
    ok(
        "content-length body",
        post(&p, &cl("c01"), &body("c01")),
        "c01",
    );
    ok(
        "header names are case-insensitive",
        post(&p, &cl("c02").to_lowercase(), &body("c02")),
        "c02",
    );
    ok(
        "leading zeros in content-length",
        post(
            &p,
            &format!("Content-Length: 000{}\r\n", body("c03").len()),
            &body("c03"),
        ),
        "c03",
    );
    ok(
        "identical duplicate content-length",
        post(
            &p,
            &format!("{}Content-Length: {}\r\n", cl("c04"), body("c04").len()),
            &body("c04"),
        ),
        "c04",
    );
    ok(
        "identical content-length list",
        post(
            &p,
            &format!("Content-Length: {n}, {n}\r\n", n = body("c05").len()),
            &body("c05"),
        ),
        "c05",
    );
    let b = body("c06");
    let mut chunked = format!("{:x}\r\n", 10).into_bytes();
    chunked.extend_from_slice(&b[..10]);
    chunked.extend_from_slice(format!("\r\n{:X};ext=\"q\"\r\n", b.len() - 10).as_bytes());
    chunked.extend_from_slice(&b[10..]);
    chunked.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    ok(
        "chunked with extension and trailer",
        post(&p, "Transfer-Encoding: chunked\r\n", &chunked),
        "c06",
    );
    ok(
        "transfer-encoding token is case-insensitive",
        post(
            &p,
            "Transfer-Encoding: CHUNKED\r\n",
            format!("{:x}\r\n{}\r\n0\r\n\r\n", body("c07").len(), cdr("c07")).as_bytes(),
        ),
        "c07",
    );
    ok(
        "absolute-form target",
        post(&format!("http://gw{p}"), &cl("c08"), &body("c08")),
        "c08",
    );
    ok(
        "query string is ignored",
        post(&format!("{p}?from=didlogic"), &cl("c09"), &body("c09")),
        "c09",
    );
    let mut lf = format!(
        "POST {p} HTTP/1.1\nHost: gw\nContent-Length: {}\n\n",
        body("c10").len()
    )
    .into_bytes();
    lf.extend(body("c10"));
    ok(
        "bare LF line endings in the head (RFC 9112 §2.2)",
        lf,
        "c10",
    );
    let many: String = (0..100).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    ok(
        "100 header fields",
        post(&p, &format!("{}{many}", cl("c11")), &body("c11")),
        "c11",
    );
    // A body of exactly max_body_bytes.
    let prefix = r#"{"event":"cdr","callid":"c12","pad":""#;
    let mut exact = prefix.as_bytes().to_vec();
    exact.resize(MAX_BODY - 2, b'x');
    exact.extend_from_slice(b"\"}");
    ok(
        "body of exactly max_body_bytes",
        post(&p, &format!("Content-Length: {MAX_BODY}\r\n"), &exact),
        "c12",
    );
    // A head of exactly max_head_bytes.
    let base = post(&p, &format!("{}X-Pad: \r\n", cl("c13")), b"");
    let pad = "p".repeat(MAX_HEAD - base.len());
    ok(
        "head of exactly max_head_bytes",
        post(&p, &format!("{}X-Pad: {pad}\r\n", cl("c13")), &body("c13")),
        "c13",
    );
    ok(
        "tab as optional whitespace",
        post(
            &p,
            &format!("Content-Length:\t{}\t\r\n", body("c14").len()),
            &body("c14"),
        ),
        "c14",
    );
    ok(
        "expect 100-continue with the body already sent",
        post(
            &p,
            &format!("{}Expect: 100-continue\r\n", cl("c15")),
            &body("c15"),
        ),
        "c15",
    );

    let mut closed = |name: &'static str, raw: Vec<u8>, status: u16| {
        v.push(Case {
            name,
            raw,
            then: Then::Closed(status),
            stores: None,
        });
    };
    closed(
        "http/1.0 closes after the answer",
        {
            let mut r = format!(
                "POST {p} HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
                body("c16").len()
            )
            .into_bytes();
            r.extend(body("c16"));
            r
        },
        200,
    );
    closed(
        "connection: close",
        post(
            &p,
            &format!("{}Connection: close\r\n", cl("c17")),
            &body("c17"),
        ),
        200,
    );
    closed(
        "content-length over the limit (N+1)",
        post(&p, &format!("Content-Length: {}\r\n", MAX_BODY + 1), b""),
        413,
    );
    closed(
        "chunked body over the limit",
        post(
            &p,
            "Transfer-Encoding: chunked\r\n",
            format!("{:x}\r\n", MAX_BODY + 1).as_bytes(),
        ),
        413,
    );
    closed(
        "chunked body over the limit across chunks",
        post(
            &p,
            "Transfer-Encoding: chunked\r\n",
            format!("8000\r\n{}\r\n8001\r\n", "y".repeat(0x8000)).as_bytes(),
        ),
        413,
    );
    closed(
        "content-length with a letter",
        post(&p, "Content-Length: 1x\r\n", b"{}"),
        400,
    );
    closed(
        "negative content-length",
        post(&p, "Content-Length: -1\r\n", b""),
        400,
    );
    closed(
        "signed content-length",
        post(&p, "Content-Length: +2\r\n", b"{}"),
        400,
    );
    closed(
        "empty content-length",
        post(&p, "Content-Length: \r\n", b""),
        400,
    );
    closed(
        "hex content-length",
        post(&p, "Content-Length: 0x2\r\n", b"{}"),
        400,
    );
    closed(
        "conflicting duplicate content-length",
        post(&p, "Content-Length: 2\r\nContent-Length: 3\r\n", b"{}x"),
        400,
    );
    closed(
        "conflicting content-length list",
        post(&p, "Content-Length: 2, 3\r\n", b"{}x"),
        400,
    );
    closed(
        "CL.TE smuggling shape",
        post(
            &p,
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\nX",
        ),
        400,
    );
    closed(
        "TE.CL smuggling shape",
        post(
            &p,
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
        400,
    );
    closed(
        "TE.TE: two transfer-encoding headers",
        post(
            &p,
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            b"0\r\n\r\n",
        ),
        501,
    );
    closed(
        "TE.TE: obfuscated coding name",
        post(&p, "Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
        501,
    );
    closed(
        "chunked not last",
        post(&p, "Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
        501,
    );
    closed(
        "gzip then chunked",
        post(&p, "Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        501,
    );
    closed(
        "transfer-encoding in HTTP/1.0",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        400,
    );
    closed(
        "space before colon",
        post(&p, "Content-Length : 2\r\n", b"{}"),
        400,
    );
    closed(
        "obs-fold continuation line",
        post(&p, "X-A: 1\r\n  folded\r\nContent-Length: 2\r\n", b"{}"),
        400,
    );
    closed(
        "bare CR in a header",
        post(&p, "X-A: 1\rX-B: 2\r\nContent-Length: 2\r\n", b"{}"),
        400,
    );
    closed(
        "NUL in a header value",
        post(&p, "X-A: a\0b\r\nContent-Length: 2\r\n", b"{}"),
        400,
    );
    closed(
        "control byte in a header name",
        post(&p, "X\x01A: b\r\nContent-Length: 2\r\n", b"{}"),
        400,
    );
    closed(
        "missing Host on HTTP/1.1",
        format!("POST {p} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
        400,
    );
    closed(
        "two Host headers",
        post(&p, "Host: other\r\nContent-Length: 2\r\n", b"{}"),
        400,
    );
    closed(
        "chunk size that is not hex",
        post(&p, "Transfer-Encoding: chunked\r\n", b"zz\r\n"),
        400,
    );
    closed(
        "chunk size that overflows 64 bits",
        post(
            &p,
            "Transfer-Encoding: chunked\r\n",
            b"1ffffffffffffffff\r\n",
        ),
        400,
    );
    closed(
        "chunk data longer than its size",
        post(
            &p,
            "Transfer-Encoding: chunked\r\n",
            b"2\r\n{}}\r\n0\r\n\r\n",
        ),
        400,
    );
    closed(
        "bare LF after a chunk size",
        post(&p, "Transfer-Encoding: chunked\r\n", b"2\n{}\r\n0\r\n\r\n"),
        400,
    );
    closed(
        "request line over the head limit",
        format!("POST /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes(),
        414,
    );
    closed(
        "head over the limit (N+1)",
        {
            let base = post(&p, "X-Pad: \r\nContent-Length: 2\r\n", b"");
            post(
                &p,
                &format!(
                    "X-Pad: {}\r\nContent-Length: 2\r\n",
                    "p".repeat(MAX_HEAD + 1 - base.len())
                ),
                b"{}",
            )
        },
        431,
    );
    closed(
        "129 header fields",
        post(
            &p,
            &(0..129)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>(),
            b"",
        ),
        431,
    );
    closed(
        "unknown expectation",
        post(&p, "Expect: 200-ok\r\nContent-Length: 2\r\n", b"{}"),
        417,
    );
    closed(
        "HTTP/2 prior-knowledge preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        505,
    );
    closed(
        "TLS ClientHello on the plain port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        400,
    );
    closed(
        "garbage request line",
        b"\x00\x00\x00\x00\r\n\r\n".to_vec(),
        400,
    );

    let mut open = |name: &'static str, raw: Vec<u8>, status: u16| {
        v.push(Case {
            name,
            raw,
            then: Then::Open(status),
            stores: None,
        });
    };
    open(
        "wrong token",
        post(
            &format!("/hooks/{}0/cdr", s.token),
            "Content-Length: 2\r\n",
            b"{}",
        ),
        404,
    );
    open(
        "unknown hook",
        post(
            &format!("/hooks/{}/fax", s.token),
            "Content-Length: 2\r\n",
            b"{}",
        ),
        404,
    );
    open(
        "unknown path",
        post("/", "Content-Length: 2\r\n", b"{}"),
        404,
    );
    open(
        "GET on a hook",
        format!("GET {p} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes(),
        405,
    );
    open(
        "PUT on a hook",
        post(&p, "Content-Length: 2\r\n", b"{}")
            .iter()
            .skip(4)
            .fold(b"PUT".to_vec(), |mut a, b| {
                a.push(*b);
                a
            }),
        405,
    );
    open(
        "lower-case method",
        post(&sms, "Content-Length: 3\r\n", b"a=b")
            .iter()
            .skip(4)
            .fold(b"post".to_vec(), |mut a, b| {
                a.push(*b);
                a
            }),
        405,
    );
    v
}

#[test]
fn conformance_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let cases = cases(&s);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut c = s.connect();
        // Interim 100 responses are not the answer.
        c.send(&case.raw);
        let mut r = c.try_response();
        while r.as_ref().is_some_and(|r| r.status == 100) {
            r = c.try_response();
        }
        let got = match (r, case.then) {
            (None, _) => "no response".to_string(),
            (Some(r), Then::Closed(want)) => {
                let closes = r.header("connection").as_deref() == Some("close") && c.closed();
                if r.status == want && closes {
                    continue;
                } else {
                    format!("{} closes={closes}", r.status)
                }
            }
            (Some(r), Then::Open(want)) => {
                // The connection must still serve a request.
                c.send(b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n");
                let next = c.try_response().map(|n| n.status);
                if r.status == want && next == Some(404) {
                    continue;
                } else {
                    format!("{} then {next:?}", r.status)
                }
            }
        };
        failures.push(format!(
            "{}: expected {:?}, got {got}",
            case.name, case.then
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let stored: BTreeSet<String> = export(&data)
        .iter()
        .map(|e| e["payload"]["callid"].as_str().unwrap_or("?").to_string())
        .collect();
    let mut want: BTreeSet<String> = cases.iter().filter_map(|c| c.stores.clone()).collect();
    want.extend(["c16".to_string(), "c17".to_string()]);
    assert_eq!(stored, want, "exactly the well-formed requests are stored");
    assert!(
        read_ok(&data, &["quarantine", "list"]).is_empty(),
        "nothing malformed was kept"
    );
    // Dozens of refusals in well under the repeat interval: logged once, never with the token.
    let log = s.stderr();
    assert!(!log.contains(&s.token), "token leaked into the log: {log}");
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused a request"))
        .count();
    assert!(
        (1..=2).contains(&refusals),
        "{refusals} refusal lines: {log}"
    );
}
