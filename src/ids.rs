//! Identifiers that cross module boundaries (ingress, the store, the dispatcher, the admin API):
//! one type each, so an event id is never passed where a destination name belongs. The names are
//! `Arc<str>` as before (cloned per delivery without copying), and show, serialize and compare as
//! their text.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Arc<str>);

        /// As its text.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// From its text.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        /// Hashes and compares as its text, so maps keyed by it are looked up with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s.into())
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                $name(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }
    };
}

text_id! {
    /// `evt_` + a UUIDv7 in hex: unique, and sorts by arrival time.
    EventId
}

text_id! {
    /// A route's `name:` in the config.
    RouteName
}

text_id! {
    /// A key of `destinations:` in the config.
    DestinationName
}

text_id! {
    /// The outgoing `webhook-id` of a delivery: derived from (event, route, destination) and
    /// stored, so every retry, restart and replay carries the same one.
    MsgId
}

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

/// A delivery's number in the store (one per event, route and destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for DeliveryId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(DeliveryId)
    }
}

/// What an operator names to replay or cancel: one delivery (a number) or every delivery of an
/// event (anything else, `evt_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeliveryRef {
    Delivery(DeliveryId),
    Event(EventId),
}

impl DeliveryRef {
    /// A number is a delivery id, anything else an event id.
    pub fn parse(s: &str) -> DeliveryRef {
        match s.parse() {
            Ok(id) => DeliveryRef::Delivery(id),
            Err(_) => DeliveryRef::Event(EventId::from(s)),
        }
    }
}

impl From<&str> for DeliveryRef {
    fn from(s: &str) -> Self {
        DeliveryRef::parse(s)
    }
}

/// From its text, as [`DeliveryRef::parse`] reads it.
impl<'de> Deserialize<'de> for DeliveryRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| DeliveryRef::parse(&s))
    }
}

impl fmt::Display for DeliveryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryRef::Delivery(id) => fmt::Display::fmt(id, f),
            DeliveryRef::Event(id) => fmt::Display::fmt(id, f),
        }
    }
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

    #[test]
    fn ids_show_and_serialize_as_their_text() {
        let d = DestinationName::from("chat");
        assert_eq!(format!("[{d:<6}]"), "[chat  ]");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"chat\"");
        assert_eq!(serde_json::to_string(&DeliveryId(7)).unwrap(), "7");
        let map: std::collections::HashMap<DestinationName, u8> = [(d.clone(), 1)].into();
        assert_eq!(map.get("chat"), Some(&1));
    }

    #[test]
    fn delivery_refs_are_numbers_for_deliveries_and_anything_else_for_events() {
        assert_eq!(DeliveryRef::parse("12"), DeliveryRef::Delivery(DeliveryId(12)));
        assert_eq!(DeliveryRef::parse("evt_1"), DeliveryRef::Event(EventId::from("evt_1")));
        assert_eq!(DeliveryRef::parse("12a"), DeliveryRef::Event(EventId::from("12a")));
        let refs: Vec<DeliveryRef> = serde_json::from_str(r#"["7", "evt_2"]"#).unwrap();
        assert_eq!(refs, [DeliveryRef::Delivery(DeliveryId(7)), DeliveryRef::Event(EventId::from("evt_2"))]);
        assert!(serde_json::from_str::<Vec<DeliveryRef>>("[7]").is_err(), "ids are strings, as before");
        assert_eq!(refs.iter().map(ToString::to_string).collect::<Vec<_>>(), ["7", "evt_2"]);
        let d: DestinationName = serde_json::from_str(r#""chat""#).unwrap();
        assert_eq!(d, "chat");
    }
}
