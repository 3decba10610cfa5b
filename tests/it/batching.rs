//! Batched delivery (`destinations.<name>.batch`) end to end: real `hookyard run` processes, real
//! receivers on loopback. A batch closes at its first limit (`max_events`, `max_bytes`, the
//! oldest's `max_wait`); it is one request whose Standard Webhooks signature covers the whole
//! body, with one `webhook-id` kept across its retries and a restart; each event shows the batch
//! that carried it and its attempts; a kill -9 while a batch is in flight loses nothing and puts
//! no event in two batches.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::admin_api::AdminApi;
use crate::harness::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(url: &str, batch: &str, retry: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\n\
         egress: {{ allow: [127.0.0.0/8] }}\n\
         sources:\n  app: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n  bulk:\n    url: {url}\n    sign: {{ scheme: standard-webhooks, secret: \"{SECRET}\" }}\n\
         \x20   retry: {retry}\n    breaker: {{ enabled: false }}\n    batch: {batch}\n\
         routes:\n  - {{ name: all, source: app, to: [bulk] }}\n"
    )
}

async fn post(gw: &Gateway, seq: usize, pad: usize) -> String {
    let body = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(pad));
    gw.post("/in", &[("content-type", "application/json")], body).await.accepted_id()
}

/// The batch a request carried: its webhook-id, and the seqs of its events in order. Checks the
/// signature over the whole body and the batch headers.
fn batch_of(r: &Recorded, ndjson: bool) -> (String, Vec<u64>) {
    let id = r.must("webhook-id").to_string();
    let t = r.must("webhook-timestamp");
    assert_eq!(
        r.must("webhook-signature"),
        standard_webhooks_signature(SECRET, &id, t, &r.body),
        "signed over the whole batch"
    );
    let events: Vec<Value> = if ndjson {
        assert_eq!(r.must("content-type"), "application/x-ndjson");
        std::str::from_utf8(&r.body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    } else {
        assert_eq!(r.must("content-type"), "application/json");
        serde_json::from_slice::<Vec<Value>>(&r.body).unwrap()
    };
    assert_eq!(r.must("x-hookyard-batch-events"), events.len().to_string());
    (id, events.iter().map(|e| e["seq"].as_u64().unwrap()).collect())
}

/// `max_events` closes full batches at once; the rest goes when its oldest has waited `max_wait`;
/// events keep their accept order in and across batches.
#[tokio::test]
async fn batches_close_at_max_events_or_max_wait_and_are_signed_whole() {
    let sink = Sink::start().await;
    let gw =
        Gateway::start(&config(&sink.url("/bulk"), "{ max_events: 10, max_wait: 1s }", "{ schedule: [100ms] }")).await;
    let started = Instant::now();
    for seq in 0..25 {
        post(&gw, seq, 10).await;
    }
    let got = sink.wait_for(3, WAIT).await;
    let mut batches: Vec<(String, Vec<u64>)> = got.iter().map(|r| batch_of(r, false)).collect();
    // batches go in parallel: sorted by their first event
    batches.sort_by_key(|b| b.1[0]);
    let sizes: Vec<usize> = batches.iter().map(|b| b.1.len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    let seqs: Vec<u64> = batches.iter().flat_map(|b| b.1.clone()).collect();
    assert_eq!(seqs, (0..25).collect::<Vec<u64>>(), "in accept order");
    assert!(got[2].at.duration_since(started) >= Duration::from_millis(900), "the last waited for max_wait");
    assert!(got[1].at.duration_since(started) < Duration::from_millis(900), "full ones went at once");
    let ids: BTreeSet<&String> = batches.iter().map(|b| &b.0).collect();
    assert_eq!(ids.len(), 3, "one webhook-id per batch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.requests().len(), 3, "nothing sent twice");
}

/// `max_bytes`: a batch takes what fits, a body larger than the limit goes alone; `ndjson`.
#[tokio::test]
async fn max_bytes_closes_a_batch_and_a_larger_body_goes_alone_as_ndjson() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&config(
        &sink.url("/bulk"),
        "{ max_events: 100, max_bytes: 250, max_wait: 300ms, format: ndjson }",
        "{ schedule: [100ms] }",
    ))
    .await;
    // bodies of 100 bytes: two fit in 250, a third does not; then one of 400 alone
    for seq in 0..5 {
        post(&gw, seq, 100 - 21).await;
    }
    post(&gw, 5, 400).await;
    let got =
        sink.wait_until(WAIT, "6 events", |r| r.iter().map(|r| batch_of(r, true).1.len()).sum::<usize>() == 6).await;
    // batches go in parallel: sorted by their first event
    let mut batches: Vec<Vec<u64>> = got.iter().map(|r| batch_of(r, true).1).collect();
    batches.sort();
    assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4], vec![5]], "{batches:?}");
}

/// A failed batch is retried as a unit, with the same webhook-id and body; every event shows the
/// batch that carried it (its number and webhook-id) and both attempts.
#[tokio::test]
async fn a_batch_is_retried_as_a_unit_and_each_event_shows_it() {
    let sink = Sink::with_script(vec![Reply::status(503)]).await;
    let gw =
        Gateway::start(&config(&sink.url("/bulk"), "{ max_events: 3, max_wait: 5s }", "{ schedule: [200ms] }")).await;
    let admin = AdminApi::of(&gw).await;
    let mut events = Vec::new();
    for seq in 0..3 {
        events.push(post(&gw, seq, 5).await);
    }
    let got = sink.wait_for(2, WAIT).await;
    let (a, b) = (batch_of(&got[0], false), batch_of(&got[1], false));
    assert_eq!(a, b, "the same webhook-id and events");
    assert_eq!(got[0].body, got[1].body, "the same body");
    for id in &events {
        let ev = admin
            .wait_json(&format!("/api/v1/events/{id}"), "delivered", WAIT, |v| {
                v["deliveries"][0]["status"] == "delivered"
            })
            .await;
        let d = &ev["deliveries"][0];
        assert_eq!(d["batch_msg_id"], a.0.as_str(), "{ev:#}");
        assert!(d["batch_id"].as_i64().unwrap() > 0);
        let codes: Vec<Value> = d["attempt_log"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect();
        assert_eq!(codes, [Value::from(503), Value::from(200)], "{ev:#}");
    }
}

/// kill -9 while a batch is in flight (the receiver holds its answer): after a restart the same
/// batch (webhook-id, events) is sent again; every event arrives, each under one webhook-id.
#[tokio::test]
async fn a_kill_while_a_batch_is_in_flight_loses_nothing_and_splits_no_batch() {
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_secs(30))]).await;
    let mut gw =
        Gateway::start(&config(&sink.url("/bulk"), "{ max_events: 4, max_wait: 200ms }", "{ schedule: [100ms] }"))
            .await;
    for seq in 0..10 {
        post(&gw, seq, 5).await;
    }
    // the first batch is held by the receiver; the rest waits for a slot or goes
    sink.wait_for(1, WAIT).await;
    gw.process.kill().await;
    gw.restart().await;
    let got = sink
        .wait_until(WAIT, "every event delivered", |r| {
            let seqs: BTreeSet<u64> = r[1..].iter().flat_map(|r| batch_of(r, false).1).collect();
            seqs.len() == 10
        })
        .await;
    let first = batch_of(&got[0], false);
    let mut by_event: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in &got {
        let (id, seqs) = batch_of(r, false);
        for s in seqs {
            by_event.entry(s).or_default().insert(id.clone());
        }
    }
    assert_eq!(by_event.len(), 10, "lost none");
    assert!(by_event.values().all(|ids| ids.len() == 1), "no event in two batches: {by_event:?}");
    assert!(got[1..].iter().any(|r| batch_of(r, false) == first), "the batch in flight was sent again as it was");
}
