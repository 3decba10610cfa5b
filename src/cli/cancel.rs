//! `hookyard cancel` and `hookyard purge`: clean the queue up, counting first. Without `--yes`
//! they only say how many deliveries they would change (a dry run). Like the other store
//! commands they work while the gateway runs; it sees a cancel within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use hookyard::ops;
use hookyard::store::{DeliveryRef, DeliverySelection, DestinationName, Store};

#[derive(clap::Args)]
pub struct CancelArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Delivery ids, or event ids (`evt_…`: all their pending deliveries).
    #[arg(conflicts_with_all = ["destination", "source", "since", "all"])]
    ids: Vec<String>,
    /// Every pending delivery to this destination (it need not be in the config any more).
    #[arg(long)]
    destination: Option<DestinationName>,
    /// Only deliveries of events from this source.
    #[arg(long)]
    source: Option<String>,
    /// Only deliveries created since: a duration back from now (`30m`, `2h`, `7d`) or unix ms.
    #[arg(long)]
    since: Option<String>,
    /// Every pending delivery.
    #[arg(long, conflicts_with_all = ["destination", "source", "since"])]
    all: bool,
    /// Why (kept with each cancelled delivery, with who cancelled it: `cli:$USER`).
    #[arg(long)]
    reason: Option<String>,
    /// Cancel them. Without it, only count them (a dry run).
    #[arg(long, conflicts_with = "dry_run")]
    yes: bool,
    /// Only count what would be cancelled (the default).
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
pub struct PurgeArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Only dead letters to this destination (it need not be in the config any more).
    #[arg(long)]
    destination: Option<DestinationName>,
    /// Only dead letters that died longer ago than this (`12h`, `7d`).
    #[arg(long)]
    older_than: Option<String>,
    /// Delete them. Without it, only count them (a dry run).
    #[arg(long, conflicts_with = "dry_run")]
    yes: bool,
    /// Only count what would be deleted (the default).
    #[arg(long)]
    dry_run: bool,
}

async fn open(config: &Path) -> anyhow::Result<Store> {
    let snap = hookyard::snapshot::build(config, &hookyard::snapshot::Plugins::from_env())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Store::connect(&snap.storage, hookyard::clock::Clock::System).await?)
}

/// `cli:<login name>`, or `operator` when the environment names no user.
fn actor() -> String {
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.trim().is_empty() => format!("cli:{}", user.trim()),
        _ => "operator".to_string(),
    }
}

pub async fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let store = open(&a.config).await?;
    let since_ms = a.since.as_deref().map(|s| ops::parse_since(s, SystemTime::now())).transpose()?;
    let selection = DeliverySelection {
        ids: a.ids.iter().map(|id| DeliveryRef::parse(id)).collect(),
        destination: a.destination,
        source: a.source,
        since_ms,
        all: a.all,
    };
    let by = actor();
    let done = ops::cancel(&store, selection, by.clone(), a.reason.clone(), !a.yes).await?;
    let n = done.result;
    let them = if n == 1 { "it" } else { "them" };
    if done.dry_run {
        println!("would cancel {}; add --yes to cancel {them}", count(n, "pending delivery", "pending deliveries"));
    } else {
        let why = a.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
        let by = match why {
            Some(reason) => format!("{by}: {reason}"),
            None => by,
        };
        println!("cancelled {} (by {by})", count(n, "delivery", "deliveries"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn purge(a: PurgeArgs) -> anyhow::Result<ExitCode> {
    let store = open(&a.config).await?;
    let done = ops::purge_dead(&store, a.destination, a.older_than.as_deref(), !a.yes).await?;
    let p = done.result;
    let dead = count(p.deliveries, "dead letter", "dead letters");
    if done.dry_run {
        println!("would purge {dead}; add --yes to delete {}", if p.deliveries == 1 { "it" } else { "them" });
    } else {
        println!("purged {dead} and {} left without deliveries", count(p.events, "event", "events"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `1 delivery`, `2 deliveries`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
