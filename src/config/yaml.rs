//! YAML text → a JSON value plus a map of where every key and item came from.
//!
//! serde alone reports at most one error and forgets positions, but `hookyard check` must list every
//! problem with its line and column. So the loader walks the parser's event stream once, building a
//! `serde_json::Value` (which the typed structs are then deserialized from, piece by piece) and a
//! [`Positions`] index from key paths such as `routes[1].to[0]` to source locations. `${VAR}`
//! expansion happens here too, so a missing variable is reported where it was written.
//!
//! This module does no file IO and knows nothing of the schema.

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
    marks: HashMap<String, Mark>,
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

/// Parses `text` and expands `${VAR}` / `${VAR:-default}` with `env`. A syntax error stops the walk
/// (the parser cannot recover) and is the only error returned; missing variables and duplicate keys
/// are all collected in [`Document::problems`].
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Document, YamlProblem> {
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
    let mut b =
        Builder { events, pos: 0, positions: Positions::default(), problems: Vec::new(), anchors: HashMap::new(), env };
    let value = b.document();
    Ok(Document { value, positions: b.positions, problems: b.problems })
}

struct Builder<'e, 'i> {
    events: Vec<(Event<'i>, Span)>,
    pos: usize,
    positions: Positions,
    problems: Vec<YamlProblem>,
    anchors: HashMap<usize, Value>,
    env: &'e dyn Fn(&str) -> Option<String>,
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
                        value = self.node(String::new());
                    }
                }
                _ => self.pos += 1,
            }
        }
        value
    }

    fn node(&mut self, path: String) -> Value {
        let (event, span) = self.events[self.pos].clone();
        let mark = Mark::from_span(&span);
        self.pos += 1;
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                let v = self.scalar(&text, plain, &path, mark);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                v
            }
            Event::Alias(id) => self.anchors.get(&id).cloned().unwrap_or(Value::Null),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                while !matches!(self.events[self.pos].0, Event::SequenceEnd) {
                    let item_path = format!("{path}[{}]", items.len());
                    let item_mark = Mark::from_span(&self.events[self.pos].1);
                    self.positions.marks.insert(item_path.clone(), item_mark);
                    items.push(self.node(item_path));
                }
                self.pos += 1;
                let v = Value::Array(items);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                v
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                while !matches!(self.events[self.pos].0, Event::MappingEnd) {
                    let key_mark = Mark::from_span(&self.events[self.pos].1);
                    let key = match self.node(format!("{path}.<key>")) {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        other => other.to_string(),
                    };
                    let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    let value = self.node(child.clone());
                    if map.contains_key(&key) {
                        self.problems.push(YamlProblem {
                            mark: Some(key_mark),
                            path: child,
                            message: format!("duplicate key \"{key}\""),
                        });
                        continue;
                    }
                    self.positions.marks.insert(child, key_mark);
                    map.insert(key, value);
                }
                self.pos += 1;
                let v = Value::Object(map);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                v
            }
            _ => Value::Null,
        }
    }

    fn scalar(&mut self, text: &str, plain: bool, path: &str, mark: Mark) -> Value {
        if text.contains('$') {
            return match expand_env(text, self.env) {
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
}
