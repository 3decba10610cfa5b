//! Reading a JSON body into your own borrowed types, as forgivingly as indexing a [`Value`].
//!
//! [`Event::json`](crate::Event::json) builds a whole [`Value`] tree: every key and every string
//! copied, every object a map, all of it then dropped. A plugin that reads a few fields does much
//! less work with a struct of just those fields, parsed by [`Event::json_as`](crate::Event::json_as):
//! the fields it does not name are skipped without being stored, and strings are borrowed from the
//! body. The types here make such a struct read the way `Value` indexing does: a field that is
//! missing, `null` or of another type reads as empty instead of failing the parse.
//!
//! | here | reads like |
//! | --- | --- |
//! | [`Str`] | `value.as_str()` |
//! | [`Obj<T>`] | `value["field"]…` (an object read into `T`; anything else gives `T::default()`) |
//! | [`List<T>`] | `value.as_array()`, or empty |
//! | [`IsTrue`] | `value == true` |
//!
//! ```ignore
//! #[derive(Deserialize, Default)]
//! #[serde(default)] // a missing field reads as empty
//! struct Push<'a> {
//!     #[serde(rename = "ref", borrow)]
//!     git_ref: Str<'a>,
//!     #[serde(borrow)]
//!     commits: List<Obj<Commit<'a>>>,
//! }
//! let push: Obj<Push> = event.json_as()?; // a body that is not an object reads as empty too
//! ```
//!
//! Two differences from `Value` remain, both on malformed JSON: a key repeated in one object
//! fails the parse when the struct names it (`Value` keeps the last), and strings in skipped
//! fields are not checked for valid UTF-8 or escapes.
//!
//! [`Value`]: crate::Value

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON string, borrowed from the body unless it has escapes; `None` for any other value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Option<Cow<'a, str>>);

impl Str<'_> {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A JSON object read into `T` (a `#[serde(default)]` struct of the types here); any other value
/// gives `T::default()`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Obj<T>(pub T);

impl<T> Deref for Obj<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A JSON array of `T`; empty for any other value.
#[derive(Debug, Clone, PartialEq)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> Deref for List<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

/// Whether the value is JSON `true` (`false` for anything else).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IsTrue(pub bool);

/// Reads any value, handing a string, an object or an array to `Shape` and skipping the rest.
struct Any<Shape>(std::marker::PhantomData<Shape>);

/// What a loose type makes of the one kind of value it reads; everything else is `empty`.
trait Shape<'de>: Sized {
    const EXPECTING: &'static str;
    fn empty() -> Self;
    fn string(_: Cow<'de, str>) -> Self {
        Self::empty()
    }
    fn boolean(_: bool) -> Self {
        Self::empty()
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::empty())
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::empty())
    }
}

impl<'de, S: Shape<'de>> Visitor<'de> for Any<S> {
    type Value = S;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(S::EXPECTING)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<S, E> {
        Ok(S::string(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<S, E> {
        Ok(S::string(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<S, E> {
        Ok(S::string(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<S, E> {
        Ok(S::boolean(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<S, E> {
        Ok(S::empty())
    }
    fn visit_u64<E>(self, _: u64) -> Result<S, E> {
        Ok(S::empty())
    }
    fn visit_f64<E>(self, _: f64) -> Result<S, E> {
        Ok(S::empty())
    }
    fn visit_unit<E>(self) -> Result<S, E> {
        Ok(S::empty())
    }
    fn visit_none<E>(self) -> Result<S, E> {
        Ok(S::empty())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<S, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S, A::Error> {
        S::map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S, A::Error> {
        S::seq(seq)
    }
}

impl<'de: 'a, 'a> Shape<'de> for Str<'a> {
    const EXPECTING: &'static str = "any JSON value";
    fn empty() -> Self {
        Str(None)
    }
    fn string(s: Cow<'de, str>) -> Self {
        Str(Some(s))
    }
}

impl<'de> Shape<'de> for IsTrue {
    const EXPECTING: &'static str = "any JSON value";
    fn empty() -> Self {
        IsTrue(false)
    }
    fn boolean(b: bool) -> Self {
        IsTrue(b)
    }
}

impl<'de, T: Deserialize<'de> + Default> Shape<'de> for Obj<T> {
    const EXPECTING: &'static str = "any JSON value";
    fn empty() -> Self {
        Obj(T::default())
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Obj)
    }
}

impl<'de, T: Deserialize<'de>> Shape<'de> for List<T> {
    const EXPECTING: &'static str = "any JSON value";
    fn empty() -> Self {
        List(Vec::new())
    }
    fn seq<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        Vec::deserialize(SeqAccessDeserializer::new(seq)).map(List)
    }
}

macro_rules! deserialize_via_shape {
    ($($ty:ty => [$($generics:tt)*]),* $(,)?) => {$(
        impl<'de $($generics)*> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Any::<Self>(std::marker::PhantomData))
            }
        }
    )*};
}

deserialize_via_shape! {
    Str<'a> => [: 'a, 'a],
    IsTrue => [],
    Obj<T> => [, T: Deserialize<'de> + Default],
    List<T> => [, T: Deserialize<'de>],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default)]
    struct Push<'a> {
        #[serde(rename = "ref", borrow)]
        git_ref: Str<'a>,
        deleted: IsTrue,
        #[serde(borrow)]
        pusher: Obj<Person<'a>>,
        #[serde(borrow)]
        commits: List<Obj<Person<'a>>>,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default)]
    struct Person<'a> {
        #[serde(borrow)]
        name: Str<'a>,
    }

    fn read(json: &str) -> Obj<Push<'_>> {
        serde_json::from_str(json).unwrap()
    }

    /// Each case reads the same as indexing the parsed `Value`.
    #[test]
    fn reads_like_value_indexing() {
        let cases = [
            r#"{"ref": "refs/heads/main", "deleted": true, "pusher": {"name": "mona"}, "commits": [{"name": "a"}, 3, {}]}"#,
            r#"{"ref": 7, "deleted": "true", "pusher": ["x"], "commits": {"0": {"name": "a"}}, "extra": {"deep": [1, {"a": null}]}}"#,
            r#"{"ref": "tab\tand \u00e9", "deleted": null, "pusher": null, "commits": null}"#,
            r#"{"ref": null, "pusher": {"name": ["nested"], "more": 1.5}, "commits": [null, "s", [], {"name": false}]}"#,
            r#"["not", "an", "object"]"#,
            r#""a string""#,
            r#"{}"#,
        ];
        for json in cases {
            let value: crate::Value = serde_json::from_str(json).unwrap();
            let push = read(json);
            assert_eq!(push.git_ref.as_str(), value["ref"].as_str(), "{json}");
            assert_eq!(push.deleted.0, value["deleted"] == true, "{json}");
            assert_eq!(push.pusher.name.as_str(), value["pusher"]["name"].as_str(), "{json}");
            let commits = value["commits"].as_array().map(Vec::as_slice).unwrap_or_default();
            assert_eq!(push.commits.len(), commits.len(), "{json}");
            for (got, want) in push.commits.iter().zip(commits) {
                assert_eq!(got.name.as_str(), want["name"].as_str(), "{json}");
            }
        }
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let push = read(r#"{"ref": "plain", "pusher": {"name": "esc\"aped"}}"#);
        assert!(matches!(push.git_ref.0, Some(Cow::Borrowed("plain"))));
        assert!(matches!(push.pusher.name.0, Some(Cow::Owned(ref s)) if s == "esc\"aped"));
    }

    #[test]
    fn malformed_json_still_fails() {
        for json in [r#"{"ref": "x""#, r#"{"ref": "x"} trailing"#, r#"{"skipped": [1, 2}"#] {
            assert!(serde_json::from_str::<Obj<Push>>(json).is_err(), "{json}");
        }
    }
}
