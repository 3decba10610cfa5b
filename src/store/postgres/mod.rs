//! The PostgreSQL backend: the store on a database the team already runs, backs up and
//! replicates. Only this module names tokio-postgres.
//!
//! Why tokio-postgres with deadpool-postgres: the driver is the asynchronous one the Rust
//! ecosystem's PostgreSQL clients are built on (sqlx excepted), with binary parameters, arrays
//! (so a whole group of events is one `INSERT … SELECT FROM unnest(…)`) and pipelining; the pool
//! is small, runtime-agnostic, recycles closed connections and bounds every wait, so a full pool
//! or a database that went away is an error to answer `503` with, not a hang. sqlx would add a
//! macro layer and its own pool for queries we write by hand anyway.
//!
//! Writes of events and attempts go through one writer task that groups the operations of
//! concurrent requests into one transaction with multi-row statements (`writer.rs`): an event is
//! acknowledged only after the commit that holds it returned, and throughput does not fall to a
//! round trip per event. Reads and operator actions take their own pooled connection.
//!
//! `mod.rs`: connecting and the pool; `schema.rs`: migrations; `writer.rs`: the group commit;
//! `queue.rs`: the per-event operations; `inspect.rs`: listing, replay, stats, pause, cancel and
//! purge; `import.rs`: writing a store `hookyard migrate` copies in.

mod cluster;
#[cfg(test)]
mod cluster_tests;
mod import;
mod inspect;
mod queue;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::health::WriteHealth;
use super::{Result, StoreError, StoreOptions};
use crate::clock::Clock;
use crate::config::{KeyError, PostgresConfig};
use writer::{Lease, Writer};

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Connections that commit without waiting for the WAL flush: claims, lease releases and
    /// renewals, heartbeats (see [`PgStore::open`]).
    lease_pool: Pool,
    writer: Writer,
    /// This instance's id (`host-xxxxxxxx`, new at each start) and the length of its leases.
    lease: Lease,
    /// Random per process: tells this process's heartbeats from another's under the same id.
    incarnation: Arc<str>,
    /// How to open a connection of its own (the LISTEN connection), and where.
    connect: Arc<Connect>,
    health: Arc<WriteHealth>,
    commit_timeout: Duration,
    clock: Clock,
    /// The server's autovacuum is off (see [`PgStore::warnings`]).
    autovacuum_off: bool,
}

/// What opening a connection of its own takes (the pool's settings, for the LISTEN connection).
struct Connect {
    pg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The notification channel of this schema's instances.
    channel: String,
    schema: String,
}

/// A database error as the boundary carries it: the server's message (with its detail) or the
/// driver's.
fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(describe(&e))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{}: {detail}", d.message()),
            None => d.message().to_string(),
        },
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    StoreError::Backend(match e {
        PoolError::Timeout(_) => {
            "no database connection within the wait (the pool is busy or the database does not answer)".to_string()
        }
        PoolError::Backend(e) => format!("cannot connect to the database: {}", describe(&e)),
        other => other.to_string(),
    })
}

/// What is wrong with a `storage.postgres` section (its `ca_file` already resolved), as
/// `check` and a reload report it: the URL, a CA file beside `sslmode=disable`, and the CA file
/// itself (read and parsed). Needs no database.
pub fn check(cfg: &PostgresConfig) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if let Some(problem) = url_problem(&cfg.url.0) {
        errors.push(KeyError::new(".url", problem));
    }
    if let Some(ca) = &cfg.ca_file {
        let disabled = tokio_postgres::Config::from_str(&cfg.url.0)
            .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Disable);
        if disabled {
            errors.push(KeyError::new(
                ".ca_file",
                "the url says sslmode=disable, but a ca_file means TLS: remove one of them",
            ));
        }
        if let Err(m) = ca_roots(ca) {
            errors.push(KeyError::new(".ca_file", m));
        }
    }
    errors
}

/// The roots a `ca_file` names: every certificate in it, and nothing else.
fn ca_roots(path: &std::path::Path) -> std::result::Result<crate::tls::TlsRoots, String> {
    let pem = crate::tls::read_pem_file(path)?;
    crate::tls::TlsRoots::empty().with_ca_pem(path, &pem)
}

/// Why `url` is not a usable connection string, if it is not.
fn url_problem(url: &str) -> Option<String> {
    match tokio_postgres::Config::from_str(url) {
        Err(e) => Some(format!("not a PostgreSQL connection URL: {e}")),
        Ok(c) if c.get_hosts().is_empty() => Some("names no host (postgres://user@host:5432/dbname)".to_string()),
        Ok(_) => None,
    }
}

/// The TLS connector for `cfg`: verified against its `ca_file` (host name included), or against
/// the webpki roots when the URL says `sslmode=require`; `None` (no TLS) otherwise.
fn tls_for(
    cfg: &PostgresConfig,
    pg: &tokio_postgres::Config,
) -> std::result::Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
    let roots = match &cfg.ca_file {
        Some(path) => ca_roots(path).map_err(|e| format!("storage.postgres.ca_file: {e}"))?,
        None if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require => crate::tls::TlsRoots::webpki(),
        None => return Ok(None),
    };
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots.0.clone())
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// `postgres://user@host:port/dbname`, without the password: how logs and `status` name the store.
pub fn display_url(url: &str) -> String {
    let Ok(c) = tokio_postgres::Config::from_str(url) else { return "postgres://(invalid url)".to_string() };
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{}@{host}:{port}/{}", c.get_user().unwrap_or(""), c.get_dbname().unwrap_or(""))
}

impl PgStore {
    /// Connects, creates the schema and applies the migrations this database has not seen.
    pub async fn open(cfg: &PostgresConfig, options: StoreOptions) -> Result<PgStore> {
        let StoreOptions { commit_timeout, clock, .. } = options;
        let err = |message: String| StoreError::Open { path: display_url(&cfg.url.0).into(), message };
        if let Some(problem) = url_problem(&cfg.url.0) {
            return Err(err(problem));
        }
        let mut pg = tokio_postgres::Config::from_str(&cfg.url.0).map_err(|e| err(e.to_string()))?;
        pg.connect_timeout(cfg.connect_timeout.0);
        if pg.get_application_name().is_none() {
            pg.application_name("hookyard");
        }
        // every pooled connection works in the schema, no statement runs unbounded, the
        // server's notices ("schema already exists, skipping") stay out of hookyard's log, and
        // every statement is planned for its parameters: a generic plan cached while the tables
        // were small joined the settles' update to a scan of the whole delivery table, ever
        // slower as it grew (5.6 ms per group after 10 s of load, 0.6 ms at first)
        let options = format!(
            "-c search_path={} -c statement_timeout={} -c client_min_messages=warning -c plan_cache_mode=force_custom_plan",
            cfg.schema,
            cfg.statement_timeout.0.as_millis()
        );
        pg.options(match pg.get_options() {
            Some(theirs) => format!("{theirs} {options}"),
            None => options,
        });
        let tls = tls_for(cfg, &pg).map_err(err)?;
        if tls.is_some() {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let connect = Arc::new(Connect {
            pg: pg.clone(),
            tls: tls.clone(),
            channel: cluster::channel(&cfg.schema),
            schema: cfg.schema.clone(),
        });
        // migrations first, on a connection of their own (the schema may not exist yet)
        let autovacuum_off;
        {
            let (mut client, task) = match &tls {
                Some(tls) => pg.connect(tls.clone()).await.map(|(c, conn)| (c, tokio::spawn(conn))),
                None => pg.connect(NoTls).await.map(|(c, conn)| (c, tokio::spawn(conn))),
            }
            .map_err(|e| err(describe(&e)))?;
            let migrated = schema::migrate(&mut client, &cfg.schema).await;
            // the queue rewrites a delivery row with each attempt: without autovacuum its dead
            // rows are never reclaimed and the due query wades through more of them every hour
            autovacuum_off =
                matches!(client.query_one("SHOW autovacuum", &[]).await, Ok(row) if row.get::<_, &str>(0) == "off");
            drop(client);
            let _ = task.await;
            migrated.map_err(|e| err(describe(&e)))?.map_err(err)?;
        }
        // Leases and heartbeats commit without waiting for the WAL flush (`synchronous_commit =
        // off`, on connections of their own): a claim per poll waiting for an fsync halved the
        // accepted events/s of one instance, and a lease lost in a database crash only lets
        // another instance take the delivery sooner (at-least-once holds: a delivery is pending
        // until its settle, which commits with the events, synchronously).
        let lease_connections = (cfg.pool / 4).clamp(1, 4);
        let mut pg_async = pg.clone();
        pg_async.options(format!("{} -c synchronous_commit=off", pg.get_options().unwrap_or_default()));
        let build = |pg: tokio_postgres::Config, size: usize| {
            let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
            let manager = match tls.clone() {
                Some(tls) => Manager::from_config(pg, tls, manager_config),
                None => Manager::from_config(pg, NoTls, manager_config),
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(cfg.connect_timeout.0))
                // a full pool answers within the commit timeout: the caller gets 503, not a hang
                .wait_timeout(Some(commit_timeout))
                .recycle_timeout(Some(cfg.connect_timeout.0))
                .build()
                .map_err(|e| err(e.to_string()))
        };
        let pool = build(pg, cfg.pool.saturating_sub(lease_connections).max(2))?;
        let lease_pool = build(pg_async, lease_connections)?;
        let health = Arc::new(WriteHealth::default());
        let lease =
            Lease { owner: cfg.node_id.clone().unwrap_or_else(cluster::random_node_id).into(), duration: cfg.lease.0 };
        Ok(PgStore {
            writer: Writer::start(pool.clone(), health.clone(), commit_timeout, lease.clone()),
            lease,
            incarnation: format!("{:016x}", fastrand::u64(..)).into(),
            connect,
            pool,
            lease_pool,
            health,
            commit_timeout,
            clock,
            autovacuum_off,
        })
    }

    /// What the gateway should warn about at start (a CLI command does not repeat it).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.autovacuum_off {
            out.push(
                "autovacuum is off on this PostgreSQL server: the delivery queue's dead rows are never reclaimed and its queries slow down over time; turn it on, or VACUUM the schema's tables regularly"
                    .to_string(),
            );
        }
        out
    }

    /// This instance's id among those sharing the database.
    pub fn node(&self) -> &str {
        &self.lease.owner
    }

    /// A pooled connection (bounded wait).
    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A pooled connection whose commits do not wait for the WAL flush, for leases and
    /// heartbeats only (bounded wait).
    async fn lease_conn(&self) -> Result<deadpool_postgres::Object> {
        self.lease_pool.get().await.map_err(pool_error)
    }
}
