//! Damaged and unreadable stores: every command answers with one line and an exit status,
//! never a signal; files didgate creates are private whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Output, Stdio};

use crate::util::*;

/// A store with a few hundred events, backed up (compacted: its file ends at its last page).
fn backed_up_store(tmp: &Path) -> std::path::PathBuf {
    let data = tmp.join("data");
    let s = Server::start(&data, &[]);
    for i in 0..300 {
        let body = format!(r#"{{"callid":"c{i}","pad":"{}"}}"#, "x".repeat(300));
        assert_eq!(s.post("cdr", JSON, &body).status, 200);
    }
    let bk = tmp.join("bk");
    read_ok(&data, &["backup", bk.to_str().unwrap()]);
    bk
}

fn run(args: &[&str], dir: &Path) -> Output {
    let mut full = args.to_vec();
    full.extend(["--data", dir.to_str().unwrap()]);
    cli(&full)
}

/// Exits with `code`, not a signal, with exactly one line on stderr containing `needle`.
fn assert_one_line(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {err}");
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
}

fn serve_once(dir: &Path) -> Output {
    serve_command(dir).output().unwrap()
}

/// Regression: a data.mdb cut short killed every command with SIGBUS (serve silently, so
/// systemd restarted it forever).
#[test]
fn a_cut_short_store_is_one_line_naming_the_file_for_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let bk = backed_up_store(tmp.path());
    let bytes = std::fs::read(bk.join("data.mdb")).unwrap();
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("data.mdb"), &bytes[..57_344]).unwrap();
    for cmd in [
        &["check"][..],
        &["tail"],
        &["stats"],
        &["export"],
        &["get", "c1"],
    ] {
        assert_one_line(&run(cmd, &cut), 2, "data.mdb is damaged: 57344 bytes");
    }
    let out = serve_once(&cut);
    assert_one_line(&out, 3, "the file was cut short");
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore the last backup"));
    assert_eq!(
        std::fs::read(cut.join("data.mdb")).unwrap().len(),
        57_344,
        "a damaged store is never touched"
    );
}

/// Regression: flipping the first bytes of every page after the metas made LMDB fault while
/// opening its databases, taking the shell's command down with a bus error.
#[test]
fn interior_damage_is_reported_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let bk = backed_up_store(tmp.path());
    let mut bytes = std::fs::read(bk.join("data.mdb")).unwrap();
    for page in bytes.chunks_mut(4096).skip(2) {
        for b in &mut page[..16] {
            *b ^= 0xff;
        }
    }
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("data.mdb"), &bytes).unwrap();
    let check = run(&["check"], &bad);
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.signal(), None, "{err}");
    assert_ne!(check.status.code(), Some(0), "{err}");
    assert!(err.contains("damaged") || err.contains("LMDB"), "{err}");
    let stats = run(&["stats"], &bad);
    assert_eq!(stats.status.signal(), None);
    assert_eq!(stats.status.code(), Some(2));
    let serve = serve_once(&bad);
    assert_eq!(serve.status.signal(), None);
    assert_eq!(serve.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("data.mdb"));
}

/// Regression (power cut during the first start): a data.mdb holding only part of LMDB's first
/// write made serve refuse forever. It holds no event: it is moved aside and serve starts.
#[test]
fn a_store_cut_during_creation_is_set_aside_and_serve_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let bk = backed_up_store(tmp.path());
    let bytes = std::fs::read(bk.join("data.mdb")).unwrap();
    let unborn = tmp.path().join("unborn");
    std::fs::create_dir(&unborn).unwrap();
    std::fs::write(unborn.join("data.mdb"), &bytes[..1024]).unwrap();
    let s = Server::start(&unborn, &[]);
    assert_eq!(s.post("cdr", JSON, &cdr("after")).body, "stored\n");
    let aside: Vec<_> = std::fs::read_dir(&unborn)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data.mdb.unborn-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old file is kept aside");
    assert_eq!(
        std::fs::read(unborn.join(&aside[0])).unwrap(),
        bytes[..1024].to_vec()
    );
    drop(s);
    assert_eq!(export(&unborn).len(), 1);
}

/// Regression: a backup into an existing 0755 directory wrote data.mdb 0644, and a reader then
/// created lock.mdb 0644: CDRs and SMS are personal data.
#[test]
fn files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    assert_eq!(s.post("sms", FORM, SEED_SMS).status, 200);
    let bk = tmp.path().join("bk");
    std::fs::create_dir(&bk).unwrap();
    std::fs::set_permissions(&bk, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_umask = |args: &[&str]| {
        let mut cmd = didgate();
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: umask only sets the child's file-creation mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let out = with_umask(&[
        "backup",
        "--data",
        data.to_str().unwrap(),
        bk.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_umask(&["tail", "--data", bk.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, most) in [("data.mdb", 0o640), ("lock.mdb", 0o640), ("token", 0o600)] {
        let mode = std::fs::metadata(bk.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & !most, 0, "{file} is {mode:o}");
    }
}

/// Regression: a user outside the didgate group was told there was no data at all.
#[test]
fn a_reader_without_permission_is_told_so() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the reader as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    drop(Server::start(&data, &[]));
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = didgate()
        .args(["tail", "--data", data.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line(&out, 2, &format!("permission denied: {}", data.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sudo adduser $USER didgate"), "{err}");
    assert!(!err.contains("no didgate data"), "{err}");
    // The directory and data file readable, the lock file not writable: that file is named.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("data.mdb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = didgate()
        .args(["tail", "--data", data.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line(
        &out,
        2,
        &format!("permission denied: {}", data.join("lock.mdb").display()),
    );
}
