//! Who may look: HTTP basic auth against `console_password` (any user name), compared in
//! constant time, with failed attempts rate limited per client address. `/healthz` and
//! `/readyz` never ask (the admin listener answers them before the guard).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

/// Failed attempts a client address may make within [`FAILURE_WINDOW`]; after that it gets
/// `429` until the window has passed, right password or not.
pub const MAX_FAILURES: u32 = 5;

/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses whose failures are remembered; when full, the oldest windows go first.
pub const MAX_TRACKED_CLIENTS: usize = 4096;

/// What the guard decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Allowed,
    /// Ask for credentials (`401` with `WWW-Authenticate`).
    Unauthorized,
    /// Too many failures from this address (`429`).
    Limited,
}

/// The console's gate.
pub struct Guard {
    /// SHA-256 of the password; `None`: no password, everything allowed.
    digest: Option<[u8; 32]>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Guard {
    /// A guard for `password` (`None`: open, which the config allows on loopback only).
    pub fn new(password: Option<&str>) -> Guard {
        Guard {
            digest: password.map(|p| sha256(p.as_bytes())),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a password is asked at all.
    pub fn is_open(&self) -> bool {
        self.digest.is_none()
    }

    /// Judges a request from `client` with the `Authorization` field `authorization`.
    pub fn check(&self, client: IpAddr, authorization: Option<&[u8]>, now: Instant) -> Verdict {
        let Some(want) = &self.digest else {
            return Verdict::Allowed;
        };
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, since)) = failures.get(&client)
            && now.duration_since(*since) < FAILURE_WINDOW
            && *n >= MAX_FAILURES
        {
            return Verdict::Limited;
        }
        let given = authorization.and_then(password_of);
        // Digests of equal length, compared in constant time: neither the password's length
        // nor its first wrong byte shows in the timing.
        let ok = given.is_some_and(|g| bool::from(sha256(&g).ct_eq(want)));
        if ok {
            return Verdict::Allowed;
        }
        if authorization.is_some() {
            if failures.len() >= MAX_TRACKED_CLIENTS && !failures.contains_key(&client) {
                failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
                if failures.len() >= MAX_TRACKED_CLIENTS
                    && let Some(oldest) = failures
                        .iter()
                        .min_by_key(|(_, (_, s))| *s)
                        .map(|(k, _)| *k)
                {
                    failures.remove(&oldest);
                }
            }
            let entry = failures.entry(client).or_insert((0, now));
            if now.duration_since(entry.1) >= FAILURE_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
        Verdict::Unauthorized
    }
}

/// The password of a `Basic` credential (the user name is ignored).
fn password_of(field: &[u8]) -> Option<Vec<u8>> {
    let field = std::str::from_utf8(field).ok()?.trim();
    let (scheme, b64) = field.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    Some(raw[colon + 1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn asks_checks_and_limits_failures_per_address() {
        let g = Guard::new(Some("correct horse battery"));
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(g.check(a, None, t), Verdict::Unauthorized);
        assert_eq!(
            g.check(a, Some(&basic("any:correct horse battery")), t),
            Verdict::Allowed
        );
        assert_eq!(g.check(a, Some(b"Bearer x"), t), Verdict::Unauthorized);
        for _ in 1..MAX_FAILURES {
            assert_eq!(
                g.check(a, Some(&basic("u:wrong")), t),
                Verdict::Unauthorized
            );
        }
        // Limited now, even with the right password; another address is not.
        assert_eq!(
            g.check(a, Some(&basic("u:correct horse battery")), t),
            Verdict::Limited
        );
        assert_eq!(
            g.check(b, Some(&basic("u:correct horse battery")), t),
            Verdict::Allowed
        );
        let later = t + FAILURE_WINDOW;
        assert_eq!(
            g.check(a, Some(&basic("u:correct horse battery")), later),
            Verdict::Allowed
        );
        assert!(Guard::new(None).is_open());
        assert_eq!(Guard::new(None).check(a, None, t), Verdict::Allowed);
    }
}
