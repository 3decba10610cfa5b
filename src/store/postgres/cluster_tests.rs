//! Several instances on one schema, as two or more `PgStore`s (each is an instance: its own id,
//! pool and writer) against the real server: leases, their end, deduplication by the unique key,
//! the purge lock, heartbeats and signals.

use std::time::{Duration, Instant};

use super::testing::Schema;
use super::*;
use crate::config::Dur;
use crate::store::cluster::{NodeUpdate, Signal};
use crate::store::conformance::{attempt, delivery, event, stored};
use crate::store::{Accepted, DeliveryId, Inspect, Queue, Settle, now_ms};

async fn instances(schema: &Schema, n: usize, lease: Duration) -> Vec<PgStore> {
    let cfg = PostgresConfig { lease: Dur(lease), ..schema.config() };
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(PgStore::open(&cfg, StoreOptions::default()).await.expect("open the test database"));
    }
    out
}

fn ids(due: &[(DeliveryId, crate::store::DestinationName)]) -> Vec<DeliveryId> {
    due.iter().map(|(id, _)| *id).collect()
}

#[tokio::test]
async fn an_accepted_delivery_is_leased_to_its_instance_until_released() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let (a, b) = (&s[0], &s[1]);
    assert_ne!(a.node(), b.node(), "every instance has an id of its own");
    let due = stored(a.accept(event("evt_1", None, now_ms()), vec![delivery("x")], None).await.unwrap());
    let id = due[0].id;
    let left = due[0].lease_until.expect("leased at accept").saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60), "{left:?}");

    let later = now_ms() + 1;
    assert_eq!(ids(&a.due_ids(later, 10, vec![]).await.unwrap()), [id], "its own lease hides nothing from it");
    assert!(b.due_ids(later, 10, vec![]).await.unwrap().is_empty(), "another instance's lease hides it");
    assert!(b.load_pending(vec![id], later).await.unwrap().is_empty(), "and cannot be claimed");

    // the accepting instance gives it up (no slot): the other takes it, the first cannot
    assert_eq!(a.release(vec![id]).await.unwrap(), 1);
    assert_eq!(b.release(vec![id]).await.unwrap(), 0, "one cannot release what it does not hold");
    assert_eq!(ids(&b.due_ids(later, 10, vec![]).await.unwrap()), [id]);
    let claimed = b.load_pending(vec![id], later).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].lease_until.is_some());
    assert!(a.load_pending(vec![id], later).await.unwrap().is_empty(), "claimed by b");
    assert_eq!(a.renew(id).await.unwrap(), None, "a lost it");
    assert!(b.renew(id).await.unwrap().is_some(), "b holds it");

    // b's settle ends b's lease: due again later for anyone
    let retry_at = now_ms() + 1000;
    b.settle(id, attempt(Some(503)), Settle::Retry { next_at_ms: retry_at }, None).await.unwrap();
    assert!(a.due_ids(retry_at - 500, 10, vec![]).await.unwrap().is_empty(), "not before its time");
    assert_eq!(ids(&a.due_ids(retry_at, 10, vec![]).await.unwrap()), [id]);
    assert!(a.load_pending(vec![id], retry_at - 500).await.unwrap().is_empty(), "a claim checks the due time");
}

#[tokio::test]
async fn a_dead_instance_s_leases_run_out_and_another_takes_over() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_millis(600)).await;
    let (a, b) = (&s[0], &s[1]);
    let id = stored(a.accept(event("evt_1", None, now_ms()), vec![delivery("x")], None).await.unwrap())[0].id;
    assert!(b.due_ids(now_ms(), 10, vec![]).await.unwrap().is_empty());
    // `a` "dies": it never settles
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = now_ms();
    assert_eq!(ids(&b.due_ids(now, 10, vec![]).await.unwrap()), [id], "the lease ran out");
    assert_eq!(b.load_pending(vec![id], now).await.unwrap().len(), 1);
    assert_eq!(a.renew(id).await.unwrap(), None, "a late `a` finds it gone and does not attempt it");
    // a late settle of `a` records its attempt but leaves b's lease alone
    a.settle(id, attempt(None), Settle::Retry { next_at_ms: now_ms() }, Some("timed out".into())).await.unwrap();
    let c = super::testing::client().await.unwrap();
    let owner: Option<String> = c
        .query_one(&format!("SELECT lease_owner FROM \"{}\".deliveries WHERE id = $1", schema.0), &[&id.0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some(b.node()));
}

#[tokio::test]
async fn an_instance_restarted_under_its_id_takes_back_its_leases_at_once() {
    let schema = Schema::new();
    let cfg = PostgresConfig { node_id: Some("web-1-0.0.0.0:8080".into()), ..schema.config() };
    let first = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    let id = stored(first.accept(event("evt_1", None, now_ms()), vec![delivery("x")], None).await.unwrap())[0].id;
    drop(first); // killed
    let other = instances(&schema, 1, Duration::from_secs(60)).await;
    assert!(other[0].due_ids(now_ms(), 10, vec![]).await.unwrap().is_empty(), "leased: not another's");
    let again = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    assert_eq!(ids_of(&again, now_ms()).await, [id], "its own lease");
    assert_eq!(again.load_pending(vec![id], now_ms()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn claims_from_several_instances_at_once_never_overlap() {
    let schema = Schema::new();
    let s = instances(&schema, 3, Duration::from_secs(60)).await;
    let mut all = Vec::new();
    for i in 0..60 {
        all.extend(stored(
            s[0].accept(event(&format!("evt_{i}"), None, now_ms()), vec![delivery("x")], None).await.unwrap(),
        ));
    }
    let ids: Vec<DeliveryId> = all.iter().map(|d| d.id).collect();
    s[0].release(ids.clone()).await.unwrap();
    let now = now_ms() + 1;
    // each instance claims the whole window at once, three times over
    let claims = (0..9).map(|i| {
        let store = s[i % 3].clone();
        let ids = ids.clone();
        async move { (i % 3, store.load_pending(ids, now).await.unwrap()) }
    });
    let mut owner = std::collections::HashMap::new();
    for (who, got) in super::tests::futures_join_all(claims).await {
        for d in got {
            if let Some(other) = owner.insert(d.id, who) {
                assert_eq!(other, who, "delivery {} claimed by two instances", d.id.0);
            }
        }
    }
    assert_eq!(owner.len(), 60, "every delivery claimed by exactly one instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedupe_key_accepted_at_once_by_two_instances_is_stored_once() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let window = Some(Duration::from_secs(3600));
    let accepts = (0..20).map(|i| {
        let store = s[i % 2].clone();
        async move {
            store.accept(event(&format!("evt_{i}"), Some("delivery-42"), now_ms()), vec![delivery("x")], window).await
        }
    });
    let mut stored_ids = Vec::new();
    let mut originals = Vec::new();
    for r in super::tests::futures_join_all(accepts).await {
        match r.unwrap() {
            Accepted::Stored(_) => stored_ids.push(()),
            Accepted::Duplicate { original } => originals.push(original),
        }
    }
    assert_eq!(stored_ids.len(), 1, "one of 20 stored");
    originals.sort();
    originals.dedup();
    assert_eq!(originals.len(), 1, "every duplicate names the one stored: {originals:?}");
    assert!(s[1].event(originals[0].clone()).await.unwrap().is_some());
}

#[tokio::test]
async fn one_instance_at_a_time_runs_exclusive_work() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let (a, b) = (s[0].clone(), s[1].clone());
    let (entered, wait) = tokio::sync::oneshot::channel();
    let (release, done) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        a.exclusive("purge", async {
            let _ = entered.send(());
            let _ = done.await;
            1
        })
        .await
        .unwrap()
    });
    wait.await.unwrap();
    assert_eq!(b.exclusive("purge", async { 2 }).await.unwrap(), None, "skipped while the other runs it");
    assert_eq!(b.exclusive("other", async { 3 }).await.unwrap(), Some(3), "another name is another lock");
    let _ = release.send(());
    assert_eq!(holder.await.unwrap(), Some(1));
    assert_eq!(b.exclusive("purge", async { 2 }).await.unwrap(), Some(2), "free again");
}

#[tokio::test]
async fn heartbeats_list_every_instance_and_a_clean_stop_gives_its_leases_back() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let (a, b) = (&s[0], &s[1]);
    let me =
        |v: &str| NodeUpdate { address: "127.0.0.1:8080".into(), admin: None, config_version: v.into(), first: false };
    a.heartbeat(&me("v1")).await.unwrap();
    let (rows, shared) = b.heartbeat(&me("v2")).await.unwrap();
    assert!(!shared);
    assert_eq!(rows.len(), 2);
    let mut ids: Vec<&str> = vec![a.node(), b.node()];
    ids.sort();
    assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ids, "by id");
    let row_a = rows.iter().find(|r| r.id == a.node()).unwrap();
    assert_eq!((row_a.config_version.as_str(), row_a.version.as_str()), ("v1", env!("CARGO_PKG_VERSION")));
    assert!(row_a.stopped_at_ms.is_none() && row_a.age_ms < 5_000);

    let id = stored(a.accept(event("evt_1", None, now_ms()), vec![delivery("x")], None).await.unwrap())[0].id;
    let kept = stored(a.accept(event("evt_2", None, now_ms()), vec![delivery("x")], None).await.unwrap())[0].id;
    assert_eq!(a.leave(vec![kept]).await.unwrap(), 1, "its lease ended, but that of an attempt still running");
    assert_eq!(ids_of(b, now_ms() + 1).await, [id], "the other takes it at once");
    let (rows, _) = b.heartbeat(&me("v2")).await.unwrap();
    assert!(rows.iter().find(|r| r.id == a.node()).unwrap().stopped_at_ms.is_some(), "marked stopped");
}

#[tokio::test]
async fn two_processes_beating_under_one_id_are_told_so() {
    let schema = Schema::new();
    let cfg = PostgresConfig { node_id: Some("web-1".into()), ..schema.config() };
    let a = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    let beat = |first| NodeUpdate { address: "127.0.0.1:8080".into(), admin: None, config_version: "v1".into(), first };
    assert!(!a.heartbeat(&beat(true)).await.unwrap().1);
    assert!(!a.heartbeat(&beat(false)).await.unwrap().1, "its own beats");
    // a restart in place under the same id: its first beat is not a conflict
    let b = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    assert!(!b.heartbeat(&beat(true)).await.unwrap().1);
    // ...but `a` still beating is
    assert!(a.heartbeat(&beat(false)).await.unwrap().1, "a sees b's beat under its id");
    assert!(b.heartbeat(&beat(false)).await.unwrap().1, "and b sees a's");
}

async fn ids_of(s: &PgStore, now: i64) -> Vec<DeliveryId> {
    ids(&s.due_ids(now, 10, vec![]).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_reach_every_instance_as_signals() {
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let (a, b) = (&s[0], &s[1]);
    let mut heard = b.listen();
    let first = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.unwrap().unwrap();
    assert_eq!(first, None, "connected: read again what may have been missed");
    let next = async |heard: &mut tokio::sync::mpsc::Receiver<Option<Signal>>| {
        tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.expect("a signal within 5 s").unwrap()
    };
    let sent = Instant::now();
    a.set_paused(&"billing".into(), true, Some("maintenance".into())).await.unwrap();
    assert_eq!(next(&mut heard).await, Some(Signal::Paused("billing".into())));
    let latency = sent.elapsed();
    eprintln!("cluster: a pause committed on one instance was heard on another {latency:?} after it was asked");
    assert!(latency < Duration::from_secs(1), "heard in {latency:?}");
    a.set_paused(&"billing".into(), false, None).await.unwrap();
    assert_eq!(next(&mut heard).await, Some(Signal::Resumed("billing".into())));
    let id = stored(a.accept(event("evt_1", None, now_ms()), vec![delivery("x")], None).await.unwrap())[0].id;
    a.settle(id, attempt(Some(400)), Settle::Failed, None).await.unwrap();
    a.replay(vec![crate::store::DeliveryRef::Delivery(id)]).await.unwrap();
    assert_eq!(next(&mut heard).await, Some(Signal::Wake), "a replay wakes every poller");
    a.signal(&Signal::Reload { from: a.node().to_string() }).await.unwrap();
    assert_eq!(next(&mut heard).await, Some(Signal::Reload { from: a.node().to_string() }));
}

/// Two instances forming batches of one destination at once take disjoint deliveries (each
/// delivery in one batch), and a batch one has loaded (leased) is not loaded by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_forming_batches_at_once_never_share_a_delivery() {
    use crate::store::{BatchLimits, Formation, NewDelivery};
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    for i in 0..200 {
        let batched = NewDelivery { batch: true, ..delivery("b") };
        stored(s[i % 2].accept(event(&format!("evt_{i}"), None, now_ms()), vec![batched], None).await.unwrap());
    }
    let limits = BatchLimits { max_events: 7, max_bytes: 1 << 20, max_wait_ms: 0 };
    let form_all = |store: PgStore| async move {
        let mut batches = Vec::new();
        loop {
            match store.form_batch("b".into(), limits, now_ms()).await.unwrap() {
                Formation::Formed { batch, .. } => batches.push(batch),
                Formation::Empty => return batches,
                Formation::NotYet { .. } => unreachable!("max_wait 0 closes every batch"),
            }
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(form_all(s[0].clone())), tokio::spawn(form_all(s[1].clone())));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.is_empty() && !b.is_empty(), "both formed batches: {} and {}", a.len(), b.len());
    let mut members = std::collections::HashSet::new();
    for id in a.iter().chain(&b) {
        let batch = s[0].load_batch(*id, now_ms() + 1).await.unwrap().expect("due");
        assert!(s[1].load_batch(*id, now_ms() + 1).await.unwrap().is_none(), "leased by the first");
        for (m, _) in batch.members {
            assert!(members.insert(m), "delivery {m} is in two batches");
        }
    }
    assert_eq!(members.len(), 200, "every delivery in a batch");
}

/// Two instances accepting deliveries of one ordered key at the same time: the key still has one
/// head (each accept group decides under the key's lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_accepting_one_key_at_once_keep_one_head() {
    use crate::store::{NewDelivery, OrderSpec};
    let schema = Schema::new();
    let s = instances(&schema, 2, Duration::from_secs(60)).await;
    let accept_all = |store: PgStore, from: usize| async move {
        let mut heads = 0;
        for i in from..from + 50 {
            let d = NewDelivery { order: Some(OrderSpec { key: "k".into(), block: false }), ..delivery("o") };
            heads +=
                stored(store.accept(event(&format!("evt_{i}"), None, now_ms()), vec![d], None).await.unwrap()).len();
        }
        heads
    };
    let (a, b) = tokio::join!(tokio::spawn(accept_all(s[0].clone(), 0)), tokio::spawn(accept_all(s[1].clone(), 100)));
    assert_eq!(a.unwrap() + b.unwrap(), 1, "one delivery of the key was due at once");
    let c = super::testing::client().await.unwrap();
    let due: i64 = c
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM \"{}\".deliveries WHERE status = 'pending' AND next_at < {}",
                schema.0,
                i64::MAX
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, 1, "one head in the store");
}
