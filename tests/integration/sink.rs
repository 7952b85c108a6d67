//! A forwarding destination for the tests: an HTTP/1.1 server on loopback that records every
//! request and answers as the test's rule says (200, any status, 429 with Retry-After, a hang
//! past the client's timeout, a close in the middle of the response).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub seq: u64,
    pub kind: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: Option<String>,
    pub content_type: String,
    pub attempt: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status answered; `None`: no whole answer (a hang or a close).
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `webhook-signature` holds a valid `v1` signature under `secret` (`whsec_...`),
    /// computed here independently of didgate.
    pub fn signed_by(&self, secret: &str) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(secret.trim_start_matches("whsec_")).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let mut msg = format!("{}.{}.", self.id, self.timestamp).into_bytes();
        msg.extend_from_slice(&self.body);
        let want = format!("v1,{}", b64.encode(ring::hmac::sign(&key, &msg).as_ref()));
        self.signature
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|p| p == want))
    }
}

/// How to answer one request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Say nothing for this long, then close.
    Hang(Duration),
    /// Send part of a status line, then close.
    CloseMidResponse,
}

type Rule = Box<dyn FnMut(&Received) -> Reply + Send>;

pub struct Sink {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    rule: Arc<Mutex<Rule>>,
}

impl Sink {
    /// A sink answering by `rule`.
    pub fn start(rule: impl FnMut(&Received) -> Reply + Send + 'static) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Mutex<Rule>> = Arc::new(Mutex::new(Box::new(rule)));
        let (g, r) = (got.clone(), rule.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (g, r) = (g.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &g, &r));
            }
        });
        Sink { addr, got, rule }
    }

    /// A sink that answers 200 to everything.
    pub fn ok() -> Sink {
        Sink::start(|_| Reply::Status(200))
    }

    pub fn set(&self, rule: impl FnMut(&Received) -> Reply + Send + 'static) {
        *self.rule.lock().unwrap() = Box::new(rule);
    }

    pub fn url(&self) -> String {
        format!("http://{}/in", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The sequence numbers answered 2xx, in the order they were.
    pub fn delivered(&self) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .map(|r| r.seq)
            .collect()
    }

    /// Whether every one of `seqs` was answered 2xx at least once.
    pub fn has_all(&self, seqs: impl IntoIterator<Item = u64>) -> bool {
        let got: std::collections::HashSet<u64> = self.delivered().into_iter().collect();
        seqs.into_iter().all(|s| got.contains(&s))
    }
}

fn serve(mut conn: TcpStream, got: &Mutex<Vec<Received>>, rule: &Mutex<Rule>) {
    let mut buf = Vec::new();
    loop {
        let Some((req, used)) = read_request(&mut conn, &mut buf) else {
            return;
        };
        buf.drain(..used);
        let reply = (rule.lock().unwrap())(&req);
        // Recorded on arrival (a hang is seen at once); its answer is filled in below, before
        // it is sent: a test that sees it answered 2xx may stop the sink's peer at once.
        let index = {
            let mut g = got.lock().unwrap();
            g.push(req);
            g.len() - 1
        };
        let answer = |status: u16, extra: &str| {
            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\nok").into_bytes()
        };
        let (bytes, answered, close) = match reply {
            Reply::Status(s) => (answer(s, ""), Some(s), false),
            Reply::RetryAfter(s, secs) => (
                answer(s, &format!("retry-after: {secs}\r\n")),
                Some(s),
                false,
            ),
            Reply::Hang(d) => {
                std::thread::sleep(d);
                (Vec::new(), None, true)
            }
            Reply::CloseMidResponse => (b"HTTP/1.1 20".to_vec(), None, true),
        };
        got.lock().unwrap()[index].answered = answered;
        if conn.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Received, usize)> {
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let hs: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let len: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head + len {
                let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let r = Received {
                seq: get("x-didgate-seq")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                kind: get("x-didgate-kind").unwrap_or_default(),
                id: get("webhook-id").unwrap_or_default(),
                timestamp: get("webhook-timestamp")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                signature: get("webhook-signature"),
                content_type: get("content-type").unwrap_or_default(),
                attempt: get("x-didgate-attempt")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                body: buf[head..head + len].to_vec(),
                headers: hs,
                at: Instant::now(),
                answered: None,
            };
            return Some((r, head + len));
        }
        let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}
