//! Routing conditions: the `when:` list of a route, compiled once per config and evaluated per event.
//!
//! This module is pure. It does no IO and no logging, spawns nothing, and knows nothing of hyper,
//! tokio or config files: the config loader hands it [`ConditionConfig`]s, [`compile`] turns them
//! into a [`Rule`] (or returns every problem with its key path), and the server asks
//! [`Rule::matches`] about an [`EventView`]. JSONPaths and regexes are compiled in [`compile`],
//! never per event.
//!
//! # Conditions
//!
//! `when:` is a list, and every item must hold (an empty list matches every event). An item is
//! either a *test*, a subject and exactly one operator:
//!
//! ```yaml
//! - header: X-GitHub-Event     # a request header; the name is case-insensitive
//!   equals: push
//! - path: $.pull_request.additions   # a JSONPath (RFC 9535) into the JSON body
//!   gt: 100
//! ```
//!
//! or a *combinator*, alone in its item: `any: [..]` (at least one holds), `all: [..]` (every one
//! holds) or `not: {..}` (the condition does not hold). They nest freely.
//!
//! # What a subject selects
//!
//! - `header:` selects every value of that header: a header sent several times matches when any of
//!   its values satisfies the operator. Values are not split at commas. A value that is not valid
//!   UTF-8 never satisfies an operator (but the header still `exists`).
//! - `path:` selects the JSON values the JSONPath finds in the body. When it finds several
//!   (`$.labels[*].name`), the test holds when ANY of them satisfies the operator. A `null` in the
//!   body is a value: it exists, and `equals: null` matches it.
//! - A subject that selects nothing (the header is missing, the field is missing, the body is not
//!   JSON) makes every operator false, except `exists: false`, which is true. To say "absent or
//!   different", use `not: { path: .., equals: .. }`. In particular, `not_equals` is "selects some
//!   value that differs": it is false for a missing field, and true for a multi-value path as soon
//!   as one value differs.
//!
//! # Operators
//!
//! | operator | holds for a selected value that.. |
//! |---|---|
//! | `equals: v` | is equal to `v` |
//! | `not_equals: v` | is not equal to `v` |
//! | `in: [v, ..]` | is equal to one of the list (the list must not be empty) |
//! | `gt`, `gte`, `lt`, `lte: n` | is a number `>`, `>=`, `<`, `<=` `n` |
//! | `matches: re` | is a string in which the regex finds a match |
//! | `contains: v` | is a string containing the string `v`, or an array with an element equal to `v` |
//! | `exists: true` / `false` | the subject selects something / nothing |
//!
//! - **Equality** is JSON equality (deep for arrays and objects, no type coercion: `"5"` is not
//!   `5`), except that numbers compare by value: `1` equals `1.0`.
//! - **Headers are text.** `equals`, `not_equals`, `in` and `contains` compare a header's value with
//!   the text of the YAML scalar: `equals: 5` matches the header `5`, `equals: true` matches `true`.
//!   Comparing a header with `null`, a list or a map is a config error.
//! - **Numbers**: `gt`/`gte`/`lt`/`lte` need a JSON number; a JSON string such as `"150"` is not
//!   converted. A header qualifies when its value parses as a finite decimal number (`150`,
//!   `2.5`, `-1e3`). NaN never matches.
//! - **Regexes** use the Rust `regex` syntax and search anywhere in the value: anchor with `^`
//!   and `$` to match the whole value. They apply to strings only (every header value, but not
//!   JSON numbers or booleans). Matching time is linear in the input; there is no backtracking.
//!
//! # Cost
//!
//! Header tests allocate nothing. JSONPaths made of names, indexes and `[*]` only (the usual
//! `$.a.b[0].c[*].d`) are walked in place without allocating; other JSONPaths (filters, slices,
//! `..`, unions) are evaluated by `jsonpath-rust` on the query parsed at compile time, which
//! allocates per visited node. [`Rule::needs_body`] tells the caller whether to parse the body at
//! all.

mod compiler;
mod config;
mod eval;
mod path;
mod projection;

#[cfg(test)]
mod tests;

pub use compiler::{RuleError, compile};
pub use config::ConditionConfig;
pub use eval::{EventView, Rule};
pub use projection::Projection;

/// A JSONPath compiled once, for modules that pick one value out of a body (e.g. a source's
/// dedupe key), with the same parser and semantics as conditions.
#[derive(Debug, Clone)]
pub struct JsonPath(path::BodyPath);

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        path::BodyPath::parse(text).map(JsonPath)
    }

    /// Parses a path that can also rewrite what it selects: names, indexes and `[*]` only.
    pub fn parse_writable(text: &str) -> Result<JsonPath, String> {
        let p = path::BodyPath::parse(text)?;
        if !p.is_direct() {
            return Err(format!("`{text}`: only names, indexes and [*] can be redacted (no filters, slices or ..)"));
        }
        Ok(JsonPath(p))
    }

    /// Replaces every selected value with `with` (paths from [`JsonPath::parse_writable`]).
    pub fn replace_all(&self, body: &mut serde_json::Value, with: &serde_json::Value) {
        self.0.replace_all(body, with);
    }

    /// Adds what this path can read to `projection`.
    pub fn read_by(&self, projection: &mut Projection) {
        projection.add(&self.0);
    }

    /// The first value the path selects in `body`.
    pub fn first<'v>(&self, body: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        let mut found = None;
        self.0.any(body, |v| {
            found = Some(v);
            true
        });
        found
    }
}

#[cfg(test)]
mod json_path_tests {
    use super::JsonPath;
    use serde_json::json;

    #[test]
    fn redacts_selected_values() {
        let mut body =
            json!({"customer": {"email": "a@b.c", "name": "A"}, "items": [{"card": "4111"}, {"card": "5500"}]});
        for p in ["$.customer.email", "$.items[*].card", "$.missing.field"] {
            JsonPath::parse_writable(p).unwrap().replace_all(&mut body, &json!("[redacted]"));
        }
        assert_eq!(
            body,
            json!({"customer": {"email": "[redacted]", "name": "A"}, "items": [{"card": "[redacted]"}, {"card": "[redacted]"}]})
        );
        assert_eq!(
            JsonPath::parse_writable("$..email").unwrap_err(),
            "`$..email`: only names, indexes and [*] can be redacted (no filters, slices or ..)"
        );
    }
}
