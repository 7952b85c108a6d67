//! [`ArchiveRecord`]: what the store keeps about one recording event's download, and the
//! states it goes through. Pure data; `docs/storage.md` documents the stored form (JSON).

use serde::{Deserialize, Serialize};

/// Where a recording is in its archiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Queued: not tried yet, or waiting for its next try after a temporary failure.
    Pending,
    /// On disk, checked.
    Fetched,
    /// Given up on (or waiting for its next try, when `next_try_ms` is set).
    Failed,
    /// The pre-signed URL expired before a download succeeded; nothing more can be done.
    Expired,
    /// The object is not there (404 after retries).
    Gone,
    /// Downloaded and kept, but it does not look like audio: `first_bytes` says what it is.
    Suspicious,
}

impl State {
    /// Whether a record in this state keeps its downloaded file (counted as archived).
    pub fn holds_file(self) -> bool {
        matches!(self, State::Fetched | State::Suspicious)
    }

    /// Every state, in the order listings name them.
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Fetched,
        State::Failed,
        State::Expired,
        State::Gone,
        State::Suspicious,
    ];

    /// The lower-case name used in the store, the CLI and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Fetched => "fetched",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Gone => "gone",
            State::Suspicious => "suspicious",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }
}

/// The archive state of one recording event, stored under the event's sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// Where it is.
    pub state: State,
    /// Downloads tried so far.
    pub attempts: u32,
    /// When the next try is due (ms since the epoch); `None`: no try is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try_ms: Option<i64>,
    /// The last failure, as a person reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The URL's own expiry (ms since the epoch), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Bytes of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// SHA-256 of the file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The Content-Type S3 sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When the download finished (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at_ms: Option<i64>,
    /// The file's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The first bytes of a body that is not audio, hex, for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bytes: Option<String>,
    /// When this record last changed (ms since the epoch).
    pub updated_ms: i64,
}

impl ArchiveRecord {
    /// A recording just stored: due at once.
    pub fn pending(now_ms: i64) -> ArchiveRecord {
        ArchiveRecord {
            state: State::Pending,
            attempts: 0,
            next_try_ms: Some(now_ms),
            error: None,
            expires_ms: None,
            bytes: None,
            sha256: None,
            content_type: None,
            fetched_at_ms: None,
            path: None,
            first_bytes: None,
            updated_ms: now_ms,
        }
    }

    /// Whether a try is scheduled (the archiver will come back to it).
    pub fn is_open(&self) -> bool {
        self.next_try_ms.is_some()
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form.
    ///
    /// # Errors
    /// The bytes are not a record (damage).
    pub fn decode(bytes: &[u8]) -> Result<ArchiveRecord, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_state() {
        let mut r = ArchiveRecord::pending(5);
        assert!(r.is_open());
        r.state = State::Fetched;
        r.next_try_ms = None;
        r.sha256 = Some("ab".into());
        let bytes = r.encode();
        assert!(String::from_utf8_lossy(&bytes).contains("\"state\":\"fetched\""));
        assert_eq!(ArchiveRecord::decode(&bytes).unwrap(), r);
        assert!(ArchiveRecord::decode(b"{").is_err());
        for s in State::ALL {
            assert_eq!(State::parse(s.name()), Some(s));
        }
    }
}
