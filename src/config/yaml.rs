//! YAML text → a JSON value plus a map of where every key and item came from.
//!
//! serde alone reports at most one error and forgets positions, but `hookyard check` must list every
//! problem with its line and column. So the loader walks the parser's event stream once, building a
//! `serde_json::Value` (which the typed structs are then deserialized from, piece by piece) and a
//! [`Positions`] index from key paths such as `routes[1].to[0]` to source locations. `${VAR}`
//! and `${file:PATH}` expansion happens here too, so a missing variable or an unreadable secret
//! file is reported where it was written.
//!
//! This module does no file IO (the caller reads `${file:…}` files) and knows nothing of the
//! schema.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// A location in the YAML text: 1-based line and column, as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl Mark {
    fn from_span(span: &Span) -> Mark {
        Mark { line: span.start.line(), col: span.start.col() + 1 }
    }
}

/// Where each key path was written. Keys of mappings point at the key, items of sequences at the item.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    pub(super) marks: HashMap<String, Mark>,
}

impl Positions {
    /// The location of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Mark> {
        let mut p = path;
        loop {
            if let Some(m) = self.marks.get(p) {
                return Some(*m);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A problem found while reading the YAML text, at a key path (empty for the document itself).
#[derive(Debug, Clone, PartialEq)]
pub struct YamlProblem {
    pub mark: Option<Mark>,
    pub path: String,
    pub message: String,
}

/// A parsed document: its value (a scalar whose `${VAR}` could not be expanded is `null`), where each
/// key was written, and the problems found on the way.
pub struct Document {
    pub value: Value,
    pub positions: Positions,
    pub problems: Vec<YamlProblem>,
}

/// Most alias uses (`*name`) in one document. Real configs share a few blocks (a retry policy, a
/// signing setup) a few times each; 10,000 leaves room for thousands of destinations.
pub const MAX_ALIASES: usize = 10_000;

/// How much all aliases together may copy, counted as 32 bytes per copied node plus the length
/// of each copied scalar's text (about what the copies take in memory). Without a bound, 1 KB of
/// nested aliases ("billion laughs") expands to billions of nodes; 8 MiB is thousands of times
/// what shared blocks in a real config copy.
pub const MAX_ALIAS_EXPANSION: usize = 8 << 20;

/// Deepest nesting of mappings and lists, aliases expanded. A config is a dozen levels deep at
/// most; the bound keeps the recursive walk here (and serde and `Drop` after it) off the end of
/// the stack.
pub const MAX_DEPTH: usize = 64;

/// What a node costs towards [`MAX_ALIAS_EXPANSION`] besides its text.
const NODE_COST: usize = 32;

/// Parses `text` and expands `${VAR}` / `${VAR:-default}` with `env`. A syntax error, or a
/// document over [`MAX_ALIASES`], [`MAX_ALIAS_EXPANSION`] or [`MAX_DEPTH`], stops the walk and is
/// the only error returned; missing variables and duplicate keys are all collected in
/// [`Document::problems`].
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Document, YamlProblem> {
    parse_with(text, env, &no_files)
}

/// Reads a `${file:PATH}` reference: the value, or the whole error message. The caller does the
/// IO (and its checks: size, emptiness); `PATH` is passed as written, variables expanded.
pub type FileLookup<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

fn no_files(path: &str) -> Result<String, String> {
    Err(format!("cannot read secret file {path}: files are not read here"))
}

/// [`parse`], with `${file:PATH}` read by `file`.
pub fn parse_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    file: &FileLookup<'_>,
) -> Result<Document, YamlProblem> {
    let mut events = Vec::new();
    for item in Parser::new_from_str(text) {
        match item {
            Ok((ev, span)) => events.push((ev, span)),
            Err(e) => {
                let m = e.marker();
                return Err(YamlProblem {
                    mark: Some(Mark { line: m.line(), col: m.col() + 1 }),
                    path: String::new(),
                    message: format!("invalid YAML: {}", e.info()),
                });
            }
        }
    }
    let mut b = Builder {
        events,
        pos: 0,
        positions: Positions::default(),
        problems: Vec::new(),
        anchors: HashMap::new(),
        aliases: 0,
        expanded: 0,
        fatal: None,
        env,
        file,
    };
    let value = b.document();
    if let Some(problem) = b.fatal {
        return Err(problem);
    }
    Ok(Document { value, positions: b.positions, problems: b.problems })
}

/// A built node: its value, its cost towards [`MAX_ALIAS_EXPANSION`] were it copied, and its
/// height (1 for a scalar).
struct Built {
    value: Value,
    cost: usize,
    height: usize,
}

struct Builder<'e, 'i> {
    events: Vec<(Event<'i>, Span)>,
    pos: usize,
    positions: Positions,
    problems: Vec<YamlProblem>,
    /// Anchored nodes by anchor id, with their cost and height.
    anchors: HashMap<usize, (Value, usize, usize)>,
    /// Alias uses so far, and what they have copied.
    aliases: usize,
    expanded: usize,
    /// A limit was crossed: the walk stops and this is the document's only error.
    fatal: Option<YamlProblem>,
    env: &'e dyn Fn(&str) -> Option<String>,
    file: &'e FileLookup<'e>,
}

impl Builder<'_, '_> {
    fn document(&mut self) -> Value {
        let mut value = Value::Null;
        let mut documents = 0;
        while self.pos < self.events.len() {
            match &self.events[self.pos].0 {
                Event::DocumentStart(_) => {
                    documents += 1;
                    self.pos += 1;
                    if documents > 1 {
                        let mark = Mark::from_span(&self.events[self.pos - 1].1);
                        self.problems.push(YamlProblem {
                            mark: Some(mark),
                            path: String::new(),
                            message: "only one YAML document is allowed".into(),
                        });
                        return value;
                    }
                    if !matches!(self.events.get(self.pos).map(|e| &e.0), Some(Event::DocumentEnd)) {
                        value = self.node(String::new(), 1).value;
                        if self.fatal.is_some() {
                            return Value::Null;
                        }
                    }
                }
                _ => self.pos += 1,
            }
        }
        value
    }

    /// Stops the walk with `message` at `path`.
    fn stop(&mut self, mark: Mark, path: String, message: String) -> Built {
        self.fatal.get_or_insert(YamlProblem { mark: Some(mark), path, message });
        Built { value: Value::Null, cost: 0, height: 1 }
    }

    /// Builds the node at `self.pos`, which sits at `depth` (the document's root is at 1).
    fn node(&mut self, path: String, depth: usize) -> Built {
        let (event, span) = self.events[self.pos].clone();
        let mark = Mark::from_span(&span);
        self.pos += 1;
        if depth > MAX_DEPTH {
            return self.stop(mark, path, format!("nested more than {MAX_DEPTH} levels deep"));
        }
        let built = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                let value = self.scalar(&text, plain, &path, mark);
                let built = Built { value, cost: NODE_COST + text.len(), height: 1 };
                (built, anchor)
            }
            Event::Alias(id) => {
                let Some((value, cost, height)) = self.anchors.get(&id) else {
                    return Built { value: Value::Null, cost: NODE_COST, height: 1 };
                };
                let (cost, height) = (*cost, *height);
                self.aliases += 1;
                self.expanded = self.expanded.saturating_add(cost);
                let limit = "(a limit against \"billion laughs\" files)";
                if self.aliases > MAX_ALIASES {
                    return self.stop(mark, path, format!("more than {MAX_ALIASES} aliases {limit}"));
                }
                if self.expanded > MAX_ALIAS_EXPANSION {
                    let mib = MAX_ALIAS_EXPANSION >> 20;
                    return self.stop(
                        mark,
                        path,
                        format!("aliases expand to more than {mib} MiB of copied values {limit}"),
                    );
                }
                if depth + height - 1 > MAX_DEPTH {
                    return self.stop(mark, path, format!("nested more than {MAX_DEPTH} levels deep"));
                }
                return Built { value: value.clone(), cost, height };
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let (mut cost, mut height) = (NODE_COST, 1);
                while self.fatal.is_none() && !matches!(self.events[self.pos].0, Event::SequenceEnd) {
                    let item_path = format!("{path}[{}]", items.len());
                    let item_mark = Mark::from_span(&self.events[self.pos].1);
                    self.positions.marks.insert(item_path.clone(), item_mark);
                    let item = self.node(item_path, depth + 1);
                    cost = cost.saturating_add(item.cost);
                    height = height.max(item.height + 1);
                    items.push(item.value);
                }
                self.pos += 1;
                (Built { value: Value::Array(items), cost, height }, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                let (mut cost, mut height) = (NODE_COST, 1);
                while self.fatal.is_none() && !matches!(self.events[self.pos].0, Event::MappingEnd) {
                    let key_mark = Mark::from_span(&self.events[self.pos].1);
                    let key = self.node(format!("{path}.<key>"), depth + 1);
                    let child_path =
                        |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                    let key_cost = key.cost;
                    let key = match key.value {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        other => other.to_string(),
                    };
                    let child = child_path(&key);
                    let value = self.node(child.clone(), depth + 1);
                    cost = cost.saturating_add(key_cost).saturating_add(value.cost);
                    height = height.max(value.height + 1);
                    if map.contains_key(&key) {
                        self.problems.push(YamlProblem {
                            mark: Some(key_mark),
                            path: child,
                            message: format!("duplicate key \"{key}\""),
                        });
                        continue;
                    }
                    self.positions.marks.insert(child, key_mark);
                    map.insert(key, value.value);
                }
                self.pos += 1;
                (Built { value: Value::Object(map), cost, height }, anchor)
            }
            _ => (Built { value: Value::Null, cost: NODE_COST, height: 1 }, 0),
        };
        let (built, anchor) = built;
        if anchor > 0 && self.fatal.is_none() {
            self.anchors.insert(anchor, (built.value.clone(), built.cost, built.height));
        }
        built
    }

    fn scalar(&mut self, text: &str, plain: bool, path: &str, mark: Mark) -> Value {
        if text.contains('$') {
            return match expand(text, self.env, self.file) {
                Ok(s) => Value::String(s),
                Err(message) => {
                    self.problems.push(YamlProblem { mark: Some(mark), path: path.to_string(), message });
                    Value::Null
                }
            };
        }
        if !plain {
            return Value::String(text.to_string());
        }
        resolve_plain(text)
    }
}

/// YAML 1.2 core schema for plain scalars: null, booleans, integers, floats, else a string.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Value::Number(u.into());
    }
    let looks_numeric = text.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'+' || b == b'.');
    if looks_numeric
        && !text.ends_with('.')
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` writes a literal `${`. A variable that is unset (or
/// set but empty, with no default) is an error: a secret must never silently become empty.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    expand(text, env, &no_files)
}

/// [`expand_env`], and `${file:PATH}` replaced by what `file` reads at `PATH` (which may itself
/// use `${VAR}`, e.g. `${file:${CREDENTIALS_DIRECTORY}/token}`; there is no default for a file).
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>, file: &FileLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        if let Some(inner) = body.strip_prefix("file:") {
            // the path ends at the `}` that closes this `${`, past any `${VAR}` inside it
            let mut depth = 0usize;
            let end = inner.char_indices().find_map(|(i, c)| match c {
                '{' if inner[..i].ends_with('$') => {
                    depth += 1;
                    None
                }
                '}' if depth == 0 => Some(i),
                '}' => {
                    depth -= 1;
                    None
                }
                _ => None,
            });
            let Some(end) = end else {
                return Err(format!("unclosed \"${{\" in \"{text}\""));
            };
            let path = expand(&inner[..end], env, &|_: &str| {
                Err("a ${file:…} path cannot itself be read from a file".to_string())
            })?;
            if path.is_empty() {
                return Err("${file:…} needs a path, e.g. ${file:/run/secrets/token}".to_string());
            }
            out.push_str(&file(&path)?);
            rest = &inner[end + 1..];
            continue;
        }
        let Some(end) = body.find('}') else {
            return Err(format!("unclosed \"${{\" in \"{text}\""));
        };
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name \"{name}\" in \"${{{expr}}}\""));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables() {
        let cases = [
            ("plain", Ok("plain")),
            ("${SECRET}", Ok("s3cr3t")),
            ("a-${SECRET}-b", Ok("a-s3cr3t-b")),
            ("${MISSING:-dflt}", Ok("dflt")),
            ("${EMPTY:-dflt}", Ok("dflt")),
            ("$${SECRET}", Ok("${SECRET}")),
            ("cost $5", Ok("cost $5")),
            (
                "${MISSING}",
                Err("environment variable MISSING is not set (write ${MISSING:-default} to give a default)"),
            ),
            ("${EMPTY}", Err("environment variable EMPTY is not set (write ${EMPTY:-default} to give a default)")),
            ("${SECRET", Err("unclosed \"${\" in \"${SECRET\"")),
            ("${A-B}", Err("invalid variable name \"A-B\" in \"${A-B}\"")),
        ];
        for (input, want) in cases {
            let got = expand_env(input, &env);
            assert_eq!(got.as_deref().map_err(|e| e.as_str()), want, "input {input:?}");
        }
    }

    #[test]
    fn expands_files() {
        let file = |path: &str| match path {
            "/run/secrets/token" => Ok("t0ken".to_string()),
            "/creds/s3cr3t/key" => Ok("from-creds".to_string()),
            other => Err(format!("cannot read secret file {other}: No such file or directory (os error 2)")),
        };
        let cases = [
            ("${file:/run/secrets/token}", Ok("t0ken")),
            ("Bearer ${file:/run/secrets/token}!", Ok("Bearer t0ken!")),
            ("${file:/creds/${SECRET}/key}", Ok("from-creds")),
            ("$${file:/run/secrets/token}", Ok("${file:/run/secrets/token}")),
            ("${file:/nope}", Err("cannot read secret file /nope: No such file or directory (os error 2)")),
            ("${file:/run/secrets/token", Err("unclosed \"${\" in \"${file:/run/secrets/token\"")),
            ("${file:}", Err("${file:…} needs a path, e.g. ${file:/run/secrets/token}")),
            ("${file:${file:/run/secrets/token}}", Err("a ${file:…} path cannot itself be read from a file")),
            (
                "${file:/x/${MISSING}}",
                Err("environment variable MISSING is not set (write ${MISSING:-default} to give a default)"),
            ),
        ];
        for (input, want) in cases {
            let got = expand(input, &env, &file);
            assert_eq!(got.as_deref().map_err(|e| e.as_str()), want, "input {input:?}");
        }
    }

    #[test]
    fn builds_values_and_positions() {
        let text = "server:\n  listen: \"127.0.0.1:0\"\n  max: 10\nroutes:\n  - name: a\n    to: [x, y]\n    flag: true\n    ratio: 0.5\n    nothing: ~\n    quoted: '12'\n";
        let doc = parse(text, &env).unwrap();
        let pos = doc.positions;
        assert_eq!(
            doc.value,
            json!({"server": {"listen": "127.0.0.1:0", "max": 10},
                   "routes": [{"name": "a", "to": ["x", "y"], "flag": true, "ratio": 0.5, "nothing": null, "quoted": "12"}]})
        );
        assert_eq!(pos.locate("server.max"), Some(Mark { line: 3, col: 3 }));
        assert_eq!(pos.locate("routes[0]"), Some(Mark { line: 5, col: 5 }));
        assert_eq!(pos.locate("routes[0].to[1]"), Some(Mark { line: 6, col: 13 }));
        assert_eq!(pos.locate("routes[0].to[7]"), Some(Mark { line: 6, col: 5 }));
        assert_eq!(pos.locate("routes[0].name.sub"), Some(Mark { line: 5, col: 5 }));
    }

    #[test]
    fn reports_every_missing_variable_and_duplicate_key() {
        let text = "a: ${ONE}\nb: ${TWO}\na: 3\n";
        let doc = parse(text, &env).unwrap();
        assert_eq!(doc.value, json!({"a": null, "b": null}));
        let problems = doc.problems;
        let got: Vec<_> = problems.iter().map(|p| (p.mark.unwrap().line, p.path.as_str())).collect();
        assert_eq!(got, [(1, "a"), (2, "b"), (3, "a")]);
        assert!(problems[2].message.contains("duplicate key"));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let Err(problem) = parse("a: [1, 2\nb: 3\n", &env) else { panic!("parsed") };
        assert!(problem.message.starts_with("invalid YAML"), "{}", problem.message);
        assert!(problem.mark.is_some());
    }

    #[test]
    fn anchors_and_aliases() {
        let doc = parse("base: &b {x: 1}\ncopy: *b\n", &env).unwrap();
        assert_eq!(doc.value, json!({"base": {"x": 1}, "copy": {"x": 1}}));
    }

    /// "Billion laughs": each level aliases the previous one nine times, so 1 KB of text would
    /// expand to 9^9 scalars. The walk stops at the alias that crosses the budget.
    #[test]
    fn an_alias_bomb_is_refused_where_it_crosses_the_budget() {
        let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (prev, name) in
            ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let items = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        assert!(text.len() < 1024, "{}", text.len());
        let Err(problem) = parse(&text, &env) else { panic!("an alias bomb parsed") };
        assert_eq!(
            (problem.mark, problem.path.as_str(), problem.message.as_str()),
            (
                Some(Mark { line: 6, col: 16 }),
                "f[2]",
                "aliases expand to more than 8 MiB of copied values (a limit against \"billion laughs\" files)"
            )
        );
    }

    /// One large scalar aliased many times is as costly as many small nodes.
    #[test]
    fn aliases_of_a_large_scalar_count_its_bytes() {
        let big = "x".repeat(100_000);
        let text = format!("big: &big {big}\ncopies: [{}]\n", vec!["*big"; 100].join(", "));
        let Err(problem) = parse(&text, &env) else { panic!("parsed") };
        assert_eq!(problem.path, "copies[83]");
        assert!(problem.message.starts_with("aliases expand to more than 8 MiB"), "{}", problem.message);
        // well under the budget: fine
        let text = format!("big: &big {big}\ncopies: [{}]\n", ["*big"; 10].join(", "));
        assert_eq!(parse(&text, &env).unwrap().value["copies"].as_array().unwrap().len(), 10);
    }

    #[test]
    fn too_many_aliases_are_refused() {
        let text = format!("one: &o 1\nmany: [{}]\n", vec!["*o"; MAX_ALIASES + 1].join(","));
        let Err(problem) = parse(&text, &env) else { panic!("parsed") };
        assert_eq!(problem.path, format!("many[{MAX_ALIASES}]"));
        assert_eq!(problem.message, "more than 10000 aliases (a limit against \"billion laughs\" files)");
    }

    /// Deep nesting would overflow the stack of the recursive walk (and of serde and `Drop`
    /// after it); aliases cannot be used to stack depth either.
    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let Err(problem) = parse(&deep, &env) else { panic!("parsed") };
        assert_eq!(problem.message, format!("nested more than {MAX_DEPTH} levels deep"));
        assert_eq!(problem.mark, Some(Mark { line: 1, col: MAX_DEPTH + 1 }));

        let half = MAX_DEPTH / 2 + 1;
        let nest = |inner: &str| format!("{}{inner}{}", "[".repeat(half), "]".repeat(half));
        let text = format!("a: &a {}\nb: &b {}\n", nest("1"), nest("*a"));
        let Err(problem) = parse(&text, &env) else { panic!("parsed") };
        assert_eq!(problem.message, format!("nested more than {MAX_DEPTH} levels deep"));
        assert_eq!(problem.mark.map(|m| m.line), Some(2));

        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(parse(&ok, &env).is_ok());
    }
}
