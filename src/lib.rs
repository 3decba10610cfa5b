//! Hookyard: a webhook gateway. See `ARCHITECTURE.md` for the map.

pub mod admin;
pub mod app;
pub mod config;
pub mod delivery;
pub mod metrics;
pub mod ops;
pub mod plugin;
pub mod reload;
pub mod rules;
pub mod runtime;
pub mod server;
pub mod sign;
pub mod store;
pub mod verify;
