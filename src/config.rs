//! Configuration: embedded defaults, then the TOML file, then command-line flags, validated
//! into one [`Config`], section by section.
//!
//! The file is flat (`docs/configuration.md` lists every key); each section of [`Config`] is
//! the settings struct of the stage that uses it, whose `Default` is production's and whose
//! module documents why each default has its value. This file owns only the file's schema,
//! the flags, and the validation that names a wrong key and its line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ingest::gateway::{self, SENDER_RESPONSE_BUDGET};
use crate::ingest::http::{HEADER_SLOTS, Limits};
use crate::ops::log::Level;
use crate::serve;
use crate::writer::{self, Durability, retention::Policy};

/// Data directory when neither `--data`, the file, nor systemd's `$STATE_DIRECTORY` says.
pub const DEFAULT_DATA_DIR: &str = "./didgate-data";

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the store, the token and the lock file live.
    pub data_dir: PathBuf,
    /// The path token; `None` means "use or create the one kept in the data directory".
    pub token: Option<String>,
    /// A second accepted token, for rotating without downtime.
    pub previous_token: Option<String>,
    /// Peers allowed to connect; empty: everyone (didlogic publishes no source list).
    pub allow_from: Vec<IpNet>,
    /// Listeners, runtime, shutdown, log level.
    pub serve: serve::Settings,
    /// Request limits and timeouts of every connection.
    pub ingest: gateway::Settings,
    /// Batching, dedup, durability, disk floor, map size.
    pub writer: writer::Settings,
    /// How long events and quarantined bodies are kept.
    pub retention: Policy,
    /// HTTPS on the webhook listener; `None`: plain HTTP.
    pub tls: Option<crate::tls::Settings>,
    /// The recordings archive.
    pub recordings: crate::archive::Settings,
    /// Forwarding destinations (`[[forward]]`), in the file's order.
    pub forward: Vec<crate::forward::Destination>,
    /// The IANA time zone `calls` and `report` show and group in, and alert rules judge
    /// hours and days in (`None`: the system's).
    pub timezone: Option<String>,
    /// The `[[alert]]` rules, in the file's order.
    pub alerts: Vec<crate::alert::rule::Rule>,
    /// How often `serve` evaluates them.
    pub alert_interval: Duration,
    /// The password of the web console and `/metrics` (HTTP basic auth, any user name);
    /// required when `admin_listen` is not a loopback address.
    pub console_password: Option<String>,
}

/// The TOML file, as written. Every key is optional; unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize)]
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
    tls: Option<tls::TlsFile>,
    recordings: Option<recordings::RecordingsFile>,
    forward: Option<Vec<forward::ForwardFile>>,
    timezone: Option<String>,
    alert: Option<Vec<alert::AlertFile>>,
    alert_interval: Option<String>,
    console_password: Option<String>,
}

/// What the command line said; each `Some` overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--data DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--token TOKEN`.
    pub token: Option<String>,
    /// `--admin-listen ADDR`.
    pub admin_listen: Option<String>,
}

/// A configuration that cannot be used, with the key (and line) it concerns.
#[derive(Debug)]
pub struct Error {
    /// What is wrong, naming the key (and the file and line when known).
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

fn duration(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, Error> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| {
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
            // A key inside a section (`tls.acme.domains`) is written by its last part.
            let line = e
                .key
                .as_deref()
                .and_then(|k| line_of(&text, k.rsplit('.').next().unwrap_or(k)));
            let message = match line {
                Some(n) => format!("{} (in {} line {n})", e.message, path.display()),
                None => format!("{} (in {})", e.message, path.display()),
            };
            Error { message, ..e }
        })
    }

    fn build(f: FileConfig, flags: &Flags) -> Result<Config, Error> {
        let token = flags.token.clone().or(f.token.clone());
        if let Some(t) = &token {
            check_token(t)?;
        }
        let previous_token = f.previous_token.clone();
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
        let allow_from = f
            .allow_from
            .clone()
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
        let data_dir = flags
            .data_dir
            .clone()
            .or(f.data_dir.clone())
            .unwrap_or_else(default_data_dir);
        let serve = serve_section(&f, flags)?;
        let console_password = console_password(&f, &serve)?;
        Ok(Config {
            recordings: recordings::section(f.recordings.as_ref(), &data_dir)?,
            data_dir,
            token,
            previous_token,
            allow_from,
            serve,
            ingest: ingest_section(&f)?,
            writer: writer_section(&f)?,
            retention: retention_section(&f)?,
            tls: tls::section(f.tls.as_ref())?,
            forward: forward::section(f.forward.as_deref())?,
            timezone: match &f.timezone {
                Some(name) => {
                    crate::call::zone::Zone::named(name).map_err(|e| bad("timezone", e))?;
                    Some(name.trim().to_string())
                }
                None => None,
            },
            alerts: alert::section(f.alert.as_deref())?,
            alert_interval: duration(
                "alert_interval",
                &f.alert_interval,
                crate::alert::DEFAULT_INTERVAL,
            )?,
            console_password,
        })
    }
}

/// `console_password`, checked: anyone who can reach a non-loopback admin listener would
/// read every call and SMS through the console, so one is required there.
fn console_password(f: &FileConfig, serve: &serve::Settings) -> Result<Option<String>, Error> {
    let password = f.console_password.as_deref().filter(|p| !p.is_empty());
    if let Some(p) = password
        && p.len() < crate::console::MIN_PASSWORD_BYTES
    {
        return Err(bad(
            "console_password",
            format_args!(
                "{} bytes is too short: use at least {}",
                p.len(),
                crate::console::MIN_PASSWORD_BYTES
            ),
        ));
    }
    if let Some(addr) = serve.admin_listen
        && !addr.ip().is_loopback()
        && password.is_none()
    {
        return Err(bad(
            "console_password",
            format_args!(
                "admin_listen {addr} is not a loopback address, so the console and /metrics \
                 need a password: set console_password (or listen on 127.0.0.1 and reach it \
                 over an SSH tunnel, docs/console.md)"
            ),
        ));
    }
    Ok(password.map(str::to_string))
}

/// Keys a reload applies at once; every other key waits for a restart.
pub const LIVE_KEYS: [&str; 11] = [
    "token",
    "previous_token",
    "allow_from",
    "log_level",
    "retention_days",
    "quarantine_retention_days",
    "min_free_disk_bytes",
    "shutdown_timeout",
    "forward",
    "timezone",
    "alert",
];

/// The file keys whose value differs between two configurations, in the file's order.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let (s, t) = (&a.serve, &b.serve);
    let (i, j) = (&a.ingest, &b.ingest);
    let (w, x) = (&a.writer, &b.writer);
    let interval = |d: Durability| match d {
        Durability::Fsync => None,
        Durability::Interval(d) => Some(d),
    };
    let keys = [
        ("listen", s.listen != t.listen),
        ("data_dir", a.data_dir != b.data_dir),
        ("timezone", a.timezone != b.timezone),
        ("alert", a.alerts != b.alerts),
        ("alert_interval", a.alert_interval != b.alert_interval),
        ("console_password", a.console_password != b.console_password),
        ("token", a.token != b.token),
        (
            "max_head_bytes",
            i.limits.max_head_bytes != j.limits.max_head_bytes,
        ),
        ("max_headers", i.limits.max_headers != j.limits.max_headers),
        (
            "max_body_bytes",
            i.limits.max_body_bytes != j.limits.max_body_bytes,
        ),
        ("head_timeout", i.head_timeout != j.head_timeout),
        ("body_timeout", i.body_timeout != j.body_timeout),
        ("idle_timeout", i.idle_timeout != j.idle_timeout),
        ("write_timeout", i.write_timeout != j.write_timeout),
        ("commit_timeout", i.commit_timeout != j.commit_timeout),
        ("shutdown_timeout", s.shutdown_timeout != t.shutdown_timeout),
        ("dedup_window", w.dedup_window != x.dedup_window),
        (
            "dedup_memory_events",
            w.dedup_memory_events != x.dedup_memory_events,
        ),
        ("queue_capacity", w.queue_capacity != x.queue_capacity),
        ("batch_max", w.batch_max != x.batch_max),
        ("max_connections", s.max_connections != t.max_connections),
        ("workers", s.workers != t.workers),
        ("stack_bytes", s.stack_bytes != t.stack_bytes),
        ("coroutine_pool", s.coroutine_pool != t.coroutine_pool),
        ("map_size_bytes", w.map_bytes != x.map_bytes),
        ("max_map_size_bytes", w.max_map_bytes != x.max_map_bytes),
        ("max_json_depth", i.max_json_depth != j.max_json_depth),
        ("listen_backlog", s.listen_backlog != t.listen_backlog),
        ("log_level", s.log_level != t.log_level),
        ("admin_listen", s.admin_listen != t.admin_listen),
        ("allow_from", a.allow_from != b.allow_from),
        ("previous_token", a.previous_token != b.previous_token),
        (
            "retention_days",
            a.retention.days_by_kind != b.retention.days_by_kind
                || a.retention.default_days != b.retention.default_days,
        ),
        (
            "quarantine_retention_days",
            a.retention.quarantine_days != b.retention.quarantine_days,
        ),
        (
            "min_free_disk_bytes",
            w.min_free_disk_bytes != x.min_free_disk_bytes,
        ),
        (
            "file_headroom_bytes",
            w.file_headroom_bytes != x.file_headroom_bytes,
        ),
        (
            "durability",
            std::mem::discriminant(&w.durability) != std::mem::discriminant(&x.durability),
        ),
        (
            "sync_interval",
            interval(w.durability) != interval(x.durability),
        ),
        ("tls", a.tls != b.tls),
        ("recordings", a.recordings != b.recordings),
        ("forward", a.forward != b.forward),
    ];
    keys.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect()
}

/// Listeners, runtime, shutdown and log level.
fn serve_section(f: &FileConfig, flags: &Flags) -> Result<serve::Settings, Error> {
    let d = serve::Settings::default();
    let listen_text = flags
        .listen
        .clone()
        .or(f.listen.clone())
        .unwrap_or_else(|| d.listen.to_string());
    let listen = listen_text.parse().map_err(|_| {
        bad(
            "listen",
            format_args!("{listen_text:?} is not an IP:port address"),
        )
    })?;
    let admin_text = flags.admin_listen.clone().or(f.admin_listen.clone());
    let admin_listen = match admin_text.as_deref().map(str::trim) {
        None => d.admin_listen,
        Some("" | "off") => None,
        Some(a) => Some(a.parse().map_err(|_| {
            bad(
                "admin_listen",
                format_args!("{a:?} is not an IP:port address (or \"off\")"),
            )
        })?),
    };
    let log_level = match &f.log_level {
        None => d.log_level,
        Some(s) => Level::parse(s)
            .ok_or_else(|| bad("log_level", "must be one of error, warn, info, debug"))?,
    };
    Ok(serve::Settings {
        listen,
        listen_backlog: in_range(
            "listen_backlog",
            f.listen_backlog,
            d.listen_backlog,
            1,
            65_535,
        )?,
        max_connections: in_range(
            "max_connections",
            f.max_connections,
            d.max_connections,
            1,
            1 << 24,
        )?,
        admin_listen,
        workers: in_range("workers", f.workers, d.workers, 1, 1024)?,
        stack_bytes: in_range(
            "stack_bytes",
            f.stack_bytes,
            d.stack_bytes,
            serve::MIN_STACK_BYTES,
            16 << 20,
        )?,
        coroutine_pool: in_range(
            "coroutine_pool",
            f.coroutine_pool,
            d.coroutine_pool,
            0,
            100_000,
        )?,
        shutdown_timeout: duration("shutdown_timeout", &f.shutdown_timeout, d.shutdown_timeout)?,
        log_level,
    })
}

/// Request limits and timeouts.
fn ingest_section(f: &FileConfig) -> Result<gateway::Settings, Error> {
    let d = gateway::Settings::default();
    let limits = Limits {
        max_head_bytes: in_range(
            "max_head_bytes",
            f.max_head_bytes,
            d.limits.max_head_bytes,
            1024,
            1 << 20,
        )?,
        max_headers: in_range(
            "max_headers",
            f.max_headers,
            d.limits.max_headers,
            64,
            HEADER_SLOTS,
        )?,
        max_body_bytes: in_range(
            "max_body_bytes",
            f.max_body_bytes,
            d.limits.max_body_bytes,
            1,
            16 << 20,
        )?,
    };
    let commit_timeout = duration("commit_timeout", &f.commit_timeout, d.commit_timeout)?;
    if commit_timeout >= SENDER_RESPONSE_BUDGET {
        return Err(bad(
            "commit_timeout",
            "must be under 15s: the sender gives up on a response after 15 s",
        ));
    }
    Ok(gateway::Settings {
        limits,
        head_timeout: duration("head_timeout", &f.head_timeout, d.head_timeout)?,
        body_timeout: duration("body_timeout", &f.body_timeout, d.body_timeout)?,
        idle_timeout: duration("idle_timeout", &f.idle_timeout, d.idle_timeout)?,
        write_timeout: duration("write_timeout", &f.write_timeout, d.write_timeout)?,
        commit_timeout,
        max_json_depth: in_range(
            "max_json_depth",
            f.max_json_depth,
            d.max_json_depth,
            1,
            crate::ingest::decode::json::MAX_JSON_DEPTH_LIMIT,
        )?,
    })
}

/// Batching, dedup, durability, the disk floor and the map.
fn writer_section(f: &FileConfig) -> Result<writer::Settings, Error> {
    let d = writer::Settings::default();
    let durability = match f.durability.as_deref() {
        None | Some("fsync") => Durability::Fsync,
        Some("interval") => Durability::Interval(duration(
            "sync_interval",
            &f.sync_interval,
            writer::DEFAULT_SYNC_INTERVAL,
        )?),
        Some(other) => {
            return Err(bad(
                "durability",
                format_args!("{other:?}: must be \"fsync\" or \"interval\""),
            ));
        }
    };
    let dedup_window = duration("dedup_window", &f.dedup_window, d.dedup_window)?;
    if dedup_window < writer::MIN_DEDUP_WINDOW {
        return Err(bad(
            "dedup_window",
            "must be at least 16m, the sender's retry window",
        ));
    }
    let map_limit = writer::max_map_limit(usize::BITS);
    let map_bytes = in_range(
        "map_size_bytes",
        f.map_size_bytes,
        d.map_bytes,
        1 << 20,
        map_limit,
    )
    .map_err(address_space(usize::BITS))?;
    let max_map_bytes = in_range(
        "max_map_size_bytes",
        f.max_map_size_bytes,
        d.max_map_bytes.max(map_bytes),
        1 << 20,
        map_limit,
    )
    .map_err(address_space(usize::BITS))?;
    if max_map_bytes < map_bytes {
        return Err(bad("max_map_size_bytes", "is smaller than map_size_bytes"));
    }
    Ok(writer::Settings {
        batch_max: in_range("batch_max", f.batch_max, d.batch_max, 1, 65_536)?,
        queue_capacity: in_range(
            "queue_capacity",
            f.queue_capacity,
            d.queue_capacity,
            1,
            1 << 20,
        )?,
        dedup_window,
        dedup_memory_events: in_range(
            "dedup_memory_events",
            f.dedup_memory_events,
            d.dedup_memory_events,
            writer::MIN_DEDUP_MEMORY_EVENTS,
            writer::max_dedup_memory_events(usize::BITS),
        )
        .map_err(address_space(usize::BITS))?,
        durability,
        min_free_disk_bytes: f.min_free_disk_bytes.unwrap_or(d.min_free_disk_bytes),
        map_bytes,
        max_map_bytes,
        file_headroom_bytes: in_range(
            "file_headroom_bytes",
            f.file_headroom_bytes,
            d.file_headroom_bytes,
            0,
            1 << 40,
        )?,
    })
}

/// On a 32-bit host, a range error also says why the range is small there.
fn address_space(bits: u32) -> impl Fn(Error) -> Error {
    move |e| {
        if bits >= 64 {
            return e;
        }
        Error {
            message: format!(
                "{} (a 32-bit host: the LMDB map, the dedup table, the heap and every \
                 connection's stack share a 3 GiB address space)",
                e.message
            ),
            ..e
        }
    }
}

/// Days to keep events per kind, and quarantine.
fn retention_section(f: &FileConfig) -> Result<Policy, Error> {
    let mut retention = Policy {
        quarantine_days: f.quarantine_retention_days,
        ..Policy::default()
    };
    for (kind, days) in f.retention_days.clone().unwrap_or_default() {
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
    Ok(retention)
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a single address (`192.0.2.7`).
fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

mod alert;
mod forward;
mod nats;
mod recordings;
mod tls;

#[cfg(test)]
mod tests;
