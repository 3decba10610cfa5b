//! PostgreSQL for the tests: a schema of its own per test in the local server's `test` database
//! (`HOOKYARD_TEST_DATABASE_URL` overrides it), dropped when the test ends, and a TCP relay in
//! front of the server that a test can cut, to make the database unreachable without touching
//! the server the other tests use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The database the tests use.
pub fn url() -> String {
    std::env::var("HOOKYARD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A plain connection to the test database, for what a test does behind the gateway's back.
pub async fn client() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database {} ({e}); is PostgreSQL running?", url()));
    tokio::spawn(conn);
    c
}

/// A schema named for one test; dropped (with everything in it) when this is dropped.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> PgSchema {
        PgSchema { name: format!("hy_it_{}", uuid::Uuid::now_v7().simple()) }
    }

    /// The `storage:` line of a config that keeps the store in this schema, reached at `url`.
    pub fn storage_yaml_at(&self, url: &str) -> String {
        format!("storage: {{ postgres: {{ url: \"{url}\", pool: 4, schema: {} }} }}\n", self.name)
    }

    pub fn storage_yaml(&self) -> String {
        self.storage_yaml_at(&url())
    }

    /// [`PgSchema::storage_yaml`] with more `storage.postgres` keys (`key: value, ...`).
    pub fn storage_yaml_with(&self, keys: &str) -> String {
        format!("storage: {{ postgres: {{ url: \"{}\", pool: 4, schema: {}, {keys} }} }}\n", url(), self.name)
    }

    /// Runs one query returning one number (a count, say) in this schema.
    pub async fn count(&self, sql: &str) -> i64 {
        let c = client().await;
        c.batch_execute(&format!("SET search_path TO {}", self.name)).await.unwrap();
        c.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        execute_in_drop(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// Runs `sql` on the test database from a `Drop` (which cannot await): on a thread with a
/// runtime of its own, waited for.
fn execute_in_drop(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { client().await.batch_execute(&sql).await })
    })
    .join();
}

/// A database of its own (for what a schema cannot show, such as the default schema `public`),
/// dropped with everything in it when this is dropped.
pub struct Database {
    pub name: String,
    /// The test server's URL naming this database.
    pub url: String,
}

impl Database {
    pub async fn create() -> Database {
        let name = format!("hy_it_{}", uuid::Uuid::now_v7().simple());
        client().await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = url();
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("the test database URL {base} names no database"),
        };
        Database { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        execute_in_drop(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A TCP relay on `127.0.0.1:0` to the test database. While cut, it closes every relayed
/// connection and every new one at once (the database looks down); restored, it relays again.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub async fn start() -> Relay {
        let target: SocketAddr = {
            let cfg: tokio_postgres::Config = url().parse().expect("a test database URL");
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_string(),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            tokio::net::lookup_host((host.as_str(), port)).await.unwrap().next().expect("the database's address")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, conns) = (up.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound); // refused, as by a server that is down
                        continue;
                    }
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().await.push(relay);
                }
            }
        });
        Relay { addr, up, conns, accept }
    }

    /// The test database's URL, through this relay, with `password` (trust auth ignores it; it
    /// is there to show it never reaches a log or the status).
    pub fn url_with_password(&self, password: &str) -> String {
        let cfg: tokio_postgres::Config = url().parse().expect("a test database URL");
        format!(
            "postgres://{}:{password}@{}/{}",
            cfg.get_user().unwrap_or("postgres"),
            self.addr,
            cfg.get_dbname().unwrap_or("test")
        )
    }

    /// The database becomes unreachable: every relayed connection is cut, new ones are closed.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().await.drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut conns) = self.conns.try_lock() {
            conns.drain(..).for_each(|c| c.abort());
        }
    }
}
