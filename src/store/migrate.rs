//! Migration of older schemas, run by the writer's open: schema 1 (hash- and callid-keyed
//! indexes) to schema 2 (sequence-keyed digests and call blocks), and the call index and
//! rollups of schema 5 built from the stored bodies.

use lmdb::{Cursor, Environment, Transaction, WriteFlags};

use super::layout::{
    CALL_BLOCK, Digest, NEXT_SEQ_KEY, SCHEMA_VERSION, Table, body_hash, callid_hash, decode_at,
    get_seq, next_seq, seq_key, write_call_block,
};
use super::walk::Walk;
use super::{Dbs, Error, Result};

/// Entries per write transaction when a schema-1 store is migrated.
const MIGRATION_CHUNK: usize = 50_000;

/// Opens a database of the old schema, if it is there.
fn old_db(env: &Environment, name: &'static str) -> Result<Option<Table>> {
    match env.open_db(Some(name)) {
        Ok(handle) => Ok(Some(Table { handle, name })),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites a schema-1 store to schema 2 in place: digests of every body (and of every
/// indexed callid, from the old `calls` keys), the call blocks, then the old `calls` and
/// `dedup` databases are dropped and the version is raised, in that order. Each step commits
/// in chunks and is idempotent, so an interrupted migration simply runs again.
pub(super) fn migrate_from_v1(env: &Environment, dbs: Dbs) -> Result<()> {
    crate::ops::log::info(format_args!(
        "migrating the store from schema 1 to {SCHEMA_VERSION}"
    ));
    // 1. A body digest per event.
    let mut from = 0u64;
    loop {
        let mut txn = env.begin_rw_txn()?;
        let mut chunk = Vec::new();
        for item in Walk::forward(&txn, dbs.events, from)?.take(MIGRATION_CHUNK) {
            let (seq, v) = item?;
            chunk.push((seq, body_hash(decode_at(seq, v)?.body)));
        }
        for &(seq, hash) in &chunk {
            txn.put(
                dbs.digests.handle,
                &seq_key(seq),
                &hash.to_be_bytes(),
                WriteFlags::empty(),
            )?;
        }
        txn.commit()?;
        match chunk.last() {
            Some(&(seq, _)) if chunk.len() == MIGRATION_CHUNK => from = seq + 1,
            _ => break,
        }
    }
    // 2. The callid of each entry of the old call index (callid, 0x00, seq) into its digest.
    let old_calls = old_db(env, "calls")?;
    if let Some(calls) = old_calls {
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut txn = env.begin_rw_txn()?;
            let mut chunk = Vec::new();
            let mut next = None;
            {
                // Keys are (callid, 0, seq), not sequence numbers: LMDB's own iterator.
                let mut cursor = txn.open_ro_cursor(calls.handle)?;
                let items = if from.is_empty() {
                    cursor.iter_start()
                } else {
                    cursor.iter_from(&from)
                };
                for item in items {
                    let (k, _) = item?;
                    if chunk.len() == MIGRATION_CHUNK {
                        next = Some(k.to_vec());
                        break;
                    }
                    let Some(at) = k.len().checked_sub(9).filter(|&at| at > 0) else {
                        continue;
                    };
                    let seq_bytes: [u8; 8] =
                        k[at + 1..].try_into().map_err(|_| Error::Corrupt {
                            db: calls.name,
                            what: "a key without its sequence number".to_string(),
                        })?;
                    let callid = String::from_utf8_lossy(&k[..at]);
                    chunk.push((u64::from_be_bytes(seq_bytes), callid_hash(&callid)));
                }
            }
            for &(seq, hash) in &chunk {
                let body = match get_seq(&txn, dbs.digests, seq)? {
                    Some(d) => Digest::decode(seq, d)?.body,
                    None => continue,
                };
                let (bytes, len) = Digest {
                    body,
                    callid: Some(hash),
                }
                .encode();
                txn.put(
                    dbs.digests.handle,
                    &seq_key(seq),
                    &&bytes[..len],
                    WriteFlags::empty(),
                )?;
            }
            txn.commit()?;
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
    }
    // 3. The call blocks of every complete block, and the sequence high-water mark.
    let next = {
        let txn = env.begin_ro_txn()?;
        next_seq(&txn, dbs)?
    };
    let blocks: Vec<u64> = (0..next / CALL_BLOCK).collect();
    for chunk in blocks.chunks(MIGRATION_CHUNK / CALL_BLOCK as usize) {
        let mut txn = env.begin_rw_txn()?;
        for &block in chunk {
            write_call_block(&mut txn, dbs, block)?;
        }
        txn.commit()?;
    }
    // 4. Drop the old indexes (the version is raised once the call index is built too).
    let old_dedup = old_db(env, "dedup")?;
    let mut txn = env.begin_rw_txn()?;
    for db in [old_calls, old_dedup].into_iter().flatten() {
        // SAFETY: neither handle is used after this drop (LMDB's rule for mdb_drop).
        unsafe { txn.drop_db(db.handle)? };
    }
    txn.put(
        dbs.meta.handle,
        &NEXT_SEQ_KEY,
        &next.to_be_bytes(),
        WriteFlags::empty(),
    )?;
    txn.commit()?;
    Ok(())
}

/// Builds the call index and rollups (schema 5) from every stored event, then the caller
/// raises the version: interrupted, it runs again from the start.
pub(super) fn build_call_index(env: &Environment, dbs: Dbs) -> Result<()> {
    crate::ops::log::info(format_args!(
        "migrating the store to schema {SCHEMA_VERSION}: indexing calls by call time"
    ));
    let started = std::time::Instant::now();
    let indexed = super::calls::build(env, dbs, MIGRATION_CHUNK)?;
    crate::ops::log::info(format_args!(
        "store migrated to schema {SCHEMA_VERSION}: {indexed} calls, recordings and SMS \
         indexed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
