//! Operating the gateway: what an operator or a service manager talks to, beside ingest.
//!
//! [`admin`] serves `/metrics`, `/healthz` and `/readyz`; [`metrics`] names every counter;
//! [`notify`] speaks systemd's notify protocol; [`log`] writes rate-limited log lines;
//! [`token`] keeps the secret path segment.

pub(crate) mod admin;
pub mod health;
pub mod log;
pub mod metrics;
pub(crate) mod notify;
pub(crate) mod token;
