//! `didgate cursor list|show|set|delete`: the pull consumers' durable positions, as
//! `didgate consume` keeps them. A cursor is the last event consumed; the next batch starts
//! after it (`set NAME 0` consumes everything again).

use std::io::Write;
use std::path::Path;

use super::{Error, Result, emit};
use crate::forward::state::{ConsumerCursor, check_name};
use crate::store::Store;
use crate::timestamp;

fn name(n: &str) -> Result<()> {
    check_name(n).map_err(|e| Error::Usage(format!("consumer {e}")))
}

fn cursor_json(name: &str, c: &ConsumerCursor, last: u64) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "seq": c.seq,
        "lag_events": last.saturating_sub(c.seq),
        "created_at": timestamp::format_ms(c.created_at_ms),
        "updated_at": timestamp::format_ms(c.updated_at_ms),
    })
}

/// `cursor list`: every consumer, its position and how many events it is behind.
///
/// # Errors
/// Store and output errors.
pub fn list(store: &Store, json: bool, out: &mut impl Write) -> Result<()> {
    let last = store.last_seq()?.unwrap_or(0);
    let mut text = String::new();
    let cursors = store.cursors()?;
    if json {
        for (n, c) in &cursors {
            text.push_str(&cursor_json(n, c, last).to_string());
            text.push('\n');
        }
    } else {
        text.push_str(&format!(
            "{:<24} {:>12} {:>12}  {}\n",
            "NAME", "SEQ", "LAG", "UPDATED"
        ));
        for (n, c) in &cursors {
            text.push_str(&format!(
                "{n:<24} {:>12} {:>12}  {}\n",
                c.seq,
                last.saturating_sub(c.seq),
                timestamp::format_ms(c.updated_at_ms)
            ));
        }
    }
    emit(out, &mut text.into_bytes())
}

/// `cursor show NAME`: one consumer as a JSON object. Exit 1 when there is none.
///
/// # Errors
/// [`Error::NoMatch`] for an unknown consumer; store and output errors.
pub fn show(store: &Store, n: &str, out: &mut impl Write) -> Result<()> {
    name(n)?;
    let Some(c) = store.cursor(n)? else {
        return Err(Error::NoMatch(format!("no consumer cursor named {n:?}")));
    };
    let last = store.last_seq()?.unwrap_or(0);
    let mut buf = format!("{}\n", cursor_json(n, &c, last)).into_bytes();
    emit(out, &mut buf)
}

/// Writes a consumer's cursor in a short transaction of its own (beside a running `serve`,
/// serialised by LMDB's write lock).
///
/// # Errors
/// Store errors.
pub fn put(store: &Store, n: &str, seq: u64) -> Result<()> {
    let now = timestamp::now_ms();
    let created = store.cursor(n)?.map_or(now, |c| c.created_at_ms);
    let mut txn = store.begin_write(now)?;
    txn.put_cursor(
        n,
        &ConsumerCursor {
            seq,
            created_at_ms: created,
            updated_at_ms: now,
        },
    )?;
    txn.commit()?;
    Ok(())
}

/// `cursor set NAME SEQ`: the next batch starts after SEQ.
///
/// # Errors
/// Usage, store and output errors.
pub fn set(data: &Path, n: &str, seq: u64, out: &mut impl Write) -> Result<()> {
    name(n)?;
    let store = Store::open_existing_writer(data)?;
    put(&store, n, seq)?;
    let mut buf =
        format!("cursor {n} set to {seq}: the next batch starts after event {seq}\n").into_bytes();
    emit(out, &mut buf)
}

/// `cursor delete NAME`. Exit 1 when there was none.
///
/// # Errors
/// [`Error::NoMatch`] for an unknown consumer; store and output errors.
pub fn delete(data: &Path, n: &str, out: &mut impl Write) -> Result<()> {
    name(n)?;
    let store = Store::open_existing_writer(data)?;
    let mut txn = store.begin_write(timestamp::now_ms())?;
    let found = txn.delete_cursor(n)?;
    txn.commit()?;
    if !found {
        return Err(Error::NoMatch(format!("no consumer cursor named {n:?}")));
    }
    let mut buf = format!("cursor {n} deleted\n").into_bytes();
    emit(out, &mut buf)
}
