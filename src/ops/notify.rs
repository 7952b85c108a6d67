//! The service manager's side channels: `sd_notify` datagrams (READY, STOPPING, WATCHDOG,
//! STATUS), the watchdog interval, and sockets passed by socket activation.
//!
//! Owns the wire protocol of `$NOTIFY_SOCKET` (a datagram of `KEY=VALUE` lines to a Unix socket,
//! abstract when the path starts with `@`) and of `$LISTEN_FDS`/`$LISTEN_PID` (descriptors from
//! 3 up). A few lines of std instead of a crate: the protocol is that small. Without systemd
//! every function here is a no-op.

use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Sends `state` to the service manager if `$NOTIFY_SOCKET` is set. Returns whether it was
/// sent; failures are not errors for the gateway (it runs the same without a manager).
pub fn notify(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(&path.to_string_lossy(), state).is_ok(),
        None => false,
    }
}

/// Sends one notification datagram to the socket at `path` (`@name` is abstract).
///
/// # Errors
/// The socket cannot be reached.
pub fn send_to(path: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if enabled for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The name (`FileDescriptorName=`) of a passed socket meant for the ACME `http-01` listener
/// (`systemd/didgate-http01.socket`); every other passed socket is a webhook listener.
pub const HTTP01_SOCKET_NAME: &str = "http01";

/// Listening sockets passed by socket activation, by role.
#[derive(Debug, Default)]
pub struct Passed {
    /// The webhook listener (the first passed socket not named [`HTTP01_SOCKET_NAME`]).
    pub webhooks: Option<std::net::TcpListener>,
    /// The ACME `http-01` listener.
    pub http01: Option<std::net::TcpListener>,
}

/// The listening sockets passed by socket activation, taken over right away (before anything
/// else can be opened on their descriptor numbers).
///
/// # Errors
/// The variables name a descriptor that is not a listening socket (a misconfigured unit, or
/// a wrapper that closed it): refusing is safer than serving on whatever file has that number.
pub fn take_listeners() -> std::io::Result<Passed> {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut passed = Passed::default();
    for fd in listen_fds() {
        let role = if names.next() == Some(HTTP01_SOCKET_NAME) {
            &mut passed.http01
        } else {
            &mut passed.webhooks
        };
        if role.is_none() {
            *role = Some(take_listening(fd)?);
        }
    }
    Ok(passed)
}

fn take_listening(fd: RawFd) -> std::io::Result<std::net::TcpListener> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a descriptor number only reads it; the out-pointers are valid.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || accepting == 0 {
        return Err(std::io::Error::other(format!(
            "LISTEN_FDS passed descriptor {fd}, but it is not a listening socket"
        )));
    }
    // SAFETY: systemd passed `fd` to this process (LISTEN_PID matched), it is a listening
    // socket (checked above), and nothing else in this process owns it.
    Ok(unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Listening sockets passed by socket activation, in order; empty when none were passed to
/// this process.
///
/// The variables are left in the environment: removing them is unsound once other threads
/// may read it, and a process that inherited them is told apart by `LISTEN_PID`, which names
/// this process only (didgate starts no children anyway).
pub(crate) fn listen_fds() -> Vec<RawFd> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_matches || count <= 0 {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_reaches_a_fake_manager_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn abstract_socket_names_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("didgate-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 16];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn no_manager_means_no_op() {
        assert!(send_to("/nonexistent/notify.sock", "READY=1").is_err());
    }
}
