//! A JSONPath parsed once, at compile time, and evaluated per event.
//!
//! `jsonpath-rust` evaluates a pre-parsed [`JpQuery`] with `js_path_process`, but it builds the
//! normalized path string of every node it visits. Most routing paths are plain navigation
//! (`$.pull_request.head.ref`, `$.commits[*].id`), so those are lowered to [`Step`]s and walked
//! in place without allocating; everything else keeps the library's evaluator.

use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::{Comparable, FilterAtom, FnArg, JpQuery, Segment, Selector, Test, TestFunction};
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

/// A compiled `path:` subject.
#[derive(Debug, Clone)]
pub(super) enum BodyPath {
    /// Names, indexes and wildcards only: walked in place.
    Direct(Box<[Step]>),
    /// Filters, slices, descendants or unions: evaluated by `jsonpath-rust`. The steps are the
    /// plain navigation it starts with, below which it may read anything; `None` when it may read
    /// anywhere in the document (a `$` inside a filter).
    General(Box<JpQuery>, Option<Box<[Step]>>),
}

/// One navigation step of a [`BodyPath::Direct`] path, with RFC 9535 semantics.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    /// `.name` / `['name']`: the member of an object.
    Name(Box<str>),
    /// `[i]`: an array element; negative counts from the end.
    Index(i64),
    /// `[*]` / `.*`: every element of an array or member of an object.
    Wildcard,
}

impl BodyPath {
    /// Parses a JSONPath; the error is a short, single-line description.
    pub(super) fn parse(path: &str) -> Result<Self, String> {
        let query = parse_json_path(path).map_err(|error| describe(path, &error))?;
        well_typed(&query.segments).map_err(|reason| format!("invalid JSONPath `{path}`: {reason}"))?;
        let steps: Option<Box<[Step]>> = query.segments.iter().map(lower).collect();
        Ok(match steps {
            Some(steps) => BodyPath::Direct(steps),
            None => {
                // what follows the leading navigation may read the whole subtree below it; a
                // `$` past the first character (an absolute query in a filter, or a string that
                // holds one: either way, be safe) may read anywhere
                let prefix = (!path.trim_start()[1..].contains('$'))
                    .then(|| query.segments.iter().map_while(lower).collect::<Box<[Step]>>());
                BodyPath::General(Box::new(query), prefix)
            }
        })
    }

    /// Whether `visit` returns true for at least one value the path selects in `body`. Stops at
    /// the first such value.
    pub(super) fn any<'v>(&self, body: &'v Value, mut visit: impl FnMut(&'v Value) -> bool) -> bool {
        match self {
            BodyPath::Direct(steps) => walk(steps, body, &mut visit),
            // An `Err` means the query produced a computed value rather than nodes of the body,
            // which a parsed query never does; treat it as selecting nothing.
            BodyPath::General(query, _) => {
                js_path_process(query, body).is_ok_and(|nodes| nodes.iter().any(|node| visit(node.val)))
            }
        }
    }
}

fn lower(segment: &Segment) -> Option<Step> {
    match segment {
        Segment::Selector(Selector::Name(name)) => Some(Step::Name(name.as_str().into())),
        Segment::Selector(Selector::Index(index)) => Some(Step::Index(*index)),
        Segment::Selector(Selector::Wildcard) => Some(Step::Wildcard),
        _ => None,
    }
}

fn walk<'v, F: FnMut(&'v Value) -> bool>(steps: &[Step], value: &'v Value, visit: &mut F) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return visit(value);
    };
    match (step, value) {
        (Step::Name(name), Value::Object(members)) => members.get(&**name).is_some_and(|v| walk(rest, v, visit)),
        (Step::Index(index), Value::Array(elements)) => element(elements, *index).is_some_and(|v| walk(rest, v, visit)),
        (Step::Wildcard, Value::Array(elements)) => elements.iter().any(|v| walk(rest, v, visit)),
        (Step::Wildcard, Value::Object(members)) => members.values().any(|v| walk(rest, v, visit)),
        _ => false,
    }
}

impl BodyPath {
    /// Replaces every value the path selects with `with`. Only plain navigation paths can do this;
    /// returns `false` for other paths (the caller rejects them at config time).
    pub(super) fn replace_all(&self, body: &mut Value, with: &Value) -> bool {
        match self {
            BodyPath::Direct(steps) => {
                walk_mut(steps, body, with);
                true
            }
            BodyPath::General(..) => false,
        }
    }

    pub(super) fn is_direct(&self) -> bool {
        matches!(self, BodyPath::Direct(_))
    }

    /// The part of a document the path can read: `(steps, true)` is everything below the node the
    /// steps lead to; `(_, false)` is the whole document.
    pub(super) fn reads(&self) -> Option<&[Step]> {
        match self {
            BodyPath::Direct(steps) => Some(steps),
            BodyPath::General(_, prefix) => prefix.as_deref(),
        }
    }
}

fn walk_mut(steps: &[Step], value: &mut Value, with: &Value) {
    let Some((step, rest)) = steps.split_first() else {
        *value = with.clone();
        return;
    };
    match (step, value) {
        (Step::Name(name), Value::Object(members)) => {
            if let Some(v) = members.get_mut(&**name) {
                walk_mut(rest, v, with);
            }
        }
        (Step::Index(index), Value::Array(elements)) => {
            let len = elements.len() as i64;
            let i = if *index < 0 { len + index } else { *index };
            if (0..len).contains(&i) {
                walk_mut(rest, &mut elements[i as usize], with);
            }
        }
        (Step::Wildcard, Value::Array(elements)) => elements.iter_mut().for_each(|v| walk_mut(rest, v, with)),
        (Step::Wildcard, Value::Object(members)) => members.values_mut().for_each(|v| walk_mut(rest, v, with)),
        _ => {}
    }
}

fn element(elements: &[Value], index: i64) -> Option<&Value> {
    let position = if index < 0 {
        elements.len().checked_sub(usize::try_from(index.unsigned_abs()).ok()?)?
    } else {
        usize::try_from(index).ok()?
    };
    elements.get(position)
}

// ---------------------------------------------------------------------------------------------
// RFC 9535 §2.4.3: well-typedness of function expressions. `jsonpath-rust` parses `length(@.*)`
// and evaluates it (on the first node); the RFC makes such a query invalid, so it is refused
// here, at `check`, with the reason.

/// The declared result type of a function (RFC 9535 §2.4.1).
#[derive(Clone, Copy, PartialEq)]
enum FnType {
    Value,
    Logical,
}

fn result_type(f: &TestFunction) -> FnType {
    match f {
        TestFunction::Length(_) | TestFunction::Count(_) | TestFunction::Value(_) => FnType::Value,
        // the library's own extensions (`in`, `nin`, …) are tests
        TestFunction::Match(..) | TestFunction::Search(..) | TestFunction::Custom(..) => FnType::Logical,
    }
}

fn fn_name(f: &TestFunction) -> &str {
    match f {
        TestFunction::Length(_) => "length",
        TestFunction::Count(_) => "count",
        TestFunction::Value(_) => "value",
        TestFunction::Match(..) => "match",
        TestFunction::Search(..) => "search",
        TestFunction::Custom(name, _) => name,
    }
}

/// Every filter in `segments` is well-typed; else the reason, citing the RFC.
fn well_typed(segments: &[Segment]) -> Result<(), String> {
    segments.iter().try_for_each(segment_well_typed)
}

fn segment_well_typed(segment: &Segment) -> Result<(), String> {
    match segment {
        Segment::Descendant(inner) => segment_well_typed(inner),
        Segment::Selector(selector) => selector_well_typed(selector),
        Segment::Selectors(selectors) => selectors.iter().try_for_each(selector_well_typed),
    }
}

fn selector_well_typed(selector: &Selector) -> Result<(), String> {
    match selector {
        Selector::Filter(filter) => filter_well_typed(filter),
        _ => Ok(()),
    }
}

fn filter_well_typed(filter: &jsonpath_rust::parser::model::Filter) -> Result<(), String> {
    use jsonpath_rust::parser::model::Filter;
    match filter {
        Filter::Or(items) | Filter::And(items) => items.iter().try_for_each(filter_well_typed),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => filter_well_typed(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => match &**expr {
            // a test-expr: a function there must return a logical value (or nodes)
            Test::Function(f) if result_type(f) == FnType::Value => {
                let name = fn_name(f);
                Err(format!(
                    "{name}() returns a value, which is no test by itself (RFC 9535 §2.4.3): compare it, as in `{name}(…) > 0`"
                ))
            }
            test => test_well_typed(test),
        },
        Filter::Atom(FilterAtom::Comparison(cmp)) => {
            let (left, right) = cmp.vals();
            [left, right].into_iter().try_for_each(|c| match c {
                // the library already refuses non-singular queries and logical functions here
                Comparable::Function(f) => function_well_typed(f),
                Comparable::Literal(_) | Comparable::SingularQuery(_) => Ok(()),
            })
        }
    }
}

fn test_well_typed(test: &Test) -> Result<(), String> {
    match test {
        Test::RelQuery(segments) => well_typed(segments),
        Test::AbsQuery(query) => well_typed(&query.segments),
        Test::Function(f) => function_well_typed(f),
    }
}

fn function_well_typed(f: &TestFunction) -> Result<(), String> {
    let name = fn_name(f);
    match f {
        TestFunction::Length(arg) => value_argument(name, arg),
        TestFunction::Match(a, b) | TestFunction::Search(a, b) => {
            value_argument(name, a)?;
            value_argument(name, b)
        }
        TestFunction::Count(arg) | TestFunction::Value(arg) => nodes_argument(name, arg),
        TestFunction::Custom(_, args) => args.iter().try_for_each(|a| match a {
            FnArg::Literal(_) => Ok(()),
            FnArg::Test(test) => test_well_typed(test),
            FnArg::Filter(filter) => filter_well_typed(filter),
        }),
    }
}

/// A `ValueType` parameter: a literal, a singular query or a function returning a value.
fn value_argument(name: &str, arg: &FnArg) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "{name}() takes a value (RFC 9535 §2.4.3: a ValueType parameter): give a literal, a singular \
             query (names and indexes only, such as `@.a[0]`) or a function that returns a value; {why}"
        ))
    };
    match arg {
        FnArg::Literal(_) => Ok(()),
        FnArg::Test(test) => match &**test {
            Test::RelQuery(segments) if !singular(segments) => {
                refuse(format!("`{}` may select several nodes", render('@', segments)))
            }
            Test::AbsQuery(query) if !singular(&query.segments) => {
                refuse(format!("`{}` may select several nodes", render('$', &query.segments)))
            }
            Test::Function(g) if result_type(g) == FnType::Logical => {
                refuse(format!("{}() returns a logical value", fn_name(g)))
            }
            test => test_well_typed(test),
        },
        FnArg::Filter(_) => refuse("a logical expression is not one".into()),
    }
}

/// A `NodesType` parameter: a query (RFC 9535 defines no function that returns nodes).
fn nodes_argument(name: &str, arg: &FnArg) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!("{name}() takes a query (RFC 9535 §2.4.3: a NodesType parameter), such as `@.a[*]`; {why}"))
    };
    match arg {
        FnArg::Test(test) => match &**test {
            Test::Function(g) => refuse(format!(
                "{}() returns {}",
                fn_name(g),
                if result_type(g) == FnType::Value { "a value" } else { "a logical value" }
            )),
            test => test_well_typed(test),
        },
        FnArg::Literal(_) => refuse("a literal is not one".into()),
        FnArg::Filter(_) => refuse("a logical expression is not one".into()),
    }
}

/// A singular query (RFC 9535 §2.3.5.1): names and indexes only, so at most one node.
fn singular(segments: &[Segment]) -> bool {
    segments.iter().all(|s| match s {
        Segment::Selector(Selector::Name(_) | Selector::Index(_)) => true,
        Segment::Selectors(v) => matches!(v.as_slice(), [Selector::Name(_) | Selector::Index(_)]),
        _ => false,
    })
}

/// A query as text for a message (the library's `Display` drops brackets and quotes).
fn render(root: char, segments: &[Segment]) -> String {
    fn selector(out: &mut String, s: &Selector, dotted: bool) {
        match s {
            Selector::Name(n) if dotted && n.chars().all(|c| c.is_alphanumeric() || c == '_') && !n.is_empty() => {
                out.push('.');
                out.push_str(n);
            }
            _ => {
                out.push('[');
                inner(out, s);
                out.push(']');
            }
        }
    }
    fn inner(out: &mut String, s: &Selector) {
        match s {
            Selector::Name(n) => out.push_str(&format!("'{}'", n.replace('\'', "\\'"))),
            Selector::Wildcard => out.push('*'),
            Selector::Index(i) => out.push_str(&i.to_string()),
            Selector::Slice(a, b, step) => {
                let part = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
                out.push_str(&format!("{}:{}", part(a), part(b)));
                if let Some(step) = step {
                    out.push_str(&format!(":{step}"));
                }
            }
            Selector::Filter(_) => out.push_str("?…"),
        }
    }
    let mut out = String::from(root);
    for segment in segments {
        match segment {
            Segment::Selector(s) => selector(&mut out, s, true),
            Segment::Selectors(v) => {
                out.push('[');
                for (i, s) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    inner(&mut out, s);
                }
                out.push(']');
            }
            Segment::Descendant(d) => {
                out.push_str("..");
                match &**d {
                    Segment::Selector(Selector::Name(n)) => out.push_str(n),
                    other => out.push_str(render(' ', std::slice::from_ref(other)).trim_start()),
                }
            }
        }
    }
    out
}

/// `jsonpath-rust` reports syntax errors with pest's multi-line, caret-drawing format; a config
/// error wants one line: the column and what was expected.
fn describe(path: &str, error: &JsonPathError) -> String {
    let detail = match error {
        JsonPathError::PestError(pest) => {
            let rendered = pest.to_string();
            let column = rendered
                .lines()
                .find_map(|line| line.trim_start().strip_prefix("--> "))
                .and_then(|position| position.rsplit(':').next())
                .map(str::to_owned);
            match column {
                Some(column) => format!("at column {column}: {}", pest.variant.message()),
                None => pest.variant.message().into_owned(),
            }
        }
        other => other.to_string(),
    };
    let hint = if path.trim_start().starts_with('$') { "" } else { " (a JSONPath starts with `$`, as in `$.action`)" };
    format!("invalid JSONPath `{path}`: {detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every value the path selects, in order.
    fn select<'v>(path: &BodyPath, body: &'v Value) -> Vec<&'v Value> {
        let mut found = Vec::new();
        path.any(body, |v| {
            found.push(v);
            false
        });
        found
    }

    #[test]
    fn plain_navigation_is_walked_in_place() {
        let cases: &[(&str, &[Step])] = &[
            ("$", &[]),
            ("$.a", &[Step::Name("a".into())]),
            ("$['a b']", &[Step::Name("a b".into())]),
            ("$.a[0]", &[Step::Name("a".into()), Step::Index(0)]),
            ("$.a[-1].b", &[Step::Name("a".into()), Step::Index(-1), Step::Name("b".into())]),
            ("$.a[*].b", &[Step::Name("a".into()), Step::Wildcard, Step::Name("b".into())]),
            ("$.*", &[Step::Wildcard]),
        ];
        for (source, expected) in cases {
            match BodyPath::parse(source).unwrap() {
                BodyPath::Direct(steps) => assert_eq!(&*steps, *expected, "{source}"),
                other => panic!("{source}: expected a direct path, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_paths_use_the_library() {
        for source in ["$..a", "$.a[1:3]", "$['a','b']", "$.a[?@.b == 1]", "$.a[0,1]"] {
            assert!(matches!(BodyPath::parse(source).unwrap(), BodyPath::General(..)), "{source}");
        }
    }

    /// The in-place walk must select exactly what `jsonpath-rust` selects, in the same order.
    #[test]
    fn direct_walk_agrees_with_the_library() {
        let bodies = [
            json!({"a": [{"b": 1}, {"b": [2, 3]}, {"c": 4}, 5], "x": {"y": {"z": null}}, "e": []}),
            json!([[1, 2], {"k": "v", "j": "w"}, "s", null]),
            json!("scalar"),
            json!({}),
        ];
        let paths = [
            "$",
            "$.a",
            "$.a[0]",
            "$.a[3]",
            "$.a[4]",
            "$.a[-1]",
            "$.a[-4]",
            "$.a[-5]",
            "$.a[*]",
            "$.a[*].b",
            "$.a[*].b[*]",
            "$.a[*].b[1]",
            "$.x.y.z",
            "$.x.*.z",
            "$.x.y.z.w",
            "$.e[*]",
            "$.e[0]",
            "$[0]",
            "$[1].k",
            "$[*][*]",
            "$.*",
            "$.missing",
            "$[9007199254740991]",
            "$[-9007199254740991]",
        ];
        for body in &bodies {
            for source in paths {
                let parsed = parse_json_path(source).unwrap();
                let library: Vec<&Value> =
                    js_path_process(&parsed, body).unwrap().into_iter().map(|node| node.val).collect();
                let path = BodyPath::parse(source).unwrap();
                assert!(matches!(path, BodyPath::Direct(_)), "{source}");
                assert_eq!(select(&path, body), library, "{source} on {body}");
            }
        }
    }

    #[test]
    fn any_stops_at_the_first_hit() {
        let body = json!({"a": [1, 2, 3]});
        let mut seen = 0;
        assert!(BodyPath::parse("$.a[*]").unwrap().any(&body, |v| {
            seen += 1;
            v == &json!(2)
        }));
        assert_eq!(seen, 2);
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let cases = [
            ("$.a[", "invalid JSONPath `$.a[`: at column 5: expected selector"),
            (
                "a.b",
                "invalid JSONPath `a.b`: at column 1: expected jp_query \
                 (a JSONPath starts with `$`, as in `$.action`)",
            ),
            ("$.a[?@.x ==]", "invalid JSONPath `$.a[?@.x ==]`: at column 12: expected comparable"),
        ];
        for (source, expected) in cases {
            assert_eq!(BodyPath::parse(source).unwrap_err(), expected);
        }
    }
}
