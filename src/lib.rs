//! didgate: a webhook gateway that answers didlogic's CDR, recording and SMS webhooks with
//! `200 OK` only once each event is durably committed to LMDB, and reads them back.
//!
//! # Layout
//! Modules in the order a webhook travels from socket to disk, then back out to the operator:
//!
//! - [`config`]: what the file and flags said, validated into one `Config`.
//! - [`server`]: listener, accept loop, connection cap, shutdown.
//! - [`connection`]: one coroutine per connection: read, frame, answer in order.
//! - [`http`]: request framing (head, Content-Length, chunked), pure over bytes.
//! - [`route`]: path -> which hook, token check in constant time.
//! - [`decode`]: JSON (simd-json) and urlencoded form (hand-rolled) body decoding.
//! - [`event`]: the event and its record encoding.
//! - [`dedup`]: the writer's in-memory table of recent bodies, for recognising retries.
//! - [`writer`]: the single writer thread: batch -> one write transaction -> commit -> wake.
//! - [`wakeup`]: the coroutine that wakes a committed batch's requests inside the runtime.
//! - [`deadline`]: times out requests whose commit takes longer than `commit_timeout`.
//! - [`store`]: LMDB environment, databases, key layout, and the read API.
//! - [`retention`]: what is old enough to delete, pruned a slice at a time.
//! - [`metrics`]: every counter, named once; Prometheus text.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`notify`]: systemd's notify socket, watchdog and socket activation.
//! - [`response`]: every answer -> status line and headers, in one place.
//! - [`token`]: the secret path segment: generated, kept, compared.
//! - [`timestamp`]: times as shown and accepted.
//! - [`cli`]: the reader subcommands (`tail`, `export`, `get`, `stats`, `quarantine`).

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod decode;
pub mod dedup;
pub mod event;
pub mod http;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod response;
pub mod retention;
pub mod route;
pub mod server;
pub mod store;
pub mod timestamp;
pub mod token;
pub mod wakeup;
pub mod writer;
