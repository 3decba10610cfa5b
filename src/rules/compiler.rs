//! Validation and compilation of a `when:` list into a [`Rule`].
//!
//! Everything that can be wrong with a condition is found here, at config load, and reported all
//! at once: a rule that compiles cannot fail at evaluation.

use http::HeaderName;
use regex::Regex;
use serde_json::Value;

use super::config::ConditionConfig;
use super::eval::{Check, Comparison, Condition, Operator, Rule};
use super::path::BodyPath;

/// A problem in a `when:` list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RuleError {
    /// Where, relative to the `when:` list: `[0].path`, `[2].any[1].matches`, `[3].not.in`. The
    /// caller prefixes the route's location, e.g. `routes[1].when`.
    pub path: String,
    /// What is wrong, for the person editing the config.
    pub message: String,
}

/// Compiles a `when:` list (every condition must hold; an empty list always holds). Returns every
/// error found, in document order, not just the first.
pub fn compile(conditions: &[ConditionConfig]) -> Result<Rule, Vec<RuleError>> {
    let mut errors = Vec::new();
    let written = conditions.iter().map(ConditionConfig::written).collect();
    match compile_list(conditions, "", &mut errors) {
        Some(conditions) if errors.is_empty() => {
            Ok(Rule { needs_body: conditions.iter().any(Condition::reads_body), conditions, written })
        }
        _ => Err(errors),
    }
}

/// The operator keys, in the order they are reported.
const OPERATORS: &str = "`equals`, `not_equals`, `in`, `gt`, `gte`, `lt`, `lte`, `matches`, \
                         `contains` or `exists`";

fn error(errors: &mut Vec<RuleError>, path: impl Into<String>, message: impl Into<String>) {
    errors.push(RuleError { path: path.into(), message: message.into() });
}

fn key(at: &str, key: &str) -> String {
    format!("{at}.{key}")
}

/// Compiles every item (so that all errors are found); `None` if any failed.
fn compile_list(list: &[ConditionConfig], at: &str, errors: &mut Vec<RuleError>) -> Option<Box<[Condition]>> {
    let compiled: Vec<Option<Condition>> =
        list.iter().enumerate().map(|(i, c)| compile_one(c, &format!("{at}[{i}]"), errors)).collect();
    compiled.into_iter().collect()
}

fn compile_one(c: &ConditionConfig, at: &str, errors: &mut Vec<RuleError>) -> Option<Condition> {
    if let Some(names) = &c.event_type {
        return compile_event_type(c, names, at, errors);
    }
    let combinators: Vec<&str> = [("any", c.any.is_some()), ("all", c.all.is_some()), ("not", c.not.is_some())]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
    match combinators.first() {
        Some(first) => compile_combinator(c, first, &combinators[1..], at, errors),
        None => compile_test(c, at, errors),
    }
}

/// `event_type: name` or `event_type: [name, ..]`, alone in its condition.
fn compile_event_type(c: &ConditionConfig, names: &Value, at: &str, errors: &mut Vec<RuleError>) -> Option<Condition> {
    let before = errors.len();
    let combinators = [("any", c.any.is_some()), ("all", c.all.is_some()), ("not", c.not.is_some())];
    for stray in test_keys(c).chain(combinators.into_iter().filter_map(|(n, set)| set.then_some(n))) {
        error(
            errors,
            key(at, stray),
            format!(
                "`{stray}` cannot be combined with `event_type` in one condition; give it its own item in the list"
            ),
        );
    }
    let list: Option<Vec<String>> = match names {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => None,
    };
    let Some(list) = list else {
        error(errors, key(at, "event_type"), "expected an event type name or a non-empty list of names");
        return None;
    };
    if errors.len() > before { None } else { Some(Condition::EventType(list.into_boxed_slice())) }
}

/// A condition holding `any`, `all` or `not` (`first` is the first of them given).
fn compile_combinator(
    c: &ConditionConfig,
    first: &str,
    others: &[&str],
    at: &str,
    errors: &mut Vec<RuleError>,
) -> Option<Condition> {
    let before = errors.len();
    for other in others {
        error(
            errors,
            key(at, other),
            format!("`{other}` cannot be combined with `{first}` in one condition; nest one inside the other"),
        );
    }
    for stray in test_keys(c) {
        error(
            errors,
            key(at, stray),
            format!("`{stray}` cannot be combined with `{first}` in one condition; give it its own item in the list"),
        );
    }
    // Compile every branch, even a conflicting one, to report the errors inside it too.
    let any = c.any.as_deref().map(|list| compile_group(list, at, "any", errors).map(Condition::Any));
    let all = c.all.as_deref().map(|list| compile_group(list, at, "all", errors).map(Condition::All));
    let not = c
        .not
        .as_deref()
        .map(|inner| compile_one(inner, &key(at, "not"), errors).map(|inner| Condition::Not(Box::new(inner))));
    let condition = any.or(all).or(not).flatten();
    if errors.len() > before { None } else { condition }
}

fn compile_group(
    list: &[ConditionConfig],
    at: &str,
    name: &str,
    errors: &mut Vec<RuleError>,
) -> Option<Box<[Condition]>> {
    let at = key(at, name);
    if list.is_empty() {
        let outcome = if name == "any" { "never" } else { "always" };
        error(errors, at, format!("`{name}: []` is empty, so it {outcome} holds; give at least one condition"));
        return None;
    }
    compile_list(list, &at, errors)
}

/// The subject and operator keys present in `c`, in declaration order.
fn test_keys(c: &ConditionConfig) -> impl Iterator<Item = &'static str> {
    [("header", c.header.is_some()), ("path", c.path.is_some())]
        .into_iter()
        .chain(operator_keys(c))
        .filter_map(|(name, set)| set.then_some(name))
}

fn operator_keys(c: &ConditionConfig) -> [(&'static str, bool); 10] {
    [
        ("equals", c.equals.is_some()),
        ("not_equals", c.not_equals.is_some()),
        ("in", c.in_.is_some()),
        ("gt", c.gt.is_some()),
        ("gte", c.gte.is_some()),
        ("lt", c.lt.is_some()),
        ("lte", c.lte.is_some()),
        ("matches", c.matches.is_some()),
        ("contains", c.contains.is_some()),
        ("exists", c.exists.is_some()),
    ]
}

enum Subject {
    Header(HeaderName),
    Body(BodyPath),
}

/// A condition with a subject and an operator.
fn compile_test(c: &ConditionConfig, at: &str, errors: &mut Vec<RuleError>) -> Option<Condition> {
    let before = errors.len();
    let operators: Vec<&str> = operator_keys(c).into_iter().filter_map(|(name, set)| set.then_some(name)).collect();

    // Each subject is checked even when both are given, to report everything at once.
    let header = c.header.as_deref().map(|name| {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            error(
                errors,
                key(at, "header"),
                format!(
                    "invalid header name `{name}`: a header name is a token of letters, digits and !#$%&'*+-.^_`|~"
                ),
            );
        })
    });
    let path =
        c.path.as_deref().map(|path| BodyPath::parse(path).map_err(|message| error(errors, key(at, "path"), message)));
    let subject = match (header, path) {
        (Some(header), None) => header.ok().map(Subject::Header),
        (None, Some(path)) => path.ok().map(Subject::Body),
        (Some(_), Some(_)) => {
            error(
                errors,
                key(at, "path"),
                "`header` and `path` cannot both be given: a condition tests one subject (write two conditions)",
            );
            None
        }
        (None, None) if operators.is_empty() => {
            error(
                errors,
                at,
                "empty condition: give a subject (`header` or `path`) and one operator, or one of `any`, `all`, `not`",
            );
            None
        }
        (None, None) => {
            error(errors, at, "missing subject: add `header` or `path`");
            None
        }
    };

    match operators.as_slice() {
        [] if c.header.is_some() || c.path.is_some() => {
            error(errors, at, format!("no operator: add one of {OPERATORS}"));
        }
        [] | [_] => {}
        many if many.contains(&"exists") => {
            let others: Vec<String> =
                many.iter().filter(|name| **name != "exists").map(|name| format!("`{name}`")).collect();
            error(
                errors,
                key(at, "exists"),
                format!(
                    "`exists` cannot be combined with {}: every other operator already fails when the subject selects nothing",
                    others.join(", ")
                ),
            );
        }
        [first, rest @ ..] => {
            for other in rest {
                error(
                    errors,
                    key(at, other),
                    format!(
                        "only one operator per condition, and `{first}` is already given; put `{other}` in a condition of its own"
                    ),
                );
            }
        }
    }

    // Values are checked for every operator given, so that a second round of fixes is rarely needed.
    let is_header = match &subject {
        Some(Subject::Header(_)) => Some(true),
        Some(Subject::Body(_)) => Some(false),
        None => None,
    };
    let checks: Vec<Option<Check>> =
        operators.iter().map(|name| compile_operator(c, name, is_header, &key(at, name), errors)).collect();

    if errors.len() > before {
        return None;
    }
    let check = checks.into_iter().next()??;
    Some(match subject? {
        Subject::Header(name) => Condition::Header { name, check },
        Subject::Body(path) => Condition::Body { path, check },
    })
}

/// Compiles the operator `name` of `c`. `is_header` is `None` when the subject is invalid or
/// ambiguous: the value is then checked only as far as it can be without one.
fn compile_operator(
    c: &ConditionConfig,
    name: &str,
    is_header: Option<bool>,
    at: &str,
    errors: &mut Vec<RuleError>,
) -> Option<Check> {
    let expected = |value: &Value, at: &str, errors: &mut Vec<RuleError>| match is_header {
        Some(true) => header_text(value, at, errors),
        _ => Some(value.clone()),
    };
    let bound = |comparison: Comparison, bound: Option<f64>, errors: &mut Vec<RuleError>| {
        let bound = bound?;
        if bound.is_nan() {
            error(errors, at, "NaN cannot be compared with anything; give a number");
            return None;
        }
        Some(Operator::Compare(comparison, bound))
    };
    let operator = match name {
        "equals" => Operator::Equals(expected(c.equals.as_ref()?, at, errors)?),
        "not_equals" => Operator::NotEquals(expected(c.not_equals.as_ref()?, at, errors)?),
        "contains" => Operator::Contains(expected(c.contains.as_ref()?, at, errors)?),
        "in" => {
            let list = c.in_.as_deref()?;
            if list.is_empty() {
                error(errors, at, "`in: []` is empty, so the condition could never hold");
                return None;
            }
            let compiled: Vec<Option<Value>> =
                list.iter().enumerate().map(|(i, value)| expected(value, &format!("{at}[{i}]"), errors)).collect();
            Operator::In(compiled.into_iter().collect::<Option<_>>()?)
        }
        "gt" => bound(Comparison::Gt, c.gt, errors)?,
        "gte" => bound(Comparison::Gte, c.gte, errors)?,
        "lt" => bound(Comparison::Lt, c.lt, errors)?,
        "lte" => bound(Comparison::Lte, c.lte, errors)?,
        "matches" => {
            let pattern = c.matches.as_deref()?;
            match Regex::new(pattern) {
                Ok(regex) => Operator::Matches(regex),
                Err(e) => {
                    error(errors, at, format!("invalid regex `{pattern}`: {}", describe_regex(&e)));
                    return None;
                }
            }
        }
        "exists" => return c.exists.map(Check::Exists),
        _ => unreachable!("`{name}` is not an operator"),
    };
    Some(Check::Value(operator))
}

/// A header value is text, so a YAML scalar is compared by its text: `5` as `"5"`, `true` as
/// `"true"`. Anything else could never match.
fn header_text(value: &Value, at: &str, errors: &mut Vec<RuleError>) -> Option<Value> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => {
            let kind = match value {
                Value::Null => "null",
                Value::Array(_) => "a list",
                _ => "a map",
            };
            error(
                errors,
                at,
                format!("a header value is text: compare it with a string, number or boolean, not {kind}"),
            );
            return None;
        }
    };
    Some(Value::String(text))
}

/// `regex` renders syntax errors over several lines with a caret; keep the last line, which
/// says what is wrong.
fn describe_regex(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(rendered) => {
            rendered.lines().rev().find_map(|line| line.strip_prefix("error: ")).unwrap_or(rendered).to_owned()
        }
        other => other.to_string(),
    }
}
