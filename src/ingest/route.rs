//! Routing: which hook a request target names, and whether it carries the right token.
//!
//! Owns the URL shape `/hooks/{token}/{cdr|recording|sms}`; it does not look at methods or
//! bodies (the connection and `decode/` do). The token is compared in constant time so its
//! bytes cannot be probed by timing.

use subtle::ConstantTimeEq;

pub use crate::event::Hook;

/// The URL to give didlogic: `https://HOST:PORT/hooks/TOKEN/HOOK` (`http://` without TLS; no
/// port when it is the scheme's default; an IPv6 host in brackets).
pub fn hook_url(https: bool, host: &str, port: u16, token: &str, hook: Hook) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let (scheme, default_port) = if https { ("https", 443) } else { ("http", 80) };
    let port = if port == default_port {
        String::new()
    } else {
        format!(":{port}")
    };
    format!("{scheme}://{host}{port}/hooks/{token}/{}", hook.name())
}

/// Where a request target leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A hook path with the right token.
    Hook(Hook),
    /// Anything else, a wrong token included (indistinguishable from outside, on purpose).
    NotFound,
}

/// Resolves a request target (RFC 9112 §3.2: origin-form `/path?query`, or absolute-form
/// `http://host/path`, which servers must accept) against the accepted tokens (the current one,
/// and during a rotation the previous one). Every token is compared, so timing does not tell
/// which one matched.
pub fn route(target: &[u8], tokens: &[Vec<u8>]) -> Route {
    let path = origin_path(target);
    let path = match memchr::memchr(b'?', path) {
        Some(i) => &path[..i],
        None => path,
    };
    let Some(rest) = path.strip_prefix(b"/hooks/") else {
        return Route::NotFound;
    };
    let Some(slash) = memchr::memchr(b'/', rest) else {
        return Route::NotFound;
    };
    let (given, hook) = (&rest[..slash], &rest[slash + 1..]);
    let Some(hook) = Hook::from_name(hook) else {
        return Route::NotFound;
    };
    let matched = tokens
        .iter()
        .fold(false, |any, t| token_matches(given, t) | any);
    if matched {
        Route::Hook(hook)
    } else {
        Route::NotFound
    }
}

/// Constant-time comparison (for equal lengths; the length of a token is not secret).
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

fn origin_path(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let after = &target[scheme.len()..];
            return match memchr::memchr(b'/', after) {
                Some(i) => &after[i..],
                None => b"/",
            };
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let t = &[b"s3cr3t-token-0123456789".to_vec()];
        let cases: &[(&str, Route)] = &[
            ("/hooks/s3cr3t-token-0123456789/cdr", Route::Hook(Hook::Cdr)),
            (
                "/hooks/s3cr3t-token-0123456789/recording",
                Route::Hook(Hook::Recording),
            ),
            (
                "/hooks/s3cr3t-token-0123456789/sms?x=1",
                Route::Hook(Hook::Sms),
            ),
            (
                "http://gw.example:8080/hooks/s3cr3t-token-0123456789/sms",
                Route::Hook(Hook::Sms),
            ),
            ("/hooks/s3cr3t-token-0123456788/cdr", Route::NotFound),
            ("/hooks/s3cr3t-token-012345678/cdr", Route::NotFound),
            ("/hooks/s3cr3t-token-0123456789/cdr/", Route::NotFound),
            ("/hooks/s3cr3t-token-0123456789/CDR", Route::NotFound),
            ("/hooks/s3cr3t-token-0123456789", Route::NotFound),
            ("/hooks//cdr", Route::NotFound),
            ("/", Route::NotFound),
            ("*", Route::NotFound),
            ("http://host", Route::NotFound),
        ];
        for (target, want) in cases {
            assert_eq!(route(target.as_bytes(), t), *want, "{target}");
        }
    }

    #[test]
    fn previous_token_is_accepted_during_rotation() {
        let both = [
            b"new-token-0123456789".to_vec(),
            b"old-token-0123456789".to_vec(),
        ];
        assert_eq!(
            route(b"/hooks/old-token-0123456789/sms", &both),
            Route::Hook(Hook::Sms)
        );
        assert_eq!(
            route(b"/hooks/new-token-0123456789/sms", &both),
            Route::Hook(Hook::Sms)
        );
        assert_eq!(
            route(b"/hooks/old-token-0123456789/sms", &both[..1]),
            Route::NotFound
        );
    }
}
