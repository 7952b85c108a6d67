//! `didgate serve`: process-level order. Lock the data directory, open the store, start the
//! writer and the deadline sweeper, bind (or take systemd's sockets), announce the URLs, tell
//! systemd READY, accept; on SIGHUP reload what can change live (tokens, `allow_from`, log
//! level, retention); on SIGTERM/SIGINT stop accepting, let in-flight requests finish, commit,
//! exit 0. A fatal storage error of the writer ends the process the same way, with its own
//! exit status, so the service manager restarts it.
//!
//! The threads it starts: the coroutine workers (`may`, one coroutine per connection), the
//! writer, the deadline sweeper, the watchdog when systemd asks for one, and this one, which
//! waits for signals and the writer's end.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::{Config, Flags};
use crate::event::Hook;
use crate::ingest::deadline::Deadlines;
use crate::ingest::gateway::{Access, Gateway};
use crate::ingest::listener::{self, DEFAULT_LISTEN_BACKLOG};
use crate::ops::admin::{self, Admin, DEFAULT_ADMIN_LISTEN};
use crate::ops::health::Health;
use crate::ops::log::Level;
use crate::ops::metrics::{Metrics, Rejection};
use crate::ops::notify;
use crate::store::{self, Store};
use crate::tls::Tls;
use crate::tls::http01::Http01;
use crate::tls::job::Job as TlsJob;
use crate::writer::{FATAL_EXIT_GRACE, Fatal, Writer};

/// Name of the lock file that keeps a second `serve` off the same data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// Listen address: all interfaces, port 8080 (unprivileged; see `docs/` for port 80/443).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// On SIGTERM, how long in-flight requests get to finish before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Coroutine stack. Measured use is ~20 KiB (8 KiB of it the header array); simd-json's parser
/// recursion is bounded by the depth limit. 64 KiB leaves a wide margin.
pub const DEFAULT_STACK_BYTES: usize = 64 * 1024;
/// Smallest stack accepted.
pub const MIN_STACK_BYTES: usize = 64 * 1024;
/// Finished coroutines kept for reuse. `may` creates its whole pool at start-up (1000 by
/// default, about 19 MiB resident before any connection); 128 covers the reuse of a burst at
/// a fraction of that, and more connections simply create coroutines on demand.
pub const DEFAULT_COROUTINE_POOL: usize = 128;
/// Descriptors kept back from the connection cap for LMDB, the listener, logs and the writer.
pub const RESERVED_FDS: usize = 64;

/// Exit status when the store is damaged (its data file disagrees with its meta pages, or
/// LMDB faulted reading it): restarting cannot help, so the unit does not restart on it
/// (`RestartPreventExitStatus=3`); restore the last backup. (EX_? has none; 3 is free.)
pub const EXIT_STORE_DAMAGED: u8 = 3;

/// Exit status when the storage became unusable (LMDB's `MDB_PANIC`): only a restart of the
/// process recovers, and systemd's `Restart=on-failure` does that. (EX_SOFTWARE.)
pub const EXIT_STORE_UNUSABLE: u8 = 70;

/// Coroutine worker threads when `workers` is not set: one per core but one, at least one. The
/// writer thread is the one stage every event passes alone (decode, commit, fsync, wake); left a
/// core, it is not queued behind workers (docs/performance.md, "Where the time goes", item 9).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The connection cap derived from the soft descriptor limit, less [`RESERVED_FDS`].
pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid `lim` out-pointer and has no other effects.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let soft = if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        65_536
    };
    soft.saturating_sub(RESERVED_FDS).max(16)
}

/// The process: listeners, runtime, shutdown and log level; the default is production's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The webhook listener's address.
    pub listen: SocketAddr,
    /// Pending connections the kernel queues while the accept loop catches up with a burst.
    pub listen_backlog: u32,
    /// Open connections at most; the accept loop waits while at the cap.
    pub max_connections: usize,
    /// `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Coroutine worker threads.
    pub workers: usize,
    /// Stack of each coroutine.
    pub stack_bytes: usize,
    /// Finished coroutines kept for reuse.
    pub coroutine_pool: usize,
    /// How long in-flight requests get on SIGTERM.
    pub shutdown_timeout: Duration,
    /// The least severe level logged.
    pub log_level: Level,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: DEFAULT_LISTEN,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            max_connections: default_max_connections(),
            admin_listen: Some(DEFAULT_ADMIN_LISTEN),
            workers: default_workers(),
            stack_bytes: DEFAULT_STACK_BYTES,
            coroutine_pool: DEFAULT_COROUTINE_POOL,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log_level: Level::Info,
        }
    }
}

/// Why `serve` could not start, or had to stop.
#[derive(Debug)]
pub enum Error {
    /// Start-up failed; the message names what to fix.
    Start(String),
    /// The store is damaged: exit [`EXIT_STORE_DAMAGED`].
    Damaged(String),
    /// The storage became unusable while running: exit [`EXIT_STORE_UNUSABLE`].
    Fatal(Fatal),
}

impl Error {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Start(_) => 1,
            Error::Damaged(_) => EXIT_STORE_DAMAGED,
            Error::Fatal(_) => EXIT_STORE_UNUSABLE,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Start(m) | Error::Damaged(m) => f.write_str(m),
            Error::Fatal(e) => write!(f, "{e}; exiting so the service manager restarts didgate"),
        }
    }
}

impl std::error::Error for Error {}

impl From<listener::BindError> for Error {
    fn from(e: listener::BindError) -> Self {
        Error::Start(e.0)
    }
}

fn start_error(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Start(format!("{what}: {e}"))
}

fn access_of(cfg: &Config, token: &str) -> Access {
    let mut tokens = vec![token.as_bytes().to_vec()];
    tokens.extend(cfg.previous_token.iter().map(|t| t.as_bytes().to_vec()));
    Access {
        tokens,
        allow_from: cfg.allow_from.clone(),
    }
}

/// What the signal-waiting thread is told.
enum Wake {
    Signal(i32),
    /// The writer thread ended on its own: a fatal storage error.
    WriterEnded,
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully. `flags` are kept to
/// re-read the configuration on SIGHUP.
///
/// # Errors
/// [`Error::Start`]: the data directory is locked or unusable, the port taken, the store
/// unreadable, signals cannot be set up. [`Error::Fatal`]: the storage became unusable while
/// running (after the grace period that lets 503s be written).
pub fn run(cfg: Config, flags: Flags) -> Result<(), Error> {
    crate::ops::log::set_level(cfg.serve.log_level);
    // First, before any file is opened: a passed socket must be taken while its number is
    // still its own.
    let passed = notify::take_listeners().map_err(start_error("socket activation"))?;
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(start_error("cannot install signal handlers"))?;
    let dir = &cfg.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| {
            Error::Start(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    let _lock = lock_data_dir(dir)?;
    let mut token = crate::ops::token::load_or_create(dir, cfg.token.as_deref())
        .map_err(start_error("cannot read or create the token"))?;
    if let crate::writer::Durability::Interval(every) = cfg.writer.durability {
        crate::ops::log::warn(format_args!(
            "durability = \"interval\" (sync every {every:?}): a power cut or OS crash can \
             corrupt the whole store, not only lose the last interval; keep backups \
             (docs/configuration.md)"
        ));
    }
    let map_bytes = usize::try_from(cfg.writer.map_bytes).unwrap_or(usize::MAX);
    let open = || Store::open_writer_with(dir, map_bytes, cfg.writer.durability.store_sync());
    let store = match open() {
        // A store that never committed (a power cut during the first start) is set aside once,
        // and a new one created; anything else damaged is refused.
        Err(store::Error::Damaged(damage)) if damage.unborn => {
            set_aside_unborn(&damage)?;
            open()
        }
        other => other,
    }
    .map_err(|e| match e {
        store::Error::Damaged(_) => Error::Damaged(e.to_string()),
        e => Error::Start(format!("cannot open the store in {}: {e}", dir.display())),
    })?;

    // The runtime reads these when it starts, which is the first coroutine or socket below.
    may::config()
        .set_workers(cfg.serve.workers)
        .set_pool_capacity(cfg.serve.coroutine_pool)
        .set_stack_size(cfg.serve.stack_bytes / std::mem::size_of::<usize>());

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    // Before binding: certificate files that do not load stop the start, with their reason.
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(
            Tls::start(t, dir, &health).map_err(|e| Error::Start(format!("TLS: {e}")))?,
        )),
        None => None,
    };
    let listener = match passed.webhooks {
        Some(l) => l,
        None => listener::bind(cfg.serve.listen, cfg.serve.listen_backlog)?,
    };
    let local = listener
        .local_addr()
        .map_err(start_error("cannot read the bound address"))?;
    let admin = match cfg.serve.admin_listen {
        Some(addr) => Some(listener::bind(addr, 64)?),
        None => None,
    };
    let http01 = match (
        cfg.tls.as_ref().and_then(|t| t.http_redirect),
        passed.http01,
    ) {
        (Some(_), Some(passed)) => Some(passed),
        (Some(addr), None) => Some(listener::bind(addr, 64)?),
        (None, Some(_)) => {
            crate::ops::log::warn(format_args!(
                "systemd passed an http01 socket but `tls.http_redirect` is not set: not serving it"
            ));
            None
        }
        (None, None) => None,
    };
    let listen_fd = listener.as_raw_fd();
    let admin_fd = admin.as_ref().map(AsRawFd::as_raw_fd);
    let http01_fd = http01.as_ref().map(AsRawFd::as_raw_fd);
    let (archiver, link) = if cfg.recordings.enabled {
        let (archiver, link) = start_archiver(&cfg, metrics.clone())?;
        (Some(archiver), Some(link))
    } else {
        (None, None)
    };
    // Shared with the forwarder's dispatchers, which read committed events beside the writer.
    let store = Arc::new(store);
    let (mut forwarder, forward_link) =
        crate::forward::Forwarder::start(store.clone(), &cfg.forward, metrics.clone())
            .map_err(start_error("cannot start the forwarder"))?;
    // Reads the call index beside the writer; never writes the store.
    let alerts = crate::alert::Alerts::start(
        store.clone(),
        cfg.alerts.clone(),
        cfg.timezone.clone(),
        cfg.alert_interval,
        cfg.data_dir.clone(),
        metrics.clone(),
    )
    .map_err(start_error("cannot start the alerts"))?;
    // The console reads beside the writer too.
    let console_store = store.clone();
    let (writer, queue) = Writer::spawn(
        store,
        cfg.writer.clone(),
        metrics.clone(),
        health.clone(),
        cfg.retention.clone(),
        crate::writer::Background {
            archive: link,
            forward: Some(forward_link),
        },
    )
    .map_err(start_error("cannot start the writer thread"))?;
    let deadlines = Deadlines::start().map_err(start_error("cannot start the deadline thread"))?;
    let gateway = Arc::new(Gateway::new(
        access_of(&cfg, &token),
        queue.clone(),
        cfg.ingest.clone(),
        metrics.clone(),
        health.clone(),
        deadlines,
        tls.clone(),
    ));

    announce(
        local,
        &token,
        dir,
        admin.as_ref().and_then(|a| a.local_addr().ok()),
        cfg.tls.as_ref(),
    );
    let accept = {
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid, listening socket; the
        // may listener becomes its only owner.
        let listener = unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let gateway = gateway.clone();
        let max = cfg.serve.max_connections;
        // Why spawning is sound (`go!` spawns unsafely): the accept loop blocks only in may's
        // accept and sleep, which park the coroutine, and keeps no thread-local state.
        may::go!(move || listener::accept_loop(listener, &gateway, max))
    };
    let console = match &admin {
        None => None,
        Some(_) => Some(
            crate::console::renderer::Renderer::start(crate::console::Console {
                store: console_store,
                timezone: cfg.timezone.clone(),
                data_dir: cfg.data_dir.clone(),
                recordings_dir: cfg.recordings.enabled.then(|| cfg.recordings.dir.clone()),
                metrics: metrics.clone(),
                health: health.clone(),
                queue: queue.clone(),
            })
            .map_err(start_error("cannot start the console"))?,
        ),
    };
    let admin_accept = admin.zip(console).map(|(a, console)| {
        // SAFETY: as above, for the admin socket.
        let listener = unsafe { may::net::TcpListener::from_raw_fd(a.into_raw_fd()) };
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            health: health.clone(),
            queue,
            guard: crate::console::guard::Guard::new(cfg.console_password.as_deref()),
            console,
        });
        // Why spawning is sound: as above.
        may::go!(move || admin::accept_loop(listener, admin))
    });
    let http01_accept = match (http01, &tls) {
        (Some(l), Some(tls)) => {
            // SAFETY: as above, for the ACME challenge socket.
            let listener = unsafe { may::net::TcpListener::from_raw_fd(l.into_raw_fd()) };
            let http01 = Arc::new(Http01 {
                resolver: tls.resolver.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
            });
            // Why spawning is sound: as above.
            Some(may::go!(move || crate::tls::http01::accept_loop(
                listener, http01
            )))
        }
        _ => None,
    };
    // After the listener is up: a tls-alpn-01 validation connects to it.
    let tls_job = match (&cfg.tls, &tls) {
        (Some(settings), Some(tls)) => Some(
            TlsJob::start(settings.clone(), dir, tls, metrics.clone(), health.clone())
                .map_err(start_error("cannot start the TLS thread"))?,
        ),
        _ => None,
    };
    notify::notify("READY=1\nSTATUS=accepting webhooks");
    if let Some(interval) = notify::watchdog_interval() {
        start_watchdog(interval, health.clone());
    }

    // Signals arrive on their own thread; this one waits for them and for the writer's end.
    let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("didgate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if wake_tx.send(Wake::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(start_error("cannot start the signal thread"))?;
    let mut cfg = cfg;
    let wake = loop {
        let wake = crossbeam_channel::select! {
            recv(wake_rx) -> w => w.unwrap_or(Wake::Signal(libc::SIGTERM)),
            recv(writer.ended()) -> _ => Wake::WriterEnded,
        };
        match wake {
            Wake::Signal(libc::SIGHUP) => {
                if let Some(job) = &tls_job {
                    job.reload();
                }
                if let Some(new) = reload(&flags, &cfg, &mut token, &gateway, &writer) {
                    if let Some(a) = &archiver {
                        // The archive's disk limits apply live, like the store's floor.
                        let l = &a.limits;
                        l.min_free_disk_bytes
                            .store(new.writer.min_free_disk_bytes, Ordering::Relaxed);
                        l.disk_margin_bytes
                            .store(new.recordings.disk_margin_bytes, Ordering::Relaxed);
                        let quota = new.recordings.max_archive_bytes.unwrap_or(u64::MAX);
                        l.max_archive_bytes.store(quota, Ordering::Relaxed);
                    }
                    if new.alerts != cfg.alerts || new.timezone != cfg.timezone {
                        alerts.reload(new.alerts.clone(), new.timezone.clone());
                        crate::ops::log::info(format_args!("alerts: {} rules", new.alerts.len()));
                    }
                    if new.forward != cfg.forward {
                        match forwarder.apply(&new.forward) {
                            Ok(changes) => crate::ops::log::info(format_args!(
                                "forwarding: {}",
                                changes.join(", ")
                            )),
                            Err(e) => crate::ops::log::error(format_args!(
                                "forwarding: cannot start a destination: {e}"
                            )),
                        }
                    }
                    cfg = new;
                }
            }
            other => break other,
        }
    };
    signal_handle.close();
    let grace = match wake {
        Wake::Signal(signal) => {
            crate::ops::log::info(format_args!(
                "received {}, finishing in-flight requests",
                if signal == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            ));
            notify::notify("STOPPING=1\nSTATUS=finishing in-flight requests");
            cfg.serve.shutdown_timeout
        }
        // Every queued request was answered 503 by the writer: let those answers be written.
        Wake::WriterEnded => FATAL_EXIT_GRACE,
    };
    health.start_shutdown();
    // Stop accepting: a listening socket shut for reading wakes its accept with an error and
    // refuses new connections, so senders see "connection refused" and retry later.
    stop_listening(listen_fd);
    let _ = accept.join();
    if let (Some(fd), Some(handle)) = (admin_fd, admin_accept) {
        stop_listening(fd);
        let _ = handle.join();
    }
    if let (Some(fd), Some(handle)) = (http01_fd, http01_accept) {
        stop_listening(fd);
        let _ = handle.join();
    }
    if let Some(job) = &tls_job {
        job.stop();
    }
    let deadline = Instant::now() + grace;
    while gateway.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let unfinished = gateway.in_flight.load(Ordering::SeqCst);
    if let Some(a) = archiver {
        a.stop();
    }
    alerts.stop();
    // Before the writer, which commits the dispatchers' last reports as it stops.
    forwarder.stop();
    let result = writer.stop();
    crate::ops::log::info(format_args!(
        "stopped: {} commits, {} events written this run ({} duplicates, {} quarantined), {} unfinished requests",
        metrics.commits.load(Ordering::Relaxed),
        metrics.batch_events.sum_whole(),
        metrics.rejected(Rejection::Duplicate),
        metrics.rejected(Rejection::Quarantined),
        unfinished
    ));
    result.map_err(Error::Fatal)
}

/// Starts the recordings archiver, saying loudly when its fetch policy is opened up.
fn start_archiver(
    cfg: &Config,
    metrics: Arc<Metrics>,
) -> Result<(crate::archive::Archiver, crate::archive::Link), Error> {
    use crate::archive::policy::PrivateAddresses;
    let r = &cfg.recordings;
    if r.policy.allow_http {
        crate::ops::log::warn(format_args!(
            "recordings: allow_http is on: recording URLs are fetched over plain HTTP too"
        ));
    }
    match &r.policy.private {
        PrivateAddresses::Deny => {}
        PrivateAddresses::AllowAll => crate::ops::log::warn(format_args!(
            "recordings: allow_private_addresses is on: a recording_url may make didgate fetch              from loopback and private addresses (any address a webhook names)"
        )),
        PrivateAddresses::Allow(nets) => crate::ops::log::warn(format_args!(
            "recordings: allow_private_addresses lets recording URLs reach {}",
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    crate::archive::Archiver::start(r, cfg.writer.min_free_disk_bytes, metrics).map_err(|e| {
        Error::Start(format!(
            "cannot start the recordings archiver in {}: {e}",
            r.dir.display()
        ))
    })
}

fn stop_listening(fd: RawFd) {
    // SAFETY: `fd` is a listener still open (its accept coroutine owns it); shutdown does not
    // close it, it only makes accept fail and the kernel refuse new connections.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// Re-reads the configuration and applies what can change live ([`crate::config::LIVE_KEYS`]).
/// Returns the new configuration when it was valid; an invalid file is reported and the
/// running configuration kept. The log lists, by key, what was applied and what waits for a
/// restart, and whether the live token changed (never the token itself).
///
/// `token` is the live token. A file that names no `token` means the one kept in the data
/// directory, the one a restart would use, so removing the line never revives an older token.
fn reload(
    flags: &Flags,
    old: &Config,
    token: &mut String,
    gateway: &Gateway,
    writer: &Writer,
) -> Option<Config> {
    notify::notify("RELOADING=1");
    let refuse = |why: String| {
        crate::ops::log::error(format_args!(
            "reload refused, keeping the running configuration: {why}"
        ));
        notify::notify("READY=1");
        None
    };
    let new = match Config::load(flags) {
        Ok(new) => new,
        Err(e) => return refuse(e.to_string()),
    };
    let live_token = match &new.token {
        Some(t) => t.clone(),
        None => match crate::ops::token::load_or_create(&old.data_dir, None) {
            Ok(t) => t,
            Err(e) => return refuse(format!("cannot read the kept token: {e}")),
        },
    };
    let token_note = if live_token == *token {
        "token unchanged".to_string()
    } else {
        let source = if new.token.is_some() {
            "the configured one"
        } else {
            "the one kept in the data directory"
        };
        let previous = if new.previous_token.as_deref() == Some(token.as_str()) {
            "the previous token is still accepted until a reload without `previous_token`"
        } else {
            "the previous token is no longer accepted"
        };
        format!("token changed to {source}; {previous}")
    };
    *token = live_token;
    gateway.set_access(access_of(&new, token));
    crate::ops::log::set_level(new.serve.log_level);
    if let Ok(mut policy) = writer.retention.lock() {
        *policy = new.retention.clone();
    }
    writer.set_min_free_disk_bytes(new.writer.min_free_disk_bytes);
    let changed = crate::config::changed_keys(old, &new);
    let (applied, restart): (Vec<&str>, Vec<&str>) = changed
        .iter()
        .partition(|k| crate::config::LIVE_KEYS.contains(k));
    let list = |keys: &[&str]| {
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    };
    let line = format!(
        "configuration reloaded: applied {}; {token_note}",
        list(&applied)
    );
    if restart.is_empty() {
        crate::ops::log::info(format_args!("{line}"));
    } else {
        crate::ops::log::warn(format_args!(
            "{line}; waiting for a restart: {}",
            list(&restart)
        ));
    }
    notify::notify("READY=1");
    Some(new)
}

/// Pings systemd's watchdog at half its interval, but only while the writer loop passed within
/// that period ([`Health::writer_stalled`]): a wedged writer stops the pings and systemd
/// restarts the service.
fn start_watchdog(interval: Duration, health: Arc<Health>) {
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name("didgate-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                if health.writer_stalled(period) {
                    crate::ops::log::warn_limited(
                        "watchdog",
                        format_args!(
                            "writer loop silent for {} ms: not pinging the watchdog",
                            health.writer_silent_for().as_millis()
                        ),
                    );
                } else {
                    notify::notify("WATCHDOG=1");
                }
            }
        });
    if let Err(e) = spawned {
        crate::ops::log::error(format_args!("cannot start the watchdog thread: {e}"));
    }
}

/// Moves aside a data file the open found unborn: it holds no committed transaction (a power
/// cut while the store was being created), so `serve` starts fresh instead of refusing
/// forever. A file that might hold a committed event is never touched: that is a damaged
/// store, reported by the open.
fn set_aside_unborn(damage: &store::header::Damage) -> Result<(), Error> {
    let stamp = crate::timestamp::now_ms() / 1000;
    let aside = damage
        .file
        .with_file_name(format!("data.mdb.unborn-{stamp}"));
    std::fs::rename(&damage.file, &aside).map_err(|e| {
        Error::Damaged(format!(
            "{damage}; cannot move it aside to {}: {e}",
            aside.display()
        ))
    })?;
    crate::ops::log::warn(format_args!(
        "{} holds no committed transaction ({}): moved it to {} and starting a new store",
        damage.file.display(),
        damage.what,
        aside.display()
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
        .map_err(|e| Error::Start(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Start(format!(
            "another `didgate serve` is already using {} (stop it first, or pass another --data)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::Start(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Says where the gateway listens. The webhook URLs carry the secret token, so they are
/// printed only to a terminal: under systemd stdout is the journal, which many people may
/// read and which is kept. `didgate urls` prints them on demand.
fn announce(
    local: SocketAddr,
    token: &str,
    dir: &std::path::Path,
    admin: Option<SocketAddr>,
    tls: Option<&crate::tls::Settings>,
) {
    use std::io::Write;
    // A closed stdout (a reader that went away) must not take the gateway down: lines that
    // cannot be written are dropped.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "didgate: listening on {local}, data in {}",
        dir.display()
    );
    if let Some(t) = tls {
        let source = match &t.source {
            crate::tls::Source::Files { cert, .. } => format!("from {}", cert.display()),
            crate::tls::Source::Acme(a) => {
                format!("by ACME ({}) from {}", a.challenge.name(), a.directory)
            }
        };
        let _ = writeln!(out, "didgate: HTTPS, certificate {source}");
    }
    if let Some(a) = admin {
        let _ = writeln!(
            out,
            "didgate: metrics and health on http://{a}/metrics, /healthz, /readyz"
        );
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let _ = writeln!(
            out,
            "didgate: the webhook URLs hold the secret token and are not logged: \
             `didgate urls` prints them"
        );
        return;
    }
    let host = if let Some(domain) = tls.and_then(crate::tls::Settings::url_host) {
        domain.to_string()
    } else if local.ip().is_unspecified() {
        let _ = writeln!(
            out,
            "didgate: replace HOST with this machine's public name or address"
        );
        "HOST".to_string()
    } else {
        local.ip().to_string()
    };
    for hook in Hook::ALL {
        let _ = writeln!(
            out,
            "didgate: {:<9} {}",
            hook.name(),
            crate::ingest::route::hook_url(tls.is_some(), &host, local.port(), token, hook)
        );
    }
}
