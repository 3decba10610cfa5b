//! `hookyard events | event | export | replay | pause | resume`: the operations of `hookyard::ops`
//! on the store named by the config. They work while the gateway runs (SQLite WAL allows a second
//! process); the running gateway sees replays and pauses within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use hookyard::ops;
use hookyard::snapshot::Snapshot;
use hookyard::store::{
    DeliveryFilter, DeliveryId, DeliveryRef, DeliveryStatus, DestinationName, EventId, Inspect, RouteName, Store,
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
    /// Only the delivery sent with this `webhook-id` (a receiver's log names it).
    #[arg(long)]
    webhook_id: Option<String>,
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
pub struct ExportArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Only events of this source (one no longer in the config may still be in the store).
    #[arg(long)]
    source: Option<String>,
    /// Only events received at or after this time: a duration back from now (`2h`, `7d`), an
    /// RFC 3339 timestamp (`2026-12-04T10:00:00Z`) or unix milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// Only events received before this time (exclusive), written as --since's.
    #[arg(long)]
    until: Option<String>,
    /// Only events with a delivery of this route (one no longer in the config may still be in
    /// the store).
    #[arg(long)]
    route: Option<RouteName>,
    /// Each event's deliveries too (all of them, whichever --route selected the event): route,
    /// destination, webhook-id, status, attempts, last status and error.
    #[arg(long)]
    deliveries: bool,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Re-send every dead letter (narrow with --destination and --since).
    #[arg(long, conflicts_with = "reroute")]
    dead: bool,
    /// Route (and transform) the events again with the current config instead of re-sending the
    /// deliveries as planned: the events named by id, or every event of a time range (--since,
    /// --until), in accept order.
    #[arg(long)]
    reroute: bool,
    #[arg(long, requires = "dead")]
    destination: Option<DestinationName>,
    /// With --dead: dead letters since then. With --reroute: the range's start (events received
    /// at or after). A duration back from now (`2h`, `7d`), an RFC 3339 timestamp
    /// (`2026-12-04T10:00:00Z`) or unix milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// The range's end (events received before it; exclusive), written as --since's. Default:
    /// now, when the command starts.
    #[arg(long, requires = "reroute")]
    until: Option<String>,
    /// Only the range's events of this source.
    #[arg(long, requires = "reroute")]
    source: Option<String>,
    /// Match and plan only this route of the config (feed a new route from history; the other
    /// routes' destinations get nothing again).
    #[arg(long, requires = "reroute", conflicts_with = "to")]
    route: Option<RouteName>,
    /// Send each event of the range to this destination of the config, body and headers as
    /// stored: no routing, no transform.
    #[arg(long, requires = "reroute")]
    to: Option<DestinationName>,
    /// Events a second that plan deliveries (default 50; 0: no limit), so the downstream is not
    /// flooded.
    #[arg(long, requires = "reroute")]
    rate: Option<u32>,
    /// Count the range's events and the deliveries they would plan; plan nothing.
    #[arg(long, requires = "reroute")]
    dry_run: bool,
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
        msg_id: a.webhook_id,
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
            // a delivery waiting (for its turn, a batch, the step before it), and a head holding its
            // key, say so
            let status = if r.waiting { "waiting".to_string() } else { r.status.to_string() };
            let held = match (&r.order_key, r.held) {
                (Some(key), true) => format!(" [holds key \"{key}\": `hookyard skip {}` or replay it]", r.id),
                _ => String::new(),
            };
            // a later step of a chain names the delivery it follows
            let after = r.after.map(|p| format!(" [after {p}]")).unwrap_or_default();
            println!(
                "{:>8}  {:<36}  {:<10}  {:<20}  {:<14}  {:<9}  {:>3}  {}{held}{after}",
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

/// Writes NDJSON to stdout a page at a time (the page's buffer is the write buffer): memory holds
/// one page whatever the log's size. A reader that goes away (`| head`) ends it, successfully.
pub async fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let (snap, store) = open(&a.config).await?;
    let now = SystemTime::now();
    let time = |t: &Option<String>| t.as_deref().map(|t| ops::parse_since(t, now)).transpose();
    let query = ops::ExportQuery {
        since_ms: time(&a.since)?,
        until_ms: time(&a.until)?,
        source: a.source,
        route: a.route,
        deliveries: a.deliveries,
    };
    // history may hold what the config no longer names: exported all the same
    if let Some(source) = query.source.as_deref().filter(|s| snap.source_by_name(s).is_none()) {
        eprintln!("warning: source {source:?} is not in the current config; exporting what the store holds of it");
    }
    if let Some(route) = query.route.as_deref().filter(|r| !snap.routes.iter().any(|x| &*x.name == *r)) {
        eprintln!("warning: route {route:?} is not in the current config; exporting what the store holds of it");
    }
    let mut export = ops::Export::new(store, query, ops::page_size(snap.server.max_body_bytes))?;
    let mut page = Vec::new();
    let mut out = std::io::stdout().lock();
    loop {
        page.clear();
        if export.next_page(&mut page).await? == 0 {
            break;
        }
        match out.write_all(&page) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(anyhow::anyhow!("cannot write the export to stdout: {e}")),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write the export to stdout: {e}"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ranged = a.since.is_some()
        || a.until.is_some()
        || a.source.is_some()
        || a.route.is_some()
        || a.to.is_some()
        || a.rate.is_some()
        || a.dry_run;
    if a.reroute && ranged {
        return replay_range(a).await;
    }
    if a.since.is_some() && !a.dead {
        anyhow::bail!("--since goes with --dead or --reroute");
    }
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
        if a.ids.is_empty() {
            anyhow::bail!("--reroute needs event ids, or a time range: --since (and --until)");
        }
        ops::reroute(&store, &snap, a.ids.into_iter().map(EventId::from).collect()).await?
    } else {
        ops::replay(&store, a.ids.iter().map(|id| DeliveryRef::parse(id)).collect()).await?
    };
    println!("{n} deliver{} queued", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}

/// `replay --reroute --since …`: the range's summary on stdout at the end (the whole output of
/// a dry run), progress on stderr as it goes.
async fn replay_range(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !a.ids.is_empty() {
        anyhow::bail!("give either event ids or a time range (--since), not both");
    }
    let Some(since) = a.since.as_deref() else {
        anyhow::bail!("a time range needs --since (and --until, default now)");
    };
    let (snap, store) = open(&a.config).await?;
    let now = SystemTime::now();
    let range = ops::RerouteRange {
        since_ms: ops::parse_since(since, now)?,
        until_ms: match a.until.as_deref() {
            Some(until) => ops::parse_since(until, now)?,
            None => hookyard::store::to_ms(now),
        },
        source: a.source,
        route: a.route,
        to: a.to,
        rate: a.rate.unwrap_or(ops::DEFAULT_REROUTE_RATE),
        dry_run: a.dry_run,
    };
    range.check(&snap)?;
    if let Some(source) = range.source.as_deref().filter(|s| snap.source_by_name(s).is_none())
        && range.to.is_none()
    {
        eprintln!(
            "warning: source {source:?} is not in the current config: its events can only be skipped (--to sends them)"
        );
    }
    let mut reported = 0;
    let summary = ops::reroute_range(&store, &snap, range, |s| {
        if s.events >= reported + ops::REROUTE_PROGRESS_EVERY {
            reported = s.events;
            eprintln!("progress: {s}");
        }
    })
    .await?;
    println!("{summary}");
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
