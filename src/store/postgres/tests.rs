//! The PostgreSQL backend runs the conformance suite (`store/conformance.rs`) against the real
//! server (`HOOKYARD_TEST_DATABASE_URL`, default the local `test` database), each test in a
//! schema of its own that it drops at the end, and what only PostgreSQL can show: migrations
//! racing from several instances, a database from a newer hookyard, a full pool, a table locked
//! past the commit timeout, and connections killed by the server.

use std::time::{Duration, Instant};

use super::testing::{Schema, client, test_url};
use super::*;
use crate::config::{Dur, Secret};
use crate::store::conformance::{conformance_suite, delivery, event, stored};
use crate::store::{Inspect, NewDelivery, Queue, Settle, StoreError, now_ms};

fn options(commit_timeout: Duration) -> StoreOptions {
    StoreOptions { commit_timeout, ..StoreOptions::default() }
}

async fn fresh() -> (PgStore, Schema) {
    let schema = Schema::new();
    let store = PgStore::open(&schema.config(), StoreOptions::default()).await.expect("open the test database");
    (store, schema)
}

conformance_suite!(fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_once() {
    let schema = Schema::new();
    let cfg = schema.config();
    let opens = (0..4).map(|_| {
        let cfg = cfg.clone();
        async move { PgStore::open(&cfg, StoreOptions::default()).await.map(drop) }
    });
    for opened in futures_join_all(opens).await {
        opened.expect("every instance opens the schema");
    }
    let c = client().await.unwrap();
    let version: i32 =
        c.query_one(&format!("SELECT version FROM {}.hookyard_schema", schema.0), &[]).await.unwrap().get(0);
    assert_eq!(version as usize, schema::latest());
    let rows: i64 =
        c.query_one(&format!("SELECT COUNT(*) FROM {}.hookyard_schema", schema.0), &[]).await.unwrap().get(0);
    assert_eq!(rows, 1);
}

/// Joins futures without another dependency.
pub(super) async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_database_from_a_newer_hookyard_is_refused() {
    let schema = Schema::new();
    drop(PgStore::open(&schema.config(), StoreOptions::default()).await.unwrap());
    let c = client().await.unwrap();
    c.batch_execute(&format!("UPDATE {}.hookyard_schema SET version = 99", schema.0)).await.unwrap();
    let err = PgStore::open(&schema.config(), StoreOptions::default()).await.err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open the store at postgres://postgres@127.0.0.1:5432/test: the database schema \"{}\" has version 99, newer than this hookyard knows ({}); upgrade hookyard",
            schema.0,
            schema::latest()
        )
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_at_start() {
    let cfg = PostgresConfig {
        url: Secret("postgres://hookyard:s3cret@127.0.0.1:1/nowhere".into()),
        connect_timeout: Dur(Duration::from_secs(2)),
        ..Schema("unused".into()).config()
    };
    let err = PgStore::open(&cfg, StoreOptions::default()).await.err().expect("refused").to_string();
    assert!(err.starts_with("cannot open the store at postgres://hookyard@127.0.0.1:1/nowhere: "), "{err}");
    assert!(!err.contains("s3cret"), "the password never shows: {err}");
}

#[test]
fn urls_are_checked_and_shown_without_their_password() {
    assert_eq!(url_problem("postgres://u:p@db.internal:6543/hooks"), None);
    assert_eq!(display_url("postgres://u:p@db.internal:6543/hooks"), "postgres://u@db.internal:6543/hooks");
    assert_eq!(display_url("host=db user=u password=p dbname=hooks"), "postgres://u@db:5432/hooks");
    assert_eq!(url_problem("postgres://u@db/x?sslmode=require"), None);
    assert!(url_problem("mysql://x").unwrap().starts_with("not a PostgreSQL connection URL"));
    assert_eq!(url_problem("postgres:///x").as_deref(), Some("names no host (postgres://user@host:5432/dbname)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_an_error_within_the_commit_timeout_not_a_hang() {
    let schema = Schema::new();
    let cfg = PostgresConfig { pool: 2, ..schema.config() };
    let store = PgStore::open(&cfg, options(Duration::from_millis(500))).await.unwrap();
    // every connection taken (by reads that never finish, say)
    let held = [store.conn().await.unwrap(), store.conn().await.unwrap()];
    let started = Instant::now();
    let err = store.accept(event("evt_full", None, now_ms()), vec![delivery("a")], None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
    assert!(matches!(err, StoreError::Timeout(_) | StoreError::Commit(_)), "{err}");
    assert!(store.health().is_err(), "not ready while events cannot be written");
    let err = store.pending_count().await.unwrap_err().to_string();
    assert!(err.contains("no database connection within the wait"), "{err}");
    drop(held);
    stored(store.accept(event("evt_after", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert_eq!(store.health(), Ok(()));
    // the refused event was not written afterwards
    assert!(store.raw_event("evt_full".into()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_times_out_the_commit_and_the_store_recovers() {
    let schema = Schema::new();
    let app = format!("hookyard-{}", schema.0);
    let cfg = PostgresConfig { url: Secret(format!("{}?application_name={app}", test_url())), ..schema.config() };
    let store = PgStore::open(&cfg, options(Duration::from_millis(500))).await.unwrap();
    let mut blocker = client().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE", schema.0)).await.unwrap();
    for n in 0..2 {
        let started = Instant::now();
        let ev = event(&format!("evt_locked_{n}"), None, now_ms());
        let err = store.accept(ev, vec![delivery("a")], None).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
        assert!(matches!(err, StoreError::Timeout(_) | StoreError::Commit(_)), "{err}");
        assert!(store.health().is_err());
    }
    // the timed-out groups were cancelled on the server, not left waiting for the lock
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(3);
    while tx.query_one(waiting, &[&app]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(Instant::now() < deadline, "a cancelled group still waits for the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.rollback().await.unwrap();
    stored(store.accept(event("evt_free", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert_eq!(store.health(), Ok(()));
    for n in 0..2 {
        let id = format!("evt_locked_{n}");
        assert!(store.raw_event(id.into()).await.unwrap().is_none(), "a refused event never lands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced_without_a_restart() {
    let schema = Schema::new();
    let app = format!("hookyard-{}", schema.0);
    let cfg = PostgresConfig { url: Secret(format!("{}?application_name={app}", test_url())), ..schema.config() };
    let store = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    stored(store.accept(event("evt_1", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let c = client().await.unwrap();
    let killed: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) k",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the store's connections were found");
    // the first operations may meet a dead connection; within a few seconds all is well again
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 2;
    loop {
        let id = format!("evt_{n}");
        n += 1;
        match store.accept(event(&id, None, now_ms()), vec![delivery("a")], None).await {
            Ok(a) => {
                stored(a);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still failing after 10s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.pending_count().await.unwrap(), 2);
    assert_eq!(store.health(), Ok(()));
}

/// A replay that makes a finished delivery of an old event pending while the retention purge
/// runs keeps both: the purge re-checks each delivery under its row lock. (SQLite writes one
/// transaction at a time, so there the two cannot interleave.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_purge_keeps_what_a_concurrent_replay_made_pending() {
    let schema = Schema::new();
    let app = format!("hookyard-{}", schema.0);
    let cfg = PostgresConfig { url: Secret(format!("{}?application_name={app}", test_url())), ..schema.config() };
    let store = PgStore::open(&cfg, StoreOptions::default()).await.unwrap();
    let old = now_ms() - 10 * 86_400_000;
    let due = stored(store.accept(event("evt_old", None, old), vec![delivery("a")], None).await.unwrap());
    store.settle(due[0].id, crate::store::conformance::attempt(Some(200)), Settle::Delivered, None).await.unwrap();

    // a replay in progress: the row is locked, not yet committed
    let mut replayer = client().await.unwrap();
    let replay = replayer.transaction().await.unwrap();
    replay
        .execute(&format!("UPDATE {}.deliveries SET status = 'pending' WHERE event_id = 'evt_old'", schema.0), &[])
        .await
        .unwrap();
    let purging = tokio::spawn({
        let store = store.clone();
        async move { store.purge(now_ms() - 86_400_000).await }
    });
    // the purge reaches the locked row and waits for it
    let observer = client().await.unwrap();
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(5);
    while observer.query_one(waiting, &[&app]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "the purge never waited for the replayed row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay.commit().await.unwrap();
    assert_eq!(purging.await.unwrap().unwrap(), 0, "nothing purged");
    assert!(store.raw_event("evt_old".into()).await.unwrap().is_some(), "the event is kept");
    assert_eq!(store.pending_count().await.unwrap(), 1, "and its replayed delivery is pending");
}

/// The schema has no foreign keys (their checks cost a third of the server's CPU per event), so
/// the purges delete what hangs off a delivery themselves: nothing is left pointing at a delivery
/// or an event that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_leave_no_rows_behind_that_point_at_what_they_deleted() {
    use crate::store::conformance::attempt;
    use crate::store::{DeliveryRef, DeliverySelection};
    let (store, schema) = fresh().await;
    let old = now_ms() - 10 * 86_400_000;
    let transformed =
        NewDelivery { body: Some(bytes::Bytes::from_static(b"{}")), headers: Some(vec![]), ..delivery("a") };
    // delivered (attempt + output), dead (attempts), cancelled, and one still pending
    let a = stored(store.accept(event("evt_a", None, old), vec![transformed, delivery("b")], None).await.unwrap());
    store.settle(a[0].id, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
    store.settle(a[1].id, attempt(Some(500)), Settle::Dead, None).await.unwrap();
    let c = stored(store.accept(event("evt_c", None, old), vec![delivery("a")], None).await.unwrap());
    let cancel = DeliverySelection { ids: vec![DeliveryRef::Delivery(c[0].id)], ..DeliverySelection::default() };
    assert_eq!(store.cancel(cancel, "test".into(), None).await.unwrap(), 1);
    store.settle(c[0].id, attempt(Some(503)), Settle::Retry { next_at_ms: now_ms() }, None).await.unwrap();
    stored(store.accept(event("evt_p", None, old), vec![delivery("a")], None).await.unwrap());

    // the dead letter first, then everything finished
    let purged = store.purge_dead(None, None).await.unwrap();
    assert_eq!((purged.deliveries, purged.events), (1, 0), "evt_a keeps its delivered delivery");
    assert_eq!(store.purge(now_ms()).await.unwrap(), 2, "evt_a and evt_c; evt_p is pending");
    let c = client().await.unwrap();
    let count = |sql: String| {
        let c = &c;
        async move { c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let s = &schema.0;
    for (table, column) in
        [("attempts", "delivery_id"), ("delivery_bodies", "delivery_id"), ("cancellations", "delivery_id")]
    {
        let orphans = count(format!(
            "SELECT COUNT(*) FROM {s}.{table} t WHERE NOT EXISTS (SELECT 1 FROM {s}.deliveries d WHERE d.id = t.{column})"
        ))
        .await;
        assert_eq!(orphans, 0, "{table} rows of deleted deliveries");
    }
    let orphans = count(format!(
        "SELECT COUNT(*) FROM {s}.deliveries d WHERE NOT EXISTS (SELECT 1 FROM {s}.events e WHERE e.id = d.event_id)"
    ))
    .await;
    assert_eq!(orphans, 0, "deliveries of deleted events");
    assert_eq!(count(format!("SELECT COUNT(*) FROM {s}.attempts")).await, 0, "every attempt went with its delivery");
    assert_eq!(count(format!("SELECT COUNT(*) FROM {s}.events")).await, 1, "only evt_p is left");
}

/// The test server's certificate (Debian's snakeoil, issued to `localhost`), which is its own CA.
async fn server_certificate() -> std::path::PathBuf {
    let c = client().await.unwrap();
    let ssl: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "the test server must have ssl = on (Debian's default) for the TLS tests");
    let file: String = c.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    file.into()
}

/// The test database's URL at `host`, with `query` appended.
fn url_at(host: &str, query: &str) -> String {
    let cfg: tokio_postgres::Config = test_url().parse().unwrap();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}{query}",
        cfg.get_user().unwrap_or("postgres"),
        cfg.get_dbname().unwrap_or("test")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_file_connections_are_tls_and_the_server_is_verified() {
    let schema = Schema::new();
    let ca = server_certificate().await;
    let cfg = PostgresConfig { url: Secret(url_at("localhost", "")), ca_file: Some(ca.clone()), ..schema.config() };
    let store = PgStore::open(&cfg, StoreOptions::default()).await.expect("TLS to localhost, verified");
    stored(store.accept(event("evt_tls", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    let c = store.conn().await.unwrap();
    let ssl: bool = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the pooled connection is encrypted");

    // the certificate names localhost, not 127.0.0.1: verify-full refuses
    let wrong_host = PostgresConfig { url: Secret(url_at("127.0.0.1", "")), ..cfg.clone() };
    let err = PgStore::open(&wrong_host, StoreOptions::default()).await.err().expect("refused").to_string();
    assert!(err.contains("invalid peer certificate: certificate not valid for name \"127.0.0.1\""), "{err}");
    // sslmode=require without a CA file trusts the public roots only, which did not sign it
    let public = PostgresConfig { url: Secret(url_at("localhost", "?sslmode=require")), ca_file: None, ..cfg.clone() };
    let err = PgStore::open(&public, StoreOptions::default()).await.err().expect("refused").to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // a CA file that holds no certificate
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let bad = PostgresConfig { ca_file: Some(junk.clone()), ..cfg.clone() };
    let err = PgStore::open(&bad, StoreOptions::default()).await.err().expect("refused").to_string();
    assert_eq!(
        err,
        format!(
            "cannot open the store at {}: storage.postgres.ca_file: {}: no certificate found (expected a PEM \"CERTIFICATE\" block)",
            display_url(&url_at("localhost", "")),
            junk.display()
        )
    );
}

/// A statement past `statement_timeout` is cancelled by the server and its event refused (the
/// caller answers `503`), well before the commit timeout: a slow database is an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_statement_timeout_is_an_error_not_a_hang() {
    let schema = Schema::new();
    let cfg = PostgresConfig { statement_timeout: Dur(Duration::from_millis(300)), ..schema.config() };
    let store = PgStore::open(&cfg, options(Duration::from_secs(10))).await.unwrap();
    let mut blocker = client().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE", schema.0)).await.unwrap();
    let started = Instant::now();
    let err = store.accept(event("evt_slow", None, now_ms()), vec![delivery("a")], None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
    assert!(err.to_string().contains("canceling statement due to statement timeout"), "{err}");
    tx.rollback().await.unwrap();
    stored(store.accept(event("evt_fast", None, now_ms()), vec![delivery("a")], None).await.unwrap());
    assert!(store.raw_event("evt_slow".into()).await.unwrap().is_none());
}
