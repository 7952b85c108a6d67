//! The console's own thread, `didgate-console`, at niceness 19: pages read the store and
//! render there, never on the coroutine workers that serve webhooks, so a page costs ingest
//! neither a worker nor, when the CPU is short, its share of it. The admin coroutine hands
//! each request over and parks until the answer comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::audio::Slice;
use super::{Console, Request, Response};

/// Requests that may wait for the console thread; past that a request gets `503` at once
/// (someone is reloading a page faster than it renders).
pub const QUEUE: usize = 16;

/// While the queue is full, a recording's next piece is asked again after this.
const PIECE_RETRY: Duration = Duration::from_millis(10);

/// What the console thread is asked to do.
enum Job {
    /// Render a page.
    Page {
        path: String,
        query: String,
        range: Option<String>,
        reply: may::sync::mpsc::Sender<Response>,
    },
    /// Read the next piece of a recording being streamed.
    Piece {
        slice: Slice,
        done: u64,
        reply: may::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    },
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
                // The client may have gone when an answer is sent; nothing to do then.
                for job in rx {
                    match job {
                        Job::Page {
                            path,
                            query,
                            range,
                            reply,
                        } => {
                            let req = Request {
                                path: &path,
                                query: &query,
                                range: range.as_deref(),
                            };
                            let _ = reply.send(console.answer(&req));
                        }
                        Job::Piece { slice, done, reply } => {
                            let _ = reply.send(slice.piece(done));
                        }
                    }
                }
            })?;
        Ok(Renderer { tx })
    }

    /// Renders `req` on the console thread; the calling coroutine parks meanwhile.
    pub fn answer(&self, req: &Request<'_>) -> Response {
        let (reply, answer) = may::sync::mpsc::channel();
        let job = Job::Page {
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

    /// Streams `slice` to `out`: each piece is read on the console thread (a read from a slow
    /// disk never holds a coroutine worker), written here. Gives up when the console thread
    /// stays busy for `patience`.
    ///
    /// # Errors
    /// The read or the write failed, or the console thread was busy or gone.
    pub fn stream(
        &self,
        slice: &Slice,
        out: &mut impl std::io::Write,
        patience: Duration,
    ) -> std::io::Result<()> {
        let mut done = 0;
        while done < slice.len() {
            let (reply, answer) = may::sync::mpsc::channel();
            let mut job = Job::Piece {
                slice: slice.clone(),
                done,
                reply,
            };
            let since = Instant::now();
            loop {
                match self.tx.try_send(job) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) if since.elapsed() < patience => {
                        job = back;
                        may::coroutine::sleep(PIECE_RETRY);
                    }
                    Err(_) => return Err(std::io::Error::other("the console is busy or gone")),
                }
            }
            let piece = answer
                .recv()
                .map_err(|_| std::io::Error::other("the console stopped"))??;
            out.write_all(&piece)?;
            done += piece.len() as u64;
        }
        Ok(())
    }
}
