//! The `[tls]` section (and `[tls.acme]`): its schema as written and its validation into
//! [`crate::tls::Settings`].

use std::path::PathBuf;

use serde::Deserialize;

use super::{Error, bad, duration};
use crate::tls::{self, Source, acme};

/// `[tls]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    acme: Option<AcmeFile>,
    http_redirect: Option<String>,
    handshake_timeout: Option<String>,
    reload_interval: Option<String>,
}

/// `[tls.acme]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmeFile {
    domains: Option<Vec<String>>,
    email: Option<String>,
    directory: Option<String>,
    directory_ca: Option<PathBuf>,
    challenge: Option<String>,
    renewal_retry: Option<String>,
}

/// Whether `d` is a DNS name a public CA can validate: labels of letters, digits and inner
/// hyphens, at least two of them, not an IP address, at most 253 bytes.
fn is_domain(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 253
        && labels.len() >= 2
        && d.parse::<std::net::IpAddr>().is_err()
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Validates `[tls]`.
pub(super) fn section(f: Option<&TlsFile>) -> Result<Option<tls::Settings>, Error> {
    let Some(f) = f else {
        return Ok(None);
    };
    let http_redirect = match &f.http_redirect {
        None => None,
        Some(a) => Some(a.parse().map_err(|_| {
            bad(
                "tls.http_redirect",
                format_args!("{a:?} is not an IP:port address (e.g. \"0.0.0.0:80\")"),
            )
        })?),
    };
    let source = match (&f.cert, &f.key, &f.acme) {
        (Some(cert), Some(key), None) => Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, Some(a)) => Source::Acme(acme_section(a, http_redirect.is_some())?),
        (Some(_), None, None) => return Err(bad("tls.key", "is missing: `cert` needs its `key`")),
        (None, Some(_), None) => return Err(bad("tls.cert", "is missing: `key` needs its `cert`")),
        (None, None, None) => {
            return Err(bad(
                "tls",
                "needs either `cert` and `key` files, or a [tls.acme] section",
            ));
        }
        (_, _, Some(_)) => {
            return Err(bad(
                "tls.acme",
                "is set together with `cert`/`key`: choose certificate files or ACME",
            ));
        }
    };
    Ok(Some(tls::Settings {
        source,
        http_redirect,
        handshake_timeout: duration(
            "tls.handshake_timeout",
            &f.handshake_timeout,
            tls::DEFAULT_HANDSHAKE_TIMEOUT,
        )?,
        reload_interval: duration(
            "tls.reload_interval",
            &f.reload_interval,
            tls::DEFAULT_RELOAD_INTERVAL,
        )?,
    }))
}

fn acme_section(a: &AcmeFile, has_http_listener: bool) -> Result<acme::Settings, Error> {
    let domains: Vec<String> = a
        .domains
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if domains.is_empty() {
        return Err(bad(
            "tls.acme.domains",
            "is empty: list the names didlogic posts to, e.g. [\"hooks.example.com\"]",
        ));
    }
    for d in &domains {
        if d.starts_with("*.") {
            return Err(bad(
                "tls.acme.domains",
                format_args!(
                    "{d:?}: a wildcard needs the dns-01 challenge, which didgate does not do; \
                     list the names"
                ),
            ));
        }
        if !is_domain(d) {
            return Err(bad(
                "tls.acme.domains",
                format_args!("{d:?} is not a public DNS name"),
            ));
        }
    }
    if let Some(e) = &a.email
        && (!e.contains('@') || e.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(bad(
            "tls.acme.email",
            format_args!("{e:?} is not an address"),
        ));
    }
    let directory = match a.directory.as_deref().map(str::trim) {
        None | Some("production" | "letsencrypt") => acme::LETS_ENCRYPT.to_string(),
        Some("staging" | "letsencrypt-staging") => acme::LETS_ENCRYPT_STAGING.to_string(),
        Some(url) if url.starts_with("https://") => url.to_string(),
        Some(other) => {
            return Err(bad(
                "tls.acme.directory",
                format_args!("{other:?}: write \"production\", \"staging\" or an https:// URL"),
            ));
        }
    };
    let challenge = match a.challenge.as_deref() {
        None | Some("tls-alpn-01") => acme::Challenge::TlsAlpn01,
        Some("http-01") => acme::Challenge::Http01,
        Some(other) => {
            return Err(bad(
                "tls.acme.challenge",
                format_args!("{other:?}: must be \"tls-alpn-01\" or \"http-01\""),
            ));
        }
    };
    if challenge == acme::Challenge::Http01 && !has_http_listener {
        return Err(bad(
            "tls.acme.challenge",
            "\"http-01\" needs a plain listener on port 80: set tls.http_redirect = \"0.0.0.0:80\"",
        ));
    }
    Ok(acme::Settings {
        domains,
        email: a.email.clone(),
        directory,
        directory_ca: a.directory_ca.clone(),
        challenge,
        renewal_retry: duration(
            "tls.acme.renewal_retry",
            &a.renewal_retry,
            acme::DEFAULT_RENEWAL_RETRY,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<tls::Settings>, Error> {
        #[derive(Deserialize)]
        struct F {
            tls: Option<TlsFile>,
        }
        let f: F = toml::from_str(text).map_err(|e| Error {
            message: e.to_string(),
            key: None,
        })?;
        section(f.tls.as_ref())
    }

    #[test]
    fn files_or_acme_with_defaults() {
        let t = parse("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(t.handshake_timeout, tls::DEFAULT_HANDSHAKE_TIMEOUT);
        assert!(matches!(t.source, Source::Files { .. }));
        let t =
            parse("[tls.acme]\ndomains = [\"Hooks.Example.com.\"]\nemail = \"ops@example.com\"\n")
                .unwrap()
                .unwrap();
        let Source::Acme(a) = t.source else { panic!() };
        assert_eq!(a.domains, ["hooks.example.com"]);
        assert_eq!(a.directory, acme::LETS_ENCRYPT);
        assert_eq!(a.challenge, acme::Challenge::TlsAlpn01);
        let t = parse("[tls.acme]\ndomains = [\"a.example\"]\ndirectory = \"staging\"\n")
            .unwrap()
            .unwrap();
        let Source::Acme(a) = t.source else { panic!() };
        assert_eq!(a.directory, acme::LETS_ENCRYPT_STAGING);
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            ("[tls]\ncert = \"/c.pem\"\n", "tls.key"),
            ("[tls]\n", "tls"),
            (
                "[tls]\ncert = \"/c\"\nkey = \"/k\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
                "tls.acme",
            ),
            ("[tls.acme]\ndomains = []\n", "tls.acme.domains"),
            (
                "[tls.acme]\ndomains = [\"*.example.com\"]\n",
                "tls.acme.domains",
            ),
            (
                "[tls.acme]\ndomains = [\"192.0.2.1\"]\n",
                "tls.acme.domains",
            ),
            (
                "[tls.acme]\ndomains = [\"localhost\"]\n",
                "tls.acme.domains",
            ),
            (
                "[tls.acme]\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\n",
                "tls.acme.challenge",
            ),
            (
                "[tls.acme]\ndomains = [\"a.example\"]\nchallenge = \"dns-01\"\n",
                "tls.acme.challenge",
            ),
            (
                "[tls.acme]\ndomains = [\"a.example\"]\ndirectory = \"http://x/dir\"\n",
                "tls.acme.directory",
            ),
            (
                "[tls.acme]\ndomains = [\"a.example\"]\nemail = \"nobody\"\n",
                "tls.acme.email",
            ),
            (
                "[tls]\nhttp_redirect = \"port 80\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
                "tls.http_redirect",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {}", e.message);
        }
        let ok = "[tls]\nhttp_redirect = \"0.0.0.0:80\"\n[tls.acme]\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\n";
        assert!(parse(ok).unwrap().is_some());
    }
}
