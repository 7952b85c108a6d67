//! The keys of a `[[forward]] type = "nats"` destination, validated into
//! [`crate::forward::nats::Settings`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::forward::{ForwardFile, UrlFile};
use super::{Error, bad, duration};
use crate::forward::nats::{self, Auth, Settings, Storage};
use crate::forward::{Destination, Transport};

/// Most servers one destination may list.
pub const MAX_SERVERS: usize = 16;
/// Most subjects a created stream may take.
pub const MAX_STREAM_SUBJECTS: usize = 16;

/// Whether a `[[forward]]` sets a key.
type IsSet = fn(&ForwardFile) -> bool;

/// The keys only a NATS destination has, with a getter telling whether one is set.
pub(super) const NATS_KEYS: [(&str, IsSet); 14] = [
    ("user", |f| f.user.is_some()),
    ("password", |f| f.password.is_some()),
    ("token", |f| f.token.is_some()),
    ("creds", |f| f.creds.is_some()),
    ("tls_ca", |f| f.tls_ca.is_some()),
    ("tls_cert", |f| f.tls_cert.is_some()),
    ("tls_key", |f| f.tls_key.is_some()),
    ("subject", |f| f.subject.is_some()),
    ("stream", |f| f.stream.is_some()),
    ("create_stream", |f| f.create_stream.is_some()),
    ("subjects", |f| f.subjects.is_some()),
    ("storage", |f| f.storage.is_some()),
    ("duplicate_window", |f| f.duplicate_window.is_some()),
    ("appliance", |f| f.appliance.is_some()),
];

/// Headers a NATS destination may not set: JetStream's own (`Nats-*`), and didgate's.
pub(super) fn reserved_header(lower: &str) -> bool {
    lower == "content-type" || lower.starts_with("nats-") || lower.starts_with("didgate-")
}

fn key(k: &str) -> String {
    format!("forward.{k}")
}

/// The servers of `url`: one URL, a comma-separated list, or a TOML list; each `nats://` or
/// `tls://` (TLS), host and port.
pub(super) fn servers(name: &str, url: Option<&UrlFile>) -> Result<Vec<String>, Error> {
    let list: Vec<String> = match url {
        None => {
            return Err(bad(
                &key("url"),
                format_args!(
                    "destination {name:?} needs a url (e.g. \"nats://127.0.0.1:4222\", or a list)"
                ),
            ));
        }
        Some(UrlFile::One(s)) => s.split(',').map(|u| u.trim().to_string()).collect(),
        Some(UrlFile::Several(v)) => v.iter().map(|u| u.trim().to_string()).collect(),
    };
    if list.is_empty() || list.len() > MAX_SERVERS {
        return Err(bad(&key("url"), format_args!("1 to {MAX_SERVERS} servers")));
    }
    for u in &list {
        let scheme_ok = u.starts_with("nats://") || u.starts_with("tls://");
        if !scheme_ok {
            return Err(bad(
                &key("url"),
                format_args!("{u:?}: a NATS server is nats://host:port, or tls://host:port"),
            ));
        }
        async_nats::ServerAddr::from_str(u)
            .map_err(|e| bad(&key("url"), format_args!("{u:?}: {e}")))?;
    }
    Ok(list)
}

fn file(k: &str, v: &str) -> Result<PathBuf, Error> {
    let p = PathBuf::from(v);
    if !Path::new(v).is_file() {
        return Err(bad(&key(k), format_args!("{v:?} is not a readable file")));
    }
    Ok(p)
}

/// Fills in a NATS destination's settings from its keys.
pub(super) fn settings(f: &ForwardFile, d: &mut Destination) -> Result<(), Error> {
    if f.secret.is_some() {
        return Err(bad(
            &key("secret"),
            "signs HTTP deliveries; a NATS destination authenticates with user and password, \
             token or creds",
        ));
    }
    let mut s = Settings::new(servers(&d.name, f.url.as_ref())?);
    s.auth = match (&f.user, &f.password, &f.token, &f.creds) {
        (None, None, None, None) => Auth::None,
        (Some(u), Some(p), None, None) => Auth::UserPassword {
            user: u.clone(),
            password: p.clone(),
        },
        (Some(_), None, None, None) => return Err(bad(&key("password"), "user needs a password")),
        (None, Some(_), None, None) => return Err(bad(&key("user"), "password needs a user")),
        (None, None, Some(t), None) => Auth::Token(t.clone()),
        (None, None, None, Some(c)) => Auth::Creds(file("creds", c)?),
        _ => {
            return Err(bad(
                &key("creds"),
                "one way to authenticate: user and password, or token, or creds",
            ));
        }
    };
    s.tls_ca = f.tls_ca.as_deref().map(|p| file("tls_ca", p)).transpose()?;
    s.tls_client = match (&f.tls_cert, &f.tls_key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((file("tls_cert", c)?, file("tls_key", k)?)),
        _ => return Err(bad(&key("tls_key"), "tls_cert and tls_key go together")),
    };
    if let Some(a) = &f.appliance {
        nats::check_appliance(a).map_err(|e| bad(&key("appliance"), e))?;
        s.appliance.clone_from(a);
    }
    if let Some(t) = &f.subject {
        nats::check_subject(t).map_err(|e| bad(&key("subject"), e))?;
        s.subject.clone_from(t);
    }
    if let Some(name) = &f.stream {
        nats::check_stream_name(name).map_err(|e| bad(&key("stream"), e))?;
        s.stream = Some(name.clone());
    }
    s.create_stream = f.create_stream.unwrap_or(false);
    if s.create_stream && s.stream.is_none() {
        return Err(bad(
            &key("create_stream"),
            "needs stream, the name of the stream to create",
        ));
    }
    let creation = [
        ("subjects", f.subjects.is_some()),
        ("storage", f.storage.is_some()),
        ("duplicate_window", f.duplicate_window.is_some()),
    ];
    if let Some((k, _)) = creation.iter().find(|(_, set)| *set)
        && !s.create_stream
    {
        return Err(bad(
            &key(k),
            "describes the stream didgate creates: only with create_stream = true",
        ));
    }
    if let Some(subjects) = &f.subjects {
        if subjects.is_empty() || subjects.len() > MAX_STREAM_SUBJECTS {
            return Err(bad(
                &key("subjects"),
                format_args!("1 to {MAX_STREAM_SUBJECTS} subjects"),
            ));
        }
        for sub in subjects {
            nats::check_stream_subject(sub).map_err(|e| bad(&key("subjects"), e))?;
        }
        s.subjects.clone_from(subjects);
    }
    s.storage = match f.storage.as_deref() {
        None | Some("file") => Storage::File,
        Some("memory") => Storage::Memory,
        Some(other) => {
            return Err(bad(
                &key("storage"),
                format_args!("{other:?}: \"file\" or \"memory\""),
            ));
        }
    };
    s.duplicate_window = duration(
        &key("duplicate_window"),
        &f.duplicate_window,
        nats::DEFAULT_DUPLICATE_WINDOW,
    )?;
    d.url = s.servers.join(", ");
    d.transport = Transport::Nats(Arc::new(s));
    Ok(())
}
