//! Commit deadlines without a timer per request: a request whose commit takes longer than
//! `commit_timeout` is answered 503, and the others cost no timer at all.
//!
//! Why not a timed park: `may` files a coroutine parked with a timeout in its timer thread,
//! and removing the entry when the answer comes first wakes that thread. Under load that was
//! a futex wake and a thread switch for nearly every request (0.3 futex calls and 0.4 context
//! switches per request; with this sweeper, 0.003 and 0.16). Commits nearly always beat the
//! deadline, so a waiting request parks without a timeout and registers its reply here; one
//! thread looks at the registered replies every [`SWEEP_INTERVAL`] and times out those past
//! their deadline. A request therefore gets its 503 at most one interval late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::writer::Reply;

/// How often the registered replies are checked: the most a timed-out request is answered
/// late. Small next to `commit_timeout` (seconds), large enough to be free when idle.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// The registry of waiting replies and the thread that times them out.
pub struct Deadlines {
    tx: Sender<(Instant, Arc<Reply>)>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("didgate-deadline".into())
            .spawn(move || sweep(&rx, &flag))?;
        Ok(Deadlines {
            tx,
            stop,
            thread: Some(thread),
        })
    }

    /// Times `reply` out at `deadline` unless it has an outcome by then. The sweeper never
    /// blocks on this channel, so a send never wakes a thread.
    pub fn watch(&self, reply: &Arc<Reply>, deadline: Instant) {
        if self.tx.send((deadline, reply.clone())).is_err() {
            // The sweeper is gone (only after `stop`): time out now rather than never.
            reply.time_out();
        }
    }

    /// Stops the sweeper; replies still waiting are timed out.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            crate::log::error(format_args!("deadline thread panicked"));
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn sweep(rx: &Receiver<(Instant, Arc<Reply>)>, stop: &AtomicBool) {
    let mut watched: Vec<(Instant, Arc<Reply>)> = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        watched.extend(rx.try_iter());
        let now = Instant::now();
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
    fn stopping_times_out_the_replies_still_waiting() {
        let deadlines = Deadlines::start().unwrap();
        let reply = Reply::new();
        deadlines.watch(&reply, Instant::now() + Duration::from_secs(3600));
        deadlines.stop();
        assert_eq!(wait_at_most(&reply, Duration::from_secs(5)), None);
    }
}
