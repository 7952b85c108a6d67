//! The `[[forward]]` sections: their schema as written and their validation into
//! [`crate::forward::Destination`]s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Error, bad, duration};
use crate::event::Hook;
use crate::forward::signature::Secret;
use crate::forward::{self, Destination, state};

/// Longest `timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Most attempts per second `rate_limit` may allow.
pub const MAX_RATE_LIMIT: f64 = 1_000_000.0;
/// Most steps in `retry`.
pub const MAX_RETRY_STEPS: usize = 32;

/// Headers a destination may not set: didgate writes them (framing, the Standard Webhooks
/// headers, its own).
const RESERVED_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// `secret`: one, or several during a rotation.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SecretFile {
    One(String),
    Several(Vec<String>),
}

/// `rate_limit`: events per second, whole or not.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RateFile {
    Whole(i64),
    Float(f64),
}

/// `url`: one, or (NATS) several servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum UrlFile {
    One(String),
    Several(Vec<String>),
}

/// One `[[forward]]` as written: the keys every destination has, then those of a NATS one
/// (`config/nats.rs`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForwardFile {
    name: Option<String>,
    #[serde(rename = "type")]
    transport: Option<String>,
    pub(super) url: Option<UrlFile>,
    kinds: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    pub(super) secret: Option<SecretFile>,
    timeout: Option<String>,
    max_in_flight: Option<usize>,
    ordered: Option<bool>,
    rate_limit: Option<RateFile>,
    retry: Option<Vec<String>>,
    max_age: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) token: Option<String>,
    pub(super) creds: Option<String>,
    pub(super) tls_ca: Option<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) stream: Option<String>,
    pub(super) create_stream: Option<bool>,
    pub(super) subjects: Option<Vec<String>>,
    pub(super) storage: Option<String>,
    pub(super) duplicate_window: Option<String>,
    pub(super) appliance: Option<String>,
}

/// Validates every `[[forward]]`.
pub(super) fn section(f: Option<&[ForwardFile]>) -> Result<Vec<Destination>, Error> {
    let Some(list) = f else {
        return Ok(Vec::new());
    };
    if list.len() > forward::MAX_DESTINATIONS {
        return Err(bad(
            "forward",
            format_args!(
                "{} destinations; at most {} may be configured",
                list.len(),
                forward::MAX_DESTINATIONS
            ),
        ));
    }
    let mut out: Vec<Destination> = Vec::new();
    for f in list {
        let d = destination(f)?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(bad(
                "forward.name",
                format_args!("{:?} names two destinations", d.name),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

fn destination(f: &ForwardFile) -> Result<Destination, Error> {
    let name = f
        .name
        .clone()
        .ok_or_else(|| bad("forward.name", "every [[forward]] needs a name"))?;
    state::check_name(&name).map_err(|e| bad("forward.name", e))?;
    let key = |k: &str| format!("forward.{k}");
    let is_nats = match f.transport.as_deref() {
        None | Some("http") => false,
        Some("nats") => true,
        Some(other) => {
            return Err(bad(
                &key("type"),
                format_args!("{other:?}: \"http\" (the default) or \"nats\""),
            ));
        }
    };
    let mut d = if is_nats {
        let mut d = Destination::new(&name, "");
        super::nats::settings(f, &mut d)?;
        d
    } else {
        if let Some((k, _)) = super::nats::NATS_KEYS.iter().find(|(_, set)| set(f)) {
            return Err(bad(
                &key(k),
                format_args!("only a NATS destination has it (type = \"nats\")"),
            ));
        }
        let url = match &f.url {
            Some(UrlFile::One(u)) => u.clone(),
            Some(UrlFile::Several(_)) => {
                return Err(bad(&key("url"), "an HTTP destination has one url"));
            }
            None => {
                return Err(bad(
                    &key("url"),
                    format_args!("destination {name:?} needs a url"),
                ));
            }
        };
        check_url(&url).map_err(|e| bad(&key("url"), format_args!("{url:?}: {e}")))?;
        Destination::new(&name, &url)
    };
    if let Some(kinds) = &f.kinds {
        for k in kinds {
            if !Hook::ALL.iter().any(|h| h.name() == k) {
                let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
                return Err(bad(
                    &key("kinds"),
                    format_args!("unknown kind {k:?} (kinds: {})", known.join(", ")),
                ));
            }
        }
        d.kinds.clone_from(kinds);
    }
    if let Some(headers) = &f.headers {
        if headers.len() > forward::MAX_HEADERS {
            return Err(bad(
                &key("headers"),
                format_args!("at most {} headers", forward::MAX_HEADERS),
            ));
        }
        for (k, v) in headers {
            let lower = k.to_ascii_lowercase();
            let reserved = if is_nats {
                super::nats::reserved_header(&lower)
            } else {
                RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-didgate-")
            };
            if reserved {
                return Err(bad(
                    &key("headers"),
                    format_args!("{k:?} is set by didgate itself"),
                ));
            }
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(bad(
                    &key("headers"),
                    format_args!("{k:?} is not a header name"),
                ));
            }
            if http::HeaderValue::from_str(v).is_err() {
                return Err(bad(
                    &key("headers"),
                    format_args!("the value of {k:?} is not a valid header value"),
                ));
            }
            d.headers.push((k.clone(), v.clone()));
        }
    }
    let secrets = match &f.secret {
        None => Vec::new(),
        Some(SecretFile::One(s)) => vec![s.clone()],
        Some(SecretFile::Several(s)) => s.clone(),
    };
    for s in &secrets {
        d.secrets
            .push(Secret::parse(s).map_err(|e| bad(&key("secret"), e))?);
    }
    d.timeout = duration(&key("timeout"), &f.timeout, forward::DEFAULT_TIMEOUT)?;
    if d.timeout > MAX_TIMEOUT {
        return Err(bad(
            &key("timeout"),
            format_args!("at most {}", humantime::format_duration(MAX_TIMEOUT)),
        ));
    }
    let (default_in_flight, max_in_flight) = if is_nats {
        (
            forward::nats::DEFAULT_IN_FLIGHT,
            forward::nats::MAX_IN_FLIGHT,
        )
    } else {
        (forward::DEFAULT_MAX_IN_FLIGHT, forward::MAX_IN_FLIGHT)
    };
    d.max_in_flight = super::in_range(
        &key("max_in_flight"),
        f.max_in_flight,
        default_in_flight,
        1,
        max_in_flight,
    )?;
    d.ordered = f.ordered.unwrap_or(false);
    d.rate_limit = match f.rate_limit {
        None => None,
        Some(r) => {
            let v = match r {
                RateFile::Whole(i) => i as f64,
                RateFile::Float(x) => x,
            };
            if !(v > 0.0 && v <= MAX_RATE_LIMIT) {
                return Err(bad(
                    &key("rate_limit"),
                    format_args!("{v} is outside (0, {MAX_RATE_LIMIT}] events per second"),
                ));
            }
            Some(v)
        }
    };
    if let Some(steps) = &f.retry {
        if steps.is_empty() || steps.len() > MAX_RETRY_STEPS {
            return Err(bad(
                &key("retry"),
                format_args!("1 to {MAX_RETRY_STEPS} waits, e.g. [\"5s\", \"30s\", \"2m\"]"),
            ));
        }
        d.retry = steps
            .iter()
            .map(|s| duration(&key("retry"), &Some(s.clone()), Duration::ZERO))
            .collect::<Result<_, _>>()?;
    }
    d.max_age = duration(&key("max_age"), &f.max_age, forward::DEFAULT_MAX_AGE)?;
    Ok(d)
}

/// An absolute http or https URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the scheme must be http or https".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Transport, nats};

    fn parse(text: &str) -> Result<Vec<Destination>, Error> {
        #[derive(Deserialize)]
        struct F {
            forward: Vec<ForwardFile>,
        }
        let f: F = toml::from_str(text).unwrap();
        section(Some(&f.forward))
    }

    #[test]
    fn a_full_destination_is_read_with_every_key() {
        let d = parse(
            r#"
            [[forward]]
            name = "crm"
            url = "https://crm.example/hooks?x=1"
            kinds = ["cdr", "sms"]
            headers = { Authorization = "Bearer abc" }
            secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            timeout = "3s"
            max_in_flight = 8
            ordered = true
            rate_limit = 50
            retry = ["1s", "2m"]
            max_age = "1h"

            [[forward]]
            name = "bi"
            url = "http://10.0.0.5:8080/in"
            rate_limit = 0.5
            "#,
        )
        .unwrap();
        let crm = &d[0];
        assert_eq!(crm.kinds, ["cdr", "sms"]);
        assert_eq!(crm.headers, [("Authorization".into(), "Bearer abc".into())]);
        assert_eq!(crm.secrets.len(), 2);
        assert_eq!(crm.timeout, Duration::from_secs(3));
        assert_eq!(
            (crm.max_in_flight, crm.ordered, crm.in_flight_cap()),
            (8, true, 1)
        );
        assert_eq!(crm.rate_limit, Some(50.0));
        assert_eq!(
            crm.retry,
            [Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert_eq!(crm.max_age, Duration::from_secs(3600));
        let bi = &d[1];
        assert_eq!(
            (bi.max_in_flight, bi.ordered, bi.rate_limit),
            (4, false, Some(0.5))
        );
        assert_eq!(bi.retry, crate::forward::schedule::default_schedule());
        assert_eq!(bi.max_age, Duration::from_secs(3 * 86_400));
        assert!(bi.wants("recording") && !crm.wants("recording"));
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            ("url = \"http://a/\"", "forward.name"),
            ("name = \"a b\"\nurl = \"http://a/\"", "forward.name"),
            ("name = \"a\"", "forward.url"),
            ("name = \"a\"\nurl = \"ftp://a/\"", "forward.url"),
            ("name = \"a\"\nurl = \"/relative\"", "forward.url"),
            (
                "name = \"a\"\nurl = \"http://a/\"\nkinds = [\"fax\"]",
                "forward.kinds",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nsecret = \"plain\"",
                "forward.secret",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nheaders = { webhook-id = \"x\" }",
                "forward.headers",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nheaders = { X-Didgate-Seq = \"1\" }",
                "forward.headers",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nheaders = { A = \"x\\ny\" }",
                "forward.headers",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nmax_in_flight = 0",
                "forward.max_in_flight",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nrate_limit = 0",
                "forward.rate_limit",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nretry = []",
                "forward.retry",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nretry = [\"soon\"]",
                "forward.retry",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\ntimeout = \"1h\"",
                "forward.timeout",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nmax_age = \"0s\"",
                "forward.max_age",
            ),
        ];
        for (body, key) in cases {
            let e = parse(&format!("[[forward]]\n{body}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{body}: {}", e.message);
        }
        let twice = "[[forward]]\nname = \"a\"\nurl = \"http://a/\"\n[[forward]]\nname = \"a\"\nurl = \"http://b/\"";
        assert!(
            parse(twice)
                .unwrap_err()
                .message
                .contains("two destinations")
        );
    }

    #[test]
    fn a_nats_destination_is_read_with_every_key() {
        let creds = tempfile::NamedTempFile::new().unwrap();
        let path = creds.path().display().to_string();
        let d = parse(&format!(
            r#"
            [[forward]]
            name = "bus"
            type = "nats"
            url = ["nats://10.0.0.1:4222", "tls://nats.example:4222"]
            creds = "{path}"
            subject = "acme.{{appliance}}.{{kind}}"
            stream = "DIDLOGIC"
            create_stream = true
            subjects = ["acme.>"]
            storage = "memory"
            duplicate_window = "30m"
            appliance = "site-a"
            headers = {{ Tenant = "acme" }}
            max_in_flight = 2048

            [[forward]]
            name = "plain"
            type = "nats"
            url = "nats://a:4222, nats://b:4222"
            token = "t0ken"
            "#
        ))
        .unwrap();
        let Transport::Nats(s) = &d[0].transport else {
            panic!("not nats")
        };
        assert_eq!(s.servers.len(), 2);
        assert_eq!(s.auth, nats::Auth::Creds(creds.path().to_path_buf()));
        assert_eq!(s.subject_for("cdr"), "acme.site-a.cdr");
        assert_eq!(s.stream.as_deref(), Some("DIDLOGIC"));
        assert!(s.create_stream);
        assert_eq!(s.stream_subjects(), ["acme.>"]);
        assert_eq!(s.storage, nats::Storage::Memory);
        assert_eq!(s.duplicate_window, Duration::from_secs(1800));
        assert_eq!(d[0].max_in_flight, 2048);
        assert_eq!((d[0].batch(), d[0].lanes()), (nats::PUBLISH_BATCH, 8));
        let Transport::Nats(p) = &d[1].transport else {
            panic!("not nats")
        };
        assert_eq!(p.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(p.auth, nats::Auth::Token("t0ken".into()));
        assert_eq!(p.subject_for("sms"), "didlogic.sms");
        assert_eq!(p.duplicate_window, nats::DEFAULT_DUPLICATE_WINDOW);
        assert_eq!(d[1].max_in_flight, nats::DEFAULT_IN_FLIGHT);
        assert_eq!(d[1].url, "nats://a:4222, nats://b:4222");
    }

    #[test]
    fn nats_mistakes_name_their_key() {
        let n = "name = \"a\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"";
        let cases = [
            (
                "name = \"a\"\ntype = \"kafka\"\nurl = \"http://a/\"",
                "forward.type",
            ),
            (
                "name = \"a\"\nurl = \"http://a/\"\nsubject = \"x\"",
                "forward.subject",
            ),
            ("name = \"a\"\nurl = [\"http://a/\"]", "forward.url"),
            ("name = \"a\"\ntype = \"nats\"", "forward.url"),
            (
                "name = \"a\"\ntype = \"nats\"\nurl = \"http://a:4222\"",
                "forward.url",
            ),
            (
                &format!("{n}\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""),
                "forward.secret",
            ),
            (&format!("{n}\nuser = \"u\""), "forward.password"),
            (
                &format!("{n}\nuser = \"u\"\npassword = \"p\"\ntoken = \"t\""),
                "forward.creds",
            ),
            (
                &format!("{n}\ncreds = \"/nonexistent/x.creds\""),
                "forward.creds",
            ),
            (&format!("{n}\nsubject = \"a.*\""), "forward.subject"),
            (&format!("{n}\nsubject = \"a.{{kin}}\""), "forward.subject"),
            (&format!("{n}\nstream = \"a.b\""), "forward.stream"),
            (
                &format!("{n}\ncreate_stream = true"),
                "forward.create_stream",
            ),
            (
                &format!("{n}\nstream = \"S\"\nduplicate_window = \"20m\""),
                "forward.duplicate_window",
            ),
            (
                &format!("{n}\nstream = \"S\"\ncreate_stream = true\nstorage = \"disk\""),
                "forward.storage",
            ),
            (&format!("{n}\nappliance = \"a b\""), "forward.appliance"),
            (
                &format!("{n}\nheaders = {{ Nats-Msg-Id = \"x\" }}"),
                "forward.headers",
            ),
            (
                &format!("{n}\nheaders = {{ Didgate-Seq = \"1\" }}"),
                "forward.headers",
            ),
            (
                &format!("{n}\nmax_in_flight = 100000"),
                "forward.max_in_flight",
            ),
            (
                &format!("{n}\ntls_cert = \"/etc/hostname\""),
                "forward.tls_key",
            ),
        ];
        for (body, key) in cases {
            let e = parse(&format!("[[forward]]\n{body}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{body}: {}", e.message);
        }
    }
}
