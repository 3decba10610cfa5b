//! The YAML shape of one `when:` condition, as written by the user.
//!
//! Serde only checks the shape (known keys, value types); which keys may go together is checked
//! by [`super::compile`], so that every mistake is reported with its key path at once.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One item of a route's `when:` list: either a subject (`header` or `path`) with exactly one
/// operator, or exactly one combinator (`any`, `all` or `not`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// Subject: a request header, by name (case-insensitive). If the header is sent several times,
    /// the condition holds when any of its values satisfies the operator.
    pub header: Option<String>,
    /// Subject: a JSONPath (RFC 9535, e.g. `$.pull_request.additions`) into the JSON body. If it
    /// selects several values, the condition holds when any of them satisfies the operator. It
    /// selects nothing when the body is not JSON.
    pub path: Option<String>,
    /// A test of its own: the event's type, as the source's provider preset finds it (GitHub's
    /// `X-GitHub-Event`, Stripe's `$.type`, …), is this name (`event_type: push`) or one of these
    /// (`event_type: [push, pull_request]`). Stands alone in its condition.
    pub event_type: Option<Value>,
    /// Operator: the subject equals this value. Numbers compare by value (`1` equals `1.0`); a
    /// header is compared with the value's text (`equals: 5` matches the header `5`).
    #[serde(default, deserialize_with = "present")]
    pub equals: Option<Value>,
    /// Operator: the subject selects a value that differs from this one. False when the subject
    /// selects nothing; use `not: { .., equals: .. }` for "absent or different".
    #[serde(default, deserialize_with = "present")]
    pub not_equals: Option<Value>,
    /// Operator: the subject equals one of these values (same equality as `equals`). Must not be
    /// empty.
    #[serde(rename = "in")]
    pub in_: Option<Vec<Value>>,
    /// Operator: the subject is a number greater than this. JSON strings are not converted; a
    /// header must parse as a number.
    pub gt: Option<f64>,
    /// Operator: the subject is a number greater than or equal to this.
    pub gte: Option<f64>,
    /// Operator: the subject is a number less than this.
    pub lt: Option<f64>,
    /// Operator: the subject is a number less than or equal to this.
    pub lte: Option<f64>,
    /// Operator: the subject is a string in which this regex (Rust `regex` syntax) finds a match.
    /// Not anchored: write `^...$` to match the whole value.
    pub matches: Option<String>,
    /// Operator: `true` holds when the subject selects something (a JSON `null` counts), `false`
    /// when it selects nothing. Cannot be combined with another operator.
    pub exists: Option<bool>,
    /// Operator: the subject is a string containing this string, or an array with an element
    /// equal to this value.
    #[serde(default, deserialize_with = "present")]
    pub contains: Option<Value>,
    /// Combinator: holds when at least one of these conditions holds. Must not be empty, and
    /// stands alone in its condition.
    pub any: Option<Vec<ConditionConfig>>,
    /// Combinator: holds when every one of these conditions holds. Must not be empty, and stands
    /// alone in its condition.
    pub all: Option<Vec<ConditionConfig>>,
    /// Combinator: holds when this condition does not hold, including when its subject is
    /// missing. Stands alone in its condition.
    pub not: Option<Box<ConditionConfig>>,
}

/// Deserializes a key that is present as `Some`, even when its value is `null`: `equals: null`
/// is a real comparison, not a missing operator. (Plain `Option<Value>` would turn it into `None`.)
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl ConditionConfig {
    /// The condition as written, on one line (YAML flow style, values as JSON), for saying which
    /// condition did not hold: `header: X-Kind, equals: "push"`, `any: [path: $.a, exists: true]`.
    pub fn written(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let text = |v: &Value| v.to_string();
        if let Some(h) = &self.header {
            parts.push(format!("header: {h}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path: {p}"));
        }
        if let Some(t) = &self.event_type {
            parts.push(format!("event_type: {}", text(t)));
        }
        let values: [(&str, Option<&Value>); 3] = [
            ("equals", self.equals.as_ref()),
            ("not_equals", self.not_equals.as_ref()),
            ("contains", self.contains.as_ref()),
        ];
        for (key, v) in values {
            if let Some(v) = v {
                parts.push(format!("{key}: {}", text(v)));
            }
        }
        if let Some(list) = &self.in_ {
            parts.push(format!("in: {}", text(&Value::Array(list.clone()))));
        }
        for (key, n) in [("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte)] {
            if let Some(n) = n {
                parts.push(format!("{key}: {n}"));
            }
        }
        if let Some(re) = &self.matches {
            parts.push(format!("matches: {}", text(&Value::String(re.clone()))));
        }
        if let Some(e) = self.exists {
            parts.push(format!("exists: {e}"));
        }
        let list =
            |l: &[ConditionConfig]| l.iter().map(|c| format!("{{{}}}", c.written())).collect::<Vec<_>>().join(", ");
        if let Some(l) = &self.any {
            parts.push(format!("any: [{}]", list(l)));
        }
        if let Some(l) = &self.all {
            parts.push(format!("all: [{}]", list(l)));
        }
        if let Some(n) = &self.not {
            parts.push(format!("not: {{{}}}", n.written()));
        }
        parts.join(", ")
    }
}
