//! HTTPS on the webhook listener: the certificate the handshake presents, where it comes from
//! (files the operator renews, or ACME), and the job that keeps it current.
//!
//! In the order of a certificate's life: [`certificate`] reads and checks one, [`acme`]
//! orders one, [`resolver`] hands the current one (or a challenge answer) to each handshake,
//! and [`job`] is the `didgate-tls` thread that reloads files and renews ACME certificates
//! without interrupting anything. [`http01`] is the optional plain port-80 listener, which
//! answers ACME challenges and nothing else. The TLS side of a connection (handshake, records,
//! deadlines) is the connection's (`ingest/connection/tls.rs`); nothing here touches a socket
//! of the webhook listener.

pub mod acme;
mod acme_http;
pub mod certificate;
pub mod http01;
pub mod job;
pub mod resolver;

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::ops::health::Health;
use resolver::Resolver;

/// The ALPN name of HTTP/1.1, the only application protocol served.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN name of an ACME `tls-alpn-01` validation (RFC 8737).
pub const ALPN_ACME: &[u8] = b"acme-tls/1";

/// The whole TLS handshake must finish within this, from the connection's first byte: a
/// client that stalls mid-handshake holds one coroutine this long and no more.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate files are checked for a change (besides SIGHUP).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Where ACME state lives, under the data directory.
pub const TLS_DIR: &str = "tls";

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// PEM files the operator keeps current (their own CA, or certbot).
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The leaf's private key.
        key: PathBuf,
    },
    /// Ordered and renewed by didgate.
    Acme(acme::Settings),
}

/// `[tls]`: HTTPS on the webhook listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Certificate files or ACME.
    pub source: Source,
    /// A plain listener (normally `0.0.0.0:80`) that answers ACME `http-01` challenges and
    /// refuses everything else; `None`: no plain listener.
    pub http_redirect: Option<SocketAddr>,
    /// The whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// How often certificate files are checked for a change.
    pub reload_interval: Duration,
}

impl Settings {
    /// The host name to print in webhook URLs: the first ACME domain, when there is one.
    pub fn url_host(&self) -> Option<&str> {
        match &self.source {
            Source::Acme(a) => a.domains.first().map(String::as_str),
            Source::Files { .. } => None,
        }
    }
}

/// HTTPS as the listener uses it: the shared rustls configuration and its certificate store.
pub struct Tls {
    /// What every TLS connection is set up from.
    pub config: Arc<ServerConfig>,
    /// The certificate store behind `config`.
    pub resolver: Arc<Resolver>,
    /// The handshake deadline.
    pub handshake_timeout: Duration,
    /// The certificate installed at start, if any (the renewal job starts from it).
    pub installed: Option<certificate::Loaded>,
}

/// Serves `loaded` to new handshakes, tells `/readyz` and `/metrics` its expiry, and logs it
/// (`how` says why it changed).
pub(crate) fn install(
    resolver: &Resolver,
    health: &Health,
    loaded: &certificate::Loaded,
    how: &str,
) {
    resolver.install(loaded.key.clone());
    health.set_tls_not_after(Some(loaded.not_after));
    crate::ops::log::info(format_args!(
        "{how}: serving TLS certificate {} for {} (expires {})",
        loaded.serial,
        loaded.names.join(", "),
        crate::timestamp::format_ms(loaded.not_after.saturating_mul(1000))
    ));
}

impl Tls {
    /// Builds the TLS configuration and installs the first certificate: the files' (which
    /// must load, or `serve` does not start), or the stored ACME one when it is still good.
    /// With ACME and nothing stored, the listener starts without a certificate (only ACME
    /// validations complete) until the job's first order succeeds; `/readyz` says so.
    ///
    /// # Errors
    /// A message naming the file or setting at fault.
    pub fn start(settings: &Settings, data_dir: &Path, health: &Health) -> Result<Tls, String> {
        let resolver = Arc::new(Resolver::default());
        let loaded = match &settings.source {
            Source::Files { cert, key } => Some(certificate::load(cert, key)?),
            Source::Acme(acme) => {
                let dir = data_dir.join(TLS_DIR);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                acme::stored(&dir, acme)
            }
        };
        match &loaded {
            Some(l) => install(&resolver, health, l, "start"),
            None => health.set_tls_not_after(None),
        }
        let acme_alpn = matches!(&settings.source, Source::Acme(a) if a.challenge == acme::Challenge::TlsAlpn01);
        Ok(Tls {
            config: server_config(resolver.clone(), acme_alpn)?,
            resolver,
            handshake_timeout: settings.handshake_timeout,
            installed: loaded,
        })
    }
}

/// TLS 1.3 and 1.2 with ring's suites (all AEAD with forward secrecy: no CBC, no RSA key
/// exchange), ALPN `http/1.1`, and `acme-tls/1` when ACME validates on this listener.
///
/// # Errors
/// rustls refused the protocol versions (it does not with its own provider).
pub fn server_config(
    resolver: Arc<Resolver>,
    acme_alpn: bool,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    if acme_alpn {
        config.alpn_protocols.push(ALPN_ACME.to_vec());
    }
    // Tickets are stateless resumption; clients reconnecting under load skip a full
    // handshake. Keys rotate inside rustls.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}
