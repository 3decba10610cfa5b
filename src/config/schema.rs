//! The `routes.yaml` schema. Every field's doc comment is user documentation: the reference in
//! `docs/configuration.md` is written from it. Unknown keys are errors everywhere (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::rules::ConditionConfig;

/// `server:` — the ingress listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the webhook listener binds, `host:port`. Default `127.0.0.1:8080`; use `0.0.0.0:8080`
    /// to accept from other hosts. Port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes. Default 1 MiB: GitHub caps payloads at 25 MB but real
    /// events are a few KiB; larger requests get `413` before their body is read to the end.
    pub max_body_bytes: usize,
    /// Largest request head accepted: the request line, every header line and the blank line, in
    /// bytes as received. Default 64 KiB (real senders send 1-4 KiB; Envoy's default is 60 KiB);
    /// a larger head gets `431` before it is read to the end, and is never stored. Between 1 KiB
    /// and 256 KiB (the HTTP parser's read buffer, about 400 KiB, must hold the whole head). More
    /// than 100 header lines also get `431`.
    pub max_header_bytes: usize,
    /// Most ingress connections served at once; further connections wait in the kernel's accept
    /// queue (1024 long) holding no descriptor. Default: sized from the open-file limit at start
    /// (see "Connection limits" in `docs/operations.md`), at most 1024 (bounds memory: each connection may
    /// hold a body of `max_body_bytes`).
    pub max_connections: Option<usize>,
    /// Time allowed to receive a whole request (headers and body). Default `30s`; a slower sender
    /// gets `408`, so a slow client cannot hold a connection slot forever.
    pub request_timeout: Dur,
    /// On SIGINT/SIGTERM, how long to wait for in-flight requests and delivery attempts before
    /// exiting (what is not done stays due in the store). Default `10s`.
    pub shutdown_grace: Dur,
    /// JSONPaths (names, indexes and `[*]` only) whose values are masked as `"[redacted]"` when a
    /// body is logged (bodies are logged at `debug` level only), e.g. `[$.customer.email]`.
    pub log_redact: Vec<String>,
    /// Reverse proxies and load balancers (CIDR, or a single address) whose `X-Forwarded-For`
    /// is believed when a source has `allow_ips`. A request whose socket peer is one of them is
    /// judged by the right-most `X-Forwarded-For` address that is not itself a trusted proxy
    /// (nginx's `real_ip_recursive`); every other request by its socket peer. Default none:
    /// a header anyone can write must not decide who may post.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_connections: None,
            request_timeout: Dur(Duration::from_secs(30)),
            shutdown_grace: Dur(Duration::from_secs(10)),
            log_redact: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `admin:` — the admin API, metrics and health listener, separate from ingress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener. Default `127.0.0.1:9090`. Hookyard refuses to start when this
    /// is not a loopback address and no `token` is set.
    pub listen: SocketAddr,
    /// Bearer token every admin route except `/healthz` requires (`Authorization: Bearer …`),
    /// compared in constant time. Use `${ENV_VAR}`. Optional on loopback.
    pub token: Option<Secret>,
    /// Named bearer tokens, one per person or tool (`tokens: { alice: "${ALICE_ADMIN_TOKEN}" }`),
    /// accepted beside `token`: the actions taken with one (the console's included) are logged
    /// as `api:<name>`. Names are letters, digits, `-`, `_` and `.`.
    pub tokens: std::collections::BTreeMap<String, Secret>,
    /// Set to `false` to run without the admin listener.
    pub enabled: bool,
    /// Most admin connections served at once, apart from ingress's; further ones wait in the
    /// kernel's accept queue, so a flood of admin connections cannot use the descriptors ingress
    /// needs. Default: an eighth of the descriptors left for connections, at most 64 (scrapers and
    /// operators need few); never more than ingress leaves.
    pub max_connections: Option<usize>,
    /// Time an admin connection may take to send a request's head and body, and may stay idle
    /// between requests; a half-sent request is closed (`408` if its body is late). Default `10s`.
    pub request_timeout: Dur,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            tokens: Default::default(),
            enabled: true,
            max_connections: None,
            request_timeout: Dur(Duration::from_secs(10)),
        }
    }
}

/// `telemetry:` — traces of what the gateway does, exported to an OpenTelemetry collector. Read
/// at start only: a reload that changes it says "needs restart".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export spans over OTLP/HTTP (protobuf). Default: not set, nothing is exported (a sender's
    /// `traceparent` is still forwarded as it came).
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp:` — where spans go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL, `http://` or `https://` (e.g. `http://127.0.0.1:4318`), as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is: spans are posted to `<endpoint>/v1/traces`. Spans are
    /// sent in batches from a queue of at most 2048 (a collector that cannot keep up loses
    /// spans, never slows events down) and flushed at shutdown.
    pub endpoint: String,
    /// `service.name` of the exported resource. Default `hookyard`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Headers sent with every export, e.g. `authorization: Bearer ${OTLP_TOKEN}` for a hosted
    /// collector. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The share of events whose traces are exported, from `0` to `1`. Default `1` (every event).
    /// Decided by the trace id, so an event's spans and its deliveries' (made later, maybe after a
    /// restart) are all kept or all left out. Decided before the first span is made: a trace left
    /// out costs no OpenTelemetry work (see docs/operations.md, Traces, for what exporting costs).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "hookyard".to_string()
}

/// `egress:` — where deliveries may connect. By default only public addresses are allowed, so a
/// destination URL cannot be used to reach internal services (SSRF).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Networks (CIDR, or a single address) that deliveries may reach although they are loopback,
    /// private, link-local or otherwise non-public, e.g. `[127.0.0.0/8, "::1/128", 10.1.0.0/16]`.
    /// Checked after DNS resolution, on every connection.
    pub allow: Vec<String>,
}

/// `delivery:` — limits of the delivery engine as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Most delivery attempts in flight at once, over all destinations. Default 256. Also the bound
    /// of deliveries held in memory: those being attempted, and as many again handed to a busy
    /// destination's attempts; the backlog waits in the store.
    pub max_in_flight: usize,
    /// Most deliveries waiting (queued or between retries). When full, new events get `503` with
    /// `Retry-After` instead of being accepted and lost. Default 100000.
    pub max_pending: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig { max_in_flight: 256, max_pending: 100_000 }
    }
}

/// `storage:` — the durable event log and delivery queue: a SQLite file (the default, embedded)
/// or a PostgreSQL database (`postgres:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Database file, created on first run (with its directory). Relative to the config file's
    /// directory. Default `data/hookyard.db`. `:memory:` keeps nothing across restarts (tests only).
    pub path: PathBuf,
    /// `full` (default): every acknowledged event is fsynced before the `202`, so it survives a
    /// power loss. `normal`: no fsync per commit; survives a crash of hookyard but the last
    /// commits may be lost if the machine loses power. Commits are grouped across concurrent
    /// requests either way.
    pub sync: SyncMode,
    /// How long finished events (all deliveries delivered, failed or dead) are kept. Pending work
    /// is never deleted. Default `7d`.
    pub retention: Dur,
    /// How often the retention purge runs. Default `1h`.
    pub purge_interval: Dur,
    /// Longest wait of an event for its commit, SQLite's write lock included (another process,
    /// such as a `sqlite3` shell or a backup, may hold it). When it passes the sender gets `503`
    /// with `Retry-After` and the event is not written, and `/readyz` fails until a write
    /// succeeds. Default `5s`: a healthy commit takes milliseconds, and senders typically give up
    /// after 10-30 s, so they hear a clear "retry later" before their own timeout. Restart-only.
    pub commit_timeout: Dur,
    /// Keep everything in PostgreSQL instead of the SQLite file (`path` and `sync` are then not
    /// used). Restart-only.
    pub postgres: Option<PostgresConfig>,
}

/// `storage.postgres:` — a PostgreSQL database (version 12 or later) as the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:5432/dbname` (libpq's URL and `key=value`
    /// forms; `?sslmode=disable|prefer|require`, see `ca_file`). Use `${DATABASE_URL}`: the
    /// password never appears in logs or in `status`.
    pub url: Secret,
    /// Most connections hookyard opens to the database (and one more that listens for other
    /// instances' signals). Default 16: one commits the event writes of every request (grouped),
    /// a quarter (1 to 4) claims deliveries and records heartbeats without waiting for the WAL
    /// flush, the others serve deliveries, the admin API and the CLI.
    #[serde(default = "default_pg_pool")]
    pub pool: usize,
    /// Schema that holds hookyard's tables, created if missing. Default `public`. Several
    /// gateways (or tests) can share a database with one schema each.
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    /// Longest wait to open a connection. Default `5s`.
    #[serde(default = "default_pg_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest a statement may run (the server cancels it; the request gets `503`). Default `30s`.
    #[serde(default = "default_pg_statement_timeout")]
    pub statement_timeout: Dur,
    /// PEM file of the CA certificate(s) that signed the server's certificate, relative to this
    /// file. Given, every connection is TLS and the server's certificate and host name are
    /// verified against it (libpq's `verify-full`). Without it, `?sslmode=require` in the URL
    /// verifies against the public (webpki) roots, and the default (`prefer`) connects without TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long an instance owns a delivery it is attempting, so that no other instance sharing
    /// the database sends it at the same time. An instance that dies holding deliveries (killed,
    /// its machine lost) gives them up when their lease ends: another instance sends them then.
    /// Must be longer than every destination's `timeout_ms` plus 5 s (an attempt is never started
    /// with less lease left than that; the lease is renewed first). Default `60s`.
    #[serde(default = "default_pg_lease")]
    pub lease: Dur,
    /// How often an instance records that it is alive (`status` lists the instances), and learns
    /// how many others are: a destination's `rate_limit` and `max_in_flight` are shared among the
    /// live instances. Default `1s`.
    #[serde(default = "default_pg_heartbeat")]
    pub heartbeat: Dur,
    /// An instance not heard from for this long is dead: `status` flags it, and the others take
    /// its share of every destination's limits. At least 3 heartbeats. Default `10s`.
    #[serde(default = "default_pg_node_timeout")]
    pub node_timeout: Dur,
    /// This instance's id among those sharing the database. Default: the host name and
    /// `server.listen` (`web-1-0.0.0.0:8080`), so an instance restarted in place takes back the
    /// deliveries it held at once, rather than when their leases run out; with port 0, the host
    /// name and a random suffix. Two running instances must never share one.
    #[serde(default)]
    pub node_id: Option<String>,
}

fn default_pg_lease() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_pg_heartbeat() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_pg_node_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_pg_pool() -> usize {
    16
}

fn default_pg_schema() -> String {
    "public".to_string()
}

fn default_pg_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_pg_statement_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("data/hookyard.db"),
            sync: SyncMode::Full,
            retention: Dur(Duration::from_secs(7 * 86_400)),
            purge_interval: Dur(Duration::from_secs(3600)),
            commit_timeout: Dur(DEFAULT_COMMIT_TIMEOUT),
            postgres: None,
        }
    }
}

/// How hard a commit tries to reach the disk (`storage.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged event survives a crash of the process, the OS or
    /// the power.
    #[default]
    Full,
    /// No fsync on commit (WAL with `synchronous=NORMAL`): survives a crash of the process, but the
    /// last commits may be lost if the machine loses power.
    Normal,
}

/// Default of `storage.commit_timeout`.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `sources.<name>:` — one sender of webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// URL path the sender posts to, e.g. `/hooks/github`. Unique across sources.
    pub path: String,
    /// How requests are authenticated. Required; write `scheme: none` to accept unsigned requests.
    pub verify: VerifyConfig,
    /// Idempotency: where the sender puts its own event id. A repeat within the window is
    /// acknowledged with the original event's id and not delivered again.
    pub dedupe: Option<DedupeConfig>,
    /// Client addresses (CIDR, or a single address; IPv4 and IPv6) allowed to post to this path;
    /// others get `403` before their body is read. Default: every address. The client is the
    /// socket's peer, or for requests from `server.trusted_proxies` the address they forwarded.
    pub allow_ips: Option<Vec<String>>,
    /// Most requests accepted at this path, over all senders together (a token bucket); excess
    /// requests get `429` with `Retry-After` before their body is read, so a leaked URL cannot
    /// flood the store. Default: no limit.
    pub rate_limit: Option<SourceRateLimit>,
}

/// `sources.<name>.rate_limit:` — a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRateLimit {
    /// Requests per second in the long run (the bucket's refill rate); may be below 1, e.g.
    /// `0.5` for one request every two seconds, down to one a day (`0.0000116`).
    pub per_second: f64,
    /// Requests accepted at once after a quiet period (the bucket's size). Default: one second's
    /// worth, `per_second` rounded up (at least 1), so a sender's usual burst is not refused.
    pub burst: Option<u32>,
}

impl SourceRateLimit {
    /// `burst`, or its default.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| (self.per_second.ceil() as u32).max(1))
    }
}

/// `sources.<name>.dedupe:` — give exactly one of `header` and `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Header holding the sender's event id, e.g. `X-GitHub-Delivery` or `webhook-id`.
    pub header: Option<String>,
    /// JSONPath of the sender's event id in the body, e.g. `$.id` (Stripe).
    pub path: Option<String>,
    /// How long an id is remembered. Default `24h`. Events without the id are never deduplicated.
    #[serde(default = "default_dedupe_window")]
    pub window: Dur,
}

fn default_dedupe_window() -> Dur {
    Dur(Duration::from_secs(86_400))
}

/// `verify.scheme`: a name of [`crate::verify::catalogue::SCHEME_NAMES`], checked as it is read
/// (so a typo is reported at its line, with the names it could be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySchemeName(pub String);

impl VerifySchemeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VerifySchemeName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use crate::verify::catalogue::SCHEME_NAMES;
        let name = String::deserialize(deserializer)?;
        if SCHEME_NAMES.contains(&name.as_str()) {
            Ok(VerifySchemeName(name))
        } else {
            Err(serde::de::Error::unknown_variant(&name, SCHEME_NAMES))
        }
    }
}

/// MAC algorithm of the generic `hmac` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    #[default]
    Sha256,
    Sha512,
}

/// Text encoding of a MAC in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingName {
    #[default]
    Hex,
    Base64,
}

/// `sources.<name>.verify:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// A provider of the catalogue (`github`, `stripe`, `slack`, `twilio`, …: `hookyard
    /// providers` lists them, docs/providers.md shows each) or a generic scheme: `none`, `hmac`,
    /// `basic`, `api-key`.
    pub scheme: VerifySchemeName,
    /// The shared secret (use `${ENV_VAR}`). For `standard-webhooks` a `whsec_…` secret, for `basic`
    /// `user:password`, for `api-key` the key.
    pub secret: Option<Secret>,
    /// Several secrets, any of which verifies: for rotation. May be combined with `secret`.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Largest accepted clock difference for timestamped schemes (`stripe`, `slack`,
    /// `standard-webhooks`), in either direction. Default `5m`, what the providers recommend.
    pub tolerance: Option<Dur>,
    /// `hmac`: header carrying the signature (required). `api-key`: header carrying the key
    /// (default `X-API-Key`).
    pub header: Option<String>,
    /// `hmac`: `sha256` (default) or `sha512`.
    pub algorithm: Option<AlgorithmName>,
    /// `hmac`: `hex` (default) or `base64`.
    pub encoding: Option<EncodingName>,
    /// `hmac`: text before the encoded MAC in the header, e.g. `sha256=`. Default empty.
    pub prefix: Option<String>,
    /// `twilio`, `square`, `hubspot`: the public URL the provider calls (its signature covers it;
    /// a proxy in front may rewrite what the gateway sees), without a query string: the
    /// request's own query is appended.
    pub url: Option<String>,
    /// `meta`: the verify token you gave Meta; its `hub.challenge` handshake must carry it.
    pub verify_token: Option<Secret>,
}

/// `destinations.<name>:` — one receiver of deliveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// `http://` or `https://` URL the event is sent to (with `method`). May be a template that
    /// takes values from the event (`https://{{ $.tenant }}.hooks.example.com/in`, `{{
    /// header:X-Account }}`) or, for a chain's later step, from an earlier step's response (`{{
    /// response.crm:$.id }}`): rendered when the delivery is planned and stored, each value escaped
    /// for its place (a host takes one DNS label; a path segment or query value is
    /// percent-encoded). Not in the scheme, user info, port or fragment.
    pub url: String,
    /// HTTP method of every delivery: `POST` (default) or `PUT`, for receivers that take each
    /// event as a resource put at the URL. Both carry the body and its signature unchanged. Others
    /// are refused: `GET`, `HEAD`, `DELETE` and `OPTIONS` carry no body by convention, and a
    /// `PATCH` body is a patch document (RFC 5789) that a webhook payload is not.
    #[serde(default)]
    pub method: DeliveryMethod,
    /// Time allowed for one attempt (connect, send, response head and body), in milliseconds.
    /// Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra headers set on every delivery. Signature, hop-by-hop and `webhook-*` headers are
    /// reserved. A value may be a template (`"{{ header:X-Account }}"`, see `url`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A body template that replaces the body as delivered (no plugin needed): JSON when it reads
    /// as JSON (`'{"account": "{{ $.account.id }}", "amount": {{ $.amount }}}'`: a placeholder in a
    /// string is escaped into it, elsewhere the value goes in as JSON; sent as
    /// `application/json`), else text (`text/plain`). Rendered when the delivery is planned.
    pub body: Option<String>,
    /// Most hosts a templated `url` keeps connection pools for; the least recently used host's
    /// pool is closed beyond that. Default 64.
    #[serde(default = "default_max_hosts")]
    pub max_hosts: usize,
    /// How deliveries are signed. Required; write `scheme: none` to send unsigned.
    pub sign: SignConfig,
    /// When failed attempts are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Most attempts in flight to this destination at once (each uses one pooled connection).
    /// Default 32.
    #[serde(default = "default_destination_in_flight")]
    pub max_in_flight: usize,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Circuit breaker: stops sending to a destination that keeps failing, without failing or
    /// dropping its deliveries (they wait in the store).
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Most requests per second to this destination; excess deliveries are delayed, never dropped.
    /// Default: no limit.
    pub rate_limit: Option<f64>,
    /// Ordered delivery: per key, one delivery in flight at a time and never a later event before
    /// an earlier one. Default: none (deliveries go in parallel, in any order).
    pub ordering: Option<OrderingConfig>,
    /// Batched delivery: deliveries grouped into one signed request. Default: none (one request
    /// per delivery).
    pub batch: Option<BatchConfig>,
}

/// `destinations.<name>.batch:` — a batch closes at whichever limit comes first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most deliveries in one request. Default 100.
    pub max_events: usize,
    /// Most bytes of bodies in one request (a single larger body goes alone). Default `1MiB`.
    pub max_bytes: ByteSize,
    /// Longest a delivery waits for its batch to fill. Default `1s`.
    pub max_wait: Dur,
    /// `json_array` (the default): `[body,body,…]`; `ndjson`: one body per line.
    pub format: BatchFormat,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 100,
            max_bytes: ByteSize(1 << 20),
            max_wait: Dur(Duration::from_secs(1)),
            format: BatchFormat::JsonArray,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFormat {
    #[default]
    JsonArray,
    Ndjson,
}

/// A number of bytes: a number, or a string with a unit (`512KiB`, `1MiB`, `1MB`, `100B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if let Some(n) = v.as_u64() {
            return Ok(ByteSize(n));
        }
        let invalid = || {
            serde::de::Error::custom(format!(
                "expected a number of bytes, or one with a unit such as \"512KiB\" or \"1MiB\", found {v}"
            ))
        };
        let text = v.as_str().ok_or_else(invalid)?.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let n: u64 = num.parse().map_err(|_| invalid())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(invalid()),
        };
        n.checked_mul(scale).map(ByteSize).ok_or_else(invalid)
    }
}

/// `destinations.<name>.ordering:` — `destination` (one order for every delivery), or a map
/// `{ key: "$.customer.id" | "header:X-Shop", on_dead: block | skip }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderingConfig {
    /// `None`: one order for the whole destination.
    pub key: Option<String>,
    pub on_dead: OnDead,
}

/// What a key's order does when its head ends undelivered (dead letter, or failed for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDead {
    /// The key stops until an operator replays or skips the head (the default: never a later
    /// event before an earlier one was delivered).
    #[default]
    Block,
    /// The key moves on to its next delivery.
    Skip,
}

impl<'de> Deserialize<'de> for OrderingConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Keyed {
            key: String,
            #[serde(default)]
            on_dead: OnDead,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Whole {
            #[serde(default)]
            on_dead: OnDead,
        }
        let v = serde_json::Value::deserialize(d)?;
        match &v {
            serde_json::Value::String(s) if s == "destination" => {
                Ok(OrderingConfig { key: None, on_dead: OnDead::default() })
            }
            serde_json::Value::String(s) => Err(serde::de::Error::custom(format!(
                "ordering \"{s}\" is not known: write `ordering: destination`, or `ordering: {{ key: \"$.path\" }}` (or `key: \"header:Name\"`)"
            ))),
            serde_json::Value::Object(m) if m.contains_key("key") => {
                let k: Keyed = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(OrderingConfig { key: Some(k.key), on_dead: k.on_dead })
            }
            serde_json::Value::Object(_) => {
                let w: Whole = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(OrderingConfig { key: None, on_dead: w.on_dead })
            }
            _ => Err(serde::de::Error::custom(
                "ordering must be `destination` or a map with `key` (a JSONPath or \"header:Name\") and `on_dead`",
            )),
        }
    }
}

/// `destinations.<name>.breaker:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Default `true`.
    pub enabled: bool,
    /// The breaker opens when at least this share of the attempts in `window` failed (5xx, 408,
    /// 429, timeouts, connection errors). Default `0.5`.
    pub failure_rate: f64,
    /// ...and at least this many attempts were made in `window`. Default `10`.
    pub min_requests: usize,
    /// Sliding window of attempts considered. Default `60s`.
    pub window: Dur,
    /// How long the breaker stays open before one probe is let through (half-open). Default `30s`.
    pub cooldown: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_rate: 0.5,
            min_requests: 10,
            window: Dur(Duration::from_secs(60)),
            cooldown: Dur(Duration::from_secs(30)),
        }
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_destination_in_flight() -> usize {
    32
}

fn default_max_hosts() -> usize {
    64
}

/// `destinations.<name>.tls:` — PEM files of at most 1 MiB each (the whole Mozilla root bundle is
/// about 220 KB; a path naming a log or a device by mistake costs no more than that to refuse).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of extra CA certificates trusted for this destination, besides the bundled
    /// webpki roots (for internal CAs). Relative to the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// A PEM file with the client certificate presented when the destination asks for one
    /// (mutual TLS): the certificate first, then any intermediates. Needs `client_key`. Relative
    /// to the config file's directory; read at start and at every reload (a changed file causes
    /// one), so rotating the files switches certificates without a restart.
    pub client_cert: Option<PathBuf>,
    /// A PEM file with the private key of `client_cert`: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA
    /// PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), unencrypted. Needs `client_cert`; `check` refuses
    /// a key that is not the certificate's.
    pub client_key: Option<PathBuf>,
}

/// `destinations.<name>.method:` — `POST` or `PUT`, written in capitals as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMethod {
    #[default]
    Post,
    Put,
}

impl<'de> Deserialize<'de> for DeliveryMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v.as_str() {
            Some("POST") => Ok(DeliveryMethod::Post),
            Some("PUT") => Ok(DeliveryMethod::Put),
            Some(other) => Err(serde::de::Error::custom(format!(
                "method \"{other}\" is not allowed: use POST (the default) or PUT"
            ))),
            None => Err(serde::de::Error::custom(format!("expected POST or PUT, found {v}"))),
        }
    }
}

/// Outbound signature schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignSchemeName {
    /// `webhook-signature: v1,<base64>` over `{id}.{timestamp}.{body}` with a `whsec_` secret.
    #[default]
    StandardWebhooks,
    /// `X-Hub-Signature-256: sha256=<hex>` as GitHub sends it.
    Github,
    /// A MAC of the body in a header of your choice.
    Hmac,
    /// No signature.
    None,
}

/// `destinations.<name>.sign:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignConfig {
    /// `standard-webhooks` (default), `github`, `hmac` or `none`.
    #[serde(default)]
    pub scheme: SignSchemeName,
    /// Signing secret (use `${ENV_VAR}`); for `standard-webhooks` a `whsec_…` secret (HMAC, `v1`)
    /// or a `whsk_…` ed25519 key (`v1a`; `hookyard keys generate` makes one and prints the
    /// `whpk_…` public key to give the receiver).
    pub secret: Option<Secret>,
    /// `standard-webhooks`: secrets being rotated out. Until its `until`, each request also
    /// carries the signature of each (space-separated, as the spec allows), so receivers can
    /// move to the new secret at their pace; after it, only `secret` signs. Retries are signed
    /// with the keys current at the attempt.
    #[serde(default)]
    pub previous: Vec<PreviousSecret>,
    /// `hmac`: header to put the signature in (required).
    pub header: Option<String>,
    /// `hmac`: `sha256` (default) or `sha512`.
    pub algorithm: Option<AlgorithmName>,
    /// `hmac`: `hex` (default) or `base64`.
    pub encoding: Option<EncodingName>,
    /// `hmac`: text before the encoded MAC. Default empty.
    pub prefix: Option<String>,
}

/// `destinations.<name>.sign.previous[]`: a secret being rotated out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    pub secret: Secret,
    /// When it stops signing: an RFC 3339 time, e.g. `2026-12-01T00:00:00Z`.
    pub until: String,
}

/// `destinations.<name>.retry:` — either a `schedule` or `exponential`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delay before each retry; its length is the number of retries. Default
    /// `[5s, 5m, 30m, 2h, 5h, 10h, 10h]` (about 28 hours in all, as Standard Webhooks suggests).
    pub schedule: Option<Vec<Dur>>,
    /// Exponential backoff instead of a schedule.
    pub exponential: Option<ExponentialConfig>,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]` so retries of many
    /// events do not arrive at once. Default `0.2`.
    pub jitter: f64,
    /// A `Retry-After` from the destination replaces the computed delay, clamped to this. Default `1h`.
    pub max_retry_after: Dur,
    /// Smallest delay after a `429` or a timeout, `Retry-After` included: an overloaded destination
    /// gets air. Default `60s`.
    pub throttle_floor: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            schedule: None,
            exponential: None,
            jitter: 0.2,
            max_retry_after: Dur(Duration::from_secs(3600)),
            throttle_floor: Dur(Duration::from_secs(60)),
        }
    }
}

/// The default retry schedule.
pub fn default_schedule() -> Vec<Duration> {
    [5, 300, 1800, 7200, 18000, 36000, 36000].iter().map(|s| Duration::from_secs(*s)).collect()
}

/// `destinations.<name>.retry.exponential:` — delay n = min(base × factorⁿ, cap).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialConfig {
    /// First delay. Default `1s`.
    #[serde(default = "default_base")]
    pub base: Dur,
    /// Growth per retry. Default `2`.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Largest delay. Default `1h`.
    #[serde(default = "default_cap")]
    pub cap: Dur,
    /// Attempts in all, the first included. Default `10`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_base() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_factor() -> f64 {
    2.0
}
fn default_cap() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_max_attempts() -> u32 {
    10
}

/// `routes[]:` — which events go where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics and `dry-run` output.
    pub name: String,
    /// The source whose events this route considers.
    pub source: String,
    /// Conditions that must all hold (see "Conditions"). Empty or absent: every event of the source.
    #[serde(default)]
    pub when: Vec<ConditionConfig>,
    /// Destinations that receive each matching event (at least one).
    pub to: Vec<String>,
    /// WebAssembly plugins run in order on each matching event before delivery (see
    /// `plugins/README.md`): each gets the previous one's output; one that emits several outputs
    /// fans out; a drop ends its branch.
    #[serde(default)]
    pub transform: Vec<TransformConfig>,
    /// What happens to an event whose transform fails (trap, timeout, memory, bad output):
    /// `fail` (default: kept as failed deliveries; `hookyard replay --reroute` runs the transform
    /// again), `deliver_original` (deliver the untransformed event) or `drop`.
    #[serde(default)]
    pub on_error: OnError,
    /// Later steps (orchestration): each is sent only after the step it follows (`after`)
    /// answered 2xx, and only if its conditions on that response hold; it may use that response
    /// (and every earlier step's) in its destination's templates. A step whose predecessor ends
    /// undelivered, or whose conditions do not hold, is `skipped` with the reason.
    #[serde(default)]
    pub then: Vec<StepConfig>,
    /// Free text for humans.
    pub description: Option<String>,
}

/// `routes[].then[]`: one later step of a chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// The destination this step delivers to (not one of the route's `to`, nor an earlier step's).
    pub destination: String,
    /// The destination whose delivery this step waits for: one of `to`, or an earlier step.
    /// Default: the step before (the only `to` destination for the first step).
    pub after: Option<String>,
    /// The statuses of that response that let this step go. Default: any 2xx.
    pub status: Option<Vec<u16>>,
    /// Conditions on that response (as a route's `when:`): `path:` reads its JSON body, `header:`
    /// its headers. Every one must hold.
    #[serde(default)]
    pub when: Vec<ConditionConfig>,
}

/// `routes[].on_error`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Drop,
    DeliverOriginal,
    #[default]
    Fail,
}

/// `routes[].transform[]`: one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The plugin, a WebAssembly component (`.wasm`) for `hookyard:plugin/transform@0.1.0`.
    /// Relative to the config file's directory.
    pub plugin: PathBuf,
    /// Settings the plugin reads with `config()`. Values are handed over as text (numbers and
    /// booleans as written).
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Per-plugin limits.
    #[serde(default)]
    pub limits: PluginLimitsConfig,
}

/// `routes[].transform[].limits`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitsConfig {
    /// Wall-clock deadline of one call, in milliseconds. Default 50: a transform is on the path
    /// of the sender's request.
    pub timeout_ms: Option<u64>,
    /// Linear memory the plugin may grow to, in MiB. Default 16.
    pub memory_mb: Option<u64>,
    /// Largest total output (bodies and headers) of one call, in bytes. Default 1 MiB.
    pub max_output_bytes: Option<usize>,
    /// Most outputs one call may emit (a split). Default 100.
    pub max_outputs: Option<usize>,
    /// Largest total of all outputs of one event (bodies and headers), in bytes; in a chain,
    /// of one step across its branches. Default 4 MiB (or `max_output_bytes` if larger): every
    /// output is stored with each delivery it makes, so this bounds what one event stores.
    pub max_total_output_bytes: Option<usize>,
}

/// A secret string. Its `Debug` never shows the value, so secrets cannot leak through logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A duration written with a unit: `250ms`, `5s`, `5m`, `2h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::String(s) => s.as_str(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a duration with a unit such as \"5s\" or \"250ms\", found {other}"
                )));
            }
        };
        parse_duration(text).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// Parses `250ms`, `5s`, `5m`, `2h`, `1d` (one number, one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration \"{text}\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\"")
    })?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!("invalid duration \"{text}\": unit must be one of ms, s, m, h, d"));
        }
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(|| format!("invalid duration \"{text}\": too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("250ms", Ok(Duration::from_millis(250))),
            ("5s", Ok(Duration::from_secs(5))),
            ("5m", Ok(Duration::from_secs(300))),
            ("2h", Ok(Duration::from_secs(7200))),
            ("1d", Ok(Duration::from_secs(86400))),
            ("5", Err("invalid duration \"5\": unit must be one of ms, s, m, h, d")),
            ("s", Err("invalid duration \"s\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\"")),
            ("5 weeks", Err("invalid duration \"5 weeks\": unit must be one of ms, s, m, h, d")),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_duration(input).as_ref().map_err(|e| e.as_str()),
                want.as_ref().map_err(|e| *e),
                "{input}"
            );
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(<redacted>)");
    }
}
