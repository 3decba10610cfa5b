//! The compiled form of a `when:` list and its evaluation against one event.

use http::{HeaderMap, HeaderName};
use regex::Regex;
use serde_json::{Number, Value};

use super::path::BodyPath;

/// What a rule may look at in an event.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// The request headers as received.
    pub headers: &'a HeaderMap,
    /// The parsed JSON body; `None` when the body is not JSON or was not parsed (see
    /// [`Rule::needs_body`]). Every `path:` subject then selects nothing.
    pub body: Option<&'a Value>,
    /// The event's type as its source's provider preset finds it (`None`: the preset names none,
    /// or the event does not carry it).
    pub event_type: Option<&'a str>,
}

/// A compiled `when:` list: holds when every condition holds. Built by [`super::compile`];
/// immutable, `Send + Sync`, and cheap to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) conditions: Box<[Condition]>,
    pub(super) needs_body: bool,
    /// Each condition as written ([`super::ConditionConfig::written`]), for [`Rule::explain`].
    pub(super) written: Box<[String]>,
}

impl Rule {
    /// Whether the event satisfies every condition.
    pub fn matches(&self, event: &EventView<'_>) -> bool {
        self.conditions.iter().all(|c| c.holds(event))
    }

    /// Why the event does not satisfy the rule: the first condition that does not hold, as
    /// written, and what the event has instead (`when[1] (header: X-Kind, equals: "push"): the
    /// event has X-Kind: "issues"`); `None` when it matches. The same evaluation as
    /// [`Rule::matches`] (the console and `dry-run` explain what ingress does).
    pub fn explain(&self, event: &EventView<'_>) -> Option<String> {
        let (i, c) = self.conditions.iter().enumerate().find(|(_, c)| !c.holds(event))?;
        let written = self.written.get(i).map_or("", String::as_str);
        Some(format!("when[{i}] ({written}): {}", c.why_not(event)))
    }

    /// Whether any condition, however deeply nested, reads the JSON body. When false, the caller
    /// can skip parsing it and pass `body: None`.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether any condition tests `event_type`.
    pub fn reads_event_type(&self) -> bool {
        fn visit(c: &Condition) -> bool {
            match c {
                Condition::EventType(_) => true,
                Condition::Header { .. } | Condition::Body { .. } => false,
                Condition::Any(all) | Condition::All(all) => all.iter().any(visit),
                Condition::Not(inner) => visit(inner),
            }
        }
        self.conditions.iter().any(visit)
    }

    /// Adds what this rule's `path:` subjects can read of a body to `projection`.
    pub fn read_by(&self, projection: &mut super::Projection) {
        fn visit(c: &Condition, p: &mut super::Projection) {
            match c {
                Condition::Header { .. } | Condition::EventType(_) => {}
                Condition::Body { path, .. } => p.add(path),
                Condition::Any(all) | Condition::All(all) => all.iter().for_each(|c| visit(c, p)),
                Condition::Not(inner) => visit(inner, p),
            }
        }
        self.conditions.iter().for_each(|c| visit(c, projection));
    }
}

#[derive(Debug, Clone)]
pub(super) enum Condition {
    Header {
        name: HeaderName,
        check: Check,
    },
    Body {
        path: BodyPath,
        check: Check,
    },
    /// The event's type is one of these.
    EventType(Box<[String]>),
    Any(Box<[Condition]>),
    All(Box<[Condition]>),
    Not(Box<Condition>),
}

/// What a test asks of its subject.
#[derive(Debug, Clone)]
pub(super) enum Check {
    /// `exists: want`: whether the subject selects anything at all.
    Exists(bool),
    /// Any other operator: whether some selected value satisfies it.
    Value(Operator),
}

/// An operator applied to one selected value. For a header subject, the compiler has already
/// turned every expected value into a JSON string (the text of the YAML scalar).
#[derive(Debug, Clone)]
pub(super) enum Operator {
    Equals(Value),
    NotEquals(Value),
    In(Box<[Value]>),
    Compare(Comparison, f64),
    Matches(Regex),
    Contains(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Condition {
    pub(super) fn reads_body(&self) -> bool {
        match self {
            Condition::Header { .. } | Condition::EventType(_) => false,
            Condition::Body { .. } => true,
            Condition::Any(all) | Condition::All(all) => all.iter().any(Condition::reads_body),
            Condition::Not(inner) => inner.reads_body(),
        }
    }

    fn holds(&self, event: &EventView<'_>) -> bool {
        match self {
            Condition::Header { name, check } => match check {
                Check::Exists(want) => event.headers.contains_key(name) == *want,
                Check::Value(operator) => event
                    .headers
                    .get_all(name)
                    .iter()
                    // Not `HeaderValue::to_str`: that rejects every non-ASCII byte, even UTF-8.
                    .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
                    .any(|text| operator.holds_for_text(text)),
            },
            Condition::Body { path, check } => {
                let Some(body) = event.body else {
                    return matches!(check, Check::Exists(false));
                };
                match check {
                    Check::Exists(want) => path.any(body, |_| true) == *want,
                    Check::Value(operator) => path.any(body, |value| operator.holds_for(value)),
                }
            }
            Condition::EventType(names) => event.event_type.is_some_and(|t| names.iter().any(|n| n == t)),
            Condition::Any(any) => any.iter().any(|c| c.holds(event)),
            Condition::All(all) => all.iter().all(|c| c.holds(event)),
            Condition::Not(inner) => !inner.holds(event),
        }
    }
}

/// Values shown in an explanation: at most 3, each cut at 60 characters.
fn shown<'a>(values: impl Iterator<Item = String> + 'a) -> String {
    let mut out: Vec<String> = values
        .take(4)
        .map(|v| match v.char_indices().nth(60) {
            Some((cut, _)) => format!("{}…", &v[..cut]),
            None => v,
        })
        .collect();
    if out.len() == 4 {
        out[3] = "…".into();
    }
    out.join(", ")
}

impl Condition {
    /// What the event has where this condition (which does not hold) looks.
    fn why_not(&self, event: &EventView<'_>) -> String {
        match self {
            Condition::Header { name, .. } => {
                let values = event.headers.get_all(name);
                if values.iter().next().is_none() {
                    format!("the event has no {name} header")
                } else {
                    let texts = values
                        .iter()
                        .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()).to_string());
                    format!("the event has {name}: {}", shown(texts))
                }
            }
            Condition::Body { path, .. } => match event.body {
                None => "the body is not JSON".to_string(),
                Some(body) => {
                    let mut found = Vec::new();
                    path.any(body, |v| {
                        found.push(v.to_string());
                        found.len() > 3
                    });
                    if found.is_empty() {
                        "the path selects nothing in the body".to_string()
                    } else {
                        format!("the body has {} there", shown(found.into_iter()))
                    }
                }
            },
            Condition::EventType(_) => match event.event_type {
                Some(t) => format!("the event's type is {}", Value::String(t.to_string())),
                None => "the event has no type".to_string(),
            },
            Condition::Any(_) => "none of its conditions holds".to_string(),
            Condition::All(all) => match all.iter().enumerate().find(|(_, c)| !c.holds(event)) {
                Some((j, c)) => format!("its [{j}] does not hold: {}", c.why_not(event)),
                None => "it does not hold".to_string(),
            },
            Condition::Not(_) => "the condition inside it holds".to_string(),
        }
    }
}

impl Operator {
    /// For one JSON value selected in the body.
    fn holds_for(&self, value: &Value) -> bool {
        match self {
            Operator::Equals(expected) => json_eq(value, expected),
            Operator::NotEquals(expected) => !json_eq(value, expected),
            Operator::In(list) => list.iter().any(|expected| json_eq(value, expected)),
            Operator::Compare(comparison, bound) => value.as_f64().is_some_and(|n| comparison.holds(n, *bound)),
            Operator::Matches(regex) => value.as_str().is_some_and(|s| regex.is_match(s)),
            Operator::Contains(needle) => match value {
                Value::String(haystack) => needle.as_str().is_some_and(|n| haystack.contains(n)),
                Value::Array(elements) => elements.iter().any(|e| json_eq(e, needle)),
                _ => false,
            },
        }
    }

    /// For one header value. Expected values are JSON strings here (see [`Operator`]).
    fn holds_for_text(&self, text: &str) -> bool {
        match self {
            Operator::Equals(expected) => expected.as_str() == Some(text),
            Operator::NotEquals(expected) => expected.as_str() != Some(text),
            Operator::In(list) => list.iter().any(|expected| expected.as_str() == Some(text)),
            Operator::Compare(comparison, bound) => {
                text.parse::<f64>().is_ok_and(|n| n.is_finite() && comparison.holds(n, *bound))
            }
            Operator::Matches(regex) => regex.is_match(text),
            Operator::Contains(needle) => needle.as_str().is_some_and(|n| text.contains(n)),
        }
    }
}

impl Comparison {
    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Comparison::Gt => value > bound,
            Comparison::Gte => value >= bound,
            Comparison::Lt => value < bound,
            Comparison::Lte => value <= bound,
        }
    }
}

/// JSON equality, except that numbers compare by value (`1 == 1.0`), at any depth.
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(xs), Value::Array(ys)) => xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y)),
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

/// Integers compare exactly (an `f64` cannot hold every `i64`/`u64`); a float on either side
/// compares as `f64`.
fn number_eq(x: &Number, y: &Number) -> bool {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        x == y
    } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        x == y
    } else if x.is_f64() || y.is_f64() {
        x.as_f64() == y.as_f64()
    } else {
        false // a negative integer and one above `i64::MAX`
    }
}
