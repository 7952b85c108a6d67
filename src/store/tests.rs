//! The store's tests: a real LMDB in a temp directory each.

use super::*;
use crate::event::{BodyFormat, Event};
use lmdb::{DatabaseFlags, WriteFlags};
use os::map_line_suffix;

fn event(kind: &str, body: &str, callid: Option<&str>) -> Event {
    Event {
        kind: kind.to_string(),
        format: BodyFormat::Json,
        peer: None,
        content_type: b"application/json".to_vec(),
        body: body.as_bytes().to_vec(),
        callid: callid.map(str::to_string),
        call: None,
    }
    .with_call_facts()
}

const MAP: usize = 16 << 20;

fn add(w: &mut WriteTxn<'_>, ev: &Event) -> u64 {
    w.append_event(ev, body_hash(&ev.body)).unwrap()
}

/// Files every committed event in the call index, decoding the bodies (as after a restart).
fn file_calls(store: &Store) {
    let mut w = store.begin_write(0).unwrap();
    assert_eq!(
        w.index_calls(&mut std::collections::VecDeque::new(), usize::MAX)
            .unwrap(),
        0
    );
    w.commit().unwrap();
}

/// Resident kilobytes of this process's mappings of `dir`'s data file.
fn mapped_kib(dir: &Path) -> u64 {
    let suffix = map_line_suffix(dir).unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut ours = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            // A mapping's header line; its properties follow.
            ours = line.ends_with(&suffix);
        } else if ours && let Some(kib) = line.strip_prefix("Rss:") {
            total += kib.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn mapped_pages_are_released_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
    let mut w = store.begin_write(1_000).unwrap();
    for _ in 0..200 {
        add(&mut w, &event("cdr", &body, None));
    }
    w.commit().unwrap();
    let before = store.events_forward(0, 1000, |_, _| true).unwrap().items;
    assert_eq!(before.len(), 200);
    assert!(mapped_kib(dir.path()) >= 400, "reading maps the pages");
    store.release_mapped_pages().unwrap();
    assert_eq!(mapped_kib(dir.path()), 0);
    assert_eq!(
        store.events_forward(0, 1000, |_, _| true).unwrap().items,
        before
    );
}

#[test]
fn zero_fill_adds_room_that_commits_then_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
    let mut w = store.begin_write(1_000).unwrap();
    add(&mut w, &event("cdr", &body, None));
    w.commit().unwrap();
    let before = store.space().unwrap();
    assert_eq!(store.zero_fill(1 << 20).unwrap(), 1 << 20);
    let filled = store.space().unwrap();
    let end = before.file_bytes.max(before.used_bytes);
    assert_eq!(filled.file_bytes, end + (1 << 20));
    assert_eq!(filled.used_bytes, before.used_bytes);
    let bytes = std::fs::read(dir.path().join("data.mdb")).unwrap();
    assert!(bytes[end as usize..].iter().all(|&b| b == 0));

    // Commits land in the filled room: the file does not grow, the data does.
    for _ in 0..100 {
        let mut w = store.begin_write(2_000).unwrap();
        add(&mut w, &event("cdr", &body, None));
        w.commit().unwrap();
    }
    let used = store.space().unwrap();
    assert_eq!(used.file_bytes, filled.file_bytes);
    assert!(used.used_bytes > filled.used_bytes + 64 * 1024, "{used:?}");

    // Never past the map's end.
    let left = MAP as u64 - used.file_bytes;
    assert_eq!(store.zero_fill(u64::MAX).unwrap(), left);
    assert_eq!(store.zero_fill(1 << 20).unwrap(), 0);
    assert_eq!(store.space().unwrap().file_bytes, MAP as u64);

    // Everything reads back, also after reopening.
    assert!(store.check().unwrap().problems.is_empty());
    drop(store);
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    assert_eq!(
        store
            .events_forward(0, 1000, |_, _| true)
            .unwrap()
            .items
            .len(),
        101
    );
    assert!(store.check().unwrap().problems.is_empty());
}

#[test]
fn appends_in_order_and_reads_back_after_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(1_000).unwrap();
    assert_eq!(add(&mut w, &event("cdr", "{\"a\":1}", Some("c1"))), 1);
    assert_eq!(add(&mut w, &event("recording", "{\"b\":2}", Some("c1"))), 2);
    let reader = Store::open_reader(dir.path()).unwrap();
    assert_eq!(
        reader.last_seq().unwrap(),
        None,
        "uncommitted writes are invisible"
    );
    w.commit().unwrap();
    assert_eq!(reader.last_seq().unwrap(), Some(2));
    let scan = reader.events_forward(0, 10, |_, _| true).unwrap();
    assert_eq!(scan.next, None);
    let all = scan.items;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].body, b"{\"a\":1}");
    assert_eq!(all[1].stored_at_ms, 1_000);
    let call = reader.call_events("c1", |_| true).unwrap();
    assert_eq!(call.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(
        reader.call_events("c", |_| true).unwrap().is_empty(),
        "prefix of a callid is not it"
    );
    let counts = reader.counts().unwrap();
    assert_eq!(counts.by_kind.get("cdr"), Some(&1));
    assert_eq!(counts.by_day["1970-01-01"].get("recording"), Some(&1));
}

/// Regression: quarantine numbers were reused once the newest entries were deleted, so
/// `quarantine show N` showed another body.
#[test]
fn quarantine_numbers_never_repeat_after_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(1).unwrap();
    assert_eq!(
        w.append_quarantine("a", &event("cdr", "{", None)).unwrap(),
        1
    );
    assert_eq!(
        w.append_quarantine("b", &event("cdr", "[", None)).unwrap(),
        2
    );
    w.commit().unwrap();
    let mut w = store.begin_write(2).unwrap();
    w.delete_quarantined(1).unwrap();
    w.delete_quarantined(2).unwrap();
    w.commit().unwrap();
    drop(store);
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(3).unwrap();
    assert_eq!(
        w.append_quarantine("c", &event("cdr", "]", None)).unwrap(),
        3
    );
    w.commit().unwrap();
    assert_eq!(store.quarantined(1).unwrap(), None);
    assert!(store.check().unwrap().problems.is_empty());
}

#[test]
fn dropped_transaction_stores_nothing_and_reuses_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(1).unwrap();
    add(&mut w, &event("cdr", "{}", None));
    drop(w);
    let mut w = store.begin_write(2).unwrap();
    assert_eq!(add(&mut w, &event("cdr", "{}", None)), 1);
    w.commit().unwrap();
}

#[test]
fn same_event_needs_same_kind_same_body_inside_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(5_000).unwrap();
    let a = event("cdr", "{\"x\":1}", None);
    assert!(!w.is_same_event(1, &a, 0).unwrap(), "nothing stored yet");
    assert_eq!(add(&mut w, &a), 1);
    assert!(
        w.is_same_event(1, &a, 0).unwrap(),
        "seen within the same batch"
    );
    w.commit().unwrap();
    let w = store.begin_write(6_000).unwrap();
    assert!(w.is_same_event(1, &a, 5_000).unwrap());
    assert!(
        !w.is_same_event(1, &a, 5_001).unwrap(),
        "outside the window"
    );
    assert!(
        !w.is_same_event(1, &event("sms", "{\"x\":1}", None), 0)
            .unwrap()
    );
    assert!(
        !w.is_same_event(1, &event("cdr", "{\"x\":2}", None), 0)
            .unwrap()
    );
}

#[test]
fn calls_are_found_in_complete_blocks_and_in_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 64 << 20).unwrap();
    let n = CALL_BLOCK * 2 + 100;
    // Call k has events k and k + 500 (a CDR and its recording, apart); every tenth event
    // has no callid (an SMS).
    let callid = |seq: u64| (!seq.is_multiple_of(10)).then(|| format!("call-{}", seq % 500));
    for chunk in (1..=n).collect::<Vec<_>>().chunks(300) {
        let mut w = store.begin_write(1).unwrap();
        for &seq in chunk {
            let id = callid(seq);
            let body = format!("{{\"n\":{seq}}}");
            assert_eq!(add(&mut w, &event("cdr", &body, id.as_deref())), seq);
        }
        w.commit().unwrap();
    }
    let reader = Store::open_reader(dir.path()).unwrap();
    for probe in [1, 499, 1023, 1024, 1500, 2047, 2048, 2100, 2148] {
        let Some(id) = callid(probe) else { continue };
        let want: Vec<u64> = (1..=n).filter(|&s| callid(s) == Some(id.clone())).collect();
        let got: Vec<u64> = reader
            .call_events(&id, |_| true)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, want, "{id}");
    }
    let report = reader.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let with_callid =
        |seqs: std::ops::Range<u64>| seqs.filter(|&s| s > 0 && s % 10 != 0).count() as u64;
    // Regression: check counted only the complete blocks (0 on a young store) while `get`
    // found calls in the open block too.
    let blocked = with_callid(0..CALL_BLOCK * 2);
    let unblocked = with_callid(CALL_BLOCK * 2..n + 1);
    assert_eq!(
        (report.call_entries, report.call_entries_unblocked),
        (blocked + unblocked, unblocked)
    );
}

#[test]
fn a_schema_1_store_is_migrated_on_open_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let n = CALL_BLOCK + 5;
    {
        // Schema 1 as the previous release wrote it.
        let env = Environment::new()
            .set_max_dbs(MAX_DBS)
            .set_map_size(MAP)
            .open(dir.path())
            .unwrap();
        let db = |name| env.create_db(Some(name), DatabaseFlags::empty()).unwrap();
        let (events, calls, dedup, counts, meta) = (
            db("events"),
            db("calls"),
            db("dedup"),
            db("counts"),
            db("meta"),
        );
        db("quarantine");
        let mut txn = env.begin_rw_txn().unwrap();
        txn.put(
            meta,
            b"schema_version",
            &1u32.to_be_bytes(),
            WriteFlags::empty(),
        )
        .unwrap();
        for seq in 1..=n {
            let ev = event("cdr", &format!("{{\"n\":{seq}}}"), None);
            let mut rec = Vec::new();
            ev.as_record(1).encode(&mut rec);
            let key = seq.to_be_bytes();
            txn.put(events, &key, &rec, WriteFlags::empty()).unwrap();
            let mut call = format!("call-{}", seq % 7).into_bytes();
            call.push(0);
            call.extend_from_slice(&key);
            txn.put(calls, &call, &[], WriteFlags::empty()).unwrap();
            let mut d = [0u8; 24];
            d[16..].copy_from_slice(&key);
            d[0] = seq as u8;
            txn.put(dedup, &d, &[], WriteFlags::empty()).unwrap();
        }
        txn.put(counts, b"events/cdr", &n.to_be_bytes(), WriteFlags::empty())
            .unwrap();
        txn.put(
            counts,
            b"day/1970-01-01/cdr",
            &n.to_be_bytes(),
            WriteFlags::empty(),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open_reader(dir.path()),
        Err(Error::NeedsMigration { found: 1 })
    ));
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let got: Vec<u64> = store
        .call_events("call-3", |_| true)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, (1..=n).filter(|s| s % 7 == 3).collect::<Vec<_>>());
    let mut w = store.begin_write(2).unwrap();
    assert_eq!(add(&mut w, &event("cdr", "{}", None)), n + 1);
    w.commit().unwrap();
    drop(store);
    let reader = Store::open_reader(dir.path()).unwrap();
    assert_eq!(reader.last_seq().unwrap(), Some(n + 1));
    let env = Environment::new()
        .set_max_dbs(MAX_DBS)
        .open(dir.path())
        .unwrap();
    for old in ["calls", "dedup"] {
        assert!(
            matches!(env.open_db(Some(old)), Err(lmdb::Error::NotFound)),
            "{old}"
        );
    }
}

#[test]
fn sequence_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1).unwrap();
        add(&mut w, &event("cdr", "{}", None));
        w.append_quarantine("invalid JSON", &event("cdr", "{", None))
            .unwrap();
        w.commit().unwrap();
    }
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(2).unwrap();
    assert_eq!(add(&mut w, &event("cdr", "{\"n\":2}", None)), 2);
    assert_eq!(
        w.append_quarantine("x", &event("cdr", "[", None)).unwrap(),
        2
    );
    w.commit().unwrap();
    let q = store.quarantined(1).unwrap().unwrap();
    assert_eq!(q.reason, "invalid JSON");
    assert_eq!(q.event.body, b"{");
    assert_eq!(store.counts().unwrap().quarantined, 2);
}

#[test]
fn first_seq_at_finds_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    for (i, t) in [10, 10, 20, 30, 30, 40].iter().enumerate() {
        let mut w = store.begin_write(*t).unwrap();
        add(&mut w, &event("cdr", &format!("{{\"i\":{i}}}"), None));
        w.commit().unwrap();
    }
    let cases = [
        (0, Some(1)),
        (10, Some(1)),
        (11, Some(3)),
        (30, Some(4)),
        (40, Some(6)),
    ];
    for (t, want) in cases {
        assert_eq!(store.first_seq_at(t).unwrap(), want, "t={t}");
    }
    assert_eq!(store.first_seq_at(41).unwrap(), None);
    let seqs = |s: &Page<StoredEvent>| s.items.iter().map(|e| e.seq).collect::<Vec<_>>();
    let back = store.events_backward(None, 2, |_, _| true).unwrap();
    assert_eq!((seqs(&back), back.next), (vec![6, 5], Some(5)));
    let back = store
        .events_backward(back.next, 10, |_, r| r.stored_at_ms != 20)
        .unwrap();
    assert_eq!((seqs(&back), back.next), (vec![4, 2, 1], None));
    let fwd = store
        .events_forward(2, 3, |_, r| r.stored_at_ms == 30)
        .unwrap();
    assert_eq!((seqs(&fwd), fwd.next), (vec![4], Some(5)));
}

#[test]
fn check_finds_a_consistent_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(7).unwrap();
    add(&mut w, &event("cdr", "{\"a\":1}", Some("c")));
    add(&mut w, &event("sms", "{\"b\":1}", None));
    w.append_quarantine("bad", &event("cdr", "{", None))
        .unwrap();
    w.commit().unwrap();
    let report = store.check().unwrap();
    assert_eq!(
        (
            report.events,
            report.quarantined,
            report.call_entries,
            report.call_entries_unblocked
        ),
        (2, 1, 1, 1),
        "no block is complete yet: the one callid is found through its digest"
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn reader_refuses_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open_reader(&dir.path().join("nope")),
        Err(Error::Missing(_))
    ));
}

#[test]
fn a_schema_2_store_is_upgraded_with_its_recent_recordings_queued() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::timestamp::now_ms();
    let eight_days = 8 * 24 * 3600 * 1000;
    {
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(now - eight_days).unwrap();
        add(&mut w, &event("recording", "{\"n\":1}", None));
        w.commit().unwrap();
        let mut w = store.begin_write(now).unwrap();
        add(&mut w, &event("recording", "{\"n\":2}", None));
        add(&mut w, &event("cdr", "{\"n\":3}", None));
        w.commit().unwrap();
        // Back to schema 2, as the previous release left it: no archive databases.
        let mut txn = store.env.begin_rw_txn().unwrap();
        txn.put(
            store.dbs.meta.handle,
            &SCHEMA_KEY,
            &2u32.to_be_bytes(),
            WriteFlags::empty(),
        )
        .unwrap();
        // SAFETY: no other transaction or handle of these databases is in use.
        unsafe {
            txn.drop_db(store.dbs.archive.handle).unwrap();
            txn.drop_db(store.dbs.archive_open.handle).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open_reader(dir.path()),
        Err(Error::NeedsMigration { found: 2 })
    ));
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    assert!(
        store.archive_record(1).unwrap().is_none(),
        "older than 7 days"
    );
    let r = store.archive_record(2).unwrap().unwrap();
    assert_eq!(r.state, crate::archive::record::State::Pending);
    assert!(
        store.archive_record(3).unwrap().is_none(),
        "not a recording"
    );
    assert_eq!(store.archive_backlog().unwrap(), 1);
}

#[test]
fn archive_listings_merge_records_and_never_tried_recordings_page_by_page() {
    use crate::archive::record::{ArchiveRecord, State};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let mut w = store.begin_write(1_000).unwrap();
    for n in 1..=9u64 {
        let seq = add(&mut w, &event("recording", &format!("{{\"n\":{n}}}"), None));
        if n % 3 == 0 {
            let mut r = ArchiveRecord::pending(1_000);
            r.state = State::Fetched;
            r.next_try_ms = None;
            w.put_archive(seq, &r).unwrap();
        } else {
            w.queue_archive(seq, 1_000).unwrap();
        }
    }
    w.commit().unwrap();
    for budget in [1, 2, 4, 100] {
        let mut seen = Vec::new();
        let mut from = 0;
        loop {
            let page = store.archive_entries(from, budget, |_, _| true).unwrap();
            seen.extend(page.items.iter().map(|e| (e.seq, e.record.state)));
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        let want: Vec<(u64, State)> = (1..=9)
            .map(|s| {
                (
                    s,
                    if s % 3 == 0 {
                        State::Fetched
                    } else {
                        State::Pending
                    },
                )
            })
            .collect();
        assert_eq!(seen, want, "budget {budget}");
    }
    assert_eq!(store.archive_backlog().unwrap(), 6);
    assert_eq!(
        store.archive_record(2).unwrap().unwrap().state,
        State::Pending
    );
    let due = store.archive_due(0, 1_000, 10, 100, |s| s == 1).unwrap();
    assert_eq!(
        due.due.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [2, 4, 5, 7, 8]
    );
}

#[test]
fn rollups_follow_archive_states_and_deletions_and_equal_a_recount() {
    use crate::archive::record::{ArchiveRecord, State};
    use crate::call::tally::BUCKET_MS;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let cdr = |id: &str, billsec: u32| {
        event(
            "cdr",
            &format!(
                r#"{{"calldate":"2026-05-12T05:17:58Z","callid":"{id}","disposition":"ANSWERED","billsec":{billsec}}}"#
            ),
            Some(id),
        )
    };
    let mut w = store.begin_write(1_000).unwrap();
    add(&mut w, &cdr("a", 61));
    let longest = add(&mut w, &cdr("b", 300));
    let rec = add(
        &mut w,
        &event(
            "recording",
            r#"{"calldate":"2026-05-12T05:17:58Z","callid":"a","recording_url":"https://x/a.mp3"}"#,
            Some("a"),
        ),
    );
    w.commit().unwrap();
    let bucket = 1_778_563_078_000i64.div_euclid(BUCKET_MS);
    let tally = |s: &Store| s.rollups(bucket, bucket + 1).unwrap()[0].1;
    // Not filed yet: read from the bodies.
    assert_eq!(store.call_index_lag().unwrap(), 3);
    assert_eq!((tally(&store).calls, tally(&store).longest), (2, 300));
    file_calls(&store);
    assert_eq!(store.call_index_lag().unwrap(), 0);
    assert_eq!((tally(&store).calls, tally(&store).longest), (2, 300));

    let mut w = store.begin_write(2_000).unwrap();
    let mut r = ArchiveRecord::pending(2_000);
    r.state = State::Fetched;
    r.next_try_ms = None;
    w.put_archive(rec, &r).unwrap();
    w.commit().unwrap();
    assert_eq!(tally(&store).archived, 1);
    assert!(store.check().unwrap().problems.is_empty());

    // Retention takes the longest call: the quarter hour is recounted.
    let mut w = store.begin_write(3_000).unwrap();
    let page = w.oldest_events(longest, 1).unwrap();
    w.delete_event(&page.items[0]).unwrap();
    w.commit().unwrap();
    let t = tally(&store);
    assert_eq!((t.calls, t.longest, t.billsec, t.archived), (1, 61, 61, 1));
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls_indexed, 2);

    // A damaged rollup is found.
    {
        let mut txn = store.env.begin_rw_txn().unwrap();
        let mut bad = t;
        bad.calls = 7;
        let key = ((bucket as u64) ^ (1 << 63)).to_be_bytes();
        txn.put(
            store.dbs.rollups.handle,
            &key,
            &bad.encode(),
            WriteFlags::empty(),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    let problems = store.check().unwrap().problems;
    assert!(
        problems.iter().any(|p| p.starts_with("rollups:")),
        "{problems:?}"
    );
}

#[test]
fn a_schema_4_store_gets_its_call_index_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1_000).unwrap();
        for i in 0..50 {
            let body = format!(
                r#"{{"calldate":"2026-05-1{}T05:17:58Z","callid":"m{i}","billsec":{i},"disposition":"ANSWERED"}}"#,
                i % 3
            );
            add(&mut w, &event("cdr", &body, None));
        }
        w.commit().unwrap();
        // As a schema-4 didgate left it: no index, no rollups.
        let mut txn = store.env.begin_rw_txn().unwrap();
        txn.clear_db(store.dbs.calltime.handle).unwrap();
        txn.clear_db(store.dbs.rollups.handle).unwrap();
        txn.put(
            store.dbs.meta.handle,
            &SCHEMA_KEY,
            &4u32.to_be_bytes(),
            WriteFlags::empty(),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open_reader(dir.path()),
        Err(Error::NeedsMigration { found: 4 })
    ));
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls_indexed, 50);
    let unfiled = store.unfiled().unwrap();
    assert!(unfiled.is_empty());
    let (page, _) = store.calls_page(&unfiled, (0, 0), i64::MAX, 100).unwrap();
    assert_eq!(page.len(), 50);
}

#[test]
fn a_schema_5_store_is_wholly_filed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_writer(dir.path(), MAP).unwrap();
        let mut w = store.begin_write(1_000).unwrap();
        for i in 0..5 {
            let body = format!(r#"{{"calldate":"2026-05-12T05:17:58Z","callid":"f{i}"}}"#);
            add(&mut w, &event("cdr", &body, None));
        }
        w.commit().unwrap();
        file_calls(&store);
        // As a schema-5 didgate left it: every event filed in its own commit, no watermark.
        let mut txn = store.env.begin_rw_txn().unwrap();
        txn.del(store.dbs.meta.handle, &layout::INDEXED_SEQ_KEY, None)
            .unwrap();
        txn.put(
            store.dbs.meta.handle,
            &SCHEMA_KEY,
            &5u32.to_be_bytes(),
            WriteFlags::empty(),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open_reader(dir.path()),
        Err(Error::NeedsMigration { found: 5 })
    ));
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    assert_eq!(store.call_index_lag().unwrap(), 0);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls_indexed, 5);
}

/// Every page of `[from, until)` in `max`-entry pages: (time, seq) of each entry.
fn all_calls(store: &Store, max: usize) -> Vec<(i64, u64)> {
    let unfiled = store.unfiled().unwrap();
    let mut out = Vec::new();
    let mut from = (i64::MIN, 0);
    loop {
        let (page, next) = store.calls_page(&unfiled, from, i64::MAX, max).unwrap();
        assert!(page.len() <= max);
        out.extend(page.iter().map(|e| (e.at_ms, e.seq)));
        match next {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[test]
fn queries_merge_filed_and_unfiled_events_in_call_time_order() {
    use crate::call::facts::Facts;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), MAP).unwrap();
    // Call times out of arrival order, over two batches, the first one filed.
    let minutes = [30, 10, 50, 20, 40, 0, 60, 35];
    let cdr = |i: usize| {
        event(
            "cdr",
            &format!(
                r#"{{"calldate":"2026-05-12T05:{:02}:00Z","callid":"o{i}","disposition":"ANSWERED","billsec":{i}}}"#,
                minutes[i] % 60
            ),
            None,
        )
        .with_call_facts()
    };
    let mut known = std::collections::VecDeque::new();
    let mut w = store.begin_write(1_000).unwrap();
    for i in 0..4 {
        let ev = cdr(i);
        let seq = add(&mut w, &ev);
        known.push_back(KnownFacts {
            seq,
            stored_at_ms: 1_000,
            facts: ev.call.clone(),
        });
    }
    w.commit().unwrap();
    // Filed from the connections' facts, in a chunk of two then the rest.
    let mut w = store.begin_write(1_500).unwrap();
    assert_eq!(w.index_calls(&mut known, 2).unwrap(), 2);
    w.commit().unwrap();
    let mut w = store.begin_write(1_600).unwrap();
    assert_eq!(w.index_calls(&mut known, 10).unwrap(), 0);
    w.commit().unwrap();
    assert!(known.is_empty());
    let mut w = store.begin_write(2_000).unwrap();
    for i in 4..8 {
        add(&mut w, &cdr(i));
    }
    w.commit().unwrap();
    assert_eq!(store.unfiled().unwrap().len(), 4);
    let mut want: Vec<(i64, u64)> = (0..8)
        .map(|i| {
            let f: Facts = cdr(i).call.unwrap();
            (f.index_ms(0), i as u64 + 1)
        })
        .collect();
    want.sort_unstable();
    for max in [1, 2, 3, 100] {
        assert_eq!(all_calls(&store, max), want, "pages of {max}");
    }
    let bucket = want[0].0.div_euclid(crate::call::tally::BUCKET_MS);
    let calls: u64 = store
        .rollups(bucket, bucket + 8)
        .unwrap()
        .iter()
        .map(|(_, t)| t.calls)
        .sum();
    assert_eq!(calls, 8);
    // The watermark covers the first batch only, and `check` agrees with it.
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls_indexed, 4);
    file_calls(&store);
    assert_eq!(all_calls(&store, 3), want);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls_indexed, 8);
}
