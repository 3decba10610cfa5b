//! The event as received.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

pub use crate::ids::EventId;

/// A received webhook, verified or not.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub source: Arc<str>,
    pub received_at: SystemTime,
    pub headers: HeaderMap,
    pub body: Bytes,
}
