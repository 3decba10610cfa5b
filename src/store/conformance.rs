//! The store's behaviours, written once against the boundary ([`Backend`]) and run on every
//! backend: a backend's tests call [`conformance_suite!`] with an async function that opens a
//! fresh, empty store, which expands to one `#[test]` per behaviour (the SQLite backend's in
//! `sqlite/tests.rs`). What only one backend can show (SQLite: reopening a file, migrating each
//! earlier schema version, the writer's group trace, a foreign write lock, the sync pragma) stays
//! in that backend's own tests.

use std::time::Duration;

use bytes::Bytes;

use super::{
    Accepted, AttemptRecord, Backend, BatchLimits, Cancellation, DeliveryFilter, DeliveryId, DeliveryRef,
    DeliverySelection, DeliveryStatus, DestinationName, DestinationStats, DueDelivery, ExportFilter, Formation,
    MAX_RESPONSE_KEPT, NewDelivery, NewEvent, OrderSpec, Purged, Settle, StepDecision, StoreError, now_ms,
};

/// One `#[test]` per behaviour, each on a store `$fresh().await` opens, which returns the store
/// and a guard that removes what the store left behind (a PostgreSQL schema) when the test ends.
/// Add a behaviour here and to the list below; every backend then runs it.
macro_rules! conformance_suite {
    ($fresh:path) => {
        $crate::store::conformance::conformance_suite!(@each $fresh;
            accept_settle_and_the_attempt_log,
            retries_dead_letters_and_replay,
            due_ids_oldest_first_and_only_pending_loads,
            dedupe_within_window_only,
            purge_keeps_pending_work,
            skipped_destinations_are_not_due_and_pauses_are_recorded,
            concurrent_accepts_all_commit_and_cursor_pages_cover_them,
            a_failing_operation_does_not_undo_the_others,
            destination_stats_count_pending_dead_and_failed_per_destination,
            a_cancel_survives_the_settle_of_an_attempt_in_flight,
            selections_name_pending_deliveries_by_id_event_or_filter,
            purging_dead_letters_deletes_them_and_events_left_empty,
            ordered_deliveries_go_one_at_a_time_per_key_in_accept_order,
            a_held_key_waits_for_a_replay_or_a_skip,
            a_replayed_ordered_delivery_goes_back_to_its_place,
            cancelling_a_head_and_sweeping_stalled_keys_advance_them,
            batches_close_at_the_first_limit_and_settle_their_members,
            export_pages_the_log_in_accept_order_with_its_filters,
            a_later_step_waits_for_the_one_before_and_is_released_with_its_request,
            a_step_that_does_not_go_on_skips_the_chain_after_it_and_a_replay_resumes_it,
            replaying_or_cancelling_a_chain,
        );
    };
    (@each $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $fresh().await;
                $crate::store::conformance::$name(store).await
            }
        )*
    };
}
pub(crate) use conformance_suite;

pub(crate) fn event(id: &str, key: Option<&str>, at: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "github".into(),
        received_at_ms: at,
        headers: vec![("x-github-event".into(), "push".into())],
        body: Bytes::from_static(b"{\"a\":1}"),
        dedupe_key: key.map(Into::into),
    }
}

fn event_from(id: &str, source: &str) -> NewEvent {
    NewEvent {
        source: source.into(),
        headers: Vec::new(),
        body: Bytes::from_static(b"{}"),
        ..event(id, None, now_ms())
    }
}

pub(crate) fn delivery(dest: &str) -> NewDelivery {
    NewDelivery::new("r".into(), dest.into(), format!("msg_{dest}").into())
}

pub(crate) fn attempt(code: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        at_ms: now_ms(),
        status_code: code,
        latency_ms: 3,
        response: Bytes::from(vec![b'x'; 10_000]),
        error: None,
    }
}

pub(crate) fn stored(a: Accepted) -> Vec<DueDelivery> {
    match a {
        Accepted::Stored(d) => d,
        Accepted::Duplicate { original } => panic!("unexpected duplicate of {original}"),
    }
}

/// Pending deliveries due at `now_ms`, oldest due first, except those of `skip`: the two steps the
/// dispatcher's poll takes.
pub(crate) async fn due(store: &impl Backend, now_ms: i64, limit: usize, skip: &[&str]) -> Vec<DueDelivery> {
    let ids = store.due_ids(now_ms, limit, skip.iter().map(|s| DestinationName::from(*s)).collect()).await.unwrap();
    store.load_pending(ids.into_iter().map(|(id, _)| id).collect(), now_ms).await.unwrap()
}

async fn accept_to(store: &impl Backend, id: &str, source: &str, dests: &[&str]) -> Vec<DeliveryId> {
    let planned = dests.iter().map(|d| delivery(d)).collect();
    stored(store.accept(event_from(id, source), planned, None).await.unwrap()).iter().map(|d| d.id).collect()
}

async fn status(store: &impl Backend, id: DeliveryId) -> (DeliveryStatus, u32, Option<Cancellation>) {
    let rows = store.list_deliveries(DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
    let r = rows.into_iter().find(|r| r.id == id).unwrap();
    (r.status, r.attempts, r.cancelled)
}

fn by_destination(d: &str) -> DeliverySelection {
    DeliverySelection { destination: Some(d.into()), ..Default::default() }
}

pub async fn accept_settle_and_the_attempt_log(store: impl Backend) {
    let due_now =
        stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a"), delivery("b")], None).await.unwrap());
    assert_eq!(due_now.len(), 2);
    assert_eq!(&*due_now[0].msg_id, "msg_a");
    assert_eq!(&due_now[0].body[..], b"{\"a\":1}");
    store.settle(due_now[0].id, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    let left = due(&store, now_ms() + 1, 10, &[]).await;
    assert_eq!(left.len(), 1, "the undelivered one is still due");
    assert_eq!(&*left[0].destination, "b");
    assert_eq!(left[0].headers.as_slice(), &[("x-github-event".to_string(), "push".to_string())]);
    let ev = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev.deliveries[0].delivery.status, DeliveryStatus::Delivered);
    assert_eq!(ev.deliveries[0].attempt_log.len(), 1);
    assert_eq!(ev.deliveries[0].attempt_log[0].response.len(), MAX_RESPONSE_KEPT, "response bodies are cut at 4 KiB");
    assert_eq!(ev.deliveries[1].delivery.status, DeliveryStatus::Pending);
    let raw = store.raw_event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!((raw.source.as_str(), &raw.body[..]), ("github", &b"{\"a\":1}"[..]));
    assert!(store.event("evt_nope".into()).await.unwrap().is_none());
    assert_eq!(store.health(), Ok(()));
}

pub async fn retries_dead_letters_and_replay(store: impl Backend) {
    let due_now = stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let id = due_now[0].id;
    let later = now_ms() + 60_000;
    store.settle(id, attempt(Some(503)), Settle::Retry { next_at_ms: later }, Some("HTTP 503".into())).await.unwrap();
    assert!(due(&store, now_ms(), 10, &[]).await.is_empty(), "not due before next_at");
    assert_eq!(due(&store, later, 10, &[]).await.len(), 1);
    assert_eq!(store.next_due_ms(vec![]).await.unwrap(), Some(later));
    store.settle(id, attempt(None), Settle::Dead, Some("timed out".into())).await.unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
    let dead = store
        .list_deliveries(DeliveryFilter { status: Some(DeliveryStatus::Dead), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("timed out"));
    assert_eq!(store.replay_dead(Some("other".into()), None).await.unwrap(), 0);
    assert_eq!(store.replay_dead(Some("a".into()), None).await.unwrap(), 1);
    let again = due(&store, now_ms() + 1, 10, &[]).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2, "a replay keeps the attempt history");
    assert_eq!(&*again[0].msg_id, "msg_a", "and the webhook-id");
    let err = store.replay(vec!["evt_nope".into()]).await.unwrap_err();
    assert_eq!(err.to_string(), "no deliveries for: evt_nope");
    // by event id and by delivery id
    store.settle(id, attempt(Some(400)), Settle::Failed, None).await.unwrap();
    assert_eq!(store.replay(vec!["evt_1".into()]).await.unwrap(), 1);
    store.settle(id, attempt(Some(400)), Settle::Failed, None).await.unwrap();
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(id)]).await.unwrap(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 1);
    // every attempt has its own row, numbered in order (PostgreSQL once numbered a row from the
    // count before its own update, overwriting the attempt before it)
    let ev = store.event("evt_1".into()).await.unwrap().unwrap();
    let log: Vec<(u32, Option<u16>)> = ev.deliveries[0].attempt_log.iter().map(|a| (a.n, a.status_code)).collect();
    assert_eq!(log, [(1, Some(503)), (2, None), (3, Some(400)), (4, Some(400))]);
}

/// The due window is the oldest due first, bounded, ids only; a load returns only what is still
/// pending (a delivery settled meanwhile is not sent again: the dispatcher's lost claim).
pub async fn due_ids_oldest_first_and_only_pending_loads(store: impl Backend) {
    let now = now_ms();
    let mut ids = Vec::new();
    for (i, dest) in ["a", "b", "c"].into_iter().enumerate() {
        ids.extend(accept_to(&store, &format!("evt_{i}"), "app", &[dest]).await);
    }
    // due at now+30 s, now+10 s, now+20 s
    for (id, secs) in ids.iter().zip([30, 10, 20]) {
        store.settle(*id, attempt(Some(503)), Settle::Retry { next_at_ms: now + secs * 1000 }, None).await.unwrap();
    }
    let window = store.due_ids(now + 60_000, 10, Vec::new()).await.unwrap();
    assert_eq!(window, [(ids[1], "b".into()), (ids[2], "c".into()), (ids[0], "a".into())]);
    assert_eq!(store.due_ids(now + 60_000, 2, Vec::new()).await.unwrap().len(), 2, "bounded by the limit");
    assert_eq!(store.due_ids(now + 15_000, 10, Vec::new()).await.unwrap(), [(ids[1], "b".into())]);
    assert_eq!(store.next_due_ms(vec!["b".into()]).await.unwrap(), Some(now + 20_000));

    store.settle(ids[1], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    let loaded: Vec<DeliveryId> =
        store.load_pending(ids.clone(), now + 60_000).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(loaded, [ids[0], ids[2]], "only pending rows load, in the order asked");
    let loaded: Vec<DeliveryId> =
        store.load_pending(ids.clone(), now + 25_000).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(loaded, [ids[2]], "and only those due (another process may have settled one as a retry)");
}

pub async fn dedupe_within_window_only(store: impl Backend) {
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

pub async fn purge_keeps_pending_work(store: impl Backend) {
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

pub async fn skipped_destinations_are_not_due_and_pauses_are_recorded(store: impl Backend) {
    stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a"), delivery("b")], None).await.unwrap());
    let due_now = due(&store, now_ms() + 1, 10, &["a"]).await;
    assert_eq!(due_now.iter().map(|d| &*d.destination).collect::<Vec<_>>(), ["b"]);
    assert_eq!(store.next_due_ms(vec!["a".into(), "b".into()]).await.unwrap(), None);
    // the store's pause flag is bookkeeping for the dispatcher, not a filter: a paused
    // destination that a reload removed must still reach the dispatcher to be failed
    store.set_paused(&"a".into(), true, Some("410 Gone".into())).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), [(DestinationName::from("a"), Some("410 Gone".to_string()))]);
    assert_eq!(due(&store, now_ms() + 1, 10, &[]).await.len(), 2);
    store.set_paused(&"a".into(), false, None).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), []);
}

pub async fn concurrent_accepts_all_commit_and_cursor_pages_cover_them(store: impl Backend) {
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
    assert!(page1.windows(2).all(|w| w[0].id > w[1].id), "newest first");
}

/// Operations sent together (so a backend that groups them may put them in one transaction):
/// the failing ones fail alone. (The SQLite tests also check they did share one group.)
pub async fn a_failing_operation_does_not_undo_the_others(store: impl Backend) {
    let first = stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let s = &store;
    let (dup, ok, bad_settle, good_settle) = tokio::join!(
        s.accept(event("evt_1", None, now_ms()), vec![delivery("b")], None), // duplicate id: fails
        s.accept(event("evt_2", None, now_ms()), vec![delivery("a"), delivery("b")], None),
        s.settle(DeliveryId(999_999), attempt(Some(200)), Settle::Delivered, None), // no such delivery: fails
        s.settle(first[0].id, attempt(Some(200)), Settle::Delivered, None),
    );
    assert!(dup.is_err(), "the same event id twice is an error");
    assert!(bad_settle.is_err(), "settling an unknown delivery is an error");
    let due_now = stored(ok.unwrap());
    assert_eq!(due_now.iter().map(|d| &*d.destination).collect::<Vec<_>>(), ["a", "b"]);
    good_settle.unwrap();
    let ev2 = store.event("evt_2".into()).await.unwrap().expect("evt_2 committed");
    assert_eq!(ev2.deliveries.len(), 2);
    let ev1 = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev1.deliveries.len(), 1, "the failed duplicate left no delivery behind");
    assert_eq!(ev1.deliveries[0].delivery.status, DeliveryStatus::Delivered);
    assert_eq!(ev1.deliveries[0].attempt_log.len(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 2);
}

pub async fn destination_stats_count_pending_dead_and_failed_per_destination(store: impl Backend) {
    let now = now_ms();
    let mut ids = Vec::new();
    for i in 0..6 {
        let due_now = store.accept(event(&format!("evt_{i}"), None, now), vec![delivery("a"), delivery("b")], None);
        ids.extend(stored(due_now.await.unwrap()).into_iter().map(|d| (d.destination, d.id)));
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
        [DestinationStats { destination: "a".into(), pending: 2, oldest_due_ms: oldest, dead: 2, failed: 1, held: 0 }]
    );
    store.replay_dead(Some("a".into()), None).await.unwrap();
    let stats = store.destination_stats(now + 1_000).await.unwrap();
    assert_eq!((stats[0].pending, stats[0].dead, stats[0].failed), (4, 0, 1));
}

/// A delivery cancelled while an attempt of it is in flight (loaded, claimed, being sent)
/// stays cancelled when that attempt settles as a retry or a failure: the attempt is recorded,
/// the status is not written back to pending. An attempt that delivered it makes it delivered.
pub async fn a_cancel_survives_the_settle_of_an_attempt_in_flight(store: impl Backend) {
    let ids = accept_to(&store, "evt_1", "app", &["a", "b", "c", "keep"]).await;
    let (a, b, c, keep) = (ids[0], ids[1], ids[2], ids[3]);
    // the dispatcher has loaded all four for attempts in flight
    assert_eq!(store.load_pending(ids.clone(), now_ms()).await.unwrap().len(), 4);

    for d in ["a", "b", "c"] {
        assert_eq!(store.count_cancellable(by_destination(d)).await.unwrap(), 1);
        assert_eq!(store.cancel(by_destination(d), "cli:alice".into(), Some("retired".into())).await.unwrap(), 1);
    }
    assert_eq!(store.pending_count().await.unwrap(), 1, "cancelled deliveries are not pending");
    assert_eq!(store.count_cancellable(by_destination("a")).await.unwrap(), 0);

    let answer = |code| AttemptRecord { response: Bytes::new(), latency_ms: 1, ..attempt(Some(code)) };
    store.settle(a, answer(503), Settle::Retry { next_at_ms: 0 }, Some("HTTP 503".into())).await.unwrap();
    store.settle(b, answer(400), Settle::Failed, Some("HTTP 400".into())).await.unwrap();
    store.settle(c, answer(200), Settle::Delivered, None).await.unwrap();
    store.settle(keep, answer(503), Settle::Retry { next_at_ms: 0 }, None).await.unwrap();

    let (st, attempts, cancelled) = status(&store, a).await;
    assert_eq!((st, attempts), (DeliveryStatus::Cancelled, 1), "the retry did not bring it back");
    let cancelled = cancelled.expect("who and why");
    assert_eq!((cancelled.by.as_str(), cancelled.reason.as_deref()), ("cli:alice", Some("retired")));
    assert_eq!(status(&store, b).await.0, DeliveryStatus::Cancelled, "a failure does not replace the cancel");
    assert_eq!(status(&store, c).await.0, DeliveryStatus::Delivered, "what was delivered says so");
    assert_eq!(status(&store, c).await.2, None);
    let ev = store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev.deliveries[0].attempt_log.len(), 1, "the attempt in flight is in the log");

    // never due again, except the one not cancelled
    let due_now: Vec<DeliveryId> = due(&store, now_ms() + 1, 10, &[]).await.iter().map(|d| d.id).collect();
    assert_eq!(due_now, [keep]);
    assert_eq!(store.pending_count().await.unwrap(), 1);

    // replayed by id like a failed delivery: pending and due again, no longer shown cancelled
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(a)]).await.unwrap(), 1);
    assert_eq!(status(&store, a).await, (DeliveryStatus::Pending, 1, None));
    let mut due_now: Vec<DeliveryId> = due(&store, now_ms() + 1, 10, &[]).await.iter().map(|d| d.id).collect();
    due_now.sort();
    assert_eq!(due_now, [a, keep]);
}

pub async fn selections_name_pending_deliveries_by_id_event_or_filter(store: impl Backend) {
    let e1 = accept_to(&store, "evt_1", "app", &["a", "b"]).await;
    let e2 = accept_to(&store, "evt_2", "other", &["a"]).await;
    let e3 = accept_to(&store, "evt_3", "app", &["b"]).await;
    store.settle(e3[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    let count = |s: DeliverySelection| {
        let store = store.clone();
        async move { store.count_cancellable(s).await.map_err(|e| e.to_string()) }
    };
    let ids = |ids: &[&str]| DeliverySelection {
        ids: ids.iter().map(|s| DeliveryRef::parse(s)).collect(),
        ..Default::default()
    };
    assert_eq!(count(ids(&[&e1[0].to_string()])).await, Ok(1));
    assert_eq!(count(ids(&["evt_1"])).await, Ok(2));
    assert_eq!(count(ids(&["evt_1", &e2[0].to_string()])).await, Ok(3));
    assert_eq!(count(ids(&[&e3[0].to_string()])).await, Ok(0), "delivered: nothing to cancel");
    assert_eq!(count(ids(&["evt_9", "999"])).await, Err("no deliveries for: evt_9, 999".to_string()));
    assert_eq!(count(by_destination("a")).await, Ok(2));
    assert_eq!(count(DeliverySelection { source: Some("other".into()), ..Default::default() }).await, Ok(1));
    let future = DeliverySelection { since_ms: Some(now_ms() + 60_000), ..Default::default() };
    assert_eq!(count(future).await, Ok(0));
    assert_eq!(count(DeliverySelection { all: true, ..Default::default() }).await, Ok(3));
    assert_eq!(
        DeliverySelection::default().check(),
        Some("nothing selected: give ids, a filter (destination, source, since) or all")
    );
    // an unknown id cancels nothing, not even the known ones
    let err = store.cancel(ids(&["evt_1", "evt_9"]), "operator".into(), None).await.unwrap_err();
    assert_eq!(err.to_string(), "no deliveries for: evt_9");
    assert_eq!(store.pending_count().await.unwrap(), 3);
}

pub async fn purging_dead_letters_deletes_them_and_events_left_empty(store: impl Backend) {
    let e1 = accept_to(&store, "evt_1", "app", &["a"]).await;
    let e2 = accept_to(&store, "evt_2", "app", &["a", "b"]).await;
    let e3 = accept_to(&store, "evt_3", "app", &["b"]).await;
    for id in [e1[0], e2[0], e3[0]] {
        store.settle(id, attempt(None), Settle::Dead, Some("timed out".into())).await.unwrap();
    }
    assert_eq!(store.count_dead(None, None, None).await.unwrap(), 3);
    assert_eq!(store.count_dead(Some("a".into()), None, None).await.unwrap(), 2);
    assert_eq!(store.count_dead(None, None, Some(now_ms() - 60_000)).await.unwrap(), 0, "none older than a minute");
    assert_eq!(store.count_dead(None, Some(now_ms() - 60_000), None).await.unwrap(), 3, "all dead within a minute");
    assert_eq!(store.count_dead(None, Some(now_ms() + 60_000), None).await.unwrap(), 0, "none dead from a minute on");
    let purged = store.purge_dead(Some("a".into()), None).await.unwrap();
    assert_eq!(purged, Purged { deliveries: 2, events: 1 }, "evt_2 keeps its delivery to b");
    assert!(store.event("evt_1".into()).await.unwrap().is_none());
    let ev2 = store.event("evt_2".into()).await.unwrap().unwrap();
    assert_eq!(ev2.deliveries.len(), 1);
    assert_eq!(store.count_dead(None, None, None).await.unwrap(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 1, "pending work is never purged");
}

fn ordered(dest: &str, key: &str, block: bool) -> NewDelivery {
    NewDelivery { order: Some(OrderSpec { key: key.into(), block }), ..delivery(dest) }
}

/// Accepts event `id` with one delivery per (key, block) to destination "o"; returns their ids
/// and which were due at once.
async fn accept_ordered(store: &impl Backend, id: &str, keys: &[(&str, bool)]) -> (Vec<DeliveryId>, Vec<DeliveryId>) {
    let planned = keys.iter().map(|(k, b)| ordered("o", k, *b)).collect();
    let due_now: Vec<DeliveryId> =
        stored(store.accept(event_from(id, "app"), planned, None).await.unwrap()).iter().map(|d| d.id).collect();
    let ev = store.event(id.into()).await.unwrap().unwrap();
    (ev.deliveries.iter().map(|d| d.delivery.id).collect(), due_now)
}

async fn due_ids_now(store: &impl Backend) -> Vec<DeliveryId> {
    let mut ids: Vec<DeliveryId> = due(store, now_ms() + 1, 100, &[]).await.iter().map(|d| d.id).collect();
    ids.sort();
    ids
}

async fn advance(store: &impl Backend, key: &str) -> Option<DeliveryId> {
    store.advance("o".into(), key.into()).await.unwrap()
}

/// Of a key's pending deliveries only the first accepted is due (the fast path gets only it);
/// the next one becomes due when the key is advanced after the head ended; keys are independent.
pub async fn ordered_deliveries_go_one_at_a_time_per_key_in_accept_order(store: impl Backend) {
    let (a1, due1) = accept_ordered(&store, "evt_1", &[("A", false)]).await;
    let (a2, due2) = accept_ordered(&store, "evt_2", &[("A", false)]).await;
    let (b1, due3) = accept_ordered(&store, "evt_3", &[("B", false)]).await;
    let (a3, _) = accept_ordered(&store, "evt_4", &[("A", false)]).await;
    // two deliveries of one key in one accept (two routes to one destination)
    let (c, due5) = accept_ordered(&store, "evt_5", &[("C", false), ("C", false)]).await;
    assert_eq!((due1, due2, due3, due5), (a1.clone(), vec![], b1.clone(), vec![c[0]]), "only heads are due at once");
    assert_eq!(due_ids_now(&store).await, [a1[0], b1[0], c[0]]);
    assert_eq!(store.pending_count().await.unwrap(), 6, "waiting deliveries are pending");
    let rows = store.list_deliveries(DeliveryFilter { limit: 100, ..Default::default() }).await.unwrap();
    let waiting: Vec<DeliveryId> = rows.iter().filter(|r| r.waiting()).map(|r| r.id).rev().collect();
    assert_eq!(waiting, [a2[0], a3[0], c[1]]);
    assert!(rows.iter().all(|r| r.order_key.is_some() && !r.held));
    // a retrying head keeps its key: nothing moves on
    let later = now_ms() + 60_000;
    store.settle(a1[0], attempt(Some(503)), Settle::Retry { next_at_ms: later }, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, None);
    assert_eq!(due_ids_now(&store).await, [b1[0], c[0]]);
    store.settle(a1[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(a2[0]), "the next of the key is its head, due now");
    assert_eq!(advance(&store, "A").await, Some(a2[0]), "advancing again changes nothing");
    // skip (the default on_dead): a dead head lets its key move on
    store.settle(a2[0], attempt(Some(503)), Settle::Dead, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(a3[0]));
    // the settle and the advance in one go (one commit on SQLite)
    let head = store.settle_and_advance(c[0], attempt(Some(200)), Settle::Delivered, None, "o".into(), "C".into());
    assert_eq!(head.await.unwrap(), Some(c[1]));
    assert_eq!(due_ids_now(&store).await, [b1[0], a3[0], c[1]]);
    assert_eq!(advance(&store, "nokey").await, None);
}

/// `on_dead: block`: a head that ends dead or failed holds its key (counted per destination)
/// until a skip or a replay; a held head's event outlives the retention purge.
pub async fn a_held_key_waits_for_a_replay_or_a_skip(store: impl Backend) {
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(accept_ordered(&store, &format!("evt_{i}"), &[("A", true)]).await.0[0]);
    }
    store.settle(ids[0], attempt(Some(503)), Settle::Dead, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, None, "held");
    assert!(due_ids_now(&store).await.is_empty());
    let stats = store.destination_stats(now_ms()).await.unwrap();
    assert_eq!((stats[0].held, stats[0].dead, stats[0].pending), (1, 1, 3));
    assert_eq!(store.purge(now_ms() + 1).await.unwrap(), 0, "the purge keeps a held head");
    let err = store.skip(vec![DeliveryId(999_999)]).await.unwrap_err();
    assert_eq!(err.to_string(), "no deliveries for: 999999");
    assert_eq!(store.skip(vec![ids[1]]).await.unwrap(), 0, "a waiting delivery holds nothing");
    assert_eq!(store.skip(vec![ids[0]]).await.unwrap(), 1);
    assert_eq!(due_ids_now(&store).await, [ids[1]], "the skip moved the key on");
    let rows = store.list_deliveries(DeliveryFilter { limit: 100, ..Default::default() }).await.unwrap();
    let first = rows.iter().find(|r| r.id == ids[0]).unwrap();
    assert_eq!((first.status, first.held), (DeliveryStatus::Dead, false), "a skipped head stays dead");
    // a 4xx holds too; a replay lets it go again, first
    store.settle(ids[1], attempt(Some(422)), Settle::Failed, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, None);
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(ids[1])]).await.unwrap(), 1);
    assert_eq!(due_ids_now(&store).await, [ids[1]]);
    store.settle(ids[1], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(ids[2]));
    // replaying dead letters releases their keys too
    store.settle(ids[2], attempt(None), Settle::Dead, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, None);
    assert_eq!(store.replay_dead(Some("o".into()), None).await.unwrap(), 2, "both dead letters of the key");
    assert_eq!(due_ids_now(&store).await, [ids[0]], "the oldest replayed goes first");
    assert_eq!(store.destination_stats(now_ms()).await.unwrap()[0].held, 0);
}

/// A replay of an ordered delivery waits for the delivery of its key in flight, then goes before
/// every later one (its place is its accept order).
pub async fn a_replayed_ordered_delivery_goes_back_to_its_place(store: impl Backend) {
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accept_ordered(&store, &format!("evt_{i}"), &[("A", false)]).await.0[0]);
    }
    store.settle(ids[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(ids[1]));
    // ids[1] is the head (in flight, say) when ids[0] is replayed
    assert_eq!(store.replay(vec!["evt_0".into()]).await.unwrap(), 1);
    assert_eq!(due_ids_now(&store).await, [ids[1]], "the replay waits for the head");
    store.settle(ids[1], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(ids[0]), "then goes before the later ones");
    store.settle(ids[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert_eq!(advance(&store, "A").await, Some(ids[2]));
    // replaying the head itself makes it due now, and nothing else
    store.settle(ids[2], attempt(Some(503)), Settle::Retry { next_at_ms: now_ms() + 60_000 }, None).await.unwrap();
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(ids[2])]).await.unwrap(), 1);
    assert_eq!(due_ids_now(&store).await, [ids[2]]);
}

/// A cancelled head lets its key move on; a key left with no head (its process stopped between
/// the head's settle and the advance) is advanced by the sweep.
pub async fn cancelling_a_head_and_sweeping_stalled_keys_advance_them(store: impl Backend) {
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accept_ordered(&store, &format!("evt_{i}"), &[("A", true)]).await.0[0]);
    }
    let (b, _) = accept_ordered(&store, "evt_b1", &[("B", true)]).await;
    let (b2, _) = accept_ordered(&store, "evt_b2", &[("B", true)]).await;
    let (c, _) = accept_ordered(&store, "evt_c1", &[("C", true)]).await;
    accept_ordered(&store, "evt_c2", &[("C", true)]).await;
    store.settle(c[0], attempt(Some(503)), Settle::Dead, None).await.unwrap();
    let selection = DeliverySelection { ids: vec![DeliveryRef::Delivery(ids[0])], ..Default::default() };
    assert_eq!(store.cancel(selection, "operator".into(), None).await.unwrap(), 1);
    assert_eq!(due_ids_now(&store).await, [ids[1], b[0]]);
    // settled, and the process "stops" before advancing either key
    store.settle(ids[1], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    store.settle(b[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    assert!(due_ids_now(&store).await.is_empty());
    assert_eq!(store.advance_stalled().await.unwrap(), 2, "A and B; C is held");
    assert_eq!(due_ids_now(&store).await, [ids[2], b2[0]]);
    assert_eq!(store.advance_stalled().await.unwrap(), 0, "every key has its head");
}

/// Deliveries of a batched destination are never due alone; a batch takes the oldest, closed by
/// `max_events`, `max_bytes` (a larger one alone) or the oldest's `max_wait`; it is due with its
/// own `webhook-id`, kept across its retries; its members take its outcome, each with its own
/// attempt log; a replayed member goes in a new batch; `unbatch` sends the rest one by one.
pub async fn batches_close_at_the_first_limit_and_settle_their_members(store: impl Backend) {
    let batched = || NewDelivery { batch: true, ..delivery("b") };
    let mut events = Vec::new();
    for i in 0..5 {
        let id = format!("evt_{i}");
        assert!(stored(store.accept(event_from(&id, "app"), vec![batched()], None).await.unwrap()).is_empty());
        events.push(id);
    }
    assert!(due(&store, now_ms() + 1, 10, &[]).await.is_empty(), "never due alone");
    let now = now_ms();
    let limits = BatchLimits { max_events: 3, max_bytes: 1000, max_wait_ms: 60_000 };
    let Formation::Formed { batch: b1, events: 3 } = store.form_batch("b".into(), limits, now).await.unwrap() else {
        panic!("max_events closes the first batch")
    };
    let Formation::NotYet { due_at_ms, awaiting: 2 } = store.form_batch("b".into(), limits, now).await.unwrap() else {
        panic!("two left, neither full nor old")
    };
    assert!(due_at_ms > now + 59_000 && due_at_ms <= now + 60_000, "{due_at_ms}");
    let Formation::Formed { batch: b2, events: 2 } = store.form_batch("b".into(), limits, now + 60_000).await.unwrap()
    else {
        panic!("max_wait closes the second")
    };
    assert_eq!(store.form_batch("b".into(), limits, now + 60_000).await.unwrap(), Formation::Empty);
    // a batch is due from when it was formed
    let t = now + 60_000;
    assert_eq!(store.due_batches(t, 10, vec![]).await.unwrap(), [(b1, "b".into()), (b2, "b".into())]);
    assert!(store.due_batches(t, 10, vec!["b".into()]).await.unwrap().is_empty(), "skipped");
    let first = store.load_batch(b1, now_ms() + 1).await.unwrap().unwrap();
    assert_eq!(first.members.len(), 3);
    assert!(first.members.iter().all(|(_, body)| &body[..] == b"{}"));
    assert!(first.msg_id.starts_with("msg_") && first.msg_id.len() == 28, "{}", first.msg_id);
    let members: Vec<DeliveryId> = first.members.iter().map(|m| m.0).collect();
    let later = now + 120_000;
    store
        .settle_batch(b1, members.clone(), attempt(Some(503)), Settle::Retry { next_at_ms: later }, None)
        .await
        .unwrap();
    assert_eq!(store.due_batches(t, 10, vec![]).await.unwrap(), [(b2, "b".into())]);
    assert_eq!(store.next_due_ms(vec![]).await.unwrap(), Some(t), "b2 is due next");
    assert!(due(&store, later, 10, &[]).await.is_empty(), "a retried member is not due alone");
    let again = store.load_batch(b1, later).await.unwrap().unwrap();
    assert_eq!((again.attempts, &again.msg_id), (1, &first.msg_id), "the same webhook-id");
    store.settle_batch(b1, members.clone(), attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    let ev = store.event(events[0].as_str().into()).await.unwrap().unwrap();
    let d = &ev.deliveries[0];
    assert_eq!((d.delivery.status, d.delivery.batch_id), (DeliveryStatus::Delivered, Some(b1)));
    assert_eq!(d.delivery.batch_msg_id.as_ref(), Some(&first.msg_id));
    let codes: Vec<Option<u16>> = d.attempt_log.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(503), Some(200)], "each member has the batch's attempts");
    assert!(store.load_batch(b1, later).await.unwrap().is_none(), "delivered: no longer due");

    // a replayed member awaits a new batch
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(members[0])]).await.unwrap(), 1);
    assert!(due(&store, now_ms() + 1, 10, &[]).await.is_empty());
    let t = now_ms() + 60_000;
    let Formation::Formed { batch: b3, events: 1 } = store.form_batch("b".into(), limits, t).await.unwrap() else {
        panic!("the replayed member in a batch of its own")
    };
    let third = store.load_batch(b3, t).await.unwrap().unwrap();
    assert_ne!(third.msg_id, first.msg_id);
    store.settle_batch(b3, vec![members[0]], attempt(Some(200)), Settle::Delivered, None).await.unwrap();

    // max_bytes: "{}" is 2 bytes; 3 bytes fit one
    for i in 5..7 {
        stored(store.accept(event_from(&format!("evt_{i}"), "app"), vec![batched()], None).await.unwrap());
    }
    let tight = BatchLimits { max_events: 100, max_bytes: 3, max_wait_ms: 60_000 };
    assert!(matches!(
        store.form_batch("b".into(), tight, now_ms()).await.unwrap(),
        Formation::Formed { events: 1, .. }
    ));
    // one is left awaiting: without `batch:` any more, it goes alone
    assert_eq!(store.unbatch(vec!["b".into()]).await.unwrap(), 0, "b still batches");
    assert_eq!(store.unbatch(vec!["other".into()]).await.unwrap(), 1);
    assert_eq!(due(&store, now_ms() + 1, 10, &[]).await.len(), 1);
    // a batch whose members were all cancelled is not sent
    stored(store.accept(event_from("evt_9", "app"), vec![batched()], None).await.unwrap());
    let t = now_ms() + 60_000;
    let Formation::Formed { batch: b4, .. } = store.form_batch("b".into(), limits, t).await.unwrap() else {
        panic!("formed")
    };
    let selection = DeliverySelection { ids: vec!["evt_9".into()], ..Default::default() };
    assert_eq!(store.cancel(selection, "operator".into(), None).await.unwrap(), 1);
    assert!(store.load_batch(b4, t).await.unwrap().is_none(), "nothing left to send");
    assert!(!store.due_batches(t, 10, vec![]).await.unwrap().iter().any(|(b, _)| *b == b4), "and it is no longer due");
}

/// Every page of [`Inspect::export_events`] for `filter`, `limit` events at a time, as event ids.
async fn export_walk(store: &impl Backend, filter: ExportFilter, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut filter = ExportFilter { limit, after: None, ..filter };
    loop {
        let page = store.export_events(filter.clone()).await.unwrap();
        assert!(page.len() <= limit, "a page of {} events for a limit of {limit}", page.len());
        let Some(last) = page.last() else { return ids };
        filter.after = Some(last.cursor());
        ids.extend(page.iter().map(|e| e.id.to_string()));
    }
}

pub(crate) async fn export_pages_the_log_in_accept_order_with_its_filters(store: impl Backend) {
    // accepted out of order, three of them in one millisecond (ordered there by id)
    let log: [(&str, i64, &str, &str); 6] = [
        ("evt_c", 1_000, "github", "main"),
        ("evt_a", 1_000, "github", "main"),
        ("evt_b", 1_000, "stripe", "billing"),
        ("evt_d", 2_000, "github", "billing"),
        ("evt_0", 500, "stripe", "main"),
        ("evt_e", 3_000, "github", "main"),
    ];
    for (id, at, source, route) in log {
        let ev = NewEvent {
            source: source.into(),
            body: if id == "evt_d" {
                Bytes::from_static(b"\xff\x00not utf-8")
            } else {
                Bytes::from(format!("{{\"id\":\"{id}\"}}"))
            },
            ..event(id, None, at)
        };
        stored(store.accept(ev, vec![NewDelivery { route: route.into(), ..delivery("a") }], None).await.unwrap());
    }
    let all = ["evt_0", "evt_a", "evt_b", "evt_c", "evt_d", "evt_e"];
    // page sizes that end pages inside the shared millisecond, at its end, and past the log
    for limit in [1, 2, 4, 100] {
        assert_eq!(export_walk(&store, ExportFilter::default(), limit).await, all, "pages of {limit}");
    }
    let since_until = ExportFilter { since_ms: Some(1_000), until_ms: Some(3_000), ..Default::default() };
    assert_eq!(export_walk(&store, since_until, 2).await, ["evt_a", "evt_b", "evt_c", "evt_d"], "until is exclusive");
    let stripe = ExportFilter { source: Some("stripe".into()), ..Default::default() };
    assert_eq!(export_walk(&store, stripe, 1).await, ["evt_0", "evt_b"]);
    let billing = ExportFilter { route: Some("billing".into()), ..Default::default() };
    assert_eq!(export_walk(&store, billing, 1).await, ["evt_b", "evt_d"]);
    let nothing = ExportFilter { source: Some("gone".into()), ..Default::default() };
    assert!(export_walk(&store, nothing, 10).await.is_empty());

    // what arrived comes back as it was stored; deliveries only when asked, one list per event
    let page = store.export_events(ExportFilter { limit: 10, ..Default::default() }).await.unwrap();
    let d = page.iter().find(|e| e.id == "evt_d").unwrap();
    assert_eq!((d.source.as_str(), d.received_at_ms), ("github", 2_000));
    assert_eq!(d.headers, [("x-github-event".to_string(), "push".to_string())]);
    assert_eq!(&d.body[..], b"\xff\x00not utf-8");
    assert!(page.iter().all(|e| e.deliveries.is_empty()), "no deliveries unless asked");

    // a second delivery of one event, re-routed later, comes with it
    store.add_deliveries("evt_a".into(), vec![NewDelivery { route: "later".into(), ..delivery("b") }]).await.unwrap();
    let page = store
        .export_events(ExportFilter { deliveries: true, until_ms: Some(2_000), limit: 10, ..Default::default() })
        .await
        .unwrap();
    let planned: Vec<String> = page
        .iter()
        .map(|e| {
            let ds: Vec<String> =
                e.deliveries.iter().map(|d| format!("{}>{} {}", d.route, d.destination, d.status)).collect();
            format!("{}: {}", e.id, ds.join(", "))
        })
        .collect();
    assert_eq!(
        planned,
        [
            "evt_0: main>a pending",
            "evt_a: main>a pending, later>b pending",
            "evt_b: billing>a pending",
            "evt_c: main>a pending"
        ]
    );
    let later = ExportFilter { route: Some("later".into()), ..Default::default() };
    assert_eq!(export_walk(&store, later, 10).await, ["evt_a"], "a route filter sees re-routed deliveries");

    // the console's event log: newest first, by destination and status too
    let newest = |f: ExportFilter| ExportFilter { newest_first: true, ..f };
    for limit in [1, 2, 4, 100] {
        let mut reversed = all;
        reversed.reverse();
        assert_eq!(export_walk(&store, newest(ExportFilter::default()), limit).await, reversed, "pages of {limit}");
    }
    let since_until = newest(ExportFilter { since_ms: Some(1_000), until_ms: Some(3_000), ..Default::default() });
    assert_eq!(export_walk(&store, since_until, 2).await, ["evt_d", "evt_c", "evt_b", "evt_a"], "until is exclusive");
    let to_b = newest(ExportFilter { destination: Some("b".into()), ..Default::default() });
    assert_eq!(export_walk(&store, to_b, 1).await, ["evt_a"]);
    let id = store.list_deliveries(DeliveryFilter { destination: Some("b".into()), limit: 1, ..Default::default() });
    let id = id.await.unwrap()[0].id;
    let record =
        AttemptRecord { at_ms: now_ms(), status_code: Some(200), latency_ms: 1, response: Bytes::new(), error: None };
    store.settle(id, record, Settle::Delivered, None).await.unwrap();
    let delivered = newest(ExportFilter { status: Some(DeliveryStatus::Delivered), ..Default::default() });
    assert_eq!(export_walk(&store, delivered, 1).await, ["evt_a"]);
    let both = newest(ExportFilter {
        route: Some("main".into()),
        status: Some(DeliveryStatus::Delivered),
        ..Default::default()
    });
    assert!(export_walk(&store, both, 1).await.is_empty(), "one delivery must be both");
    let pending_main = newest(ExportFilter {
        route: Some("main".into()),
        destination: Some("a".into()),
        status: Some(DeliveryStatus::Pending),
        ..Default::default()
    });
    assert_eq!(export_walk(&store, pending_main, 3).await, ["evt_e", "evt_c", "evt_a", "evt_0"]);

    // a delivery by the webhook-id its receiver saw
    let msg = store.list_deliveries(DeliveryFilter { limit: 100, ..Default::default() }).await.unwrap();
    let wanted = msg.iter().find(|d| d.id == id).unwrap().msg_id.to_string();
    let found = store.list_deliveries(DeliveryFilter { msg_id: Some(wanted), limit: 10, ..Default::default() });
    assert_eq!(found.await.unwrap().iter().map(|d| d.id).collect::<Vec<_>>(), [id]);
}

/// An event to crm, then billing after crm, then notify after billing (`then:`), with crm's URL
/// rendered; returns the three deliveries' ids and what was due at once.
async fn accept_chain(store: &impl Backend, id: &str) -> (Vec<DeliveryId>, Vec<DueDelivery>) {
    let planned = vec![
        NewDelivery { url: Some("https://crm.example.com/t/acme".into()), ..delivery("crm") },
        NewDelivery { after: Some(0), ..delivery("billing") },
        NewDelivery { after: Some(1), ..delivery("notify") },
    ];
    let due_now = stored(store.accept(event(id, None, now_ms()), planned, None).await.unwrap());
    let rows = store.event(id.into()).await.unwrap().unwrap().deliveries;
    (rows.iter().map(|d| d.delivery.id).collect(), due_now)
}

/// The chain's first step ends dead: the step after it is skipped.
async fn dead_first_step(store: &impl Backend, ids: &[DeliveryId]) {
    let skip = vec![StepDecision::Skip { id: ids[1], reason: "dead".into() }];
    store.settle_steps(ids[0], attempt(None), Settle::Dead, None, skip).await.unwrap();
}

async fn row(store: &impl Backend, id: DeliveryId) -> super::DeliveryRow {
    let rows = store.list_deliveries(DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
    rows.into_iter().find(|r| r.id == id).unwrap()
}

fn release(id: DeliveryId, url: &str, context: &str) -> StepDecision {
    StepDecision::Release {
        id,
        url: Some(url.into()),
        headers: Some(vec![("x-contact".into(), "c_1".into())]),
        body: Some(Bytes::from_static(b"{\"contact\":\"c_1\"}")),
        context: Bytes::from(context.to_string()),
    }
}

pub async fn a_later_step_waits_for_the_one_before_and_is_released_with_its_request(store: impl Backend) {
    let (ids, due_now) = accept_chain(&store, "evt_c").await;
    assert_eq!(due_now.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]], "only the first step is due");
    assert!(due_now[0].leads, "later steps follow it");
    assert_eq!(due_now[0].url.as_deref(), Some("https://crm.example.com/t/acme"));
    assert_eq!(due(&store, now_ms() + 1, 10, &[]).await.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    let billing = row(&store, ids[1]).await;
    assert_eq!((billing.status, billing.waiting(), billing.after), (DeliveryStatus::Pending, true, Some(ids[0])));
    assert_eq!(row(&store, ids[0]).await.url.as_deref(), Some("https://crm.example.com/t/acme"));
    assert_eq!(store.steps_after(ids[0]).await.unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), [ids[1]]);
    // a retry of the first decides nothing
    store.settle(ids[0], attempt(Some(503)), Settle::Retry { next_at_ms: now_ms() }, None).await.unwrap();
    assert!(row(&store, ids[1]).await.waiting());
    // delivered: billing goes, with its request; notify still waits for billing
    let context = r#"{"crm":{"status":201}}"#;
    let decisions = vec![release(ids[1], "https://billing.example.com/c_1", context)];
    store.settle_steps(ids[0], attempt(Some(201)), Settle::Delivered, None, decisions).await.unwrap();
    let due_now = due(&store, now_ms() + 1, 10, &[]).await;
    assert_eq!(due_now.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[1]]);
    let b = &due_now[0];
    assert_eq!(b.url.as_deref(), Some("https://billing.example.com/c_1"));
    assert_eq!(&b.body[..], b"{\"contact\":\"c_1\"}");
    assert_eq!(b.extra_headers.as_deref().unwrap(), &[("x-contact".to_string(), "c_1".to_string())]);
    assert_eq!(b.context.as_deref(), Some(context.as_bytes()), "the responses its own later steps read");
    assert!(b.leads);
    assert!(row(&store, ids[2]).await.waiting());
    // a decision on a step no longer waiting changes nothing
    let again = vec![StepDecision::Skip { id: ids[1], reason: "late".into() }];
    store.settle_steps(ids[0], attempt(Some(200)), Settle::Delivered, None, again).await.unwrap();
    assert_eq!(row(&store, ids[1]).await.status, DeliveryStatus::Pending);
    assert!(!row(&store, ids[1]).await.waiting());
}

pub async fn a_step_that_does_not_go_on_skips_the_chain_after_it_and_a_replay_resumes_it(store: impl Backend) {
    let (ids, _) = accept_chain(&store, "evt_c").await;
    let decisions = vec![StepDecision::Skip { id: ids[1], reason: "crm (delivery 1) ended dead".into() }];
    store.settle_steps(ids[0], attempt(Some(503)), Settle::Dead, None, decisions).await.unwrap();
    let (billing, notify) = (row(&store, ids[1]).await, row(&store, ids[2]).await);
    assert_eq!(
        (billing.status, billing.last_error.as_deref()),
        (DeliveryStatus::Skipped, Some("crm (delivery 1) ended dead"))
    );
    assert_eq!(notify.status, DeliveryStatus::Skipped);
    assert_eq!(
        notify.last_error.unwrap(),
        format!("the step before it (delivery {}) was not sent: crm (delivery 1) ended dead", ids[1].0)
    );
    assert!(due(&store, now_ms() + 1, 10, &[]).await.is_empty());
    assert_eq!(store.purge(now_ms() + 1).await.unwrap(), 1, "skipped is final: the event's history may go");
    let (ids, _) = accept_chain(&store, "evt_d").await;
    dead_first_step(&store, &ids).await;
    // a skipped step cannot be replayed alone: it has no request without crm's answer
    let err = store.replay(vec![DeliveryRef::Delivery(ids[1])]).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "delivery {b} is a later step that was never sent (skipped): it needs the answer of delivery {c}; replay {c} to resume the chain",
            b = ids[1].0,
            c = ids[0].0
        )
    );
    // replaying crm makes its skipped steps wait for its new answer
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(ids[0])]).await.unwrap(), 3);
    assert_eq!(due(&store, now_ms() + 1, 10, &[]).await.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    for id in &ids[1..] {
        let r = row(&store, *id).await;
        assert_eq!((r.status, r.waiting(), r.last_error), (DeliveryStatus::Pending, true, None));
    }
    // a step whose request cannot be rendered is failed, and the ones after it skipped
    let failing = vec![StepDecision::Fail { id: ids[1], reason: "url: {{ response.crm:$.id }}: missing".into() }];
    store.settle_steps(ids[0], attempt(Some(200)), Settle::Delivered, None, failing).await.unwrap();
    assert_eq!(row(&store, ids[1]).await.status, DeliveryStatus::Failed);
    assert_eq!(row(&store, ids[2]).await.status, DeliveryStatus::Skipped);
    // dead letters replayed bring their skipped steps back too
    let (ids, _) = accept_chain(&store, "evt_e").await;
    dead_first_step(&store, &ids).await;
    assert_eq!(store.replay_dead(Some("crm".into()), None).await.unwrap(), 1);
    assert!(row(&store, ids[1]).await.waiting() && row(&store, ids[2]).await.waiting());
}

pub async fn replaying_or_cancelling_a_chain(store: impl Backend) {
    let (ids, _) = accept_chain(&store, "evt_c").await;
    store
        .settle_steps(ids[0], attempt(Some(201)), Settle::Delivered, None, vec![release(ids[1], "https://b/1", "{}")])
        .await
        .unwrap();
    store
        .settle_steps(ids[1], attempt(Some(200)), Settle::Delivered, None, vec![release(ids[2], "https://n/1", "{}")])
        .await
        .unwrap();
    store.settle(ids[2], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    // an event replayed: its first step is due, the later ones wait for theirs again
    assert_eq!(store.replay(vec![DeliveryRef::Event("evt_c".into())]).await.unwrap(), 3);
    assert_eq!(due(&store, now_ms() + 1, 10, &[]).await.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    assert!(row(&store, ids[1]).await.waiting() && row(&store, ids[2]).await.waiting());
    // a rendered step keeps its request (and is known as rendered)
    let steps = store.steps_after(ids[0]).await.unwrap();
    assert!(steps[0].rendered);
    // a released step, replayed alone, is sent again as it was rendered
    store
        .settle_steps(ids[0], attempt(Some(201)), Settle::Delivered, None, vec![release(ids[1], "https://b/1", "{}")])
        .await
        .unwrap();
    store.settle(ids[1], attempt(Some(500)), Settle::Dead, None).await.unwrap();
    assert_eq!(store.replay(vec![DeliveryRef::Delivery(ids[1])]).await.unwrap(), 1);
    let due_now = due(&store, now_ms() + 1, 10, &[]).await;
    assert_eq!((due_now[0].id, due_now[0].url.as_deref()), (ids[1], Some("https://b/1")));
    // cancelling a step that others follow skips them
    let (ids, _) = accept_chain(&store, "evt_x").await;
    let sel = DeliverySelection { ids: vec![DeliveryRef::Delivery(ids[0])], ..Default::default() };
    assert_eq!(store.cancel(sel, "cli:test".into(), None).await.unwrap(), 1);
    let (billing, notify) = (row(&store, ids[1]).await, row(&store, ids[2]).await);
    assert_eq!(billing.status, DeliveryStatus::Skipped);
    assert_eq!(billing.last_error.unwrap(), format!("the step before it (delivery {}) was cancelled", ids[0].0));
    assert_eq!(notify.status, DeliveryStatus::Skipped);
}
