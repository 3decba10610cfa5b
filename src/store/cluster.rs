//! What instances sharing one store know of each other (PostgreSQL: the `nodes` table and
//! LISTEN/NOTIFY): who is alive, and the operator actions every instance must apply at once. A
//! SQLite store is one process: its cluster is itself, and its signals reach only it.

use serde::Serialize;

/// This machine's host name (for instance ids and `status`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The id an instance takes when `storage.postgres.node_id` is not set: the host name and the
/// listen address, stable across restarts in place; `None` for port 0 (a random one is taken).
pub fn default_node_id(listen: std::net::SocketAddr) -> Option<String> {
    (listen.port() != 0).then(|| format!("{}-{listen}", host_name()))
}

/// What an instance records of itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUpdate {
    /// The ingress address, as bound.
    pub address: String,
    /// The admin API's address, as bound (`None`: disabled).
    pub admin: Option<String>,
    /// The config version in force (changes with a reload).
    pub config_version: String,
    /// The first heartbeat of this process: an instance restarted under the same id starts anew.
    pub first: bool,
}

/// An instance, as the store last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub host: String,
    pub address: String,
    pub admin: Option<String>,
    /// Hookyard's version.
    pub version: String,
    pub config_version: String,
    /// Unix ms (the database's clock).
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    /// Set by a clean shutdown.
    pub stopped_at_ms: Option<i64>,
    /// How long ago it was last seen, by the database's clock when read (ms).
    pub age_ms: i64,
}

/// An operator action, or a change, that every instance applies as soon as it hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A destination was paused (by an operator, or by a `410 Gone`).
    Paused(String),
    Resumed(String),
    /// Deliveries became due now (a replay, a re-route): look at the queue.
    Wake,
    /// Reload the config file, asked of the named instance (which has already done so).
    Reload {
        from: String,
    },
}

impl Signal {
    /// As a notification's payload.
    pub fn encode(&self) -> String {
        match self {
            Signal::Paused(d) => format!("paused\t{d}"),
            Signal::Resumed(d) => format!("resumed\t{d}"),
            Signal::Wake => "wake".to_string(),
            Signal::Reload { from } => format!("reload\t{from}"),
        }
    }

    /// From a notification's payload; `None` for one this version does not know (a newer
    /// instance's), which is ignored.
    pub fn decode(payload: &str) -> Option<Signal> {
        let (kind, arg) = payload.split_once('\t').unwrap_or((payload, ""));
        match kind {
            "paused" => Some(Signal::Paused(arg.to_string())),
            "resumed" => Some(Signal::Resumed(arg.to_string())),
            "wake" => Some(Signal::Wake),
            "reload" => Some(Signal::Reload { from: arg.to_string() }),
            _ => None,
        }
    }
}

/// How `status` judges an instance from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Live,
    /// Not heard from for `node_timeout`, and not stopped cleanly: killed, hung or cut off.
    Dead,
    /// Shut down cleanly.
    Stopped,
}

impl NodeRow {
    pub fn state(&self, node_timeout_ms: i64) -> NodeState {
        if self.stopped_at_ms.is_some() {
            NodeState::Stopped
        } else if self.age_ms > node_timeout_ms {
            NodeState::Dead
        } else {
            NodeState::Live
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_survive_their_payload() {
        for s in [
            Signal::Paused("billing api".into()),
            Signal::Resumed("x".into()),
            Signal::Wake,
            Signal::Reload { from: "host-1a2b".into() },
        ] {
            assert_eq!(Signal::decode(&s.encode()), Some(s));
        }
        assert_eq!(Signal::decode("compact\tnow"), None, "a newer instance's signal is ignored");
    }
}
