//! What tests of the PostgreSQL backend (and of `store::migrate`) share: the test database
//! (`HOOKYARD_TEST_DATABASE_URL`, default the local `test` database) and a schema per test, dropped
//! at its end.

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::config::{Dur, PostgresConfig, Secret};

/// The database the tests use.
pub(crate) fn test_url() -> String {
    std::env::var("HOOKYARD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops its schema when dropped (on a thread of its own: drops cannot wait for async work).
pub(crate) struct Schema(pub String);

impl Schema {
    pub(crate) fn new() -> Schema {
        Schema(format!("hy_test_{}", uuid::Uuid::now_v7().simple()))
    }

    pub(crate) fn config(&self) -> PostgresConfig {
        PostgresConfig {
            url: Secret(test_url()),
            pool: 4,
            schema: self.0.clone(),
            connect_timeout: Dur(Duration::from_secs(5)),
            statement_timeout: Dur(Duration::from_secs(30)),
            ca_file: None,
            lease: Dur(Duration::from_secs(60)),
            heartbeat: Dur(Duration::from_secs(1)),
            node_timeout: Dur(Duration::from_secs(10)),
            node_id: None,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(c) = client().await {
                    let _ = c.batch_execute(&sql).await;
                }
            })
        })
        .join();
    }
}

/// A plain connection to the test database (for what the tests do behind the store's back).
pub(crate) async fn client() -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&test_url(), NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}
