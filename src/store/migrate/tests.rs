//! A SQLite store filled through the boundary (`Queue`, `Inspect`) reads back the same from
//! PostgreSQL once copied, and goes on there: new deliveries get new ids, dedupe keys still
//! count. Refusals leave the target as it was. Each test has a PostgreSQL schema of its own
//! (`postgres::testing::Schema`), dropped at its end.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::conformance::{attempt, delivery, event, stored};
use crate::store::postgres::testing::Schema;
use crate::store::{
    Accepted, AttemptRecord, Backend, DeliveryFilter, DeliveryId, DeliveryRef, DeliverySelection, DeliveryStatus,
    EventId, Inspect, NewDelivery, Queue, Settle, SqliteStore, now_ms,
};

const WINDOW: Option<Duration> = Some(Duration::from_secs(3600));

/// Batches of two rows, so that every table with more takes several.
const SMALL: BatchLimits = BatchLimits { rows: 2, bytes: BATCH_BYTES };

const EVENTS: [&str; 5] = ["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"];

fn sqlite(path: &Path) -> SqliteStore {
    SqliteStore::open(path, StoreOptions::default()).unwrap()
}

/// An attempt the destination answered with `code`.
fn answered(code: u16) -> AttemptRecord {
    AttemptRecord { response: Bytes::from(format!("answer {code}")), ..attempt(Some(code)) }
}

/// Some of everything a store keeps: pending (due now and due later), delivered, dead, failed
/// (by a transform, by a 4xx) and cancelled deliveries, a transform's body and headers, attempt
/// logs, a dedupe key, an unrouted event, a paused destination and a resumed one.
async fn fill(store: &SqliteStore, now: i64) {
    let transformed = NewDelivery {
        body: Some(Bytes::from_static(b"{\"t\":1}")),
        headers: Some(vec![("x-t".into(), "1".into())]),
        ..delivery("a")
    };
    let d1 =
        stored(store.accept(event("evt_1", Some("k1"), now), vec![transformed, delivery("b")], WINDOW).await.unwrap());
    store.settle(d1[1].id, answered(200), Settle::Delivered, None).await.unwrap();

    let d2 = stored(store.accept(event("evt_2", None, now), vec![delivery("c"), delivery("d")], None).await.unwrap());
    let http_500 = Some("HTTP 500".to_string());
    store.settle(d2[0].id, answered(500), Settle::Retry { next_at_ms: now }, http_500.clone()).await.unwrap();
    store.settle(d2[0].id, answered(500), Settle::Dead, http_500).await.unwrap();
    let refused = AttemptRecord { error: Some("connection refused".into()), response: Bytes::new(), ..attempt(None) };
    let later = Settle::Retry { next_at_ms: now + 60_000 };
    store.settle(d2[1].id, refused, later, Some("connection refused".into())).await.unwrap();

    let failed = NewDelivery { failed: Some("transform trapped".into()), ..delivery("a") };
    // (only `b` is due: the failed one is kept, never sent)
    let d3 = stored(store.accept(event("evt_3", None, now), vec![failed, delivery("b")], None).await.unwrap());
    store.settle(d3[0].id, answered(400), Settle::Failed, Some("HTTP 400".into())).await.unwrap();

    let d4 = stored(store.accept(event("evt_4", None, now), vec![delivery("b")], None).await.unwrap());
    let selection = DeliverySelection { ids: vec![DeliveryRef::Delivery(d4[0].id)], ..Default::default() };
    assert_eq!(store.cancel(selection, "cli:alice".into(), Some("sent by hand".into())).await.unwrap(), 1);

    stored(store.accept(event("evt_5", None, now), Vec::new(), None).await.unwrap());

    store.set_paused(&"a".into(), true, Some("maintenance".into())).await.unwrap();
    store.set_paused(&"x".into(), true, None).await.unwrap();
    store.set_paused(&"x".into(), false, Some("back".into())).await.unwrap();
}

/// Everything the boundary shows of a store at `now`, as text: equal texts, equal stores.
async fn view(store: &impl Backend, now: i64) -> String {
    let all = DeliveryFilter { limit: 1000, ..Default::default() };
    let mut out = format!("deliveries: {:#?}\n", store.list_deliveries(all).await.unwrap());
    for status in DeliveryStatus::ALL {
        let only = DeliveryFilter { status: Some(status), limit: 1000, ..Default::default() };
        let ids: Vec<DeliveryId> = store.list_deliveries(only).await.unwrap().iter().map(|r| r.id).collect();
        out += &format!("{status}: {ids:?}\n");
    }
    for id in EVENTS {
        out += &format!("{id}: {:#?}\n", store.event(id.into()).await.unwrap());
        out += &format!("raw {id}: {:?}\n", store.raw_event(id.into()).await.unwrap());
    }
    out += &format!("paused: {:?}\n", store.paused().await.unwrap());
    out += &format!("stats: {:?}\n", store.destination_stats(now).await.unwrap());
    let due = store.due_ids(now + 120_000, 100, Vec::new()).await.unwrap();
    out += &format!("due: {due:?}\n");
    let mut loaded = store.load_pending(due.into_iter().map(|(id, _)| id).collect(), now + 120_000).await.unwrap();
    // a PostgreSQL load leases what it loads to this instance, a SQLite one leases nothing
    for d in &mut loaded {
        d.lease_until = None;
    }
    out += &format!("loaded: {loaded:#?}\n");
    out += &format!("due but a's: {:?}\n", store.due_ids(now + 120_000, 100, vec!["a".into()]).await.unwrap());
    out += &format!("next due: {:?}\n", store.next_due_ms(Vec::new()).await.unwrap());
    out += &format!("pending: {}\n", store.pending_count().await.unwrap());
    out += &format!("dead: {}\n", store.count_dead(None, None, None).await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_store_reads_back_equal_and_goes_on_in_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookyard.db");
    let now = now_ms();
    let source = sqlite(&path);
    fill(&source, now).await;
    let before = view(&source, now).await;
    // the gateway is stopped before a migration
    drop(source);

    let schema = Schema::new();
    let copied = copy(&path, &schema.config(), SMALL).await.unwrap();
    assert_eq!(
        copied,
        Copied {
            events: 5,
            deliveries: 7,
            pending: 2,
            bodies: 1,
            attempts: 5,
            cancellations: 1,
            paused: 1,
            destination_states: 2,
        }
    );

    let target = PgStore::open(&schema.config(), StoreOptions::default()).await.unwrap();
    let after = view(&target, now).await;
    assert_eq!(after, before, "the store reads back the same from PostgreSQL");
    // ...and not because both are empty
    for shown in ["\"transform trapped\"", "\"sent by hand\"", "\"maintenance\"", "routed: false", "pending: 2\n"] {
        assert!(after.contains(shown), "{shown} in\n{after}");
    }

    // a new delivery gets an id past every copied one
    let copied_ids: Vec<DeliveryId> = target
        .list_deliveries(DeliveryFilter { limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let fresh = stored(target.accept(event("evt_new", None, now_ms()), vec![delivery("b")], None).await.unwrap());
    assert!(copied_ids.iter().all(|id| *id < fresh[0].id), "{:?} after {copied_ids:?}", fresh[0].id);
    // a copied dedupe key still finds its event
    match target.accept(event("evt_again", Some("k1"), now_ms()), vec![delivery("b")], WINDOW).await.unwrap() {
        Accepted::Duplicate { original } => assert_eq!(original, EventId::from("evt_1")),
        Accepted::Stored(_) => panic!("the copied dedupe key was not seen"),
    }
}

#[tokio::test]
async fn a_target_that_holds_a_store_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookyard.db");
    let source = sqlite(&path);
    stored(source.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    drop(source);
    let schema = Schema::new();
    sqlite_to_postgres(&path, &schema.config()).await.unwrap();

    let err = sqlite_to_postgres(&path, &schema.config()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the PostgreSQL schema \"{0}\" already holds a store (events: 1, destination states: 0); migrate copies \
             into an empty schema only: name a new one in storage.postgres.schema, or drop this one \
             (DROP SCHEMA \"{0}\" CASCADE) if nothing in it is needed",
            schema.0
        )
    );
    let target = PgStore::open(&schema.config(), StoreOptions::default()).await.unwrap();
    assert_eq!(target.pending_count().await.unwrap(), 1, "nothing was copied twice");

    // a schema with only a pause in it has a queue's state too
    let paused_only = Schema::new();
    let other = PgStore::open(&paused_only.config(), StoreOptions::default()).await.unwrap();
    other.set_paused(&"a".into(), true, None).await.unwrap();
    let err = sqlite_to_postgres(&path, &paused_only.config()).await.unwrap_err();
    assert!(matches!(err, MigrateError::TargetNotEmpty { events: 0, destinations: 1, .. }), "{err}");
    assert!(other.raw_event("evt_1".into()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_missing_sqlite_file_is_refused_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/hookyard.db");
    let schema = Schema::new();
    let err = sqlite_to_postgres(&path, &schema.config()).await.unwrap_err();
    assert_eq!(err.to_string(), format!("there is no SQLite store at {}", path.display()));
    assert!(!path.exists() && !path.parent().unwrap().exists(), "nothing was created");
}

#[tokio::test]
async fn a_file_of_an_older_hookyard_is_upgraded_then_copied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    // version 1 kept a transform's output in the delivery row
    crate::store::sqlite::create_at_version(
        &path,
        1,
        "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed)
           VALUES ('evt_1', 'github', 0, '[]', x'7b7d', NULL, 1);
         INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at, body, headers)
           VALUES ('evt_1', 't', 'a', 'msg_1', 'pending', 0, 0, 0, 0, x'6869', '[[\"x-a\",\"1\"]]');",
    )
    .unwrap();
    let schema = Schema::new();
    let copied = sqlite_to_postgres(&path, &schema.config()).await.unwrap();
    assert_eq!((copied.events, copied.pending, copied.bodies), (1, 1, 1));
    let target = PgStore::open(&schema.config(), StoreOptions::default()).await.unwrap();
    let due = crate::store::conformance::due(&target, now_ms(), 10, &[]).await;
    assert_eq!(due.len(), 1);
    assert_eq!(&due[0].body[..], b"hi", "with the transformed body");
    assert_eq!(due[0].extra_headers.as_deref().unwrap(), &[("x-a".to_string(), "1".to_string())]);
}
