//! `didgate quarantine [list | show SEQ]`: bodies that were kept but did not decode, with the
//! reason. They were answered 200 (the sender cannot fix them), so this is where an operator
//! finds them.

use std::io::Write;

use serde_json::json;

use super::{Error, Result, SCAN_CHUNK, emit};
use crate::store::{Quarantined, Store};
use crate::timestamp;

/// Characters of the body shown per entry by `list` (`show` gives it whole).
pub const PREVIEW_CHARS: usize = 120;

/// Lists every quarantined body, one JSON line each, with a preview of the body.
///
/// # Errors
/// Store and output errors.
pub fn list(store: &Store, out: &mut impl Write) -> Result<()> {
    let mut from = 0;
    let mut buf = Vec::new();
    loop {
        let page = store.quarantine_page(from, SCAN_CHUNK)?;
        for q in &page.items {
            let text = String::from_utf8_lossy(&q.event.body);
            let preview: String = text.chars().take(PREVIEW_CHARS).collect();
            buf.extend_from_slice(entry(q, "body_preview", &preview).to_string().as_bytes());
            buf.push(b'\n');
        }
        emit(out, &mut buf)?;
        match page.next {
            Some(next) => from = next,
            None => return Ok(()),
        }
    }
}

/// Shows one quarantined body: a JSON line with the body as text, or with `raw` the exact bytes.
///
/// # Errors
/// [`Error::NoMatch`] when there is no such entry; store and output errors.
pub fn show(store: &Store, seq: u64, raw: bool, out: &mut impl Write) -> Result<()> {
    let Some(q) = store.quarantined(seq)? else {
        return Err(Error::NoMatch(format!("no quarantined body {seq}")));
    };
    let mut buf = Vec::new();
    if raw {
        buf.extend_from_slice(&q.event.body);
    } else {
        let text = String::from_utf8_lossy(&q.event.body);
        buf.extend_from_slice(entry(&q, "body", &text).to_string().as_bytes());
        buf.push(b'\n');
    }
    emit(out, &mut buf)
}

fn entry(q: &Quarantined, body_key: &str, body: &str) -> serde_json::Value {
    let mut v = json!({
        "seq": q.seq,
        "stored_at": timestamp::format_ms(q.event.stored_at_ms),
        "hook": q.event.kind,
        "reason": q.reason,
        "content_type": String::from_utf8_lossy(&q.event.content_type),
        "peer": q.event.peer.map(|p| p.to_string()),
        "body_bytes": q.event.body.len(),
    });
    v[body_key] = json!(body);
    v
}
