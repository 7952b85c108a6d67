//! The writer thread through its queue: answers, dedup, quarantine, zero-filled room,
//! stop, and retention's protection of undelivered events.

use super::*;
use queue::tests::job;

/// Production's settings but a small batch and queue, and no zero-filled room (one test
/// below turns it on to watch it).
fn settings(queue: usize) -> Settings {
    Settings {
        batch_max: 64,
        queue_capacity: queue,
        dedup_window: Duration::from_secs(3600),
        file_headroom_bytes: 0,
        ..Settings::default()
    }
}

fn spawn(store: Store, settings: Settings) -> (Writer, Queue) {
    Writer::spawn(
        Arc::new(store),
        settings,
        Arc::default(),
        Arc::default(),
        Policy::default(),
        Background::default(),
    )
    .unwrap()
}

#[test]
fn stores_dedups_and_quarantines_then_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
    let (writer, queue) = spawn(store, settings(16));
    let cases = [
        (job("{\"a\":1}", None), Outcome::Stored(1)),
        (job("{\"a\":1}", None), Outcome::Duplicate(1)),
        (job("{\"a\":2}", None), Outcome::Stored(2)),
        (job("{", Some("invalid JSON")), Outcome::Quarantined(1)),
    ];
    for (j, want) in cases {
        let reply = j.reply.clone();
        queue.submit(j).unwrap();
        assert_eq!(reply.wait(), Some(want));
    }
    writer.stop().unwrap();
    let reader = Store::open_reader(dir.path()).unwrap();
    assert_eq!(reader.last_seq().unwrap(), Some(2));
    let counts = reader.counts().unwrap();
    assert_eq!(counts.duplicates.get("cdr"), Some(&1));
    assert_eq!(counts.quarantined, 1);
}

#[test]
fn keeps_zero_filled_room_ahead_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
    let metrics: Arc<Metrics> = Arc::default();
    let want = 4 * HEADROOM_STEP;
    let s = Settings {
        file_headroom_bytes: want,
        ..settings(1000)
    };
    let (writer, queue) = Writer::spawn(
        Arc::new(store),
        s,
        metrics.clone(),
        Arc::default(),
        Policy::default(),
        Background::default(),
    )
    .unwrap();
    let headroom = || metrics.file_headroom_bytes.load(Ordering::Relaxed);
    let file_len = || {
        std::fs::metadata(dir.path().join("data.mdb"))
            .unwrap()
            .len()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while headroom() < want && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(headroom(), want, "filled while idle");
    let filled = file_len();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
    for i in 0..500 {
        let j = job(&format!("{body}{i}"), None);
        let reply = j.reply.clone();
        queue.submit(j).unwrap();
        assert!(matches!(reply.wait(), Some(Outcome::Stored(_))));
    }
    // The events went into the filled room; idle again, the writer tops it up by whole
    // steps until less than a step is missing (the gauge is set once a fill is done). The
    // file grew only by those steps: no commit wrote past its end.
    let until = Instant::now() + Duration::from_secs(10);
    while (file_len() == filled || headroom() + HEADROOM_STEP <= want) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let grown = file_len() - filled;
    assert!(grown > 0 && grown % HEADROOM_STEP == 0, "{grown}");
    assert!(headroom() + HEADROOM_STEP > want, "{}", headroom());
    writer.stop().unwrap();
    let reader = Store::open_reader(dir.path()).unwrap();
    assert_eq!(reader.last_seq().unwrap(), Some(500));
    assert!(reader.check().unwrap().problems.is_empty());
}

#[test]
fn retention_keeps_what_a_destination_has_not_delivered_from_the_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
    // Three events stamped in 1970 (long expired), of which "crm" delivered the first.
    let mut w = store.begin_write(0).unwrap();
    for i in 0..3 {
        let ev = job(&format!("{{\"old\":{i}}}"), None).event;
        w.append_event(&ev, store::body_hash(&ev.body)).unwrap();
    }
    let mut p = store::delivery::Progress::new("crm");
    p.cursor = Some(1);
    w.apply_progress(&p, 0).unwrap();
    w.commit().unwrap();
    let (_reports_tx, reports) = crossbeam_channel::bounded(1);
    let link = crate::forward::Link {
        reports,
        committed: Arc::default(),
        pressure: Arc::default(),
        destinations: Arc::new(Mutex::new(vec!["crm".to_string()])),
    };
    let metrics: Arc<Metrics> = Arc::default();
    let (writer, queue) = Writer::spawn(
        Arc::new(store),
        settings(16),
        metrics.clone(),
        Arc::default(),
        Policy {
            default_days: Some(1),
            ..Policy::default()
        },
        Background {
            archive: None,
            forward: Some(link),
        },
    )
    .unwrap();
    // A batch at once: retention's first slice runs right after it.
    let j = job("{\"new\":1}", None);
    let reply = j.reply.clone();
    queue.submit(j).unwrap();
    assert_eq!(reply.wait(), Some(Outcome::Stored(4)));
    let until = Instant::now() + Duration::from_secs(10);
    while metrics.pruned_events.load(Ordering::Relaxed) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.stop().unwrap();
    let reader = Store::open_reader(dir.path()).unwrap();
    let left: Vec<u64> = reader
        .events_forward(0, 10, |_, _| true)
        .unwrap()
        .items
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        left,
        [2, 3, 4],
        "the delivered one pruned, the undelivered kept"
    );
}

#[test]
fn stop_commits_what_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_writer(dir.path(), 16 << 20).unwrap();
    let (writer, queue) = spawn(store, settings(1000));
    let replies: Vec<_> = (0..500)
        .map(|i| {
            let j = job(&format!("{{\"i\":{i}}}"), None);
            let r = j.reply.clone();
            queue.submit(j).unwrap();
            r
        })
        .collect();
    writer.stop().unwrap();
    // Every reply is settled by now: none of these waits parks.
    for r in replies {
        assert!(r.is_settled());
        assert!(matches!(r.wait(), Some(Outcome::Stored(_))));
    }
    assert_eq!(
        Store::open_reader(dir.path()).unwrap().last_seq().unwrap(),
        Some(500)
    );
}
