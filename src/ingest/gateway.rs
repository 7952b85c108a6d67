//! [`Gateway`]: what every connection shares, fixed at start-up except the access rules,
//! which a reload replaces whole.
//!
//! Owns the ingest settings and their defaults, who may post ([`Access`]), and the count of
//! requests in flight that shutdown waits for. It holds the writer's queue and the shared
//! health and metrics, but decides nothing about them.

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipnet::IpNet;

use crate::ingest::deadline::Deadlines;
use crate::ingest::decode::json::MAX_JSON_DEPTH;
use crate::ingest::http::{HEADER_SLOTS, Limits};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::tls::Tls;
use crate::writer::Queue;

/// Request line plus headers. 16 KiB is nginx's large_client_header_buffers order of size and
/// far above what a webhook sender sends (didlogic's requests carry a handful of headers).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Header fields per request: generous for proxies that add many, bounded for memory.
pub const DEFAULT_MAX_HEADERS: usize = HEADER_SLOTS;
/// Body limit. didlogic's payloads are well under 1 KiB; 64 KiB leaves room for growth
/// while bounding per-connection memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The whole request head must arrive within this; a client trickling bytes cannot extend it.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole body must arrive within this once the head is read.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response write that makes no progress for this long closes the connection (a client that
/// never reads must not hold memory).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for its commit before answering 503. The sender allows 15 s for
/// the whole response; 5 s leaves room for a slow network on both sides.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The sender's whole-response budget: a commit timeout at or past it is refused.
pub const SENDER_RESPONSE_BUDGET: Duration = Duration::from_secs(15);

/// What each connection needs to know, fixed at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Head, header and body size limits.
    pub limits: Limits,
    /// The whole request head must arrive within this.
    pub head_timeout: Duration,
    /// The whole body must arrive within this once the head is read.
    pub body_timeout: Duration,
    /// A keep-alive connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A response write that makes no progress this long closes the connection.
    pub write_timeout: Duration,
    /// How long a request waits for its commit before answering 503.
    pub commit_timeout: Duration,
    /// Deepest JSON nesting decoded; deeper bodies go to quarantine.
    pub max_json_depth: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits {
                max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
                max_headers: DEFAULT_MAX_HEADERS,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            },
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            max_json_depth: MAX_JSON_DEPTH,
        }
    }
}

/// Who may post: replaced as a whole on reload.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Accepted path tokens: the current one, and during a rotation the previous one.
    pub tokens: Vec<Vec<u8>>,
    /// Allowed peer ranges; empty allows everyone.
    pub allow_from: Vec<IpNet>,
}

impl Access {
    /// Whether a peer may connect (IPv4-mapped IPv6 peers are judged as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }
}

/// State shared by the accept loop and every connection.
pub struct Gateway {
    access: RwLock<Arc<Access>>,
    /// The writer's queue.
    pub queue: Queue,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Requests between parsed head and written answer: shutdown waits for none to be left.
    pub in_flight: AtomicUsize,
    /// Counters every connection adds to.
    pub metrics: Arc<Metrics>,
    /// Shutdown and low-disk flags, read before queueing.
    pub health: Arc<Health>,
    /// Times out socket waits and requests waiting longer than `commit_timeout`.
    pub deadlines: Deadlines,
    /// HTTPS: every connection starts with a TLS handshake; `None`: plain HTTP.
    pub tls: Option<Arc<Tls>>,
}

impl Gateway {
    /// The shared state of a gateway about to accept.
    pub fn new(
        access: Access,
        queue: Queue,
        settings: Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        deadlines: Deadlines,
        tls: Option<Arc<Tls>>,
    ) -> Gateway {
        Gateway {
            access: RwLock::new(Arc::new(access)),
            queue,
            settings,
            in_flight: AtomicUsize::new(0),
            metrics,
            health,
            deadlines,
            tls,
        }
    }

    /// The access rules in force now.
    pub fn access(&self) -> Arc<Access> {
        match self.access.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the access rules (reload); connections see them from their next request.
    pub fn set_access(&self, access: Access) {
        let mut guard = match self.access.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(access);
    }
}
