//! A URL's host looked up on the calling thread, for the ureq clients of the background jobs
//! (recording downloads, forwarding). ureq's default resolver spawns a thread per lookup to
//! time it out: a thread per request for nothing, on threads that exist to wait.

use std::net::SocketAddr;

use ureq::unversioned::resolver::ResolvedSocketAddrs;

/// The host (without IPv6 brackets) and port a URL names; the port defaults by scheme.
///
/// # Errors
/// The URL has no host.
pub(crate) fn target(uri: &http::Uri) -> Result<(&str, u16), ureq::Error> {
    let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Ok((host, port))
}

/// The addresses of `host` (the system resolver, whose own timeouts bound it).
///
/// # Errors
/// The name does not resolve, or to nothing.
pub(crate) fn addresses(host: &str, port: u16) -> Result<Vec<SocketAddr>, ureq::Error> {
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|_| ureq::Error::HostNotFound)?
        .collect();
    if found.is_empty() {
        return Err(ureq::Error::HostNotFound);
    }
    Ok(found)
}

/// `addrs` in ureq's form (as many as it holds), starting from its `empty` value.
pub(crate) fn resolved(
    mut empty: ResolvedSocketAddrs,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> ResolvedSocketAddrs {
    for a in addrs {
        if empty.try_push(a).is_err() {
            break;
        }
    }
    empty
}
