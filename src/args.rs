//! The command line: clap's structures for every subcommand and its arguments, and where the
//! data directory comes from. `main.rs` dispatches them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use didgate::cli;
use didgate::config::{self, Config, Flags};

/// didgate: a webhook gateway for didlogic's CDR, recording and SMS webhooks.
///
/// `serve` answers 200 only after each event is committed to disk (LMDB, fsync on commit);
/// the other subcommands read what arrived, while `serve` runs.
#[derive(Parser)]
#[command(version, about, long_about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct CursorArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub action: CursorAction,
}

#[derive(Subcommand)]
pub enum CursorAction {
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
pub struct ConsumeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The consumer's name (its cursor): 1 to 64 of A-Z a-z 0-9 _ . -
    pub name: String,
    /// Run this command (`sh -c`) per batch, the batch on its stdin.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Only events of this kind (the cursor still moves past the others).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Events per batch.
    #[arg(long, value_name = "N", default_value_t = cli::consume::DEFAULT_BATCH)]
    pub batch: usize,
    /// Keep waiting for new events after catching up (stop with Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Without --exec: move the cursor once a batch is printed (at most once).
    #[arg(long)]
    pub commit: bool,
}

#[derive(Args)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Only this destination.
    #[arg(long, value_name = "NAME")]
    pub dest: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<DeliveriesAction>,
}

#[derive(Subcommand)]
pub enum DeliveriesAction {
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
pub struct DestArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The destination's name (`name` of its [[forward]]).
    #[arg(long, value_name = "NAME")]
    pub dest: String,
}

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    /// First stamp included (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    pub since: String,
    /// First stamp excluded (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
}

#[derive(Args)]
pub struct RecordingsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Only recordings in this state.
    #[arg(long, value_name = "S")]
    pub state: Option<String>,
    /// Only recordings stored at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<RecordingsAction>,
}

#[derive(Subcommand)]
pub enum RecordingsAction {
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
pub struct RecordingArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The call's `callid`.
    pub callid: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct UrlsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The public name or address didlogic reaches this machine by [default: the listen
    /// address, or HOST when it listens on all addresses].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Delete what was stored before this time (RFC 3339 or YYYY-MM-DD, 00:00 UTC).
    #[arg(long, value_name = "T")]
    pub before: String,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Directory to create for the copy (must not exist, or be empty).
    pub path: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Secret path segment of the webhook URLs (at least 16 URL-safe characters). Without it,
    /// one is generated on first start and kept in the data directory.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Address of the metrics and health listener, or "off" [default: 127.0.0.1:9180].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
}

/// Where the store is: shared by every subcommand.
#[derive(Args)]
pub struct DataArgs {
    /// Data directory [default: $STATE_DIRECTORY when set by systemd, else ./didgate-data].
    #[arg(long, value_name = "DIR", global = true)]
    pub data: Option<PathBuf>,
    /// Configuration file (TOML); flags override it. See docs/configuration.md.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// How many of the last events to print.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    pub lines: usize,
    /// Keep following: print new events as they are committed (stop with Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Only events of this kind (cdr, recording, sms, or any other stored kind).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Print each stored body exactly as received, each followed by a newline, instead of
    /// JSON lines. A body that holds newlines (pretty-printed JSON) spans several lines: raw
    /// means the bytes received; the JSON lines are one event per line.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// First stamp included (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// First stamp excluded (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only events of this kind; required for CSV.
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// jsonl: one JSON object per line; csv: a header row (the kind's documented fields
    /// first, then any others seen) and one row per event.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: FormatArg,
    /// With jsonl: print each stored body exactly as received (each followed by a newline; a
    /// body holding newlines spans several lines) instead of JSON lines.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TableFormatArg {
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
pub enum DirectionArg {
    In,
    Out,
}

#[derive(Args)]
pub struct CallsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// First call time included: RFC 3339, a date or date and time in the zone, today,
    /// yesterday, or a duration ago (24h, 7d) [default: 24h].
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// First call time excluded (same forms) [default: none].
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only inbound or outbound calls.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Only calls with this disposition (ANSWERED, "NO ANSWER", BUSY, FAILED, ...; any case).
    #[arg(long, value_name = "D")]
    pub disposition: Option<String>,
    /// Only calls from or to this number, or a prefix of it (+, spaces and dashes ignored).
    #[arg(long, value_name = "N")]
    pub number: Option<String>,
    /// Only calls billed at least S seconds.
    #[arg(long, value_name = "S")]
    pub min_billsec: Option<u32>,
    /// table: aligned for people; json: one object per line; csv: a header and one row per
    /// call.
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormatArg,
    /// Time zone to show times in (IANA name: Europe/London, UTC).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// First call time included (as for `calls`) [default: 30 days ago, at midnight].
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// First call time excluded [default: none].
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Group by day, hour, week, month, direction, disposition, dst-prefix, src or dst;
    /// repeat or separate with commas to combine [default: day].
    #[arg(long, value_name = "G")]
    pub by: Vec<String>,
    /// Digits of the destination that dst-prefix groups by [default: 3].
    #[arg(long, value_name = "N")]
    pub prefix_len: Option<usize>,
    /// table: aligned for people; json: one object per line; csv: a header and one row per
    /// group.
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormatArg,
    /// Time zone of the days, hours, weeks and months (IANA name: Europe/London, UTC).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
}

#[derive(Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// One JSON object per rule instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The call's `callid`, as in its CDR.
    pub callid: String,
    /// Print each stored body exactly as received (each followed by a newline; a body
    /// holding newlines spans several lines) instead of JSON lines.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct QuarantineArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub action: Option<QuarantineAction>,
}

#[derive(Subcommand)]
pub enum QuarantineAction {
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
pub struct CheckConfigArgs {
    /// The file to check.
    pub file: PathBuf,
}

impl DataArgs {
    /// The data directory: --data, else the config file's `data_dir`, else the default.
    pub fn dir(&self) -> Result<PathBuf, config::Error> {
        if let Some(d) = &self.data {
            return Ok(d.clone());
        }
        if self.config.is_some() {
            return Ok(Config::load(&self.flags())?.data_dir);
        }
        Ok(config::default_data_dir())
    }

    pub fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            data_dir: self.data.clone(),
            ..Flags::default()
        }
    }
}
