//! DynamoDB items as MongoDB documents and back, for DynamoDB -> MongoDB and MongoDB ->
//! DynamoDB pipelines (DynamoDB -> DynamoDB keeps the exact DynamoDB JSON shape instead).
//!
//! DynamoDB -> MongoDB:
//!
//! | DynamoDB | MongoDB |
//! |---|---|
//! | key attributes | `_id`: the hash key's value; with a sort key, `{<hash>: .., <sort>: ..}` |
//! | S | string |
//! | N, an integer | int32 when it fits, else int64 |
//! | N, other (fraction, exponent, beyond int64) | Decimal128 (exact up to 34 digits); beyond that the number's text as a string |
//! | B | binary (subtype 0) |
//! | BOOL, NULL | boolean, null |
//! | M | embedded document, fields in name order |
//! | L | array |
//! | SS, NS, BS | arrays of strings, numbers (as N), binaries |
//!
//! MongoDB -> DynamoDB: string S, int32 / int64 / double / Decimal128 N (the number's text;
//! NaN and infinities refused), boolean BOOL, null NULL, document M, array L, binary B,
//! ObjectId S (24 hex digits), date S (RFC 3339, milliseconds, UTC), any other type S (its
//! relaxed Extended JSON). `_id` becomes the attribute `_id`, which must be the table's hash
//! key.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use bson::raw::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use bson::spec::BinarySubtype;
use bson::{Binary, Decimal128};

use super::item::Item;

fn binary(b: &Blob) -> RawBson {
    RawBson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.as_ref().to_vec(),
    })
}

/// A number's BSON value: int32 / int64 when an integer, else Decimal128 when it holds the
/// digits, else the text.
fn number(n: &str) -> RawBson {
    if let Ok(i) = n.parse::<i64>() {
        return match i32::try_from(i) {
            Ok(i) => RawBson::Int32(i),
            Err(_) => RawBson::Int64(i),
        };
    }
    let digits = n
        .split(['e', 'E'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    match Decimal128::from_str(n) {
        Ok(d) if significant <= 34 => RawBson::Decimal128(d),
        _ => RawBson::String(n.to_string()),
    }
}

/// One attribute value as BSON.
pub(crate) fn value_to_document_value(v: &AttributeValue) -> RawBson {
    match v {
        AttributeValue::S(s) => RawBson::String(s.clone()),
        AttributeValue::N(n) => number(n),
        AttributeValue::B(b) => binary(b),
        AttributeValue::Bool(b) => RawBson::Boolean(*b),
        AttributeValue::Null(_) => RawBson::Null,
        AttributeValue::M(m) => RawBson::Document(item_to_fields(m, &[])),
        AttributeValue::L(l) => array(l.iter().map(value_to_document_value)),
        AttributeValue::Ss(v) => array(v.iter().map(|s| RawBson::String(s.clone()))),
        AttributeValue::Ns(v) => array(v.iter().map(|n| number(n))),
        AttributeValue::Bs(v) => array(v.iter().map(binary)),
        other => RawBson::String(format!("{other:?}")),
    }
}

fn array(values: impl Iterator<Item = RawBson>) -> RawBson {
    let mut a = RawArrayBuf::new();
    for v in values {
        a.push(v);
    }
    RawBson::Array(a)
}

fn item_to_fields(item: &Item, first: &[(&str, RawBson)]) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (k, v) in first {
        if let Ok(k) = <&bson::raw::CStr>::try_from(*k) {
            doc.append(k, v.clone());
        }
    }
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    for n in names {
        // Attribute names cannot hold NUL, so this cannot fail.
        if let Ok(k) = <&bson::raw::CStr>::try_from(n.as_str()) {
            doc.append(k, value_to_document_value(&item[n]));
        }
    }
    doc
}

/// The `_id` of an item's document: the hash key's value, or `{hash, sort}` with a sort key.
pub(crate) fn document_id(key: &Item, key_names: &[String]) -> RawBson {
    match key_names {
        [one] => key
            .get(one)
            .map(value_to_document_value)
            .unwrap_or(RawBson::Null),
        _ => {
            let mut d = RawDocumentBuf::new();
            for k in key_names {
                if let (Some(v), Ok(name)) = (key.get(k), <&bson::raw::CStr>::try_from(k.as_str()))
                {
                    d.append(name, value_to_document_value(v));
                }
            }
            RawBson::Document(d)
        }
    }
}

/// An item as a MongoDB document: `_id` first, then every attribute in name order.
pub(crate) fn item_to_document(item: &Item, key_names: &[String]) -> RawDocumentBuf {
    let key: Item = key_names
        .iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    item_to_fields(item, &[("_id", document_id(&key, key_names))])
}

/// A document's value as an attribute value.
fn value_from_document(v: RawBsonRef<'_>, path: &str) -> Result<AttributeValue, String> {
    Ok(match v {
        RawBsonRef::String(s) => AttributeValue::S(s.to_string()),
        RawBsonRef::Int32(i) => AttributeValue::N(i.to_string()),
        RawBsonRef::Int64(i) => AttributeValue::N(i.to_string()),
        RawBsonRef::Double(d) if d.is_finite() => AttributeValue::N(format!("{d}")),
        RawBsonRef::Double(d) => {
            return Err(format!("{path}: {d} has no DynamoDB number"));
        }
        RawBsonRef::Decimal128(d) => {
            let text = d.to_string();
            if text.contains("NaN") || text.contains("Inf") {
                return Err(format!("{path}: {text} has no DynamoDB number"));
            }
            AttributeValue::N(text)
        }
        RawBsonRef::Boolean(b) => AttributeValue::Bool(b),
        RawBsonRef::Null | RawBsonRef::Undefined => AttributeValue::Null(true),
        RawBsonRef::Document(d) => AttributeValue::M(item_from_document(d, path)?),
        RawBsonRef::Array(a) => AttributeValue::L(
            a.into_iter()
                .enumerate()
                .map(|(i, x)| {
                    let x = x.map_err(|e| format!("{path}[{i}]: {e}"))?;
                    value_from_document(x, &format!("{path}[{i}]"))
                })
                .collect::<Result<_, _>>()?,
        ),
        RawBsonRef::Binary(b) => AttributeValue::B(Blob::new(b.bytes.to_vec())),
        RawBsonRef::ObjectId(o) => AttributeValue::S(o.to_hex()),
        RawBsonRef::DateTime(t) => AttributeValue::S(
            t.try_to_rfc3339_string()
                .unwrap_or_else(|_| t.timestamp_millis().to_string()),
        ),
        other => AttributeValue::S(
            bson::Bson::try_from(RawBson::from(other))
                .map(|b| b.into_relaxed_extjson().to_string())
                .unwrap_or_default(),
        ),
    })
}

fn item_from_document(doc: &RawDocument, path: &str) -> Result<Item, String> {
    let mut item = HashMap::new();
    for el in doc {
        let (k, v) = el.map_err(|e| format!("{path}: {e}"))?;
        let here = if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        };
        item.insert(k.to_string(), value_from_document(v, &here)?);
    }
    Ok(item)
}

/// A MongoDB document as an item (`_id` as the attribute `_id`).
pub(crate) fn document_to_item(doc: &RawDocument) -> Result<Item, String> {
    item_from_document(doc, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn n(s: &str) -> AttributeValue {
        AttributeValue::N(s.into())
    }

    #[test]
    fn numbers_take_the_narrowest_exact_type() {
        assert_eq!(number("12"), RawBson::Int32(12));
        assert_eq!(number("-3000000000"), RawBson::Int64(-3_000_000_000));
        assert_eq!(
            number("1.50"),
            RawBson::Decimal128(Decimal128::from_str("1.50").unwrap())
        );
        assert_eq!(
            number("99999999999999999999"),
            RawBson::Decimal128(Decimal128::from_str("99999999999999999999").unwrap())
        );
        // 38 digits do not fit Decimal128's 34: the text is kept.
        let big = "12345678901234567890123456789012345678";
        assert_eq!(number(big), RawBson::String(big.into()));
    }

    #[test]
    fn an_item_becomes_a_document_with_its_key_as_id_and_back() {
        let item: Item = [
            ("pk".to_string(), AttributeValue::S("user#1".into())),
            ("sk".to_string(), n("7")),
            (
                "tags".to_string(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "m".to_string(),
                AttributeValue::M(
                    [
                        ("z".to_string(), AttributeValue::Bool(true)),
                        ("a".to_string(), AttributeValue::Null(true)),
                    ]
                    .into(),
                ),
            ),
            ("b".to_string(), AttributeValue::B(Blob::new(vec![1, 2]))),
            ("price".to_string(), n("19.99")),
        ]
        .into();
        let doc = item_to_document(&item, &["pk".into(), "sk".into()]);
        let expected = rawdoc! {
            "_id": { "pk": "user#1", "sk": 7_i32 },
            "b": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
            "m": { "a": null, "z": true },
            "pk": "user#1",
            "price": Decimal128::from_str("19.99").unwrap(),
            "sk": 7_i32,
            "tags": ["a", "b"],
        };
        assert_eq!(doc.as_bytes(), expected.as_bytes());
        // Back: the same attributes, sets as lists, plus `_id`.
        let back = document_to_item(&doc).unwrap();
        assert_eq!(back["price"], n("19.99"));
        assert_eq!(back["sk"], n("7"));
        assert_eq!(
            back["tags"],
            AttributeValue::L(vec![
                AttributeValue::S("a".into()),
                AttributeValue::S("b".into())
            ])
        );
    }

    #[test]
    fn documents_map_every_mongodb_type() {
        let oid = bson::oid::ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let doc = rawdoc! {
            "_id": oid,
            "i": 1_i32, "l": 5_000_000_000_i64, "d": 0.5, "dec": Decimal128::from_str("1.10").unwrap(),
            "when": bson::DateTime::from_millis(1_700_000_000_123),
            "arr": [1_i32, "x"], "sub": { "k": false },
        };
        let item = document_to_item(&doc).unwrap();
        assert_eq!(
            item["_id"],
            AttributeValue::S("65a1b2c3d4e5f60718293a4b".into())
        );
        assert_eq!(item["l"], n("5000000000"));
        assert_eq!(item["d"], n("0.5"));
        assert_eq!(item["dec"], n("1.10"));
        assert_eq!(
            item["when"],
            AttributeValue::S("2023-11-14T22:13:20.123Z".into())
        );
        assert_eq!(
            item["arr"],
            AttributeValue::L(vec![n("1"), AttributeValue::S("x".into())])
        );
        let bad = rawdoc! { "x": f64::NAN };
        assert!(document_to_item(&bad).unwrap_err().contains("x"));
    }
}
