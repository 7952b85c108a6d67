//! Recordings: every recording webhook's mp3 downloaded before its pre-signed URL expires,
//! kept under the data directory, and its state kept in the store.
//!
//! In the order of one recording: the writer stores the webhook and, in the same commit, its
//! [`record::ArchiveRecord`] as `pending` on the store's work list (`store/archive.rs`); the
//! writer hands due recordings to the archiver threads over a bounded channel (a backlog of
//! any size stays in LMDB); an archiver thread checks the URL ([`policy`], [`url`]), downloads
//! it ([`fetch`]), puts the file in place atomically, and sends the new state back to the
//! writer, which commits it with its next batch ([`worker`]). Retention deletes a recording's
//! file with its event.
//!
//! Nothing here runs on ingest's threads or holds the store: the writer does the store's part
//! in the transactions it commits anyway.

pub mod fetch;
pub mod policy;
pub mod record;
pub mod url;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::ops::metrics::Metrics;
use crate::store::archive::DueRecording;
use policy::Policy;
use record::ArchiveRecord;

/// Archiver threads when `workers` is not set: downloads wait on the network, not the CPU.
pub const DEFAULT_WORKERS: usize = 2;
/// Largest recording fetched (an hour of 64 kbit/s mp3 is 29 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;
/// Longest one download may take, connection included.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// First wait after a failed download; doubled per attempt up to [`RETRY_MAX`].
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(30);
/// Longest wait between two tries.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Free disk kept beyond `min_free_disk_bytes` before archiving pauses, so recordings never
/// take the room events need.
pub const DEFAULT_DISK_MARGIN_BYTES: u64 = 512 << 20;
/// Tries of a 403 that does not say "expired", and of a 404, before giving up.
pub const CLIENT_ERROR_TRIES: u32 = 3;
/// Tries of a body whose single-part ETag does not match before keeping it as suspicious.
pub const ETAG_TRIES: u32 = 3;
/// Recordings handed to the archiver threads ahead of them, per thread.
pub const WINDOW_PER_WORKER: usize = 2;
/// Folder of downloads in progress, under the archive directory; emptied at start.
pub const PARTIAL_DIR: &str = ".partial";

/// `[recordings]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Archive recordings at all.
    pub enabled: bool,
    /// Where the files go (default `DATA/recordings`).
    pub dir: PathBuf,
    /// Archiver threads.
    pub workers: usize,
    /// Largest file fetched.
    pub max_file_bytes: u64,
    /// Archiving pauses while the archive holds this much; `None`: no quota.
    pub max_archive_bytes: Option<u64>,
    /// Free disk kept beyond `min_free_disk_bytes`.
    pub disk_margin_bytes: u64,
    /// Longest one download may take.
    pub download_timeout: Duration,
    /// First wait after a failure.
    pub retry_initial: Duration,
    /// What may be fetched.
    pub policy: Policy,
}

impl Settings {
    /// The defaults, with the archive under `data_dir`.
    pub fn defaults(data_dir: &std::path::Path) -> Settings {
        Settings {
            enabled: true,
            dir: data_dir.join("recordings"),
            workers: DEFAULT_WORKERS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_archive_bytes: None,
            disk_margin_bytes: DEFAULT_DISK_MARGIN_BYTES,
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            retry_initial: DEFAULT_RETRY_INITIAL,
            policy: Policy {
                allow_http: false,
                private: policy::PrivateAddresses::Deny,
                allowed_hosts: Vec::new(),
            },
        }
    }
}

/// A new state for a recording, from an archiver thread to the writer; `done` hears whether it
/// was committed.
pub struct ArchiveUpdate {
    /// The recording event.
    pub seq: u64,
    /// Its new state.
    pub record: ArchiveRecord,
    /// Told `true` once committed, `false` if the commit failed.
    pub done: Sender<bool>,
}

/// The writer's side of the archive: where due recordings go, where new states come from,
/// and which recordings are out with a thread.
pub struct Link {
    /// Due recordings, bounded to the window.
    pub tasks: Sender<DueRecording>,
    /// New states.
    pub updates: Receiver<ArchiveUpdate>,
    /// Recordings handed out and not yet back.
    pub busy: std::collections::HashSet<u64>,
}

/// The running archiver threads.
pub struct Archiver {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The live quota and margin (reload changes them).
    pub limits: Arc<worker::Limits>,
}

impl Archiver {
    /// Prepares the directory (and clears downloads a crash left unfinished), then starts the
    /// threads. Returns the writer's [`Link`].
    ///
    /// # Errors
    /// The directory cannot be created or a thread spawned.
    pub fn start(
        settings: &Settings,
        min_free_disk_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Archiver, Link)> {
        use std::os::unix::fs::DirBuilderExt;
        let partial = settings.dir.join(PARTIAL_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&partial)?;
        for entry in std::fs::read_dir(&partial)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let used = worker::du(&settings.dir);
        metrics.archive_bytes.store(used, Ordering::Relaxed);
        let limits = Arc::new(worker::Limits {
            min_free_disk_bytes: AtomicU64::new(min_free_disk_bytes),
            disk_margin_bytes: AtomicU64::new(settings.disk_margin_bytes),
            max_archive_bytes: AtomicU64::new(settings.max_archive_bytes.unwrap_or(u64::MAX)),
        });
        let window = settings.workers.max(1) * WINDOW_PER_WORKER;
        let (tasks, task_rx) = crossbeam_channel::bounded(window);
        let (update_tx, updates) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(worker::Shared {
            fetcher: fetch::Fetcher::new(
                Arc::new(settings.policy.clone()),
                settings.download_timeout,
                settings.max_file_bytes,
            ),
            settings: settings.clone(),
            metrics,
            updates: update_tx,
            stop: stop.clone(),
            limits: limits.clone(),
            paused: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for i in 0..settings.workers.max(1) {
            let shared = shared.clone();
            let rx = task_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("didgate-archive-{i}"))
                    .spawn(move || worker::run(&shared, &rx))?,
            );
        }
        Ok((
            Archiver {
                stop,
                threads,
                limits,
            },
            Link {
                tasks,
                updates,
                busy: Default::default(),
            },
        ))
    }

    /// Stops the threads; a download in progress is abandoned (its recording stays on the
    /// work list and starts over at the next start).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Not joined: a thread may be inside a download that takes minutes.
        drop(self.threads);
    }
}
