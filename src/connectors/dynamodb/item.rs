//! DynamoDB items inside strait's BSON events, exact for every attribute type.
//!
//! An item travels as its DynamoDB JSON shape written in BSON: each attribute value is a
//! one-field document naming its type, `{S: "x"}`, `{N: "1.50"}` (the number's text, so its 38
//! digits survive), `{B: <binary>}`, `{BOOL: true}`, `{NULL: true}`, `{M: {...}}`, `{L: [...]}`,
//! `{SS: [...]}`, `{NS: [...]}`, `{BS: [...]}`. Attributes are written in name order, so one
//! item always has the same bytes (DynamoDB keeps no attribute order) and one key always hashes
//! to the same lane.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use bson::raw::{RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use bson::spec::BinarySubtype;
use bson::Binary;

/// An item: attribute names to values.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// An attribute value that is not a DynamoDB JSON shape.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a DynamoDB attribute value at {path}: {what}")]
pub(crate) struct ItemError {
    /// Where in the item.
    pub(crate) path: String,
    /// What was found.
    pub(crate) what: String,
}

fn binary(b: &Blob) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.as_ref().to_vec(),
    }
}

/// Writes an item as a BSON document, attributes in name order.
pub(crate) fn item_to_bson(item: &Item) -> RawDocumentBuf {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    let mut doc = RawDocumentBuf::new();
    for n in names {
        append(&mut doc, n, value_to_bson(&item[n]));
    }
    doc
}

fn append(doc: &mut RawDocumentBuf, key: &str, v: RawDocumentBuf) {
    // Attribute names cannot hold NUL (DynamoDB refuses them), so this cannot fail.
    if let Ok(k) = <&bson::raw::CStr>::try_from(key) {
        doc.append(k, v);
    }
}

fn strings(v: &[String]) -> RawArrayBuf {
    let mut a = RawArrayBuf::new();
    for s in v {
        a.push(s.as_str());
    }
    a
}

/// One attribute value as its one-field BSON document.
pub(crate) fn value_to_bson(v: &AttributeValue) -> RawDocumentBuf {
    use bson::raw::cstr;
    let mut d = RawDocumentBuf::new();
    match v {
        AttributeValue::S(s) => d.append(cstr!("S"), s.as_str()),
        AttributeValue::N(n) => d.append(cstr!("N"), n.as_str()),
        AttributeValue::B(b) => d.append(cstr!("B"), binary(b)),
        AttributeValue::Bool(b) => d.append(cstr!("BOOL"), *b),
        AttributeValue::Null(b) => d.append(cstr!("NULL"), *b),
        AttributeValue::M(m) => d.append(cstr!("M"), item_to_bson(m)),
        AttributeValue::L(l) => {
            let mut a = RawArrayBuf::new();
            for x in l {
                a.push(value_to_bson(x));
            }
            d.append(cstr!("L"), a)
        }
        AttributeValue::Ss(v) => d.append(cstr!("SS"), strings(v)),
        AttributeValue::Ns(v) => d.append(cstr!("NS"), strings(v)),
        AttributeValue::Bs(v) => {
            let mut a = RawArrayBuf::new();
            for b in v {
                a.push(binary(b));
            }
            d.append(cstr!("BS"), a)
        }
        // A type newer than this SDK: kept as its name, refused by the sink.
        other => d.append(cstr!("?"), format!("{other:?}")),
    }
    d
}

/// Reads an item back from its BSON document.
pub(crate) fn item_from_bson(doc: &RawDocument) -> Result<Item, ItemError> {
    item_at(doc, "")
}

fn item_at(doc: &RawDocument, path: &str) -> Result<Item, ItemError> {
    let mut item = HashMap::new();
    for el in doc {
        let (k, v) = el.map_err(|e| bad(path, e.to_string()))?;
        let here = if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        };
        let RawBsonRef::Document(d) = v else {
            return Err(bad(&here, format!("{:?}", v.element_type())));
        };
        item.insert(k.to_string(), value_from_bson(d, &here)?);
    }
    Ok(item)
}

fn bad(path: &str, what: impl Into<String>) -> ItemError {
    ItemError {
        path: if path.is_empty() {
            "(item)".into()
        } else {
            path.into()
        },
        what: what.into(),
    }
}

fn value_from_bson(d: &RawDocument, path: &str) -> Result<AttributeValue, ItemError> {
    let mut it = d.into_iter();
    let (tag, v) = match (it.next(), it.next()) {
        (Some(Ok(first)), None) => first,
        _ => return Err(bad(path, "expected one field naming the type")),
    };
    let wrong = || bad(path, format!("{tag} holding {:?}", v.element_type()));
    let str_list = |v: RawBsonRef<'_>| -> Result<Vec<String>, ItemError> {
        let RawBsonRef::Array(a) = v else {
            return Err(wrong());
        };
        a.into_iter()
            .map(|x| match x {
                Ok(RawBsonRef::String(s)) => Ok(s.to_string()),
                _ => Err(wrong()),
            })
            .collect()
    };
    Ok(match (tag.as_str(), v) {
        ("S", RawBsonRef::String(s)) => AttributeValue::S(s.to_string()),
        ("N", RawBsonRef::String(s)) => AttributeValue::N(s.to_string()),
        ("B", RawBsonRef::Binary(b)) => AttributeValue::B(Blob::new(b.bytes.to_vec())),
        ("BOOL", RawBsonRef::Boolean(b)) => AttributeValue::Bool(b),
        ("NULL", RawBsonRef::Boolean(b)) => AttributeValue::Null(b),
        ("M", RawBsonRef::Document(m)) => AttributeValue::M(item_at(m, path)?),
        ("L", RawBsonRef::Array(a)) => {
            let mut l = Vec::new();
            for (i, x) in a.into_iter().enumerate() {
                match x {
                    Ok(RawBsonRef::Document(x)) => {
                        l.push(value_from_bson(x, &format!("{path}[{i}]"))?)
                    }
                    _ => return Err(wrong()),
                }
            }
            AttributeValue::L(l)
        }
        ("SS", v) => AttributeValue::Ss(str_list(v)?),
        ("NS", v) => AttributeValue::Ns(str_list(v)?),
        ("BS", RawBsonRef::Array(a)) => AttributeValue::Bs(
            a.into_iter()
                .map(|x| match x {
                    Ok(RawBsonRef::Binary(b)) => Ok(Blob::new(b.bytes.to_vec())),
                    _ => Err(wrong()),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(wrong()),
    })
}

/// A DynamoDB Streams attribute value as the DynamoDB one (the two SDKs have twin types).
pub(crate) fn from_stream_value(
    v: aws_sdk_dynamodbstreams::types::AttributeValue,
) -> AttributeValue {
    use aws_sdk_dynamodbstreams::types::AttributeValue as S;
    match v {
        S::S(s) => AttributeValue::S(s),
        S::N(n) => AttributeValue::N(n),
        S::B(b) => AttributeValue::B(b),
        S::Bool(b) => AttributeValue::Bool(b),
        S::Null(b) => AttributeValue::Null(b),
        S::M(m) => AttributeValue::M(from_stream_item(m)),
        S::L(l) => AttributeValue::L(l.into_iter().map(from_stream_value).collect()),
        S::Ss(v) => AttributeValue::Ss(v),
        S::Ns(v) => AttributeValue::Ns(v),
        S::Bs(v) => AttributeValue::Bs(v),
        other => AttributeValue::S(format!("{other:?}")),
    }
}

/// A DynamoDB Streams image as a DynamoDB item.
pub(crate) fn from_stream_item(
    m: HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
) -> Item {
    m.into_iter()
        .map(|(k, v)| (k, from_stream_value(v)))
        .collect()
}

/// A table's key attribute names, the hash key first.
pub(crate) fn key_names(schema: &[aws_sdk_dynamodb::types::KeySchemaElement]) -> Vec<String> {
    let mut names: Vec<&aws_sdk_dynamodb::types::KeySchemaElement> = schema.iter().collect();
    names.sort_by_key(|k| k.key_type != aws_sdk_dynamodb::types::KeyType::Hash);
    names
        .into_iter()
        .map(|k| k.attribute_name.clone())
        .collect()
}

/// The key attributes of an item, by the table's key names.
pub(crate) fn key_of(item: &Item, key_names: &[String]) -> Option<Item> {
    key_names
        .iter()
        .map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf() -> impl Strategy<Value = AttributeValue> {
        prop_oneof![
            ".{0,12}".prop_map(AttributeValue::S),
            "-?[0-9]{1,38}(\\.[0-9]{1,10})?(E-?[0-9]{1,3})?".prop_map(AttributeValue::N),
            proptest::collection::vec(any::<u8>(), 0..16)
                .prop_map(|b| AttributeValue::B(Blob::new(b))),
            any::<bool>().prop_map(AttributeValue::Bool),
            Just(AttributeValue::Null(true)),
            proptest::collection::btree_set(".{0,6}", 1..4)
                .prop_map(|s| AttributeValue::Ss(s.into_iter().collect())),
            proptest::collection::btree_set("[0-9]{1,20}", 1..4)
                .prop_map(|s| AttributeValue::Ns(s.into_iter().collect())),
            proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..6), 1..4)
                .prop_map(|s| AttributeValue::Bs(s.into_iter().map(Blob::new).collect())),
        ]
    }

    fn value() -> impl Strategy<Value = AttributeValue> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(AttributeValue::L),
                proptest::collection::hash_map("[a-z_.#]{1,8}", inner, 0..4)
                    .prop_map(AttributeValue::M),
            ]
        })
    }

    /// Items of every attribute type, nested.
    pub(crate) fn item_strategy(size: std::ops::Range<usize>) -> impl Strategy<Value = Item> {
        proptest::collection::hash_map("[A-Za-z_.-]{1,10}", value(), size)
    }

    proptest! {
        #[test]
        fn every_attribute_type_round_trips(item in item_strategy(0..8)) {
            let doc = item_to_bson(&item);
            prop_assert_eq!(item_from_bson(&doc).unwrap(), item.clone());
            // One item, one byte string: attribute order does not depend on the hash map.
            let again: Item = item.into_iter().collect();
            let again = item_to_bson(&again);
            prop_assert_eq!(again.as_bytes(), doc.as_bytes());
        }
    }

    #[test]
    fn numbers_keep_their_text_and_shapes_are_checked() {
        let item: Item = [(
            "n".to_string(),
            AttributeValue::N("12345678901234567890123456789012345678".into()),
        )]
        .into();
        let doc = item_to_bson(&item);
        assert_eq!(
            doc.get_document("n").unwrap().get_str("N").unwrap(),
            "12345678901234567890123456789012345678"
        );
        let natural = bson::rawdoc! { "a": { "S": "x", "N": "1" } };
        assert_eq!(item_from_bson(&natural).unwrap_err().path, "a");
        let natural = bson::rawdoc! { "a": 1_i32 };
        assert!(item_from_bson(&natural).is_err());
        let nested = bson::rawdoc! { "m": { "M": { "x": { "N": 3_i32 } } } };
        assert_eq!(item_from_bson(&nested).unwrap_err().path, "m.x");
    }
}
