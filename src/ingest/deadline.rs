//! Deadlines without a timer per wait: a request whose commit takes longer than
//! `commit_timeout` is answered 503, a connection whose socket stays silent past its read (or
//! write) deadline is ended, and the waits that end in time cost no timer at all.
//!
//! Why not a timed park: `may` files a coroutine parked with a timeout in its timer thread,
//! and removing the entry when the answer comes first wakes that thread. Under load that was
//! a futex wake and a thread switch for nearly every request (docs/performance.md has the
//! counts with and without this sweeper). Commits nearly always beat the
//! deadline, so a waiting request parks without a timeout and registers its reply here; one
//! thread looks at the registered replies every [`SWEEP_INTERVAL`] and times out those past
//! their deadline. A request therefore gets its 503 at most one interval late.
//!
//! Sockets likewise: a connection's coroutine waits for its socket with `may`'s `wait_io`,
//! which parks without a timer, and keeps one [`SocketDeadline`] that it re-arms (an atomic
//! store) before each wait. The sweeper wakes the coroutine once that deadline has passed. With
//! `may`'s timed reads each wait that found no data filed and removed a timer in the worker's
//! event loop, and each read first tried the socket, which nearly always said EAGAIN: one
//! system call per request for nothing (see `connection.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use may::io::{WaitIo, WaitIoWaker};
use may::net::TcpStream;

use crate::writer::Reply;

/// How often the registered replies and sockets are checked: the most a timed-out request is
/// answered late, and a silent connection ended late. Small next to the deadlines (seconds),
/// large enough to be free when idle.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// `SocketDeadline::at` when nothing is due.
const UNARMED: u64 = u64::MAX;

/// When a connection waiting on its socket must be woken to give up, and how to wake it.
pub struct SocketDeadline {
    /// Microseconds after `epoch`; [`UNARMED`] when nothing is due.
    at: AtomicU64,
    epoch: Instant,
    waker: WaitIoWaker,
}

impl SocketDeadline {
    /// The connection's next wait ends by `deadline` (up to one [`SWEEP_INTERVAL`] late).
    pub fn arm(&self, deadline: Instant) {
        self.at
            .store(micros_since(self.epoch, deadline), Ordering::Relaxed);
    }

    /// Wakes the connection when its deadline has passed, once per arming.
    fn wake_if_due(&self, now_us: u64) {
        let at = self.at.load(Ordering::Relaxed);
        if at <= now_us
            && self
                .at
                .compare_exchange(at, UNARMED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Sets a flag the connection's `wait_io` returns at once on, and reschedules the
            // coroutine if it is parked there; harmless if it is not.
            self.waker.wakeup();
        }
    }
}

fn micros_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_micros()).unwrap_or(UNARMED - 1)
}

/// The registry of waiting replies and connections, and the thread that times them out.
pub struct Deadlines {
    tx: Sender<(Instant, Arc<Reply>)>,
    sockets: Sender<Arc<SocketDeadline>>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Deadlines {
    /// Starts the sweeping thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start() -> std::io::Result<Deadlines> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (sockets, socket_rx) = crossbeam_channel::unbounded();
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("didgate-deadline".into())
            .spawn(move || sweep(&rx, &socket_rx, epoch, &flag))?;
        Ok(Deadlines {
            tx,
            sockets,
            epoch,
            stop,
            thread: Some(thread),
        })
    }

    /// Registers a connection's socket, once per connection; the connection arms the returned
    /// deadline before each wait. The registration ends when the connection drops it.
    pub fn watch_socket(&self, stream: &TcpStream) -> Arc<SocketDeadline> {
        let deadline = Arc::new(SocketDeadline {
            at: AtomicU64::new(UNARMED),
            epoch: self.epoch,
            waker: stream.waker(),
        });
        // After `stop` nobody sweeps: the process is exiting, and waits then end with it.
        let _ = self.sockets.send(deadline.clone());
        deadline
    }

    /// Times `reply` out at `deadline` unless it has an outcome by then. The sweeper never
    /// blocks on this channel, so a send never wakes a thread.
    pub fn watch(&self, reply: &Arc<Reply>, deadline: Instant) {
        if self.tx.send((deadline, reply.clone())).is_err() {
            // The sweeper is gone (only while dropping): time out now rather than never.
            reply.time_out();
        }
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            crate::ops::log::error(format_args!("deadline thread panicked"));
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn sweep(
    rx: &Receiver<(Instant, Arc<Reply>)>,
    socket_rx: &Receiver<Arc<SocketDeadline>>,
    epoch: Instant,
    stop: &AtomicBool,
) {
    let mut watched: Vec<(Instant, Arc<Reply>)> = Vec::new();
    let mut sockets: Vec<Arc<SocketDeadline>> = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        watched.extend(rx.try_iter());
        sockets.extend(socket_rx.try_iter());
        let now = Instant::now();
        let now_us = micros_since(epoch, now);
        sockets.retain(|s| {
            // Only this list holds it once its connection has ended.
            if Arc::strong_count(s) == 1 {
                return false;
            }
            s.wake_if_due(now_us);
            true
        });
        watched.retain(|(deadline, reply)| {
            if reply.is_settled() {
                false
            } else if stopping || now >= *deadline {
                reply.time_out();
                false
            } else {
                true
            }
        });
        if stopping {
            return;
        }
        std::thread::sleep(SWEEP_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::Outcome;

    /// `reply.wait()` on another thread, so a broken sweeper fails the test instead of
    /// hanging it.
    fn wait_at_most(reply: &Arc<Reply>, limit: Duration) -> Option<Outcome> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reply = reply.clone();
        std::thread::spawn(move || tx.send(reply.wait()));
        rx.recv_timeout(limit)
            .expect("the waiter was not released in time")
    }

    #[test]
    fn times_out_only_what_has_no_outcome_by_its_deadline() {
        let deadlines = Deadlines::start().unwrap();
        let late = Reply::new();
        let answered = Reply::new();
        let started = Instant::now();
        deadlines.watch(&late, started + Duration::from_millis(20));
        deadlines.watch(&answered, started + Duration::from_millis(20));
        answered.complete(Outcome::Stored(7));
        assert_eq!(wait_at_most(&late, Duration::from_secs(5)), None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert_eq!(answered.wait(), Some(Outcome::Stored(7)));
        // An outcome that comes after the timeout is what a later wait sees.
        late.complete(Outcome::Failed);
        assert_eq!(late.wait(), Some(Outcome::Failed));
    }

    #[test]
    fn dropping_times_out_the_replies_still_waiting() {
        let deadlines = Deadlines::start().unwrap();
        let reply = Reply::new();
        deadlines.watch(&reply, Instant::now() + Duration::from_secs(3600));
        drop(deadlines);
        assert_eq!(wait_at_most(&reply, Duration::from_secs(5)), None);
    }
}
