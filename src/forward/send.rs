//! One delivery attempt: the event's body, byte for byte, POSTed with its original
//! Content-Type and the Standard Webhooks headers; and the sender threads that run attempts,
//! a destination's `max_in_flight` of them, each blocking on its own request.
//!
//! A sender thread takes a batch of attempts at a time and sends them one after the other,
//! answering with the batch's outcomes: handing events over one by one cost more (threads
//! waking and spinning on the channels) than the requests themselves on a 2-core host.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::Destination;
use super::schedule::{Class, Failure, Outcome, parse_retry_after};
use super::signature;
use super::state::RetryEntry;

/// Most bytes of a response body read (and otherwise ignored) so the connection can be kept.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Most characters of an error kept in a retry entry or the log.
pub const MAX_ERROR_CHARS: usize = 300;
/// Most attempts handed to a sender thread at once (it sends them one after the other).
/// Batches are smaller when less is waiting, so a quiet destination gets each event at once.
pub const SENDER_BATCH: usize = 32;
/// Longest wait for a connection to open (within `timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a destination's resolved addresses are used before they are looked up again.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// Resolves the destination's host on the calling thread and keeps the answer for
/// [`RESOLVE_TTL`]. ureq looks the host up for every request, before it looks in its pool of
/// open connections, and its default resolver spawns a thread per lookup to time it out: at
/// thousands of events a second that was most of a sender's work. An IP address needs no
/// lookup at all.
#[derive(Debug, Default)]
struct CachedResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cached: std::sync::Mutex<Option<Lookup>>,
}

/// One lookup: when, of which host and port, and what it found.
#[derive(Debug)]
struct Lookup {
    at: Instant,
    host: String,
    port: u16,
    found: Vec<std::net::SocketAddr>,
}

impl ureq::unversioned::resolver::Resolver for CachedResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let _ = (config, timeout);
        let (host, port) = crate::lookup::target(uri)?;
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(crate::lookup::resolved(
                self.inner.empty(),
                [std::net::SocketAddr::new(ip, port)],
            ));
        }
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = cached.as_ref()
            && l.at.elapsed() < RESOLVE_TTL
            && l.host == host
            && l.port == port
        {
            return Ok(crate::lookup::resolved(
                self.inner.empty(),
                l.found.iter().copied(),
            ));
        }
        let found = crate::lookup::addresses(host, port)?;
        let out = crate::lookup::resolved(self.inner.empty(), found.iter().copied());
        *cached = Some(Lookup {
            at: Instant::now(),
            host: host.to_string(),
            port,
            found,
        });
        Ok(out)
    }
}

/// Where an attempt's event came from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The stream after the cursor: a first attempt.
    Stream,
    /// The retry set, with its entry.
    Retry(RetryEntry),
}

/// One event to send.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// When it was committed, ms since the epoch.
    pub stored_at_ms: i64,
    /// Its Content-Type as received.
    pub content_type: Vec<u8>,
    /// Its body as received.
    pub body: Vec<u8>,
    /// Where it came from.
    pub source: Source,
}

impl Attempt {
    /// Which try this is (1 for the first).
    pub fn number(&self) -> u32 {
        match &self.source {
            Source::Stream => 1,
            Source::Retry(e) => e.attempts.saturating_add(1),
        }
    }
}

/// Where a dispatcher hands its batches of attempts: the sender threads of an HTTP
/// destination, or the publisher of a NATS one (its own runtime, so the channel is tokio's;
/// both are bounded to the destination's lanes, and sending never blocks).
pub enum Lane {
    /// HTTP sender threads.
    Threads(Sender<Vec<Attempt>>),
    /// A NATS publisher.
    Nats(tokio::sync::mpsc::Sender<Vec<Attempt>>),
}

impl Lane {
    /// Hands over a batch, or gives it back when every lane is busy or the receiver is gone.
    pub fn try_send(&self, batch: Vec<Attempt>) -> Result<(), Vec<Attempt>> {
        match self {
            Lane::Threads(tx) => tx.try_send(batch).map_err(|e| e.into_inner()),
            Lane::Nats(tx) => tx.try_send(batch).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(b)
                | tokio::sync::mpsc::error::TrySendError::Closed(b) => b,
            }),
        }
    }
}

/// An attempt and how it went.
#[derive(Debug)]
pub struct Done {
    /// The attempt (its body is dropped).
    pub seq: u64,
    /// Where it came from.
    pub source: Source,
    /// How it went.
    pub outcome: Outcome,
    /// When it started, ms since the epoch.
    pub started_ms: i64,
    /// How long it took.
    pub took: Duration,
}

/// A destination's HTTP client (its connections are kept and shared by its sender threads).
pub struct Client {
    agent: ureq::Agent,
    dest: Arc<Destination>,
}

impl Client {
    /// A client for `dest`: no redirects followed, every status returned, `timeout` per
    /// attempt.
    pub fn new(dest: Arc<Destination>) -> Client {
        let config = crate::outbound::config(dest.timeout)
            .timeout_connect(Some(CONNECT_TIMEOUT.min(dest.timeout)))
            .max_idle_connections_per_host(super::MAX_IN_FLIGHT)
            .build();
        Client {
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                CachedResolver::default(),
            ),
            dest,
        }
    }

    /// Sends one attempt, stamped `now_s` (the `webhook-timestamp`).
    pub fn send(&self, a: &Attempt, now_s: i64) -> Outcome {
        let id = signature::webhook_id(&a.kind, &a.body);
        let content_type = if a.content_type.is_empty()
            || http::HeaderValue::from_bytes(&a.content_type).is_err()
        {
            b"application/octet-stream".as_slice()
        } else {
            &a.content_type
        };
        let mut req = self
            .agent
            .post(&self.dest.url)
            .header("content-type", content_type)
            .header("webhook-id", &id)
            .header("webhook-timestamp", &now_s.to_string())
            .header("x-didgate-kind", &a.kind)
            .header("x-didgate-seq", &a.seq.to_string())
            .header("x-didgate-attempt", &a.number().to_string());
        if !self.dest.secrets.is_empty() {
            let sig = signature::header(&self.dest.secrets, &id, now_s, &a.body);
            req = req.header("webhook-signature", &sig);
        }
        for (k, v) in &self.dest.headers {
            req = req.header(k, v);
        }
        let response = match req.send(&a.body[..]) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(failure_of(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, crate::timestamp::now_ms()));
        // Read a bounded part of the body, so the connection can be used again.
        let mut sink = [0u8; 8192];
        let mut reader = response.into_body().into_reader().take(MAX_RESPONSE_BYTES);
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        if (200..300).contains(&status) {
            return Outcome::Delivered(status);
        }
        Outcome::Failed(Failure {
            class: Class::of_status(status),
            status: Some(status),
            error: format!("HTTP {status}"),
            retry_after,
        })
    }
}

/// The failure a transport error stands for.
fn failure_of(e: &ureq::Error) -> Failure {
    let class = match e {
        ureq::Error::Timeout(_) => Class::Timeout,
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Class::Timeout
        }
        _ => Class::Connection,
    };
    Failure::without_status(class, e.to_string())
}

/// Starts `n` sender threads taking attempts from `rx` and answering on `done`; each ends
/// when `rx` is closed (after its attempt under way).
///
/// # Errors
/// A thread could not be spawned.
pub fn spawn(
    client: &Arc<Client>,
    n: usize,
    rx: &Receiver<Vec<Attempt>>,
    done: &Sender<Vec<Done>>,
) -> std::io::Result<()> {
    for i in 0..n {
        let (client, rx, done) = (client.clone(), rx.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("didgate-fwd-{i}"))
            .spawn(move || {
                crate::ops::lower_priority(super::NICENESS);
                for batch in rx.iter() {
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for a in batch {
                        let started_ms = crate::timestamp::now_ms();
                        let started = Instant::now();
                        let outcome = client.send(&a, started_ms / 1000);
                        outcomes.push(Done {
                            seq: a.seq,
                            source: a.source,
                            outcome,
                            started_ms,
                            took: started.elapsed(),
                        });
                    }
                    if done.send(outcomes).is_err() {
                        return;
                    }
                }
            })?;
    }
    Ok(())
}
