//! Dotted JSON paths, the small JSONPath subset plugins take in their config:
//! `a.b`, `items[0].id`, `c[*].email`, `[*].name` (every element of a top-level array),
//! `a.*` (every value of an object). A leading `$.` is accepted and ignored; `$` alone is the
//! whole value.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    /// `[*]` or `.*`: every element of an array, every value of an object.
    Each,
}

/// A parsed path; parse once, apply to many values.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
    text: String,
}

impl JsonPath {
    /// Parses `text`; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let bad = |why: &str| format!("bad path `{text}`: {why}");
        let mut rest = text.trim();
        rest = rest.strip_prefix('$').map(|r| r.strip_prefix('.').unwrap_or(r)).unwrap_or(rest);
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| bad("unclosed `[`"))?;
                let inner = r[..end].trim();
                steps.push(match inner {
                    "*" => Step::Each,
                    _ => Step::Index(inner.parse().map_err(|_| bad("index must be a number or *"))?),
                });
                rest = &r[end + 1..];
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                match &rest[..end] {
                    "" => return Err(bad("empty field name")),
                    "*" => steps.push(Step::Each),
                    key if key.contains(']') => return Err(bad("unexpected `]`")),
                    key => steps.push(Step::Key(key.to_string())),
                }
                rest = &rest[end..];
            }
            if let Some(r) = rest.strip_prefix('.') {
                if r.is_empty() {
                    return Err(bad("ends with `.`"));
                }
                rest = r;
            } else if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad("expected `.` or `[`"));
            }
        }
        if steps.is_empty() && text.trim() != "$" {
            return Err(bad("empty (write `$` for the whole value)"));
        }
        Ok(JsonPath { steps, text: text.to_string() })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first value the path selects.
    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        let mut out = None;
        select(value, &self.steps, &mut |v| {
            if out.is_none() {
                out = Some(v)
            }
        });
        out
    }

    /// Every value the path selects.
    pub fn select<'v>(&self, value: &'v Value) -> Vec<&'v Value> {
        let mut out = Vec::new();
        select(value, &self.steps, &mut |v| out.push(v));
        out
    }

    /// Calls `f` on every value the path selects; returns how many there were.
    pub fn for_each_mut(&self, value: &mut Value, f: &mut dyn FnMut(&mut Value)) -> usize {
        let mut n = 0;
        select_mut(value, &self.steps, &mut |v| {
            n += 1;
            f(v)
        });
        n
    }

    /// Removes every value the path selects (object fields and array elements); returns them.
    pub fn remove(&self, value: &mut Value) -> Vec<Value> {
        let Some((last, parent)) = self.steps.split_last() else { return Vec::new() };
        let mut removed = Vec::new();
        select_mut(value, parent, &mut |v| match (v, last) {
            (Value::Object(map), Step::Key(k)) => removed.extend(map.remove(k)),
            (Value::Object(map), Step::Each) => removed.extend(std::mem::take(map).into_iter().map(|(_, v)| v)),
            (Value::Array(items), Step::Index(i)) if *i < items.len() => removed.push(items.remove(*i)),
            (Value::Array(items), Step::Each) => removed.append(items),
            _ => {}
        });
        removed
    }

    /// Sets the value at a path made of field names only, creating objects on the way;
    /// fails if the path has `[..]` or `*` steps or crosses a non-object value.
    pub fn set(&self, root: &mut Value, new: Value) -> Result<(), String> {
        let mut cur = root;
        let Some((last, parent)) = self.steps.split_last() else {
            *cur = new;
            return Ok(());
        };
        for step in parent {
            let Step::Key(k) = step else { return Err(format!("cannot set `{}`: only field names", self.text)) };
            let Value::Object(map) = cur else { return Err(format!("cannot set `{}`: not an object", self.text)) };
            cur = map.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
        }
        match (cur, last) {
            (Value::Object(map), Step::Key(k)) => {
                map.insert(k.clone(), new);
                Ok(())
            }
            _ => Err(format!("cannot set `{}`: not an object field", self.text)),
        }
    }
}

fn select<'v>(value: &'v Value, steps: &[Step], f: &mut dyn FnMut(&'v Value)) {
    let Some((step, rest)) = steps.split_first() else { return f(value) };
    match (step, value) {
        (Step::Key(k), Value::Object(map)) => map.get(k).into_iter().for_each(|v| select(v, rest, f)),
        (Step::Index(i), Value::Array(items)) => items.get(*i).into_iter().for_each(|v| select(v, rest, f)),
        (Step::Each, Value::Array(items)) => items.iter().for_each(|v| select(v, rest, f)),
        (Step::Each, Value::Object(map)) => map.values().for_each(|v| select(v, rest, f)),
        _ => {}
    }
}

fn select_mut(value: &mut Value, steps: &[Step], f: &mut dyn FnMut(&mut Value)) {
    let Some((step, rest)) = steps.split_first() else { return f(value) };
    match (step, value) {
        (Step::Key(k), Value::Object(map)) => map.get_mut(k).into_iter().for_each(|v| select_mut(v, rest, f)),
        (Step::Index(i), Value::Array(items)) => items.get_mut(*i).into_iter().for_each(|v| select_mut(v, rest, f)),
        (Step::Each, Value::Array(items)) => items.iter_mut().for_each(|v| select_mut(v, rest, f)),
        (Step::Each, Value::Object(map)) => map.values_mut().for_each(|v| select_mut(v, rest, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_select() {
        let v = json!({"a": {"b": 1}, "c": [{"email": "x"}, {"email": "y"}], "n": [[1, 2]]});
        let cases: &[(&str, Value)] = &[
            ("a.b", json!([1])),
            ("$.a.b", json!([1])),
            ("c[*].email", json!(["x", "y"])),
            ("c[1].email", json!(["y"])),
            ("n[0][1]", json!([2])),
            ("a.*", json!([1])),
            ("missing.x", json!([])),
            ("$", json!([v.clone()])),
        ];
        for (path, want) in cases {
            let got: Vec<Value> = JsonPath::parse(path).unwrap().select(&v).into_iter().cloned().collect();
            assert_eq!(Value::Array(got), *want, "{path}");
        }
        for bad in ["", "a.", "a[", "a[x]", "a..b", "a]b"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_and_remove() {
        let mut v = json!({"a": {"b": 1}, "c": [1, 2]});
        JsonPath::parse("x.y").unwrap().set(&mut v, json!(true)).unwrap();
        assert_eq!(v["x"]["y"], json!(true));
        assert_eq!(JsonPath::parse("a.b").unwrap().remove(&mut v), vec![json!(1)]);
        assert_eq!(JsonPath::parse("c[0]").unwrap().remove(&mut v), vec![json!(1)]);
        assert_eq!(v, json!({"a": {}, "c": [2], "x": {"y": true}}));
    }
}
