//! NATS JetStream destinations (`[[forward]] type = "nats"`): each event published with its
//! body as received, on a subject made from its kind, with `Nats-Msg-Id` set to the same
//! stable id as `webhook-id` (kind and body hash). JetStream drops a second message with an
//! id it has seen within the stream's duplicate window, so a webhook that two appliances
//! both received, or that one appliance publishes again after a kill -9, is one message.
//!
//! The client is the official one (`async-nats`), run on a single-threaded tokio runtime in
//! the destination's own thread (`didgate-nats`), at the forwarding threads' niceness. The
//! dispatcher hands it batches as it does HTTP sender threads; each batch is published back
//! to back and its PubAcks are then awaited together, and several batches are under way at
//! once, so `max_in_flight` acks are outstanding and throughput is not one round trip per
//! event. An event counts as delivered only on its PubAck; a duplicate PubAck counts too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use crossbeam_channel::Sender;

use super::Destination;
use super::schedule::{Class, Failure, Outcome};
use super::send::{Attempt, Done};
use super::signature;
use crate::ops::log;
use crate::timestamp::{format_ms, now_ms};

/// The subject template when none is set: `{kind}` is `cdr`, `recording` or `sms`.
pub const DEFAULT_SUBJECT: &str = "didlogic.{kind}";
/// PubAcks outstanding at once when `max_in_flight` is not set.
pub const DEFAULT_IN_FLIGHT: usize = 1024;
/// Most PubAcks a NATS destination may have outstanding (below the dispatcher's read-ahead
/// window, so the window never stalls on acks alone).
pub const MAX_IN_FLIGHT: usize = 8192;
/// Most messages in one batch: published back to back, then their acks awaited.
pub const PUBLISH_BATCH: usize = 256;
/// The duplicate window of a stream didgate creates: more than didlogic's ~16 minutes of
/// retries, so a retry that lands on another appliance is still recognised.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(20 * 60);
/// A duplicate window shorter than this is warned about: didlogic retries for ~16 minutes.
pub const RETRY_SPAN: Duration = Duration::from_secs(16 * 60);
/// Longest wait for a connection to one server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages the client queues while it (re)connects; beyond it a publish waits, up to the
/// destination's `timeout`, and then fails and is retried on the schedule.
pub const CLIENT_CAPACITY: usize = 4096;
/// Least time between two tries to connect or to check the stream after a failure (the
/// batches in between fail at once with the last error, and the dispatcher's hold takes
/// over from there).
pub const SETUP_RETRY: Duration = Duration::from_secs(1);
/// On stop, how long publishes under way may wait for their acks.
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
/// Longest appliance name (it goes into a header, and may go into subjects).
pub const MAX_APPLIANCE_CHARS: usize = 64;

/// How the client proves who it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `user` and `password`.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
    /// `token`.
    Token(String),
    /// `creds`: a `.creds` file (a user JWT and its NKey seed).
    Creds(PathBuf),
}

/// Where a created stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// On disk (the default).
    File,
    /// In memory.
    Memory,
}

/// A NATS destination's settings (the keys HTTP destinations do not have).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `nats://` or `tls://` URLs; the client picks one and fails over to the others.
    pub servers: Vec<String>,
    /// Credentials.
    pub auth: Auth,
    /// `tls_ca`: a PEM file of CAs to trust besides the system's.
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert` and `tls_key`: a client certificate, for servers that ask for one.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The subject template: `{kind}` and `{appliance}` are replaced.
    pub subject: String,
    /// The stream expected to take the messages (`Nats-Expected-Stream`); `None`: whichever
    /// stream takes the subject.
    pub stream: Option<String>,
    /// Create `stream` when it does not exist.
    pub create_stream: bool,
    /// The subjects of a created stream; empty: the subject template, each placeholder a
    /// wildcard token.
    pub subjects: Vec<String>,
    /// The storage of a created stream.
    pub storage: Storage,
    /// The duplicate window of a created stream.
    pub duplicate_window: Duration,
    /// This appliance's name (`Didgate-Appliance`).
    pub appliance: String,
}

impl Settings {
    /// Settings for `servers` with every default.
    pub fn new(servers: Vec<String>) -> Settings {
        Settings {
            servers,
            auth: Auth::None,
            tls_ca: None,
            tls_client: None,
            subject: DEFAULT_SUBJECT.to_string(),
            stream: None,
            create_stream: false,
            subjects: Vec::new(),
            storage: Storage::File,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            appliance: host_name(),
        }
    }

    /// The subject events of `kind` are published on.
    pub fn subject_for(&self, kind: &str) -> String {
        self.subject
            .replace("{kind}", kind)
            .replace("{appliance}", &self.appliance)
    }

    /// The subjects a created stream takes.
    pub fn stream_subjects(&self) -> Vec<String> {
        if !self.subjects.is_empty() {
            return self.subjects.clone();
        }
        vec![
            self.subject
                .split('.')
                .map(|t| if t.contains('{') { "*" } else { t })
                .collect::<Vec<_>>()
                .join("."),
        ]
    }
}

/// Checks a subject template: dot-separated non-empty tokens, no whitespace, no wildcard
/// (a message is published on one subject), placeholders only `{kind}` and `{appliance}`,
/// each a whole token.
pub fn check_subject(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("empty".into());
    }
    for token in template.split('.') {
        if token.is_empty() {
            return Err("a token is empty (two dots, or a dot at an end)".into());
        }
        if token.contains('{') || token.contains('}') {
            if token != "{kind}" && token != "{appliance}" {
                return Err(format!(
                    "{token:?}: the placeholders are {{kind}} and {{appliance}}, each a whole \
                     token"
                ));
            }
            continue;
        }
        if let Some(c) = token
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
        {
            return Err(format!(
                "{token:?} holds {c:?}: a subject to publish on has no whitespace or wildcard"
            ));
        }
    }
    Ok(())
}

/// Checks a subject a created stream takes (wildcards allowed).
pub fn check_stream_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.split('.').any(str::is_empty) {
        return Err(format!("{subject:?}: a token is empty"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{subject:?} holds whitespace"));
    }
    Ok(())
}

/// Checks a stream name as JetStream does: no whitespace, `.`, `*`, `>`, path separators.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("1 to 255 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!("{name:?} holds {c:?}"));
    }
    Ok(())
}

/// Checks an appliance name: it goes into a header, and into subjects with `{appliance}`.
pub fn check_appliance(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_APPLIANCE_CHARS {
        return Err(format!("1 to {MAX_APPLIANCE_CHARS} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(format!(
            "{name:?}: letters, digits, '-' and '_' only (it may be part of a subject)"
        ));
    }
    Ok(())
}

/// The host's name, as the default appliance name: its first label, with any character an
/// appliance name may not hold replaced by `-`; `didgate` when there is none.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what is passed; gethostname
    // writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let label: String = raw
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_APPLIANCE_CHARS)
        .collect();
    if label.is_empty() {
        "didgate".into()
    } else {
        label
    }
}

/// Starts the publisher thread of `dest`: it takes batches from `rx` and answers on `done`,
/// and ends once `rx` is closed (after up to [`DRAIN_ON_STOP`] for acks under way).
///
/// # Errors
/// The runtime could not be built, or the thread spawned.
pub fn spawn(
    dest: &Arc<Destination>,
    settings: Arc<Settings>,
    rx: tokio::sync::mpsc::Receiver<Vec<Attempt>>,
    done: Sender<Vec<Done>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let publisher = Publisher {
        name: dest.name.clone(),
        timeout: dest.timeout,
        cap: dest.in_flight_cap(),
        headers: Arc::new(dest.headers.clone()),
        settings,
        done,
        context: None,
        stream_ready: false,
        setup_at: None,
        last_error: None,
    };
    std::thread::Builder::new()
        .name("didgate-nats".into())
        .spawn(move || {
            crate::ops::lower_priority(super::NICENESS);
            runtime.block_on(publisher.run(rx));
        })?;
    Ok(())
}

struct Publisher {
    name: String,
    timeout: Duration,
    cap: usize,
    headers: Arc<Vec<(String, String)>>,
    settings: Arc<Settings>,
    done: Sender<Vec<Done>>,
    context: Option<jetstream::Context>,
    /// The stream is known to exist (or none is named).
    stream_ready: bool,
    /// When connecting or checking the stream last failed.
    setup_at: Option<Instant>,
    last_error: Option<Failure>,
}

impl Publisher {
    async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Vec<Attempt>>) {
        // Connect and check the stream at once, so that bad credentials or a missing stream
        // are in the log at start rather than at the first event (batches wait meanwhile).
        let _ = self.ready().await;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    match self.ready().await {
                        Ok(context) => {
                            let job = Job {
                                context,
                                settings: self.settings.clone(),
                                headers: self.headers.clone(),
                            };
                            tasks.spawn(job.publish(batch, self.done.clone()));
                        }
                        Err(f) => self.fail(batch, &f),
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN_ON_STOP, drain).await;
    }

    /// Answers every attempt of `batch` with `f`, at once.
    fn fail(&self, batch: Vec<Attempt>, f: &Failure) {
        let now = now_ms();
        let out = batch
            .into_iter()
            .map(|a| Done {
                seq: a.seq,
                source: a.source,
                outcome: Outcome::Failed(f.clone()),
                started_ms: now,
                took: Duration::ZERO,
            })
            .collect();
        let _ = self.done.send(out);
    }

    /// A JetStream context whose stream is known to be there: connects and checks (or
    /// creates) the stream on first use, and again at most every [`SETUP_RETRY`] after a
    /// failure.
    async fn ready(&mut self) -> Result<jetstream::Context, Failure> {
        if let Some(c) = &self.context
            && self.stream_ready
        {
            return Ok(c.clone());
        }
        if let (Some(at), Some(e)) = (self.setup_at, &self.last_error)
            && at.elapsed() < SETUP_RETRY
        {
            return Err(e.clone());
        }
        let r = self.setup().await;
        match &r {
            Ok(_) => {
                self.setup_at = None;
                self.last_error = None;
            }
            Err(f) => {
                self.setup_at = Some(Instant::now());
                self.last_error = Some(f.clone());
                log::warn_limited(
                    "forward-nats-setup",
                    format_args!("forward {}: {}", self.name, f.error),
                );
            }
        }
        r
    }

    async fn setup(&mut self) -> Result<jetstream::Context, Failure> {
        let context = match &self.context {
            Some(c) => c.clone(),
            None => {
                let client = connect(&self.name, &self.settings).await.map_err(|e| {
                    failure(Class::Connection, format!("cannot connect to NATS: {e}"))
                })?;
                let c = jetstream::ContextBuilder::new()
                    .timeout(self.timeout)
                    .max_ack_inflight(self.cap.max(1))
                    .backpressure_on_inflight(true)
                    .build(client);
                self.context = Some(c.clone());
                c
            }
        };
        if !self.stream_ready {
            self.check_stream(&context).await?;
            self.stream_ready = true;
        }
        Ok(context)
    }

    /// Checks that the named stream exists (creating it when told to), and warns when its
    /// duplicate window is shorter than didlogic's retry span.
    async fn check_stream(&self, context: &jetstream::Context) -> Result<(), Failure> {
        let s = &self.settings;
        let Some(name) = &s.stream else {
            return Ok(());
        };
        let mut stream = if s.create_stream {
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: s.stream_subjects(),
                storage: match s.storage {
                    Storage::File => jetstream::stream::StorageType::File,
                    Storage::Memory => jetstream::stream::StorageType::Memory,
                },
                duplicate_window: s.duplicate_window,
                ..Default::default()
            };
            context.get_or_create_stream(config).await.map_err(|e| {
                failure(
                    Class::Rejected,
                    format!("cannot create or find stream {name:?}: {e}"),
                )
            })?
        } else {
            context.get_stream(name).await.map_err(|e| {
                failure(
                    Class::Rejected,
                    format!(
                        "stream {name:?} is not there ({e}); create it (see \
                         docs/scale-out.md) or set create_stream = true"
                    ),
                )
            })?
        };
        let window = stream
            .info()
            .await
            .map(|i| i.config.duplicate_window)
            .unwrap_or(RETRY_SPAN);
        log::info(format_args!(
            "forward {}: publishing to stream {name:?} (duplicate window {})",
            self.name,
            humantime::format_duration(window)
        ));
        if window < RETRY_SPAN {
            log::warn(format_args!(
                "forward {}: stream {name:?} recognises duplicates for only {}; didlogic \
                 retries for ~16 minutes, so a retry that reaches another appliance later may \
                 be stored twice (20m or more is recommended)",
                self.name,
                humantime::format_duration(window)
            ));
        }
        Ok(())
    }
}

/// Connects in the background: the call returns at once, and the client keeps trying every
/// server, for ever, while publishes queue (up to [`CLIENT_CAPACITY`]) or time out.
async fn connect(dest: &str, s: &Settings) -> Result<async_nats::Client, String> {
    let mut addrs = Vec::with_capacity(s.servers.len());
    for url in &s.servers {
        addrs.push(
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{url}: {e}"))?,
        );
    }
    let name = dest.to_string();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("didgate {} {dest}", s.appliance))
        .connection_timeout(CONNECT_TIMEOUT)
        .client_capacity(CLIENT_CAPACITY)
        .max_reconnects(None)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let name = name.clone();
            async move { log_event(&name, &event) }
        });
    options = match &s.auth {
        Auth::None => options,
        Auth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        Auth::Token(t) => options.token(t.clone()),
        Auth::Creds(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cannot read the credentials {}: {e}", path.display()))?,
    };
    if let Some(ca) = &s.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &s.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options.connect(addrs).await.map_err(|e| e.to_string())
}

fn log_event(dest: &str, event: &async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => log::info(format_args!("forward {dest}: connected to NATS")),
        Event::Disconnected => log::warn_limited(
            "forward-nats-down",
            format_args!(
                "forward {dest}: disconnected from NATS; reconnecting (events wait in the store)"
            ),
        ),
        Event::ServerError(e) => log::warn_limited(
            "forward-nats-error",
            format_args!("forward {dest}: NATS server error: {e}"),
        ),
        Event::ClientError(e) => log::warn_limited(
            "forward-nats-error",
            format_args!("forward {dest}: NATS client error: {e}"),
        ),
        Event::LameDuckMode => log::info(format_args!(
            "forward {dest}: the NATS server is shutting down (lame duck); moving to another"
        )),
        Event::Draining | Event::Closed | Event::SlowConsumer(_) => {}
    }
}

/// What one batch's publishing needs.
struct Job {
    context: jetstream::Context,
    settings: Arc<Settings>,
    headers: Arc<Vec<(String, String)>>,
}

impl Job {
    /// Publishes the batch back to back, then awaits every PubAck at once (each within the
    /// destination's `timeout`) and answers with the outcomes.
    async fn publish(self, batch: Vec<Attempt>, done: Sender<Vec<Done>>) {
        let mut sent = Vec::with_capacity(batch.len());
        // After a publish cannot even be handed to the client, the rest of the batch fails
        // the same way at once rather than each waiting out its own timeout.
        let mut broken: Option<Failure> = None;
        for a in batch {
            let started_ms = now_ms();
            let started = Instant::now();
            let Attempt {
                seq,
                kind,
                stored_at_ms,
                content_type,
                body,
                source,
            } = a;
            let ack = match &broken {
                Some(f) => Err(f.clone()),
                None => {
                    let headers = self.headers(seq, &kind, stored_at_ms, &content_type, &body);
                    let subject = self.settings.subject_for(&kind);
                    match self
                        .context
                        .publish_with_headers(subject, headers, body.into())
                        .await
                    {
                        Ok(ack) => Ok(ack),
                        Err(e) => {
                            let f = failure_of(&e, &self.settings);
                            broken = Some(f.clone());
                            Err(f)
                        }
                    }
                }
            };
            sent.push((seq, source, started_ms, started, ack));
        }
        let acks = sent.iter_mut().map(|(_, _, _, _, ack)| {
            let ack = std::mem::replace(ack, Err(failure(Class::Connection, String::new())));
            let settings = &self.settings;
            async move {
                match ack {
                    Err(f) => Outcome::Failed(f),
                    Ok(fut) => match fut.await {
                        Ok(a) if a.duplicate => Outcome::Duplicate,
                        Ok(_) => Outcome::Delivered(200),
                        Err(e) => Outcome::Failed(failure_of(&e, settings)),
                    },
                }
            }
        });
        let outcomes = futures_util::future::join_all(acks).await;
        let out = sent
            .into_iter()
            .zip(outcomes)
            .map(|((seq, source, started_ms, started, _), outcome)| Done {
                seq,
                source,
                outcome,
                started_ms,
                took: started.elapsed(),
            })
            .collect();
        let _ = done.send(out);
    }

    fn headers(
        &self,
        seq: u64,
        kind: &str,
        stored_at_ms: i64,
        content_type: &[u8],
        body: &[u8],
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in self.headers.iter() {
            h.insert(k.as_str(), v.as_str());
        }
        h.insert("Nats-Msg-Id", signature::webhook_id(kind, body).as_str());
        if let Some(stream) = &self.settings.stream {
            h.insert("Nats-Expected-Stream", stream.as_str());
        }
        h.insert("Content-Type", header_text(content_type));
        h.insert("Didgate-Kind", kind);
        h.insert("Didgate-Seq", seq.to_string().as_str());
        h.insert("Didgate-Stored-At", format_ms(stored_at_ms).as_str());
        h.insert("Didgate-Appliance", self.settings.appliance.as_str());
        h
    }
}

/// The Content-Type as received when it is printable ASCII (it came with the webhook, so it
/// must not break the header block); otherwise `application/octet-stream`.
fn header_text(raw: &[u8]) -> &str {
    match std::str::from_utf8(raw) {
        Ok(s) if !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b)) => s,
        _ => "application/octet-stream",
    }
}

fn failure(class: Class, error: String) -> Failure {
    Failure::without_status(class, error)
}

fn failure_of(e: &jetstream::context::PublishError, s: &Settings) -> Failure {
    match e.kind() {
        PublishErrorKind::TimedOut => failure(Class::Timeout, "no PubAck in time".into()),
        PublishErrorKind::BrokenPipe => {
            failure(Class::Connection, "the NATS connection was lost".into())
        }
        PublishErrorKind::StreamNotFound => failure(
            Class::Rejected,
            match &s.stream {
                Some(name) => format!(
                    "no stream takes the subject (is stream {name:?} there, with this \
                     subject? `create_stream = true` creates it)"
                ),
                None => "no stream takes the subject (create one, or set stream and \
                         create_stream = true)"
                    .into(),
            },
        ),
        _ => failure(Class::Rejected, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_come_from_the_template() {
        let mut s = Settings::new(vec!["nats://127.0.0.1:4222".into()]);
        s.appliance = "pi-1".into();
        assert_eq!(s.subject_for("cdr"), "didlogic.cdr");
        assert_eq!(s.stream_subjects(), ["didlogic.*"]);
        s.subject = "acme.{appliance}.{kind}".into();
        assert_eq!(s.subject_for("sms"), "acme.pi-1.sms");
        assert_eq!(s.stream_subjects(), ["acme.*.*"]);
        s.subjects = vec!["acme.>".into()];
        assert_eq!(s.stream_subjects(), ["acme.>"]);
    }

    #[test]
    fn bad_subjects_and_names_are_refused() {
        for bad in [
            "", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a.{kin}", "a{kind}",
        ] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
        for good in ["didlogic.{kind}", "a.{appliance}.{kind}", "x"] {
            assert!(check_subject(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a.b", "a b", "a*", "a/b"] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_stream_name("DIDLOGIC").is_ok());
        for bad in ["", "a b", "a.b", "é"] {
            assert!(check_appliance(bad).is_err(), "{bad:?}");
        }
        assert!(check_appliance(&host_name()).is_ok());
    }

    #[test]
    fn a_hostile_content_type_is_not_copied_into_a_header() {
        assert_eq!(header_text(b"application/json"), "application/json");
        assert_eq!(
            header_text(b"text/plain\r\nNats-Msg-Id: x"),
            "application/octet-stream"
        );
        assert_eq!(header_text(b""), "application/octet-stream");
        assert_eq!(header_text(&[0xff, 0x41]), "application/octet-stream");
    }
}
