//! Metric names and helpers. Metrics go through the `metrics` facade; `hookyard run` installs a
//! Prometheus recorder and the admin listener renders it at `/metrics`. Labels are bounded: source,
//! route, destination and plugin names come from the config; statuses and reasons are fixed sets.
//! Never an event id or a URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_RECEIVED: &str = "hookyard_events_received_total";
pub const VERIFY_FAILURES: &str = "hookyard_verification_failures_total";
pub const HANDSHAKES: &str = "hookyard_handshakes_total";
pub const INGRESS_REFUSED: &str = "hookyard_ingress_refused_total";
/// [`INGRESS_REFUSED`]'s reasons: the source key that refused.
pub const REFUSED_ALLOW_IPS: &str = "allow_ips";
pub const REFUSED_RATE_LIMIT: &str = "rate_limit";
pub const ROUTE_MATCHES: &str = "hookyard_route_matches_total";
pub const INGRESS_SECONDS: &str = "hookyard_ingress_duration_seconds";
pub const DELIVERIES: &str = "hookyard_deliveries_total";
pub const ATTEMPTS: &str = "hookyard_delivery_attempts_total";
pub const DELIVERY_SECONDS: &str = "hookyard_delivery_latency_seconds";
pub const QUEUE_DEPTH: &str = "hookyard_queue_depth";
pub const OLDEST_DUE: &str = "hookyard_oldest_due_age_seconds";
pub const DEAD_LETTERS: &str = "hookyard_dead_letters";
pub const HELD_KEYS: &str = "hookyard_ordering_held_keys";
pub const BREAKER_STATE: &str = "hookyard_circuit_breaker_state";
pub const PAUSED: &str = "hookyard_destination_paused";
pub const RELOADS: &str = "hookyard_config_reloads_total";
pub const CONFIG_INFO: &str = "hookyard_config_info";
pub const PLUGIN_CALLS: &str = "hookyard_plugin_calls_total";
pub const PLUGIN_SECONDS: &str = "hookyard_plugin_duration_seconds";
pub const CLUSTER_INSTANCES: &str = "hookyard_cluster_instances";
pub const CLUSTER_DRIFT: &str = "hookyard_cluster_config_drift";
pub const OTLP_SPANS: &str = "hookyard_otlp_spans_total";

/// Installs the global Prometheus recorder, once per process: a later call (a second gateway
/// in the same process, as in the integration tests) gets the same handle, or the same error.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> = std::sync::OnceLock::new();
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Result<PrometheusHandle, String> {
    let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    INSTALLED.store(true, Ordering::Release);
    describe();
    Ok(handle)
}

/// How often [`upkeep`] drains the recorder.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_INTERVAL`]. The recorder
/// queues every sample until someone does, and a render only does it at a scrape: without this, a
/// gateway nobody scrapes would grow by two samples per event, forever.
pub async fn upkeep(handle: PrometheusHandle, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
        }
    }
}

/// Set once the global recorder is installed: handles made before that are no-ops and must not
/// be kept.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Metric handles by label values. Registering a metric builds its key (label strings, a hash,
/// the registry's lock) at every call; the hot path looks the handle up here instead. Label
/// values come from the config, so these maps stay small (a removed destination's handles stay
/// until restart, as its series do in the exposition).
struct Handles<K, V>(LazyLock<RwLock<ByName<K, V>>>);

/// A metric's handles by its first label's value, then by its second label's value.
type ByName<K, V> = HashMap<Box<str>, Vec<(K, V)>>;

impl<K: Copy + Eq, V: Clone> Handles<K, V> {
    const fn new() -> Self {
        Handles(LazyLock::new(Default::default))
    }

    fn get(&self, name: &str, key: K, make: impl FnOnce() -> V) -> V {
        let found = |list: &Vec<(K, V)>| list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        if let Some(v) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(name).and_then(found) {
            return v;
        }
        let v = make();
        if INSTALLED.load(Ordering::Acquire) {
            let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
            let list = map.entry(name.into()).or_default();
            if found(list).is_none() {
                list.push((key, v.clone()));
            }
        }
        v
    }
}

static EVENTS_BY_STATUS: Handles<u16, Counter> = Handles::new();
static INGRESS_BY_SOURCE: Handles<(), Histogram> = Handles::new();
static MATCHES_BY_ROUTE: Handles<(), Counter> = Handles::new();
static REFUSED_BY_REASON: Handles<&'static str, Counter> = Handles::new();
static ATTEMPTS_BY_DESTINATION: Handles<(), (Counter, Histogram)> = Handles::new();
static DELIVERIES_BY_OUTCOME: Handles<&'static str, Counter> = Handles::new();
static PLUGIN_CALLS_BY_OUTCOME: Handles<&'static str, Counter> = Handles::new();
static PLUGIN_SECONDS_BY_PLUGIN: Handles<(), Histogram> = Handles::new();

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_RECEIVED, "Ingress requests at a source path, by source and response status");
    describe_counter!(VERIFY_FAILURES, "Requests refused with 401, by source and reason");
    describe_counter!(
        HANDSHAKES,
        "Provider handshakes (Slack, Zoom, Meta, X, Graph, Dropbox) answered or refused by the gateway, by source, handshake and result"
    );
    describe_counter!(
        INGRESS_REFUSED,
        "Requests refused by a source's guards before their body was read, by source and reason (allow_ips: 403, rate_limit: 429)"
    );
    describe_counter!(ROUTE_MATCHES, "Events matched, by route");
    describe_histogram!(INGRESS_SECONDS, "Time from request to response at a source path, by source");
    describe_counter!(
        DELIVERIES,
        "Deliveries finished or retried, by destination and outcome (delivered, retry, failed, dead, gone)"
    );
    describe_counter!(ATTEMPTS, "Delivery attempts, by destination");
    describe_histogram!(DELIVERY_SECONDS, "Latency of delivery attempts, by destination");
    describe_gauge!(QUEUE_DEPTH, "Pending deliveries, by destination");
    describe_gauge!(OLDEST_DUE, "Age of the oldest due delivery, by destination (0 when none is due)");
    describe_gauge!(DEAD_LETTERS, "Dead letters in the store, by destination");
    describe_gauge!(BREAKER_STATE, "Circuit breaker state by destination: 0 closed, 1 half-open, 2 open");
    describe_gauge!(PAUSED, "1 when the destination is paused");
    describe_counter!(RELOADS, "Config reloads, by result (reloaded, unchanged, failed: the admin API's words)");
    describe_gauge!(CONFIG_INFO, "1, labelled with the active config version");
    describe_counter!(PLUGIN_CALLS, "Plugin calls, by plugin and outcome");
    describe_histogram!(PLUGIN_SECONDS, "Plugin call duration, by plugin");
    describe_gauge!(
        CLUSTER_INSTANCES,
        "Instances sharing the PostgreSQL store as this one's heartbeat saw them, by state (live, dead, stopped)"
    );
    describe_gauge!(CLUSTER_DRIFT, "1 when two live instances sharing the store run different config versions");
    describe_counter!(
        OTLP_SPANS,
        "Spans of telemetry.otlp by result: exported, failed (the export failed), rejected (by the collector), dropped (the queue was full)"
    );
}

pub fn event_received(source: &str, status: u16, seconds: f64) {
    EVENTS_BY_STATUS
        .get(
            source,
            status,
            || counter!(EVENTS_RECEIVED, "source" => source.to_string(), "status" => status.to_string()),
        )
        .increment(1);
    INGRESS_BY_SOURCE.get(source, (), || histogram!(INGRESS_SECONDS, "source" => source.to_string())).record(seconds);
}

pub fn verify_failed(source: &str, reason: &'static str) {
    counter!(VERIFY_FAILURES, "source" => source.to_string(), "reason" => reason).increment(1);
}

/// A provider handshake answered (`result` "answered") or refused ("refused", a 401).
pub fn handshake(source: &str, handshake: &'static str, result: &'static str) {
    counter!(HANDSHAKES, "source" => source.to_string(), "handshake" => handshake, "result" => result).increment(1);
}

/// A request refused by a source's guard (`reason`: [`REFUSED_ALLOW_IPS`], [`REFUSED_RATE_LIMIT`]).
pub fn ingress_refused(source: &str, reason: &'static str) {
    REFUSED_BY_REASON
        .get(source, reason, || counter!(INGRESS_REFUSED, "source" => source.to_string(), "reason" => reason))
        .increment(1);
}

pub fn route_matched(route: &str) {
    MATCHES_BY_ROUTE.get(route, (), || counter!(ROUTE_MATCHES, "route" => route.to_string())).increment(1);
}

pub fn attempt(destination: &str, seconds: f64) {
    let (attempts, latency) = ATTEMPTS_BY_DESTINATION.get(destination, (), || {
        (
            counter!(ATTEMPTS, "destination" => destination.to_string()),
            histogram!(DELIVERY_SECONDS, "destination" => destination.to_string()),
        )
    });
    attempts.increment(1);
    latency.record(seconds);
}

pub fn delivery(destination: &str, outcome: &'static str) {
    DELIVERIES_BY_OUTCOME
        .get(
            destination,
            outcome,
            || counter!(DELIVERIES, "destination" => destination.to_string(), "outcome" => outcome),
        )
        .increment(1);
}

/// The results of a reload, in the words of `POST /api/v1/reload` and `hookyard reload`.
pub const RELOAD_RESULTS: [&str; 3] = ["reloaded", "unchanged", "failed"];

/// Counts a reload by its result, one of [`RELOAD_RESULTS`].
pub fn reload(result: &'static str) {
    debug_assert!(RELOAD_RESULTS.contains(&result), "{result}");
    counter!(RELOADS, "result" => result).increment(1);
}

/// What a plugin call can end in besides a failure's [`PluginError::LABELS`](crate::plugin::PluginError::LABELS).
pub const PLUGIN_OUTCOMES: [&str; 2] = ["emit", "drop"];

/// Registers at zero the counters whose label sets are known before anything happens: reloads
/// by result, and plugin calls by plugin chain (`plugins`: the routes' chain labels) and
/// outcome, with the duration histogram of each chain. Without this a series first appears at
/// its first increment, and a rate or an alert on it has nothing to start from. Called at start
/// and after each reload (new plugins).
pub fn register_known<'a>(plugins: impl Iterator<Item = &'a str>) {
    for result in RELOAD_RESULTS {
        counter!(RELOADS, "result" => result).increment(0);
    }
    for plugin in plugins {
        let outcomes = PLUGIN_OUTCOMES.iter().chain(crate::plugin::PluginError::LABELS.iter());
        for &outcome in outcomes {
            PLUGIN_CALLS_BY_OUTCOME
                .get(plugin, outcome, || counter!(PLUGIN_CALLS, "plugin" => plugin.to_string(), "outcome" => outcome))
                .increment(0);
        }
        let _ = PLUGIN_SECONDS_BY_PLUGIN.get(plugin, (), || histogram!(PLUGIN_SECONDS, "plugin" => plugin.to_string()));
    }
}

pub fn config_version(old: Option<&str>, new: &str) {
    if let Some(old) = old {
        gauge!(CONFIG_INFO, "version" => old.to_string()).set(0.0);
    }
    gauge!(CONFIG_INFO, "version" => new.to_string()).set(1.0);
}

/// What the last heartbeat saw of the instances sharing the store.
pub fn cluster(live: usize, dead: usize, stopped: usize, drift: bool) {
    for (state, n) in [("live", live), ("dead", dead), ("stopped", stopped)] {
        gauge!(CLUSTER_INSTANCES, "state" => state).set(n as f64);
    }
    gauge!(CLUSTER_DRIFT).set(if drift { 1.0 } else { 0.0 });
}

/// `n` spans of the OTLP exporter came to `result` (`exported`, `failed`, `rejected`, `dropped`):
/// counted once per export, not per span.
pub fn otlp_spans(result: &'static str, n: u64) {
    counter!(OTLP_SPANS, "result" => result).increment(n);
}

pub fn plugin_call(plugin: &str, outcome: &'static str, seconds: f64) {
    PLUGIN_CALLS_BY_OUTCOME
        .get(plugin, outcome, || counter!(PLUGIN_CALLS, "plugin" => plugin.to_string(), "outcome" => outcome))
        .increment(1);
    PLUGIN_SECONDS_BY_PLUGIN
        .get(plugin, (), || histogram!(PLUGIN_SECONDS, "plugin" => plugin.to_string()))
        .record(seconds);
}

/// A destination's gauges, computed at scrape time from the store and the dispatcher.
pub struct DestinationGauges<'a> {
    pub pending: u64,
    pub oldest_due_ms: u64,
    pub dead: u64,
    /// Ordered keys held by a dead or failed head.
    pub held_keys: u64,
    pub breaker: &'a str,
    pub paused: bool,
}

/// Gauges computed at scrape time from the store and the dispatcher.
pub fn destination_gauges(destination: &str, g: DestinationGauges<'_>) {
    let DestinationGauges { pending, oldest_due_ms, dead, held_keys, breaker, paused } = g;
    let d = destination.to_string();
    gauge!(HELD_KEYS, "destination" => d.clone()).set(held_keys as f64);
    gauge!(QUEUE_DEPTH, "destination" => d.clone()).set(pending as f64);
    gauge!(OLDEST_DUE, "destination" => d.clone()).set(oldest_due_ms as f64 / 1000.0);
    gauge!(DEAD_LETTERS, "destination" => d.clone()).set(dead as f64);
    let state = match breaker {
        "open" => 2.0,
        "half_open" => 1.0,
        _ => 0.0,
    };
    gauge!(BREAKER_STATE, "destination" => d.clone()).set(state);
    gauge!(PAUSED, "destination" => d).set(if paused { 1.0 } else { 0.0 });
}
