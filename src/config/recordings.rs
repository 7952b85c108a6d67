//! The `[recordings]` section: its schema as written and its validation into
//! [`crate::archive::Settings`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, bad, duration, in_range, parse_cidr};
use crate::archive::{self, policy::PrivateAddresses};

/// `allow_private_addresses`: `true`/`false`, or the ranges allowed.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum PrivateFile {
    All(bool),
    Ranges(Vec<String>),
}

/// `[recordings]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordingsFile {
    enabled: Option<bool>,
    dir: Option<PathBuf>,
    workers: Option<usize>,
    max_file_bytes: Option<u64>,
    max_archive_bytes: Option<u64>,
    disk_margin_bytes: Option<u64>,
    download_timeout: Option<String>,
    retry_initial: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allow_http: Option<bool>,
    allow_private_addresses: Option<PrivateFile>,
}

/// Validates `[recordings]`; the archive defaults to `DATA/recordings`.
pub(super) fn section(
    f: Option<&RecordingsFile>,
    data_dir: &Path,
) -> Result<archive::Settings, Error> {
    let d = archive::Settings::defaults(data_dir);
    let Some(f) = f else {
        return Ok(d);
    };
    let private = match &f.allow_private_addresses {
        None | Some(PrivateFile::All(false)) => PrivateAddresses::Deny,
        Some(PrivateFile::All(true)) => PrivateAddresses::AllowAll,
        Some(PrivateFile::Ranges(r)) => PrivateAddresses::Allow(
            r.iter()
                .map(|c| {
                    parse_cidr(c).ok_or_else(|| {
                        bad(
                            "recordings.allow_private_addresses",
                            format_args!("{c:?} is not a CIDR range or IP address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let allowed_hosts = f.allowed_hosts.clone().unwrap_or_default();
    if let Some(h) = allowed_hosts
        .iter()
        .find(|h| h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '/'))
    {
        return Err(bad(
            "recordings.allowed_hosts",
            format_args!("{h:?} is not a host pattern (e.g. \"*.amazonaws.com\")"),
        ));
    }
    Ok(archive::Settings {
        enabled: f.enabled.unwrap_or(d.enabled),
        dir: f.dir.clone().unwrap_or(d.dir),
        workers: in_range("recordings.workers", f.workers, d.workers, 1, 64)?,
        max_file_bytes: in_range(
            "recordings.max_file_bytes",
            f.max_file_bytes,
            d.max_file_bytes,
            1,
            16 << 30,
        )?,
        max_archive_bytes: f.max_archive_bytes,
        disk_margin_bytes: f.disk_margin_bytes.unwrap_or(d.disk_margin_bytes),
        download_timeout: duration(
            "recordings.download_timeout",
            &f.download_timeout,
            d.download_timeout,
        )?,
        retry_initial: duration(
            "recordings.retry_initial",
            &f.retry_initial,
            d.retry_initial,
        )?,
        policy: archive::policy::Policy {
            allow_http: f.allow_http.unwrap_or(false),
            private,
            allowed_hosts,
        },
    })
}
