//! The `didgate` binary: parses the command line and calls one `run` per subcommand. All logic
//! lives in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use didgate::cli;
use didgate::config::{Config, Flags};

mod args;
use args::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mode bits no file didgate creates may have: CDRs and SMS are personal data, so every
/// file is at most 0640 (the `didgate` group may read) and every directory at most 0750,
/// whatever the umask it was started with (a backup into a 0755 directory, a reader's lock
/// file).
const UMASK: libc::mode_t = 0o027;

fn main() -> ExitCode {
    // SAFETY: umask only sets the process's file-creation mask; no thread runs yet.
    unsafe {
        libc::umask(UMASK);
    }
    let cli = Cli::parse();
    // A fault inside LMDB on a damaged store becomes one line and the command's error status.
    didgate::store::contain_faults(match cli.command {
        Command::Serve(_) => i32::from(didgate::serve::EXIT_STORE_DAMAGED),
        Command::Check(_) => 1,
        _ => 2,
    });
    match cli.command {
        Command::Serve(a) => {
            let flags = Flags {
                listen: a.listen,
                token: a.token,
                admin_listen: a.admin_listen,
                ..a.data.flags()
            };
            let result = Config::load(&flags)
                .map_err(|e| (e.to_string(), 1))
                .and_then(|cfg| {
                    didgate::serve::run(cfg, flags).map_err(|e| (e.to_string(), e.exit_code()))
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err((e, code)) => {
                    eprintln!("didgate: error: {e}");
                    ExitCode::from(code)
                }
            }
        }
        Command::CheckConfig(a) => {
            let flags = Flags {
                config: Some(a.file.clone()),
                ..Flags::default()
            };
            match Config::load(&flags) {
                Ok(_) => {
                    println!("{}: ok", a.file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("didgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Urls(a) => {
            let flags = a.data.flags();
            let result = Config::load(&flags)
                .map_err(|e| cli::Error::Usage(e.to_string()))
                .and_then(|cfg| {
                    let mut out = std::io::stdout().lock();
                    cli::urls::run(&cfg, a.host.as_deref(), &mut out)?;
                    out.flush().map_err(cli::Error::from)
                });
            finish(result)
        }
        Command::Tail(a) => read(&a.data, |store, out| {
            let args = cli::tail::Args {
                lines: a.lines,
                follow: a.follow,
                kind: a.kind.clone(),
                raw: a.raw,
            };
            cli::tail::run(store, &args, out)
        }),
        Command::Export(a) => read(&a.data, |store, out| {
            let args = cli::export::Args {
                since: a.since.clone(),
                until: a.until.clone(),
                kind: a.kind.clone(),
                format: match a.format {
                    FormatArg::Jsonl => cli::export::Format::Jsonl,
                    FormatArg::Csv => cli::export::Format::Csv,
                },
                raw: a.raw,
            };
            cli::export::run(store, &args, out)
        }),
        Command::Calls(a) => read(&a.data, |store, out| {
            let args = cli::calls::Args {
                since: a.since.clone(),
                until: a.until.clone(),
                direction: a.direction.map(|d| match d {
                    DirectionArg::In => "in".to_string(),
                    DirectionArg::Out => "out".to_string(),
                }),
                disposition: a.disposition.clone(),
                number: a.number.clone(),
                min_billsec: a.min_billsec,
                format: a.format.into(),
                tz: a.tz.clone(),
                config_tz: configured_timezone(&a.data)?,
            };
            cli::calls::run(store, &args, out)
        }),
        Command::Report(a) => read(&a.data, |store, out| {
            let args = cli::report::Args {
                since: a.since.clone(),
                until: a.until.clone(),
                by: a.by.clone(),
                prefix_len: a.prefix_len,
                format: a.format.into(),
                tz: a.tz.clone(),
                config_tz: configured_timezone(&a.data)?,
            };
            cli::report::run(store, &args, out)
        }),
        Command::Alerts(a) => in_data_dir(&a.data, |dir, out| {
            let cfg = match &a.data.config {
                Some(_) => Some(
                    Config::load(&a.data.flags()).map_err(|e| cli::Error::Usage(e.to_string()))?,
                ),
                None => None,
            };
            cli::alerts::run(
                dir,
                cfg.as_ref().map(|c| c.alerts.as_slice()),
                cfg.as_ref().and_then(|c| c.timezone.as_deref()),
                a.json,
                out,
            )
        }),
        Command::Get(a) => read(&a.data, |store, out| {
            cli::get::run(store, &a.callid, a.raw, out)
        }),
        Command::Stats(a) => read(&a.data, |store, out| cli::stats::run(store, a.json, out)),
        Command::Check(a) => read(&a.data, |store, out| cli::check::run(store, a.json, out)),
        Command::Prune(a) => in_data_dir(&a.data, |dir, out| cli::prune::run(dir, &a.before, out)),
        Command::Backup(a) => in_data_dir(&a.data, |dir, out| {
            // The archive's directory may be configured elsewhere than DATA/recordings.
            let archive = match &a.data.config {
                Some(_) => {
                    Config::load(&a.data.flags())
                        .map_err(|e| cli::Error::Usage(e.to_string()))?
                        .recordings
                        .dir
                }
                None => dir.join("recordings"),
            };
            cli::backup::run(&cli::open(dir)?, dir, &archive, &a.path, out)
        }),
        Command::Recordings(a) => match &a.action {
            Some(RecordingsAction::Retry { failed, seqs }) => in_data_dir(&a.data, |dir, out| {
                cli::recordings::retry(dir, *failed, seqs, out)
            }),
            None => read(&a.data, |store, out| {
                let args = cli::recordings::ListArgs {
                    state: a.state.clone(),
                    since: a.since.clone(),
                    json: a.json,
                };
                cli::recordings::list(store, &args, out)
            }),
        },
        Command::Recording(a) => read(&a.data, |store, out| {
            cli::recordings::fetch_file(store, &a.callid, a.output.as_ref(), out)
        }),
        Command::Cursor(a) => match &a.action {
            CursorAction::List { json } => {
                read(&a.data, |store, out| cli::cursor::list(store, *json, out))
            }
            CursorAction::Show { name } => {
                read(&a.data, |store, out| cli::cursor::show(store, name, out))
            }
            CursorAction::Set { name, seq } => {
                in_data_dir(&a.data, |dir, out| cli::cursor::set(dir, name, *seq, out))
            }
            CursorAction::Delete { name } => {
                in_data_dir(&a.data, |dir, out| cli::cursor::delete(dir, name, out))
            }
        },
        Command::Consume(a) => in_data_dir(&a.data, |dir, out| {
            let args = cli::consume::Args {
                name: a.name.clone(),
                exec: a.exec.clone(),
                kind: a.kind.clone(),
                batch: a.batch,
                follow: a.follow,
                commit: a.commit,
            };
            cli::consume::run(dir, &args, out)
        }),
        Command::Deliveries(a) => match &a.action {
            None => {
                let configured = match &a.data.config {
                    Some(_) => match Config::load(&a.data.flags()) {
                        Ok(c) => Some(c.forward),
                        Err(e) => return finish(Err(cli::Error::Usage(e.to_string()))),
                    },
                    None => None,
                };
                read(&a.data, |store, out| {
                    cli::deliveries::list(
                        store,
                        configured.as_deref(),
                        a.dest.as_deref(),
                        a.json,
                        out,
                    )
                })
            }
            Some(DeliveriesAction::Dead(d)) => read(&d.data, |store, out| {
                cli::deliveries::dead(store, &d.dest, out)
            }),
            Some(DeliveriesAction::Retrying(d)) => read(&d.data, |store, out| {
                cli::deliveries::retrying(store, &d.dest, out)
            }),
            Some(DeliveriesAction::Retry { dest, dead, seqs }) => {
                in_data_dir(&dest.data, |dir, out| {
                    cli::deliveries::retry(dir, &dest.dest, *dead, seqs, out)
                })
            }
            Some(DeliveriesAction::Pause(d)) => pause(d, true),
            Some(DeliveriesAction::Resume(d)) => pause(d, false),
        },
        Command::Replay(a) => in_data_dir(&a.dest.data, |dir, out| {
            cli::deliveries::replay(
                dir,
                &a.dest.dest,
                &a.since,
                a.until.as_deref(),
                a.kind.as_deref(),
                out,
            )
        }),
        Command::Pause(d) => pause(&d, true),
        Command::Resume(d) => pause(&d, false),
        Command::Quarantine(a) => read(&a.data, |store, out| match &a.action {
            None | Some(QuarantineAction::List) => cli::quarantine::list(store, out),
            Some(QuarantineAction::Show { seq, raw }) => {
                cli::quarantine::show(store, *seq, *raw, out)
            }
        }),
    }
}

/// `pause`/`resume` of a forwarding destination.
fn pause(d: &DestArgs, pause: bool) -> ExitCode {
    in_data_dir(&d.data, |dir, out| {
        cli::deliveries::pause(dir, &d.dest, pause, out)
    })
}

/// Opens the store read-only and runs one reader; errors are one line on stderr.
/// The config file's `timezone`, when a config file is given.
fn configured_timezone(data: &DataArgs) -> cli::Result<Option<String>> {
    match &data.config {
        Some(_) => Ok(Config::load(&data.flags())
            .map_err(|e| cli::Error::Usage(e.to_string()))?
            .timezone),
        None => Ok(None),
    }
}

fn read(
    data: &DataArgs,
    f: impl FnOnce(&didgate::store::Store, &mut std::io::StdoutLock<'static>) -> cli::Result<()>,
) -> ExitCode {
    in_data_dir(data, |dir, out| f(&cli::open(dir)?, out))
}

/// Resolves the data directory and runs one tool with stdout; errors are one line on stderr.
fn in_data_dir(
    data: &DataArgs,
    f: impl FnOnce(&std::path::Path, &mut std::io::StdoutLock<'static>) -> cli::Result<()>,
) -> ExitCode {
    let result = data
        .dir()
        .map_err(|e| cli::Error::Usage(e.to_string()))
        .and_then(|dir| {
            let mut out = std::io::stdout().lock();
            f(&dir, &mut out).and_then(|()| out.flush().map_err(cli::Error::from))
        });
    finish(result)
}

/// The exit status of a reader or tool: errors are one line on stderr.
fn finish(result: cli::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            if code != 0 {
                eprintln!("didgate: {e}");
            }
            ExitCode::from(code as u8)
        }
    }
}
