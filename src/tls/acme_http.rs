//! The HTTP client the ACME crate talks through: ureq (blocking, rustls), so the ACME job
//! needs no async HTTP stack of its own. It runs on the job's own thread, inside a
//! current-thread runtime that only drives the ACME crate's futures and timers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// Longest an ACME request may take, connection included: a stuck directory costs one
/// attempt, then the job's backoff.
pub const ACME_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest ACME response read (a certificate chain is a few KiB).
const MAX_ACME_RESPONSE_BYTES: u64 = 1 << 20;

/// ureq behind the ACME crate's client trait.
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client trusting the public web PKI, or only `ca_pem`'s certificates when given (a
    /// private ACME server: step-ca, or pebble in tests).
    ///
    /// # Errors
    /// `ca_pem` holds no usable certificate.
    pub fn new(ca_pem: Option<&[u8]>) -> Result<Client, String> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let roots = match ca_pem {
            None => RootCerts::WebPki,
            Some(pem) => {
                let certs = ureq::tls::parse_pem(pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect::<Vec<Certificate<'static>>>();
                if certs.is_empty() {
                    return Err("the ACME directory CA file holds no certificate".into());
                }
                RootCerts::new_with_certs(&certs)
            }
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .http_status_as_error(false)
            .timeout_global(Some(ACME_HTTP_TIMEOUT))
            .user_agent(concat!("didgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Client { agent })
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let agent = self.agent.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // The body is in memory already; collecting it never waits.
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let response = if body.is_empty() {
                agent.run(http::Request::from_parts(parts, ()))
            } else {
                agent.run(http::Request::from_parts(parts, body.to_vec()))
            }
            .map_err(other)?;
            let (parts, mut body) = response.into_parts();
            let bytes = body
                .with_config()
                .limit(MAX_ACME_RESPONSE_BYTES)
                .read_to_vec()
                .map_err(other)?;
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                Full::new(Bytes::from(bytes)),
            )))
        })
    }
}
