//! The reader tool against a real store: filters, time ranges, CSV, errors and exit codes,
//! closed pipes, help texts, config checking.

use std::io::Read;
use std::process::Stdio;

use crate::util::*;

fn seeded() -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    for (hook, ct, body) in SEEDS {
        assert_eq!(s.post(hook, ct, body).status, 200);
    }
    assert_eq!(
        s.post("sms", FORM, "src=1&dst=2&message=a&message=b&extra=%FF")
            .status,
        200
    );
    (tmp, data, s)
}

#[test]
fn tail_last_n_and_kind_filter() {
    let (_tmp, data, _s) = seeded();
    assert_eq!(seqs_of(&read_ok(&data, &["tail", "-n", "2"])), [3, 4]);
    let sms = read_ok(&data, &["tail", "--kind", "sms"]);
    assert_eq!(sms.lines().count(), 2);
    let last: serde_json::Value = serde_json::from_str(sms.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["payload"]["message"],
        serde_json::json!(["a", "b"]),
        "repeated keys keep every value"
    );
    assert_eq!(last["payload"]["extra"], "\u{FFFD}");
    let raw = read_ok(&data, &["tail", "-n", "1", "--raw"]);
    assert_eq!(raw, "src=1&dst=2&message=a&message=b&extra=%FF\n");
}

#[test]
fn export_time_ranges() {
    let (_tmp, data, _s) = seeded();
    let all = export(&data);
    let t = all[1]["stored_at"].as_str().unwrap();
    let since = read_ok(&data, &["export", "--since", t]);
    assert!(since.lines().count() >= 3 && since.lines().count() <= 3 + 1);
    let day = &t[..10];
    let next_day = time_next_day(day);
    assert_eq!(
        read_ok(&data, &["export", "--since", day, "--until", &next_day])
            .lines()
            .count(),
        4
    );
    assert_eq!(
        read_ok(&data, &["export", "--until", day]).lines().count(),
        0
    );
    assert_eq!(
        read_ok(&data, &["export", "--since", "2999-01-01"])
            .lines()
            .count(),
        0
    );
    assert_eq!(
        read_ok(&data, &["export", "--since", "2000-01-01T00:00:00+02:00"])
            .lines()
            .count(),
        4
    );
}

fn time_next_day(day: &str) -> String {
    let d = time::Date::parse(
        day,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .unwrap();
    d.next_day().unwrap().to_string()
}

#[test]
fn csv_has_documented_columns_first_then_others() {
    let (_tmp, data, s) = seeded();
    assert_eq!(
        s.post(
            "cdr",
            JSON,
            r#"{"event":"cdr","callid":"n2","note":"a,b \"q\"","duration":10}"#
        )
        .status,
        200
    );
    let csv = read_ok(&data, &["export", "--kind", "cdr", "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "seq,stored_at,calldate,callid,direction,disposition,src,dst,duration,billsec,user_id,event,note"
    );
    let row1 = lines.next().unwrap();
    assert!(row1.ends_with(",2026-05-12T05:17:58Z,82xg86dv6jhl0p8xu0l3,outbound,ANSWERED,441273004315,448081697031,9,7,76141,cdr,"), "{row1}");
    let row2 = lines.next().unwrap();
    assert!(
        row2.ends_with(",,n2,,,,,10,,,cdr,\"a,b \"\"q\"\"\""),
        "{row2}"
    );
    let sms = read_ok(&data, &["export", "--kind", "sms", "--format", "csv"]);
    assert!(
        sms.starts_with("seq,stored_at,src,dst,message,received_at,extra\n"),
        "{sms}"
    );
    assert!(
        sms.contains(",15551234567,448001234567,Hello world ,2026-05-13 12:45:40 UTC,\n"),
        "{sms}"
    );
}

#[test]
fn errors_are_one_line_and_exit_2_and_get_miss_exits_1() {
    let (_tmp, data, _s) = seeded();
    let d = data.to_str().unwrap();
    let missing = data.with_file_name("missing");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["tail", "--data", missing.to_str().unwrap()],
            2,
            "no didgate data",
        ),
        (
            vec!["export", "--data", d, "--since", "yesterday"],
            2,
            "invalid time",
        ),
        (
            vec!["export", "--data", d, "--kind", "fax"],
            2,
            "unknown kind",
        ),
        (
            vec!["export", "--data", d, "--format", "csv"],
            2,
            "needs --kind",
        ),
        (vec!["get", "--data", d, "no-such-call"], 1, "no events"),
        (
            vec!["quarantine", "--data", d, "show", "9"],
            1,
            "no quarantined body",
        ),
    ];
    for (args, code, msg) in cases {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    // Enough output to overflow a pipe buffer, posted pipelined on one connection.
    let mut c = s.connect();
    s.post_cdrs_pipelined(&mut c, (0..800).map(|i| format!("pipe-{i}")));
    let mut child = didgate()
        .args(["export", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?} {err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn help_texts_cover_every_subcommand_and_option() {
    let top = String::from_utf8(cli(&["--help"]).stdout).unwrap();
    for sub in [
        "serve",
        "tail",
        "export",
        "get",
        "stats",
        "quarantine",
        "check-config",
    ] {
        assert!(top.contains(sub), "{sub} in --help");
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "serve",
            &[
                "--listen",
                "--data",
                "--token",
                "--config",
                "STATE_DIRECTORY",
            ],
        ),
        (
            "tail",
            &["--lines", "--follow", "--kind", "--raw", "--data"],
        ),
        (
            "export",
            &["--since", "--until", "--kind", "--format", "csv", "--data"],
        ),
        ("get", &["CALLID", "--data"]),
        ("stats", &["--json", "--data"]),
        ("quarantine", &["list", "show", "--data"]),
    ];
    for (sub, words) in cases {
        let out = cli(&[sub, "--help"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for w in *words {
            assert!(text.contains(w), "`{sub} --help` mentions {w}: {text}");
        }
    }
}

#[test]
fn check_config_accepts_good_and_names_the_bad_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9000\"\ncommit_timeout = \"3s\"\n",
    )
    .unwrap();
    let out = cli(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success());
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:9000\"\nmax_body_bytes = \"lots\"\n",
    )
    .unwrap();
    let out = cli(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("max_body_bytes"),
        "{err}"
    );
    let unknown = tmp.path().join("unknown.toml");
    std::fs::write(&unknown, "lisen = \"x\"\n").unwrap();
    let err = String::from_utf8_lossy(&cli(&["check-config", unknown.to_str().unwrap()]).stderr)
        .into_owned();
    assert!(err.contains("lisen"), "{err}");
}

/// Regression: the start-up banner printed the full URLs, token included, into the journal
/// while the docs said logs never carry the token. Now only a terminal gets them, and
/// `didgate urls` prints them on demand.
#[test]
fn urls_are_printed_on_demand_and_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token = "urls-token-0123456789abcdef";
    let cfg = write_config(
        tmp.path(),
        "didgate.toml",
        &format!("listen = \"0.0.0.0:8443\"\ntoken = \"{token}\"\n"),
    );
    let out = cli(&["urls", "--config", &cfg, "--data", data.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!(
            "cdr       http://HOST:8443/hooks/{token}/cdr\nrecording http://HOST:8443/hooks/{token}/recording\nsms       http://HOST:8443/hooks/{token}/sms\n"
        )
    );
    let out = cli(&["urls", "--config", &cfg, "--host", "gw.example.com"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("http://gw.example.com:8443/hooks/")
    );
    // No token configured and none kept yet: said so, exit 2.
    let out = cli(&["urls", "--data", tmp.path().join("empty").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token yet"));
    // A running gateway's stdout (a pipe, as under systemd) and stderr hold no token.
    let mut child = serve_command(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("`didgate urls` prints them") {
            break;
        }
    }
    let kept = std::fs::read_to_string(data.join("token")).unwrap();
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("listening on 127.0.0.1:"), "{said}");
    assert!(!said.contains(kept.trim()), "{said}");
    let printed =
        String::from_utf8(cli(&["urls", "--data", data.to_str().unwrap()]).stdout).unwrap();
    assert!(printed.contains(kept.trim()), "{printed}");
}

/// Regression: CSV export rewrote numbers (`1.5e3` as `1.5e+3`); a cell now holds the
/// number's text as received.
#[test]
fn csv_cells_keep_numbers_as_received() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    let body = r#"{"event":"cdr","callid":"n1","billsec":1.5e3,"huge":1e400,"neg":-0.0,"int":007,"s":"a\"b","arr":[1, 2],"nil":null}"#;
    // `007` is not JSON: that body is quarantined; the rest are numbers JSON allows.
    assert_eq!(s.post("cdr", JSON, body).body, "quarantined\n");
    let body = body.replace("007", "7");
    assert_eq!(s.post("cdr", JSON, &body).body, "stored\n");
    let csv = read_ok(&data, &["export", "--format", "csv", "--kind", "cdr"]);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let row = reader.records().next().unwrap().unwrap();
    let cell = |name: &str| {
        let i = header.iter().position(|h| h == name).unwrap();
        row.get(i).unwrap().to_string()
    };
    assert_eq!(cell("billsec"), "1.5e3", "{csv}");
    assert_eq!(cell("huge"), "1e400", "{csv}");
    assert_eq!(cell("neg"), "-0.0", "{csv}");
    assert_eq!(cell("int"), "7", "{csv}");
    assert_eq!(cell("nil"), "", "{csv}");
    assert_eq!(cell("s"), "a\"b", "{csv}");
    assert_eq!(cell("arr"), "[1,2]", "{csv}");
}
