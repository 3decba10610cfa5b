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
    /// A UUIDv7 (time-ordered to the millisecond) with 74 random bits from a per-thread
    /// generator: ids must be unique, not secret, and a system call per event for
    /// cryptographic randomness showed in profiles.
    pub fn generate() -> Self {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let random = fastrand::u128(..).to_le_bytes();
        let id = uuid::Builder::from_unix_timestamp_millis(ms, random[..10].try_into().expect("10 bytes")).into_uuid();
        EventId(format!("evt_{}", id.simple()).into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_unique_time_ordered_uuid_v7() {
        let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
        let ids: Vec<EventId> = (0..20_000).map(|_| EventId::generate()).collect();
        let unique: std::collections::HashSet<&str> = ids.iter().map(|i| &*i.0).collect();
        assert_eq!(unique.len(), ids.len());
        let first = uuid::Uuid::parse_str(ids[0].0.strip_prefix("evt_").unwrap()).unwrap();
        assert_eq!(first.get_version_num(), 7);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = first.get_timestamp().unwrap().to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(ms >= before && ms < before + 60_000, "timestamp {ms} vs now {before}");
        assert_eq!(ids[0].0.len(), 4 + 32);
    }
}
