//! `hookyard events | event | replay | pause | resume`: the operations of `hookyard::ops` on the
//! store named by the config. They work while the gateway runs (SQLite WAL allows a second
//! process); the running gateway sees replays and pauses within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use hookyard::ops;
use hookyard::snapshot::Snapshot;
use hookyard::store::{
    DeliveryFilter, DeliveryId, DeliveryRef, DeliveryStatus, DestinationName, EventId, Inspect, Store,
};

#[derive(clap::Args)]
pub struct EventsArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// pending, delivered, failed, dead or cancelled.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    destination: Option<DestinationName>,
    #[arg(long)]
    source: Option<String>,
    /// Only deliveries created since: a duration back from now (`30m`, `2h`, `7d`) or unix ms.
    #[arg(long)]
    since: Option<String>,
    /// Rows per page (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Page cursor: only deliveries with a smaller id (the last id of the previous page).
    #[arg(long)]
    before: Option<i64>,
    /// JSON Lines (one JSON object per delivery, one per line) instead of a table. A pending
    /// delivery of a paused destination has `pause_reason`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct EventArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Event id (`evt_…`).
    id: EventId,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Re-send every dead letter (narrow with --destination and --since).
    #[arg(long, conflicts_with = "reroute")]
    dead: bool,
    /// Route (and transform) the events again with the current config instead of re-sending the
    /// deliveries as planned.
    #[arg(long)]
    reroute: bool,
    #[arg(long, requires = "dead")]
    destination: Option<DestinationName>,
    #[arg(long, requires = "dead")]
    since: Option<String>,
    /// Event ids (`evt_…`: all their deliveries) or delivery ids.
    ids: Vec<String>,
}

#[derive(clap::Args)]
pub struct SkipArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Delivery ids of held heads (`hookyard events --status dead` lists them, marked `held`).
    #[arg(required = true)]
    ids: Vec<i64>,
}

#[derive(clap::Args)]
pub struct PauseArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    destination: DestinationName,
    /// Why (shown by `hookyard events` and the admin API's destinations while paused; logged).
    /// Default "paused by an operator".
    #[arg(long)]
    reason: Option<String>,
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    destination: DestinationName,
    /// Why (logged, printed, and kept in the store in place of the pause's reason).
    #[arg(long)]
    reason: Option<String>,
}

async fn open(config: &Path) -> anyhow::Result<(Snapshot, Store)> {
    let snap = hookyard::snapshot::build(config, &hookyard::snapshot::Plugins::from_env())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::connect(&snap.storage, hookyard::clock::Clock::System).await?;
    Ok((snap, store))
}

fn check_destination(snap: &Snapshot, name: &str) -> anyhow::Result<()> {
    if snap.destination(name).is_none() {
        let names: Vec<&str> = snap.destinations.iter().map(|d| &*d.name).collect();
        anyhow::bail!("unknown destination {name:?}; destinations are: {}", names.join(", "));
    }
    Ok(())
}

pub async fn events(a: EventsArgs) -> anyhow::Result<ExitCode> {
    let (_, store) = open(&a.config).await?;
    let since_ms = a.since.as_deref().map(|s| ops::parse_since(s, SystemTime::now())).transpose()?;
    let filter = DeliveryFilter {
        status: a.status.as_deref().map(ops::parse_status).transpose()?,
        destination: a.destination.clone(),
        source: a.source,
        since_ms,
        until_ms: None,
        before_id: a.before.map(DeliveryId),
        limit: a.limit,
    };
    let rows = ops::list(&store, filter).await?;
    // held deliveries say why they are held
    let paused: Vec<(DestinationName, Option<String>)> = store
        .paused()
        .await?
        .into_iter()
        .filter(|(name, _)| a.destination.as_ref().is_none_or(|d| d == name))
        .collect();
    let reason_of = |r: &ops::DeliveryView| {
        let (_, reason) = paused.iter().find(|(name, _)| *name == r.destination)?;
        (r.status == DeliveryStatus::Pending).then(|| reason.clone().unwrap_or_default())
    };
    if a.json {
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            if let (Some(reason), Some(obj)) = (reason_of(r), v.as_object_mut()) {
                obj.insert("pause_reason".into(), reason.into());
            }
            println!("{v}");
        }
    } else {
        println!(
            "{:>8}  {:<36}  {:<10}  {:<20}  {:<14}  {:<9}  {:>3}  LAST ERROR",
            "DELIVERY", "EVENT", "SOURCE", "ROUTE", "DESTINATION", "STATUS", "TRY"
        );
        for r in &rows {
            // an ordered delivery waiting for its turn, and a head holding its key, say so
            let status = if r.waiting { "waiting".to_string() } else { r.status.to_string() };
            let held = match (&r.order_key, r.held) {
                (Some(key), true) => format!(" [holds key \"{key}\": `hookyard skip {}` or replay it]", r.id),
                _ => String::new(),
            };
            println!(
                "{:>8}  {:<36}  {:<10}  {:<20}  {:<14}  {:<9}  {:>3}  {}{held}",
                r.id,
                r.event_id,
                r.source,
                r.route,
                r.destination,
                status,
                r.attempts,
                r.last_error.as_deref().unwrap_or("")
            );
        }
        if let Some(last) = rows.last().filter(|_| rows.len() == a.limit.clamp(1, 1000)) {
            println!("(more: --before {})", last.id);
        }
        for (name, reason) in &paused {
            println!(
                "{name} is paused: {} (its deliveries wait; `hookyard resume {name}`)",
                reason.as_deref().unwrap_or("no reason given")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn event(a: EventArgs) -> anyhow::Result<ExitCode> {
    let (_, store) = open(&a.config).await?;
    let detail = ops::event(&store, &a.id).await?;
    println!("{}", serde_json::to_string_pretty(&detail)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let (snap, store) = open(&a.config).await?;
    let n = if a.dead {
        if !a.ids.is_empty() {
            anyhow::bail!("--dead replays by filter; give no ids with it");
        }
        if let Some(d) = &a.destination {
            check_destination(&snap, d)?;
        }
        let since = a.since.as_deref().map(|s| ops::parse_since(s, SystemTime::now())).transpose()?;
        ops::replay_dead(&store, a.destination, since).await?
    } else if a.reroute {
        ops::reroute(&store, &snap, a.ids.into_iter().map(EventId::from).collect()).await?
    } else {
        ops::replay(&store, a.ids.iter().map(|id| DeliveryRef::parse(id)).collect()).await?
    };
    println!("{n} deliver{} queued", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}

pub async fn skip(a: SkipArgs) -> anyhow::Result<ExitCode> {
    let (_, store) = open(&a.config).await?;
    let n = ops::skip(&store, a.ids.iter().map(|id| DeliveryId(*id)).collect()).await?;
    println!("{n} held key{} released: the next delivery of each is sent", if n == 1 { "" } else { "s" });
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(a: PauseArgs) -> anyhow::Result<ExitCode> {
    let (snap, store) = open(&a.config).await?;
    check_destination(&snap, &a.destination)?;
    ops::pause(&store, &a.destination, a.reason).await?;
    println!("{} paused: its deliveries wait in the store", a.destination);
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(a: ResumeArgs) -> anyhow::Result<ExitCode> {
    let (snap, store) = open(&a.config).await?;
    check_destination(&snap, &a.destination)?;
    ops::resume(&store, &a.destination, a.reason.clone()).await?;
    match a.reason {
        Some(reason) => println!("{} resumed: {reason}", a.destination),
        None => println!("{} resumed", a.destination),
    }
    Ok(ExitCode::SUCCESS)
}
