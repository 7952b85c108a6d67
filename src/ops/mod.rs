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

/// Lowers the calling thread's scheduling priority to `niceness` (Linux schedules threads, so
/// `setpriority` on the thread's id touches no other thread): background jobs yield the CPU
/// to ingest when it is short. Best effort: a refusal changes nothing else.
pub fn lower_priority(niceness: libc::c_int) {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    let Ok(id) = libc::id_t::try_from(tid) else {
        return;
    };
    // SAFETY: setpriority only reads its arguments; on a thread id it changes that thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, id, niceness);
    }
}
