//! The webhook listener: binding the socket, and the accept loop with its connection cap and
//! peer filter, one coroutine per accepted connection.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::ingest::connection;
use crate::ingest::gateway::Gateway;
use crate::ops::metrics::Rejection;

/// Pending connections the kernel queues while the accept loop catches up with a burst.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;

/// How long the accept loop sleeps when at the connection cap or out of descriptors, instead
/// of spinning on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A socket that could not be bound, with the address and what to do about it.
#[derive(Debug)]
pub struct BindError(pub String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

/// Binds without `SO_REUSEPORT` (which `may`'s own `bind` sets): with it, a second gateway on
/// the same port would silently take half the traffic; without it, the second one fails here.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, BindError> {
    let fail = |e: std::io::Error| {
        if e.kind() == ErrorKind::AddrInUse {
            BindError(format!(
                "cannot listen on {addr}: address already in use (is another didgate or server running there?)"
            ))
        } else {
            BindError(format!("cannot listen on {addr}: {e}"))
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(fail)?;
    Ok(socket.into())
}

/// Accepts connections until shutdown, each served by its own coroutine. A panic in one
/// connection's code closes that connection only.
pub fn accept_loop(
    listener: may::net::TcpListener,
    gateway: &Arc<Gateway>,
    max_connections: usize,
) {
    loop {
        if gateway.health.is_shutting_down() {
            return;
        }
        if gateway.metrics.open_connections.load(Ordering::Relaxed) >= max_connections as u64 {
            crate::ops::log::warn_limited(
                "connection-cap",
                format_args!("at the connection cap ({max_connections}); new connections wait"),
            );
            may::coroutine::sleep(ACCEPT_BACKOFF);
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if !gateway.access().allows(peer.ip()) {
                    // Closed before a byte is read.
                    gateway.metrics.reject(Rejection::DeniedPeer);
                    drop(stream);
                    continue;
                }
                gateway
                    .metrics
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                gateway
                    .metrics
                    .open_connections
                    .fetch_add(1, Ordering::Relaxed);
                let gateway = gateway.clone();
                // Why spawning a coroutine is sound here (`go!` is `unsafe` spawn inside): the
                // connection blocks only through may's sockets, Blockers and channels, which
                // park the coroutine, never its worker thread, and keeps no thread-local state
                // across those waits.
                may::go!(move || {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        connection::serve(stream, peer, &gateway)
                    }));
                    if result.is_err() {
                        gateway.metrics.panics.fetch_add(1, Ordering::Relaxed);
                        crate::ops::log::error(format_args!(
                            "a connection from {} panicked; it was closed, the gateway goes on",
                            peer.ip()
                        ));
                    }
                    gateway
                        .metrics
                        .open_connections
                        .fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(_) if gateway.health.is_shutting_down() => return,
            Err(e) => {
                // EMFILE/ENFILE (out of descriptors), ENOBUFS/ENOMEM: back off and retry once
                // connections close; ECONNABORTED and friends: the next accept is fine.
                gateway
                    .metrics
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                crate::ops::log::warn_limited("accept", format_args!("accept failed: {e}"));
                may::coroutine::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}
