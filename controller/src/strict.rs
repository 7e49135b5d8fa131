//! Strict decoding of Kubernetes objects, as kubectl's strict field validation does it:
//! a field the type does not have is an error, not silently dropped.
//!
//! The `k8s-openapi` types deserialize a struct with `deserialize_struct(NAME, FIELDS, ..)`
//! and skip unknown keys. [`decode`] feeds them through [`Strict`], a deserializer over a
//! `serde_yaml::Value` that, at each struct, compares the mapping's keys with `FIELDS`
//! and records every key that is not one of them, with its path and the nearest valid
//! name. Scalars are decoded by `serde_yaml` itself, and `serde_path_to_error` wraps the
//! whole, so type errors keep their messages and paths.
//!
//! Not reported: keys whose value is null (they carry nothing, so they cannot change
//! what the object means), and anything under the top-level `status` (it is written by
//! the cluster, newer versions add fields, and netward reads only addresses from it).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde_yaml::{Mapping, Value};

/// A key the target type does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownField {
    /// Its path, e.g. `spec.ingress[0].form`.
    pub path: String,
    /// The key itself, e.g. `form`.
    pub key: String,
    /// The field names valid at that place.
    pub expected: &'static [&'static str],
}

impl UnknownField {
    /// The nearest valid name, if one is close enough to be a typo of the key.
    pub fn suggestion(&self) -> Option<&'static str> {
        nearest(&self.key, self.expected.iter().copied())
    }

    /// `unknown field "form": did you mean "from"?`, or the valid names when none is near.
    pub fn message(&self) -> String {
        match self.suggestion() {
            Some(s) => format!("unknown field {:?}: did you mean {s:?}?", self.key),
            None => format!(
                "unknown field {:?} (valid fields here: {})",
                self.key,
                self.expected.join(", ")
            ),
        }
    }
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message())
    }
}

/// Decodes `value` as `T`, strictly: the object and every unknown field, or the first
/// type error with its path.
pub fn decode<T: DeserializeOwned>(
    value: Value,
) -> Result<(T, Vec<UnknownField>), serde_path_to_error::Error<serde_yaml::Error>> {
    let sink = RefCell::new(Vec::new());
    let t = serde_path_to_error::deserialize(Strict {
        value,
        path: String::new(),
        lenient: false,
        sink: &sink,
    })?;
    Ok((t, sink.into_inner()))
}

/// The nearest of `candidates` to `word` (ASCII case ignored), when it is close enough to
/// be a typo: at most 1 edit for words of up to 4 characters, else a third of the length
/// (at least 2). An edit is an insertion, deletion, substitution or swap of two
/// neighbouring characters (optimal string alignment distance).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    let limit = if len <= 4 { 1 } else { (len / 3).max(2) };
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase());
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus swaps of neighbours).
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), one back, and the current one.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

type Sink = RefCell<Vec<UnknownField>>;

/// A `serde_yaml::Value` deserializer that records unknown struct fields.
struct Strict<'s> {
    value: Value,
    /// Where `value` is, `""` at the top.
    path: String,
    /// Inside `status`: nothing is recorded.
    lenient: bool,
    sink: &'s Sink,
}

impl<'s> Strict<'s> {
    fn child(&self, value: Value, path: String, lenient: bool) -> Strict<'s> {
        Strict {
            value,
            path,
            lenient: self.lenient || lenient,
            sink: self.sink,
        }
    }

    fn visit_mapping<'de, V: Visitor<'de>>(
        self,
        map: Mapping,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, serde_yaml::Error> {
        if let Some(fields) = fields
            && !self.lenient
        {
            for (k, v) in &map {
                let Some(key) = k.as_str() else { continue };
                let top_status = self.path.is_empty() && key == "status";
                if !fields.contains(&key) && !v.is_null() && !top_status {
                    self.sink.borrow_mut().push(UnknownField {
                        path: join(&self.path, key),
                        key: key.to_owned(),
                        expected: fields,
                    });
                }
            }
        }
        let len = map.len();
        let mut access = MapAccess {
            iter: map.into_iter(),
            pending: None,
            parent: &self,
        };
        let out = visitor.visit_map(&mut access)?;
        if access.iter.len() == 0 {
            Ok(out)
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in map"))
        }
    }

    fn visit_sequence<'de, V: Visitor<'de>>(
        self,
        seq: Vec<Value>,
        visitor: V,
    ) -> Result<V::Value, serde_yaml::Error> {
        let len = seq.len();
        let mut access = SeqAccess {
            iter: seq.into_iter().enumerate(),
            parent: &self,
        };
        let out = visitor.visit_seq(&mut access)?;
        if access.iter.len() == 0 {
            Ok(out)
        } else {
            Err(de::Error::invalid_length(
                len,
                &"fewer elements in sequence",
            ))
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Methods whose values have no structure inside: decoded by `serde_yaml` as they are.
macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_yaml::Error> {
            de::Deserializer::$method(self.value, visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Strict<'_> {
    type Error = serde_yaml::Error;

    forward! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let (value, me) = self.split();
        match value {
            Value::Mapping(m) => me.visit_mapping(m, None, visitor),
            Value::Sequence(s) => me.visit_sequence(s, visitor),
            other => de::Deserializer::deserialize_any(other, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_unit_struct(self.value, name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let (value, me) = self.split();
        match untag(value) {
            Value::Sequence(s) => me.visit_sequence(s, visitor),
            other => de::Deserializer::deserialize_seq(other, visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let (value, me) = self.split();
        match untag(value) {
            Value::Mapping(m) => me.visit_mapping(m, None, visitor),
            other => de::Deserializer::deserialize_map(other, visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (value, me) = self.split();
        match untag(value) {
            Value::Mapping(m) => me.visit_mapping(m, Some(fields), visitor),
            other => de::Deserializer::deserialize_struct(other, name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // The Kubernetes types have no enums with fields; decoded as they are.
        de::Deserializer::deserialize_enum(self.value, name, variants, visitor)
    }
}

impl Strict<'_> {
    /// The value, and this deserializer's place without it.
    fn split(self) -> (Value, Self) {
        let Strict {
            value,
            path,
            lenient,
            sink,
        } = self;
        (
            value,
            Strict {
                value: Value::Null,
                path,
                lenient,
                sink,
            },
        )
    }
}

struct MapAccess<'a, 's> {
    iter: <Mapping as IntoIterator>::IntoIter,
    pending: Option<(Value, String)>,
    parent: &'a Strict<'s>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_> {
    type Error = serde_yaml::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            None => Ok(None),
            Some((k, v)) => {
                let name = match &k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or_default(),
                };
                self.pending = Some((v, name));
                seed.deserialize(k).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((value, key)) = self.pending.take() else {
            return Err(de::Error::custom(
                "a map value was asked for before its key",
            ));
        };
        let status = self.parent.path.is_empty() && key == "status";
        let path = join(&self.parent.path, &key);
        seed.deserialize(self.parent.child(value, path, status))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct SeqAccess<'a, 's> {
    iter: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    parent: &'a Strict<'s>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_> {
    type Error = serde_yaml::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.iter.next() {
            None => Ok(None),
            Some((i, v)) => {
                let path = format!("{}[{i}]", self.parent.path);
                seed.deserialize(self.parent.child(v, path, false))
                    .map(Some)
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// The value under any YAML tags (`!!map`, `!custom`), as `serde_yaml` reads it.
fn untag(value: Value) -> Value {
    let mut cur = value;
    while let Value::Tagged(tagged) = cur {
        cur = tagged.value;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_suggestions() {
        for (a, b, d) in [
            ("form", "from", 1),
            ("prot", "port", 1),
            ("podSelectr", "podSelector", 1),
            ("", "to", 2),
            ("kitten", "sitting", 3),
            ("ca", "abc", 3),
        ] {
            assert_eq!(distance(a, b), d, "{a} {b}");
            assert_eq!(distance(b, a), d, "{b} {a}");
        }
        let fields = ["from", "ports"];
        assert_eq!(nearest("form", fields), Some("from"));
        assert_eq!(nearest("Ports", fields), Some("ports"));
        assert_eq!(nearest("x", fields), None);
        assert_eq!(nearest("allowAll", fields), None);
        // Short words take one edit at most: `Role` is not a misspelled `Node`.
        assert_eq!(nearest("Role", ["Node"]), None);
        assert_eq!(nearest("Nod", ["Node"]), Some("Node"));
    }

    #[test]
    fn unknown_fields_are_found_at_every_depth_but_not_in_status_or_when_null() {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let value: Value = serde_yaml::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, bogus: null}\n\
             spec: {podSelector: {}, ingress: [{}, {form: []}]}\nstatus: {anything: 1}\n",
        )
        .unwrap_or_default();
        let (_, unknown) = decode::<NetworkPolicy>(value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert_eq!(
            unknown[0].to_string(),
            "spec.ingress[1].form: unknown field \"form\": did you mean \"from\"?"
        );
    }
}
