//! didgate: a webhook gateway that answers didlogic's CDR, recording and SMS webhooks with
//! `200 OK` only once each event is durably committed to LMDB, and reads them back.
//!
//! # Layout
//! Folders in the order a webhook travels from socket to disk, then back out to the operator
//! (`docs/architecture.md` is the map with the threads, the invariants and where to add things):
//!
//! - [`config`]: the file and flags, validated section by section into one `Config`.
//! - [`serve`]: `didgate serve`: start-up, reload on SIGHUP, graceful shutdown.
//! - [`ingest`]: listener, connection, HTTP framing, route, body decoding, response, deadlines.
//! - [`event`]: the event and its record encoding, shared by ingest, writer and store.
//! - [`call`]: what a CDR, recording or SMS says about a call; rollups, time zones, reports.
//! - [`writer`]: the single writer thread: batch, dedup, commit, wake; housekeeping, retention.
//! - [`store`]: LMDB: layout, walk, reads, the write transaction, check, migrate, OS helpers.
//! - [`forward`]: delivery onward: `[[forward]]` destinations, retries, dead letters.
//! - [`alert`]: `[[alert]]` rules over the calls, evaluated by `serve`; notifications.
//! - [`tls`]: HTTPS on the webhook listener: certificates from files or ACME, kept current.
//! - [`ops`]: admin listener, health, metrics, systemd notify, log, token.
//! - [`cli`]: the reader subcommands (`tail`, `export`, `get`, `stats`, `quarantine`, ...).
//! - [`untrusted`]: webhook text shown to a person: the characters that must not act.
//! - [`timestamp`]: times as shown and accepted; [`backoff`]: the background jobs' retry schedule;
//!   [`durable_file`]: small files replaced whole and durably.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod alert;
pub mod archive;
pub(crate) mod backoff;
pub mod call;
pub mod cli;
pub mod config;
pub mod console;
pub(crate) mod durable_file;
pub mod event;
pub mod forward;
pub mod ingest;
pub(crate) mod lookup;
pub mod ops;
pub(crate) mod outbound;
pub mod serve;
pub mod store;
pub(crate) mod timestamp;
pub mod tls;
pub mod untrusted;
pub mod writer;
