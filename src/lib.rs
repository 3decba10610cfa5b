//! Hookyard: a webhook gateway. See `ARCHITECTURE.md` for the map.

pub mod config;
pub mod rules;
pub mod sign;
pub mod verify;
