//! `didgate serve`: start-up, the listener, the accept loop with its connection cap, and
//! graceful shutdown.
//!
//! Owns process-level order: lock the data directory, open the store, start the writer, bind,
//! announce the URLs, accept, and on SIGTERM/SIGINT stop accepting, let in-flight requests
//! finish, commit, exit 0. One coroutine per connection runs `connection::serve`.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::config::Config;
use crate::connection;
use crate::http;
use crate::route::Hook;
use crate::store::Store;
use crate::writer::{self, Queue, Writer};

/// Name of the lock file that keeps a second `serve` off the same data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// How long the accept loop sleeps when at the connection cap or out of descriptors, instead
/// of spinning on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What each connection needs to know, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: http::Limits,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub commit_timeout: Duration,
    pub max_json_depth: usize,
}

/// State shared by the accept loop and every connection.
pub struct Shared {
    pub token: Vec<u8>,
    pub queue: Queue,
    pub settings: Settings,
    shutting_down: AtomicBool,
    /// Requests between parsed head and written answer.
    pub in_flight: AtomicUsize,
    /// Open connections (the cap applies to this).
    pub open_connections: AtomicUsize,
    /// Connections whose code panicked (contained to that connection).
    pub panics: AtomicU64,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Why `serve` could not start or run.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully.
///
/// # Errors
/// Start-up failures (data directory locked or unusable, port taken, store unreadable) and
/// signal set-up failures, each with a message naming what to fix.
pub fn run(cfg: Config) -> Result<(), Error> {
    crate::log::set_level(cfg.log_level);
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error(format!("cannot install signal handlers: {e}")))?;
    let dir = &cfg.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| {
            Error(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    let _lock = lock_data_dir(dir)?;
    let token = crate::token::load_or_create(dir, cfg.token.as_deref())
        .map_err(|e| Error(format!("cannot read or create the token: {e}")))?;
    let map_bytes = usize::try_from(cfg.map_size_bytes).unwrap_or(usize::MAX);
    let store = Store::open_writer(dir, map_bytes)
        .map_err(|e| Error(format!("cannot open the store in {}: {e}", dir.display())))?;

    // The runtime reads these when it starts, which is the first coroutine or socket below.
    may::config()
        .set_workers(cfg.workers)
        .set_stack_size(cfg.stack_bytes / std::mem::size_of::<usize>());

    let listener = bind(cfg.listen, cfg.listen_backlog)?;
    let local = listener
        .local_addr()
        .map_err(|e| Error(format!("cannot read the bound address: {e}")))?;
    let listen_fd = listener.as_raw_fd();
    // SAFETY: `into_raw_fd` hands over sole ownership of a valid, listening socket; the may
    // listener becomes its only owner.
    let listener = unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };

    let (writer, queue) = Writer::spawn(
        store,
        writer::Settings {
            batch_max: cfg.batch_max,
            queue_capacity: cfg.queue_capacity,
            dedup_window: cfg.dedup_window,
        },
    )
    .map_err(|e| Error(format!("cannot start the writer thread: {e}")))?;

    let shared = Arc::new(Shared {
        token: token.into_bytes(),
        queue,
        settings: Settings {
            limits: cfg.limits,
            head_timeout: cfg.head_timeout,
            body_timeout: cfg.body_timeout,
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
            commit_timeout: cfg.commit_timeout,
            max_json_depth: cfg.max_json_depth,
        },
        shutting_down: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        open_connections: AtomicUsize::new(0),
        panics: AtomicU64::new(0),
    });

    announce(local, &shared.token, dir);
    let accept = {
        let shared = shared.clone();
        let max = cfg.max_connections;
        may::go!(move || accept_loop(listener, &shared, max))
    };

    let signal = signals.forever().next().unwrap_or(libc::SIGTERM);
    crate::log::info(format_args!(
        "received {}, finishing in-flight requests",
        if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    ));
    shared.shutting_down.store(true, Ordering::SeqCst);
    // Stop accepting: a listening socket shut for reading wakes its accept with an error and
    // refuses new connections, so senders see "connection refused" and retry elsewhere/later.
    // SAFETY: `listen_fd` is the listener's descriptor, still open (the accept coroutine owns
    // it); shutdown does not close it.
    unsafe {
        libc::shutdown(listen_fd, libc::SHUT_RD);
    }
    let _ = accept.join();
    let deadline = Instant::now() + cfg.shutdown_timeout;
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let unfinished = shared.in_flight.load(Ordering::SeqCst);
    let stats = writer.stats.clone();
    writer.stop();
    crate::log::info(format_args!(
        "stopped: {} commits, {} events written this run ({} duplicates, {} quarantined), {} unfinished requests",
        stats.commits.load(Ordering::Relaxed),
        stats.jobs.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.quarantined.load(Ordering::Relaxed),
        unfinished
    ));
    Ok(())
}

/// Takes the data directory's lock, so two `serve` processes never share one store.
fn lock_data_dir(dir: &std::path::Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error(format!(
            "another `didgate serve` is already using {} (stop it first, or pass another --data)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Binds without `SO_REUSEPORT` (which `may`'s own `bind` sets): with it, a second gateway on
/// the same port would silently take half the traffic; without it, the second one fails here.
fn bind(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, Error> {
    let fail = |e: std::io::Error| {
        if e.kind() == ErrorKind::AddrInUse {
            Error(format!(
                "cannot listen on {addr}: address already in use (is another didgate or server running there?)"
            ))
        } else {
            Error(format!("cannot listen on {addr}: {e}"))
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

/// Prints, once, the URLs to give didlogic. The only place the token is ever written out.
fn announce(local: SocketAddr, token: &[u8], dir: &std::path::Path) {
    let host = if local.ip().is_unspecified() {
        "HOST".to_string()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    let token = String::from_utf8_lossy(token);
    println!("didgate: listening on {local}, data in {}", dir.display());
    if local.ip().is_unspecified() {
        println!("didgate: replace HOST with this machine's public name or address");
    }
    for hook in Hook::ALL {
        println!(
            "didgate: {:<9} http://{host}:{}/hooks/{token}/{}",
            hook.name(),
            local.port(),
            hook.name()
        );
    }
}

fn accept_loop(listener: may::net::TcpListener, shared: &Arc<Shared>, max_connections: usize) {
    loop {
        if shared.is_shutting_down() {
            return;
        }
        if shared.open_connections.load(Ordering::Relaxed) >= max_connections {
            crate::log::warn_limited(
                "connection-cap",
                format_args!("at the connection cap ({max_connections}); new connections wait"),
            );
            may::coroutine::sleep(ACCEPT_BACKOFF);
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                shared.open_connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                may::go!(move || {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        connection::serve(stream, peer, &shared)
                    }));
                    if result.is_err() {
                        shared.panics.fetch_add(1, Ordering::Relaxed);
                        crate::log::error(format_args!(
                            "a connection from {} panicked; it was closed, the gateway goes on",
                            peer.ip()
                        ));
                    }
                    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(_) if shared.is_shutting_down() => return,
            Err(e) => {
                // EMFILE/ENFILE (out of descriptors), ENOBUFS/ENOMEM: back off and retry once
                // connections close; ECONNABORTED and friends: the next accept is fine.
                crate::log::warn_limited("accept", format_args!("accept failed: {e}"));
                may::coroutine::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}
