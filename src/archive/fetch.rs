//! One download: a pre-signed URL to a temporary file, under the fetch policy, with the
//! checks that tell a whole recording from a broken one. Blocking (ureq, rustls with the
//! system's CA store, `HTTPS_PROXY` honoured); runs on an archiver thread, never on ingest's.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use md5::Digest as _;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::archive::policy::Policy;

/// Redirects followed at most; each target is checked like the first URL.
pub const MAX_REDIRECTS: u32 = 3;

/// Bytes of a non-audio body kept (hex) for diagnosis.
const FIRST_BYTES: usize = 32;

/// What a download came to.
#[derive(Debug)]
pub enum Fetch {
    /// The body is in the temporary file, whole and checked against Content-Length (and a
    /// single-part ETag, when it did not match: `etag_mismatch`).
    Done {
        /// Its size.
        bytes: u64,
        /// SHA-256, hex.
        sha256: String,
        /// The Content-Type sent.
        content_type: Option<String>,
        /// It looks like audio (ID3 tag, MPEG frame sync) or says so in its Content-Type.
        audio: bool,
        /// The first bytes, hex.
        first_bytes: String,
        /// The ETag was a single-part MD5 and did not match the body.
        etag_mismatch: bool,
    },
    /// Worth another try later: timeout, connection error, 5xx, 429, a truncated body.
    /// `after`: what a `Retry-After` asked.
    Retry {
        /// What happened.
        error: String,
        /// The server's `Retry-After`.
        after: Option<Duration>,
    },
    /// S3 says the URL has expired (403 `Request has expired`).
    Expired(String),
    /// 404.
    NotFound(String),
    /// 403 for another reason.
    Forbidden(String),
    /// Refused for good: the policy, the size cap, another 4xx.
    Refused(String),
}

/// Resolves names, then keeps only the addresses the policy allows, so a name that points at
/// a private address (DNS rebinding included: this is the lookup the connection uses) is
/// refused. A proxy's own address is the operator's choice and not checked.
///
/// The lookup runs on the calling archiver thread (the system resolver's own timeouts bound
/// it): ureq's default resolver spawns a thread per lookup to time it out, one thread per
/// download for nothing on a thread that exists to wait.
#[derive(Debug)]
struct CheckedResolver {
    policy: Arc<Policy>,
    proxy_host: Option<String>,
    inner: DefaultResolver,
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let _ = (config, timeout);
        let (host, port) = crate::lookup::target(uri)?;
        let found =
            crate::lookup::resolved(self.inner.empty(), crate::lookup::addresses(host, port)?);
        if self.proxy_host.as_deref().is_some_and(|p| p == host) {
            return Ok(found);
        }
        let mut kept = self.inner.empty();
        let mut refused: Option<SocketAddr> = None;
        for addr in found.iter() {
            if self.policy.address_allowed(addr.ip()) {
                kept.push(*addr);
            } else {
                refused = Some(*addr);
            }
        }
        if kept.is_empty() {
            let what = refused.map_or_else(|| "nothing".to_string(), |a| a.ip().to_string());
            return Err(ureq::Error::Other(
                format!(
                    "{} resolves to {what}, which is not a public address",
                    uri.host().unwrap_or("?")
                )
                .into(),
            ));
        }
        Ok(kept)
    }
}

/// Downloads under one policy.
pub struct Fetcher {
    agent: ureq::Agent,
    policy: Arc<Policy>,
    max_bytes: u64,
}

impl Fetcher {
    /// A fetcher whose downloads take at most `timeout` each and `max_bytes`.
    pub fn new(policy: Arc<Policy>, timeout: Duration, max_bytes: u64) -> Fetcher {
        let proxy = ureq::Proxy::try_from_env();
        // The resolver checks every address it returns, except the proxy's own.
        let proxy_host = proxy.as_ref().map(|p| p.host().to_string());
        let config = crate::outbound::config(timeout)
            .proxy(proxy)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build();
        let resolver = CheckedResolver {
            policy: policy.clone(),
            proxy_host,
            inner: DefaultResolver::default(),
        };
        Fetcher {
            agent: ureq::Agent::with_parts(config, DefaultConnector::default(), resolver),
            policy,
            max_bytes,
        }
    }

    /// Fetches `url` into `tmp` (created or truncated, fsynced when whole).
    pub fn fetch(&self, url: &str, tmp: &Path) -> Fetch {
        let mut uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => return Fetch::Refused(format!("not a URL: {e}")),
        };
        for redirects in 0..=MAX_REDIRECTS {
            if let Err(why) = self.policy.check(&uri) {
                return Fetch::Refused(why);
            }
            let response = match self.agent.get(&uri).call() {
                Ok(r) => r,
                Err(e) => return classify_error(&e),
            };
            let status = response.status().as_u16();
            if (300..400).contains(&status) && status != 304 {
                let Some(location) = header(&response, "location") else {
                    return Fetch::Refused(format!("{status} without a Location"));
                };
                if redirects == MAX_REDIRECTS {
                    return Fetch::Refused(format!("more than {MAX_REDIRECTS} redirects"));
                }
                uri = match resolve_location(&uri, &location) {
                    Some(u) => u,
                    None => return Fetch::Refused(format!("a redirect to {location:?}")),
                };
                continue;
            }
            return self.receive(response, status, tmp);
        }
        Fetch::Refused(format!("more than {MAX_REDIRECTS} redirects"))
    }

    fn receive(&self, response: http::Response<ureq::Body>, status: u16, tmp: &Path) -> Fetch {
        let retry_after = header(&response, "retry-after").and_then(|v| parse_retry_after(&v));
        if status != 200 {
            let mut body = response.into_body();
            let text = body
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            let what = format!(
                "HTTP {status}{}",
                s3_code(&text)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            );
            return match status {
                403 if text.contains("Request has expired")
                    || s3_code(&text) == Some("AccessDenied") && text.contains("expired") =>
                {
                    Fetch::Expired(what)
                }
                403 => Fetch::Forbidden(what),
                404 | 410 => Fetch::NotFound(what),
                408 | 425 | 429 | 500..=599 => Fetch::Retry {
                    error: what,
                    after: retry_after,
                },
                _ => Fetch::Refused(what),
            };
        }
        let declared = header(&response, "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Fetch::Refused(format!(
                "{} bytes is over max_file_bytes ({})",
                declared.unwrap_or(0),
                self.max_bytes
            ));
        }
        let content_type = header(&response, "content-type");
        let etag = header(&response, "etag").map(|e| e.trim_matches('"').to_ascii_lowercase());
        let mut reader = response.into_body().into_reader();
        let mut file = match std::fs::File::create(tmp) {
            Ok(f) => f,
            Err(e) => {
                return Fetch::Retry {
                    error: format!("cannot create {}: {e}", tmp.display()),
                    after: None,
                };
            }
        };
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut md5 = md5::Md5::new();
        let mut first = Vec::with_capacity(FIRST_BYTES);
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Fetch::Retry {
                        error: format!("the body broke off after {total} bytes: {e}"),
                        after: None,
                    };
                }
            };
            total += n as u64;
            if total > self.max_bytes {
                return Fetch::Refused(format!("over max_file_bytes ({})", self.max_bytes));
            }
            let chunk = &buf[..n];
            if first.len() < FIRST_BYTES {
                let take = (FIRST_BYTES - first.len()).min(n);
                first.extend_from_slice(&chunk[..take]);
            }
            sha.update(chunk);
            md5.update(chunk);
            if let Err(e) = file.write_all(chunk) {
                return Fetch::Retry {
                    error: format!("cannot write {}: {e}", tmp.display()),
                    after: None,
                };
            }
        }
        if let Some(n) = declared
            && n != total
        {
            return Fetch::Retry {
                error: format!("truncated: {total} of {n} bytes"),
                after: None,
            };
        }
        if let Err(e) = file.sync_all() {
            return Fetch::Retry {
                error: format!("cannot sync {}: {e}", tmp.display()),
                after: None,
            };
        }
        let md5 = hex(&md5.finalize());
        // A multipart upload's ETag is not an MD5 of the body ("…-N"); only a plain one is.
        let etag_mismatch = etag
            .filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()))
            .is_some_and(|e| e != md5);
        let audio = looks_like_audio(&first)
            || content_type
                .as_deref()
                .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("audio/"));
        Fetch::Done {
            bytes: total,
            sha256: hex(sha.finish().as_ref()),
            content_type,
            audio,
            first_bytes: hex(&first),
            etag_mismatch,
        }
    }
}

/// An MP3 starts with an ID3v2 tag or an MPEG audio frame (11 sync bits).
pub fn looks_like_audio(first: &[u8]) -> bool {
    first.starts_with(b"ID3") || (first.len() >= 2 && first[0] == 0xff && first[1] & 0xe0 == 0xe0)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn header(r: &http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// S3's error `<Code>` from an XML body.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + 6;
    let end = text[start..].find("</Code>")? + start;
    Some(&text[start..end])
}

/// `Retry-After: 120` (seconds; an HTTP date is taken as a minute).
fn parse_retry_after(v: &str) -> Option<Duration> {
    match v.trim().parse::<u64>() {
        Ok(s) => Some(Duration::from_secs(s)),
        Err(_) => Some(Duration::from_secs(60)),
    }
}

/// The absolute URI a `Location` names, relative ones resolved against `base`.
fn resolve_location(base: &http::Uri, location: &str) -> Option<http::Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if let Some(path) = location.strip_prefix('/') {
        return format!("{scheme}://{authority}/{path}").parse().ok();
    }
    None
}

fn classify_error(e: &ureq::Error) -> Fetch {
    match e {
        ureq::Error::Other(inner) => Fetch::Refused(inner.to_string()),
        ureq::Error::BadUri(u) => Fetch::Refused(format!("bad URL: {u}")),
        other => Fetch::Retry {
            error: other.to_string(),
            after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_recognised_by_its_first_bytes() {
        assert!(looks_like_audio(b"ID3\x04\x00"));
        assert!(looks_like_audio(&[0xff, 0xfb, 0x90, 0x64]));
        assert!(!looks_like_audio(b"<html>"));
        assert!(!looks_like_audio(b""));
    }

    #[test]
    fn s3_errors_and_locations_are_read() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(s3_code(xml), Some("AccessDenied"));
        let base: http::Uri = "https://h.example/a/b.mp3?x=1".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/c.mp3").unwrap().to_string(),
            "https://h.example/c.mp3"
        );
        assert!(resolve_location(&base, "relative.mp3").is_none());
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    }
}
