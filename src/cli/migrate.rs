//! `hookyard migrate`: copies the SQLite store into the PostgreSQL database the config's
//! `storage.postgres` names (`store::migrate`), for a move from one to the other with the gateway
//! stopped (docs/operations.md, "Moving from SQLite to PostgreSQL").

use std::path::PathBuf;
use std::process::ExitCode;

use hookyard::store::migrate::{self, Copied, MigrateError};
use hookyard::store::postgres_display_url;

#[derive(clap::Args)]
pub struct Args {
    /// The config the gateway will run with on PostgreSQL: its `storage.postgres` is the target.
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// The SQLite store to copy. Default: the config's `storage.path` (relative to the config's
    /// directory), where the gateway kept it before `storage.postgres` was added.
    #[arg(long)]
    from: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let snap = hookyard::snapshot::build(&a.config, &hookyard::snapshot::Plugins::from_env())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(target) = &snap.storage.postgres else {
        anyhow::bail!(
            "{} has no storage.postgres: migrate copies the SQLite store into the PostgreSQL database it names; \
             add it first (docs/operations.md, \"Moving from SQLite to PostgreSQL\")",
            a.config.display()
        );
    };
    let defaulted = a.from.is_none();
    let from = a.from.unwrap_or_else(|| snap.storage.path.clone());
    let copied = match migrate::sqlite_to_postgres(&from, target).await {
        Ok(copied) => copied,
        Err(e @ MigrateError::NoSource(_)) if defaulted => {
            anyhow::bail!("{e} (the config's storage.path); name the file with --from")
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "copied {} from {} to {} (schema {})",
        summary(&copied),
        from.display(),
        postgres_display_url(&target.url.0),
        target.schema
    );
    Ok(ExitCode::SUCCESS)
}

/// `3 events, 5 deliveries (2 pending), 4 attempts, 1 cancellation, 0 paused destinations`.
fn summary(c: &Copied) -> String {
    fn n(count: u64, one: &str, many: &str) -> String {
        format!("{count} {}", if count == 1 { one } else { many })
    }
    format!(
        "{}, {} ({} pending), {}, {}, {}",
        n(c.events, "event", "events"),
        n(c.deliveries, "delivery", "deliveries"),
        c.pending,
        n(c.attempts, "attempt", "attempts"),
        n(c.cancellations, "cancellation", "cancellations"),
        n(c.paused, "paused destination", "paused destinations"),
    )
}
