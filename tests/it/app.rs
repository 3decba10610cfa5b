//! The composition root itself (`hookyard::app`): what `start` refuses and how, what `shutdown`
//! leaves, and the background work it wires (the retention purge) following a reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hookyard::app::{self, StartError};
use hookyard::store::Inspect;

use crate::harness::{Sink, WAIT, http_client};

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("routes.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn minimal(listen: &str, admin: &str) -> String {
    format!(
        "server: {{ listen: \"{listen}\" }}\nadmin: {{ listen: \"{admin}\" }}\nstorage: {{ path: hookyard.db }}\n\
         sources:\n  s: {{ path: /hooks/s, verify: {{ scheme: none }} }}\n"
    )
}

#[tokio::test]
async fn start_lists_every_config_problem_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "sources:\n  s: { path: /hooks/s, verify: { scheme: hmac } }\nroutes:\n  - { name: r, source: s, to: [nowhere] }\n";
    let config = write_config(dir.path(), yaml);
    let Err(e) = app::start(&config).await else { panic!("a broken config started") };
    let StartError::Config { errors, .. } = &e else { panic!("not a config error: {e}") };
    assert_eq!(errors.len(), 2, "{e}");
    let text = e.to_string();
    let file = config.display().to_string();
    assert!(text.contains(&format!("{file}:4:")), "a problem located by line: {text}");
    assert!(text.contains("nowhere"), "{text}");
    assert!(text.contains("sources.s.verify"), "{text}");
    assert!(text.ends_with(&format!("{file} has 2 problem(s); nothing started")), "{text}");
    assert!(!dir.path().join("hookyard.db").exists(), "no store was created");
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_the_listener_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();

    let config = write_config(dir.path(), &minimal(&format!("127.0.0.1:{port}"), "127.0.0.1:0"));
    let Err(e) = app::start(&config).await else { panic!("started on a taken port") };
    assert!(matches!(e, StartError::Bind { what: "server.listen", .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("cannot listen on 127.0.0.1:{port} (server.listen): ")), "{e}");

    let config = write_config(dir.path(), &minimal("127.0.0.1:0", &format!("127.0.0.1:{port}")));
    let Err(e) = app::start(&config).await else { panic!("started on a taken admin port") };
    assert!(e.to_string().starts_with(&format!("cannot listen on 127.0.0.1:{port} (admin.listen): ")), "{e}");
    // the ingress listener it had bound was let go: the gateway starts once the port is free
    drop(taken);
    let running = app::start(&config).await.expect("starts once the port is free");
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_closes_both_listeners_and_keeps_what_was_accepted() {
    let sink = Sink::with_script(vec![crate::harness::Reply::status(503)]).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}egress: {{ allow: [127.0.0.1] }}\ndestinations:\n  d: {{ url: \"{}\", sign: {{ scheme: none }}, retry: {{ schedule: [1h], jitter: 0 }} }}\n\
         routes:\n  - {{ name: r, source: s, to: [d] }}\n",
        minimal("127.0.0.1:0", "127.0.0.1:0"),
        sink.url("/in")
    );
    let config = write_config(dir.path(), &yaml);
    let running = app::start(&config).await.expect("start");
    let (addr, admin) = (running.addr(), running.admin_addr().expect("admin enabled"));
    let request = http::Request::post(format!("http://{addr}/hooks/s"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let answer = http_client().request(request).await.expect("post");
    assert_eq!(answer.status(), 202);
    sink.wait_for(1, WAIT).await; // answered 503: retried in an hour
    let store = running.state().dispatcher.store().clone();
    running.shutdown(Duration::from_secs(1)).await;
    for a in [addr, admin] {
        assert!(tokio::net::TcpStream::connect(a).await.is_err(), "{a} still accepts after shutdown");
    }
    let pending =
        store.list_deliveries(hookyard::store::DeliveryFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status.as_str(), "pending", "kept, due again at the next start");
}

#[tokio::test]
async fn the_retention_purge_follows_a_reload() {
    retention_purge_follows_a_reload("path: hookyard.db").await
}

/// The same with the store in PostgreSQL (a schema of its own).
#[tokio::test]
async fn the_retention_purge_follows_a_reload_on_postgres() {
    let schema = crate::harness::postgres::PgSchema::new();
    let store = format!("postgres: {{ url: \"{}\", schema: {} }}", crate::harness::postgres::url(), schema.name);
    retention_purge_follows_a_reload(&store).await
}

/// A finished event outlives purge rounds under a 1 h retention, and goes once a reload sets
/// 1 ms; `store` is the rest of the `storage:` section.
async fn retention_purge_follows_a_reload(store: &str) {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |retention: &str| {
        format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\nadmin: {{ enabled: false }}\n\
             storage: {{ {store}, retention: {retention}, purge_interval: 200ms }}\n\
             sources:\n  s: {{ path: /hooks/s, verify: {{ scheme: none }} }}\negress: {{ allow: [127.0.0.1] }}\n\
             destinations:\n  d: {{ url: \"{}\", sign: {{ scheme: none }} }}\nroutes:\n  - {{ name: r, source: s, to: [d] }}\n",
            sink.url("/in")
        )
    };
    let config = write_config(dir.path(), &yaml("1h"));
    let running = app::start(&config).await.expect("start");
    let request = http::Request::post(format!("http://{}/hooks/s", running.addr()))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(http_client().request(request).await.expect("post").status(), 202);
    sink.wait_for(1, WAIT).await;
    let store = running.state().dispatcher.store().clone();
    let delivered = |store: hookyard::store::Store| async move {
        store
            .list_deliveries(hookyard::store::DeliveryFilter { limit: 100, ..Default::default() })
            .await
            .unwrap()
            .iter()
            .filter(|d| d.status.as_str() == "delivered")
            .count()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while delivered(store.clone()).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not recorded as delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // several purge rounds with a 1 h retention keep the finished event
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(delivered(store.clone()).await, 1);

    write_config(dir.path(), &yaml("1ms"));
    let outcome = running.reloader().reload("test").await;
    assert!(
        matches!(outcome, hookyard::reload::ReloadOutcome::Reloaded { ref needs_restart, .. } if needs_restart.is_empty()),
        "{outcome:?}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !store
        .list_deliveries(hookyard::store::DeliveryFilter { limit: 100, ..Default::default() })
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "the finished event outlived the reloaded retention");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

/// Two gateways in one process (as the in-process tests run them) share the one metrics recorder.
#[tokio::test]
async fn two_gateways_in_one_process_both_start() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut running = Vec::new();
    for d in &dirs {
        let config = write_config(d.path(), &minimal("127.0.0.1:0", "127.0.0.1:0"));
        running.push(app::start(&config).await.expect("start"));
    }
    assert_ne!(running[0].addr(), running[1].addr());
    for r in running {
        r.shutdown(Duration::from_millis(100)).await;
    }
}
