//! Configuration: embedded defaults, then the TOML file, then command-line flags, validated
//! into one [`Config`].
//!
//! Owns every tunable and its default, with the reason for the default beside it
//! (`docs/configuration.md` lists the same). It does not apply them: the server, connection and
//! writer read the validated values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ingest::http::{self, HEADER_SLOTS};
use crate::ops::log::Level;
use crate::writer::retention::Policy;

/// Listen address: all interfaces, port 8080 (unprivileged; see `docs/` for port 80/443).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Data directory when neither `--data`, the file, nor systemd's `$STATE_DIRECTORY` says.
pub const DEFAULT_DATA_DIR: &str = "./didgate-data";
/// Request line plus headers. 16 KiB is nginx's large_client_header_buffers order of size and
/// far above what a webhook sender sends (didlogic's requests carry a handful of headers).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Header fields per request: generous for proxies that add many, bounded for memory.
pub const DEFAULT_MAX_HEADERS: usize = HEADER_SLOTS;
/// Body limit. didlogic's payloads are well under 1 KiB; 64 KiB leaves room for growth
/// while bounding per-connection memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The whole request head must arrive within this; a client trickling bytes cannot extend it.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole body must arrive within this once the head is read.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response write that makes no progress for this long closes the connection (a client that
/// never reads must not hold memory).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for its commit before answering 503. The sender allows 15 s for
/// the whole response; 5 s leaves room for a slow network on both sides.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The sender's whole-response budget: a commit timeout at or past it is refused.
pub const SENDER_RESPONSE_BUDGET: Duration = Duration::from_secs(15);
/// On SIGTERM, how long in-flight requests get to finish before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Byte-identical retries within this window are recognised as duplicates. The sender retries
/// for ~16 minutes; 7 days also catches a replay from its dead-letter store.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The dedup window may not be shorter than the sender's retry window (about 16 minutes).
pub const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(16 * 60);
/// Events the in-memory dedup table remembers at least (up to twice as many): two tables of
/// 2 MiB. At the default, retries are recognised for 16 minutes up to 204 events/s sustained
/// (17 million events a day); `didgate_dedup_reach_seconds` shows the reach at the live rate.
pub const DEFAULT_DEDUP_MEMORY_EVENTS: usize = 196_608;
/// Fewest events the dedup table may be sized for.
pub const MIN_DEDUP_MEMORY_EVENTS: usize = 1024;
/// Most events the dedup table may be sized for (two tables of 512 MiB).
pub const MAX_DEDUP_MEMORY_EVENTS: usize = 48 << 20;
/// Jobs that may wait for the writer. A burst beyond this gets fast 503s (retried by the sender)
/// instead of unbounded memory. 4096 events is ~100 ms of peak commit throughput.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Most events in one write transaction (one fsync).
pub const DEFAULT_BATCH_MAX: usize = 512;
/// Coroutine stack. Measured use is ~20 KiB (8 KiB of it the header array); simd-json's parser
/// recursion is bounded by the depth limit. 64 KiB leaves a wide margin.
pub const DEFAULT_STACK_BYTES: usize = 64 * 1024;
/// Coroutine worker threads when `workers` is not set: one per core but one, at least one. The
/// writer thread is the one stage every event passes alone (decode, commit, fsync, wake); left a
/// core, it is not queued behind workers. On the 2-core benchmark machine one worker against
/// two, interleaved runs: +16% and +9% req/s at 16 connections, -2% and +7% at 64, +4%, 0% and
/// +9% at 256, with less CPU per request (docs/performance.md).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}
/// Smallest stack accepted.
pub const MIN_STACK_BYTES: usize = 64 * 1024;
/// Finished coroutines kept for reuse. `may` creates its whole pool at start-up (1000 by
/// default, measured at 18.7 MiB resident before any connection); 128 covers the reuse of a
/// burst at a fraction of that, and more connections simply create coroutines on demand.
pub const DEFAULT_COROUTINE_POOL: usize = 128;
/// Initial LMDB map size. The map grows by doubling before it fills (between write
/// transactions, as LMDB requires), so this only sets where growth starts.
pub const DEFAULT_MAP_SIZE_BYTES: u64 = 64 << 20;
/// Most the LMDB map (and so the data file) may grow to. 64-bit hosts: 16 GiB. 32-bit hosts
/// (armv7 Raspberry Pi OS): 768 MiB, as the whole map must fit the process's 3 GiB address
/// space beside everything else.
pub const DEFAULT_MAX_MAP_SIZE_BYTES: u64 = if usize::BITS >= 64 {
    16 << 30
} else {
    768 << 20
};
/// Admin listener (metrics, health): loopback only by default, as it is unauthenticated.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
/// Below this much free space on the data filesystem, new events get 503 (the sender retries)
/// rather than letting LMDB meet ENOSPC; room is left for the map to grow and for the OS.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 << 20;
/// Zero-filled space the writer keeps in the data file past the data, filled while idle, so a
/// burst's commits overwrite existing blocks instead of growing the file (see
/// `Store::zero_fill`). 64 MiB holds about 200,000 events of the mixed workload.
pub const DEFAULT_FILE_HEADROOM_BYTES: u64 = 64 << 20;
/// In `durability = "interval"` mode, how often committed data is flushed to disk.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Pending connections the kernel queues while the accept loop catches up with a burst.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// Descriptors kept back from the connection cap for LMDB, the listener, logs and the writer.
pub const RESERVED_FDS: usize = 64;

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The path token; `None` means "use or create the one kept in the data directory".
    pub token: Option<String>,
    pub limits: http::Limits,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub commit_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub dedup_window: Duration,
    /// Events the in-memory dedup table remembers at least.
    pub dedup_memory_events: usize,
    pub queue_capacity: usize,
    pub batch_max: usize,
    /// Open connections at most; the accept loop waits while at the cap.
    pub max_connections: usize,
    /// Coroutine worker threads (default: one per core).
    pub workers: usize,
    pub stack_bytes: usize,
    pub coroutine_pool: usize,
    /// Initial map size; it grows up to `max_map_size_bytes`.
    pub map_size_bytes: u64,
    pub max_map_size_bytes: u64,
    pub max_json_depth: usize,
    pub listen_backlog: u32,
    pub log_level: Level,
    /// `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Peers allowed to connect; empty: everyone (didlogic publishes no source list).
    pub allow_from: Vec<IpNet>,
    /// A second accepted token, for rotating without downtime.
    pub previous_token: Option<String>,
    pub retention: Policy,
    pub min_free_disk_bytes: u64,
    /// Zero-filled bytes kept in the data file past the data; 0 turns this off.
    pub file_headroom_bytes: u64,
    pub durability: Durability,
}

/// When an event counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit fsyncs before its requests are answered (the default).
    Fsync,
    /// Commits are answered once written to the file (they survive a crash of the process);
    /// a sync to disk runs every interval, so a power cut may lose that much.
    Interval(Duration),
}

/// The TOML file, as written. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    token: Option<String>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<usize>,
    head_timeout: Option<String>,
    body_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    commit_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    dedup_window: Option<String>,
    dedup_memory_events: Option<usize>,
    queue_capacity: Option<usize>,
    batch_max: Option<usize>,
    max_connections: Option<usize>,
    workers: Option<usize>,
    stack_bytes: Option<usize>,
    coroutine_pool: Option<usize>,
    map_size_bytes: Option<u64>,
    max_map_size_bytes: Option<u64>,
    max_json_depth: Option<usize>,
    listen_backlog: Option<u32>,
    log_level: Option<String>,
    admin_listen: Option<String>,
    allow_from: Option<Vec<String>>,
    previous_token: Option<String>,
    retention_days: Option<BTreeMap<String, u32>>,
    quarantine_retention_days: Option<u32>,
    min_free_disk_bytes: Option<u64>,
    file_headroom_bytes: Option<u64>,
    durability: Option<String>,
    sync_interval: Option<String>,
}

/// What the command line said; each `Some` overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub admin_listen: Option<String>,
}

/// A configuration that cannot be used, with the key (and line) it concerns.
#[derive(Debug)]
pub struct Error {
    pub message: String,
    /// The key at fault, when one is.
    pub key: Option<String>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn bad(key: &str, why: impl std::fmt::Display) -> Error {
    Error {
        message: format!("config: `{key}`: {why}"),
        key: Some(key.to_string()),
    }
}

fn plain(message: String) -> Error {
    Error { message, key: None }
}

/// The 1-based line of `text` where `key` is assigned, if it is.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The data directory when nothing configures one: systemd's `$STATE_DIRECTORY` (its first
/// entry) when set, else [`DEFAULT_DATA_DIR`].
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            let s = v.to_string_lossy().into_owned();
            s.split(':')
                .next()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The connection cap derived from the soft descriptor limit.
fn default_max_connections() -> usize {
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

fn duration(key: &str, v: Option<String>, default: Duration) -> Result<Duration, Error> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(&s).map_err(|e| {
                bad(
                    key,
                    format_args!("{e} (write e.g. \"5s\", \"10m\", \"7d\")"),
                )
            })?;
            if d.is_zero() {
                return Err(bad(key, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, Error> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(bad(key, format_args!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

/// Whether a token is acceptable in a URL path segment and long enough to be a secret.
pub fn check_token(t: &str) -> Result<(), Error> {
    if t.len() < 16 {
        return Err(bad("token", "must be at least 16 characters"));
    }
    if t.len() > 256 {
        return Err(bad("token", "must be at most 256 characters"));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    {
        return Err(bad("token", "may hold only A-Z a-z 0-9 - _ . ~ (URL-safe)"));
    }
    Ok(())
}

impl Config {
    /// Reads the file named by `flags.config` (if any), applies the flags, and validates.
    ///
    /// # Errors
    /// [`Error`] naming the file, key (and for syntax errors, line) that is wrong.
    pub fn load(flags: &Flags) -> Result<Config, Error> {
        let Some(path) = &flags.config else {
            return Config::build(FileConfig::default(), flags);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| plain(format!("config: cannot read {}: {e}", path.display())))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| plain(format!("config: {}: {e}", path.display())))?;
        Config::build(file, flags).map_err(|e| {
            let line = e.key.as_deref().and_then(|k| line_of(&text, k));
            let message = match line {
                Some(n) => format!("{} (in {} line {n})", e.message, path.display()),
                None => format!("{} (in {})", e.message, path.display()),
            };
            Error { message, ..e }
        })
    }

    fn build(f: FileConfig, flags: &Flags) -> Result<Config, Error> {
        let listen_text = flags
            .listen
            .clone()
            .or(f.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|_| {
            bad(
                "listen",
                format_args!("{listen_text:?} is not an IP:port address"),
            )
        })?;
        let data_dir = flags
            .data_dir
            .clone()
            .or(f.data_dir)
            .unwrap_or_else(default_data_dir);
        let token = flags.token.clone().or(f.token);
        if let Some(t) = &token {
            check_token(t)?;
        }
        let previous_token = f.previous_token;
        if let Some(t) = &previous_token {
            check_token(t).map_err(|e| {
                bad(
                    "previous_token",
                    e.message.trim_start_matches("config: `token`: "),
                )
            })?;
            if token.as_deref() == Some(t.as_str()) {
                return Err(bad("previous_token", "is the same as `token`"));
            }
        }
        let admin_text = flags.admin_listen.clone().or(f.admin_listen);
        let admin_listen = match admin_text.as_deref().map(str::trim) {
            None => Some(
                DEFAULT_ADMIN_LISTEN
                    .parse()
                    .map_err(|_| bad("admin_listen", "bad default"))?,
            ),
            Some("" | "off") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                bad(
                    "admin_listen",
                    format_args!("{a:?} is not an IP:port address (or \"off\")"),
                )
            })?),
        };
        let allow_from = f
            .allow_from
            .unwrap_or_default()
            .iter()
            .map(|c| {
                parse_cidr(c).ok_or_else(|| {
                    bad(
                        "allow_from",
                        format_args!("{c:?} is not a CIDR range or IP address"),
                    )
                })
            })
            .collect::<Result<Vec<IpNet>, Error>>()?;
        let mut retention = Policy {
            quarantine_days: f.quarantine_retention_days,
            ..Policy::default()
        };
        for (kind, days) in f.retention_days.unwrap_or_default() {
            if days == 0 {
                return Err(bad(
                    "retention_days",
                    format_args!("{kind} = 0: leave the kind out to keep it forever"),
                ));
            }
            if kind == "default" {
                retention.default_days = Some(days);
            } else {
                retention.days_by_kind.insert(kind, days);
            }
        }
        if retention.quarantine_days == Some(0) {
            return Err(bad(
                "quarantine_retention_days",
                "0: leave it out to keep quarantine forever",
            ));
        }
        let durability = match f.durability.as_deref() {
            None | Some("fsync") => Durability::Fsync,
            Some("interval") => Durability::Interval(duration(
                "sync_interval",
                f.sync_interval,
                DEFAULT_SYNC_INTERVAL,
            )?),
            Some(other) => {
                return Err(bad(
                    "durability",
                    format_args!("{other:?}: must be \"fsync\" or \"interval\""),
                ));
            }
        };
        let map_size_bytes = in_range(
            "map_size_bytes",
            f.map_size_bytes,
            DEFAULT_MAP_SIZE_BYTES,
            1 << 20,
            1 << 44,
        )?;
        let max_map_size_bytes = in_range(
            "max_map_size_bytes",
            f.max_map_size_bytes,
            DEFAULT_MAX_MAP_SIZE_BYTES.max(map_size_bytes),
            1 << 20,
            1 << 44,
        )?;
        if max_map_size_bytes < map_size_bytes {
            return Err(bad("max_map_size_bytes", "is smaller than map_size_bytes"));
        }
        let limits = http::Limits {
            max_head_bytes: in_range(
                "max_head_bytes",
                f.max_head_bytes,
                DEFAULT_MAX_HEAD_BYTES,
                1024,
                1 << 20,
            )?,
            max_headers: in_range(
                "max_headers",
                f.max_headers,
                DEFAULT_MAX_HEADERS,
                64,
                HEADER_SLOTS,
            )?,
            max_body_bytes: in_range(
                "max_body_bytes",
                f.max_body_bytes,
                DEFAULT_MAX_BODY_BYTES,
                1,
                16 << 20,
            )?,
        };
        let commit_timeout = duration("commit_timeout", f.commit_timeout, DEFAULT_COMMIT_TIMEOUT)?;
        if commit_timeout >= SENDER_RESPONSE_BUDGET {
            return Err(bad(
                "commit_timeout",
                "must be under 15s: the sender gives up on a response after 15 s",
            ));
        }
        let dedup_window = duration("dedup_window", f.dedup_window, DEFAULT_DEDUP_WINDOW)?;
        if dedup_window < MIN_DEDUP_WINDOW {
            return Err(bad(
                "dedup_window",
                "must be at least 16m, the sender's retry window",
            ));
        }
        let log_level = match f.log_level {
            None => Level::Info,
            Some(s) => Level::parse(&s)
                .ok_or_else(|| bad("log_level", "must be one of error, warn, info, debug"))?,
        };
        Ok(Config {
            listen,
            data_dir,
            token,
            limits,
            head_timeout: duration("head_timeout", f.head_timeout, DEFAULT_HEAD_TIMEOUT)?,
            body_timeout: duration("body_timeout", f.body_timeout, DEFAULT_BODY_TIMEOUT)?,
            idle_timeout: duration("idle_timeout", f.idle_timeout, DEFAULT_IDLE_TIMEOUT)?,
            write_timeout: duration("write_timeout", f.write_timeout, DEFAULT_WRITE_TIMEOUT)?,
            commit_timeout,
            shutdown_timeout: duration(
                "shutdown_timeout",
                f.shutdown_timeout,
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            dedup_window,
            dedup_memory_events: in_range(
                "dedup_memory_events",
                f.dedup_memory_events,
                DEFAULT_DEDUP_MEMORY_EVENTS,
                MIN_DEDUP_MEMORY_EVENTS,
                MAX_DEDUP_MEMORY_EVENTS,
            )?,
            queue_capacity: in_range(
                "queue_capacity",
                f.queue_capacity,
                DEFAULT_QUEUE_CAPACITY,
                1,
                1 << 20,
            )?,
            batch_max: in_range("batch_max", f.batch_max, DEFAULT_BATCH_MAX, 1, 65_536)?,
            max_connections: in_range(
                "max_connections",
                f.max_connections,
                default_max_connections(),
                1,
                1 << 24,
            )?,
            workers: in_range("workers", f.workers, default_workers(), 1, 1024)?,
            stack_bytes: in_range(
                "stack_bytes",
                f.stack_bytes,
                DEFAULT_STACK_BYTES,
                MIN_STACK_BYTES,
                16 << 20,
            )?,
            map_size_bytes,
            max_map_size_bytes,
            coroutine_pool: in_range(
                "coroutine_pool",
                f.coroutine_pool,
                DEFAULT_COROUTINE_POOL,
                0,
                100_000,
            )?,
            max_json_depth: in_range(
                "max_json_depth",
                f.max_json_depth,
                crate::ingest::decode::json::MAX_JSON_DEPTH,
                1,
                64,
            )?,
            listen_backlog: in_range(
                "listen_backlog",
                f.listen_backlog,
                DEFAULT_LISTEN_BACKLOG,
                1,
                65_535,
            )?,
            log_level,
            admin_listen,
            allow_from,
            previous_token,
            retention,
            min_free_disk_bytes: f.min_free_disk_bytes.unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
            file_headroom_bytes: in_range(
                "file_headroom_bytes",
                f.file_headroom_bytes,
                DEFAULT_FILE_HEADROOM_BYTES,
                0,
                1 << 40,
            )?,
            durability,
        })
    }
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a single address (`192.0.2.7`).
fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        let file: FileConfig = toml::from_str(text).map_err(|e| plain(e.to_string()))?;
        Config::build(file, &Flags::default())
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.commit_timeout, DEFAULT_COMMIT_TIMEOUT);
        assert_eq!(c.file_headroom_bytes, DEFAULT_FILE_HEADROOM_BYTES);
        assert_eq!(c.workers, default_workers());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.workers, (cores - 1).max(1));
        assert_eq!(
            parse("file_headroom_bytes = 0")
                .unwrap()
                .file_headroom_bytes,
            0
        );
    }

    #[test]
    fn flags_override_file() {
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        let flags = Flags {
            listen: Some("127.0.0.1:2".into()),
            ..Flags::default()
        };
        assert_eq!(Config::build(file, &flags).unwrap().listen.port(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("nonsense = 1", "nonsense"),
            ("listen = \"nowhere\"", "listen"),
            ("max_body_bytes = 0", "max_body_bytes"),
            ("commit_timeout = \"15s\"", "commit_timeout"),
            ("dedup_window = \"10m\"", "dedup_window"),
            ("head_timeout = \"soon\"", "head_timeout"),
            ("token = \"short\"", "token"),
            ("token = \"has/slash/0123456789\"", "token"),
            ("log_level = \"loud\"", "log_level"),
            ("max_headers = 129", "max_headers"),
            ("allow_from = [\"10.0.0.0/33\"]", "allow_from"),
            ("admin_listen = \"localhost\"", "admin_listen"),
            ("durability = \"sometimes\"", "durability"),
            ("retention_days = { cdr = 0 }", "retention_days"),
            ("file_headroom_bytes = 1099511627777", "file_headroom_bytes"),
            ("workers = 0", "workers"),
            (
                "map_size_bytes = 4294967296\nmax_map_size_bytes = 1048576",
                "max_map_size_bytes",
            ),
            (
                "token = \"abcdefghijklmnopq\"\nprevious_token = \"abcdefghijklmnopq\"",
                "previous_token",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn new_keys_parse() {
        let c = parse("admin_listen = \"off\"\nallow_from = [\"192.0.2.0/24\", \"2001:db8::1\"]\nretention_days = { cdr = 400, default = 90 }\nquarantine_retention_days = 800\ndurability = \"interval\"\nsync_interval = \"50ms\"\n").unwrap();
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.allow_from.len(), 2);
        assert!(c.allow_from[0].contains(&"192.0.2.77".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(c.retention.days_by_kind.get("cdr"), Some(&400));
        assert_eq!(c.retention.default_days, Some(90));
        assert_eq!(
            c.durability,
            Durability::Interval(Duration::from_millis(50))
        );
        let d = parse("").unwrap();
        assert_eq!(
            d.admin_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
        assert!(d.retention.is_keep_all());
    }

    #[test]
    fn file_errors_give_the_key_and_line() {
        let cases = [
            // A value out of range (found after parsing, located by key).
            (
                "# comment\nlisten = \"0.0.0.0:1\"\n\nmax_body_bytes = 0\n",
                "line 4",
            ),
            // A type error (found by the TOML parser).
            (
                "listen = \"0.0.0.0:1\"\nmax_body_bytes = \"big\"\n",
                "line 2",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (text, line) in cases {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            let flags = Flags {
                config: Some(path),
                ..Flags::default()
            };
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(
                err.contains(line) && err.contains("max_body_bytes"),
                "{err}"
            );
        }
    }
}
