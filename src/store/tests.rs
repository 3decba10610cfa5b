use super::*;

fn event(id: &str, key: Option<&str>, at: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "github".into(),
        received_at_ms: at,
        headers: vec![("x-github-event".into(), "push".into())],
        body: Bytes::from_static(b"{\"a\":1}"),
        dedupe_key: key.map(Into::into),
    }
}

pub(super) fn delivery(dest: &str) -> NewDelivery {
    NewDelivery {
        route: "r".into(),
        destination: dest.into(),
        msg_id: format!("msg_{dest}"),
        body: None,
        headers: None,
        failed: None,
    }
}

fn attempt(code: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        at_ms: now_ms(),
        status_code: code,
        latency_ms: 3,
        response: Bytes::from(vec![b'x'; 10_000]),
        error: None,
    }
}

fn stored(a: Accepted) -> Vec<DueDelivery> {
    match a {
        Accepted::Stored(d) => d,
        Accepted::Duplicate { original } => panic!("unexpected duplicate of {original}"),
    }
}

#[tokio::test]
async fn events_and_deliveries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/hookyard.db");
    {
        let store = Store::open(&path, SyncMode::Full).unwrap();
        let due = stored(
            store.accept(event("evt_1", None, now_ms()), vec![delivery("a"), delivery("b")], None).await.unwrap(),
        );
        assert_eq!(due.len(), 2);
        assert_eq!(&*due[0].msg_id, "msg_a");
        assert_eq!(&due[0].body[..], b"{\"a\":1}");
        store.settle(due[0].id, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    }
    let store = Store::open(&path, SyncMode::Full).unwrap();
    let due = store.due(now_ms() + 1, 10, &[]).await.unwrap();
    assert_eq!(due.len(), 1, "the undelivered one is due again after a restart");
    assert_eq!(&*due[0].destination, "b");
    assert_eq!(due[0].headers.as_slice(), &[("x-github-event".to_string(), "push".to_string())]);
    let ev = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev.deliveries[0].delivery.status, "delivered");
    assert_eq!(ev.deliveries[0].attempt_log.len(), 1);
    assert_eq!(ev.deliveries[0].attempt_log[0].response.len(), MAX_RESPONSE_KEPT, "response bodies are cut at 4 KiB");
    assert_eq!(ev.deliveries[1].delivery.status, "pending");
}

#[tokio::test]
async fn retries_dead_letters_and_replay() {
    let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
    let due = stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let id = due[0].id;
    let later = now_ms() + 60_000;
    store.settle(id, attempt(Some(503)), Settle::Retry { next_at_ms: later }, Some("HTTP 503".into())).await.unwrap();
    assert!(store.due(now_ms(), 10, &[]).await.unwrap().is_empty(), "not due before next_at");
    assert_eq!(store.due(later, 10, &[]).await.unwrap().len(), 1);
    assert_eq!(store.next_due_ms(vec![]).await.unwrap(), Some(later));
    store.settle(id, attempt(None), Settle::Dead, Some("timed out".into())).await.unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
    let dead = store
        .list_deliveries(DeliveryFilter { status: Some("dead".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("timed out"));
    assert_eq!(store.replay_dead(Some("other".into()), None).await.unwrap(), 0);
    assert_eq!(store.replay_dead(Some("a".into()), None).await.unwrap(), 1);
    let due = store.due(now_ms() + 1, 10, &[]).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 2, "a replay keeps the attempt history");
    assert_eq!(&*due[0].msg_id, "msg_a", "and the webhook-id");
    let err = store.replay(vec!["evt_nope".into()]).await.unwrap_err();
    assert_eq!(err.to_string(), "no deliveries for: evt_nope");
}

#[tokio::test]
async fn dedupe_within_window_only() {
    let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
    let window = Some(Duration::from_secs(3600));
    let t0 = now_ms();
    stored(store.accept(event("evt_1", Some("gh-1"), t0), vec![delivery("a")], window).await.unwrap());
    match store.accept(event("evt_2", Some("gh-1"), t0 + 1000), vec![delivery("a")], window).await.unwrap() {
        Accepted::Duplicate { original } => assert_eq!(original, "evt_1"),
        Accepted::Stored(_) => panic!("duplicate stored"),
    }
    // outside the window: a new event
    stored(store.accept(event("evt_3", Some("gh-1"), t0 + 3_600_001), vec![delivery("a")], window).await.unwrap());
    stored(store.accept(event("evt_4", Some("gh-2"), t0 + 2000), vec![delivery("a")], window).await.unwrap());
    assert_eq!(store.pending_count().await.unwrap(), 3);
}

#[tokio::test]
async fn purge_keeps_pending_work() {
    let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
    let old = now_ms() - 10 * 86_400_000;
    let done = stored(store.accept(event("evt_old_done", None, old), vec![delivery("a")], None).await.unwrap());
    store.settle(done[0].id, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    stored(store.accept(event("evt_old_pending", None, old), vec![delivery("a")], None).await.unwrap());
    stored(store.accept(event("evt_new", None, now_ms()), vec![], None).await.unwrap());
    assert_eq!(store.purge(now_ms() - 7 * 86_400_000).await.unwrap(), 1);
    assert!(store.event("evt_old_done".into()).await.unwrap().is_none());
    assert!(store.event("evt_old_pending".into()).await.unwrap().is_some());
    let unrouted = store.event("evt_new".into()).await.unwrap().unwrap();
    assert!(!unrouted.routed);
}

#[tokio::test]
async fn skipped_destinations_are_not_due_and_pauses_are_recorded() {
    let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
    stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a"), delivery("b")], None).await.unwrap());
    let due = store.due(now_ms() + 1, 10, &["a"]).await.unwrap();
    assert_eq!(due.iter().map(|d| &*d.destination).collect::<Vec<_>>(), ["b"]);
    assert_eq!(store.next_due_ms(vec!["a".into(), "b".into()]).await.unwrap(), None);
    // the store's pause flag is bookkeeping for the dispatcher, not a filter: a paused
    // destination that a reload removed must still reach the dispatcher to be failed
    store.set_paused("a", true, Some("410 Gone".into())).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), [("a".to_string(), Some("410 Gone".to_string()))]);
    assert_eq!(store.due(now_ms() + 1, 10, &[]).await.unwrap().len(), 2);
    store.set_paused("a", false, None).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_are_grouped_and_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), SyncMode::Full).unwrap();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                s.accept(event(&format!("evt_{i}"), None, now_ms()), vec![delivery("a")], None).await
            })
        })
        .collect();
    for t in tasks {
        stored(t.await.unwrap().unwrap());
    }
    assert_eq!(store.pending_count().await.unwrap(), 500);
    let page1 = store.list_deliveries(DeliveryFilter { limit: 200, ..Default::default() }).await.unwrap();
    let page2 = store
        .list_deliveries(DeliveryFilter { limit: 400, before_id: Some(page1.last().unwrap().id), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), 500, "cursor pages cover every row once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_undo_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), SyncMode::Full).unwrap();
    let first = stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());

    // Hold the writer in a job until every operation below is queued, so they share one group.
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let s = store.clone();
        tokio::spawn(async move {
            s.write(move |_| {
                started_tx.send(()).unwrap();
                Ok(held.recv().is_ok())
            })
            .await
        })
    };
    tokio::time::timeout(Duration::from_secs(10), started).await.expect("the writer runs the blocking job").unwrap();
    let groups_before = store.writer.trace.groups.lock().unwrap().len();
    let s = store.clone();
    let ops = tokio::spawn(async move {
        let s = &s;
        tokio::join!(
            s.accept(event("evt_1", None, now_ms()), vec![delivery("b")], None), // duplicate id: fails
            s.accept(event("evt_2", None, now_ms()), vec![delivery("a"), delivery("b")], None),
            s.settle(999_999, attempt(Some(200)), Settle::Delivered, None), // no such delivery: fails
            s.settle(first[0].id, attempt(Some(200)), Settle::Delivered, None),
            s.write(|t| {
                // writes, then fails: its own write must be undone too
                t.execute("INSERT INTO destination_state VALUES ('d', 1, 'undone', 0)", [])?;
                t.execute("INSERT INTO no_such_table VALUES (1)", [])
            }),
            s.write(|t| t.execute("INSERT INTO destination_state VALUES ('c', 1, 'test', 0)", [])),
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.writer.trace.queued.load(std::sync::atomic::Ordering::SeqCst) < 6 {
        assert!(std::time::Instant::now() < deadline, "the six operations were not queued");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    let (dup, ok, bad_settle, good_settle, bad_job, good_job) = ops.await.unwrap();
    assert!(blocker.await.unwrap().unwrap());
    let groups = store.writer.trace.groups.lock().unwrap()[groups_before..].to_vec();
    assert_eq!(
        groups,
        [
            writer::GroupTrace { ops: 0, jobs: 1, rolled_back: false }, // the blocking job
            writer::GroupTrace { ops: 4, jobs: 2, rolled_back: true },
        ],
        "one group, rolled back and run again with a savepoint per operation"
    );

    assert!(dup.is_err(), "the same event id twice is an error");
    assert!(bad_settle.is_err(), "settling an unknown delivery is an error");
    assert!(bad_job.is_err());
    let due = stored(ok.unwrap());
    assert_eq!(due.iter().map(|d| &*d.destination).collect::<Vec<_>>(), ["a", "b"]);
    good_settle.unwrap();
    assert_eq!(good_job.unwrap(), 1);

    let ev2 = store.event("evt_2".into()).await.unwrap().expect("evt_2 committed");
    assert_eq!(ev2.deliveries.len(), 2);
    let ev1 = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev1.deliveries.len(), 1, "the failed duplicate left no delivery behind");
    assert_eq!(ev1.deliveries[0].delivery.status, "delivered");
    assert_eq!(ev1.deliveries[0].attempt_log.len(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 2);
    assert_eq!(store.paused().await.unwrap(), [("c".to_string(), Some("test".to_string()))]);
}

#[tokio::test]
async fn storage_sync_sets_the_synchronous_pragma_of_both_connections() {
    let dir = tempfile::tempdir().unwrap();
    // PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL
    for (mode, want) in [(SyncMode::Full, 2), (SyncMode::Normal, 1)] {
        let store = Store::open(&dir.path().join(format!("{mode:?}.db")), mode).unwrap();
        let pragma = |c: &Connection| c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0));
        assert_eq!(store.write(move |c| pragma(c)).await.unwrap(), want, "the writer's connection with {mode:?}");
        assert_eq!(store.read(move |c| pragma(c)).await.unwrap(), want, "the reader's connection with {mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_that_cannot_get_the_write_lock_in_time_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let timeout = Duration::from_millis(300);
    let store = Store::open_with(&path, StoreOptions { sync: SyncMode::Normal, commit_timeout: timeout }).unwrap();
    stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let foreign = Connection::open(&path).unwrap();
    foreign.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = std::time::Instant::now();
    let err = store.accept(event("evt_2", None, now_ms()), vec![delivery("a")], None).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StoreError::Commit(_) | StoreError::Timeout(_)), "{err}");
    assert!(took >= timeout && took < timeout + Duration::from_secs(1), "answered after {took:?}");
    let reason = store.health().unwrap_err();
    assert!(reason.contains("database is locked"), "{reason}");
    // an administrative write is told why too
    let err = store.set_paused("a", true, None).await.unwrap_err();
    assert_eq!(err.to_string(), "commit failed: database is locked");

    foreign.execute_batch("COMMIT").unwrap();
    stored(store.accept(event("evt_3", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert_eq!(store.health(), Ok(()), "a commit clears it");
    assert!(store.event("evt_2".into()).await.unwrap().is_none(), "the refused event was written later");
    assert_eq!(store.pending_count().await.unwrap(), 2);
}

#[tokio::test]
async fn destination_stats_count_pending_dead_and_failed_per_destination() {
    let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
    let now = now_ms();
    let mut ids = Vec::new();
    for i in 0..6 {
        let due = store.accept(event(&format!("evt_{i}"), None, now), vec![delivery("a"), delivery("b")], None);
        ids.extend(stored(due.await.unwrap()).into_iter().map(|d| (d.destination, d.id)));
    }
    let settle = |id, s| store.settle(id, attempt(Some(500)), s, None);
    let of = |dest: &str| ids.iter().filter(|(d, _)| &**d == dest).map(|(_, id)| *id).collect::<Vec<_>>();
    let (a, b) = (of("a"), of("b"));
    settle(a[0], Settle::Delivered).await.unwrap();
    settle(a[1], Settle::Dead).await.unwrap();
    settle(a[2], Settle::Dead).await.unwrap();
    settle(a[3], Settle::Failed).await.unwrap();
    settle(a[4], Settle::Retry { next_at_ms: now + 60_000 }).await.unwrap(); // pending, not yet due
    for id in &b {
        settle(*id, Settle::Delivered).await.unwrap();
    }
    let stats = store.destination_stats(now + 1_000).await.unwrap();
    // a: a[5] due since it was accepted (just after `now`), a[4] pending later; b has nothing
    // pending, dead or failed
    let oldest = stats[0].oldest_due_ms;
    assert!((500..=1_000).contains(&oldest), "oldest due {oldest} ms");
    assert_eq!(
        stats,
        [DestinationStats { destination: "a".into(), pending: 2, oldest_due_ms: oldest, dead: 2, failed: 1 }]
    );
    store.replay_dead(Some("a".into()), None).await.unwrap();
    let stats = store.destination_stats(now + 1_000).await.unwrap();
    assert_eq!((stats[0].pending, stats[0].dead, stats[0].failed), (4, 0, 1));
}

#[tokio::test]
async fn a_version_1_database_is_migrated_with_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(schema::MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO events VALUES ('evt_1', 'github', 0, '[]', x'7b7d', NULL, 1);
             INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at)
             VALUES ('evt_1', 'r', 'a', 'msg_1', 'pending', 0, 0, 0, 0), ('evt_1', 'r', 'b', 'msg_2', 'dead', 5, 0, 0, 0);
             INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at, body, headers)
             VALUES ('evt_1', 't', 'a', 'msg_3', 'pending', 0, 0, 0, 0, x'6869', '[[\"x-a\",\"1\"]]');",
        )
        .unwrap();
    }
    let store = Store::open(&path, SyncMode::Full).unwrap();
    let due = store.due(now_ms(), 10, &[]).await.unwrap();
    assert_eq!(due.len(), 2, "the queue survives the migration");
    assert_eq!(&due[0].body[..], b"{}");
    assert!(due[0].extra_headers.is_none());
    assert_eq!(&due[1].body[..], b"hi", "with the transformed body");
    assert_eq!(due[1].extra_headers.as_deref().unwrap(), &[("x-a".to_string(), "1".to_string())]);
    let stats = store.destination_stats(now_ms()).await.unwrap();
    assert_eq!(
        stats.iter().map(|s| (&*s.destination, s.pending, s.dead)).collect::<Vec<_>>(),
        [("a", 2, 0), ("b", 0, 1)]
    );
    let indexes: Vec<String> = store
        .read(|c| {
            let mut st = c.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' ORDER BY name",
            )?;
            st.query_map([], |r| r.get(0))?.collect()
        })
        .await
        .unwrap();
    assert_eq!(indexes, ["deliveries_dead", "deliveries_due", "deliveries_event", "deliveries_failed"]);
    // a purge takes the moved bodies with their deliveries
    store.write(|t| t.execute("UPDATE deliveries SET status = 'delivered'", [])).await.unwrap();
    assert_eq!(store.purge(now_ms()).await.unwrap(), 1);
    let left: i64 =
        store.read(|c| c.query_row("SELECT COUNT(*) FROM delivery_bodies", [], |r| r.get(0))).await.unwrap();
    assert_eq!(left, 0);
}
