//! How didgate makes HTTP requests of its own (recording downloads, forwarding, alert
//! notifications): one base configuration, which each job extends with its limits.

use std::time::Duration;

use ureq::config::ConfigBuilder;
use ureq::typestate::AgentScope;

/// The base of every outbound client: the platform's root certificates, a proxy from the
/// environment (`HTTPS_PROXY`, ...), statuses returned as values, no redirect followed (a
/// redirect is the other side's answer, judged by the caller), `timeout` for the whole
/// request, and a `didgate/VERSION` user agent.
pub fn config(timeout: Duration) -> ConfigBuilder<AgentScope> {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        .proxy(ureq::Proxy::try_from_env())
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .user_agent(concat!("didgate/", env!("CARGO_PKG_VERSION")))
}
