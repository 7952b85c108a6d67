//! `didgate serve`: start-up, the listeners, the accept loop with its connection cap and
//! peer filter, reload, and graceful shutdown.
//!
//! Owns process-level order: lock the data directory, open the store, start the writer, bind
//! (or take systemd's sockets), announce the URLs, tell systemd READY, accept; on SIGHUP reload
//! what can change live (tokens, `allow_from`, log level, retention); on SIGTERM/SIGINT stop
//! accepting, let in-flight requests finish, commit, exit 0. One coroutine per connection runs
//! `connection::serve`.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use socket2::{Domain, Socket, Type};

use crate::config::{Config, Durability, Flags};
use crate::ingest::deadline::Deadlines;
use crate::ingest::route::Hook;
use crate::ingest::{connection, http};
use crate::ops::metrics::Metrics;
use crate::ops::{admin, notify};
use crate::store::{self, Store};
use crate::writer::{self, Health, Queue, Writer};

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

/// Who may post: replaced as a whole on reload.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Accepted path tokens: the current one, and during a rotation the previous one.
    pub tokens: Vec<Vec<u8>>,
    /// Allowed peer ranges; empty allows everyone.
    pub allow_from: Vec<IpNet>,
}

impl Access {
    /// Whether a peer may connect (IPv4-mapped IPv6 peers are judged as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }
}

/// State shared by the accept loop and every connection.
pub struct Shared {
    access: RwLock<Arc<Access>>,
    pub queue: Queue,
    pub settings: Settings,
    shutting_down: AtomicBool,
    /// Requests between parsed head and written answer.
    pub in_flight: AtomicUsize,
    /// Open connections (the cap applies to this).
    pub open_connections: AtomicUsize,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Times out requests waiting longer than `commit_timeout` for their commit.
    pub deadlines: Deadlines,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The access rules in force now.
    pub fn access(&self) -> Arc<Access> {
        match self.access.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_access(&self, access: Access) {
        let mut guard = match self.access.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(access);
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

fn access_of(cfg: &Config, token: &str) -> Access {
    let mut tokens = vec![token.as_bytes().to_vec()];
    tokens.extend(cfg.previous_token.iter().map(|t| t.as_bytes().to_vec()));
    Access {
        tokens,
        allow_from: cfg.allow_from.clone(),
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully. `flags` are kept to
/// re-read the configuration on SIGHUP.
///
/// # Errors
/// Start-up failures (data directory locked or unusable, port taken, store unreadable) and
/// signal set-up failures, each with a message naming what to fix.
pub fn run(cfg: Config, flags: Flags) -> Result<(), Error> {
    crate::ops::log::set_level(cfg.log_level);
    // First, before any file is opened: a passed socket must be taken while its number is
    // still its own.
    let passed = notify::take_listener().map_err(|e| Error(format!("socket activation: {e}")))?;
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
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
    let token = crate::ops::token::load_or_create(dir, cfg.token.as_deref())
        .map_err(|e| Error(format!("cannot read or create the token: {e}")))?;
    let sync = match cfg.durability {
        Durability::Fsync => store::Sync::EveryCommit,
        Durability::Interval(_) => store::Sync::Deferred,
    };
    let map_bytes = usize::try_from(cfg.map_size_bytes).unwrap_or(usize::MAX);
    let store = Store::open_writer_with(dir, map_bytes, sync)
        .map_err(|e| Error(format!("cannot open the store in {}: {e}", dir.display())))?;

    // The runtime reads these when it starts, which is the first coroutine or socket below.
    may::config()
        .set_workers(cfg.workers)
        .set_pool_capacity(cfg.coroutine_pool)
        .set_stack_size(cfg.stack_bytes / std::mem::size_of::<usize>());

    let listener = match passed {
        Some(l) => l,
        None => bind(cfg.listen, cfg.listen_backlog)?,
    };
    let local = listener
        .local_addr()
        .map_err(|e| Error(format!("cannot read the bound address: {e}")))?;
    let admin = match cfg.admin_listen {
        Some(addr) => Some(bind(addr, 64)?),
        None => None,
    };
    let listen_fd = listener.as_raw_fd();
    let admin_fd = admin.as_ref().map(AsRawFd::as_raw_fd);

    let metrics = Arc::new(Metrics::default());
    let (writer, queue) = Writer::spawn_with(
        store,
        writer::Settings {
            batch_max: cfg.batch_max,
            queue_capacity: cfg.queue_capacity,
            dedup_window: cfg.dedup_window,
            dedup_memory_events: cfg.dedup_memory_events,
            sync_interval: match cfg.durability {
                Durability::Fsync => None,
                Durability::Interval(d) => Some(d),
            },
            min_free_disk_bytes: cfg.min_free_disk_bytes,
            max_map_bytes: cfg.max_map_size_bytes,
            file_headroom_bytes: cfg.file_headroom_bytes,
        },
        metrics.clone(),
        cfg.retention.clone(),
    )
    .map_err(|e| Error(format!("cannot start the writer thread: {e}")))?;
    let deadlines =
        Deadlines::start().map_err(|e| Error(format!("cannot start the deadline thread: {e}")))?;

    let shared = Arc::new(Shared {
        access: RwLock::new(Arc::new(access_of(&cfg, &token))),
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
        metrics,
        health: writer.health.clone(),
        deadlines,
    });

    announce(
        local,
        &token,
        dir,
        admin.as_ref().and_then(|a| a.local_addr().ok()),
    );
    let accept = {
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid, listening socket; the
        // may listener becomes its only owner.
        let listener = unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let shared = shared.clone();
        let max = cfg.max_connections;
        may::go!(move || accept_loop(listener, &shared, max))
    };
    let admin_accept = admin.map(|a| {
        // SAFETY: as above, for the admin socket.
        let listener = unsafe { may::net::TcpListener::from_raw_fd(a.into_raw_fd()) };
        let shared = shared.clone();
        may::go!(move || admin::accept_loop(listener, shared))
    });
    notify::notify("READY=1\nSTATUS=accepting webhooks");
    if let Some(interval) = notify::watchdog_interval() {
        start_watchdog(interval, shared.clone());
    }

    let mut cfg = cfg;
    let signal = loop {
        let signal = signals.forever().next().unwrap_or(libc::SIGTERM);
        if signal != libc::SIGHUP {
            break signal;
        }
        if let Some(new) = reload(&flags, &cfg, &token, &shared, &writer) {
            cfg = new;
        }
    };
    crate::ops::log::info(format_args!(
        "received {}, finishing in-flight requests",
        if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    ));
    notify::notify("STOPPING=1\nSTATUS=finishing in-flight requests");
    shared.shutting_down.store(true, Ordering::SeqCst);
    // Stop accepting: a listening socket shut for reading wakes its accept with an error and
    // refuses new connections, so senders see "connection refused" and retry later.
    stop_listening(listen_fd);
    let _ = accept.join();
    if let (Some(fd), Some(handle)) = (admin_fd, admin_accept) {
        stop_listening(fd);
        let _ = handle.join();
    }
    let deadline = Instant::now() + cfg.shutdown_timeout;
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let unfinished = shared.in_flight.load(Ordering::SeqCst);
    let stats = writer.stats.clone();
    writer.stop();
    crate::ops::log::info(format_args!(
        "stopped: {} commits, {} events written this run ({} duplicates, {} quarantined), {} unfinished requests",
        stats.commits.load(Ordering::Relaxed),
        stats.jobs.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.quarantined.load(Ordering::Relaxed),
        unfinished
    ));
    Ok(())
}

fn stop_listening(fd: RawFd) {
    // SAFETY: `fd` is a listener still open (its accept coroutine owns it); shutdown does not
    // close it, it only makes accept fail and the kernel refuse new connections.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// Re-reads the configuration and applies what can change live. Returns the new configuration
/// when it was valid; an invalid file is reported and the running configuration kept.
fn reload(
    flags: &Flags,
    old: &Config,
    token: &str,
    shared: &Shared,
    writer: &Writer,
) -> Option<Config> {
    notify::notify("RELOADING=1");
    let result = Config::load(flags);
    let new = match result {
        Ok(new) => new,
        Err(e) => {
            crate::ops::log::error(format_args!(
                "reload refused, keeping the running configuration: {e}"
            ));
            notify::notify("READY=1");
            return None;
        }
    };
    // The token given on the command line or in the file wins; otherwise the kept one stays.
    let token = new.token.clone().unwrap_or_else(|| token.to_string());
    shared.set_access(access_of(&new, &token));
    crate::ops::log::set_level(new.log_level);
    if let Ok(mut policy) = writer.retention.lock() {
        *policy = new.retention.clone();
    }
    let fixed = [
        ("listen", old.listen != new.listen),
        ("data_dir", old.data_dir != new.data_dir),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("durability", old.durability != new.durability),
        (
            "limits and timeouts",
            old.limits != new.limits || old.commit_timeout != new.commit_timeout,
        ),
    ];
    let restart: Vec<&str> = fixed
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| *k)
        .collect();
    if restart.is_empty() {
        crate::ops::log::info(format_args!("configuration reloaded"));
    } else {
        crate::ops::log::warn(format_args!(
            "configuration reloaded; changes to {} take effect at the next restart",
            restart.join(", ")
        ));
    }
    notify::notify("READY=1");
    Some(new)
}

/// Pings systemd's watchdog at half its interval, but only while the writer loop is alive:
/// a wedged writer stops the pings and systemd restarts the service.
fn start_watchdog(interval: Duration, shared: Arc<Shared>) {
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name("didgate-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let beat = shared.metrics.writer_heartbeat_ms.load(Ordering::Relaxed);
                let age = u64::try_from(crate::timestamp::now_ms())
                    .unwrap_or(0)
                    .saturating_sub(beat);
                if age < period.as_millis() as u64 {
                    notify::notify("WATCHDOG=1");
                } else {
                    crate::ops::log::warn_limited(
                        "watchdog",
                        format_args!("writer loop silent for {age} ms: not pinging the watchdog"),
                    );
                }
            }
        });
    if let Err(e) = spawned {
        crate::ops::log::error(format_args!("cannot start the watchdog thread: {e}"));
    }
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
fn announce(local: SocketAddr, token: &str, dir: &std::path::Path, admin: Option<SocketAddr>) {
    let host = if local.ip().is_unspecified() {
        "HOST".to_string()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    println!("didgate: listening on {local}, data in {}", dir.display());
    if let Some(a) = admin {
        println!("didgate: metrics and health on http://{a}/metrics, /healthz, /readyz");
    }
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
            crate::ops::log::warn_limited(
                "connection-cap",
                format_args!("at the connection cap ({max_connections}); new connections wait"),
            );
            may::coroutine::sleep(ACCEPT_BACKOFF);
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if !shared.access().allows(peer.ip()) {
                    // Closed before a byte is read.
                    shared.metrics.reject("denied_peer");
                    drop(stream);
                    continue;
                }
                shared
                    .metrics
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                shared.open_connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                may::go!(move || {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        connection::serve(stream, peer, &shared)
                    }));
                    if result.is_err() {
                        shared.metrics.panics.fetch_add(1, Ordering::Relaxed);
                        crate::ops::log::error(format_args!(
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
                shared.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                crate::ops::log::warn_limited("accept", format_args!("accept failed: {e}"));
                may::coroutine::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}
