//! [`Walk`]: the one cursor loop of the store, over a sequence-keyed database, forward from a
//! key or backward from before one, inside a transaction the caller holds.
//!
//! Every read, the check, retention and the migration walk with it, so LMDB's cursor opcodes
//! (`MDB_SET_RANGE`, `MDB_NEXT`, ...) are named here and nowhere else. It yields borrowed
//! values, valid while the transaction lives: copy what must outlive it.

use lmdb::{Cursor, RoCursor, Transaction};

use super::Result;
use super::layout::{Table, key_seq, seq_key};

/// Which way a walk goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Ascending keys, from a first key included.
    Forward,
    /// Descending keys, from before a key (excluded), or from the last key.
    Backward,
}

/// Where the next step of a walk goes.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The first key >= this.
    From(u64),
    /// The last key < this.
    Before(u64),
    /// The last key.
    Last,
    /// The next key in the walk's direction.
    Next,
    Done,
}

/// An iterator over `(seq, value)` of one database, in key order or its reverse.
pub(super) struct Walk<'txn> {
    cursor: RoCursor<'txn>,
    table: Table,
    direction: Direction,
    step: Step,
}

impl<'txn> Walk<'txn> {
    /// Entries with key >= `from`, ascending.
    ///
    /// # Errors
    /// LMDB refused to open a cursor.
    pub fn forward(txn: &'txn impl Transaction, table: Table, from: u64) -> Result<Walk<'txn>> {
        Self::new(txn, table, Direction::Forward, Step::From(from))
    }

    /// Entries with key < `before` (every entry when `None`), descending.
    ///
    /// # Errors
    /// LMDB refused to open a cursor.
    pub fn backward(
        txn: &'txn impl Transaction,
        table: Table,
        before: Option<u64>,
    ) -> Result<Walk<'txn>> {
        let step = before.map_or(Step::Last, Step::Before);
        Self::new(txn, table, Direction::Backward, step)
    }

    fn new(
        txn: &'txn impl Transaction,
        table: Table,
        direction: Direction,
        step: Step,
    ) -> Result<Walk<'txn>> {
        Ok(Walk {
            cursor: txn.open_ro_cursor(table.handle)?,
            table,
            direction,
            step,
        })
    }

    /// One cursor operation; LMDB's "not found" (past either end) is `None`.
    fn get(&self, key: Option<&[u8]>, op: u32) -> Result<Option<(u64, &'txn [u8])>> {
        match self.cursor.get(key, None, op) {
            Ok((Some(k), v)) => Ok(Some((key_seq(self.table, k)?, v))),
            // Every op used here returns the key it lands on.
            Ok((None, _)) => Err(lmdb::Error::Corrupted.into()),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn step(&mut self) -> Result<Option<(u64, &'txn [u8])>> {
        let next_op = match self.direction {
            Direction::Forward => lmdb_sys::MDB_NEXT,
            Direction::Backward => lmdb_sys::MDB_PREV,
        };
        match self.step {
            Step::Done => Ok(None),
            Step::Next => self.get(None, next_op),
            Step::Last => self.get(None, lmdb_sys::MDB_LAST),
            Step::From(k) => self.get(Some(&seq_key(k)), lmdb_sys::MDB_SET_RANGE),
            Step::Before(k) => match self.get(Some(&seq_key(k)), lmdb_sys::MDB_SET_RANGE)? {
                // On the first key >= k: the one before it is the answer.
                Some(_) => self.get(None, lmdb_sys::MDB_PREV),
                None => self.get(None, lmdb_sys::MDB_LAST),
            },
        }
    }
}

impl<'txn> Iterator for Walk<'txn> {
    type Item = Result<(u64, &'txn [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.step();
        self.step = match &item {
            Ok(Some(_)) => Step::Next,
            Ok(None) | Err(_) => Step::Done,
        };
        item.transpose()
    }
}

/// A page of a longer listing, read in one short transaction: the items, and where the next
/// page starts (`None` once the walk reached the end of the database).
///
/// Forward, `next` is the first key not looked at; backward, the last key looked at (the next
/// page's `before`). A page may hold fewer items than it looked at (a filter), even none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// What the page kept.
    pub items: Vec<T>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<u64>,
}

impl<T> Page<T> {
    /// Walks at most `budget` entries, keeping what `read` returns `Some` for. The budget
    /// bounds the transaction's length whatever the filter keeps.
    pub(super) fn collect<'txn>(
        walk: Walk<'txn>,
        budget: usize,
        mut read: impl FnMut(u64, &'txn [u8]) -> Result<Option<T>>,
    ) -> Result<Page<T>> {
        let direction = walk.direction;
        let mut items = Vec::new();
        for (looked, item) in walk.enumerate() {
            let (seq, v) = item?;
            if looked == budget {
                let next = match direction {
                    Direction::Forward => seq,
                    Direction::Backward => seq + 1,
                };
                return Ok(Page {
                    items,
                    next: Some(next),
                });
            }
            if let Some(t) = read(seq, v)? {
                items.push(t);
            }
        }
        Ok(Page { items, next: None })
    }
}

/// An iterator over `(key, value)` of a database whose keys start with a prefix (a
/// destination's name), ascending from `prefix + from`: the walk of the delivery databases,
/// whose keys are a name, a 0 byte and a sequence number.
pub(super) struct PrefixWalk<'txn> {
    cursor: RoCursor<'txn>,
    prefix: Vec<u8>,
    start: Option<Vec<u8>>,
    done: bool,
}

impl<'txn> PrefixWalk<'txn> {
    /// Entries whose key starts with `prefix` and is at least `prefix + from`.
    ///
    /// # Errors
    /// LMDB refused to open a cursor.
    pub fn new(
        txn: &'txn impl Transaction,
        table: Table,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<PrefixWalk<'txn>> {
        let mut start = prefix.to_vec();
        start.extend_from_slice(from);
        Ok(PrefixWalk {
            cursor: txn.open_ro_cursor(table.handle)?,
            prefix: prefix.to_vec(),
            start: Some(start),
            done: false,
        })
    }
}

impl<'txn> Iterator for PrefixWalk<'txn> {
    type Item = Result<(&'txn [u8], &'txn [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let got = match self.start.take() {
            // LMDB refuses an empty key: the whole database starts at its first entry.
            Some(k) if k.is_empty() => self.cursor.get(None, None, lmdb_sys::MDB_FIRST),
            Some(k) => self.cursor.get(Some(&k), None, lmdb_sys::MDB_SET_RANGE),
            None => self.cursor.get(None, None, lmdb_sys::MDB_NEXT),
        };
        match got {
            Ok((Some(k), v)) if self.prefix.is_empty() || k.starts_with(&self.prefix) => {
                Some(Ok((k, v)))
            }
            Ok(_) | Err(lmdb::Error::NotFound) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e.into()))
            }
        }
    }
}
