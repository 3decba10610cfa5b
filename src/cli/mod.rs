//! Command-line front end: argument parsing (clap), logging set-up and the commands. `anyhow` lives
//! here and nowhere in the library.

mod cancel;
mod dry_run;
mod keys;
mod migrate;
mod ops;
mod plugin;
mod providers;
mod receive;
mod remote;
mod run;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "hookyard", version, about = "A webhook gateway: verify, route, re-sign and fan out webhooks")]
struct Cli {
    /// Log format: `text` for people, `json` for machines. Filter with RUST_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks with the routes in the config file.
    Run {
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
    },
    /// Validate the config file: exit 0 with a summary, or 1 listing every problem.
    Check {
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
    },
    /// Run one event through routing (no verification, nothing sent) and print, as JSON, which
    /// routes matched and the exact request each destination would get.
    DryRun(dry_run::Args),
    /// Sign a file the way the source's provider would and POST it to the running gateway.
    Send(send::Args),
    /// List the provider presets `verify.scheme` can name, with what each expects.
    Providers(providers::Args),
    /// Signing keys: `keys generate` makes an ed25519 pair for Standard Webhooks `v1a`.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// A local receiver that prints each incoming webhook and whether its Standard Webhooks
    /// signature verifies.
    Receive(receive::Args),
    /// List deliveries from the store, newest first.
    Events(ops::EventsArgs),
    /// Show one event: its deliveries and every attempt.
    Event(ops::EventArgs),
    /// Write stored events (headers as stored, exact body, time, id; optionally their
    /// deliveries) to stdout as NDJSON, in accept order, a page at a time.
    Export(ops::ExportArgs),
    /// Re-send deliveries as planned, all dead letters, or route events again (--reroute): by id,
    /// or a time range of history (--since) through today's routes or into one destination.
    Replay(ops::ReplayArgs),
    /// Let ordered keys held by a dead or failed head (`on_dead: block`) move on: the head stays
    /// as it is, the next delivery of its key is sent.
    Skip(ops::SkipArgs),
    /// Hold a destination's deliveries in the store.
    Pause(ops::PauseArgs),
    /// Let a paused destination's deliveries go again.
    Resume(ops::ResumeArgs),
    /// Cancel pending deliveries (by id, by filter or all of a destination): they stay visible as
    /// `cancelled`, with who and why, and can be replayed. Counts first; acts with --yes.
    Cancel(cancel::CancelArgs),
    /// Delete dead letters (of a destination, older than a time) and events left without
    /// deliveries. Counts first; acts with --yes.
    Purge(cancel::PurgeArgs),
    /// Copy the SQLite store into the PostgreSQL database of the config's storage.postgres, pending
    /// work included (stop the gateway first; the target schema must be empty).
    Migrate(migrate::Args),
    /// WebAssembly transform plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Ask the running instance to reload its config now (prints the result).
    Reload(remote::Args),
    /// Show the running instance's config version, load time and last reload error.
    Status(remote::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check { config } => return check(&config),
        Command::DryRun(args) => dry_run::run(args),
        Command::Send(args) => with_runtime(send::run(args)),
        Command::Providers(args) => providers::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Receive(args) => with_runtime(receive::run(args)),
        Command::Events(args) => with_runtime(ops::events(args)),
        Command::Event(args) => with_runtime(ops::event(args)),
        Command::Export(args) => with_runtime(ops::export(args)),
        Command::Replay(args) => with_runtime(ops::replay(args)),
        Command::Skip(args) => with_runtime(ops::skip(args)),
        Command::Pause(args) => with_runtime(ops::pause(args)),
        Command::Resume(args) => with_runtime(ops::resume(args)),
        Command::Cancel(args) => with_runtime(cancel::cancel(args)),
        Command::Purge(args) => with_runtime(cancel::purge(args)),
        Command::Migrate(args) => with_runtime(migrate::run(args)),
        Command::Plugin(cmd) => with_runtime(plugin::run(cmd)),
        Command::Reload(args) => with_runtime(remote::call(args, http::Method::POST, "/api/v1/reload")),
        Command::Status(args) => with_runtime(remote::call(args, http::Method::GET, "/api/v1/status")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match hookyard::snapshot::build(config, &hookyard::snapshot::Plugins::from_env()) {
        Ok(snapshot) => {
            println!("{}", snapshot.summary());
            print_warnings(&snapshot);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} problem{} found", errors.0.len(), if errors.0.len() == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

/// `warning: FILE:LINE:COL: KEY: message` on stderr for each of the snapshot's warnings.
pub(crate) fn print_warnings(snapshot: &hookyard::snapshot::Snapshot) {
    for w in &snapshot.warnings {
        eprintln!("warning: {w}");
    }
}

/// `HOOKYARD_WORKER_THREADS` sets the number of tokio worker threads (default: one per core).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Ok(n) = std::env::var("HOOKYARD_WORKER_THREADS") {
        let n: usize = n.parse().map_err(|_| anyhow::anyhow!("HOOKYARD_WORKER_THREADS must be a number, got {n:?}"))?;
        b.worker_threads(n.max(1));
    }
    Ok(b.build()?)
}

fn with_runtime(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(fut)
}

/// Logs to stderr, filtered by `RUST_LOG`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Prints the line tests and scripts wait for, and flushes it.
pub(crate) fn announce(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Parses `--header 'Name: value'`.
pub(crate) fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("expected 'Name: value', got {s:?}"))?;
    let name = http::HeaderName::try_from(k.trim()).map_err(|_| format!("invalid header name {:?}", k.trim()))?;
    let value = http::HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid header value for {name}"))?;
    Ok((name, value))
}
