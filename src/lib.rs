//! Hookyard: a webhook gateway. See `ARCHITECTURE.md` for the map.

pub mod activity;
pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod dry_run;
pub mod ids;
pub mod metrics;
pub mod ops;
pub mod plugin;
pub mod reload;
pub mod rules;
pub mod server;
pub mod sign;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod verify;
