//! The values that cross the plugin API: the event a plugin gets ([`PluginEvent`], or
//! [`EventRef`] of borrowed parts) and what it decided ([`Outcome`], [`Output`]), as the host
//! hands them on once checked.

use bytes::Bytes;

/// One event as a plugin sees it (`event` in the WIT).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginEvent {
    pub id: String,
    /// The name of the source that received it.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A [`PluginEvent`] made of borrowed parts, for callers that already hold them (the request
/// path): a call lowers these straight into the plugin's memory, copying nothing on the way.
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub received_at_ms: u64,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a Bytes,
}

impl<'a> From<&'a PluginEvent> for EventRef<'a> {
    fn from(event: &'a PluginEvent) -> Self {
        EventRef {
            id: &event.id,
            source: &event.source,
            received_at_ms: event.received_at_ms,
            method: &event.method,
            path: &event.path,
            headers: &event.headers,
            body: &event.body,
        }
    }
}

/// What a plugin decided, after the host checked it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One or more outputs (never empty: a plugin that emits nothing is reported as a drop).
    Emit(Vec<Output>),
    /// Deliver nothing; the reason is the plugin's (a metric label), at most 128 bytes.
    Drop(String),
}

/// One request to send on.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `None`: the route's destinations. `Some`: a non-empty subset of them (checked).
    pub destinations: Option<Vec<String>>,
    /// Headers to add to, or replace on, the outgoing request (names and values checked; the
    /// plugin may not set the framing headers the gateway manages, such as Content-Length).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Output {
    /// What the output counts towards `max_output_bytes` and `max_total_output_bytes`: its body
    /// plus its header names and values.
    pub fn size(&self) -> usize {
        self.body.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}
