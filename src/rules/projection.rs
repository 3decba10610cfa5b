//! Parsing only what the conditions read.
//!
//! A route's conditions read a few values of a body (`$.ref`, `$.pull_request.base.ref`), but a
//! full `serde_json::Value` of a large body costs many times its size: every number, string,
//! array and object is a node of its own (a 5 MB array of small objects became ~90 MB). A
//! [`Projection`] is the union of the parts of a document that a source's paths can read; the body
//! is parsed against it, keeping those parts and skipping the rest without building it (serde's
//! `IgnoredAny`). Every path then selects exactly what it would in the whole document: a path
//! keeps the whole subtree below the node its navigation leads to (so an operator sees the whole
//! value), `[*]` and indexes keep every element (so positions are unchanged), and a path that may
//! read anywhere (a `$` inside a filter) keeps the whole document.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::path::{BodyPath, Step};

/// What of a document some path can read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection(Node);

#[derive(Debug, Clone, Default, PartialEq)]
enum Node {
    /// Nothing below here is read.
    #[default]
    Skip,
    /// Everything below here may be read.
    Full,
    /// Only these members of an object; `each` applies to every member and element (from `[*]`
    /// or an index), on top of `names`.
    Part { names: HashMap<Box<str>, Node>, each: Box<Node> },
}

impl Projection {
    /// Adds what `path` can read.
    pub(super) fn add(&mut self, path: &BodyPath) {
        match path.reads() {
            Some(steps) => self.0.add(steps),
            None => self.0 = Node::Full,
        }
        self.0.settle();
    }

    /// Whether no path reads the body (it need not be parsed at all).
    pub fn is_empty(&self) -> bool {
        self.0 == Node::Skip
    }

    /// Parses `body`, keeping only what the paths can read; `None` if it is not JSON.
    pub fn parse(&self, body: &[u8]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let value = match &self.0 {
            Node::Full => <Value as serde::Deserialize>::deserialize(&mut de),
            node => node.deserialize(&mut de),
        }
        .ok()?;
        de.end().ok()?;
        Some(value)
    }
}

impl Node {
    fn add(&mut self, steps: &[Step]) {
        if *self == Node::Full {
            return;
        }
        let Some((step, rest)) = steps.split_first() else {
            *self = Node::Full;
            return;
        };
        if *self == Node::Skip {
            *self = Node::Part { names: HashMap::new(), each: Box::new(Node::Skip) };
        }
        let Node::Part { names, each } = self else { unreachable!("made a part above") };
        match step {
            Step::Name(name) => names.entry(name.clone()).or_default().add(rest),
            Step::Index(_) | Step::Wildcard => each.add(rest),
        }
    }

    /// Adds everything `other` reads.
    fn merge(&mut self, other: &Node) {
        match (&mut *self, other) {
            (Node::Full, _) | (_, Node::Skip) => {}
            (_, Node::Full) => *self = Node::Full,
            (Node::Skip, _) => *self = other.clone(),
            (Node::Part { names, each }, Node::Part { names: on, each: oe }) => {
                for (k, v) in on {
                    names.entry(k.clone()).or_default().merge(v);
                }
                each.merge(oe);
            }
        }
    }

    /// Makes a named member read what `[*]` reads too, so that a lookup is one map probe.
    fn settle(&mut self) {
        if let Node::Part { names, each } = self {
            each.settle();
            for child in names.values_mut() {
                child.merge(each);
                child.settle();
            }
        }
    }

    /// What is read below the member `key` of an object.
    fn member(&self, key: &str) -> &Node {
        match self {
            Node::Part { names, each } => names.get(key).unwrap_or(each),
            other => other,
        }
    }
}

impl<'de> DeserializeSeed<'de> for &Node {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Node::Skip => <IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| Value::Null),
            Node::Full => serde::Deserialize::deserialize(d),
            Node::Part { .. } => d.deserialize_any(PartVisitor(self)),
        }
    }
}

struct PartVisitor<'a>(&'a Node);

impl<'de> Visitor<'de> for PartVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.member(&key) {
                Node::Skip => {
                    map.next_value::<IgnoredAny>()?;
                }
                node => {
                    let v = map.next_value_seed(node)?;
                    out.insert(key, v);
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Node::Part { each, .. } = self.0 else { unreachable!("the visitor of a part") };
        let mut out = Vec::new();
        if **each == Node::Skip {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        } else {
            while let Some(v) = seq.next_element_seed(&**each)? {
                out.push(v);
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::Projection;
    use crate::rules::path::BodyPath;

    fn selected<'v>(path: &BodyPath, doc: &'v Value) -> Vec<&'v Value> {
        let mut out = Vec::new();
        path.any(doc, |v| {
            out.push(v);
            false
        });
        out
    }

    /// The property that matters: every path selects in the projected body exactly what it
    /// selects in the whole body, whatever other paths share the projection.
    #[test]
    fn every_path_selects_what_it_selects_in_the_whole_body() {
        let docs = [
            json!({
                "ref": "refs/heads/main",
                "repository": {"name": "hookyard", "owner": {"login": "o"}, "topics": ["a", "b"]},
                "commits": [{"id": "c1", "added": ["x"], "author": {"name": "n1"}}, {"id": "c2", "added": [], "author": {"name": "n2"}}],
                "labels": [{"name": "bug"}, {"name": "docs"}],
                "pull_request": {"additions": 150, "base": {"ref": "main"}, "head": {"ref": "f"}},
                "n": -1.5, "t": true, "z": null, "big": [[1, 2], [3, 4]]
            }),
            json!([{"ref": 1}, {"ref": 2}]),
            json!({"commits": {"id": "an object, not an array"}, "labels": "text"}),
            json!("just a string"),
        ];
        let paths = [
            "$.ref",
            "$.repository.owner.login",
            "$.repository",
            "$.commits[*].id",
            "$.commits[0].author.name",
            "$.commits[-1].id",
            "$.commits[*].added",
            "$.labels[*].name",
            "$.*",
            "$[*].ref",
            "$[0]",
            "$.pull_request.additions",
            "$.big[1][0]",
            "$.labels[?@.name == 'bug'].name",
            "$.commits[?length(@.added) > 0].id",
            "$..name",
            "$.repository..login",
            "$.commits[0:1].id",
            "$.labels[?@.name == $.pull_request.base.ref]",
            "$['ref', 'n']",
            "$.missing.deeper",
        ];
        let parsed: Vec<BodyPath> = paths.iter().map(|p| BodyPath::parse(p).unwrap()).collect();
        // each path alone, then all of them together, then pairs that overlap by name and [*]
        let mut sets: Vec<Vec<usize>> = (0..paths.len()).map(|i| vec![i]).collect();
        sets.push((0..paths.len()).collect());
        sets.push(vec![3, 4, 6]);
        sets.push(vec![8, 1]);
        sets.push(vec![9, 10]);
        for set in &sets {
            let mut projection = Projection::default();
            for i in set {
                projection.add(&parsed[*i]);
            }
            for doc in &docs {
                let text = doc.to_string();
                let projected = projection.parse(text.as_bytes()).unwrap();
                for i in set {
                    assert_eq!(
                        selected(&parsed[*i], &projected),
                        selected(&parsed[*i], doc),
                        "{} with {:?} on {doc}: projected to {projected}",
                        paths[*i],
                        set.iter().map(|i| paths[*i]).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    #[test]
    fn keeps_only_what_is_read() {
        let body = json!({"ref": "main", "items": (0..1000).map(|i| json!({"i": i, "s": "x"})).collect::<Vec<_>>(),
                          "pr": {"base": {"ref": "b", "sha": "s"}, "title": "t"}})
        .to_string();
        let cases: [(&[&str], Value); 4] = [
            (&["$.ref"], json!({"ref": "main"})),
            (&["$.pr.base.ref", "$.ref"], json!({"ref": "main", "pr": {"base": {"ref": "b"}}})),
            (&["$.pr.base"], json!({"pr": {"base": {"ref": "b", "sha": "s"}}})),
            (&["$.items[5].i", "$.nope"], json!({"items": (0..1000).map(|i| json!({"i": i})).collect::<Vec<_>>()})),
        ];
        for (paths, want) in cases {
            let mut p = Projection::default();
            paths.iter().for_each(|path| p.add(&BodyPath::parse(path).unwrap()));
            assert_eq!(p.parse(body.as_bytes()).unwrap(), want, "{paths:?}");
        }
        let mut p = Projection::default();
        p.add(&BodyPath::parse("$.items[?@.i == $.ref]").unwrap());
        assert_eq!(p.parse(body.as_bytes()).unwrap().to_string(), body, "a `$` in a filter reads everything");
    }

    #[test]
    fn a_body_that_is_not_json_is_none() {
        let mut p = Projection::default();
        p.add(&BodyPath::parse("$.a").unwrap());
        for bad in ["", "{", "{\"a\":1} trailing", "not json", "{\"a\": [1, }"] {
            assert_eq!(p.parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(p.parse(b" {\"a\": 1} "), Some(json!({"a": 1})));
    }
}
