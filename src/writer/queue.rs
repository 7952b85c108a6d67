//! The writer's queue: [`Job`]s in, bounded, never blocking the sender. A full queue is
//! answered fast with 503 by the connection, never a wait.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::reply::Reply;
use crate::event::Event;

/// One event on its way to disk.
pub struct Job {
    /// The event to store.
    pub event: Event,
    /// `Some(reason)` when the body did not decode and goes to quarantine.
    pub quarantine: Option<String>,
    /// Where the outcome goes.
    pub reply: Arc<Reply>,
}

/// Why a job was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is at capacity.
    Full,
    /// The writer has stopped.
    Stopped,
}

/// The sending side, cloned into every connection.
#[derive(Clone)]
pub struct Queue {
    tx: Sender<Job>,
}

impl Queue {
    /// Queues a job without waiting.
    ///
    /// # Errors
    /// [`SubmitError`] when the queue is full or the writer is gone; the caller answers 503.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    /// Jobs waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

impl Queue {
    /// A queue of `capacity` jobs (at least one) and the writer's receiving end.
    pub(super) fn bounded(capacity: usize) -> (Queue, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (Queue { tx }, rx)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::BodyFormat;

    /// A CDR job with `body`, for quarantine with `quarantine` as the reason when given.
    pub(in crate::writer) fn job(body: &str, quarantine: Option<&str>) -> Job {
        Job {
            event: Event {
                kind: "cdr".into(),
                format: BodyFormat::Json,
                peer: None,
                content_type: vec![],
                body: body.as_bytes().to_vec(),
                callid: None,
                call: None,
            }
            .with_call_facts(),
            quarantine: quarantine.map(str::to_string),
            reply: Reply::new(),
        }
    }

    #[test]
    fn full_queue_is_refused_at_once() {
        let (queue, _rx) = Queue::bounded(1);
        queue.submit(job("{}", None)).unwrap();
        assert_eq!(queue.submit(job("{}", None)).err(), Some(SubmitError::Full));
        assert_eq!(queue.depth(), 1);
    }
}
