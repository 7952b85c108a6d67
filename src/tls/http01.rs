//! The plain listener beside HTTPS (`http_redirect`, normally port 80): it answers ACME
//! `http-01` validations and nothing else. In particular it never redirects: the sender counts
//! a 3xx as delivered, so a webhook sent to `http://` would be lost without a trace. It is
//! refused with a 404 that names the HTTPS URL, which shows as a failure in the sender's log.

use std::sync::Arc;
use std::time::Duration;

use crate::ingest::http::{Limits, Method};
use crate::ingest::oneshot;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::tls::resolver::Resolver;

/// A validation request is one short GET.
const LIMITS: Limits = Limits {
    max_head_bytes: 8 * 1024,
    max_headers: 64,
    max_body_bytes: 64 * 1024,
};

/// The whole request must arrive within this.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where validation requests ask (RFC 8555 §8.3).
const CHALLENGE_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// What the listener reads.
pub struct Http01 {
    /// The current challenge answers.
    pub resolver: Arc<Resolver>,
    /// Refusals and answers are counted.
    pub metrics: Arc<Metrics>,
    /// Ends the accept loop.
    pub health: Arc<Health>,
}

/// Accepts until shutdown, one coroutine per connection.
pub fn accept_loop(listener: may::net::TcpListener, http01: Arc<Http01>) {
    let health = http01.health.clone();
    oneshot::accept_loop(listener, http01, &health, handle);
}

fn handle(mut stream: may::net::TcpStream, http01: &Http01) {
    let Some(head) = oneshot::read_head(&mut stream, LIMITS, TIMEOUT) else {
        return;
    };
    let bodyless = head.method == Method::Head;
    let path = head.target.split(|&b| b == b'?').next().unwrap_or_default();
    let answer = path
        .strip_prefix(CHALLENGE_PREFIX)
        .filter(|_| head.method != Method::Post)
        .and_then(|token| std::str::from_utf8(token).ok())
        .and_then(|token| http01.resolver.http_challenge(token));
    match answer {
        Some(key_authorization) => {
            http01
                .metrics
                .tls_challenges_answered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            oneshot::answer(
                &mut stream,
                200,
                "OK",
                key_authorization.as_bytes(),
                bodyless,
            );
        }
        None => {
            http01
                .metrics
                .tls_plain_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            oneshot::answer(
                &mut stream,
                404,
                "Not Found",
                b"this port answers ACME challenges only: webhooks go to the https:// URL \
                  (`didgate urls` prints it)\n",
                bodyless,
            );
        }
    }
}
