//! `check`: verifies the store's invariants in one read transaction and reports each problem
//! in words; damage it can see is a finding, never an error of its own.

use std::collections::BTreeMap;

use lmdb::Transaction;

use super::layout::{CALL_BLOCK, Digest, block_matches, body_hash, get_seq, next_seq, seq_key};
use super::read::{Counts, Quarantined};
use super::walk::Walk;
use super::{Result, Store};
use crate::event;
use crate::timestamp;

/// What [`Store::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Events looked at.
    pub events: u64,
    /// Quarantined bodies looked at.
    pub quarantined: u64,
    /// Events findable by callid: entries of the complete call blocks plus the events with a
    /// callid after the last complete block (found through their digests until their block
    /// is complete).
    pub call_entries: u64,
    /// Of `call_entries`, those after the last complete block.
    pub call_entries_unblocked: u64,
    /// CDRs, recordings and SMS in the call index, each checked against its body, and the
    /// rollups recounted from them.
    pub calls_indexed: u64,
    /// Each inconsistency, in words; empty when the store is consistent.
    pub problems: Vec<String>,
}

/// What the records say the counters should be.
#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<String, u64>,
    by_day: BTreeMap<(String, String), u64>,
}

impl Store {
    /// Verifies the store's invariants in one read transaction: every record decodes, stamps
    /// never decrease along the sequence, every event has a digest of its body and no digest
    /// is left without its event, every callid digest in a complete block has its block entry,
    /// every quarantine entry decodes, the counters equal what is stored, and the call index
    /// and rollups equal a recount from the bodies. Returns what it
    /// found; an empty `problems` means consistent.
    ///
    /// # Errors
    /// LMDB errors (a problem with the data itself is reported, not an error).
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut tally = Tally::default();
        self.check_records(&mut report, &mut tally)?;
        // The counters are read in a transaction of their own: one read transaction per
        // thread at a time is LMDB's rule.
        match self.counts() {
            Ok(counts) => check_counts(&mut report, &counts, &tally),
            Err(e) => report.problems.push(format!("counters: {e}")),
        }
        self.check_deliveries(&mut report.problems)?;
        let txn = self.read_txn()?;
        match super::calls::verify(&txn, self.dbs, &mut report.problems) {
            Ok(n) => report.calls_indexed = n,
            Err(e) => report.problems.push(format!("call index: {e}")),
        }
        Ok(report)
    }

    fn check_records(&self, report: &mut CheckReport, tally: &mut Tally) -> Result<()> {
        let txn = self.read_txn()?;
        let mut last_stamp = i64::MIN;
        for item in Walk::forward(&txn, self.dbs.events, 0)? {
            let (seq, v) = match item {
                Ok(item) => item,
                Err(e) => {
                    report.problems.push(format!("events: {e}"));
                    break;
                }
            };
            report.events += 1;
            let rec = match event::decode_record(v) {
                Ok(rec) => rec,
                Err(e) => {
                    report.problems.push(format!("event {seq}: {e}"));
                    continue;
                }
            };
            if rec.stored_at_ms < last_stamp {
                report
                    .problems
                    .push(format!("event {seq}: stamped before its predecessor"));
            }
            last_stamp = rec.stored_at_ms;
            *tally.by_kind.entry(rec.kind.to_string()).or_default() += 1;
            *tally
                .by_day
                .entry((timestamp::day_of_ms(rec.stored_at_ms), rec.kind.to_string()))
                .or_default() += 1;
            match get_seq(&txn, self.dbs.digests, seq)?.map(|d| Digest::decode(seq, d)) {
                Some(Ok(d)) if d.body == body_hash(rec.body) => {}
                Some(Ok(_)) => report
                    .problems
                    .push(format!("event {seq}: digest does not match the body")),
                Some(Err(e)) => report.problems.push(format!("event {seq}: {e}")),
                None => report.problems.push(format!("event {seq}: no digest")),
            }
        }
        let digests = txn.stat(self.dbs.digests.handle)?.entries() as u64;
        if digests != report.events {
            report
                .problems
                .push(format!("{digests} digests for {} events", report.events));
        }
        self.check_call_blocks(&txn, report)?;
        for item in Walk::forward(&txn, self.dbs.quarantine, 0)? {
            report.quarantined += 1;
            if let Err(e) = item.and_then(|(seq, v)| Quarantined::decode(seq, v)) {
                report.problems.push(format!("quarantine entry: {e}"));
            }
        }
        Ok(())
    }

    fn check_call_blocks(&self, txn: &impl Transaction, report: &mut CheckReport) -> Result<()> {
        let indexed_to = next_seq(txn, self.dbs)? / CALL_BLOCK * CALL_BLOCK;
        for item in Walk::forward(txn, self.dbs.callblocks, 0)? {
            let (block, v) = item?;
            report.call_entries += (v.len() / 8) as u64;
            if v.len() % 8 != 0 || block >= indexed_to / CALL_BLOCK {
                report
                    .problems
                    .push(format!("call block {block} is malformed"));
            }
        }
        for item in Walk::forward(txn, self.dbs.digests, 0)? {
            let (seq, v) = item?;
            let digest = match Digest::decode(seq, v) {
                Ok(d) => d,
                // Reported with its event above.
                Err(_) => continue,
            };
            if seq >= indexed_to {
                if digest.callid.is_some() {
                    report.call_entries += 1;
                    report.call_entries_unblocked += 1;
                }
                if txn.get(self.dbs.events.handle, &seq_key(seq)).is_err() {
                    report.problems.push(format!("digest {seq} has no event"));
                }
                continue;
            }
            if let Some(hash) = digest.callid {
                let block = seq / CALL_BLOCK;
                let found = get_seq(txn, self.dbs.callblocks, block)?.is_some_and(|entries| {
                    block_matches(entries, hash).any(|o| o == seq % CALL_BLOCK)
                });
                if !found {
                    report
                        .problems
                        .push(format!("event {seq}: missing from call block {block}"));
                }
            }
            if txn.get(self.dbs.events.handle, &seq_key(seq)).is_err() {
                report.problems.push(format!("digest {seq} has no event"));
            }
        }
        Ok(())
    }
}

fn check_counts(report: &mut CheckReport, counts: &Counts, tally: &Tally) {
    if counts.by_kind != tally.by_kind {
        report.problems.push(format!(
            "kind counters {:?} differ from stored events {:?}",
            counts.by_kind, tally.by_kind
        ));
    }
    let counted_days: BTreeMap<(String, String), u64> = counts
        .by_day
        .iter()
        .flat_map(|(d, kinds)| kinds.iter().map(move |(k, n)| ((d.clone(), k.clone()), *n)))
        .collect();
    if counted_days != tally.by_day {
        report
            .problems
            .push("per-day counters differ from stored events".to_string());
    }
}
