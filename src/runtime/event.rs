//! The event as received.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

/// `evt_` + a UUIDv7 in hex: unique, and sorts by arrival time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(pub Arc<str>);

impl EventId {
    pub fn generate() -> Self {
        EventId(format!("evt_{}", uuid::Uuid::now_v7().simple()).into())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A received webhook, verified or not.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub source: Arc<str>,
    pub received_at: SystemTime,
    pub headers: HeaderMap,
    pub body: Bytes,
}
