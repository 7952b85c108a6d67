//! Pull consumers' cursors in the store (`cursors`): one JSON record per consumer name,
//! written by `didgate consume` and `didgate cursor` in short transactions of their own.

use super::delivery::{all_named, record};
use super::layout::get;
use super::{Result, Store, WriteTxn};
use crate::forward::state::{self, ConsumerCursor};

impl WriteTxn<'_> {
    /// Sets a consumer's cursor.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn put_cursor(&mut self, name: &str, c: &ConsumerCursor) -> Result<()> {
        let table = self.dbs.cursors;
        self.put_json(table, name.as_bytes(), &state::encode(c))
    }

    /// Deletes a consumer's cursor; whether there was one.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn delete_cursor(&mut self, name: &str) -> Result<bool> {
        let table = self.dbs.cursors;
        self.remove(table, name.as_bytes())
    }
}

impl Store {
    /// A consumer's cursor.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn cursor(&self, name: &str) -> Result<Option<ConsumerCursor>> {
        let txn = self.read_txn()?;
        get(&txn, self.dbs.cursors, name.as_bytes())?
            .map(|v| record(self.dbs.cursors, name, v))
            .transpose()
    }

    /// Every consumer's cursor, by name.
    ///
    /// # Errors
    /// LMDB errors, or a damaged record.
    pub fn cursors(&self) -> Result<Vec<(String, ConsumerCursor)>> {
        let txn = self.read_txn()?;
        all_named(&txn, self.dbs.cursors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_cursors_are_kept_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
        let mut w = store.begin_write(1).unwrap();
        let c = ConsumerCursor {
            seq: 42,
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        w.put_cursor("etl", &c).unwrap();
        w.put_cursor("bi", &ConsumerCursor::default()).unwrap();
        w.commit().unwrap();
        assert_eq!(store.cursor("etl").unwrap(), Some(c));
        let names: Vec<String> = store
            .cursors()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["bi", "etl"]);
        let mut w = store.begin_write(1).unwrap();
        assert!(w.delete_cursor("etl").unwrap());
        assert!(!w.delete_cursor("etl").unwrap());
        w.commit().unwrap();
        assert_eq!(store.cursor("etl").unwrap(), None);
    }
}
