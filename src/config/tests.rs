//! The configuration's tests: defaults, sections, errors naming the key and line.

use super::*;

fn parse(text: &str) -> Result<Config, Error> {
    let file: FileConfig = toml::from_str(text).map_err(|e| plain(e.to_string()))?;
    Config::build(file, &Flags::default())
}

#[test]
fn defaults_are_valid() {
    let c = parse("").unwrap();
    assert_eq!(c.serve.listen, serve::DEFAULT_LISTEN);
    assert_eq!(
        c.ingest.limits.max_body_bytes,
        gateway::DEFAULT_MAX_BODY_BYTES
    );
    assert_eq!(c.ingest.commit_timeout, gateway::DEFAULT_COMMIT_TIMEOUT);
    assert_eq!(
        c.writer.file_headroom_bytes,
        writer::DEFAULT_FILE_HEADROOM_BYTES
    );
    assert_eq!(c.serve.workers, serve::default_workers());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.serve.workers, (cores - 1).max(1));
    assert_eq!(
        parse("file_headroom_bytes = 0")
            .unwrap()
            .writer
            .file_headroom_bytes,
        0
    );
    // Each stage's defaults are the configuration's: tests and benches that take a
    // stage's `Settings::default()` run what production runs.
    assert_eq!(c.serve, serve::Settings::default());
    assert_eq!(c.ingest, gateway::Settings::default());
    assert_eq!(c.writer, writer::Settings::default());
}

#[test]
fn changed_keys_name_each_key_that_differs() {
    let a = parse("").unwrap();
    let b = parse(
        "log_level = \"debug\"\nqueue_capacity = 8\nmin_free_disk_bytes = 1\ndurability = \"interval\"",
    )
    .unwrap();
    assert_eq!(
        changed_keys(&a, &b),
        [
            "queue_capacity",
            "log_level",
            "min_free_disk_bytes",
            "durability",
            "sync_interval"
        ]
    );
    assert!(changed_keys(&a, &a).is_empty());
    // Every key the file takes is compared: a key added to the file and not here would
    // silently be neither applied nor reported.
    let keys = [
        "listen",
        "data_dir",
        "token",
        "max_head_bytes",
        "max_headers",
        "max_body_bytes",
        "head_timeout",
        "body_timeout",
        "idle_timeout",
        "write_timeout",
        "commit_timeout",
        "shutdown_timeout",
        "dedup_window",
        "dedup_memory_events",
        "queue_capacity",
        "batch_max",
        "max_connections",
        "workers",
        "stack_bytes",
        "coroutine_pool",
        "map_size_bytes",
        "max_map_size_bytes",
        "max_json_depth",
        "listen_backlog",
        "log_level",
        "admin_listen",
        "allow_from",
        "previous_token",
        "retention_days",
        "quarantine_retention_days",
        "min_free_disk_bytes",
        "file_headroom_bytes",
        "durability",
        "sync_interval",
        "tls",
        "recordings",
        "forward",
        "timezone",
        "alert",
        "alert_interval",
        "console_password",
    ];
    let schema = format!("{:?}", FileConfig::default());
    for k in keys {
        assert!(schema.contains(&format!("{k}: None")), "{k}");
    }
    assert_eq!(schema.matches(": None").count(), keys.len());
}

#[test]
fn a_32_bit_host_caps_the_map_and_the_dedup_table_and_says_why() {
    assert_eq!(writer::max_map_limit(32), 1 << 30);
    assert_eq!(writer::max_map_limit(64), 1 << 44);
    assert!(writer::max_dedup_memory_events(32) < writer::max_dedup_memory_events(64));
    assert!(writer::DEFAULT_MAX_MAP_SIZE_BYTES <= writer::max_map_limit(usize::BITS));
    let e = address_space(32)(bad("max_map_size_bytes", "4294967296 is outside 1..=2"));
    assert!(e.message.contains("32-bit host"), "{}", e.message);
    assert_eq!(e.key.as_deref(), Some("max_map_size_bytes"));
    let e = address_space(64)(bad("k", "x"));
    assert!(!e.message.contains("32-bit"));
}

#[test]
fn flags_override_file() {
    let file: FileConfig = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
    let flags = Flags {
        listen: Some("127.0.0.1:2".into()),
        ..Flags::default()
    };
    assert_eq!(Config::build(file, &flags).unwrap().serve.listen.port(), 2);
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
            "map_size_bytes = 2097152\nmax_map_size_bytes = 1048576",
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
    assert_eq!(c.serve.admin_listen, None);
    assert_eq!(c.allow_from.len(), 2);
    assert!(c.allow_from[0].contains(&"192.0.2.77".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(c.retention.days_by_kind.get("cdr"), Some(&400));
    assert_eq!(c.retention.default_days, Some(90));
    assert_eq!(
        c.writer.durability,
        Durability::Interval(Duration::from_millis(50))
    );
    let d = parse("").unwrap();
    assert_eq!(
        d.serve.admin_listen,
        Some(crate::ops::admin::DEFAULT_ADMIN_LISTEN)
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
