//! Extended JSON read straight into raw BSON, in one pass over the bytes.
//!
//! The general reader (`serde_json::Value`, then `bson::Bson`, then a `bson::Document`, then
//! the raw bytes) builds three trees per record; this one writes each plain value where it
//! goes and hands only the `{"$...": ...}` objects of Extended JSON to `bson`'s own parser, so
//! every special form means exactly what it means there. Where the two could differ (a `$` key
//! after other keys, a repeated key, a key with a NUL byte, anything malformed) it gives up and
//! the caller takes the general reader, which also words the error.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use bson::{Bson, RawArrayBuf, RawBson, RawDocumentBuf};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The document `bytes` hold, or `None` when the general reader must decide.
pub(crate) fn to_raw_document(bytes: &[u8]) -> Option<RawDocumentBuf> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Val(v) = Val::deserialize(&mut de).ok()?;
    de.end().ok()?;
    match v {
        RawBson::Document(d) => Some(d),
        _ => None,
    }
}

/// One value, as raw BSON.
struct Val(RawBson);

/// Gives up (the message is never shown: the general reader words the error).
fn give_up<E: de::Error>() -> E {
    E::custom("not on the fast path")
}

impl<'de> Deserialize<'de> for Val {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

/// A JSON integer as `bson` reads it: int32 when it fits, else int64.
fn integer(i: i64) -> RawBson {
    match i32::try_from(i) {
        Ok(small) => RawBson::Int32(small),
        Err(_) => RawBson::Int64(i),
    }
}

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Extended JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val(RawBson::Boolean(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val(integer(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        Ok(Val(match i64::try_from(v) {
            Ok(i) => integer(i),
            // `serde_json::Number::as_i64` fails and `as_f64` is taken.
            Err(_) => RawBson::Double(v as f64),
        }))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val(RawBson::Double(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val(RawBson::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Val, E> {
        Ok(Val(RawBson::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val(RawBson::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut arr = RawArrayBuf::new();
        while let Some(Val(v)) = seq.next_element()? {
            arr.push(v);
        }
        Ok(Val(RawBson::Array(arr)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let Some(Key(first)) = map.next_key()? else {
            return Ok(Val(RawBson::Document(RawDocumentBuf::new())));
        };
        if first.starts_with('$') {
            // An Extended JSON form (or a document that only looks like one): `bson` reads it.
            let mut obj = serde_json::Map::new();
            obj.insert(first.into_owned(), map.next_value()?);
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                obj.insert(k, v);
            }
            let b = Bson::try_from(serde_json::Value::Object(obj)).map_err(|_| give_up())?;
            return RawBson::try_from(b).map(Val).map_err(|_| give_up());
        }
        let mut doc = RawDocumentBuf::new();
        let mut keys = Keys::default();
        let mut key = Some(first);
        while let Some(k) = key {
            if k.starts_with('$') || !keys.insert(k.clone()) {
                return Err(give_up());
            }
            let Val(v) = map.next_value()?;
            let name: &bson::raw::CStr = k.as_ref().try_into().map_err(|_| give_up())?;
            doc.append(name, v);
            key = map.next_key::<Key<'de>>()?.map(|Key(k)| k);
        }
        Ok(Val(RawBson::Document(doc)))
    }
}

/// The keys of one object so far, to find a repeated one (the general reader keeps the last
/// value at the first one's place). Keys borrowed from the input are kept without a copy.
#[derive(Default)]
struct Keys<'de> {
    few: Vec<Cow<'de, str>>,
    /// Past 16 keys, all of them, for wide objects.
    many: HashSet<Cow<'de, str>>,
}

impl<'de> Keys<'de> {
    /// False when `k` was already there.
    fn insert(&mut self, k: Cow<'de, str>) -> bool {
        if self.few.len() < 16 {
            if self.few.contains(&k) {
                return false;
            }
            self.few.push(k);
            return true;
        }
        if self.many.is_empty() {
            self.many.extend(self.few.iter().cloned());
        }
        self.many.insert(k)
    }
}

/// A key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general reader makes of `text` (`None`: an error).
    fn general(text: &str) -> Option<RawDocumentBuf> {
        let v = crate::codec::parse_json(text.as_bytes(), "t").ok()?;
        crate::codec::json_to_doc(v, "t").ok()
    }

    #[test]
    fn plain_values_and_extended_forms_read_as_the_general_reader_reads_them() {
        for text in [
            r#"{}"#,
            r#"{"a": 1, "b": -2147483649, "c": 18446744073709551615, "d": 1.0, "e": -0, "f": 2.5e-300}"#,
            r#"{"s": "t\u00e9\n\"x\"", "n": null, "t": true, "arr": [1, [2, {"x": []}], "z"]}"#,
            r#"{"_id": {"$oid": "65f1a2b3c4d5e6f708192a3b"}, "at": {"$date": {"$numberLong": "17"}}}"#,
            r#"{"d": {"$numberDecimal": "12.50"}, "l": {"$numberLong": "5"}, "i": {"$numberInt": "7"}}"#,
            r#"{"b": {"$binary": {"base64": "AQID", "subType": "00"}}}"#,
            r#"{"ts": {"$timestamp": {"t": 1, "i": 2}}, "r": {"$regularExpression": {"pattern": "a", "options": "i"}}}"#,
            r#"{"x": {"$numberDouble": "NaN"}, "y": {"$numberDouble": "-Infinity"}, "k": {"$minKey": 1}}"#,
            r#"{"unknown": {"$foo": 1, "bar": 2}}"#,
            r#"{"esc\u0041ped": 1}"#,
        ] {
            let fast = to_raw_document(text.as_bytes());
            assert!(fast.is_some(), "{text}: general {:?}", general(text));
            assert_eq!(fast, general(text), "{text}");
        }
    }

    #[test]
    fn whatever_the_general_reader_might_read_otherwise_is_left_to_it() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1, "$oid": "65f1a2b3c4d5e6f708192a3b"}"#,
            r#"{"a\u0000b": 1}"#,
            r#"{"$oid": "65f1a2b3c4d5e6f708192a3b"}"#,
            r#"{"x": {"$oid": 5}}"#,
            r#"[1]"#,
            r#"{"a": 1} x"#,
            r#"{"a": "#,
            r#"{"f": 1e400}"#,
            r#"{"old": {"$binary": "AQID", "$type": "00"}}"#,
        ] {
            assert_eq!(to_raw_document(text.as_bytes()), None, "{text}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\": 1", i % 39)).collect();
        let text = format!("{{{}}}", many.join(","));
        assert_eq!(to_raw_document(text.as_bytes()), None);
    }
}
