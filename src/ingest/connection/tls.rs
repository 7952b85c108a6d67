//! The TLS side of a connection: the handshake under its own deadline, then records in and
//! out through rustls on the same non-blocking socket and the same waits as plain HTTP. The
//! framer, routing and answers above see plaintext and do not know TLS is there.
//!
//! Costs are bounded like the plain path's: a handshake that stalls is cut at
//! `handshake_timeout` (the sweeper wakes the wait), garbage ends the connection at the first
//! bad record, and rustls buffers at most one record in and its default limit out.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustls::ServerConnection;

use super::{Conn, End, Fill, MAX_READ_BYTES, MIN_READ_BYTES};
use crate::ops::metrics::Metrics;
use crate::tls::{ALPN_ACME, Tls};

/// The first byte of a TLS handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP request on the TLS port is told, before the connection closes. A 400,
/// like nginx's "plain HTTP request was sent to HTTPS port": the sender logs a failure the
/// operator can see, rather than a closed connection it retries into the same wall.
const PLAIN_ON_TLS_PORT: &[u8] =
    b"this port speaks HTTPS: use the https:// URL (`didgate urls` prints it)\n";

/// A read during the handshake: data goes on; the peer's end or the deadline ends it (the
/// deadline counted).
fn handshake_progress(fill: Fill, metrics: &Metrics) -> Result<(), End> {
    match fill {
        Fill::Data => Ok(()),
        Fill::Eof => Err(End::Dead),
        Fill::Timeout => {
            metrics
                .tls_handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            Err(End::Dead)
        }
    }
}

impl Conn<'_> {
    /// Runs the handshake. `Err(End::Close)`: a plaintext request was answered 400 and the
    /// connection should linger and close; `Err(End::Dead)`: nothing more to do.
    pub(super) fn start_tls(&mut self, tls: &Tls) -> Result<(), End> {
        let gateway = self.gateway;
        let metrics = &gateway.metrics;
        let deadline = Instant::now() + tls.handshake_timeout;
        // The first bytes tell TLS from plain HTTP sent to the wrong port.
        let fill = self.fill(deadline)?;
        handshake_progress(fill, metrics)?;
        if self.rbuf.first() != Some(&TLS_HANDSHAKE_RECORD) {
            metrics.tls_plain_refused.fetch_add(1, Ordering::Relaxed);
            if self.rbuf.first().is_some_and(u8::is_ascii_uppercase) {
                self.wbuf.clear();
                crate::ingest::response::write_plain(
                    &mut self.wbuf,
                    400,
                    "Bad Request",
                    "text/plain; charset=utf-8",
                    PLAIN_ON_TLS_PORT,
                    false,
                );
                return Err(match self.write_wbuf() {
                    Ok(()) => End::Close,
                    Err(_) => End::Dead,
                });
            }
            return Err(End::Dead);
        }
        let Ok(mut session) = ServerConnection::new(tls.config.clone()) else {
            return Err(End::Dead);
        };
        // Hand rustls what was read; it takes it in pieces.
        let mut taken = &self.rbuf[..];
        while !taken.is_empty() {
            match session.read_tls(&mut taken) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(self.tls_failed(Some(session))),
            }
            if session.process_new_packets().is_err() {
                return Err(self.tls_failed(Some(session)));
            }
        }
        self.rbuf.clear();
        self.start = 0;
        self.tls = Some(Box::new(session));
        while self.tls.as_ref().is_some_and(|s| s.is_handshaking()) {
            self.send_tls(Some(deadline)).map_err(|_| End::Dead)?;
            if !self.tls.as_ref().is_some_and(|s| s.is_handshaking()) {
                break;
            }
            let fill = self.read_records(deadline)?;
            handshake_progress(fill, metrics)?;
        }
        self.send_tls(Some(deadline)).map_err(|_| End::Dead)?;
        if self.tls.as_ref().and_then(|s| s.alpn_protocol()) == Some(ALPN_ACME) {
            // An ACME validation: the certificate was the answer (RFC 8737 §3); close.
            metrics
                .tls_challenges_answered
                .fetch_add(1, Ordering::Relaxed);
            return Err(End::Close);
        }
        metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a failed handshake and sends rustls's alert, if it has one, best effort.
    fn tls_failed(&mut self, session: Option<ServerConnection>) -> End {
        let gateway = self.gateway;
        gateway
            .metrics
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        if let Some(mut s) = session {
            let mut socket = self.stream.inner();
            let _ = s.write_tls(&mut socket);
        }
        End::Dead
    }

    /// Reads plaintext into `rbuf`, reading and decrypting records as needed, until
    /// `deadline`.
    pub(super) fn fill_tls(&mut self, deadline: Instant) -> Result<Fill, End> {
        loop {
            let Some(session) = self.tls.as_deref_mut() else {
                return Err(End::Dead);
            };
            let filled = self.rbuf.len();
            let room = (self.rbuf.capacity() - filled).clamp(MIN_READ_BYTES, MAX_READ_BYTES);
            self.rbuf.resize(filled + room, 0);
            let result = session.reader().read(&mut self.rbuf[filled..]);
            self.rbuf
                .truncate(filled + result.as_ref().map_or(0, |&n| n));
            match result {
                // The peer's close_notify.
                Ok(0) => return Ok(Fill::Eof),
                Ok(_) => return Ok(Fill::Data),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The peer closed the socket without close_notify: the same end for us.
                Err(_) => return Ok(Fill::Eof),
            }
            match self.read_records(deadline)? {
                Fill::Data => {}
                other => return Ok(other),
            }
        }
    }

    /// Reads what records the socket has and processes them (answering what the protocol
    /// asks: handshake messages, key updates, alerts).
    fn read_records(&mut self, deadline: Instant) -> Result<Fill, End> {
        loop {
            if !self.readable {
                if !self.wait_socket(deadline) {
                    return Ok(Fill::Timeout);
                }
                continue;
            }
            let Some(session) = self.tls.as_deref_mut() else {
                return Err(End::Dead);
            };
            let mut socket = self.stream.inner();
            match session.read_tls(&mut socket) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(_) => {
                    if session.process_new_packets().is_err() {
                        let session = self.tls.take().map(|b| *b);
                        return Err(self.tls_failed(session));
                    }
                    self.send_tls(None).map_err(|_| End::Dead)?;
                    return Ok(Fill::Data);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Dead),
            }
        }
    }

    /// Writes what rustls has to send. A write that makes no progress until `deadline` (or,
    /// without one, for `write_timeout`) fails with `TimedOut`.
    pub(super) fn send_tls(&mut self, deadline: Option<Instant>) -> std::io::Result<()> {
        let mut stall = deadline;
        loop {
            let Some(session) = self.tls.as_deref_mut() else {
                return Ok(());
            };
            if !session.wants_write() {
                return Ok(());
            }
            let mut socket = self.stream.inner();
            match session.write_tls(&mut socket) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {
                    if deadline.is_none() {
                        stall = None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let until = *stall.get_or_insert_with(|| {
                        Instant::now() + self.gateway.settings.write_timeout
                    });
                    if !self.wait_socket(until) {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypts and writes `wbuf` whole.
    pub(super) fn write_tls_wbuf(&mut self) -> std::io::Result<()> {
        let mut at = 0;
        while at < self.wbuf.len() {
            let Some(session) = self.tls.as_deref_mut() else {
                return Err(ErrorKind::NotConnected.into());
            };
            // rustls takes plaintext up to its buffer limit; what it took is sent before
            // the rest is offered.
            let n = session.writer().write(&self.wbuf[at..])?;
            at += n;
            self.send_tls(None)?;
        }
        Ok(())
    }

    /// Sends close_notify before the socket is shut for writing.
    pub(super) fn close_tls(&mut self) {
        if let Some(session) = self.tls.as_deref_mut() {
            session.send_close_notify();
            let _ = self.send_tls(None);
        }
    }
}
