//! The console's own thread, `didgate-console`, at niceness 19: pages read the store and
//! render there, never on the coroutine workers that serve webhooks, so a page costs ingest
//! neither a worker nor, when the CPU is short, its share of it. The admin coroutine hands
//! each request over and parks until the answer comes back.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::{Console, Request, Response};

/// Requests that may wait for the console thread; past that a request gets `503` at once
/// (someone is reloading a page faster than it renders).
pub const QUEUE: usize = 16;

/// A request as the console thread gets it.
struct Job {
    path: String,
    query: String,
    range: Option<String>,
    reply: may::sync::mpsc::Sender<Response>,
}

/// The handle the admin listener renders through.
pub struct Renderer {
    tx: Sender<Job>,
}

impl Renderer {
    /// Starts the thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(console: Console) -> std::io::Result<Renderer> {
        let (tx, rx) = bounded::<Job>(QUEUE);
        let console = Arc::new(console);
        std::thread::Builder::new()
            .name("didgate-console".into())
            .spawn(move || {
                crate::ops::lower_priority(19);
                for job in rx {
                    let req = Request {
                        path: &job.path,
                        query: &job.query,
                        range: job.range.as_deref(),
                    };
                    let answer = console.answer(&req);
                    // The client may have gone; nothing to do then.
                    let _ = job.reply.send(answer);
                }
            })?;
        Ok(Renderer { tx })
    }

    /// Renders `req` on the console thread; the calling coroutine parks meanwhile.
    pub fn answer(&self, req: &Request<'_>) -> Response {
        let (reply, answer) = may::sync::mpsc::channel();
        let job = Job {
            path: req.path.to_string(),
            query: req.query.to_string(),
            range: req.range.map(str::to_string),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => answer.recv().unwrap_or_else(|_| {
                Response::text(500, "Internal Server Error", "the console stopped\n")
            }),
            Err(TrySendError::Full(_)) => {
                Response::text(503, "Service Unavailable", "the console is busy; retry\n")
            }
            Err(TrySendError::Disconnected(_)) => {
                Response::text(503, "Service Unavailable", "the console is not running\n")
            }
        }
    }
}
