//! The SQLite backend runs the conformance suite (`store/conformance.rs`), and what only SQLite
//! can show: a file reopened, the writer's groups, the sync pragma, a foreign write lock, and
//! migrating a database of every earlier schema version.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::store::conformance::{attempt, conformance_suite, delivery, due, event, stored};
use crate::store::{
    DeliveryId, DeliveryStatus, DestinationName, Inspect, MAX_RESPONSE_KEPT, Queue, Settle, StoreOptions, now_ms,
};

async fn fresh() -> (SqliteStore, ()) {
    (open(Path::new(":memory:"), SyncMode::Full), ())
}

fn open(path: &Path, sync: SyncMode) -> SqliteStore {
    SqliteStore::open(path, StoreOptions { sync, ..StoreOptions::default() }).unwrap()
}

conformance_suite!(fresh);

#[tokio::test]
async fn events_and_deliveries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/hookyard.db");
    {
        let store = open(&path, SyncMode::Full);
        let due = stored(
            store.accept(event("evt_1", None, now_ms()), vec![delivery("a"), delivery("b")], None).await.unwrap(),
        );
        assert_eq!(due.len(), 2);
        assert_eq!(&*due[0].msg_id, "msg_a");
        assert_eq!(&due[0].body[..], b"{\"a\":1}");
        store.settle(due[0].id, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    }
    let store = open(&path, SyncMode::Full);
    let due = due(&store, now_ms() + 1, 10, &[]).await;
    assert_eq!(due.len(), 1, "the undelivered one is due again after a restart");
    assert_eq!(&*due[0].destination, "b");
    assert_eq!(due[0].headers.as_slice(), &[("x-github-event".to_string(), "push".to_string())]);
    let ev = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev.deliveries[0].delivery.status, DeliveryStatus::Delivered);
    assert_eq!(ev.deliveries[0].attempt_log.len(), 1);
    assert_eq!(ev.deliveries[0].attempt_log[0].response.len(), MAX_RESPONSE_KEPT, "response bodies are cut at 4 KiB");
    assert_eq!(ev.deliveries[1].delivery.status, DeliveryStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_undo_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db"), SyncMode::Full);
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
            s.settle(DeliveryId(999_999), attempt(Some(200)), Settle::Delivered, None), // no such delivery: fails
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
    assert_eq!(ev1.deliveries[0].delivery.status, DeliveryStatus::Delivered);
    assert_eq!(ev1.deliveries[0].attempt_log.len(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 2);
    assert_eq!(store.paused().await.unwrap(), [(DestinationName::from("c"), Some("test".to_string()))]);
}

#[tokio::test]
async fn storage_sync_sets_the_synchronous_pragma_of_both_connections() {
    let dir = tempfile::tempdir().unwrap();
    // PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL
    for (mode, want) in [(SyncMode::Full, 2), (SyncMode::Normal, 1)] {
        let store = open(&dir.path().join(format!("{mode:?}.db")), mode);
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
    let store = SqliteStore::open(
        &path,
        StoreOptions { sync: SyncMode::Normal, commit_timeout: timeout, ..StoreOptions::default() },
    )
    .unwrap();
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
    let err = store.set_paused(&"a".into(), true, None).await.unwrap_err();
    assert_eq!(err.to_string(), "commit failed: database is locked");

    foreign.execute_batch("COMMIT").unwrap();
    stored(store.accept(event("evt_3", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert_eq!(store.health(), Ok(()), "a commit clears it");
    assert!(store.event("evt_2".into()).await.unwrap().is_none(), "the refused event was written later");
    assert_eq!(store.pending_count().await.unwrap(), 2);
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
    let store = open(&path, SyncMode::Full);
    let due = due(&store, now_ms(), 10, &[]).await;
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
    assert_eq!(
        indexes,
        [
            "deliveries_awaiting",
            "deliveries_batch",
            "deliveries_dead",
            "deliveries_due",
            "deliveries_event",
            "deliveries_failed",
            "deliveries_held",
            "deliveries_order",
            "deliveries_parent"
        ]
    );
    // a purge takes the moved bodies with their deliveries
    store.write(|t| t.execute("UPDATE deliveries SET status = 'delivered'", [])).await.unwrap();
    assert_eq!(store.purge(now_ms()).await.unwrap(), 1);
    let left: i64 =
        store.read(|c| c.query_row("SELECT COUNT(*) FROM delivery_bodies", [], |r| r.get(0))).await.unwrap();
    assert_eq!(left, 0);
}

/// The schema SQLite keeps (tables and indexes, as created), in name order.
fn schema_of(c: &Connection) -> Vec<(String, String)> {
    let mut st = c
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?.split_whitespace().collect::<Vec<_>>().join(" "))))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test]
async fn a_database_of_every_earlier_schema_version_migrates_with_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let fresh_path = dir.path().join("fresh.db");
    drop(open(&fresh_path, SyncMode::Full));
    let want = schema_of(&Connection::open(&fresh_path).unwrap());
    for version in 0..schema::MIGRATIONS.len() {
        let path = dir.path().join(format!("v{version}.db"));
        {
            let c = Connection::open(&path).unwrap();
            for sql in &schema::MIGRATIONS[..version] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", version as i64).unwrap();
            if version > 0 {
                // columns every version has
                c.execute_batch(
                    "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed)
                       VALUES ('evt_1', 'github', 0, '[]', x'7b7d', NULL, 1);
                     INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at)
                       VALUES ('evt_1', 'r', 'a', 'msg_1', 'pending', 0, 0, 0, 0);",
                )
                .unwrap();
            }
        }
        let store = open(&path, SyncMode::Full);
        let queued = due(&store, now_ms(), 10, &[]).await;
        assert_eq!(queued.len(), usize::from(version > 0), "version {version}: the queue survives");
        drop(store);
        assert_eq!(schema_of(&Connection::open(&path).unwrap()), want, "version {version} ends as a fresh database");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_the_write_lock_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = StoreOptions { commit_timeout: Duration::from_millis(300), ..StoreOptions::default() };
    let store = SqliteStore::open(&path, options).unwrap();
    stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    // `hookyard migrate` reading the file while a gateway was left running on it
    let export = Export::open(&path).unwrap();
    let err = store.accept(event("evt_2", None, now_ms()), vec![delivery("a")], None).await.unwrap_err();
    assert!(matches!(err, StoreError::Commit(_) | StoreError::Timeout(_)), "{err}");
    drop(export);
    stored(store.accept(event("evt_3", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert!(store.raw_event("evt_2".into()).await.unwrap().is_none(), "a refused event never lands");
}
