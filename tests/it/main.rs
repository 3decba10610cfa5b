//! The integration tests: one crate (so the harness compiles once), one module per area.
//!
//! Run one area with `cargo test --test it admin::`. `harness` has the fixtures (the gateway, a
//! recording sink, signing helpers written apart from the crate's own) and the admin API client.

mod harness;

mod admin;
mod app;
mod batching;
mod chains;
mod cli;
mod cluster;
mod console;
mod console_api;
mod crash;
mod delivery;
mod export;
mod ingress;
mod logs;
mod migrate;
mod ordering;
mod plugins;
mod postgres;
mod providers;
mod readme;
mod reload;
mod routing;
mod store_cli;
mod telemetry;
mod tls;
