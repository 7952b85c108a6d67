//! The `didgate` binary: parses the command line and calls one `run` per subcommand. All logic
//! lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use didgate::cli;
use didgate::config::{self, Config, Flags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// didgate: a webhook gateway for didlogic's CDR, recording and SMS webhooks.
///
/// `serve` answers 200 only after each event is committed to disk (LMDB, fsync on commit);
/// the other subcommands read what arrived, while `serve` runs.
#[derive(Parser)]
#[command(version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: receive webhooks, commit each to disk, then answer 200.
    ///
    /// Prints the three webhook URLs to give didlogic once it listens. Stops on SIGTERM or
    /// SIGINT after answering what is in flight. Exit status 0 after a clean stop, 1 when it
    /// cannot start (the message says why), 70 when the store became unusable.
    Serve(ServeArgs),
    /// Print the last events, and with -f follow new ones as they are committed.
    Tail(TailArgs),
    /// Export events in a time range as JSON lines or CSV.
    ///
    /// --since is inclusive and --until exclusive; T is RFC 3339 (2026-05-12T05:17:58Z) or a
    /// date (2026-05-12 = 00:00 UTC), so `--since 2026-05-12 --until 2026-05-13` is one day.
    Export(ExportArgs),
    /// One row per call by its own time (calldate), joined with its recordings.
    ///
    /// Default: the last 24 hours, oldest first. Times are shown in --tz, else the config's
    /// `timezone`, else the system's zone. docs/cli.md describes every column.
    Calls(CallsArgs),
    /// Calls, answer rate (ASR), mean duration (ACD), billed minutes, recordings and SMS per
    /// day, hour, week, month, direction, disposition, destination prefix or number.
    ///
    /// Default: the last 30 days by day, in --tz, else the config's `timezone`, else the
    /// system's zone. docs/cli.md describes every column.
    Report(ReportArgs),
    /// The `[[alert]]` rules: firing or not, since when, why, and the calls behind them.
    ///
    /// `serve` evaluates the rules every `alert_interval` and writes their state into the data
    /// directory; pass --config to list configured rules it has not evaluated yet.
    Alerts(AlertsArgs),
    /// Print every event of one call (its CDR and recordings), oldest first.
    ///
    /// Exit status 1 when no event has that callid.
    Get(GetArgs),
    /// Print counts per kind and per day, duplicates, quarantined, first and last event,
    /// database size.
    Stats(StatsArgs),
    /// Bodies that were kept but could not be decoded, with the reason.
    Quarantine(QuarantineArgs),
    /// Delete events and quarantined bodies stored before a time (retention by hand).
    ///
    /// Runs beside a running `serve`. The configured `retention_days` does the same
    /// automatically.
    Prune(PruneArgs),
    /// Write a consistent, compacted copy of the store (and the token) into a new directory,
    /// while `serve` runs. See docs/operations.md for restoring it.
    Backup(BackupArgs),
    /// Verify the store: records decode, stamps in order, indexes and counters agree.
    ///
    /// Runs beside a running `serve`. Exit status 1 when something is inconsistent.
    Check(StatsArgs),
    /// Validate a configuration file without starting.
    CheckConfig(CheckConfigArgs),
    /// Print the three webhook URLs to give didlogic (they hold the secret token).
    ///
    /// `serve` prints them only to a terminal, never to a log. The token is the configured
    /// one, else the one kept in the data directory; the port is the configured `listen`.
    Urls(UrlsArgs),
    /// List the recordings' archive state (pending, fetched, failed, expired, gone,
    /// suspicious), oldest first; `recordings retry` puts them back on the work list.
    Recordings(RecordingsArgs),
    /// Write a call's archived recording (mp3) to a file, or to stdout when piped.
    ///
    /// Exit status 1 when the call has no archived recording (the message says its state).
    Recording(RecordingArgs),
    /// Pull consumers' durable cursors (as `consume` keeps them): list, show, set, delete.
    ///
    /// A cursor is the last event consumed; the next batch starts after it.
    Cursor(CursorArgs),
    /// Feed the events after a named cursor to a command, batch by batch, at least once.
    ///
    /// With --exec, each batch goes as JSON lines (the export format) to the command's stdin
    /// (`sh -c`); the cursor moves only when it exits 0, else the same batch is sent again
    /// after a backoff. Without --exec the batches are printed, and the cursor moves only with
    /// --commit (at most once: a reader that dies after the print loses the batch). A new
    /// cursor starts at the oldest stored event.
    Consume(ConsumeArgs),
    /// Forwarding destinations: lag (events, seconds), in flight, retrying, dead letters,
    /// last error; their dead letters, retries, pause and resume.
    Deliveries(DeliveriesArgs),
    /// Send the stored events of a time range to a destination again (a new destination,
    /// or the receiver's database was restored). Runs beside a running `serve`.
    Replay(ReplayArgs),
    /// Pause a forwarding destination (as `deliveries pause`).
    Pause(DestArgs),
    /// Resume a paused forwarding destination (as `deliveries resume`).
    Resume(DestArgs),
}

#[derive(Args)]
struct CursorArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(subcommand)]
    action: CursorAction,
}

#[derive(Subcommand)]
enum CursorAction {
    /// Every cursor: position, events behind, last move.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One cursor as a JSON object (exit 1 when there is none).
    Show {
        /// The consumer's name.
        name: String,
    },
    /// Move a cursor: the next batch starts after event SEQ (0: from the start).
    Set {
        /// The consumer's name.
        name: String,
        /// The last event counted as consumed.
        seq: u64,
    },
    /// Delete a cursor (exit 1 when there is none).
    Delete {
        /// The consumer's name.
        name: String,
    },
}

#[derive(Args)]
struct ConsumeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The consumer's name (its cursor): 1 to 64 of A-Z a-z 0-9 _ . -
    name: String,
    /// Run this command (`sh -c`) per batch, the batch on its stdin.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Only events of this kind (the cursor still moves past the others).
    #[arg(long, value_name = "K")]
    kind: Option<String>,
    /// Events per batch.
    #[arg(long, value_name = "N", default_value_t = cli::consume::DEFAULT_BATCH)]
    batch: usize,
    /// Keep waiting for new events after catching up (stop with Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// Without --exec: move the cursor once a batch is printed (at most once).
    #[arg(long)]
    commit: bool,
}

#[derive(Args)]
struct DeliveriesArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Only this destination.
    #[arg(long, value_name = "NAME")]
    dest: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<DeliveriesAction>,
}

#[derive(Subcommand)]
enum DeliveriesAction {
    /// The destination's dead letters, one JSON line each.
    Dead(DestArgs),
    /// The destination's events waiting for another try, one JSON line each.
    Retrying(DestArgs),
    /// Send again: dead letters (--dead, or the SEQs given), named events, or with neither
    /// every waiting retry now. Runs beside a running `serve`.
    Retry {
        #[command(flatten)]
        dest: DestArgs,
        /// Every dead letter of the destination.
        #[arg(long)]
        dead: bool,
        /// These events (sequence numbers).
        seqs: Vec<u64>,
    },
    /// Stop sending to the destination (events keep arriving and wait).
    Pause(DestArgs),
    /// Start sending again.
    Resume(DestArgs),
}

#[derive(Args)]
struct DestArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The destination's name (`name` of its [[forward]]).
    #[arg(long, value_name = "NAME")]
    dest: String,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    dest: DestArgs,
    /// First stamp included (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    since: String,
    /// First stamp excluded (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_name = "K")]
    kind: Option<String>,
}

#[derive(Args)]
struct RecordingsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Only recordings in this state.
    #[arg(long, value_name = "S")]
    state: Option<String>,
    /// Only recordings stored at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<RecordingsAction>,
}

#[derive(Subcommand)]
enum RecordingsAction {
    /// Put recordings back on the work list, due now (after a network outage, within the
    /// URLs' life). Runs beside a running `serve`.
    Retry {
        /// Every recording in state `failed`.
        #[arg(long)]
        failed: bool,
        /// These recordings (sequence numbers, as `recordings` lists them).
        seqs: Vec<u64>,
    },
}

#[derive(Args)]
struct RecordingArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The call's `callid`.
    callid: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct UrlsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The public name or address didlogic reaches this machine by [default: the listen
    /// address, or HOST when it listens on all addresses].
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Delete what was stored before this time (RFC 3339 or YYYY-MM-DD, 00:00 UTC).
    #[arg(long, value_name = "T")]
    before: String,
}

#[derive(Args)]
struct BackupArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Directory to create for the copy (must not exist, or be empty).
    path: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Secret path segment of the webhook URLs (at least 16 URL-safe characters). Without it,
    /// one is generated on first start and kept in the data directory.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Address of the metrics and health listener, or "off" [default: 127.0.0.1:9180].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

/// Where the store is: shared by every subcommand.
#[derive(Args)]
struct DataArgs {
    /// Data directory [default: $STATE_DIRECTORY when set by systemd, else ./didgate-data].
    #[arg(long, value_name = "DIR", global = true)]
    data: Option<PathBuf>,
    /// Configuration file (TOML); flags override it. See docs/configuration.md.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TailArgs {
    #[command(flatten)]
    data: DataArgs,
    /// How many of the last events to print.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    lines: usize,
    /// Keep following: print new events as they are committed (stop with Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// Only events of this kind (cdr, recording, sms, or any other stored kind).
    #[arg(long, value_name = "K")]
    kind: Option<String>,
    /// Print each stored body exactly as received, each followed by a newline, instead of
    /// JSON lines. A body that holds newlines (pretty-printed JSON) spans several lines: raw
    /// means the bytes received; the JSON lines are one event per line.
    #[arg(long)]
    raw: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// First stamp included (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// First stamp excluded (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Only events of this kind; required for CSV.
    #[arg(long, value_name = "K")]
    kind: Option<String>,
    /// jsonl: one JSON object per line; csv: a header row (the kind's documented fields
    /// first, then any others seen) and one row per event.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: FormatArg,
    /// With jsonl: print each stored body exactly as received (each followed by a newline; a
    /// body holding newlines spans several lines) instead of JSON lines.
    #[arg(long)]
    raw: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum TableFormatArg {
    Table,
    Json,
    Csv,
}

impl From<TableFormatArg> for cli::calls::Format {
    fn from(f: TableFormatArg) -> Self {
        match f {
            TableFormatArg::Table => cli::calls::Format::Table,
            TableFormatArg::Json => cli::calls::Format::Json,
            TableFormatArg::Csv => cli::calls::Format::Csv,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    In,
    Out,
}

#[derive(Args)]
struct CallsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// First call time included: RFC 3339, a date or date and time in the zone, today,
    /// yesterday, or a duration ago (24h, 7d) [default: 24h].
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// First call time excluded (same forms) [default: none].
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Only inbound or outbound calls.
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// Only calls with this disposition (ANSWERED, "NO ANSWER", BUSY, FAILED, ...; any case).
    #[arg(long, value_name = "D")]
    disposition: Option<String>,
    /// Only calls from or to this number, or a prefix of it (+, spaces and dashes ignored).
    #[arg(long, value_name = "N")]
    number: Option<String>,
    /// Only calls billed at least S seconds.
    #[arg(long, value_name = "S")]
    min_billsec: Option<u32>,
    /// table: aligned for people; json: one object per line; csv: a header and one row per
    /// call.
    #[arg(long, value_enum, default_value = "table")]
    format: TableFormatArg,
    /// Time zone to show times in (IANA name: Europe/London, UTC).
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// First call time included (as for `calls`) [default: 30 days ago, at midnight].
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// First call time excluded [default: none].
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Group by day, hour, week, month, direction, disposition, dst-prefix, src or dst;
    /// repeat or separate with commas to combine [default: day].
    #[arg(long, value_name = "G")]
    by: Vec<String>,
    /// Digits of the destination that dst-prefix groups by [default: 3].
    #[arg(long, value_name = "N")]
    prefix_len: Option<usize>,
    /// table: aligned for people; json: one object per line; csv: a header and one row per
    /// group.
    #[arg(long, value_enum, default_value = "table")]
    format: TableFormatArg,
    /// Time zone of the days, hours, weeks and months (IANA name: Europe/London, UTC).
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
}

#[derive(Args)]
struct AlertsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// One JSON object per rule instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GetArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The call's `callid`, as in its CDR.
    callid: String,
    /// Print each stored body exactly as received (each followed by a newline; a body
    /// holding newlines spans several lines) instead of JSON lines.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct QuarantineArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(subcommand)]
    action: Option<QuarantineAction>,
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// One JSON line per quarantined body, with the reason and a preview (the default).
    List,
    /// One quarantined body in full.
    Show {
        /// Its number, as `list` shows it.
        seq: u64,
        /// Print the exact bytes received instead of a JSON line.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Args)]
struct CheckConfigArgs {
    /// The file to check.
    file: PathBuf,
}

impl DataArgs {
    /// The data directory: --data, else the config file's `data_dir`, else the default.
    fn dir(&self) -> Result<PathBuf, config::Error> {
        if let Some(d) = &self.data {
            return Ok(d.clone());
        }
        if self.config.is_some() {
            return Ok(Config::load(&self.flags())?.data_dir);
        }
        Ok(config::default_data_dir())
    }

    fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            data_dir: self.data.clone(),
            ..Flags::default()
        }
    }
}

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
